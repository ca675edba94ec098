"""The MySQL writer's prepared statements (gsmtpd/mysql_protocol.py), against the real MariaDB:
values come back byte for byte, the packet limit refuses only the row that breaks it, and
statement ids never outlive their connection."""
from __future__ import annotations

import datetime
import enum
import os
import time
from importlib import resources

import pytest

from conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, send
from gsmtpd import mysql_protocol
from gsmtpd.mysql_store import MySQLBackend, PACKET_SLACK, statement_sizes
from gsmtpd.store import COLUMNS, Blob, Pending, TransientError, Utf8Text, Verdict
from tcp_proxy import TcpProxy

EVERY_BYTE = bytes(range(256))


def make_row(hash_: str, **values) -> tuple:
    """A new_mail row in store.COLUMNS order, as envelope.build_rows makes them."""
    row = {"date": "2026-05-09 10:00:00", "from": "alice@example.org", "to": "bob@test.org",
           "subject": "Hello", "body": "Just a test.\r\n", "charset": "utf-8",
           "mail": Blob((b"Received: by mx.test\r\n", b"Subject: Hello\r\n\r\nJust a test.\r\n")),
           "spam_score": 0.0, "hash": hash_, "content_type": "text/plain",
           "recipient": "bob@test.org", "return_path": "alice@example.org", "ip_addr": "127.0.0.1",
           "helo": "client.example", "is_tls": 0, "size": 34, "has_attach": 0,
           "message_id": "<1@example.org>"}
    row.update(values)
    return tuple(row[column] for column in COLUMNS)


def pending(*rows: tuple) -> Pending:
    return Pending(list(rows), deadline=time.monotonic() + 60)


def new_hash() -> str:
    return os.urandom(16).hex()


