"""The database goes away (2) or stalls (3) under a steady load; gsmtpd is never restarted.

The outage uses a throwaway MariaDB of our own (the shared one on 3306 is never touched);
the stall locks new_mail in a fresh database from another connection."""
from __future__ import annotations

import pytest

from .scenarios import Numbers, db_outage, db_stall

N = Numbers()
# How long replies took and how soon mail was stored again are bench/reliability.py's to
# check (scenarios.Result.timing); these tests assert what the clients were answered.


def test_mariadb_stopped_for_10s_answers_451_then_stores_again_and_loses_nothing(
        gsmtpd_server, throwaway_mariadb, throwaway_store):
    result = db_outage(gsmtpd_server, throwaway_mariadb, throwaway_store, N).publish()
    report = result.reports[0]
    assert report.problems == []
    assert report.lost == 0 and report.acked > N.rate * N.seconds * 0.8
    assert result.during, "no message was sent while MariaDB was down"
    codes = {a.reply[:9] for a in result.during}
    assert codes == {"451 4.3.0"}, f"during the outage: {result.figures['during_outage']}"
    assert result.recovered_after is not None, "nothing was stored again after MariaDB returned"


def test_mariadb_killed_for_10s_loses_nothing(gsmtpd_server, throwaway_mariadb, throwaway_store):
    result = db_outage(gsmtpd_server, throwaway_mariadb, throwaway_store, N, crash=True).publish()
    report = result.reports[0]
    assert report.problems == []
    assert {a.reply[:9] for a in result.during} == {"451 4.3.0"}
    assert result.recovered_after is not None, "nothing was stored again after MariaDB returned"


_STALL: dict = {}


def stall_result(gsmtpd_server, mysql_store):
    """The stall scenario runs once for the two tests that read it."""
    if "result" not in _STALL:
        _STALL["result"] = db_stall(gsmtpd_server, mysql_store, N).publish()
    return _STALL["result"]


def test_locked_table_gets_451_bounded_memory_and_recovers(mysql_store, gsmtpd_server):
    result = stall_result(gsmtpd_server, mysql_store)
    report = result.reports[0]
    assert report.problems == []
    assert report.dropped == 0
    # Sent while locked, at least save_timeout + 1 s before the unlock: refused, never stored
    # late. A message that waited past its save timeout (once a bug: the database's own
    # timeout on top of the queue's, ~2x) would have seen the unlock and got a 250.
    assert result.during and {a.reply[:9] for a in result.during} == {"451 4.3.0"}, result.figures["during_stall"]
    assert all(a.code == 451 for a in result.during if a.ended), result.figures["during_stall"]
    # At most stall_concurrency messages exist in the server at once (each client waits for
    # its reply): allow 8 copies of each plus 64 MB.
    bound = result.calm_mb + N.stall_concurrency * N.stall_size * 8 / 1e6 + 64
    assert result.peak_mb <= bound, f"RSS {result.peak_mb:.0f} MB during the stall, bound {bound:.0f} MB"
    assert result.recovered_after is not None, "nothing was stored again after the unlock"
