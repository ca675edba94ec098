"""The SMTP dialogue of one connection (RFC 5321, ESMTP per RFC 1869), run by one greenlet.

``Session`` holds what lasts the whole connection (peer, HELO name, error count);
``Envelope`` holds one transaction. HELO/EHLO, RSET and the end of DATA start afresh.
Verbs are dispatched by table to ``smtp_<VERB>`` methods, each checking its own
preconditions. Every reply comes from ``replies``.
"""
from __future__ import annotations

import logging
import socket
import time

import gevent

from . import replies as R
from .address import parse_helo, parse_path
from .envelope import Envelope, Recipient, build_rows, new_queue_id
from .store import Verdict
from .wire import ConnectionClosed, LineTooLong, Wire

log = logging.getLogger("gsmtpd.session")

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
MAX_COMMAND_LINE = 512

VERDICT_REPLIES = {
    Verdict.TRANSIENT: R.STORAGE_FAILED,
    Verdict.TOO_BIG: R.TOO_BIG_TO_STORE,
    Verdict.REFUSED: R.REJECTED_BY_STORE,
}


class CloseSession(Exception):
    """Send nothing more (the reply, if any, is already queued) and close."""


class DataTimeout(Exception):
    pass


class ShuttingDown(Exception):
    """Raised into an idle session by Server.stop(): 421 4.3.0 and close."""


