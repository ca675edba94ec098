"""Connections per client address, counted across all worker processes.

``max_per_ip`` must hold for the server, not for each worker: the kernel hands a client's
connections to whichever worker accepts first. The counts live in anonymous shared memory
made at import, so the master makes it before forking and every worker sees the same
table. Each process owns one row (claimed by its pid) and only ever writes its own row, so
no lock is needed and a worker killed with SIGKILL cannot leave a lock held; a reader sums
one column over the rows. A dead process's row is reclaimed by the next worker.

Addresses are hashed into SLOTS columns; two addresses that share a slot share a count,
which can only make the limit stricter for them, never looser.
"""
from __future__ import annotations

import mmap
import os
import zlib

ROWS = 128          # processes that can count at once (workers plus replacements)
SLOTS = 8192        # address hash buckets per row
_HEADER = 1         # the first int of a row is its owner's pid


class SharedAddressCounts:
    def __init__(self, rows: int = ROWS, slots: int = SLOTS):
        self.rows = rows
        self.width = slots + _HEADER
        self.memory = mmap.mmap(-1, rows * self.width * 4, flags=mmap.MAP_SHARED)
        self.table = memoryview(self.memory).cast("i")
        self.row: int | None = None
        self.owner = 0

    def _slot(self, ip: str) -> int:
        return _HEADER + zlib.crc32(ip.encode()) % (self.width - _HEADER)

    def _own_row(self) -> int:
        """This process's row, claimed on first use (and again after a fork)."""
        pid = os.getpid()
        if self.owner == pid and self.row is not None and self.table[self.row * self.width] == pid:
            return self.row
        for row in range(self.rows):
            start = row * self.width
            holder = self.table[start]
            if holder == pid or holder == 0 or not _alive(holder):
                self.table[start:start + self.width] = memoryview(bytes(self.width * 4)).cast("i")
                self.table[start] = pid
                if self.table[start] == pid:
                    self.row, self.owner = row, pid
                    return row
        raise RuntimeError("no free row in the shared connection table")

    def count(self, ip: str, verify: bool = False) -> int:
        """Open connections from ``ip`` over all processes. With ``verify`` (worth it only
        when the count would refuse), rows of processes that died without cleaning up, a
        worker killed with SIGKILL, are freed first and not counted."""
        slot = self._slot(ip)
        table, width = self.table, self.width
        total = 0
        for row in range(self.rows):
            start = row * width
            holder = table[start]
            if not holder or table[start + slot] <= 0:
                continue
            if verify and holder != os.getpid() and not _alive(holder):
                table[start] = 0
                continue
            total += table[start + slot]
        return total

    def admit(self, ip: str, limit: int) -> bool:
        """Count one more connection from ``ip`` unless it already has ``limit``."""
        if self.count(ip) >= limit and self.count(ip, verify=True) >= limit:
            return False
        self.add(ip, 1)
        return True

    def add(self, ip: str, delta: int) -> None:
        index = self._own_row() * self.width + self._slot(ip)
        self.table[index] += delta


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
