"""Retention: old rows go within one pass while new mail keeps being stored; two purgers on
one MariaDB at once delete every old row once and nothing newer."""
from __future__ import annotations

import re
import sqlite3
import threading
import time
import urllib.request
import uuid

from conftest import message, send
from web_client import WebProcess

RETENTION = 3600


def fill(store, count: int, age: float, to: str = "old@test.org") -> None:
    """``count`` rows stored ``age`` seconds ago (what the server wrote back then)."""
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - age))
    rows = [(date, to, "old body", b"Subject: old\r\n\r\nold body\r\n", uuid.uuid4().hex, to)
            for _ in range(count)]
    sql = "INSERT INTO new_mail (`date`, `to`, body_text, mail, hash, recipient) VALUES (%s, %s, %s, %s, %s, %s)"
    if store.url.startswith("sqlite"):
        conn = sqlite3.connect(store.path)
        with conn:
            conn.executemany(sql.replace("%s", "?"), rows)
        conn.close()
        return
    conn = store.connect()
    with conn.cursor() as cur:
        cur.executemany(sql, rows)
    conn.close()


def ids_where(store, where: str, args=()) -> set[int]:
    return {row["mail_id"] for row in store.rows(where, args)}


class Sender(threading.Thread):
    """Sends mail over SMTP, one message after another, until told to stop; keeps the
    queue ids of every 250."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.queued: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.queued.append(send(self.server, "a@example.org", ["new@test.org"], message(to="new@test.org")))

    def stop(self) -> list[str]:
        self.done.set()
        self.join(30)
        return self.queued


def test_old_rows_go_in_one_pass_while_new_mail_is_stored(any_store, gsmtpd_server):
    setup = gsmtpd_server(any_store)             # makes the table
    send(setup, "a@example.org", ["new@test.org"], message(to="new@test.org"))
    setup.stop()
    # While the sender keeps rows arriving, retention purges at its floor (100 rows/s):
    # a few thousand rows are enough for many chunks and keep the test short.
    old = 2000 if any_store.url.startswith("mysql") else 1000
    fill(any_store, old, age=RETENTION + 600)
    fill(any_store, 50, age=RETENTION - 60, to="young@test.org")     # just inside the retention
    young = ids_where(any_store, "`to` = %s", ("young@test.org",))

    server = gsmtpd_server(any_store, retention=RETENTION, workers=2, metrics="127.0.0.1:0")
    sender = Sender(server)
    sender.start()
    first_pass = server.wait_log(r"retention pass: purged=(\d+) chunks=(\d+)", timeout=60)
    queued = sender.stop()
    assert int(first_pass.group(1)) == old and int(first_pass.group(2)) >= old // 500
    assert ids_where(any_store, "`to` = %s", ("old@test.org",)) == set()
    assert ids_where(any_store, "`to` = %s", ("young@test.org",)) == young
    stored = {row["hash"] for row in any_store.rows("`to` = %s", ("new@test.org",))}
    assert len(queued) > 0 and set(queued) <= stored        # every 250 during the purge is there

    scrape = urllib.request.urlopen(server.wait_log(r"metrics on (http://\S+/metrics)").group(1), timeout=10)
    metrics = scrape.read().decode()
    assert re.search(r"^gsmtpd_retention_purged_rows_total %d\.0$" % old, metrics, re.M), metrics
    age = float(re.search(r"^gsmtpd_oldest_message_age_seconds (\S+)$", metrics, re.M).group(1))
    assert RETENTION - 120 < age < RETENTION                  # the young rows are now the oldest


def test_two_purgers_at_once_lose_nothing_newer(mysql_store, gsmtpd_server, tmp_path):
    server = gsmtpd_server(mysql_store)
    send(server, "a@example.org", ["new@test.org"], message(to="new@test.org"))
    fill(mysql_store, 4000, age=RETENTION + 600)
    fill(mysql_store, 300, age=RETENTION - 30, to="young@test.org")
    kept = ids_where(mysql_store, "`to` <> %s", ("old@test.org",))
    sender = Sender(server)
    sender.start()
    purgers = [WebProcess(tmp_path, mysql_store.url, "--retention", str(RETENTION), listen="")
               for _ in range(2)]
    try:
        purged = 0
        for purger in purgers:
            deadline = time.monotonic() + 60
            while not (match := re.search(r"retention pass: purged=(\d+)", purger.log())):
                assert time.monotonic() < deadline and purger.proc.poll() is None, purger.log()
                time.sleep(0.05)
            purged += int(match.group(1))
    finally:
        queued = sender.stop()
        for purger in purgers:
            purger.stop()
    assert purged == 4000                                   # each old row deleted once, by one of them
    assert ids_where(mysql_store, "`to` = %s", ("old@test.org",)) == set()
    assert kept <= ids_where(mysql_store, "1")              # nothing newer than the cut-off lost
    stored = {row["hash"] for row in mysql_store.rows("`to` = %s", ("new@test.org",))}
    assert set(queued) <= stored
