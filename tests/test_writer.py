"""The writer greenlet (gsmtpd/store.py) outlives a bug in a backend; SQLite refuses one
message of a batch, not the batch."""
import sqlite3
import time

import gevent

from gsmtpd.sqlite_store import SQLiteBackend
from gsmtpd.store import COLUMNS, Pending, Store, Verdict


class FailsOnce(SQLiteBackend):
    """A real SQLite store whose first write hits a bug of ours."""

    failed = False

    def write(self, batch):
        if not self.failed:
            self.failed = True
            raise TypeError("cannot store object")
        return super().write(batch)


def row(n: int) -> tuple:
    """A row in store.COLUMNS order, its hash made of ``n``."""
    values = {"date": "2026-11-23 10:00:00", "from": "a@example.org", "to": "b@test.org",
              "subject": f"subject {n}", "body": "body", "charset": "utf-8", "mail": b"raw",
              "spam_score": 0.0, "hash": f"{n:032x}", "content_type": "text/plain",
              "recipient": "b@test.org", "return_path": "a@example.org", "ip_addr": "127.0.0.1",
              "helo": "client", "is_tls": 0, "size": 3, "has_attach": 0, "message_id": ""}
    return tuple(values[column] for column in COLUMNS)


def test_a_bug_in_a_write_costs_that_batch_a_451_and_the_writer_goes_on(tmp_path):
    store = Store(FailsOnce(str(tmp_path / "mail.db"), 5.0), save_timeout=5.0)
    store.start()
    try:
        assert gevent.spawn(store.save, [row(1)]).get(timeout=5) is Verdict.TRANSIENT
        assert gevent.spawn(store.save, [row(2)]).get(timeout=5) is Verdict.STORED
        assert store.writer and not store.writer.dead
    finally:
        store.close()


def test_sqlite_refuses_the_message_whose_row_it_cannot_take_and_none_of_its_rows_stay(tmp_path):
    """The second message's second row repeats the first message's hash (UNIQUE): the batch
    is written again a message at a time, each in a savepoint, so that message is refused
    whole (its first row too) and the others are stored."""
    path = tmp_path / "mail.db"
    backend = SQLiteBackend(str(path), 5.0)
    backend.connect()
    try:
        batch = [Pending([row(1)], deadline=time.monotonic() + 60),
                 Pending([row(2), row(1)], deadline=time.monotonic() + 60),
                 Pending([row(3)], deadline=time.monotonic() + 60)]
        verdicts = gevent.spawn(backend.write, batch).get(timeout=10)
    finally:
        backend.close()
    assert verdicts == [Verdict.STORED, Verdict.REFUSED, Verdict.STORED]
    conn = sqlite3.connect(path)
    try:
        stored = [subject for (subject,) in conn.execute("SELECT subject FROM new_mail ORDER BY mail_id")]
    finally:
        conn.close()
    assert stored == ["subject 1", "subject 3"]
