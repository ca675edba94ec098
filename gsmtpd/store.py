"""The writer: one greenlet per process owns the database connection.

Sessions hand a finished message to ``Store.save()``, which puts it on a bounded gevent
Queue and waits. The writer takes everything waiting (up to ``batch_max``), writes it with
multi-row INSERTs and one COMMIT (group commit), then wakes each session with its verdict.
A session only says 250 after its verdict is STORED: the row is committed.

Failure classes:
- transient (connection lost, lock wait, timeout, schema trouble): 451 4.3.0 for the whole
  batch, the connection is dropped and re-opened with backoff. Nothing was committed.
- permanent for one message (the database refuses that row: too big for max_allowed_packet,
  bad data): 5xx for that message only; the rest of its batch is written.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote, urlsplit

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Full, Queue

from . import metrics, row

log = logging.getLogger("gsmtpd.store")

# Columns of new_mail written by the server, in the order of every row tuple (row.py).
COLUMNS = row.NAMES


class Blob(tuple):
    """A bytes column value given as parts (the Received header, then the raw message), so
    a large message is not copied just to put a header in front of it."""

    def join(self) -> bytes:
        return b"".join(self)


class Utf8Text(Blob):
    """A text column's value already encoded as UTF-8, as parts: the body of a message,
    encoded once when its rows are built (and its str dropped), so that no writer holds
    the text twice (str and bytes) or encodes it again for every recipient."""


class SlicedText(Utf8Text):
    """A body that is ``mail`` from byte ``start`` on, decoded as UTF-8, without its CRs
    (row.py: a table with body_start stores it as that offset, and not its text)."""

    def __new__(cls, parts: tuple, start: int):
        text = super().__new__(cls, parts)
        text.start = start
        return text


def sliced_row(values) -> list:
    """A row tuple as a table that stores the body as a slice of mail takes it
    (row.SLICED_NAMES): body_text in the place of body, empty for a SlicedText, and
    body_start last, NULL for any other body."""
    values = list(values)
    body = values[BODY]
    if type(body) is SlicedText:
        values[BODY] = ""
        values.append(body.start)
    else:
        values.append(None)
    return values


# The columns a writer names, in the order of a row's values: a table made by schema.sql or
# row.sqlite_schema stores the body as a slice of mail where it can (row.SLICED_NAMES, the
# values from sliced_row); one made before has a real `body` column and takes the row tuple
# as it is (COLUMNS). The stores find out which at connect (row.mysql_sliced, sqlite_sliced).
WRITTEN = {False: COLUMNS, True: row.SLICED_NAMES}


# The columns that differ between the rows of one message (one row per recipient); the
# others are the message's and are the same in all of its rows.
PER_RECIPIENT = tuple(column.name for column in row.COLUMNS if column.per_recipient)
MAIL, BODY = COLUMNS.index("mail"), COLUMNS.index("body")


# A message this big (raw) is written after the small ones of its batch (Store._run).
BIG_MESSAGE = 1 << 20


def value_size(value) -> int:
    """Bytes of a column value given whole or as a Blob's parts (characters of a str)."""
    return sum(map(len, value)) if isinstance(value, Blob) else len(value)


def message_size(rows: list[tuple]) -> int:
    """Bytes of a message's raw mail (its first row's `mail`)."""
    return value_size(rows[0][MAIL])


class Verdict(Enum):
    STORED = "stored"            # committed: 250
    TRANSIENT = "transient"      # not stored, try again: 451 4.3.0
    TOO_BIG = "too_big"          # the database cannot hold it: 552 5.3.4
    REFUSED = "refused"          # the database refused this row for good: 554 5.3.0


class TransientError(Exception):
    """The batch was not committed and may succeed later."""


class StoreUnreachable(TransientError):
    """Nothing answers at the store's address (yet): the server starts and answers 451."""


class StoreMisconfigured(TransientError):
    """The store answers but refuses us (credentials, database, schema): fatal at start,
    retried like any transient error once the server is running."""


class RowRefused(Exception):
    """The database refused this message's rows for a reason that will not go away."""

    def __init__(self, verdict: Verdict, reason: str):
        super().__init__(reason)
        self.verdict = verdict


