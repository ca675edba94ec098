"""1,000 slow-drip connections next to the normal load: the good clients' p99 time to 250
stays within 2x of the calm case, and every slow one is cut off at its deadline (--timeout
for a command line, --data-timeout for DATA). Small deadlines keep the test short."""
from __future__ import annotations

from .scenarios import Numbers, hostile

N = Numbers()
MARGIN = 2.0          # seconds past a deadline for the cut-off to reach the client
FLOOR = 0.05          # p99s of a few ms are noise: 2x of the calm case, or 50 ms


def test_slow_drip_clients_do_not_slow_good_ones_and_are_cut_off(mysql_store, gsmtpd_server):
    result = hostile(gsmtpd_server, mysql_store, N).publish()
    calm, busy = result.calm, result.busy
    assert calm.problems == [] and busy.problems == []
    assert calm.acked == calm.sent and busy.acked == busy.sent, (calm.refused, busy.refused)
    assert min(result.open_now, result.open_after) >= N.slow * 0.95, result.figures["slow_open_during_load"]
    assert busy.p99_total <= max(2 * calm.p99_total, FLOOR), (
        f"p99 time to 250: calm {calm.p99_total * 1000:.0f} ms, beside slow clients "
        f"{busy.p99_total * 1000:.0f} ms")
    connected = [d for d in result.drips if d.connected]
    assert not [d for d in result.drips if d.refused], "a slow client was refused at connect"
    for drip in connected:
        deadline = N.command_timeout if drip.mode == "command" else N.data_timeout
        assert drip.seconds is not None and drip.seconds <= deadline + MARGIN + 1.0, (
            f"{drip.mode} drip held {drip.seconds:.1f}s, deadline {deadline}s")
        assert drip.last_reply.startswith("421"), f"{drip.mode} drip ended with {drip.last_reply or drip.error!r}"
