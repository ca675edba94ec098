"""SIGTERM under a steady load: exit status 0, every 250 has its row, no 250 after the exit."""
from __future__ import annotations

from .scenarios import Numbers, sigterm

N = Numbers()


def test_sigterm_under_load_exits_0_and_loses_nothing(mysql_store, gsmtpd_server):
    result = sigterm(gsmtpd_server, mysql_store, N).publish()
    report = result.reports[0]
    assert report.problems == []
    assert report.acked > N.rate * N.seconds * 0.8
    assert result.status == 0, result.figures
    assert result.acked_after_exit == []
    assert result.figures["log_stopped"]
