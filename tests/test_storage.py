"""250 means stored: what clients see when MariaDB is down, slow, or refuses a row."""
from __future__ import annotations

import re
import threading
import time

import pytest

from conftest import MYSQL_HOST, MYSQL_PORT, MYSQL_USER, message, send
from tcp_proxy import TcpProxy


def try_send(server, subject: str) -> tuple[int, bytes]:
    """One message; returns the reply to DATA (or to the first refused command)."""
    with server.smtp() as client:
        client.ehlo()
        client.mail("a@example.org")
        client.rcpt("b@test.org")
        code, text = client.data(message(subject=subject))
        return code, b"" if code == 250 else text


def proxied_store(mysql_store, proxy: TcpProxy):
    mysql_store.url = f"mysql://{MYSQL_USER}:@127.0.0.1:{proxy.port}/{mysql_store.database}"
    return mysql_store


def test_451_while_mysql_is_unreachable_then_mail_flows_again(mysql_store, gsmtpd_server):
    proxy = TcpProxy((MYSQL_HOST, MYSQL_PORT))          # not started: the port is closed
    server = gsmtpd_server(proxied_store(mysql_store, proxy), save_timeout=3)
    server.wait_log(r"store unreachable at start")
    assert try_send(server, "while down") == (451, b"4.3.0 Temporary storage failure, try again later")

    proxy.start()
    deadline = time.monotonic() + 15
    while try_send(server, "after return")[0] != 250:
        assert time.monotonic() < deadline, "mail not stored again within 15 s of MySQL returning"
        time.sleep(0.2)
    # The connection breaks under the server's feet: 451 (or stored after an immediate
    # reconnect), never a 250 without a row.
    proxy.stop()
    code, _ = try_send(server, "cut off")
    assert code == 451
    proxy.start()
    deadline = time.monotonic() + 15
    while try_send(server, "back again")[0] != 250:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    subjects = [row["subject"] for row in mysql_store.rows()]
    assert "while down" not in subjects and "cut off" not in subjects
    assert subjects.count("after return") == 1 and subjects.count("back again") == 1
    proxy.stop()


def test_stalled_database_gets_451_after_the_save_timeout_and_recovers(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store, save_timeout=2)
    assert try_send(server, "before")[0] == 250
    locker = mysql_store.connect()
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLES new_mail WRITE")
        # The table stays locked until this reply comes: without the save timeout the
        # client would wait for it until its own 30 s timeout and fail.
        assert try_send(server, "stalled") == (451, b"4.3.0 Temporary storage failure, try again later")
    finally:
        with locker.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        locker.close()
    deadline = time.monotonic() + 15
    while try_send(server, "after")[0] != 250:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    subjects = [row["subject"] for row in mysql_store.rows()]
    assert subjects[0] == "before" and "after" in subjects
    assert "stalled" not in subjects, "a message answered 451 must not be stored"


