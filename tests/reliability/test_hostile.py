"""1,000 slow-drip connections next to the normal load: every good client's message is
stored, and every slow one is cut off by its deadline (--timeout for a command line,
--data-timeout for DATA) with the 421 that names it. Small deadlines keep the test short.
How much slower the good clients were (p99 within 2x of the calm case) and how soon each
slow one was cut off are bench/reliability.py's to check (scenarios.Result.timing)."""
from __future__ import annotations

from .scenarios import Numbers, hostile

N = Numbers()
CUT_OFF = {"command": "421 4.4.2 Timeout waiting for command, closing connection",
           "data": "421 4.4.2 Timeout during DATA, closing connection"}


def test_slow_drip_clients_do_not_slow_good_ones_and_are_cut_off(mysql_store, gsmtpd_server):
    result = hostile(gsmtpd_server, mysql_store, N).publish()
    calm, busy = result.calm, result.busy
    assert calm.problems == [] and busy.problems == []
    assert calm.acked == calm.sent and busy.acked == busy.sent, (calm.refused, busy.refused)
    assert min(result.open_now, result.open_after) >= N.slow * 0.95, result.figures["slow_open_during_load"]
    connected = [d for d in result.drips if d.connected]
    assert not [d for d in result.drips if d.refused], "a slow client was refused at connect"
    assert {drip.mode for drip in connected} == {"command", "data"}
    for drip in connected:
        # The client itself gives up only after data_timeout + 30 s: this reply is the server's.
        assert drip.last_reply == CUT_OFF[drip.mode], f"{drip.mode} drip ended with {drip.last_reply or drip.error!r}"