def session_status(conn, name: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE %s", (name,))
        return int(cur.fetchone()[1])


@pytest.fixture
def backend(mysql_store):
    store = MySQLBackend(MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, mysql_store.database,
                         None, timeout=30)
    store.connect()
    yield store
    store.close()        # before the fixture drops the database: an open transaction would block it


def test_every_byte_value_and_a_large_message_come_back_exactly(backend, mysql_store):
    raw = b"Subject: all bytes\r\n\r\n" + EVERY_BYTE * 16 + os.urandom(3 << 19) + EVERY_BYTE[::-1]
    assert len(raw) > 1 << 20
    header = b"Received: from x\r\n\t\\'\"\x00\r\n"
    body = "".join(map(chr, range(1, 0x2FF))) + " \\ ' \" \x00 \U0001F600" + "é" * (600 << 10)
    big, small = new_hash(), new_hash()
    verdicts = backend.write([
        pending(make_row(big, mail=Blob((header, raw)), body=body, subject="O'Brien \\ \"x\"")),
        pending(make_row(small, mail=EVERY_BYTE, body="", subject="")),
    ])
    assert verdicts == [Verdict.STORED, Verdict.STORED]
    rows = {row["hash"]: row for row in mysql_store.rows()}
    assert bytes(rows[big]["mail"]) == header + raw
    assert rows[big]["body"] == body
    assert rows[big]["subject"] == "O'Brien \\ \"x\""
    assert bytes(rows[small]["mail"]) == EVERY_BYTE


def test_a_large_message_with_every_byte_value_through_the_server(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store, max_size=4 << 20)
    octets = bytes(b for b in range(256) if b not in (10, 13))
    content = b"\r\n".join(octets[i % 200:] + b"\\'\"\x00" for i in range(7000))
    raw = b"Subject: big\r\nContent-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    assert len(raw) > 1 << 20
    send(server, "a@example.org", ["b@test.org", "c@test.org"], raw, options=["BODY=8BITMIME"])
    rows = mysql_store.rows()
    assert len(rows) == 2
    for row in rows:
        assert bytes(row["mail"]).endswith(b"\r\n\r\n" + content + b"\r\n")


def test_nulls_datetimes_and_numbers_land_right(backend):
    conn = backend.conn
    with conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE probe (t TEXT NULL, b BLOB NULL, d DATETIME NULL, "
                    "i BIGINT NULL, u BIGINT UNSIGNED NULL, f DOUBLE NULL, k TINYINT(1) NULL)")
    statements = mysql_protocol.PreparedStatements(conn)
    insert = statements.get(b"INSERT INTO probe VALUES (?,?,?,?,?,?,?),(?,?,?,?,?,?,?)")
    when = datetime.datetime(2026, 5, 9, 23, 59, 58, 999999)
    rows = [mysql_protocol.encode_row(["t\x00é", Blob((b"a\x00", b"\xff")), when, -(1 << 63), (1 << 64) - 1, 0.25, True]),
            mysql_protocol.encode_row([None] * 7)]
    assert mysql_protocol.execute(conn, insert, rows) == 2
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM probe")
        first, second = cur.fetchall()
    # Microseconds are dropped, as the text protocol's literal did: the columns hold seconds.
    assert first == ("t\x00é", b"a\x00\xff", datetime.datetime(2026, 5, 9, 23, 59, 58),
                     -(1 << 63), (1 << 64) - 1, 0.25, 1)
    assert second == (None,) * 7
    conn.rollback()


class Level(enum.IntEnum):
    HIGH = 7


class Word(enum.StrEnum):
    HELLO = "h\u00e9llo"


@pytest.mark.parametrize("value", [
    "short", "\u00e9" * 200, "x" * 70000, b"\x00\xff", b"y" * 70000, Blob((b"a", b"b" * 70000)),
    Utf8Text(("caf\u00e9".encode(),)), Utf8Text((b"a", b"b")), None, True, False, -5, (1 << 64) - 1,
    1 << 64, 0.25, datetime.datetime(2026, 5, 9, 1, 2, 3), Level.HIGH, Word.HELLO,
    -(1 << 63), (1 << 63) - 1, 1 << 63, Utf8Text((b"t" * 300,)), Utf8Text((b"t" * 70000,)), Blob(()),
    "\u00e9" * 250])
def test_a_row_sends_each_value_as_the_one_encoder_table_says(value):
    """encode_row's inlined short text and its shared long text give what encode_value
    (the table) gives; a subclass (IntEnum, StrEnum) goes as its base."""
    kind, pieces = mysql_protocol.encode_value(value)
    for shared in (None, {}):
        row = mysql_protocol.encode_row([value], shared)
        assert row.types == kind and row.nulls == (value is None)
        assert b"".join(row.values) == b"".join(pieces or ())
    base = {Level: int, Word: str}.get(type(value))
    if base:
        assert mysql_protocol.encode_value(base(value)) == (kind, pieces)


def test_long_text_and_blob_go_ahead_without_their_length_prefix():
    body, mail = Utf8Text((b"z" * 70000,)), Blob((b"Received: x\r\n", b"m" * 70000))
    row = mysql_protocol.encode_row(["a", body, mail, 7], long_from=65536)
    assert [(v.param, b"".join(v.pieces), v.size) for v in row.long] == [
        (1, body[0], 70000), (2, mail.join(), len(mail.join()))]
    assert b"".join(row.values) == b"\x01a" + (7).to_bytes(8, "little")
    short = mysql_protocol.encode_row(["a", body, mail, 7], long_from=1 << 20)
    assert not short.long and b"".join(short.values) == b"".join(
        b"".join(mysql_protocol.encode_value(v)[1]) for v in ("a", body, mail, 7))


def test_a_value_of_no_type_in_the_table_is_refused():
    with pytest.raises(TypeError, match="cannot store bytearray"):
        mysql_protocol.encode_row([bytearray(b"x")])


def test_a_datetime_and_a_null_in_new_mail(backend, mysql_store):
    """A datetime lands as its seconds; a NULL in a NOT NULL column is refused (strict mode)
    for its own message only, and the connection goes on."""
    dated, nulled, after = new_hash(), new_hash(), new_hash()
    verdicts = backend.write([pending(make_row(dated, date=datetime.datetime(2026, 1, 2, 3, 4, 5, 600000))),
                              pending(make_row(nulled, subject=None)),
                              pending(make_row(after))])
    assert verdicts == [Verdict.STORED, Verdict.REFUSED, Verdict.STORED]
    rows = {row["hash"]: row for row in mysql_store.rows()}
    assert set(rows) == {dated, after}
    assert rows[dated]["date"] == datetime.datetime(2026, 1, 2, 3, 4, 5)


TEXTS = {"subject": "caf\u00e9 \u2603 \U0001f600 \x00 '\\\"", "body": "\u00e9\U0001f600\n" * 30000,
         "from": "\u00fc@example.org"}


def test_text_into_utf8mb4_columns_goes_as_utf8_bytes_and_comes_back_exactly(backend, mysql_store):
    """schema.sql's columns are utf8mb4, so text is sent as its UTF-8 bytes, with nothing
    for the server to convert (cheaper for MariaDB); what comes back is the same text,
    4-byte characters, NUL, quotes and a body past 64 KiB included."""
    assert backend.text_type == mysql_protocol.BLOB_TYPE
    stored = new_hash()
    assert backend.write([pending(make_row(stored, **TEXTS))]) == [Verdict.STORED]
    row = mysql_store.rows()[0]
    assert {name: row[name] for name in TEXTS} == TEXTS
    # Column limits still count characters, not the bytes sent: varchar(255) takes 255
    # four-byte characters, and refuses a 256th as before.
    full, over = new_hash(), new_hash()
    assert backend.write([pending(make_row(full, subject="\U0001f600" * 255)),
                          pending(make_row(over, subject="\u00e9" * 256))]) == [Verdict.STORED, Verdict.REFUSED]
    assert mysql_store.rows("hash = %s", (full,))[0]["subject"] == "\U0001f600" * 255


def test_a_table_made_with_a_latin1_body_still_gets_converted_text(mysql_store):
    """A new_mail made by hand with another charset gets text the server converts into
    it: sent as raw UTF-8 bytes, 'caf\u00e9' would be stored as 'caf\u00c3\u00a9'."""
    conn = mysql_store.connect()
    with conn.cursor() as cur:
        cur.execute(resources.files("gsmtpd").joinpath("schema.sql").read_text())
        cur.execute("ALTER TABLE new_mail MODIFY `body_text` longtext CHARACTER SET latin1 NOT NULL")
    conn.close()
    store = MySQLBackend(MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, mysql_store.database,
                         None, timeout=30)
    store.connect()
    try:
        assert store.write([pending(make_row(new_hash(), subject="caf\u00e9", body="caf\u00e9 \u00fcber"))]) == [Verdict.STORED]
    finally:
        store.close()
    row = mysql_store.rows()[0]
    assert (row["subject"], row["body"]) == ("caf\u00e9", "caf\u00e9 \u00fcber")


def test_one_row_over_the_packet_limit_is_too_big_alone(backend, mysql_store):
    if backend.max_packet > 64 << 20:
        pytest.skip(f"max_allowed_packet is {backend.max_packet}: too big to exceed cheaply")
    limit = backend.row_limit()
    # Long values go ahead of the INSERT (COM_STMT_SEND_LONG_DATA): each must fit in a
    # packet, not the row. A mail of exactly the limit goes; one byte more and the row is
    # refused before anything is sent.
    fitting = b"F" * limit
    hashes = [new_hash() for _ in range(4)]
    verdicts = backend.write([pending(make_row(hashes[0])),
                              pending(make_row(hashes[1], mail=fitting)),
                              pending(make_row(hashes[2], mail=fitting + b"!")),
                              pending(make_row(hashes[3]))])
    assert verdicts == [Verdict.STORED, Verdict.STORED, Verdict.TOO_BIG, Verdict.STORED]
    stored = {row["hash"]: len(row["mail"]) for row in mysql_store.rows()}
    assert stored.keys() == {hashes[0], hashes[1], hashes[3]}
    assert stored[hashes[1]] == len(fitting)
    assert backend.row_limit() == backend.max_packet - PACKET_SLACK


def test_a_row_whose_mail_and_body_together_pass_the_packet_limit_is_stored(backend, mysql_store):
    """A 9 MiB message with its 9 MiB body: 18 MiB of row in a 16 MiB max_allowed_packet.
    Each value goes as long data on its own, so the row is stored whole."""
    if backend.max_packet > 64 << 20:
        pytest.skip(f"max_allowed_packet is {backend.max_packet}: too big to exceed cheaply")
    size = backend.row_limit() * 3 // 4
    raw = os.urandom(size)
    body = "b" * size
    row_hash = new_hash()
    assert backend.write([pending(make_row(row_hash, mail=Blob((b"R\r\n", raw)), body=body))]) == [Verdict.STORED]
    row = mysql_store.rows()[0]
    assert (row["hash"], bytes(row["mail"]), row["body"]) == (row_hash, b"R\r\n" + raw, body)


def test_rows_too_many_for_one_packet_go_as_several_statements(backend, mysql_store):
    """Twelve rows of about 3 MiB (raw mail and body text) cannot share one 16 MiB packet."""
    raw = os.urandom(3 << 19)
    body = "x" * (3 << 19)
    batch = [pending(make_row(new_hash(), mail=Blob((b"R: %d\r\n" % n, raw)), body=body))
             for n in range(12)]
    assert backend.write(batch) == [Verdict.STORED] * 12
    rows = mysql_store.rows()
    assert sorted(bytes(row["mail"]) for row in rows) == sorted(b"R: %d\r\n" % n + raw for n in range(12))


def test_a_multi_row_batch_commits_all_rows_at_once(backend, mysql_store):
    conn = backend.conn
    commits, executes = session_status(conn, "Com_commit"), session_status(conn, "Com_stmt_execute")
    batch = [pending(*(make_row(new_hash(), to=f"r{n}.{r}@test.org") for r in range(1 + n % 3)))
             for n in range(100)]
    row_count = sum(len(p.rows) for p in batch)
    assert backend.write(batch) == [Verdict.STORED] * 100
    assert mysql_store.count() == row_count == 199
    assert session_status(conn, "Com_commit") - commits == 1
    # 199 rows: statements of 128, 64 and 7 rows.
    assert statement_sizes(199) == [128, 64, 7]
    assert session_status(conn, "Com_stmt_execute") - executes == 3


def test_a_refused_message_spread_over_statements_leaves_no_row(backend, mysql_store):
    """Its 40 rows (recipients) go as statements of 32 and 8 rows; the last repeats a stored
    hash: the whole message is refused, its first 32 rows rolled back, and the messages
    around it stored."""
    assert statement_sizes(40) == [32, 8]
    taken = new_hash()
    assert backend.write([pending(make_row(taken))]) == [Verdict.STORED]
    before, after = new_hash(), new_hash()
    spread = [make_row(new_hash(), to=f"r{n}@test.org") for n in range(39)] + [make_row(taken)]
    verdicts = backend.write([pending(make_row(before)), pending(*spread), pending(make_row(after))])
    assert verdicts == [Verdict.STORED, Verdict.REFUSED, Verdict.STORED]
    assert {row["hash"] for row in mysql_store.rows()} == {taken, before, after}


def test_statements_are_prepared_again_after_a_reconnect(backend, mysql_store):
    """Statement ids belong to a connection: a new one (ids start again at 1) must not be
    handed the old ids, or every INSERT would fail with "unknown prepared statement"."""
    assert backend.write([pending(make_row(new_hash()))]) == [Verdict.STORED]
    admin = mysql_store.connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"KILL CONNECTION {backend.conn.thread_id()}")
    finally:
        admin.close()
    backend.last_used -= 3600            # long idle: the writer pings, finds it dead, reconnects
    assert backend.write([pending(make_row(new_hash()))]) == [Verdict.STORED]
    # And a plain close and connect, as the Store does after a failed batch.
    backend.close()
    backend.connect()
    assert backend.write([pending(make_row(new_hash())), pending(make_row(new_hash()))]) == [Verdict.STORED] * 2
    assert mysql_store.count() == 4