def test_row_bigger_than_max_allowed_packet_is_refused_alone(mysql_store, gsmtpd_server):
    conn = mysql_store.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT @@max_allowed_packet")
        packet = cur.fetchone()[0]
    conn.close()
    if packet > 64 << 20:
        pytest.skip(f"max_allowed_packet is {packet}: too big to exceed cheaply")
    server = gsmtpd_server(mysql_store, max_size=packet + (2 << 20))
    big = message(subject="huge", body=("B" * 998 + "\r\n") * ((packet + (1 << 20)) // 1000))
    results: dict[str, tuple] = {}

    def send_big():
        with server.smtp() as client:
            client.ehlo()
            client.mail("a@example.org")
            client.rcpt("b@test.org")
            results["big"] = client.data(big)

    thread = threading.Thread(target=send_big)
    thread.start()
    small = [try_send(server, f"small {i}") for i in range(5)]
    thread.join(120)
    assert results["big"] == (552, b"5.3.4 Message too big for storage")
    assert small == [(250, b"")] * 5
    assert sorted(r["subject"] for r in mysql_store.rows()) == [f"small {i}" for i in range(5)]


def test_concurrent_messages_share_commits(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store, log_level="debug")
    replies = []

    def sender(n):
        replies.append(try_send(server, f"c{n}"))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert replies == [(250, b"")] * 40
    assert mysql_store.count() == 40
    batch_sizes = [int(n) for n in re.findall(r"committed (\d+) messages", server.log())]
    assert sum(batch_sizes) == 40
    assert max(batch_sizes) > 1, "concurrent messages should be group-committed"


def test_wrong_credentials_stop_the_start_with_a_clear_message(mysql_store, gsmtpd_server, tmp_path):
    mysql_store.url = f"mysql://nobody_here:wrong@{MYSQL_HOST}:{MYSQL_PORT}/{mysql_store.database}"
    with pytest.raises(RuntimeError, match=r"exited with 1") as failure:
        gsmtpd_server(mysql_store)
    assert "MySQL refused us" in str(failure.value) and "Access denied" in str(failure.value)


def test_every_byte_value_survives_the_round_trip(any_store, gsmtpd_server):
    """The MySQL statement is built by hand: quotes, backslashes, NUL and 8-bit bytes in the
    message must come back exactly."""
    server = gsmtpd_server(any_store)
    octets = bytes(b for b in range(256) if b not in (10, 13))
    raw = (b"Subject: bytes\r\nContent-Type: application/octet-stream\r\n\r\n"
           + b"\r\n".join(octets[i:] + b"\\'\"\x00" for i in range(0, 254, 7)) + b"\r\n")
    send(server, "a@example.org", ["b@test.org", "c@test.org"], raw, options=["BODY=8BITMIME"])
    rows = any_store.rows()
    assert len(rows) == 2
    assert all(bytes(row["mail"]).endswith(b"\r\n\r\n" + raw.split(b"\r\n\r\n", 1)[1]) for row in rows)


# Where a batch's commit happens: a lone INSERT statement commits itself (autocommit), so
# its own answer is the one lost; several statements run in a transaction ended by COMMIT.
# 33 recipients are 33 rows, which go out as two statements (32 + 1).
COMMIT_PATHS = {"one statement": 1, "a transaction": 33}


def send_and_cut_the_commit(server, proxy: TcpProxy, subject: str, recipients: int,
                            then_stop: bool = False) -> int:
    """Send one message to ``recipients`` mailboxes, and have the proxy drop the database
    connection once the statement that commits it has gone through, before its answer is
    back. Returns the reply code to DATA."""
    raw = message(subject=subject)
    if recipients == 1:
        # The Message-ID is the INSERT's last parameter: seeing it, the whole statement went.
        cut = re.search(rb"Message-ID: <([^>]+)>", raw).group(1)
    else:
        cut = b"COMMIT"
    proxy.cut_after(cut, then_stop=then_stop)
    with server.smtp() as client:
        client.ehlo()
        client.mail("a@example.org")
        for n in range(recipients):
            client.rcpt(f"r{n}@test.org")
        code, _ = client.data(raw)
    assert proxy.cut_done.wait(5), "the proxy never saw the statement that commits"
    return code


@pytest.mark.parametrize("path", COMMIT_PATHS)
def test_a_commit_whose_answer_is_lost_is_checked_not_guessed(mysql_store, gsmtpd_server, path):
    """The connection breaks after the commit reached MariaDB: the writer looks on a fresh
    connection, finds the rows, and the client gets its 250 (not a 451 that would make it
    send a duplicate)."""
    proxy = TcpProxy((MYSQL_HOST, MYSQL_PORT))
    proxy.start()
    try:
        server = gsmtpd_server(proxied_store(mysql_store, proxy), workers=1)
        assert try_send(server, "warm up")[0] == 250
        assert send_and_cut_the_commit(server, proxy, "answer lost", COMMIT_PATHS[path]) == 250
        server.wait_log(r"the COMMIT's answer was lost but the rows are there")
        assert try_send(server, "after")[0] == 250
    finally:
        proxy.stop()
    subjects = [r["subject"] for r in mysql_store.rows()]
    assert subjects == ["warm up"] + ["answer lost"] * COMMIT_PATHS[path] + ["after"]


@pytest.mark.parametrize("path", COMMIT_PATHS)
def test_a_commit_that_cannot_be_checked_gets_451_and_names_the_message_in_doubt(mysql_store, gsmtpd_server, path):
    """The commit reached MariaDB, its answer was lost, and the database cannot be asked
    (it seems gone): never a 250 on a guess. 451 makes the sender retry, and the log names
    the queue id whose row may be there, so an operator can find the duplicate."""
    proxy = TcpProxy((MYSQL_HOST, MYSQL_PORT))
    proxy.start()
    try:
        server = gsmtpd_server(proxied_store(mysql_store, proxy), workers=1, save_timeout=4)
        assert try_send(server, "warm up")[0] == 250
        assert send_and_cut_the_commit(server, proxy, "in doubt", COMMIT_PATHS[path], then_stop=True) == 451
        line = server.wait_log(r"COMMIT outcome unknown, answering 451.* in_doubt=([0-9a-f]{32})")
    finally:
        proxy.stop()
    rows = mysql_store.rows()
    assert {r["subject"] for r in rows} == {"warm up", "in doubt"}, "this commit did happen: the rows are there"
    assert len(rows) == 1 + COMMIT_PATHS[path]
    # The queue id is the first recipient's row's hash.
    assert line.group(1) == next(r["hash"] for r in rows if r["subject"] == "in doubt")
