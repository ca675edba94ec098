"""The per-address connection table shared by the worker processes (gsmtpd/limits.py)."""
from __future__ import annotations

import os
import signal

from gsmtpd.limits import SharedAddressCounts


def test_counts_add_up_across_processes_and_a_killed_process_is_forgotten():
    counts = SharedAddressCounts(rows=8, slots=64)
    assert counts.admit("192.0.2.1", 3)
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:
        counts.add("192.0.2.1", 2)          # two connections held by another process
        os.write(ready_write, b"x")
        signal.pause()
        os._exit(0)
    os.read(ready_read, 1)
    try:
        assert counts.count("192.0.2.1") == 3
        assert not counts.admit("192.0.2.1", 3), "the limit holds across processes"
        assert counts.admit("198.51.100.7", 3), "another address is not affected"
    finally:
        os.kill(child, signal.SIGKILL)      # dies holding its two, as a worker under kill -9
        os.waitpid(child, 0)
    assert counts.admit("192.0.2.1", 3), "a dead process's connections no longer count"
    assert counts.count("192.0.2.1") == 2
    counts.add("192.0.2.1", -2)
    assert counts.count("192.0.2.1") == 0
