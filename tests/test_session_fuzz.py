"""Random SMTP dialogues against a real server over a real socket (hypothesis state machine).

Commands are drawn from valid ones, mangled ones, long lines and random bytes, sent one
at a time or pipelined. The model is small and exact: every command line gets exactly one
well-formed reply (``NNN`` 2xx-5xx, then ``-`` or space, CRLF); every 5xx counts as an
error and the 10th error's reply is followed by 421 and the close; 221 after QUIT is
followed by the close; and the server closes at no other time. A 354 is answered with a
random message body and its end, which gets one reply. After the run a fresh connection
still gets its 220, and the server has logged no internal error.
"""
from __future__ import annotations

import re
import socket

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from conftest import GsmtpdProcess, SQLiteStore

MAX_ERRORS = 10          # the server's default --max-errors
MAX_SIZE = 2000
REPLY_LINE = re.compile(rb"[2-5]\d\d([ -])[^\r\n]*\r\n\Z")
END = b"\r\n.\r\n"
# A BDAT line the server takes (RFC 3030 2) is followed by exactly that many octets.
BDAT = re.compile(rb" *BDAT +([0-9]+)(?: +LAST)? *\Z", re.IGNORECASE)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    proc = GsmtpdProcess(tmp, SQLiteStore(tmp / "mail.db"), {"max_size": MAX_SIZE, "max_recipients": 5})
    yield proc
    proc.stop()


# --- what the client sends

VALID = [
    "EHLO client.example", "HELO client.example", "EHLO", "HELO [192.0.2.1]",
    "MAIL FROM:<alice@example.org>", "MAIL FROM:<>", "MAIL FROM:<alice@example.org> SIZE=100",
    "MAIL FROM:<alice@example.org> SIZE=999999", "MAIL FROM:<alice@example.org> BODY=8BITMIME",
    "MAIL FROM:<jörg@bücher.example> SMTPUTF8", "MAIL FROM: <alice@example.org>",
    "RCPT TO:<bob@test.org>", "RCPT TO:<carol@a.wild.test>", "RCPT TO:<eve@example.com>",
    "RCPT TO:<postmaster>", "RCPT TO:<müller@test.org>", 'RCPT TO:<"john doe"@test.org>',
    "RCPT TO:<@relay.example:bob@test.org>",
    "DATA", "DATA", "RSET", "NOOP", "NOOP hello", "VRFY bob", "HELP", "QUIT",
]
VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "HELP", "QUIT", "BDAT", "STARTTLS"]


def _line(data: bytes) -> bytes:
    """A command line never holds LF (that would be two lines); anything else goes."""
    return data.replace(b"\n", b"")


valid = st.sampled_from(VALID).map(str.encode)
mangled_case = st.sampled_from(VALID).flatmap(
    lambda c: st.lists(st.booleans(), min_size=len(c), max_size=len(c)).map(
        lambda flips: "".join(ch.swapcase() if f else ch for ch, f in zip(c, flips)).encode()))
verb_and_junk = st.builds(lambda v, arg: _line(f"{v} {arg}".encode("utf-8", "surrogatepass")),
                          st.sampled_from(VERBS), st.text(max_size=40))
random_bytes = st.binary(max_size=80).map(_line)
random_text = st.text(max_size=80).map(lambda t: _line(t.encode("utf-8", "surrogatepass")))
long_line = st.builds(lambda v, n: _line(v.encode() + b" " + b"x" * n),
                      st.sampled_from(["NOOP", "MAIL FROM:<a@b.example>", "RCPT TO:<bob@test.org>", "XXXX"]),
                      st.integers(480, 800))
command = st.one_of(valid, valid, valid, valid, valid, valid, mangled_case, verb_and_junk, random_bytes,
                    random_text, long_line)
ending = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


def _ends_only_at_the_end(body: bytes) -> bool:
    stream = b"\r\n" + body + END
    return stream.find(END) == len(stream) - len(END)


body = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"Subject: x", b"", b".", b"..", b"\n.\n", b"\r.\r", b"\n.\r\n", b"x" * 700,
                              "Grüße".encode(), b"\x00", b"MAIL FROM:<evil@example.org>"]),
             max_size=12).map(lambda ls: b"\r\n".join(ls) + b"\r\n"),
).filter(_ends_only_at_the_end)


# --- the model


