"""The SMTP dialogue of one connection (RFC 5321, ESMTP per RFC 1869), run by one greenlet.

``Session`` holds what lasts the whole connection (HELO name, error count; the socket, the
real client and TLS are its ``FrontDoor``'s); ``Envelope`` holds one transaction.
HELO/EHLO, RSET and the end of DATA start afresh.
Verbs are dispatched by table to ``smtp_<VERB>`` methods, each checking its own
preconditions. Every reply comes from ``replies``.
"""
from __future__ import annotations

import logging
import re
import socket
import time

from . import logs, metrics
from . import replies as R
from .address import parse_helo, parse_path
from .budget import cost
from .envelope import Envelope, Recipient, build_rows, held_bytes, new_queue_id
from .frontdoor import FrontDoor, Hangup
from .store import Verdict
from .wire import ConnectionClosed, Data, Expired, LineTooLong
from .xclient import parse_xclient

log = logging.getLogger("gsmtpd.session")

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
MAX_COMMAND_LINE = 512
# RFC 3030 2: bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ]; chunk-size ::= 1*DIGIT.
# ASCII digits only (int() would take "+7", "1_000" and other scripts' digits).
_BDAT_ARGUMENT = re.compile(r"([0-9]+)(?: +(LAST))?\Z", re.IGNORECASE)

VERDICT_REPLIES = {
    Verdict.TRANSIENT: R.STORAGE_FAILED,
    Verdict.TOO_BIG: R.TOO_BIG_TO_STORE,
    Verdict.REFUSED: R.REJECTED_BY_STORE,
}


def shutting_down() -> Hangup:
    """Raised into an idle session by Server.stop(), and by a busy one at its next command.
    Replies already queued (the 250 of a message that just got in) still go out first."""
    return Hangup(R.SHUTTING_DOWN)


