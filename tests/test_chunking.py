"""CHUNKING (RFC 3030) with what a client sees: raw sockets (smtplib has no BDAT, nor do
the packaged swaks and smtp-source), a real server, the stored row. The protocol's error
paths are transcripts (tests/transcripts/bdat-*.txt); here are the properties and the
parts a transcript cannot reach: TLS, deadlines, the database being away."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import MYSQL_HOST, MYSQL_PORT, MYSQL_USER, GsmtpdProcess, SQLiteStore
from tcp_proxy import TcpProxy
from test_front_door import certificate, client_context  # noqa: F401  (a fixture)

QUEUED = re.compile(r"^250 2\.0\.0 OK: queued as ([0-9a-f]{32})$")
END_OF_RECEIVED = b" +0000\r\n"     # the Received header's date line ends it


def bdat(chunks: list[bytes]) -> bytes:
    """The BDAT commands for these chunks, the last one with LAST."""
    return b"".join(b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
                    for i, c in enumerate(chunks))


def send_chunked(client, chunks: list[bytes]) -> str:
    """MAIL, RCPT and the chunks, all pipelined; returns the reply to the last chunk."""
    client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@test.org>\r\n" + bdat(chunks))
    assert client.reply() == "250 2.1.0 Sender OK"
    assert client.reply() == "250 2.1.5 Recipient OK"
    for chunk in chunks[:-1]:
        assert client.reply() == f"250 2.0.0 {len(chunk)} octets received"
    return client.reply()


def stored_message(store, queue_id: str) -> tuple[bytes, dict]:
    """The message as stored after our Received header, and its row."""
    (row,) = store.rows("hash = %s", (queue_id,))
    mail = bytes(row["mail"])
    return mail[mail.index(END_OF_RECEIVED) + len(END_OF_RECEIVED):], row


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chunking")
    proc = GsmtpdProcess(tmp, SQLiteStore(tmp / "mail.db"), {"max_size": 100000})
    yield proc
    proc.stop()


# Messages with the bytes that DATA would treat specially: dot lines, the end marker,
# bare CR and LF, NUL, 8-bit; split anywhere into chunks, some of them empty.
pieces = st.sampled_from([b"Subject: chunks\r\n", b"\r\n", b".\r\n", b"..", b"\r\n.\r\n", b"\n", b"\r",
                          b"\x00", "Grüße\r\n".encode(), b"BDAT 5 LAST\r\n", b"x" * 500])
messages = st.one_of(st.binary(max_size=2000), st.lists(pieces, max_size=30).map(b"".join))


@st.composite
def split(draw):
    message = draw(messages)
    cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=8)))
    bounds = [0, *cuts, len(message)]
    return message, [message[a:b] for a, b in zip(bounds, bounds[1:])]


@given(split())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_split_into_chunks_stores_the_same_bytes_as_one_chunk(server, case):
    message, chunks = case
    client = server.raw()
    try:
        assert client.reply().startswith("220 ")
        assert "250-CHUNKING" in client.command("EHLO client.example").split("\n")
        whole = QUEUED.match(send_chunked(client, [message]))
        parts = QUEUED.match(send_chunked(client, chunks))
        assert whole and parts
    finally:
        client.close()
    one, one_row = stored_message(server.store, whole.group(1))
    many, many_row = stored_message(server.store, parts.group(1))
    assert one == many == message, "stored byte for byte, whatever the chunks"
    assert one_row["size"] == many_row["size"] == len(message)
    for column in ("subject", "body", "charset", "content_type", "from"):
        assert one_row[column] == many_row[column]


def test_starttls_is_refused_while_chunks_are_pending(sqlite_store, gsmtpd_server, certificate):  # noqa: F811
    cert, key = certificate
    server = gsmtpd_server(sqlite_store, tls_cert=cert, tls_key=key)
    client = server.raw()
    assert client.reply().startswith("220 ")
    assert "STARTTLS" in client.command("EHLO client.example")
    client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@test.org>\r\nBDAT 6\r\nfirst\n")
    assert [client.reply() for _ in range(3)][-1] == "250 2.0.0 6 octets received"
    # No chunk may straddle the handshake: the plaintext part would join the TLS part.
    assert client.command("STARTTLS") == "503 5.5.1 STARTTLS not allowed while BDAT chunks are pending"
    client.send(b"BDAT 5 LAST\r\nlast\n")
    queued = QUEUED.match(client.reply())
    assert queued
    message, row = stored_message(sqlite_store, queued.group(1))
    assert message == b"first\nlast\n" and row["is_tls"] == 0
    # With no chunks pending, STARTTLS goes ahead as ever, and chunks come over TLS:
    # large ones, that take many reads of the TLS socket.
    assert client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    client.sock = client_context().wrap_socket(client.sock, server_hostname="mx.test")
    assert "250-CHUNKING" in client.command("EHLO client.example").split("\n")
    chunks = [b"Subject: over TLS\r\n\r\n", bytes(range(256)) * 2000, b"\r\n.\r\n" * 50000]
    queued = QUEUED.match(send_chunked(client, chunks))
    assert queued
    message, row = stored_message(sqlite_store, queued.group(1))
    assert message == b"".join(chunks) and row["is_tls"] == 1
    assert b" with ESMTPS id " in bytes(row["mail"])


def test_megabytes_in_chunks_are_stored_whole(sqlite_store, gsmtpd_server):
    """Chunks far larger than one read of the socket, and a message past the limit whose
    chunks are read and dropped: the session stays in step for the next message."""
    server = gsmtpd_server(sqlite_store, max_size=3_000_000)
    client = server.raw()
    assert client.reply().startswith("220 ")
    client.command("EHLO client.example")
    chunks = [b"Subject: big\r\n\r\n", b"a" * 1_000_000, b"b\nc\r" * 300_000]
    queued = QUEUED.match(send_chunked(client, chunks))
    assert queued
    assert stored_message(sqlite_store, queued.group(1))[0] == b"".join(chunks)
    too_big = [b"c" * 2_000_000, b"d" * 1_000_001, b"e" * 10]
    client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@test.org>\r\n" + bdat(too_big) + b"NOOP\r\n")
    replies = [client.reply() for _ in range(6)]
    assert replies[2:] == ["250 2.0.0 2000000 octets received", "552 5.3.4 Message size exceeds fixed limit",
                           "503 5.5.1 Need MAIL command first", "250 2.0.0 OK"]
    assert sqlite_store.count() == 1


def test_a_client_silent_inside_a_chunk_gets_421_and_nothing_is_stored(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, timeout=1)
    client = server.raw()
    assert client.reply().startswith("220 ")
    client.command("EHLO client.example")
    client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@test.org>\r\nBDAT 100 LAST\r\nonly part")
    assert [client.reply() for _ in range(3)][-1] == "421 4.4.2 Timeout during DATA, closing connection"
    assert client.closed()
    assert sqlite_store.count() == 0


def test_the_data_deadline_covers_all_the_chunks_of_a_message(sqlite_store, gsmtpd_server):
    """Each tiny chunk comes at once, but the message as a whole must be in within
    --data-timeout, as with DATA (RFC 5321 4.5.3.2.6): no endless transaction."""
    server = gsmtpd_server(sqlite_store, timeout=5, data_timeout=1)
    client = server.raw()
    assert client.reply().startswith("220 ")
    client.command("EHLO client.example")
    client.command("MAIL FROM:<alice@example.org>")
    client.command("RCPT TO:<bob@test.org>")
    for _ in range(1_000_000):      # bounded; about 10,000 chunks go in the second
        client.send(b"BDAT 1\r\nx")
        reply = client.reply()
        if reply != "250 2.0.0 1 octets received":
            break
    assert reply == "421 4.4.2 Timeout during DATA, closing connection"
    assert client.closed()
    assert sqlite_store.count() == 0


def test_451_when_the_database_is_away_at_the_last_chunk(mysql_store, gsmtpd_server):
    proxy = TcpProxy((MYSQL_HOST, MYSQL_PORT))         # never started: the port is closed
    mysql_store.url = f"mysql://{MYSQL_USER}:@127.0.0.1:{proxy.port}/{mysql_store.database}"
    server = gsmtpd_server(mysql_store, save_timeout=3)
    server.wait_log(r"store unreachable at start")
    client = server.raw()
    assert client.reply().startswith("220 ")
    client.command("EHLO client.example")
    reply = send_chunked(client, [b"Subject: away\r\n\r\n", b"body\r\n"])
    assert reply == "451 4.3.0 Temporary storage failure, try again later"
    assert client.command("NOOP") == "250 2.0.0 OK", "the session goes on"


def test_binary_chunks_are_stored_byte_exact_in_mariadb(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store)
    body = bytes(range(256)) * 4 + b"\r\n.\r\n\n.\n\r"
    chunks = [b"Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n", body[:300], body[300:]]
    client = server.raw()
    assert client.reply().startswith("220 ")
    client.command("EHLO client.example")
    client.send(b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<bob@test.org>\r\n" + bdat(chunks))
    replies = [client.reply() for _ in range(5)]
    queued = QUEUED.match(replies[-1])
    assert queued, replies
    message, row = stored_message(mysql_store, queued.group(1))
    assert message == b"".join(chunks)
    assert row["subject"] == "binary" and row["size"] == len(message)


def test_chunks_count_against_the_memory_budget_until_the_transaction_ends(sqlite_store, gsmtpd_server):
    """BDAT chunks are held against --memory-budget as DATA is (issue #15): with three
    sessions each holding a 9 MiB chunk (18 MiB of budget each, of the 56 MiB big messages
    may use), a fourth's chunk does not fit and gets 452 4.3.1 (read and dropped, so its
    session stays in step). A holder's RSET, and a holder going away, free its budget."""
    server = gsmtpd_server(sqlite_store, memory_budget=64 << 20, workers=1)
    big = b"Subject: held\r\n\r\n" + b"x" * (9 << 20)

    def holder():
        client = server.raw()
        assert client.reply().startswith("220 ")
        client.command("EHLO holder.example")
        client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@test.org>\r\nBDAT %d\r\n" % len(big) + big)
        assert [client.reply() for _ in range(3)][2] == f"250 2.0.0 {len(big)} octets received"
        return client

    holders = [holder() for _ in range(3)]
    late = server.raw()
    assert late.reply().startswith("220 ")
    late.command("EHLO late.example")
    late.send(b"MAIL FROM:<carol@example.org>\r\nRCPT TO:<bob@test.org>\r\n" + bdat([big, b"tail"]) + b"NOOP\r\n")
    assert [late.reply() for _ in range(5)][2:] == [
        "452 4.3.1 Insufficient system storage, try again later", "503 5.5.1 Need MAIL command first",
        "250 2.0.0 OK"]
    assert holders[0].command("RSET").startswith("250 ")
    queued = QUEUED.match(send_chunked(late, [big, b"tail"]))
    assert queued and stored_message(sqlite_store, queued.group(1))[0] == big + b"tail"
    holders[1].close()
    server.wait_log(r"disconnect ip=127\.0\.0\.1 messages=0 errors=0")
    holders.append(holder())     # holders 2 and 3 hold 36 MiB: 18 more fit only if 1 let go
    queued = QUEUED.match(send_chunked(late, [big, b"tail"]))
    assert queued and stored_message(sqlite_store, queued.group(1))[0] == big + b"tail"
    for client in holders[2:]:
        queued = QUEUED.match(client.command(b"BDAT 4 LAST\r\ntail"))
        assert queued and stored_message(sqlite_store, queued.group(1))[0] == big + b"tail"
