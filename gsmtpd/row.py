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
    nullable: bool = False
    mysql_as: str | None = None     # a VIRTUAL generated column: its expression in MySQL ...
    sqlite_as: str | None = None    # ... and in SQLite

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

# How the table keeps `body`. Most bodies are the rest of `mail` after the header, without
# the CRs of its CRLFs (a single text part, identity encoding, UTF-8 or ASCII: mime.py's
# Parsed.body_from): such a row stores only where the body starts in `mail` (body_start)
# and `body` is a VIRTUAL column made from `mail` when it is read, so the database neither
# receives nor stores the same text twice. Any other body is stored whole in body_text
# (empty in a sliced row: NOT NULL, so that a table made before can be migrated in place,
# even SQLite's, whose ALTER TABLE renames a column but cannot make it nullable).
# bench/body_cost.py (MariaDB 10.11 of its own, 60 messages x 3 rounds, medians), MariaDB
# CPU per 1 MiB message: body sent 10.3 ms, sliced 3.0 (no body at all: 3.3); per 2 KB
# message 0.28 and 0.29, the same. bench/run.py W4: 14.8 -> 5.4 db ms a message, 46 -> 85
# msgs/s (medians of 3). The price is paid when `body` is read: 7.5 ms of MariaDB CPU for a
# sliced 1 MiB body, 4.0 for a stored one. REGEXP_REPLACE works on the mail's bytes: REPLACE
# moves the rest of the string for every CR it drops (163 ms a MiB), and REGEXP_REPLACE on
# utf8mb4 text checks the rest of the text again at every match (4.8 s a MiB).
# A table made before this (body a real column) keeps working: the stores look which one
# they write to (README: migrating).
BODY_TEXT = Column("body_text", "longtext", TEXT)
BODY_START = Column("body_start", "int unsigned", INT, nullable=True)
BODY = Column(
    "body", "longtext", TEXT, nullable=True,
    mysql_as="IF(`body_start` IS NULL, `body_text`, "
             "CONVERT(REGEXP_REPLACE(SUBSTRING(`mail`, `body_start` + 1), '\\r', '') USING utf8mb4))",
    sqlite_as="CASE WHEN \"body_start\" IS NULL THEN \"body_text\" "
              "ELSE replace(CAST(substr(\"mail\", \"body_start\" + 1) AS TEXT), char(13), '') END")
# The table's columns after mail_id, in order: COLUMNS with body stored as those three.
TABLE = tuple(column for declared in COLUMNS
              for column in ((BODY_TEXT, BODY_START, BODY) if declared.name == "body" else (declared,)))
# What a writer sends to such a table, in the order of its values (store.sliced_row): the
# row tuple with body_text in the place of body, and body_start last.
SLICED_NAMES = tuple(BODY_TEXT.name if name == "body" else name for name in NAMES) + (BODY_START.name,)


# Whether a table is made so (a `body_start` column) is asked by every connection that
# reads or writes it, the stores' and the web API's (mailbox.py): one question, asked here.
def mysql_sliced(cur) -> bool:
    """Does new_mail, in the database of the PyMySQL cursor ``cur`` (a plain one, rows as
    tuples), store the body as a slice of mail (schema.sql), or is `body` a real column (a
    table made before; README: migrating)? Asked on each connection: a table migrated while
    gsmtpd runs is used the new way from its next connection."""
    cur.execute("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                f"AND TABLE_NAME = 'new_mail' AND COLUMN_NAME = '{BODY_START.name}'")
    return cur.fetchone()[0] == 1


def sqlite_sliced(conn) -> bool:
    """The same for a sqlite3 connection (table_xinfo: generated columns are listed too)."""
    return any(column[1] == BODY_START.name for column in conn.execute("PRAGMA table_xinfo(new_mail)"))


def width(name: str) -> int:
    """The characters a text column holds."""
    return BY_NAME[name].width


def sqlite_table() -> tuple[Column, ...]:
    """TABLE with the generated columns last: SQLite 3.40's sqlite3_blob_open, which
    sqlite_store writes `mail` with, opens the wrong column ("cannot open value of type
    integer") when a VIRTUAL column comes before the one it opens."""
    return (tuple(column for column in TABLE if not column.sqlite_as)
            + tuple(column for column in TABLE if column.sqlite_as))


def sqlite_schema() -> str:
    """The SQLite table and its indexes. Index names are kept as they were first made, so
    an existing database gets no second copy of them."""
    lines = [f'"{ID.name}" INTEGER PRIMARY KEY AUTOINCREMENT']
    for column in sqlite_table():
        line = f'"{column.name}" {SQLITE_TYPE[column.kind]}'
        if column.sqlite_as:
            lines.append(f"{line} GENERATED ALWAYS AS ({column.sqlite_as}) VIRTUAL")
            continue
        if not column.nullable:
            line += " NOT NULL"
        if column.default is not None:
            line += f" DEFAULT {column.default}"
        if column.key == "unique":
            line += " UNIQUE"
        lines.append(line)
    indexes = "".join(f'CREATE INDEX IF NOT EXISTS "new_mail_{column.name}" ON new_mail ("{column.name}");\n'
                      for column in COLUMNS if column.key == "index")
    return "CREATE TABLE IF NOT EXISTS new_mail (\n  " + ",\n  ".join(lines) + "\n);\n" + indexes