class Session:
    def __init__(self, door: FrontDoor):
        self.door = door                 # the socket, the real client (door.ip), TLS
        self.wire = door.wire
        self.clock = door.clock          # every wait of this connection, and its deadline
        self.server = door.server
        self.config = door.config        # a reload does not change a session under way
        self.helo: str | None = None
        self.esmtp = False
        self.envelope: Envelope | None = None
        self.errors = 0
        self.chunks_held = None          # budget.Reservation of pending BDAT chunks (first BDAT)
        self.messages = 0
        self.closing = False
        self.reading_command = False
        self.xclient_helo: str | None = None   # HELO name a trusted proxy gave in XCLIENT
        self.debug = log.isEnabledFor(logging.DEBUG)   # log every command (asked once)

    # --- the loop

    def run(self) -> None:
        started = time.monotonic()
        metrics.M.connections.inc()
        metrics.M.connections_open.inc()
        try:
            self.door.open()
            log.debug("connect ip=%s%s", self.door.ip, " tls" if self.door.is_tls else "")
            self.reply(R.greeting(self.config.hostname))
            while not self.closing:
                self.handle(self.next_command())
                if self.errors >= self.config.max_errors:
                    raise Hangup(R.TOO_MANY_ERRORS)
            self.wire.flush()
        except Hangup as hangup:
            if hangup.discard_queued:
                self.wire.out.clear()
            if hangup.reply is not None:
                self.wire.send(hangup.reply)
            self._flush_quietly()
        except socket.timeout:   # from the server's watchdog: silent, or not reading
            self.wire.out.clear()
            self.wire.send(R.COMMAND_TIMEOUT)
            self._flush_quietly()
        except (ConnectionClosed, OSError):
            pass
        except Exception:  # a bug of ours: this session ends with a 421, the others go on
            log.exception("internal error in session ip=%s", self.door.ip)
            self.wire.out.clear()
            self.wire.send(R.INTERNAL_ERROR)
            self._flush_quietly()
        finally:
            metrics.M.connections_open.dec()
            if self.chunks_held is not None:     # BDAT only: no call on DATA's path
                self._release_chunks()
            self.door.close()
            # One line per connection, when it ends (the bench showed logging at ~8% of CPU).
            logs.info(log, "disconnect ip=%s%s messages=%d errors=%d seconds=%.2f", self.door.ip,
                     " tls" if self.door.is_tls else "", self.messages, self.errors, time.monotonic() - started)

    def _flush_quietly(self) -> None:
        try:
            self.wire.flush()
        except OSError:
            pass

    @property
    def idle(self) -> bool:
        """Waiting for the client's next command, with nothing of ours in flight and no
        message under way: between two BDAT chunks a message is, as it is within DATA."""
        return self.reading_command and self.wire.waiting and not self.in_chunks

    @property
    def in_chunks(self) -> bool:
        """A BDAT transaction has chunks and waits for more (or LAST)."""
        return self.envelope is not None and self.envelope.chunks is not None

    def next_command(self) -> bytes | None:
        # A graceful stop lets a message under way finish (Server.stop): the next BDAT
        # chunk is read; the session ends at the first command after the transaction.
        if not self.server.accepting and not self.in_chunks:
            raise shutting_down()
        self.reading_command = True
        try:
            # A deadline for the whole line, not per read: a client dripping one byte at a
            # time must not hold the connection forever.
            return self.wire.read_line(MAX_COMMAND_LINE, self.config.timeout)
        except LineTooLong:
            return None
        except Expired:
            raise Hangup(R.COMMAND_TIMEOUT, discard_queued=True) from None
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
        if self.debug:
            log.debug("ip=%s command=%r", self.door.ip, text[:80])
        method(self, argument.strip(" "))

    # --- greeting and state

    def smtp_HELO(self, argument: str) -> None:
        name = self.hello(argument, esmtp=False)
        if name is not None:
            self.reply(R.helo_ok(self.config.hostname, name))

    def smtp_EHLO(self, argument: str) -> None:
        name = self.hello(argument, esmtp=True)
        if name is not None:
            self.reply(R.ehlo_ok(self.config.hostname, name, self.extensions()))

    def hello(self, argument: str, esmtp: bool) -> str | None:
        """HELO/EHLO: the name given starts the session afresh (RFC 5321 4.1.4: even in
        the middle of a transaction); without one, a syntax reply and None."""
        name = parse_helo(argument)
        if name is None:
            self.reply(R.EHLO_SYNTAX if esmtp else R.HELO_SYNTAX)
            return None
        self.start_over(self.xclient_helo or name, esmtp)
        return name

    def start_over(self, helo: str | None = None, esmtp: bool = False) -> None:
        """The session starts afresh, with no transaction: after HELO/EHLO (RFC 5321
        4.1.4), the TLS handshake (RFC 3207 4.2: from before EHLO) and XCLIENT (Postfix
        XCLIENT_README: a new greeting)."""
        self.helo, self.esmtp, self.envelope = helo, esmtp, None
        if self.chunks_held is not None:         # BDAT only: no call on DATA's path
            self._release_chunks()

    def extensions(self) -> tuple[str, ...]:
        # RFC 1870 4: SIZE is the fixed maximum, so the least of max_size and what the
        # database and the byte budget could ever take (largest_kept), not just max_size.
        extensions = [f"SIZE {self.largest_kept()}", "PIPELINING", "8BITMIME", "CHUNKING",
                      "BINARYMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if self.door.can_starttls():
            extensions.append("STARTTLS")
        if self.server.is_trusted(self.door.peer_ip):
            extensions.append("XCLIENT NAME ADDR PORT PROTO HELO")
        return tuple(extensions)

    def smtp_STARTTLS(self, argument: str) -> None:
        if not self.door.can_starttls():
            self.reply(R.UNKNOWN_COMMAND if not self.door.is_tls else R.TLS_ALREADY_ACTIVE)
            return
        if argument:
            self.reply(R.NO_ARGUMENTS)
            return
        if self.envelope is not None and self.envelope.chunks is not None:
            self.reply(R.TLS_WITH_CHUNKS_PENDING)   # no BDAT content on both sides of TLS
            return
        self.reply(R.READY_FOR_TLS)
        self.wire.flush()
        self.door.start_tls()
        self.start_over()

    def smtp_XCLIENT(self, argument: str) -> None:
        """Postfix's XCLIENT: a trusted proxy names the real client. From anyone else it is
        an unknown command, as if we had never heard of it."""
        if not self.server.is_trusted(self.door.peer_ip):
            self.reply(R.UNKNOWN_COMMAND)
            return
        if self.envelope is not None:
            self.reply(R.XCLIENT_IN_TRANSACTION)
            return
        attributes = parse_xclient(argument)
        if isinstance(attributes, R.Reply):
            self.reply(attributes)
            return
        if "ADDR" in attributes:
            self.door.readmit(attributes["ADDR"])
        self.xclient_helo = attributes.get("HELO")
        self.start_over()
        self.reply(R.greeting(self.config.hostname))

    def smtp_RSET(self, argument: str) -> None:
        if argument:
            self.reply(R.NO_ARGUMENTS)
            return
        self.envelope = None
        self._release_chunks()
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
            envelope.size = int(value)
            return self.server.budget.check_size(envelope.size, self.config.max_size)
        if key == "BODY":
            # RFC 6152: 8BITMIME is taken and stored as it comes; nothing to convert.
            # RFC 3030 3: so is BINARYMIME, which then must come by BDAT.
            if value is None or not value.isascii() or value.upper() not in ("7BIT", "8BITMIME", "BINARYMIME"):
                return R.SYNTAX_ERROR
            envelope.binarymime = value.upper() == "BINARYMIME"
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
        if envelope.chunks is not None:
            self.reply(R.RCPT_AFTER_BDAT)
            return
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
        # Each recipient's row holds the whole message and its body: a message declared big
        # may have only so many (one always), or its commit would outlast the save timeout.
        count = len(envelope.recipients)
        if count >= self.config.max_recipients or count and self.too_many_to_store(count + 1, envelope.size):
            self.reply(R.TOO_MANY_RECIPIENTS)
            return
        mailbox = self.mailbox(path.local, path.domain)
        # The same mailbox twice gets one row, as Postfix delivers a duplicate once.
        if all(known.mailbox != mailbox for known in envelope.recipients):
            envelope.recipients.append(Recipient(path.address, mailbox))
        self.reply(R.RECIPIENT_OK)

    def mailbox(self, local: str, domain: str) -> str:
        """The `to` column. A primary host files every local part under one domain."""
        domain = self.config.primary_host or domain.rstrip(".") or self.config.hostname
        return f"{local}@{domain}".lower()

    def too_many_to_store(self, recipients: int, size: int) -> bool:
        """A message of ``size`` bytes to this many recipients makes more rows than
        --max-stored-bytes (its size and body, ``cost``, once per recipient); one recipient
        is always allowed: its one row is what the message costs anyway."""
        return recipients > 1 and recipients * cost(size) > self.config.max_stored_bytes

    def largest_kept(self) -> int:
        """The most of one message (DATA or all its BDAT chunks) this session keeps: its size
        limit, or less when the database or the byte budget could never hold it. Past it
        the rest is read and dropped and the reply is 552."""
        return min(self.server.store.largest_message(self.config.max_size), self.server.budget.largest_message())

    def smtp_DATA(self, argument: str) -> None:
        if self.envelope is None:
            self.reply(R.NEED_MAIL if self.helo is not None else R.NEED_HELO)
            return
        if self.envelope.chunks is not None or self.envelope.binarymime:
            self.reply(R.DATA_AFTER_BDAT if self.envelope.chunks is not None else R.BINARYMIME_NEEDS_BDAT)
            return
        if not self.envelope.recipients:
            self.reply(R.NEED_RCPT)
            return
        if argument:
            self.reply(R.NO_ARGUMENTS)
            return
        envelope, self.envelope = self.envelope, None
        self.reply(R.START_DATA)
        keep = self.largest_kept()
        # The message's bytes count against the worker's budget until its reply, on every path.
        with self.server.budget.hold() as held:
            # RFC 5321 4.5.3.2.5-6: a deadline for each read and one for the whole DATA phase.
            try:
                data = self.wire.read_data(keep, self.config.data_timeout, self.config.bare_lf, held.room)
            except (socket.timeout, Expired):
                raise Hangup(R.DATA_TIMEOUT, discard_queued=True) from None
            reply = self.data_reply(envelope, data, keep, held)
        metrics.M.message(reply.code, data.size, len(envelope.recipients))
        self.reply(reply)

    def data_reply(self, envelope: Envelope, data, keep: int, held) -> R.Reply:
        """The reply after the final dot; ``held`` is the message's budget.Reservation."""
        if held.refused and data.size <= keep:
            reply = R.INSUFFICIENT_STORAGE
            log.info("refused ip=%s from=<%s> size=%d reply=%s", self.door.ip, envelope.sender, data.size, reply.text)
        elif data.message is None:
            # RFC 1870 6.1: over the advertised SIZE; or within it but more than the
            # database takes in one row (max_allowed_packet).
            reply = R.TOO_BIG if data.size > self.config.max_size else R.TOO_BIG_TO_STORE
            log.info("refused ip=%s from=<%s> size=%d reply=%s", self.door.ip, envelope.sender, data.size, reply.text)
        elif data.bare_lf and self.config.bare_lf == "reject":
            log.info("refused ip=%s from=<%s> size=%d reply=550 bare LF", self.door.ip, envelope.sender, data.size)
            reply = R.BARE_LF
        else:
            reply = self.deliver(envelope, data, held)
        return reply

    def smtp_BDAT(self, argument: str) -> None:
        """RFC 3030 CHUNKING: ``BDAT <size> [LAST]`` and then exactly that many octets, as
        sent (no dot-stuffing, bare CR and LF are data). Chunks add up to one message;
        LAST ends it with the verdict DATA gets. Once the size parses, the chunk's octets
        are read even when the command is refused, so the next command is read from the
        right place (RFC 3030 2: "accept and discard")."""
        chunk = _BDAT_ARGUMENT.match(argument)
        if chunk is None:
            self.reply(R.BDAT_SYNTAX)
            return
        size, last = int(chunk.group(1)), chunk.group(2) is not None
        envelope = self.envelope
        problem = self._bdat_problem(envelope)
        if problem is not None:
            self._read_chunk(size, None, self.clock.phase(self.config.data_timeout))
            self.reply(problem)
            return
        if envelope.chunks is None:
            # RFC 5321 4.5.3.2.6: the DATA phase's deadline, here for all the chunks, so
            # a client cannot hold a transaction open with a tiny chunk now and then.
            envelope.chunks = bytearray()
            envelope.chunks_deadline = self.clock.phase(self.config.data_timeout)
        elif self.clock.passed(envelope.chunks_deadline):
            raise Hangup(R.DATA_TIMEOUT, discard_queued=True)
        total = len(envelope.chunks) + size
        keep = self.largest_kept()
        # The chunks count against the worker's byte budget as DATA does (budget.py), from
        # the first chunk until the transaction's reply: a chunk the budget cannot take now
        # is read and dropped and gets 452 4.3.1, and the sender retries later.
        if total > keep or self._chunks_held().room(total) < total:
            # Over the limit, counted over all chunks: this one is read and dropped, the
            # transaction ends, and chunks still in the pipeline meet "need MAIL" (503).
            self.envelope = None
            envelope.chunks = None
            self._release_chunks()
            self._read_chunk(size, None, envelope.chunks_deadline)
            if total <= keep:
                reply = R.INSUFFICIENT_STORAGE
            else:
                reply = R.TOO_BIG if total > self.config.max_size else R.TOO_BIG_TO_STORE
            log.info("refused ip=%s from=<%s> size=%d reply=%s", self.door.ip, envelope.sender, total, reply.text)
            metrics.M.message(reply.code, total, len(envelope.recipients))
            self.reply(reply)
            return
        self._read_chunk(size, envelope.chunks, envelope.chunks_deadline)
        if not last:
            self.reply(R.chunk_received(size))
            return
        self.envelope = None
        # Binary data: bare CR and LF are content, not line ends (crlf_only=False). The
        # chunks' buffer goes before the message is parsed: it is held once from here on.
        message, envelope.chunks = Data(bytes(envelope.chunks), total), None
        try:
            reply = self.deliver(envelope, message, held=self.chunks_held)
        finally:
            self._release_chunks()
        metrics.M.message(reply.code, total, len(envelope.recipients))
        self.reply(reply)

    def _chunks_held(self):
        """The budget.Reservation of the BDAT chunks of this session's transaction."""
        if self.chunks_held is None:
            self.chunks_held = self.server.budget.hold()
        return self.chunks_held

    def _release_chunks(self) -> None:
        """The transaction's chunks are gone (delivered, refused, RSET, HELO, XCLIENT, the
        end of the session): so is their budget."""
        if self.chunks_held is not None:
            self.chunks_held.release()
            self.chunks_held = None      # a refused reservation stays refused: the next is new

    def _bdat_problem(self, envelope: Envelope | None) -> R.Reply | None:
        if self.helo is None:
            return R.NEED_HELO
        if not self.esmtp:
            return R.BDAT_NEEDS_EHLO
        if envelope is None:
            return R.NEED_MAIL
        if not envelope.recipients:
            return R.NEED_RCPT
        return None

    def _read_chunk(self, size: int, into: bytearray | None, deadline: float) -> None:
        try:
            self.wire.read_chunk(size, into, deadline)
        except (socket.timeout, Expired):
            raise Hangup(R.DATA_TIMEOUT, discard_queued=True) from None

    def deliver(self, envelope: Envelope, message: Data, held=None) -> R.Reply:
        # (len() first: a message to one recipient, the usual one, pays no call.)
        if len(envelope.recipients) > 1 and self.too_many_to_store(len(envelope.recipients), message.size):
            # No SIZE= was declared, or a smaller one, so the RCPTs could not be held to
            # --max-stored-bytes (RFC 5321 4.5.3.1.8 has us take 100 recipients whatever
            # the message); its rows would outlast the save timeout, and 451 after it would
            # repeat on every retry. Known only now, the answer is 452 or 552. A 452 is
            # retried with the same recipients and meets the same answer until the message
            # expires in the sender's queue days later; 552 now, saying what to do, is the
            # honest one: the bounce tells the sender to split the recipients. A client that
            # declares SIZE= (Postfix, Exim and most MTAs do when SIZE is advertised) never
            # gets here: its RCPTs past the limit get 452 4.5.3 and it sends to those in
            # another transaction (RFC 5321 4.5.3.1.10).
            reply = R.TOO_BIG_FOR_RECIPIENTS
            log.info("refused ip=%s from=<%s> size=%d recipients=%d reply=%s", self.door.ip,
                     envelope.sender, message.size, len(envelope.recipients), reply.text)
            return reply
        queue_id = new_queue_id()
        now = time.time()
        door = self.door
        rows = build_rows(envelope, message, queue_id=queue_id, now=now, ip=door.ip,
                          helo=self.helo or "", hostname=self.config.hostname,
                          is_tls=door.is_tls, prefer=self.config.prefer, esmtp=self.esmtp)
        if held is not None and not held.settle(held_bytes(rows)):
            # Its decoded body came out longer than budgeted, and there is no room for it.
            self.server.budget.refused()
            verdict, reply = None, R.INSUFFICIENT_STORAGE
        else:
            verdict = self.server.store.save(rows)
            reply = R.queued(queue_id) if verdict is Verdict.STORED else VERDICT_REPLIES[verdict]
        if verdict is Verdict.STORED:
            self.messages += 1
        logs.info(log, "message id=%s ip=%s from=<%s> to=%s size=%d reply=%s", queue_id, door.ip,
                 envelope.sender, ",".join(r.address for r in envelope.recipients), message.size,
                 reply.text)
        return reply

    VERBS: dict = {}


Session.VERBS = {name[5:]: method for name, method in vars(Session).items() if name.startswith("smtp_")}
