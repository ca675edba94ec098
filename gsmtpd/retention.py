"""Retention: rows older than ``--retention`` seconds are deleted, a small chunk at a time.

It runs as a greenlet of the web process (``gsmtpd web``, which the master starts when
``--web`` or ``--retention`` is given), with its own connection: never in a session's path
and never on the writer's connection.

Each chunk is one autocommitted statement pair: select up to CHUNK primary keys older than
the cut-off from the `date` index, then ``DELETE ... WHERE mail_id IN (...) AND date <
cutoff``. Each select starts after the last (date, mail_id) the one before returned: InnoDB
keeps deleted index entries until its purge thread gets to them, and a select starting at
the oldest date again walked over all of them every chunk (bench/web_load.py, retention
only, ~17000 rows purged during W1: MariaDB CPU over the load 7.9 s that way, 4.4 s this
way; 2.0-2.3 s with no purge).
So a chunk holds its row locks (InnoDB) or the write lock (SQLite) for a few milliseconds,
and the writer's group commits slip in between chunks.

How fast it goes (Pace): deleting a row costs MariaDB about what storing one does (the
DELETE, then InnoDB's background purge of the delete-marked entries), so on a busy server
every row purged is CPU taken from the writers. Between chunks it looks at how fast rows
arrive (the newest mail_id's growth, an index lookup; SQLite the same). Below QUIET rows a
second the server is idle and the purge runs at full pace: a pause of DUTY times the chunk's
own time (1,500-5,000 rows/s on the 2-core bench machine). Above it, the purge goes only a
little faster (MARGIN) than the rows the cut-off is passing right now, counted as those dated
within the next AHEAD seconds after it, and at least FLOOR rows a second: in steady state that
is what arrived one retention ago, so retention keeps up, while a backlog of rows long past
the cut-off waits for a quiet moment (bench/README.md, bench/web_load.py: with a 100,000-row
backlog purged at full pace beside W1, W1 ran at 0.41 of its rate alone).

Several nodes may purge the same database at once: a chunk deletes only rows that are
still there and still older than the cut-off (the ``date`` condition is repeated in the
DELETE), so a chunk another purger got first deletes nothing, and nothing newer than the
cut-off is ever touched. A deadlock, lock wait timeout or Galera certification conflict
(1213, 1205) or SQLite's "database is locked" retries the chunk.
"""
from __future__ import annotations

import calendar
import logging
import os
import time

import gevent

from .mailbox import StoreDown, newest_id

log = logging.getLogger("gsmtpd.retention")

CHUNK = 500            # rows per DELETE: a few ms of locks on InnoDB and SQLite alike
PAUSE = 0.02           # seconds at least between chunks
DUTY = 4               # pause = DUTY x the chunk's own time
QUIET = 50             # new rows a second below which the writers count as idle: full pace
FLOOR = 100            # rows a second purged at least while busy: 360,000 an hour
MARGIN = 1.25          # while busy: this times the rate the cut-off passes rows
AHEAD = 5.0            # seconds after the cut-off whose rows give that rate
SAMPLE = 1.0           # seconds at least between two looks at the arrival rate
INTERVAL = 60.0        # seconds between passes (shorter when the retention is shorter)
CONFLICT_RETRIES = 5


def _metrics():
    """Rows purged and the oldest row's age, in prometheus-client's multiprocess files
    (the workers' /metrics sums them), when --metrics is on."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None, None
    from prometheus_client import Counter, Gauge
    return (Counter("gsmtpd_retention_purged_rows", "rows deleted by retention"),
            Gauge("gsmtpd_oldest_message_age_seconds", "age of the oldest stored row",
                  multiprocess_mode="max"))


def utc_text(moment: float) -> str:
    """The `date` column's form (UTC, 'YYYY-MM-DD HH:MM:SS'): compares as text in SQLite too."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment))


