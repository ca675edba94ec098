"""Connections per client address, counted across all worker processes.

``max_per_ip`` must hold for the server, not for each worker: the kernel hands a client's
connections to whichever worker accepts first. The counts live in anonymous shared memory
made at import, so the master makes it before forking and every worker sees the same
table. Each process owns one row (claimed by its pid) and only ever writes its own
entries, so counting needs no lock; a reader sums one address slot over the rows.
Claiming a row, once per process, takes a POSIX record lock on the table's (unlinked)
file: the kernel drops such a lock when its holder dies, so a worker killed with SIGKILL
cannot leave it held. A dead process's row is reclaimed by the next worker.

Addresses are hashed into SLOTS columns; two addresses that share a slot share a count,
which can only make the limit stricter for them, never looser.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import zlib

from . import pid as this_process

ROWS = 128          # processes that can count at once (workers plus replacements)
SLOTS = 8192        # address hash buckets


class SharedAddressCounts:
    """The table: first ``rows`` ints hold each row's owner pid (0: free); then, slot by
    slot, one count per row; last, how many rows have ever been claimed. Rows are claimed
    lowest first, so a count sums only that many entries of one slot: one short sum over a
    slice, done in C, for every connection (all 128 rows cost 5k instructions)."""

    def __init__(self, rows: int = ROWS, slots: int = SLOTS):
        self.rows = rows
        self.slots = slots
        self.claimed = rows * (slots + 1)      # index of the rows-ever-claimed count
        size = (self.claimed + 1) * 4
        # A file (unlinked at once) rather than anonymous memory: lockf() needs one.
        self.file = tempfile.TemporaryFile(prefix="gsmtpd-limits-")
        self.file.truncate(size)
        self.memory = mmap.mmap(self.file.fileno(), size, flags=mmap.MAP_SHARED)
        self.table = memoryview(self.memory).cast("i")
        self.owners = self.table[:rows]
        self.row: int | None = None
        self.owner = 0

    def _column(self, ip: str) -> int:
        """Where the counts of ip's slot start."""
        return self.rows * (1 + zlib.crc32(ip.encode()) % self.slots)

    def _own_row(self) -> int:
        """This process's row, claimed on first use (and again after a fork)."""
        pid = this_process.current()
        if self.owner == pid and self.row is not None:
            return self.row
        # Two workers starting together must not both take the same free row.
        fcntl.lockf(self.file.fileno(), fcntl.LOCK_EX)
        try:
            for row in range(self.rows):
                holder = self.owners[row]
                if holder == 0 or not _alive(holder):
                    self._clear(row)
                    self.owners[row] = pid
                    # Before this process counts anything in it: readers sum this far.
                    self.table[self.claimed] = max(self.table[self.claimed], row + 1)
                    self.row, self.owner = row, pid
                    return row
        finally:
            fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN)
        raise RuntimeError("no free row in the shared connection table")

    def _clear(self, row: int) -> None:
        """Zero a row's counts (every slot's entry for it). Caller holds the lock."""
        self.table[self.rows + row:self.claimed:self.rows] = memoryview(bytes(self.slots * 4)).cast("i")

    def count(self, ip: str, verify: bool = False) -> int:
        """Open connections from ``ip`` over all processes. With ``verify`` (worth it only
        when the count would refuse), rows of processes that died without cleaning up, a
        worker killed with SIGKILL, are freed first and not counted."""
        column = self._column(ip)
        if verify:
            me = this_process.current()
            for row in range(self.rows):
                holder = self.owners[row]
                if holder and holder != me and self.table[column + row] > 0 and not _alive(holder):
                    self._free(row, holder)
        return sum(self.table[column:column + self.table[self.claimed]])

    def _free(self, row: int, dead: int) -> None:
        """Forget a dead process's row, unless a new process has claimed it meanwhile."""
        fcntl.lockf(self.file.fileno(), fcntl.LOCK_EX)
        try:
            if self.owners[row] == dead:
                self._clear(row)
                self.owners[row] = 0
        finally:
            fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN)

    def admit(self, ip: str, limit: int) -> bool:
        """Count one more connection from ``ip`` unless it already has ``limit``."""
        if self.count(ip) >= limit and self.count(ip, verify=True) >= limit:
            return False
        self.add(ip, 1)
        return True

    def add(self, ip: str, delta: int) -> None:
        self.table[self._column(ip) + self._own_row()] += delta


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
