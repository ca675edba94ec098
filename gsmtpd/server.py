"""Listeners and connection limits: an embeddable ``Server`` used by the CLI, the workers
and the tests.

A gevent ``StreamServer`` per listener accepts; each connection runs a ``Session`` in its own
greenlet. Past ``max_clients`` a new connection is told ``421 4.3.2`` and closed at once,
never left hanging in the backlog; past ``max_per_ip`` from one address, ``421 4.7.0``.
Sockets can be bound before the server is built (``bind``), so a master process binds port
25 as root and its workers serve it after dropping privileges. Client timeouts are ended
by the server's one ``deadline.Watchdog``, which watches each connection's ``Clock``.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time

import gevent

from . import replies as R
from .address import AllowedHosts
from .budget import Budget, return_freed_messages
from .config import ListenerSpec, listeners
from .deadline import Clock, Watchdog
from .frontdoor import FrontDoor
from .gevent_adapter import Listener
from .limits import SharedAddressCounts
from .runners import Runners
from .session import Session, shutting_down
from .store import Store

log = logging.getLogger("gsmtpd.server")

BACKLOG = 1024
# Made at import, so a master that imports this module before forking shares it with
# every worker: the per-address limit holds for the whole server.
ADDRESS_COUNTS = SharedAddressCounts()


def bind(spec: ListenerSpec) -> socket.socket:
    """A listening socket for one listener."""
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((spec.host, spec.port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def bind_all(config) -> list[tuple[ListenerSpec, socket.socket]]:
    bound = []
    try:
        for spec in listeners(config):
            bound.append((spec, bind(spec)))
    except OSError:
        for _, sock in bound:
            sock.close()
        raise
    return bound


def announce(bound: list[tuple[ListenerSpec, socket.socket]]) -> None:
    """One "listening on HOST port N" line per listener, with the port really bound (port 0
    picks one): operators and the tests read the port from it."""
    for spec, sock in bound:
        log.info("listening on %s port %d (%s)", *sock.getsockname()[:2], spec)


def tls_context(config) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    # Opportunistic TLS on port 25 (RFC 3207): any client certificate is welcome, none is asked.
    context.verify_mode = ssl.CERT_NONE
    return context


class Server:
    def __init__(self, config, store: Store, bound: list[tuple[ListenerSpec, socket.socket]] | None = None):
        self.store = store
        self.bound = bound
        self.listeners: list[Listener] = []
        self.sessions: set[Session] = set()
        self.accepting = False
        self.watchdog = Watchdog()   # ends every connection's overdue wait
        self.runners = Runners(self.handle)
        self.budget = Budget(config.memory_budget)   # bytes of mail this worker may hold
        return_freed_messages()
        self.apply(config)

    def apply(self, config) -> None:
        """Take a (re)loaded configuration: limits, allowed hosts, TLS certificates. Open
        sessions keep the settings they started with."""
        self.config = config
        self.allowed_hosts = AllowedHosts(config.allowed_hosts)
        self.tls = tls_context(config)
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_networks]
        self.budget.resize(config.memory_budget)
        if self.watchdog.timer is not None:
            self.watchdog.start(min(config.timeout, config.data_timeout))

    def start(self, announce_listeners: bool = True) -> None:
        """Serve; ``announce_listeners=False`` in a prefork worker, whose master says
        "listening" once for all of them."""
        if self.bound is None:
            self.bound = bind_all(self.config)
        for spec, sock in self.bound:
            listener = Listener(sock, lambda s, a, spec=spec: self.runners.hand(spec, s, a), spawn=None)
            listener.start()
            self.listeners.append(listener)
        if announce_listeners:
            announce(self.bound)
        self.watchdog.start(min(self.config.timeout, self.config.data_timeout))
        self.accepting = True

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:         # the usual case, asked at every EHLO: no address parse
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def handle(self, spec: ListenerSpec, sock, address) -> None:
        """One connection, start to end (in a runner greenlet); closes the socket."""
        try:
            if not self.accepting or len(self.sessions) >= self.config.max_clients:
                self.refuse(sock, address[0], R.TOO_BUSY if self.accepting else R.SHUTTING_DOWN)
                return
            clock = Clock(self.config.timeout, gevent.getcurrent())
            session = Session(FrontDoor(sock, address, self, spec, clock))
            self.sessions.add(session)
            self.watchdog.clocks.add(clock)
            try:
                session.run()
            finally:
                self.sessions.discard(session)
                self.watchdog.clocks.discard(clock)
        finally:
            sock.close()

    def admit(self, ip: str) -> bool:
        """Count a client address; False past max_per_ip. Paired with ``release``."""
        return ADDRESS_COUNTS.admit(ip, self.config.max_per_ip)

    def release(self, ip: str) -> None:
        ADDRESS_COUNTS.add(ip, -1)

    @staticmethod
    def refuse(sock, ip: str, reply: R.Reply) -> None:
        log.warning("refused ip=%s reply=%s", ip, reply.text)
        try:
            sock.sendall(reply)
        except OSError:
            pass

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: no new connections; idle sessions get 421 4.3.0 now, busy ones
        finish their transaction (a message in DATA, or between BDAT chunks, gets its 250
        after commit) and get 421 at their next command; after ``timeout`` seconds whatever is left is cut off."""
        self.accepting = False
        for listener in self.listeners:
            listener.close()
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if session.idle:
                    session.clock.greenlet.kill(shutting_down(), block=False)
            gevent.sleep(0.05)
        for session in list(self.sessions):
            session.clock.greenlet.kill(block=False)
        for listener in self.listeners:
            listener.stop(timeout=0)
        self.listeners.clear()
        self.runners.stop()
        self.watchdog.stop()