class Retention:
    def __init__(self, db, seconds: float, chunk: int = CHUNK, pause: float = PAUSE,
                 interval: float | None = None):
        self.db = db
        self.seconds = seconds
        self.chunk = chunk
        self.pause = pause
        self.interval = interval if interval is not None else max(1.0, min(INTERVAL, seconds / 10))
        self.purged_metric, self.age_metric = _metrics()
        self.pace = Pace(db, seconds, pause)
        self.greenlet = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self.run)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill()

    def run(self) -> None:
        while True:
            try:
                self.purge_pass()
            except StoreDown as exc:
                log.warning("retention pass failed, next in %.0fs: %s", self.interval, exc)
            gevent.sleep(self.interval)

    def purge_pass(self, now: float | None = None) -> int:
        """Delete every row older than the retention; returns how many this pass deleted."""
        started = time.monotonic()
        cutoff = utc_text((now or time.time()) - self.seconds)
        purged = chunks = yielded = 0
        after: list = []
        self.pace.look()        # the arrival rate since the pass before decides the first chunk
        while True:
            began = time.monotonic()
            deleted = self._chunk(cutoff, after)
            if deleted is None:
                break
            purged += deleted
            chunks += 1
            if self.purged_metric is not None and deleted:
                self.purged_metric.inc(deleted)
            wait = self.pace.after_chunk(deleted, time.monotonic() - began)
            yielded += self.pace.limit is not None
            gevent.sleep(wait)
        age = self.oldest_age()
        if self.age_metric is not None:
            self.age_metric.set(age)
        log.info("retention pass: purged=%d chunks=%d cutoff=%s oldest_age=%.0fs took=%.2fs "
                 "yielded_chunks=%d", purged, chunks, cutoff.replace(" ", "T") + "Z", age,
                 time.monotonic() - started, yielded)
        return purged

    def _chunk(self, cutoff: str, after: list) -> int | None:
        """One chunk: rows deleted (0 when another purger got them first), None when
        nothing older than the cut-off is left. ``after``: [date, mail_id] the previous
        chunk ended at ([] at first), moved on here."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                if after:
                    rows = self.db.rows(
                        "SELECT mail_id, `date` FROM new_mail WHERE `date` < %s AND (`date` > %s OR "
                        "(`date` = %s AND mail_id > %s)) ORDER BY `date`, mail_id LIMIT %s",
                        (cutoff, after[0], after[0], after[1], self.chunk))
                else:
                    rows = self.db.rows("SELECT mail_id, `date` FROM new_mail WHERE `date` < %s "
                                        "ORDER BY `date`, mail_id LIMIT %s", (cutoff, self.chunk))
                if not rows:
                    return None
                ids = [row["mail_id"] for row in rows]
                marks = ",".join(["%s"] * len(ids))
                deleted = self.db.execute(
                    f"DELETE FROM new_mail WHERE mail_id IN ({marks}) AND `date` < %s", (*ids, cutoff))
                after[:] = [rows[-1]["date"], rows[-1]["mail_id"]]
                return deleted
            except StoreDown as exc:
                if not self.db.is_conflict(exc) or attempt == CONFLICT_RETRIES - 1:
                    raise
                gevent.sleep(self.pause * (attempt + 1))
        return None

    def oldest_age(self) -> float:
        rows = self.db.rows("SELECT MIN(`date`) AS oldest FROM new_mail")
        oldest = rows[0]["oldest"] if rows else None
        if oldest is None:
            return 0.0
        text = oldest.strftime("%Y-%m-%d %H:%M:%S") if hasattr(oldest, "strftime") else str(oldest)
        return max(0.0, time.time() - calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


class Pace:
    """The wait after each chunk: full pace while rows arrive slower than QUIET a second,
    else just above the rate the cut-off passes rows (at least FLOOR). ``limit`` is the
    rows-a-second cap in force, None at full pace. Kept across passes, so a pass's first
    look compares with the last one of the pass before."""

    def __init__(self, db, seconds: float, pause: float = PAUSE):
        self.db = db
        self.seconds = seconds
        self.pause = pause
        self.limit: float | None = None
        self.seen: tuple[float, int] | None = None      # (monotonic time, newest mail_id)

    def after_chunk(self, deleted: int, took: float) -> float:
        """Seconds to wait after a chunk that deleted ``deleted`` rows in ``took`` seconds."""
        self.look()
        least = max(self.pause, DUTY * took)
        if self.limit is None:
            return least
        return max(least, deleted / self.limit - took)

    def look(self) -> None:
        """Every SAMPLE seconds at most: quiet (full pace) or busy (``limit`` set)?"""
        if self.seen is None:       # the first look of all: a verdict before the first chunk
            self.seen = (time.monotonic(), newest_id(self.db))
            gevent.sleep(SAMPLE)
        now = time.monotonic()
        if now - self.seen[0] < SAMPLE:
            return
        newest = newest_id(self.db)
        arriving = (newest - self.seen[1]) / (now - self.seen[0])
        self.limit = None if arriving < QUIET else max(FLOOR, MARGIN * self.passing())
        self.seen = (now, newest)

    def passing(self) -> float:
        """Rows a second the cut-off passes now: those dated within AHEAD seconds after it."""
        start = time.time() - self.seconds
        rows = self.db.rows("SELECT COUNT(*) AS n FROM new_mail WHERE `date` >= %s AND `date` < %s",
                            (utc_text(start), utc_text(start + AHEAD)))
        return int(rows[0]["n"]) / AHEAD if rows else 0.0
