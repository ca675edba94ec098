"""The body stored as a slice of mail (row.py): what a user reads in `body` is byte for byte
the text the parser made, on MariaDB and on SQLite, whether the row was sliced or carries
its text; a table made before (body a real column) keeps working, and the README's
migration turns it into the new one in place."""
from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources
from pathlib import Path

import pytest

from gsmtpd import mysql_store, row
from gsmtpd.envelope import Envelope, Recipient, build_rows
from gsmtpd.store import BODY, Pending, SlicedText, Verdict, open_backend
from gsmtpd.wire import Data

CORPUS = Path(__file__).parent / "mime_corpus"
HEAD = b"From: a@example.org\r\nSubject: slice\r\n"
TEXT_PLAIN = HEAD + b"Content-Type: text/plain; charset=%s\r\n\r\n"
LINES = b"".join(b"line %d of the body, plain ASCII text\r\n" % i for i in range(2000))   # 80 KB

# (name, raw message, sliced?): each decides one condition of mime's Parsed.body_from.
EDGES = [
    ("ascii, 3 recipients, sent once", TEXT_PLAIN % b"us-ascii" + LINES, True),
    ("no content type", HEAD + b"\r\n" + LINES, True),
    ("ascii labelled latin-1", TEXT_PLAIN % b"iso-8859-1" + b"plain\r\n", True),
    ("utf-8 with 4-byte characters", TEXT_PLAIN % b"utf-8" + "caf\u00e9 \U0001F600\r\n".encode() * 50, True),
    ("utf-8 labelled latin-1", TEXT_PLAIN % b"iso-8859-1" + "caf\u00e9\r\n".encode(), True),
    ("utf-8 byte order mark", TEXT_PLAIN % b"utf-8" + b"\xef\xbb\xbfbom first\r\n", True),
    ("empty body", TEXT_PLAIN % b"utf-8", True),
    ("8bit declared", HEAD + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "\u00fcber\r\n".encode(), True),
    ("latin-1", TEXT_PLAIN % b"iso-8859-1" + b"caf\xe9\r\n", False),
    ("invalid utf-8", TEXT_PLAIN % b"utf-8" + b"bad \xff\xfe bytes\r\n", False),
    ("a U+FFFD of its own", TEXT_PLAIN % b"utf-8" + "replacement \ufffd\r\n".encode(), False),
    ("a NUL", TEXT_PLAIN % b"us-ascii" + b"nul \x00 here\r\n", False),
    ("bare LF", TEXT_PLAIN % b"us-ascii" + b"one\ntwo\r\n", False),
    ("bare CR", TEXT_PLAIN % b"us-ascii" + b"one\rtwo\r\n", False),
    ("base64", HEAD + b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8K\r\n", False),
    ("quoted-printable", HEAD + b"Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db\r\n", False),
    ("utf-16", TEXT_PLAIN % b"utf-16" + "hi\r\n".encode("utf-16"), False),
    ("multipart, text part first", HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
     b"text\r\n--b\r\nContent-Type: image/png\r\n\r\nxx\r\n--b--\r\n", False),
    # Long values go as COM_STMT_SEND_LONG_DATA (mysql_store.LONG_VALUE, 4 MiB).
    ("5 MiB ascii", TEXT_PLAIN % b"us-ascii" + LINES * 66, True),
    ("5 MiB latin-1, 2 recipients", TEXT_PLAIN % b"iso-8859-1" + b"\xe9t\xe9\r\n" * 900_000, False),
]
SEVERAL = {"ascii, 3 recipients, sent once": 3, "5 MiB latin-1, 2 recipients": 2, "utf-8 labelled latin-1": 2}


def crlf_only(raw: bytes) -> bool:
    """What the wire learns while reading (wire.Data.crlf_only)."""
    return raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n")


def corpus() -> list[tuple[str, bytes]]:
    messages = []
    for path in sorted(CORPUS.glob("*.eml")):
        raw = path.read_bytes()
        # SMTP content ends with CRLF (RFC 5321 4.1.1.4): the client adds one.
        messages.append((path.stem, raw if raw.endswith(b"\r\n") else raw.rstrip(b"\n") + b"\r\n"))
    return messages


def rows_of(name: str, raw: bytes, number: int) -> list[tuple]:
    recipients = [Recipient(f"r{i}@test.org", f"r{i}@test.org") for i in range(SEVERAL.get(name, 1))]
    return build_rows(Envelope("s@example.org", recipients=recipients), Data(raw, len(raw), crlf_only=crlf_only(raw)),
                      queue_id=f"{number << 8:032x}", now=time.time(), ip="127.0.0.1", helo="test",
                      hostname="mx.test", is_tls=False, prefer="html")


def write(url: str, messages: list[tuple[str, bytes]], first: int = 0) -> dict[str, list[tuple]]:
    """Store the messages through the real backend, in one batch (multi-row INSERTs, and
    INSERT ... SELECT or the @gsmtpd_ variables for a message with several rows)."""
    backend = open_backend(url, 20.0)
    backend.connect()
    try:
        made = {name: rows_of(name, raw, first + number) for number, (name, raw) in enumerate(messages)}
        deadline = time.monotonic() + 20
        verdicts = backend.write([Pending(rows, deadline) for rows in made.values()])
    finally:
        backend.close()
    assert verdicts == [Verdict.STORED] * len(made)
    return made


def stored(store, columns: str) -> dict[str, dict]:
    """Each row by its hash: SELECT ``columns``, as a user reads them."""
    if store.url.startswith("sqlite"):
        conn = sqlite3.connect(store.path)
        conn.row_factory = sqlite3.Row
        try:
            return {r["hash"]: dict(r) for r in conn.execute(f"SELECT hash, {columns} FROM new_mail")}
        finally:
            conn.close()
    import pymysql.cursors
    conn = store.connect()
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(f"SELECT hash, {columns} FROM new_mail")
            return {r["hash"]: r for r in cur.fetchall()}
    finally:
        conn.close()


def check_bodies(store, made: dict[str, list[tuple]], sliced_table: bool, written_sliced: bool = True) -> list[str]:
    """Every row's `body` is the parser's text, byte for byte; in a sliced table, a sliced
    row keeps none of it in body_text (``written_sliced``: the rows were written to a sliced
    table). Returns the names of the sliced messages."""
    got = stored(store, "body, body_text, body_start" if sliced_table else "body")
    sliced, wrong = [], []
    for name, rows in made.items():
        for values in rows:
            body = values[BODY]
            expected = body.join().decode("utf-8")
            found = got[values[row.NAMES.index("hash")]]
            if found["body"] != expected or type(found["body"]) is not str:
                wrong.append(f"{name}: {found['body']!r:.80} != {expected!r:.80}")
            if sliced_table:
                want = (body.start, "") if type(body) is SlicedText and written_sliced else (None, expected)
                if (found["body_start"], found["body_text"]) != want:
                    wrong.append(f"{name}: body_start, body_text = {found['body_start']}, {found['body_text']!r:.40}")
        if type(rows[0][BODY]) is SlicedText:
            sliced.append(name)
    assert not wrong, "\n".join(wrong)
    return sliced


def test_every_body_reads_back_exactly_as_parsed(any_store):
    made = write(any_store.url, corpus() + [(name, raw) for name, raw, _ in EDGES])
    sliced = set(check_bodies(any_store, made, sliced_table=True))
    assert {name for name, _, _ in EDGES} & sliced == {name for name, _, slice_it in EDGES if slice_it}
    # The corpus is mostly hard cases; its plain single-part messages are sliced.
    assert len(sliced & {name for name, _ in corpus()}) >= 10


# The table as gsmtpd made it before the body was sliced, and the README's migrations.
OLD_BODY = "  `body` longtext NOT NULL COMMENT 'chosen body part as UTF-8 text',\n"
MIGRATE_MYSQL = [
    "ALTER TABLE `new_mail` ALGORITHM=INSTANT, CHANGE `body` `body_text` longtext NOT NULL "
    "COMMENT 'the body, when it is not a slice of mail (else empty)', ADD `body_start` int unsigned NULL "
    "COMMENT 'bytes of mail before the body, when body is the rest of mail without CRs' AFTER `body_text`",
    f"ALTER TABLE `new_mail` ALGORITHM=INSTANT, ADD `body` longtext AS ({row.BODY.mysql_as}) VIRTUAL "
    "COMMENT 'chosen body part as UTF-8 text' AFTER `body_start`",
]
MIGRATE_SQLITE = [
    'ALTER TABLE new_mail RENAME COLUMN "body" TO "body_text"',
    'ALTER TABLE new_mail ADD COLUMN "body_start" INTEGER',
    f'ALTER TABLE new_mail ADD COLUMN "body" TEXT GENERATED ALWAYS AS ({row.BODY.sqlite_as}) VIRTUAL',
]


def old_schema(mysql: bool) -> str:
    if mysql:
        # What gsmtpd makes on MySQL, where `body` cannot be a slice (mysql_store.schema_sql).
        text = mysql_store.schema_sql(mariadb=False)
        assert OLD_BODY in text and "`body_start`" not in text
        return text
    text = row.sqlite_schema()
    text = re.sub(r',\n  "body_start" INTEGER|,\n  "body" TEXT GENERATED.*', "", text)
    assert "body_start" not in text
    return text.replace('"body_text"', '"body"')


def run_sql(store, statements: list[str]) -> None:
    if store.url.startswith("sqlite"):
        conn = sqlite3.connect(store.path)
        try:
            for statement in statements:
                conn.executescript(statement)
        finally:
            conn.close()
        return
    conn = store.connect()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def test_a_table_made_before_keeps_working_and_migrates_in_place(any_store):
    mysql = not any_store.url.startswith("sqlite")
    run_sql(any_store, [old_schema(mysql)])
    messages = corpus()[:40] + [(name, raw) for name, raw, _ in EDGES]
    before = write(any_store.url, messages)
    check_bodies(any_store, before, sliced_table=False)
    assert "body_start" not in any_store.rows()[0]

    run_sql(any_store, MIGRATE_MYSQL if mysql else MIGRATE_SQLITE)
    # The old rows read the same, from body_text; new rows are sliced where they can be.
    check_bodies(any_store, before, sliced_table=True, written_sliced=False)
    after = write(any_store.url, messages, first=len(messages))
    assert set(check_bodies(any_store, after, sliced_table=True)) >= {name for name, _, s in EDGES if s}


def test_the_migration_makes_the_table_schema_sql_makes(mysql_store):
    run_sql(mysql_store, [old_schema(True)] + MIGRATE_MYSQL + ["RENAME TABLE new_mail TO migrated",
                                                                resources.files("gsmtpd").joinpath("schema.sql").read_text()])
    conn = mysql_store.connect()
    try:
        with conn.cursor() as cur:
            made = []
            for table in ("migrated", "new_mail"):
                cur.execute(f"SHOW CREATE TABLE {table}")
                made.append(cur.fetchone()[1].replace(f"`{table}`", "`t`"))
    finally:
        conn.close()
    assert made[0] == made[1]
