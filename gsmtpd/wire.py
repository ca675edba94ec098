"""Framing on the socket: command lines and the DATA stream, with limits.

Reads are large (64 KiB) and buffered; replies are queued and written in one send when
the session is about to wait for input, so pipelined commands (RFC 2920) get their replies
in order and in few packets.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

from . import gevent_adapter
from .deadline import Clock, Expired  # noqa: F401  (Expired: raised by the wire's reads)

RECV_SIZE = 65536
# RFC 5321 4.1.1.4: the end of mail data is <CRLF>.<CRLF>; with the CRLF that ends the
# DATA command line counted as the first CRLF, a lone "." on the first line also ends it.
END_OF_DATA = b"\r\n.\r\n"
# A line that starts with a dot: the end of data (group 1 is CRLF) or a dot-stuffed line
# (no group 1: RFC 5321 4.5.2 deletes the first dot of any line that has more after it,
# not only of ".."). One regex search finds both; it runs on the message as it arrives,
# at about 0.4 ms a MiB, where find() for the end and a later scan for stuffing took 1.1.
_DOT_LINE = re.compile(rb"\r\n\.(\r\n)?")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# After bare LFs became CRLF, a lone "." line may be content ("\n.\n" was no end of data):
# its dot stays; every other line's leading dot goes.
_STUFFED_DOT = re.compile(rb"\r\n\.(?!\r\n)")


# Every byte but CR and LF: deleting them leaves a message's line ends in order.
_NOT_LINE_END = bytes(b for b in range(256) if b not in (10, 13))


@dataclass(slots=True)
class Data:
    """A message as the wire read it, and what the reading learnt about it on the way: it
    travels whole to envelope.build_rows, so no hint is threaded through signatures."""
    message: bytes | None       # None: bigger than the limit, read and dropped
    size: int
    bare_lf: bool = False       # the client ended some line with a bare LF
    crlf_only: bool = False     # every CR and every LF in the message is part of a CRLF


class ConnectionClosed(Exception):
    """The client went away."""


class LineTooLong(Exception):
    """A command line passed the limit; the rest of it up to LF was thrown away."""


class Wire:
    """``clock``: the connection's deadlines (deadline.Clock). The socket itself has no
    timeout: gevent would arm a timer for every read, which the bench showed costs more
    than the read. Every wait on the socket is announced to the clock instead, whose
    watchdog ends it when it lasts too long."""

    def __init__(self, sock, clock: Clock):
        self.sock = sock
        self.clock = clock
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.waiting = False         # blocked in recv with every reply sent
        # The socket gevent wraps, read and written directly (see _recv and flush).
        self.raw, self.wait_readable = gevent_adapter.fast_path(sock)

    def use_socket(self, sock) -> None:
        """Go on over ``sock``, the same connection after a TLS handshake. Reads no longer
        wait on readiness first: TLS may hold decrypted data while the socket is empty."""
        self.sock = sock
        self.raw = self.wait_readable = None

    # --- output

    def send(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> bool:
        """Send what is queued; True when there was something."""
        if self.out:
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            # Replies are small and the socket buffer is nearly always free: one plain
            # send() does it. gevent's sendall() costs a getsockopt() per call (the bench
            # profile showed it), so it is only the fallback for a partial send. Either
            # may wait for a client that does not read: the clock cuts that off.
            clock = self.clock
            clock.expires = time.monotonic() + clock.wait    # clock.block(), inline: see Clock
            try:
                try:
                    sent = (self.raw or self.sock).send(data)
                except BlockingIOError:     # the raw socket's buffer is full
                    sent = 0
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            finally:
                clock.expires = None
            return True
        return False

    # --- input

    def _recv(self, deadline: float) -> bytes:
        """The next chunk. ``deadline`` is the whole line's or DATA phase's: a read that
        returns after it raises Expired (a slow drip), and a wait past it, or past the
        clock's wait, is cut off (socket.timeout)."""
        replied = self.flush()
        clock = self.clock
        expires = time.monotonic() + clock.wait          # clock.block(deadline), inline
        clock.expires = expires if expires < deadline else deadline
        self.waiting = True
        try:
            raw = self.raw
            if raw is None:
                chunk = self.sock.recv(RECV_SIZE)
            else:
                if replied:
                    # The client answers our reply, so nothing can be there yet: wait for
                    # it first instead of a recv() that fails with EAGAIN (~3 us each).
                    self.wait_readable()
                while True:
                    try:
                        chunk = raw.recv(RECV_SIZE)
                        break
                    except BlockingIOError:
                        self.wait_readable()
        finally:
            self.waiting = False
            clock.expires = None
        if not chunk:
            raise ConnectionClosed()
        if time.monotonic() > deadline:     # Clock.passed(deadline), inline
            raise Expired()
        return chunk

    def discard_input(self) -> None:
        """Forget what the client sent ahead (STARTTLS: RFC 3207 section 4.2, CVE-2011-0411)."""
        self.buf.clear()

    def read_line(self, limit: int, seconds: float) -> bytes:
        """One line without its line ending, within ``seconds``. A bare LF also ends a
        command line, as in Postfix; a line longer than ``limit`` octets raises LineTooLong
        after its rest has been read and dropped, without keeping it in memory."""
        deadline = time.monotonic() + seconds
        buf = self.buf
        scanned = 0
        while True:
            end = buf.find(b"\n", scanned)
            if end >= 0:
                if end + 1 > limit:
                    del buf[:end + 1]
                    raise LineTooLong()
                line = bytes(buf[:end])
                del buf[:end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(buf) > limit:
                self._skip_line(deadline)
                raise LineTooLong()
            scanned = len(buf)
            buf += self._recv(deadline)

    def _skip_line(self, deadline: float) -> None:
        self.buf.clear()
        while True:
            chunk = self._recv(deadline)
            end = chunk.find(b"\n")
            if end >= 0:
                self.buf += chunk[end + 1:]
                return

    def read_data(self, max_size: int, seconds: float, bare_lf: str = "normalize",
                  room: Callable[[int], int] | None = None) -> Data:
        """Read the message up to <CRLF>.<CRLF> and undo dot-stuffing (RFC 5321 4.5.2).

        Returns the message and its size; the message is None when it grew past ``max_size``: the
        rest is read and dropped so the session stays usable (RFC 1870 6.1: 552 after the
        end of data). Only <CRLF>.<CRLF> ends the message: <LF>.<LF>, <CR>.<CR> and the
        other variants used for SMTP smuggling are content. With ``bare_lf='normalize'``
        (Postfix 3.9 smtpd_forbid_bare_newline = normalize) a bare LF in the content is
        stored as CRLF; otherwise it is kept as sent and ``bare_lf`` says it was there.
        The whole message must arrive within ``seconds`` (raises Expired).
        ``room(n)``, asked as the message passes what it allowed before: how long the
        message may grow now (the byte budget, budget.Reservation.room); 0 drops the rest.
        """
        deadline = time.monotonic() + seconds
        data = bytearray(b"\r\n")
        data += self.buf
        self.buf.clear()
        # Stuffed dots add at most one octet per line; allow a little for them before cutting.
        keep_limit = max_size + max_size // 32 + 1024
        limit = keep_limit if room is None else min(keep_limit, room(len(data)))
        dropped = 0
        scan_from = 0
        stuffed = False
        while True:
            line = _DOT_LINE.search(data, scan_from)
            while line is not None and line.group(1) is None:
                # (At the very end of what has arrived, "\r\n." may yet turn out to be
                # the end of data: the next search starts 4 bytes back and finds it then.)
                stuffed = True
                line = _DOT_LINE.search(data, line.start() + 2)
            if line is not None:
                end = line.start()
                self.buf += data[end + len(END_OF_DATA):]
                if dropped:
                    return Data(None, dropped + end)
                del data[end + 2:]
                return self._unstuff(data, bare_lf, max_size, stuffed)
            if len(data) > limit and room is not None and not dropped and len(data) <= keep_limit:
                limit = min(keep_limit, room(len(data)))
            if len(data) > limit:
                # Too big, or no room: keep only the tail that could start the terminator.
                dropped += len(data) - 4
                del data[:-4]
                limit = 0 if room is not None else keep_limit
            scan_from = max(0, len(data) - 4)
            data += self._recv(deadline)

    def read_chunk(self, size: int, into: bytearray | None, deadline: float) -> None:
        """Read exactly ``size`` octets, a BDAT chunk (RFC 3030 2): no end marker and no
        dot-stuffing, every byte as sent. They are appended to ``into``, or read and
        dropped when it is None (a chunk refused or past the size limit: the session
        stays in step with the client). Nothing past the chunk is kept but what one read
        brought along (for the next command); past ``deadline`` raises Expired."""
        buf = self.buf
        if buf:
            take = min(size, len(buf))
            if into is not None:
                into += buf[:take] if take < len(buf) else buf
            del buf[:take]
            size -= take
        while size:
            chunk = self._recv(deadline)
            if len(chunk) > size:
                buf += chunk[size:]
                chunk = chunk[:size]
            if into is not None:
                into += chunk
            size -= len(chunk)

    @staticmethod
    def _unstuff(data: bytearray, bare_lf: str, max_size: int, stuffed: bool | None = None) -> Data:
        """``data`` is CRLF + content. One copy in the common case (no stuffed dots, no
        bare LF): large messages must not be copied over and over."""
        # Usually every line ends in CRLF and nothing else is CR or LF. One C pass that
        # keeps only the line-end bytes and one compare show it (0.5 ms a MiB, where
        # counting LFs and CRLFs took 1.4 ms); only otherwise are they counted.
        line_ends = data.translate(None, _NOT_LINE_END)
        crlf_only = line_ends == b"\r\n" * (len(line_ends) // 2)
        has_bare_lf = not crlf_only and data.count(b"\n") != data.count(b"\r\n")
        if has_bare_lf and bare_lf == "normalize":
            # "\n.x" has just become "\r\n.x", and "\n.\n" a lone "." line of content.
            data = _STUFFED_DOT.sub(b"\r\n", _BARE_LF.sub(b"\r\n", data))
        else:
            if stuffed is None:
                stuffed = b"\r\n." in data
            if stuffed:
                # Cut before its end, the data has no "\r\n.\r\n": every "\r\n." starts
                # a stuffed line, and one plain replace() unstuffs them all.
                data = data.replace(b"\r\n.", b"\r\n")
        size = len(data) - 2
        if size > max_size:
            return Data(None, size)
        with memoryview(data) as view:
            message = bytes(view[2:])
        return Data(message, size, has_bare_lf, crlf_only)
