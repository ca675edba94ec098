"""The writer greenlet (gsmtpd/store.py) outlives a bug in a backend."""
import gevent

from gsmtpd.sqlite_store import SQLiteBackend
from gsmtpd.store import Store, Verdict


class FailsOnce(SQLiteBackend):
    """A real SQLite store whose first write hits a bug of ours."""

    failed = False

    def write(self, batch):
        if not self.failed:
            self.failed = True
            raise TypeError("cannot store object")
        return super().write(batch)


def row(n: int) -> tuple:
    return ("2026-11-23 10:00:00", "a@example.org", "b@test.org", f"subject {n}", "body", "utf-8",
            b"raw", 0.0, f"{n:032x}", "text/plain", "b@test.org", "a@example.org", "127.0.0.1",
            "client", 0, 3, 0, "")


def test_a_bug_in_a_write_costs_that_batch_a_451_and_the_writer_goes_on(tmp_path):
    store = Store(FailsOnce(str(tmp_path / "mail.db"), 5.0), save_timeout=5.0)
    store.start()
    try:
        assert gevent.spawn(store.save, [row(1)]).get(timeout=5) is Verdict.TRANSIENT
        assert gevent.spawn(store.save, [row(2)]).get(timeout=5) is Verdict.STORED
        assert store.writer and not store.writer.dead
    finally:
        store.close()
