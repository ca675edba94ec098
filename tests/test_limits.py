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


def test_processes_starting_together_get_rows_of_their_own():
    """Workers forked together claim rows at the same moment; no two may share one (a
    shared row let one worker's claim wipe the other's counts)."""
    counts = SharedAddressCounts(rows=32, slots=16)
    go_read, go_write = os.pipe()
    out_read, out_write = os.pipe()
    children = []
    for _ in range(12):
        pid = os.fork()
        if pid == 0:
            os.read(go_read, 1)
            counts.add("192.0.2.9", 1)
            os.write(out_write, b"%d\n" % counts.row)
            signal.pause()
            os._exit(0)
        children.append(pid)
    os.write(go_write, b"x" * 12)
    rows = []
    while len(rows) < 12:
        rows += [int(line) for line in os.read(out_read, 4096).split()]
    try:
        assert len(set(rows)) == 12, sorted(rows)
        assert counts.count("192.0.2.9") == 12
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
