"""The event stream under a burst: every message of the mailbox comes exactly once, on the
same connection, however many arrive at once; a late commit below the newest id sent still
comes. Real gsmtpd, real SMTP, a real ``gsmtpd web`` process, real HTTP."""
from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import Counter

from conftest import message
from web_client import Client, WebProcess

BURST = 6000           # messages to one mailbox: six times a subscriber's queue
CONNECTIONS = 4        # smtplib connections sending at once, many messages each
# A long subject (3 bytes a character in UTF-8; the header line stays under RFC 5322's
# 998) and a long body make each event about 1.3 KB: the burst's events are more than the
# server's socket buffer (tcp_wmem's 4 MB at most) and a subscriber's queue hold together.
WIDE = "\u20ac" * 240


def burst(server, box: str, count: int, wide: bool = False) -> None:
    """``count`` messages to ``box`` over CONNECTIONS connections at once; each must get 250."""
    failures: list[str] = []

    def sender(n: int) -> None:
        try:
            with server.smtp() as client:
                for i in range(n):
                    subject, body = (f"{WIDE} {i}", WIDE + "\r\n") if wide else (f"burst {i}", "burst\r\n")
                    client.sendmail("a@example.org", [box], message(subject=subject, body=body, to=box))
        except Exception as exc:  # reported below, with what it was
            failures.append(repr(exc))

    share = [count // CONNECTIONS + (i < count % CONNECTIONS) for i in range(CONNECTIONS)]
    threads = [threading.Thread(target=sender, args=(n,)) for n in share]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def read_ids(stream, count: int) -> list[int]:
    """The ids of the next ``count`` events; a closed stream or a silent one raises."""
    ids = []
    while len(ids) < count:
        event = stream.next_event()
        assert event["event"] == "message" and int(event["id"]) == event["data"]["id"]
        ids.append(event["data"]["id"])
    return ids


def test_a_burst_to_one_mailbox_comes_whole_on_one_stream(any_store, gsmtpd_server, tmp_path):
    """A client that reads nothing while a burst is stored, through a small window (the
    server's writes wait, as they do for a slow reader across a real network): more events
    wait for it than its socket and its queue hold. The stream must not end, nor lose or
    repeat one."""
    server = gsmtpd_server(any_store)
    web = WebProcess(tmp_path, any_store.url)
    box = "burst@test.org"
    try:
        client = Client(web.host, web.port)
        stream = client.events(box, receive_buffer=4096)   # subscribed once its headers are here
        burst(server, box, BURST, wide=True)
        stored = [row["mail_id"] for row in any_store.rows("`to` = %s", (box,))]
        assert len(stored) == BURST
        got = read_ids(stream, BURST)
        repeated = [i for i, n in Counter(got).items() if n > 1]
        assert not repeated, repeated[:10]
        assert sorted(got) == stored

        # Still live on the same connection afterwards.
        burst(server, box, 3)
        newest = [row["mail_id"] for row in any_store.rows("`to` = %s", (box,))][-3:]
        assert sorted(read_ids(stream, 3)) == newest
        stream.close()
    finally:
        web.stop()
    assert "Traceback" not in web.log()


def insert_row(path, mail_id: int, box: str, subject: str) -> None:
    """A row with a chosen id, as a writer whose transaction got its id early and commits late
    leaves it (two writers, or Galera's interleaved auto-increment)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO new_mail (mail_id, `date`, `to`, subject, body_text, mail, hash, recipient) "
                     "VALUES (?, datetime('now'), ?, ?, 'late', X'6c617465', ?, ?)",
                     (mail_id, box, subject, uuid.uuid4().hex, box))
        conn.commit()
    finally:
        conn.close()


def test_a_late_commit_below_the_newest_sent_still_comes(sqlite_store, gsmtpd_server, tmp_path):
    server = gsmtpd_server(sqlite_store)
    web = WebProcess(tmp_path, sqlite_store.url)
    box = "late@test.org"
    try:
        client = Client(web.host, web.port)
        burst(server, box, 1)
        top = sqlite_store.rows()[-1]["mail_id"]
        stream = client.events(box, last_event_id=top, receive_buffer=4096)
        insert_row(sqlite_store.path, top + 10, box, "early id, committed first")
        burst(server, box, 1)                                  # gets top + 11
        assert sorted(read_ids(stream, 2)) == [top + 10, top + 11]
        insert_row(sqlite_store.path, top + 5, box, "committed late")
        event = stream.next_event()
        assert event["data"]["id"] == top + 5 and event["data"]["subject"] == "committed late"

        # And after a burst that overflowed the queue (the stream caught up from the
        # database), late ones still come, once.
        burst(server, box, BURST, wide=True)
        stored = [row["mail_id"] for row in sqlite_store.rows("`to` = %s AND mail_id > %s", (box, top + 11))]
        assert len(stored) == BURST
        assert sorted(read_ids(stream, BURST)) == stored
        insert_row(sqlite_store.path, stored[-1] + 10, box, "ahead")
        burst(server, box, 1)
        assert sorted(read_ids(stream, 2)) == [stored[-1] + 10, stored[-1] + 11]
        insert_row(sqlite_store.path, stored[-1] + 3, box, "late after the burst")
        assert read_ids(stream, 1) == [stored[-1] + 3]

        # Later still: a whole batch of another writer (200 rows) and more below the newest.
        insert_row(sqlite_store.path, stored[-1] + 700, box, "far ahead")
        burst(server, box, 1)
        assert sorted(read_ids(stream, 2)) == [stored[-1] + 700, stored[-1] + 701]
        insert_row(sqlite_store.path, stored[-1] + 100, box, "600 below the newest")
        assert read_ids(stream, 1) == [stored[-1] + 100]
        stream.close()
    finally:
        web.stop()


def test_a_resume_gets_everything_missed_however_much(sqlite_store, gsmtpd_server, tmp_path):
    """A browser away while 1000 messages came reconnects with Last-Event-ID: all of them
    come, in order, then the live ones."""
    server = gsmtpd_server(sqlite_store)
    web = WebProcess(tmp_path, sqlite_store.url)
    box = "away@test.org"
    try:
        burst(server, box, 1)
        last = sqlite_store.rows("`to` = %s", (box,))[-1]["mail_id"]
        burst(server, box, 1000)
        missed = [row["mail_id"] for row in sqlite_store.rows("`to` = %s AND mail_id > %s", (box, last))]
        stream = Client(web.host, web.port).events(box, last_event_id=last)
        assert read_ids(stream, 1000) == missed
        burst(server, box, 1)
        assert read_ids(stream, 1) == [sqlite_store.rows("`to` = %s", (box,))[-1]["mail_id"]]
        stream.close()
    finally:
        web.stop()
