"""Connections per client address, counted across all worker processes.

``max_per_ip`` must hold for the server, not for each worker: the kernel hands a client's
connections to whichever worker accepts first. The counts live in anonymous shared memory
made at import, so the master makes it before forking and every worker sees the same
table. Each process owns one row (claimed by its pid) and only ever writes its own row, so
counting needs no lock; a reader sums one column over the rows. Claiming a row, once per
process, takes a POSIX record lock on the table's (unlinked) file: the kernel drops such a
lock when its holder dies, so a worker killed with SIGKILL cannot leave it held. A dead
process's row is reclaimed by the next worker.

Addresses are hashed into SLOTS columns; two addresses that share a slot share a count,
which can only make the limit stricter for them, never looser.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import zlib

ROWS = 128          # processes that can count at once (workers plus replacements)
SLOTS = 8192        # address hash buckets per row
_HEADER = 1         # the first int of a row is its owner's pid


class SharedAddressCounts:
    def __init__(self, rows: int = ROWS, slots: int = SLOTS):
        self.rows = rows
        self.width = slots + _HEADER
        size = rows * self.width * 4
        # A file (unlinked at once) rather than anonymous memory: lockf() needs one.
        self.file = tempfile.TemporaryFile(prefix="gsmtpd-limits-")
        self.file.truncate(size)
        self.memory = mmap.mmap(self.file.fileno(), size, flags=mmap.MAP_SHARED)
        self.table = memoryview(self.memory).cast("i")
        self.row: int | None = None
        self.owner = 0

    def _slot(self, ip: str) -> int:
        return _HEADER + zlib.crc32(ip.encode()) % (self.width - _HEADER)

    def _own_row(self) -> int:
        """This process's row, claimed on first use (and again after a fork)."""
        pid = os.getpid()
        if self.owner == pid and self.row is not None:
            return self.row
        # Two workers starting together must not both take the same free row.
        fcntl.lockf(self.file.fileno(), fcntl.LOCK_EX)
        try:
            for row in range(self.rows):
                start = row * self.width
                holder = self.table[start]
                if holder == 0 or not _alive(holder):
                    self.table[start:start + self.width] = memoryview(bytes(self.width * 4)).cast("i")
                    self.table[start] = pid
                    self.row, self.owner = row, pid
                    return row
        finally:
            fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN)
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
                self._free(start, holder)
                continue
            total += table[start + slot]
        return total

    def _free(self, start: int, dead: int) -> None:
        """Forget a dead process's row, unless a new process has claimed it meanwhile."""
        fcntl.lockf(self.file.fileno(), fcntl.LOCK_EX)
        try:
            if self.table[start] == dead:
                self.table[start] = 0
        finally:
            fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN)

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