def test_the_least_recently_used_statement_is_closed(backend):
    conn = backend.conn
    statements = mysql_protocol.PreparedStatements(conn, capacity=2)
    closed = session_status(conn, "Com_stmt_close")
    first = statements.get(b"SELECT ?")
    statements.get(b"SELECT ?, ?")
    assert statements.get(b"SELECT ?") == first           # still there, and now the newest
    statements.get(b"SELECT ?, ?, ?")                     # evicts SELECT ?, ?
    assert session_status(conn, "Com_stmt_close") - closed == 1
    assert list(statements.open) == [b"SELECT ?", b"SELECT ?, ?, ?"]


def test_a_server_error_during_execute_leaves_the_connection_usable(backend, mysql_store):
    thread = backend.conn.thread_id()
    good, long_to, later = new_hash(), new_hash(), new_hash()
    verdicts = backend.write([pending(make_row(good)), pending(make_row(long_to, to="x" * 300))])
    assert verdicts == [Verdict.STORED, Verdict.REFUSED]           # "Data too long": a DataError
    assert backend.write([pending(make_row(later))]) == [Verdict.STORED]
    assert backend.conn.thread_id() == thread
    assert {row["hash"] for row in mysql_store.rows()} == {good, later}


def test_a_failure_half_way_through_a_command_closes_the_connection(backend):
    class NotABuffer:
        """Has a length, so the row is sized, but the socket cannot send it."""

        def __len__(self):
            return 1 << 20

    conn = backend.conn
    statement = backend.statements.get(b"SELECT ?")
    row = mysql_protocol.encode_row([Blob((b"sent first", NotABuffer()))])
    with pytest.raises(TypeError):
        mysql_protocol.execute(conn, statement, [row])
    assert not conn.open, "a command cut half-way must not leave the connection in use"
    backend.close()
    backend.connect()
    assert backend.write([pending(make_row(new_hash()))]) == [Verdict.STORED]


