"""Every use of gevent below its documented API, behind one door.

The wire's speed trick reaches into gevent's socket (its non-blocking ``_sock`` and its
readiness watcher ``_read_event``) and waits on the hub itself; the watchdog uses a bare
loop timer. This module is the only place that does, and ``unsupported()``, run at
startup, says in one sentence what a gevent outside the tested range lacks, instead of an
AttributeError in the first session under load.
"""
from __future__ import annotations

import socket
from functools import partial

import gevent
import gevent.socket
from gevent.hub import Waiter  # noqa: F401  (for runners.py: switched to from the loop)
from gevent.server import StreamServer
from gevent.socket import wait_read

# The range the suite has run against (setup.py pins the same).
TESTED = "gevent >= 23.9, < 27"


def fast_path(sock):
    """``(raw, wait_readable)`` for a gevent socket: the non-blocking socket it wraps, and
    a call that blocks this greenlet until that socket is readable. Reading ``raw``
    directly skips gevent's Python wrapper around each recv() and send(). ``(None,
    None)`` for any other socket (TLS: decrypted data may wait while the socket is
    empty), which is then used through its own methods."""
    readable = getattr(sock, "_read_event", None)
    if readable is None:
        return None, None
    return sock._sock, partial(gevent.get_hub().wait, readable)


class Listener(StreamServer):
    """Accepts in the event loop and hands each connection over (``spawn=None``: the
    handler is called in the loop, and only hands over). The runner that serves the
    connection closes it, not the listener once the handler returns: ``do_close``, the
    hook gevent calls then, does nothing."""

    def do_close(self, sock, *args) -> None:
        pass


def call_from_loop(func, *args) -> None:
    """Run ``func(*args)`` from the event loop at its next turn (a Waiter must be
    switched to from there)."""
    gevent.get_hub().loop.run_callback(func, *args)


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


def unsupported() -> str | None:
    """None when this gevent has what the module uses; else what it lacks, the installed
    version and the tested range."""
    missing = []
    one, other = gevent.socket.socketpair()
    try:
        for name in ("_sock", "_read_event"):
            if not hasattr(one, name):
                missing.append(f"socket.{name}")
    finally:
        one.close()
        other.close()
    hub = gevent.get_hub()
    for owner, name in ((hub, "wait"), (hub.loop, "timer"), (hub.loop, "run_callback"),
                        (StreamServer, "do_close")):
        if not callable(getattr(owner, name, None)):
            missing.append(f"{type(owner).__name__}.{name}")
    if not missing:
        return None
    return (f"gevent {gevent.__version__} lacks {', '.join(missing)}, which gsmtpd uses; "
            f"the tested versions are {TESTED}")
