"""kill -9 under a steady load: a worker (the master replaces it) and the whole server (a new
one takes over the same database). In-flight mail gets a 4xx or a dropped connection, never a
250 without its row."""
from __future__ import annotations

import pytest

from .scenarios import NoMaster, Numbers, kill_server, kill_worker

N = Numbers()


def test_kill_9_one_worker_loses_nothing_and_the_master_replaces_it(mysql_store, gsmtpd_server):
    try:
        result = kill_worker(gsmtpd_server, mysql_store, N).publish()
    except NoMaster as exc:   # only before the prefork master landed (gsmtpd/arbiter.py)
        pytest.skip(f"no prefork master: {exc}")
    report = result.reports[0]
    assert report.problems == []
    assert report.lost == 0 and report.acked > N.rate * N.seconds
    assert result.master_alive
    assert result.replaced_after is not None, result.figures       # within workers_of()'s 20 s
    assert result.figures["acked_after_kill"] > N.rate, "mail did not flow on after the kill"


def test_kill_9_whole_server_loses_nothing(mysql_store, gsmtpd_server):
    result = kill_server(gsmtpd_server, mysql_store, N).publish()
    report = result.reports[0]
    assert report.problems == []
    assert report.lost == 0 and report.acked > N.rate * N.seconds
    assert result.figures["acked_after_restart"] > N.rate, "the new server did not store mail"