class Session:
    def __init__(self, sock, address, server):
        self.wire = Wire(sock)
        self.sock = sock
        self.ip = address[0] if isinstance(address, tuple) else str(address)
        self.server = server
        self.config = server.config
        self.helo: str | None = None
        self.esmtp = False
        self.is_tls = False
        self.envelope: Envelope | None = None
        self.errors = 0
        self.messages = 0
        self.closing = False
        self.reading_command = False

    # --- the loop

    def run(self) -> None:
        started = time.monotonic()
        log.info("connect ip=%s", self.ip)
        try:
            self.sock.settimeout(self.config.timeout)
            self.reply(R.greeting(self.config.hostname))
            while not self.closing:
                self.handle(self.next_command())
                if self.errors >= self.config.max_errors:
                    self.reply(R.TOO_MANY_ERRORS)
                    break
            self.wire.flush()
        except CloseSession:
            self._flush_quietly()
        except socket.timeout:
            self.wire.out.clear()
            self.reply(R.COMMAND_TIMEOUT)
            self._flush_quietly()
        except DataTimeout:
            self.wire.out.clear()
            self.reply(R.DATA_TIMEOUT)
            self._flush_quietly()
        except ShuttingDown:
            self.wire.out.clear()
            self.reply(R.SHUTTING_DOWN)
            self._flush_quietly()
        except (ConnectionClosed, OSError):
            pass
        except Exception:  # a bug of ours: this session ends with a 421, the others go on
            log.exception("internal error in session ip=%s", self.ip)
            self.wire.out.clear()
            self.reply(R.INTERNAL_ERROR)
            self._flush_quietly()
        finally:
            log.info("disconnect ip=%s messages=%d errors=%d seconds=%.2f",
                     self.ip, self.messages, self.errors, time.monotonic() - started)

    def _flush_quietly(self) -> None:
        try:
            self.wire.flush()
        except OSError:
            pass

    @property
    def idle(self) -> bool:
        """Waiting for the client's next command, with nothing of ours in flight."""
        return self.reading_command and self.wire.waiting

    def next_command(self) -> bytes | None:
        if not self.server.accepting:
            raise ShuttingDown()
        self.reading_command = True
        try:
            return self.wire.read_line(MAX_COMMAND_LINE)
        except LineTooLong:
            return None
        finally:
            self.reading_command = False

    def reply(self, reply: R.Reply) -> None:
        if reply[0] == 0x35:  # b"5": RFC 5321 permanent errors count towards the error limit
            self.errors += 1
        self.wire.send(reply)

    def handle(self, line: bytes | None) -> None:
        if line is None:
            self.reply(R.LINE_TOO_LONG)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.reply(R.UNKNOWN_COMMAND)
            return
        if "\0" in text or "\r" in text:
            self.reply(R.UNKNOWN_COMMAND)
            return
        verb, _, argument = text.partition(" ")
        # Verbs are ASCII (RFC 5321 2.4); str.upper() would turn 'QUıT' into QUIT.
        method = self.VERBS.get(verb.upper()) if verb.isascii() else None
        if method is None:
            self.reply(R.UNKNOWN_COMMAND)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("ip=%s command=%r", self.ip, text[:80])
        method(self, argument.strip(" "))

    # --- greeting and state

    def smtp_HELO(self, argument: str) -> None:
        name = parse_helo(argument)
        if name is None:
            self.reply(R.HELO_SYNTAX)
            return
        self.helo, self.esmtp, self.envelope = name, False, None
        self.reply(R.helo_ok(self.config.hostname, name))

    def smtp_EHLO(self, argument: str) -> None:
        name = parse_helo(argument)
        if name is None:
            self.reply(R.EHLO_SYNTAX)
            return
        # RFC 5321 4.1.4: EHLO in the middle of a transaction resets it.
        self.helo, self.esmtp, self.envelope = name, True, None
        self.reply(R.ehlo_ok(self.config.hostname, name, self.extensions()))

    def extensions(self) -> list[str]:
        return [f"SIZE {self.config.max_size}", "PIPELINING", "8BITMIME", "SMTPUTF8",
                "ENHANCEDSTATUSCODES"]

    def smtp_RSET(self, argument: str) -> None:
        if argument:
            self.reply(R.NO_ARGUMENTS)
            return
        self.envelope = None
        self.reply(R.RESET_OK)

    def smtp_NOOP(self, argument: str) -> None:
        # RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored.
        self.reply(R.NOOP_OK)

    def smtp_QUIT(self, argument: str) -> None:
        self.reply(R.goodbye(self.config.hostname))
        self.closing = True

    def smtp_VRFY(self, argument: str) -> None:
        if not argument:
            self.reply(R.SYNTAX_ERROR)
            return
        self.reply(R.CANNOT_VRFY)

    def smtp_HELP(self, argument: str) -> None:
        self.reply(R.HELP)

    # --- the transaction

    def smtp_MAIL(self, argument: str) -> None:
        if self.helo is None:
            self.reply(R.NEED_HELO)
            return
        if self.envelope is not None:
            self.reply(R.NESTED_MAIL)
            return
        path = parse_path(argument, "FROM", null_allowed=True)
        if isinstance(path, R.Reply):
            self.reply(path)
            return
        envelope = Envelope(sender=path.address)
        for key, value in path.params.items():
            problem = self._mail_parameter(envelope, key, value)
            if problem is not None:
                self.reply(problem)
                return
        self.envelope = envelope
        self.reply(R.SENDER_OK)

    def _mail_parameter(self, envelope: Envelope, key: str, value: str | None) -> R.Reply | None:
        if not self.esmtp:
            return R.BAD_PARAMETER   # RFC 1869 6: parameters need EHLO
        if key == "SIZE":
            # RFC 1870 6.1: refuse at once a message declared bigger than the limit.
            # RFC 1870 section 3: size-value ::= 1*20DIGIT, ASCII digits only.
            if value is None or not (value.isascii() and value.isdigit()):
                return R.SYNTAX_ERROR
            return R.TOO_BIG if int(value) > self.config.max_size else None
        if key == "BODY":
            if value is None or not value.isascii() or value.upper() not in ("7BIT", "8BITMIME"):
                return R.SYNTAX_ERROR
            envelope.body_type = value.upper()
            return None
        if key == "SMTPUTF8" and value is None:
            envelope.smtputf8 = True   # RFC 6531 3.4
            return None
        return R.BAD_PARAMETER

    def smtp_RCPT(self, argument: str) -> None:
        if self.envelope is None:
            self.reply(R.NEED_MAIL if self.helo is not None else R.NEED_HELO)
            return
        envelope = self.envelope
        path = parse_path(argument, "TO", null_allowed=False, utf8=envelope.smtputf8)
        if isinstance(path, R.Reply):
            self.reply(path)
            return
        if path.params:
            self.reply(R.BAD_PARAMETER)   # no RCPT parameters are advertised (no DSN)
            return
        if path.domain and path.domain not in self.server.allowed_hosts:
            self.reply(R.RELAY_DENIED)
            return
        # RFC 5321 4.5.3.1.8 / 4.5.3.1.10: a limit on recipients answers 452, not 5xx.
        if len(envelope.recipients) >= self.config.max_recipients:
            self.reply(R.TOO_MANY_RECIPIENTS)
            return
        envelope.recipients.append(Recipient(path.address, self.mailbox(path.local, path.domain)))
        self.reply(R.RECIPIENT_OK)

    def mailbox(self, local: str, domain: str) -> str:
        """The `to` column. A primary host files every local part under one domain."""
        domain = self.config.primary_host or domain or self.config.hostname
        return f"{local}@{domain}".lower()

    def smtp_DATA(self, argument: str) -> None:
        if self.envelope is None:
            self.reply(R.NEED_MAIL if self.helo is not None else R.NEED_HELO)
            return
        if not self.envelope.recipients:
            self.reply(R.NEED_RCPT)
            return
        if argument:
            self.reply(R.NO_ARGUMENTS)
            return
        envelope, self.envelope = self.envelope, None
        self.reply(R.START_DATA)
        try:
            with gevent.Timeout(self.config.data_timeout, DataTimeout):
                message, size = self.wire.read_data(self.config.max_size)
        except socket.timeout:
            raise DataTimeout() from None
        if message is None:
            log.info("refused ip=%s from=<%s> size=%d reply=552 too big", self.ip, envelope.sender, size)
            self.reply(R.TOO_BIG)
            return
        self.reply(self.deliver(envelope, message))

    def deliver(self, envelope: Envelope, message: bytes) -> R.Reply:
        queue_id = new_queue_id()
        now = time.time()
        rows = build_rows(envelope, message, queue_id=queue_id, now=now, ip=self.ip,
                          helo=self.helo or "", hostname=self.config.hostname,
                          is_tls=self.is_tls, prefer=self.config.prefer)
        verdict = self.server.store.save(rows)
        reply = R.queued(queue_id) if verdict is Verdict.STORED else VERDICT_REPLIES[verdict]
        if verdict is Verdict.STORED:
            self.messages += 1
        log.info("message id=%s ip=%s from=<%s> to=%s size=%d reply=%s", queue_id, self.ip,
                 envelope.sender, ",".join(r.address for r in envelope.recipients), len(message),
                 reply.text)
        return reply

    VERBS: dict = {}


Session.VERBS = {name[5:]: method for name, method in vars(Session).items() if name.startswith("smtp_")}
