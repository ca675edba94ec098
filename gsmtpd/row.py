"""The row: the columns of ``new_mail``, declared once.

Every other shape of the row is derived from COLUMNS: the order of the tuples
envelope.build_rows makes (store.COLUMNS), the widths it cuts text to, the columns that
differ between one message's rows, which values MySQL gets as text, the SQLite schema.
schema.sql, the file a user may run by hand, is written out for reading;
tests/test_row.py creates it in MariaDB and holds it to this declaration.
"""
from __future__ import annotations

from typing import NamedTuple

# What a column holds, and so its SQLite type (SQLite has no widths and no datetime).
TEXT, DATETIME, BYTES, INT, REAL = "text", "datetime", "bytes", "int", "real"
SQLITE_TYPE = {TEXT: "TEXT", DATETIME: "TEXT", BYTES: "BLOB", INT: "INTEGER", REAL: "REAL"}


class Column(NamedTuple):
    name: str
    mysql: str                      # its type in schema.sql, without the width
    kind: str                       # TEXT, DATETIME, BYTES, INT or REAL
    width: int | None = None        # characters of a varchar/char: longer text is cut to it
    default: str | None = None      # an SQL literal; None: every row must give a value
    per_recipient: bool = False     # differs between the rows of one message
    key: str | None = None          # "unique" or "index"

    @property
    def mysql_type(self) -> str:
        """As schema.sql writes it: ``varchar(255)``, ``longtext``."""
        return f"{self.mysql}({self.width})" if self.width else self.mysql


# The row's number, given by the database; not in the row tuples the server writes.
ID = Column("mail_id", "bigint unsigned", INT, key="primary")

# The columns the server writes, in the order of every row tuple (and of schema.sql).
# Widths count characters: utf8mb4 varchar(255) holds 255 of them.
COLUMNS = (
    Column("date", "datetime", DATETIME, key="index"),          # UTC, when accepted
    Column("from", "varchar", TEXT, 255, "''"),
    Column("to", "varchar", TEXT, 255, per_recipient=True, key="index"),
    Column("subject", "varchar", TEXT, 255, "''"),
    Column("body", "longtext", TEXT),
    Column("charset", "varchar", TEXT, 64, "''"),
    Column("mail", "longblob", BYTES),
    Column("spam_score", "float", REAL, default="0"),
    Column("hash", "char", TEXT, 32, per_recipient=True, key="unique"),   # 32 hex digits
    Column("content_type", "varchar", TEXT, 255, "''"),
    Column("recipient", "varchar", TEXT, 255, per_recipient=True),
    Column("return_path", "varchar", TEXT, 255, "''"),
    Column("ip_addr", "varchar", TEXT, 45, "''"),               # the longest IPv6 text form
    Column("helo", "varchar", TEXT, 255, "''"),
    Column("is_tls", "tinyint(1)", INT, default="0"),
    Column("size", "int unsigned", INT, default="0"),
    Column("has_attach", "int", INT, default="0"),
    Column("message_id", "varchar", TEXT, 255, "''"),
)

NAMES = tuple(column.name for column in COLUMNS)
BY_NAME = {column.name: column for column in COLUMNS}


def width(name: str) -> int:
    """The characters a text column holds."""
    return BY_NAME[name].width


def sqlite_schema() -> str:
    """The SQLite table and its indexes. Index names are kept as they were first made, so
    an existing database gets no second copy of them."""
    lines = [f'"{ID.name}" INTEGER PRIMARY KEY AUTOINCREMENT']
    for column in COLUMNS:
        line = f'"{column.name}" {SQLITE_TYPE[column.kind]} NOT NULL'
        if column.default is not None:
            line += f" DEFAULT {column.default}"
        if column.key == "unique":
            line += " UNIQUE"
        lines.append(line)
    indexes = "".join(f'CREATE INDEX IF NOT EXISTS "new_mail_{column.name}" ON new_mail ("{column.name}");\n'
                      for column in COLUMNS if column.key == "index")
    return "CREATE TABLE IF NOT EXISTS new_mail (\n  " + ",\n  ".join(lines) + "\n);\n" + indexes
