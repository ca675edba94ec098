"""Listeners and connection limits: an embeddable ``Server`` used by the CLI and the tests.

A gevent ``StreamServer`` accepts; each connection runs a ``Session`` in its own greenlet.
Past ``max_clients`` a new connection is told ``421 4.3.2`` and closed at once, never left
hanging in the backlog.
"""
from __future__ import annotations

import logging
import time

import gevent
from gevent.server import StreamServer

from . import replies as R
from .address import AllowedHosts
from .session import Session, ShuttingDown
from .store import Store

log = logging.getLogger("gsmtpd.server")


class Server:
    def __init__(self, config, store: Store):
        self.config = config
        self.store = store
        self.allowed_hosts = AllowedHosts(config.allowed_hosts)
        self.listeners: list[StreamServer] = []
        self.sessions: set[Session] = set()
        self.accepting = False

    def start(self) -> None:
        listener = StreamServer((self.config.listen, self.config.port), self.handle, backlog=1024)
        listener.start()
        self.listeners.append(listener)
        self.accepting = True
        for host, port in self.addresses:
            log.info("listening on %s port %d", host, port)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [listener.address[:2] for listener in self.listeners]

    def handle(self, sock, address) -> None:
        if not self.accepting or len(self.sessions) >= self.config.max_clients:
            reply = R.TOO_BUSY if self.accepting else R.SHUTTING_DOWN
            log.warning("refused ip=%s reply=%s", address[0], reply.text)
            try:
                sock.sendall(reply)
            except OSError:
                pass
            return
        session = Session(sock, address, self)
        session.greenlet = gevent.getcurrent()
        self.sessions.add(session)
        try:
            session.run()
        finally:
            self.sessions.discard(session)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: no new connections; idle sessions get 421 4.3.0 now, busy ones
        finish their transaction (a message in DATA gets its 250 after commit) and get 421
        at their next command; after ``timeout`` seconds whatever is left is cut off."""
        self.accepting = False
        for listener in self.listeners:
            listener.close()
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if session.idle:
                    session.greenlet.kill(ShuttingDown, block=False)
            gevent.sleep(0.05)
        for listener in self.listeners:
            listener.stop(timeout=0)
        self.listeners.clear()