def test_a_connection_lost_during_a_lone_insert_is_checked_and_the_writer_goes_on(mysql_store):
    """A lone INSERT commits itself (autocommit). The connection breaks once it went
    through, before its answer came back: a fresh connection finds the row, so the message
    is STORED, and the next write opens a connection of its own."""
    proxy = TcpProxy((MYSQL_HOST, MYSQL_PORT))
    proxy.start()
    store = MySQLBackend("127.0.0.1", proxy.port, MYSQL_USER, MYSQL_PASSWORD, mysql_store.database,
                         None, timeout=10)
    try:
        store.connect()
        assert store.write([pending(make_row(new_hash()))]) == [Verdict.STORED]
        proxy.cut_after(b"<cut me here>")      # the Message-ID: the statement's last value
        assert store.write([pending(make_row(new_hash(), message_id="<cut me here>"))]) == [Verdict.STORED]
        assert proxy.cut_done.wait(5)
        assert store.conn is None
        assert store.write([pending(make_row(new_hash()))]) == [Verdict.STORED]
    finally:
        store.close()
        proxy.stop()
    assert mysql_store.count() == 3


def test_a_message_to_several_recipients_sends_its_mail_once_and_a_refused_one_leaves_no_rows(backend, mysql_store):
    """Big messages to several recipients go as one SET of their mail and body and one
    INSERT naming them; a batch redone message by message after a refusal keeps each
    message whole: all of its rows, or none."""
    raw = os.urandom(200_000)
    body = "body " * 40_000
    taken = new_hash()
    first = pending(*(make_row(h, to=f"a{n}@test.org", mail=Blob((b"R\r\n", raw)), body=body)
                      for n, h in enumerate([new_hash(), taken, new_hash()])))
    clash = pending(*(make_row(h, to=f"b{n}@test.org", mail=Blob((b"R\r\n", raw)), body=body)
                      for n, h in enumerate([new_hash(), taken])))      # its second row repeats a hash
    small = pending(make_row(new_hash(), to="c@test.org"))
    executes = session_status(backend.conn, "Com_stmt_execute")
    assert backend.write([first, small]) == [Verdict.STORED] * 2
    # The small message's INSERT, then the big one's SET and INSERT: three executes.
    assert session_status(backend.conn, "Com_stmt_execute") - executes == 3
    rows = mysql_store.rows()
    assert sorted(r["to"] for r in rows) == ["a0@test.org", "a1@test.org", "a2@test.org", "c@test.org"]
    assert all(bytes(r["mail"]) == b"R\r\n" + raw and r["body"] == body for r in rows if r["to"] != "c@test.org")
    again = pending(make_row(new_hash(), to="d@test.org"))
    assert backend.write([clash, again]) == [Verdict.REFUSED, Verdict.STORED]
    assert sorted(r["to"] for r in mysql_store.rows() if r["to"][0] in "bd") == ["d@test.org"]
