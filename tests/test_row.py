"""The row declared once (gsmtpd/row.py): schema.sql, made by the real MariaDB, and the SQLite
schema hold exactly the declared columns, and build_rows puts every value under its column."""
from __future__ import annotations

import re
import sqlite3
from importlib import resources

from gsmtpd import envelope, row, sqlite_store
from gsmtpd.store import COLUMNS
from gsmtpd.wire import Data

# MariaDB reports an integer's display width ("int(10) unsigned"); schema.sql and row.py
# write none, except tinyint(1), the conventional boolean.
_DISPLAY_WIDTH = re.compile(r"^(bigint|int|smallint|mediumint)\(\d+\)")
EVERY = (row.ID, *row.TABLE)


def test_schema_sql_makes_the_declared_table_in_mariadb(mysql_store):
    conn = mysql_store.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(resources.files("gsmtpd").joinpath("schema.sql").read_text())
            cur.execute("SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, CHARACTER_SET_NAME, EXTRA "
                        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                        "AND TABLE_NAME = 'new_mail' ORDER BY ORDINAL_POSITION")
            made = [(name, _DISPLAY_WIDTH.sub(r"\1", kind), nullable, default, charset, extra)
                    for name, kind, nullable, default, charset, extra in cur.fetchall()]
            cur.execute("SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS "
                        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'new_mail'")
            keys = {column: ("primary" if index == "PRIMARY" else "index" if non_unique else "unique")
                    for index, non_unique, column in cur.fetchall()}
    finally:
        conn.close()
    # Text in utf8mb4 (mysql_store sends it as raw UTF-8 then), every column NOT NULL but
    # the body's three: body_text, body_start, and body, generated from them and mail.
    declared = [(c.name, c.mysql_type, "YES" if c.nullable else "NO", "NULL" if c.nullable else c.default,
                 "utf8mb4" if c.kind == row.TEXT else None,
                 "auto_increment" if c is row.ID else "VIRTUAL GENERATED" if c.mysql_as else "") for c in EVERY]
    assert made == declared
    assert f"`body` longtext AS ({row.BODY.mysql_as}) VIRTUAL" in resources.files("gsmtpd").joinpath(
        "schema.sql").read_text()
    assert keys == {c.name: c.key for c in EVERY if c.key}


def test_the_sqlite_schema_is_the_declared_table(tmp_path):
    conn = sqlite3.connect(tmp_path / "mail.db")
    try:
        conn.executescript(sqlite_store.SCHEMA)
        made = [(name, kind, notnull, default, hidden)
                for _, name, kind, notnull, default, _, hidden in conn.execute("PRAGMA table_xinfo(new_mail)")]
        unique = {conn.execute(f"PRAGMA index_info('{name}')").fetchone()[2]
                  for _, name, is_unique, *_ in conn.execute("PRAGMA index_list(new_mail)") if is_unique}
        indexed = {conn.execute(f"PRAGMA index_info('{name}')").fetchone()[2]
                   for _, name, is_unique, origin, _ in conn.execute("PRAGMA index_list(new_mail)")
                   if not is_unique and origin == "c"}
    finally:
        conn.close()
    # hidden 2: a VIRTUAL generated column (https://sqlite.org/pragma.html#pragma_table_xinfo).
    assert made == [("mail_id", "INTEGER", 0, None, 0)] + [
        (c.name, row.SQLITE_TYPE[c.kind], int(not c.nullable and not c.sqlite_as), c.default,
         2 if c.sqlite_as else 0) for c in row.sqlite_table()]
    assert unique == {c.name for c in row.COLUMNS if c.key == "unique"}
    assert indexed == {c.name for c in row.COLUMNS if c.key == "index"}


def test_the_store_writes_the_declared_columns_in_their_order():
    assert COLUMNS == tuple(c.name for c in row.COLUMNS)


def test_build_rows_puts_each_value_under_its_column_cut_to_its_width():
    """Every field too long, each with its own letter: a value in the wrong place, or cut to
    another column's width, shows. (The From: address is as long as the parser takes one.)"""
    long = {name: letter * 300 for name, letter in zip(
        ("subject", "message_id", "sender", "mailbox", "address", "helo"), "smeabh")}
    long["from"] = "f" * 64 + "@" + "f" * 60 + "." + "g" * 60 + "." + "h" * 60 + ".org"
    raw = (f"Subject: {long['subject']}\r\nFrom: {long['from']}\r\n"
           f"Message-ID: {long['message_id']}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "body\r\n").encode()
    mail = envelope.Envelope(sender=long["sender"], recipients=[
        envelope.Recipient(long["address"], long["mailbox"]), envelope.Recipient("two@test.org", "two@test.org")])
    rows = envelope.build_rows(mail, Data(raw, len(raw), crlf_only=True), queue_id="0" * 32, now=0.0,
                               ip="2001:db8::1", helo=long["helo"], hostname="mx.test", is_tls=True,
                               prefer="plain")
    first = dict(zip(COLUMNS, rows[0]))
    expected = {"from": long["from"], "to": long["mailbox"], "subject": long["subject"],
                "charset": "utf-8", "hash": "0" * 32, "content_type": "text/plain",
                "recipient": long["address"], "return_path": long["sender"], "ip_addr": "2001:db8::1",
                "helo": long["helo"], "message_id": long["message_id"]}
    for column in row.COLUMNS:
        value = first[column.name]
        if column.name in expected:
            assert value == expected[column.name][:column.width], column.name
        assert isinstance(value, {row.TEXT: (str, envelope.Utf8Text), row.DATETIME: str, row.BYTES: envelope.Blob,
                                  row.INT: int, row.REAL: float}[column.kind]), column.name
    assert first["date"] == "1970-01-01 00:00:00"
    assert first["body"].join() == b"body\n"
    assert first["mail"].join().endswith(raw)
    assert (first["is_tls"], first["size"], first["has_attach"], first["spam_score"]) == (1, len(raw), 0, 0.0)
    # The second row differs from the first in its per-recipient columns only.
    second = dict(zip(COLUMNS, rows[1]))
    assert {name for name in COLUMNS if second[name] != first[name]} == {
        c.name for c in row.COLUMNS if c.per_recipient}
