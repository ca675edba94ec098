"""The byte budget of one worker: how much mail it may hold at once.

Every byte of mail a worker holds for a session is counted against ``--memory-budget``:
the DATA being read, the message and its decoded body while they wait for the writer and
while their statement is sent. A session holds a ``Reservation`` for the message it is
receiving; it grows in steps as the data arrives, so a 4 KB message needs only a small one,
and it is released when the session has its reply, on every path (a ``with`` block:
250, 451, 5xx, disconnect, timeout, kill).

Nobody ever waits for budget: a reservation that cannot grow is refused at once, and the
session answers ``452 4.3.1`` (RFC 3463 4.3.1: mail system full), so the sender retries
later and no session stalls behind another's big message. Big messages may only use the
budget up to ``limit - headroom``: the last eighth is kept for small ones, which go on
flowing while big ones fill the rest.

What a message costs (``cost``): its raw bytes plus its decoded body, which is at most
about as long for text and shorter for base64 attachments. The writer adds no copies of
either (the statement is sent from the same buffers), so that is what a message holds from
its last byte to its verdict. The copies made while a message is unstuffed and parsed live
only inside one synchronous step of one greenlet, so a worker holds those of one message
at a time: at most ~3 x max_size more than the budget, whatever the concurrency
(README: "Memory").
"""
from __future__ import annotations

import ctypes

from . import metrics
from . import replies as R

# A message's raw bytes plus its decoded body (at most about as long).
COPIES = 2
# A reservation grows by at least this much (one read of the wire, wire.RECV_SIZE) or by
# an eighth of what it holds, so a message of S bytes asks the budget about log(S) times,
# not once per read, and holds at most an eighth more than it needs.
STEP = 64 * 1024
# A reservation up to this size is "small": it may use the headroom kept for small mail.
SMALL = 1024 * 1024


# glibc's mallopt(M_MMAP_THRESHOLD): blocks this big or more get a mapping of their own.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def return_freed_messages() -> None:
    """Make a freed message leave RSS at once. glibc raises its mmap threshold to the size
    of each mapped block freed (up to 32 MiB), so after the first 10 MiB message the next
    ones' buffers come from the heap, where freed space stays in the process. A fixed
    threshold keeps every block of 1 MiB or more in its own mapping, unmapped when freed,
    so RSS follows what the budget counts. Measured: 20 x 9 MiB senders on a 64 MiB budget
    (tests/test_memory.py) peaked at 118-131 MB without it, 114 MB with it (idle: 47 MB)."""
    try:
        # The process's own symbols (libc's among them): no library search, which would run
        # ldconfig in a subprocess, after --user took away the right to import for it.
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):   # not glibc: its allocator, its rules
        pass


def cost(size: int) -> int:
    """Budget bytes for a message of ``size`` bytes."""
    return COPIES * size


class Budget:
    def __init__(self, limit: int):
        self.used = 0
        self.refusals = 0
        self.live: set[Reservation] = set()   # the big ones (over SMALL)
        self.largest = 0             # budget held by the largest of them (a metric)
        self.resize(limit)

    def resize(self, limit: int) -> None:
        """A new limit (a reload); what is held stays held."""
        self.limit = limit
        self.headroom = limit // 8

    def largest_message(self) -> int:
        """The largest message that could ever fit: bigger ones are refused for good (552)."""
        return (self.limit - self.headroom) // COPIES

    def check_size(self, size: int, max_size: int) -> R.Reply | None:
        """MAIL FROM ... SIZE=size (RFC 1870 6.1): the reply refusing it, or None. Over the
        advertised limit, or more than this budget could ever hold: 552 for good; more than
        it has free now: 452 4.3.1, try later. Nothing is held yet: an idle session must
        not keep budget from the ones sending."""
        if size > max_size:
            return R.TOO_BIG
        if size > self.largest_message():
            return R.TOO_BIG_TO_STORE
        if not self._fits(0, max(cost(size), STEP)):
            self.refused()
            return R.INSUFFICIENT_STORAGE
        return None

    def hold(self) -> "Reservation":
        return Reservation(self)

    def _fits(self, held: int, wanted: int) -> bool:
        ceiling = self.limit if wanted <= SMALL else self.limit - self.headroom
        return self.used - held + wanted <= ceiling

    def refused(self) -> None:
        self.refusals += 1
        metrics.M.budget_refusals.inc()

    def _track(self, reservation: "Reservation", before: int) -> None:
        """Keep the set of big reservations (over SMALL) and the largest of them, for the
        metric; small ones stay out of it, so the 4 KB message's path is arithmetic only."""
        held = reservation.held
        if held > SMALL:
            self.live.add(reservation)
        else:
            self.live.discard(reservation)
        if held > self.largest:
            self.largest = held
        elif before >= self.largest > held:       # the largest shrank, or went
            self.largest = max((r.held for r in self.live), default=0)
        else:
            return
        metrics.M.largest_message.set(self.largest // COPIES)


class Reservation:
    """The budget held for one message; a context manager that releases it on every path."""

    __slots__ = ("budget", "held", "size", "refused")

    def __init__(self, budget: Budget):
        self.budget = budget
        self.held = 0
        self.size = 0            # message bytes covered so far
        self.refused = False     # the budget could not grow: the answer is 452 4.3.1

    def __enter__(self) -> "Reservation":
        return self

    def room(self, size: int) -> int:
        """Cover a message of ``size`` bytes so far. Returns how many bytes the message may
        reach before asking again, or 0 when the budget cannot take it now (refused)."""
        if self.refused:
            return 0
        if size <= self.size:
            return self.size
        wanted = COPIES * size          # cost(size), without the call: this runs once a message
        ahead = max(wanted, self.held + max(STEP, self.held // 8))
        # Ahead of need when there is room (fewer calls), else just what is needed.
        if not (self.settle(ahead) or self.settle(wanted)):
            self.refused = True
            self.budget.refused()
            return 0
        self.size = self.held // COPIES
        return self.size

    def settle(self, wanted: int) -> bool:
        """Hold exactly ``wanted`` bytes (more or fewer than now); False when more do not fit."""
        budget, held = self.budget, self.held
        if wanted > held and not budget._fits(held, wanted):
            return False
        budget.used += wanted - held
        self.held = wanted
        metrics.M.budget_used.set(budget.used)
        if wanted > SMALL or held > SMALL:
            budget._track(self, held)
        return True

    def release(self, *exc) -> None:
        """Hold nothing (settle(0), inline: it runs once a message, also as __exit__)."""
        self.size = 0
        held = self.held
        if held:
            budget = self.budget
            budget.used -= held
            self.held = 0
            metrics.M.budget_used.set(budget.used)
            if held > SMALL:
                budget._track(self, held)

    __exit__ = release
