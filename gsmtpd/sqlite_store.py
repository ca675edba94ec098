"""SQLite backend: the embedded default store, so gsmtpd runs on a machine with no database.

sqlite3 calls block the OS thread, so every call runs in gevent's thread pool: the event
loop keeps serving sessions while a commit waits for fsync. Only the writer greenlet uses
the connection, one call at a time.
"""
from __future__ import annotations

import os
import sqlite3

from gevent import get_hub

from . import row
from .store import (COLUMNS, MAIL, PER_RECIPIENT, Backend, Blob, Pending, StoreMisconfigured, TransientError,
                    Utf8Text, Verdict, WRITTEN, sliced_row, value_size)

# Derived from the declaration (row.py), as MySQL's schema.sql is held to it.
SCHEMA = row.sqlite_schema()

def bindable(value):
    """sqlite3 binds bytes and str, not our parts. The body's UTF-8 goes as it is (the
    INSERT casts it to TEXT): no str of it is made here."""
    if isinstance(value, Utf8Text):
        return value.join()          # one part: the same bytes object, not a copy
    return value.join() if isinstance(value, Blob) else value


_FAILED = object()


def _capture(func, *args):
    try:
        return None, func(*args)
    except Exception as exc:  # handed back to the greenlet, which raises it
        return _FAILED, exc


# The mail goes in as a zeroblob of its length, then is written part by part through
# incremental blob I/O: the message is not joined with its Received header into a copy.
_PLACEHOLDER = {"mail": "zeroblob(?)", "body": "CAST(? AS TEXT)", "body_text": "CAST(? AS TEXT)"}
# The columns written: store.WRITTEN.
INSERT = {sliced: "INSERT INTO new_mail (" + ",".join(f'"{c}"' for c in names) + ") VALUES ("
          + ",".join(_PLACEHOLDER.get(c, "?") for c in names) + ")" for sliced, names in WRITTEN.items()}
# A message to several recipients is bound once: its first row is inserted, and the
# others are copied from it (as in mysql_store), each with its own PER_RECIPIENT columns.
COPY = {sliced: "INSERT INTO new_mail (" + ",".join(f'"{c}"' for c in names) + ") SELECT "
        + ",".join("?" if c in PER_RECIPIENT else f'"{c}"' for c in names) + " FROM new_mail WHERE hash = ?"
        for sliced, names in WRITTEN.items()}
COPIED = [COLUMNS.index(c) for c in PER_RECIPIENT]
HASH = COLUMNS.index("hash")


def insert(conn: sqlite3.Connection, rows: list[tuple], sliced: bool = False) -> None:
    """One message's rows: the first whole, the others copied from it. ``sliced``: the
    table stores the body as a slice of mail (SQLiteBackend.sliced)."""
    first = rows[0]
    mail = first[MAIL]
    values = [bindable(value) for value in (sliced_row(first) if sliced else first)]
    values[MAIL] = value_size(mail)
    rowid = conn.execute(INSERT[sliced], values).lastrowid
    if values[MAIL]:
        with conn.blobopen("new_mail", "mail", rowid) as blob:
            for part in (mail if isinstance(mail, Blob) else (mail,)):
                blob.write(part)
    if len(rows) > 1:
        conn.executemany(COPY[sliced], ([row[i] for i in COPIED] + [rows[0][HASH]] for row in rows[1:]))


class SQLiteBackend(Backend):
    def __init__(self, path: str, timeout: float):
        self.path = path
        self.timeout = timeout
        self.conn: sqlite3.Connection | None = None
        self.sliced = False          # the table stores the body as a slice of mail

    def _in_thread(self, func, *args):
        """Run in gevent's thread pool. Errors travel back as values: raised inside the
        pool, gevent would also print them to stderr as if they were unhandled."""
        outcome, value = get_hub().threadpool.apply(_capture, (func, *args))
        if outcome is _FAILED:
            raise value
        return value

    def connect(self) -> None:
        self.close()
        try:
            self.conn = self._in_thread(self._open)
        except (sqlite3.Error, OSError) as exc:
            raise StoreMisconfigured(f"cannot open SQLite store {self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False,
                               isolation_level="DEFERRED")
        # WAL lets readers (the user's web app) read while we write; FULL syncs every commit,
        # because a 250 promises the row survives a power cut.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        # A table made before row.py sliced the body has `body` as a real column.
        self.sliced = row.sqlite_sliced(conn)
        return conn

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                self._in_thread(conn.close)
            except sqlite3.Error:
                pass

    def write(self, batch: list[Pending]) -> list[Verdict]:
        try:
            return self._in_thread(self._write, batch)
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            raise TransientError(str(exc)) from exc

    def _write(self, batch: list[Pending]) -> list[Verdict]:
        conn = self.conn
        verdicts = [Verdict.STORED] * len(batch)
        try:
            for pending in batch:
                insert(conn, pending.rows, self.sliced)
        except sqlite3.IntegrityError:
            conn.rollback()
            conn.execute("BEGIN")    # the savepoints nest in it: RELEASE does not commit
            for index, pending in enumerate(batch):
                conn.execute("SAVEPOINT one_message")
                try:
                    insert(conn, pending.rows, self.sliced)
                except sqlite3.IntegrityError:
                    conn.execute("ROLLBACK TO one_message")
                    verdicts[index] = Verdict.REFUSED
                conn.execute("RELEASE one_message")
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return verdicts
