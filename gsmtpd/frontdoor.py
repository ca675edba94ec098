"""The opening of a connection, before and beside the SMTP dialogue: who the client really
is (the PROXY header), whether it may come in (the per-address limit), whether it talks
before the greeting, and TLS (implicit from the first byte, or STARTTLS's handshake and
socket swap). ``Session`` holds a ``FrontDoor`` and speaks SMTP; it never touches these.
"""
from __future__ import annotations

import logging
import socket
import ssl

from . import metrics
from . import replies as R
from .config import ListenerSpec
from .deadline import Clock
from .proxy import ProxyError, read_header
from .wire import Wire

log = logging.getLogger("gsmtpd.session")


class Hangup(Exception):
    """End the session: send ``reply`` (if any) after what is already queued, then close."""

    def __init__(self, reply: R.Reply | None = None, discard_queued: bool = False):
        super().__init__(reply)
        self.reply = reply
        self.discard_queued = discard_queued


class FrontDoor:
    """One connection's socket, its wire and its real client. ``peer_ip`` is who connected;
    ``ip`` the real client (after a PROXY header or XCLIENT, theirs), the address that is
    limited, logged and stored."""

    def __init__(self, sock, address, server, listener: ListenerSpec, clock: Clock):
        self.sock = sock
        self.clock = clock
        self.wire = Wire(sock, clock)
        self.server = server
        self.config = server.config      # a reload does not change a connection under way
        self.listener = listener
        # A link-local IPv6 peer comes with its zone ("fe80::1%eth0"): this host's interface,
        # which made the address up to 55 characters for the 45 of ip_addr; the address is kept.
        self.peer_ip = (address[0] if isinstance(address, tuple) else str(address)).partition("%")[0]
        self.ip = self.peer_ip
        self.is_tls = False
        self.admitted = False            # holds one of the per-address slots of self.ip

    def open(self) -> None:
        """Everything before the greeting: PROXY header, per-address limit, implicit TLS,
        early talkers. Raises Hangup when the connection is to end."""
        if self.listener.proxy_protocol:
            self.read_proxy_header()
        if not self.server.admit(self.ip):
            raise Hangup(R.TOO_MANY_FROM_YOU)
        self.admitted = True
        if self.listener.tls == "implicit":
            self.start_tls()
        if self.config.early_talkers == "reject" and self.talks_early():
            raise Hangup(R.EARLY_TALKER, discard_queued=True)

    def read_proxy_header(self) -> None:
        """HAProxy's PROXY header, from a trusted peer only; anything wrong closes the
        connection without a reply (the other end is a proxy, not an SMTP client)."""
        try:
            if not self.server.is_trusted(self.peer_ip):
                raise ProxyError(f"PROXY header expected from untrusted peer {self.peer_ip}")
            try:
                with self.clock.bounded(self.config.timeout):
                    real = read_header(self.sock)
            except socket.timeout:
                raise Hangup() from None
        except ProxyError as exc:
            log.warning("closed ip=%s: %s", self.peer_ip, exc)
            raise Hangup() from None
        if real is not None:
            self.ip = real[0]

    def talks_early(self) -> bool:
        """RFC 5321 4.3.1 has the client wait for the greeting; spam bots often do not
        (Postfix postscreen's pregreet test)."""
        return bool(self.wire.buf) or not self.clock.quiet_for(self.sock, self.config.greet_pause)

    def can_starttls(self) -> bool:
        return self.listener.tls == "starttls" and not self.is_tls and self.server.tls is not None

    def start_tls(self) -> None:
        """TLS handshake on this connection; a failed one closes only this connection.
        For STARTTLS, what the client pipelined behind it in plaintext is thrown away
        (RFC 3207 4.2, CVE-2011-0411), never read as if it came over TLS."""
        self.wire.discard_input()
        try:
            with self.clock.bounded(self.config.timeout):
                self.sock = self.server.tls.wrap_socket(self.sock, server_side=True)
        except socket.timeout:
            raise Hangup() from None
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake failed ip=%s: %s", self.ip, exc)
            raise Hangup() from None
        self.wire.use_socket(self.sock)
        self.is_tls = True
        metrics.M.tls_sessions.inc()

    def readmit(self, ip: str) -> None:
        """XCLIENT ADDR: the per-address limit follows the real client, as after PROXY."""
        if ip == self.ip:
            return
        self.close()
        self.ip = ip
        if not self.server.admit(ip):
            raise Hangup(R.TOO_MANY_FROM_YOU)
        self.admitted = True

    def close(self) -> None:
        """Give the per-address slot back (the socket is closed by the server)."""
        if self.admitted:
            self.server.release(self.ip)
            self.admitted = False