# States of a Pending message; the writer claims QUEUED ones, a session that gives up
# cancels them, so a message is never committed after its session answered 451.
QUEUED, WRITING, CANCELLED = range(3)


@dataclass(eq=False, slots=True)
class Pending:
    rows: list[tuple]
    deadline: float              # monotonic time by which its session must have a verdict
    state: int = QUEUED
    result: AsyncResult = field(default_factory=AsyncResult)
    weight: int = -1             # bytes of its rows, once asked (mysql_store.message_bytes)


class Backend:
    """What the writer needs from a database. Methods block only the calling greenlet."""

    def connect(self) -> None: ...
    def write(self, batch: list[Pending]) -> list[Verdict]: ...
    def close(self) -> None: ...

    def row_limit(self) -> int | None:
        """Bytes one row may take on the wire, when the database has such a limit."""
        return None


def open_backend(url: str, save_timeout: float, **mysql_options) -> Backend:
    """The backend for a store URL. Each database call may block for half the save timeout:
    the writer only takes a message that has at least that long left (Store._next_batch),
    so a session has its verdict within save_timeout even when the database stalls.
    ``mysql_options``: MySQLBackend's batch_max_bytes and fail_back_after."""
    timeout = save_timeout / 2
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from .sqlite_store import SQLiteBackend
        # sqlite:///relative.db and sqlite:////abs/path.db, as SQLAlchemy spells them.
        path = unquote(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else unquote(parts.path)
        return SQLiteBackend(path or "gsmtpd.db", timeout)
    if parts.scheme == "mysql":
        from .members import parse_mysql_url
        from .mysql_store import MySQLBackend
        return MySQLBackend(address=parse_mysql_url(url), timeout=timeout, **mysql_options)
    raise ValueError(f"unknown store {url!r}")


class Store:
    """The queue and the writer greenlet in front of one Backend."""

    RECONNECT_MIN = 0.25
    RECONNECT_MAX = 4.0

    def __init__(self, backend: Backend, batch_max: int = 200, queue_max: int = 2000,
                 save_timeout: float = 15.0):
        self.backend = backend
        self.batch_max = batch_max
        self.save_timeout = save_timeout
        self.queue: Queue = Queue(maxsize=queue_max)
        self.connected = False
        self.retry_at = 0.0          # monotonic time of the next connection attempt
        self.backoff = self.RECONNECT_MIN
        self.writer: gevent.Greenlet | None = None

    # --- lifecycle

    def start(self) -> None:
        """Connect once, so wrong credentials or a bad schema stop the start with a clear
        message (StoreMisconfigured). A store that is merely down does not: sessions get
        451 until the writer's reconnects succeed."""
        try:
            self.backend.connect()
            self.connected = True
            metrics.M.store_up.set(1)
        except StoreUnreachable as exc:
            metrics.M.store_up.set(0)
            log.error("store unreachable at start, answering 451 until it is back: %s", exc)
        self.writer = gevent.spawn(self._run)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer and close the connection."""
        if self.writer is not None:
            deadline = time.monotonic() + timeout
            while not self.queue.empty() and time.monotonic() < deadline:
                gevent.sleep(0.01)
            self.writer.kill(block=True, timeout=max(0.1, deadline - time.monotonic()))
            self.writer = None
        self._fail_queued()
        self.backend.close()
        self.connected = False

    # --- the session side

    def largest_message(self, max_size: int) -> int:
        """The most a session should keep of a message: its size limit, or less when the
        database could never hold a row that big. Past it the rest is read and dropped,
        so an unstorable message costs no memory (nor MIME work) before its 552."""
        limit = self.backend.row_limit()
        return max_size if limit is None else min(max_size, limit)

    def save(self, rows: list[tuple]) -> Verdict:
        """Queue the message's rows and wait for the writer's verdict (bounded by save_timeout)."""
        deadline = time.monotonic() + self.save_timeout
        pending = Pending(rows, deadline)
        try:
            self.queue.put(pending, timeout=self.save_timeout)
            metrics.M.queue_depth.set(self.queue.qsize())
        except Full:
            log.warning("store queue full for %.1fs: answering 451", self.save_timeout)
            return Verdict.TRANSIENT
        verdict = pending.result.wait(timeout=max(0.0, deadline - time.monotonic()))
        if verdict is None:
            if pending.state == QUEUED:
                pending.state = CANCELLED
                log.warning("save timed out after %.1fs in the queue: answering 451", self.save_timeout)
                return Verdict.TRANSIENT
            # The writer holds it and took it with half the save timeout left, the most
            # a database call may block: the verdict comes in time.
            verdict = pending.result.get()
        return verdict

    # --- the writer side

    def _run(self) -> None:
        while True:
            # Small messages first, in a commit of their own: they do not wait for the
            # write of a big one (a 9 MiB message and its body take MariaDB ~0.2 s).
            small, big = [], []
            for pending in self._next_batch():
                (big if message_size(pending.rows) >= BIG_MESSAGE else small).append(pending)
            for batch in (small, big):
                if batch:
                    self._write(batch)
            # Not kept while the next batch is awaited: its messages' memory (a 10 MiB
            # message and its body) is free once their sessions have their verdicts.
            del small, big, batch

    def _next_batch(self) -> list[Pending]:
        first = self.queue.get()
        batch = [first]
        while len(batch) < self.batch_max:
            try:
                batch.append(self.queue.get_nowait())
            except Empty:
                break
        metrics.M.queue_depth.set(self.queue.qsize())
        claimed = []
        latest_start = time.monotonic() + self.save_timeout / 2
        for pending in batch:
            if pending.state != QUEUED:
                continue
            if pending.deadline < latest_start:
                # Too little time left to be sure of a verdict before its session's deadline.
                pending.state = CANCELLED
                pending.result.set(Verdict.TRANSIENT)
                continue
            pending.state = WRITING
            claimed.append(pending)
        return claimed

    def _write(self, batch: list[Pending]) -> None:
        if not self._ensure_connected():
            self._finish(batch, [Verdict.TRANSIENT] * len(batch))
            return
        started = time.monotonic()
        try:
            verdicts = self.backend.write(batch)
        except Exception as exc:
            if isinstance(exc, TransientError):
                log.error("store write failed, %d messages get 451: %s", len(batch), exc)
            else:
                # A bug of ours must cost this batch a 451, not the writer: without it
                # every later message would wait out its save timeout.
                log.exception("store write failed unexpectedly, %d messages get 451", len(batch))
            metrics.M.storage_errors.inc()
            self._disconnect()
            verdicts = [Verdict.TRANSIENT] * len(batch)
        else:
            elapsed = time.monotonic() - started
            metrics.M.batch_size.observe(len(batch))
            metrics.M.commit_seconds.observe(elapsed)
            log.debug("committed %d messages in %.1f ms", len(batch), elapsed * 1000)
        self._finish(batch, verdicts)

    @staticmethod
    def _finish(batch: list[Pending], verdicts: list[Verdict]) -> None:
        for pending, verdict in zip(batch, verdicts):
            pending.result.set(verdict)

    def _ensure_connected(self) -> bool:
        if self.connected:
            return True
        if time.monotonic() < self.retry_at:
            return False
        try:
            self.backend.connect()
        except TransientError as exc:
            metrics.M.store_up.set(0)
            self.retry_at = time.monotonic() + self.backoff
            log.error("store unreachable, retrying in %.2fs: %s", self.backoff, exc)
            self.backoff = min(self.backoff * 2, self.RECONNECT_MAX)
            return False
        log.info("store connection re-established")
        metrics.M.store_up.set(1)
        self.connected = True
        self.backoff = self.RECONNECT_MIN
        return True

    def _disconnect(self) -> None:
        metrics.M.store_up.set(0)
        self.backend.close()
        self.connected = False
        self.retry_at = 0.0          # the first reconnect is immediate, then backoff

    def _fail_queued(self) -> None:
        while True:
            try:
                pending = self.queue.get_nowait()
            except Empty:
                return
            if pending.state == QUEUED:
                pending.state = CANCELLED
                pending.result.set(Verdict.TRANSIENT)
