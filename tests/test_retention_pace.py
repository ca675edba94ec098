"""Retention's pace, at the unit level on real databases (MariaDB and SQLite): on an idle
database one pass deletes the whole backlog at full pace; while rows keep arriving the
purge yields (paces itself to the rows the cut-off passes) and still deletes every row
older than the cut-off, pass after pass, and never a row newer than it."""
from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
import uuid

from gsmtpd import sqlite_store
from gsmtpd.mailbox import open_database
from gsmtpd.retention import AHEAD, Retention, utc_text
from test_retention import fill

RETENTION = 3600
INSERT = "INSERT INTO new_mail (`date`, `to`, body_text, mail, hash, recipient) VALUES (%s, %s, %s, %s, %s, %s)"


def make_table(store) -> None:
    if store.url.startswith("sqlite"):
        conn = sqlite3.connect(store.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(sqlite_store.SCHEMA)
        conn.close()
        return
    from importlib import resources
    conn = store.connect()
    conn.cursor().execute(resources.files("gsmtpd").joinpath("schema.sql").read_text())
    conn.close()


def count(store, where: str, args=()) -> int:
    return len(store.rows(where, args))


def pass_logs(caplog) -> list[re.Match]:
    return [m for r in caplog.records
            if (m := re.search(r"retention pass: purged=(\d+) .*yielded_chunks=(\d+)", r.getMessage()))]


class Arrivals(threading.Thread):
    """Stores rows as a busy server would, a few hundred a second until stopped: half dated
    now ("new"), half dated so that the cut-off passes them a few seconds later ("aging":
    what arrived one retention ago, in steady state; later than AHEAD, so the rate retention
    sees the cut-off passing is theirs). Keeps each row's date."""

    def __init__(self, store):
        super().__init__(daemon=True)
        self.store = store
        self.dates: dict[str, list[str]] = {"new@test.org": [], "aging@test.org": []}
        self.done = threading.Event()

    def run(self) -> None:
        sqlite = self.store.url.startswith("sqlite")
        conn = sqlite3.connect(self.store.path, timeout=30) if sqlite else self.store.connect()
        while not self.done.is_set():
            now = time.time()
            batch = []
            for to, moment in (("new@test.org", now), ("aging@test.org", now - RETENTION + AHEAD + 1)):
                date = utc_text(moment)
                batch += [(date, to, "b", b"Subject: s\r\n\r\nb\r\n", uuid.uuid4().hex, to) for _ in range(10)]
            if sqlite:
                with conn:
                    conn.executemany(INSERT.replace("%s", "?"), batch)
            else:
                conn.cursor().executemany(INSERT, batch)
            for row in batch:
                self.dates[row[1]].append(row[0])
            self.done.wait(0.05)        # the load's rate, not a synchronisation
        conn.close()

    def stop(self) -> None:
        self.done.set()
        self.join(30)


def test_idle_database_loses_its_whole_backlog_in_one_pass(any_store, caplog):
    make_table(any_store)
    fill(any_store, 3000, age=RETENTION + 600)
    fill(any_store, 50, age=RETENTION - 60, to="young@test.org")
    retention = Retention(open_database(any_store.url), RETENTION)
    with caplog.at_level(logging.INFO, logger="gsmtpd.retention"):
        assert retention.purge_pass() == 3000
    assert count(any_store, "`to` = %s", ("old@test.org",)) == 0
    assert count(any_store, "`to` = %s", ("young@test.org",)) == 50
    (log,) = pass_logs(caplog)
    assert log.group(1) == "3000" and log.group(2) == "0"      # nothing arrived: full pace throughout


def test_with_rows_arriving_it_yields_and_still_deletes_all_that_is_old(any_store, caplog):
    make_table(any_store)
    fill(any_store, 1000, age=RETENTION + 600)
    retention = Retention(open_database(any_store.url), RETENTION)
    arrivals = Arrivals(any_store)
    arrivals.start()
    deadline = time.monotonic() + 180
    try:
        while retention.pace.limit is None:          # until it has seen the rows arriving
            retention.pace.look()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with caplog.at_level(logging.INFO, logger="gsmtpd.retention"):
            # Passes until the backlog is gone and rows the cut-off passed meanwhile went too.
            while True:
                cutoff = utc_text(time.time() - RETENTION)
                retention.purge_pass()
                assert count(any_store, "`date` < %s", (cutoff,)) == 0       # all older went in the pass
                aging_gone = sum(d < cutoff for d in arrivals.dates["aging@test.org"])
                if count(any_store, "`to` = %s", ("old@test.org",)) == 0 and aging_gone > 0:
                    break
                assert time.monotonic() < deadline, pass_logs(caplog)
                time.sleep(0.1)
    finally:
        arrivals.stop()
    assert any(int(log.group(2)) > 0 for log in pass_logs(caplog))        # it did yield to the arrivals
    assert count(any_store, "`to` = %s", ("new@test.org",)) == len(arrivals.dates["new@test.org"])
    kept = sum(d >= cutoff for d in arrivals.dates["aging@test.org"])
    assert count(any_store, "`to` = %s", ("aging@test.org",)) == kept      # nothing newer than the cut-off
