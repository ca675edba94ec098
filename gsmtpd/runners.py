"""Greenlets that run one connection after another.

A greenlet made for each connection, and dropped after it, cost about 12 us a connection
(bench: W1 opens one per message): CPython maps a fresh frame stack for a new greenlet
and unmaps it when the greenlet ends, and the first touches of those pages fault. A
runner that has finished a connection waits for the next one instead, up to ``keep`` of
them; past that a finished runner ends, and when none waits a new one is started.
"""
from __future__ import annotations

from typing import Callable

import gevent

from .gevent_adapter import Waiter, call_from_loop

# Runners kept waiting for connections; a few more than a busy moment's turnover.
KEEP_IDLE = 100


class Runners:
    def __init__(self, serve: Callable[..., None], keep: int = KEEP_IDLE):
        self.serve = serve           # serve(*connection) runs a whole connection
        self.keep = keep
        self.idle: list[Waiter] = []

    def hand(self, *connection) -> None:
        """Give a connection to a waiting runner, or to a new one. Called in the event
        loop (the listener's accept callback): the runner starts at once and the loop
        goes on when it first blocks."""
        if self.idle:
            self.idle.pop().switch(connection)
        else:
            gevent.spawn(self._run, connection)

    def _run(self, connection: tuple) -> None:
        while connection is not None:
            self.serve(*connection)
            if len(self.idle) >= self.keep:
                return
            waiter = Waiter()
            self.idle.append(waiter)
            try:
                connection = waiter.get()
            except BaseException:
                # A kill meant for the connection that has just ended (Server.stop kills
                # sessions without waiting) arrived after it ended: this runner ends.
                self.idle.remove(waiter)
                return

    def stop(self) -> None:
        """End the waiting runners."""
        while self.idle:
            call_from_loop(self.idle.pop().switch, None)
