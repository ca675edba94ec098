"""--batch-max-bytes: a transaction (one Galera write-set) holds at most that many bytes of
rows. A batch over it is written as several transactions; a message over it alone is
refused with 552 5.3.4 before anything is written."""
from __future__ import annotations

from conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, message
from gsmtpd.mysql_store import MySQLBackend, parts_by_bytes
from gsmtpd.store import Blob, Verdict
from test_mysql_protocol import make_row, new_hash, pending, session_status

MiB = 1 << 20


def big(size: int):
    return pending(make_row(new_hash(), mail=Blob((b"R\r\n", b"x" * size))))


def test_parts_are_cut_at_the_byte_bound():
    batch = [big(600_000), big(600_000), big(100_000), big(3 * MiB), big(10)]
    assert parts_by_bytes(batch, MiB) == [[0], [1, 2], [3], [4]]
    assert parts_by_bytes(batch, 64 * MiB) == [[0, 1, 2, 3, 4]]


def test_a_batch_over_the_bound_is_written_as_several_transactions(mysql_store):
    backend = MySQLBackend(MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, mysql_store.database, None,
                           timeout=30, batch_max_bytes=MiB)
    try:
        backend.connect()
        before = session_status(backend.conn, "Com_stmt_execute")
        batch = [big(600_000) for _ in range(3)]
        assert backend.write(batch) == [Verdict.STORED] * 3
        # Three transactions of one INSERT each, where one INSERT would have held them all.
        assert session_status(backend.conn, "Com_stmt_execute") - before == 3
    finally:
        backend.close()
    assert mysql_store.count() == 3


def test_a_message_over_the_bound_alone_gets_552_and_no_row(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store, batch_max_bytes=MiB, workers=1)
    with server.smtp() as client:
        client.ehlo()
        client.mail("a@example.org")
        client.rcpt("b@test.org")
        code, text = client.data(message(body="y" * (MiB + 1000)))
        assert (code, text) == (552, b"5.3.4 Message too big for storage")
        client.rset()
        client.mail("a@example.org")
        client.rcpt("b@test.org")
        code, _ = client.data(message(body="small"))
        assert code == 250
    assert mysql_store.count() == 1