class Dialogue(RuleBasedStateMachine):
    server: GsmtpdProcess = None   # set by the test

    def __init__(self):
        super().__init__()
        self.sock: socket.socket | None = None
        self.buf = b""
        self.errors = 0
        self.connections = 0

    # -- the socket

    def connect(self) -> None:
        self.sock = socket.create_connection((self.server.host, self.server.port), timeout=3)
        self.buf = b""
        self.errors = 0
        self.connections += 1
        greeting = self.read_reply()
        assert greeting is not None and greeting.startswith(b"220 "), greeting

    def read_reply(self) -> bytes | None:
        """One whole reply, checked line by line; None when the server closed instead."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                assert b"\n" not in self.buf, f"reply line without CRLF: {self.buf!r}"
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    assert not lines and not self.buf, f"closed in mid-reply: {lines!r} {self.buf!r}"
                    return None
                self.buf += chunk
            end = self.buf.index(b"\r\n") + 2
            line, self.buf = self.buf[:end], self.buf[end:]
            assert REPLY_LINE.match(line), f"malformed reply line {line!r}"
            assert len(line) <= 512, line   # RFC 5321 4.5.3.1.5
            assert not lines or line[:3] == lines[0][:3], f"code changes within a reply: {lines!r} {line!r}"
            lines.append(line)
            if line[3:4] == b" ":
                return b"".join(lines)

    def expect_close(self) -> None:
        rest = self.buf
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            rest += chunk
        assert not rest, f"data after the final reply: {rest!r}"
        self.sock.close()
        self.sock = None

    def answer(self, what: bytes) -> bool:
        """Read the reply to one command line (or to the end of data) and follow the
        model. False when the session is over (221, or 421 after too many errors)."""
        reply = self.read_reply()
        assert reply is not None, f"server closed instead of answering {what[:80]!r}"
        if reply.startswith(b"221 "):
            self.expect_close()
            return False
        if reply.startswith(b"5") and not self.count_error():
            return False
        if reply.startswith(b"354 "):
            return self.send_data(self.data_body)
        assert not reply.startswith(b"421"), f"421 without cause after {what[:80]!r}: {reply!r}"
        return True

    def count_error(self) -> bool:
        """A 5xx counts towards the limit; at the limit the server says 421 and closes.
        False when the session has ended."""
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            final = self.read_reply()
            assert final is not None and final.startswith(b"421 4.7.0 "), final
            self.expect_close()
            return False
        return True

    def send_data(self, data: bytes) -> bool:
        self.sock.sendall(data + END)
        reply = self.read_reply()
        assert reply is not None, "server closed after the data"
        assert re.match(rb"(250 2\.0\.0 OK: queued as [0-9a-f]{32}|552 5\.3\.4 |451 |554 )", reply), reply
        if reply.startswith(b"5") and not self.count_error():
            return False
        return True

    # -- the rules

    def send_line(self, line: bytes, end: bytes) -> None:
        if self.sock is None:
            self.connect()
        self.sock.sendall(line + end)
        if self.answer(line):
            assert not self.buf, f"surplus reply after {line[:80]!r}: {self.buf!r}"

    @rule(line=command, end=ending, data=body)
    def one_command(self, line, end, data):
        if BDAT.match(line):
            return      # its chunk would be the next command: bdat_chunk sends those
        self.data_body = data
        self.send_line(line, end)

    @rule(size=st.integers(0, 40), last=st.booleans(), data=st.binary(max_size=40))
    def bdat_chunk(self, size, last, data):
        # The chunk is any octets, refused or not: the next command is read after it.
        if self.sock is None:
            self.connect()
        chunk = (data * (size // max(len(data), 1) + 1))[:size] if data else b"x" * size
        self.sock.sendall(b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + chunk)
        if self.answer(b"BDAT"):
            assert not self.buf, f"surplus reply after BDAT: {self.buf!r}"

    @rule(rcpt=st.sampled_from(["bob@test.org", "x@a.wild.test", "postmaster", "eve@example.com"]), data=body)
    def transaction(self, rcpt, data):
        # Random commands rarely get as far as DATA on their own: a whole transaction.
        self.data_body = data
        for line in ["EHLO client.example", "MAIL FROM:<alice@example.org>", f"RCPT TO:<{rcpt}>", "DATA"]:
            self.send_line(line.encode(), b"\r\n")

    @rule(lines=st.lists(command, min_size=2, max_size=8), end=ending)
    def pipelined(self, lines, end):
        # DATA would turn the lines after it into message text: keep it out of a group.
        lines = [ln for ln in lines if ln.split(b" ", 1)[0].upper() != b"DATA" and not BDAT.match(ln)]
        if self.sock is None:
            self.connect()
        self.sock.sendall(b"".join(ln + end for ln in lines))
        for ln in lines:
            if not self.answer(ln):
                return
        assert not self.buf, f"surplus reply after a group: {self.buf!r}"

    @precondition(lambda self: self.sock is not None)
    @rule()
    def still_answers(self):
        self.sock.sendall(b"NOOP\r\n")
        assert self.read_reply() == b"250 2.0.0 OK\r\n"
        assert not self.buf

    def teardown(self):
        if self.sock is not None:
            self.sock.close()


def test_random_dialogues(server):
    Dialogue.server = server
    run_state_machine_as_test(Dialogue, settings=settings(
        max_examples=100, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow]))
    # The server survived: it is running, a new client is greeted, no session hit a bug.
    assert server.proc.poll() is None
    client = server.raw()
    try:
        assert client.reply() == "220 mx.test ESMTP gsmtpd"
        assert client.command("QUIT").startswith("221 ")
    finally:
        client.close()
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
