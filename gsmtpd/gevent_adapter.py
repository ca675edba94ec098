"""Every use of gevent's event loop below its documented API, behind one door.

The speed tricks of the wire and the watchdog reach into gevent's loop and sockets; this
module is the only place that does, so a gevent upgrade that moves them breaks here.
"""
from __future__ import annotations

import socket

import gevent
from gevent.socket import wait_read


def repeat(seconds: float, callback):
    """Call ``callback()`` from the event loop every ``seconds``; ``.stop()`` ends it. A
    bare loop timer, not a greenlet: nothing is spawned per tick."""
    timer = gevent.get_hub().loop.timer(seconds, seconds)
    timer.start(callback)
    return timer


def readable_within(fileno: int, seconds: float) -> bool:
    """True once ``fileno`` is readable, False if it stays quiet for ``seconds``."""
    try:
        wait_read(fileno, timeout=seconds)
    except socket.timeout:
        return False
    return True
