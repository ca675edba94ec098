"""How long a connection may block, in one place: every wait on the client goes through
its ``Clock``.

A connection has two kinds of limit:

- a **wait**: the longest one blocking read or write may last (``--timeout``): a client
  that sends nothing, or reads nothing, is cut off with ``socket.timeout``;
- a **phase**: a deadline for a whole command line (``--timeout``) or the whole DATA phase
  (``--data-timeout``, RFC 5321 4.5.3.2.5-6): a client that drips a byte at a time gets
  ``Expired`` at the first read that returns past it.

The PROXY header and the TLS handshake are waits too (``Clock.bounded``), and so is the
early-talker pause (``Clock.quiet_for``), the one wait whose end is the good outcome.
The one other wait of a session is not on the client: a finished message waits for its
commit, at most ``--save-timeout`` (Store.save), and then gets 451.

Waits are ended by one ``Watchdog`` per server rather than a timer per read: a connection
about to block notes in ``Clock.expires`` when it must give up, and the watchdog, a
repeating timer in the event loop, raises socket.timeout into any connection still blocked
past that time. A timer per read cost more CPU than the read itself (bench/).
"""
from __future__ import annotations

import logging
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from . import gevent_adapter

log = logging.getLogger("gsmtpd.server")

NEVER = float("inf")
# How often the watchdog looks for stalled connections: at most this late, and finer for
# short timeouts (a fraction of the shortest one).
WATCHDOG_MAX_TICK = 1.0
WATCHDOG_TICKS_PER_TIMEOUT = 10


class Expired(Exception):
    """The deadline for this line or this DATA phase passed while the client was still
    sending (a slow drip). A client that sends nothing, or reads nothing, is cut off by
    the watchdog, which raises socket.timeout into the blocked connection."""


class Clock:
    """The deadlines of one connection, served by ``greenlet``. ``wait``: the longest one
    blocking read or write may last (``--timeout`` when the connection opened).

    Around every read and every reply (Wire._recv, Wire.flush) the wire arms and clears
    ``expires`` itself, with the rules of ``block`` and ``phase`` written out, and
    compares the time with the phase's deadline (``passed``): these calls, five per
    command, cost 1.2 % of a message's instructions (bench/instructions.py, W1: 899k a
    message with them, 889k without)."""

    __slots__ = ("wait", "expires", "greenlet")

    def __init__(self, wait: float, greenlet):
        self.wait = wait
        self.expires: float | None = None    # while blocked on the client: when to give up
        self.greenlet = greenlet

    @staticmethod
    def phase(seconds: float) -> float:
        """The deadline of a phase (a command line, the DATA phase) that starts now."""
        return time.monotonic() + seconds

    def block(self, deadline: float = NEVER) -> None:
        """About to block on the client: the watchdog ends the wait after ``wait`` seconds,
        or at ``deadline`` if that comes first. Paired with ``unblock``."""
        expires = time.monotonic() + self.wait
        self.expires = expires if expires < deadline else deadline

    def unblock(self) -> None:
        self.expires = None

    @staticmethod
    def passed(deadline: float) -> bool:
        """After a read: a phase's deadline has passed (a slow drip): raise Expired."""
        return time.monotonic() > deadline

    @contextmanager
    def bounded(self, seconds: float) -> Iterator[None]:
        """A wait made by someone else's blocking code (the PROXY header's reads, the TLS
        handshake): socket.timeout if it lasts more than ``seconds``."""
        self.expires = time.monotonic() + seconds
        try:
            yield
        finally:
            self.expires = None

    @staticmethod
    def quiet_for(sock, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client to send; True if it stayed silent. Timed
        to the moment (not by the watchdog's tick): the greeting waits on it."""
        return not gevent_adapter.readable_within(sock.fileno(), seconds)


class Watchdog:
    """One per server: ends the waits of every watched ``Clock`` that has passed its
    ``expires``. Started and stopped with the server; ``start`` again re-arms it for new
    timeouts (a reload)."""

    def __init__(self):
        self.clocks: set[Clock] = set()
        self.timer = None            # a repeating event-loop timer while running

    def start(self, shortest_timeout: float) -> None:
        """(Re)arm with a tick that suits the shortest timeout. Connections opened under an
        older configuration keep their own deadlines; the tick only decides how late past a
        deadline the cut comes."""
        tick = min(WATCHDOG_MAX_TICK, shortest_timeout / WATCHDOG_TICKS_PER_TIMEOUT)
        self.stop()
        self.timer = gevent_adapter.repeat(tick, self.cut_off_stalled)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer = None

    def cut_off_stalled(self) -> None:
        """Runs in the event loop (a timer callback), so no connection moves while it
        looks: a clock whose ``expires`` is set belongs to a connection blocked right now,
        and the timeout raised into it lands in that wait."""
        now = time.monotonic()
        for clock in list(self.clocks):
            expires = clock.expires
            if expires is not None and now > expires:
                clock.expires = None
                try:
                    clock.greenlet.throw(socket.timeout("timed out"))
                except Exception:   # the connection's own handler failed: log, keep watching
                    log.exception("watchdog could not end a stalled connection")
