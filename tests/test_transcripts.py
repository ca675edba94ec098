"""Protocol cases as data: every ``tests/transcripts/*.txt`` replayed against a real server.

Each transcript is replayed four ways, as gunicorn replays its HTTP corpus: *whole* (every
client byte in one send, then every reply read: full pipelining), *line* (each client line
in its own send, replies read where the transcript expects them), *byte* (one octet per
send) and *chunks* (random-sized sends, seeded from the file name). The replies must match
the transcript every time, and the four runs must give exactly the same replies.

Transcript format, one directive per line:

    # text              a comment; blank lines are ignored too
    #! option: value    server options for this file, e.g. ``#! max-recipients: 3``
                        (one server per distinct option set; all use a SQLite store)
    #! xfail: reason    a known server bug: the test is xfail(strict=True)
    C: text             the client sends text + CRLF (text taken literally, UTF-8)
    C<: text            the client sends raw bytes, NO CRLF added; Python escapes
                        \\r \\n \\t \\x00 \\\\ are decoded (the file is UTF-8)
    S: 250 2.1.0 regex  one expected reply: the code, then optionally the enhanced code
                        (N.N.N, compared exactly), then optionally a regex searched in the
                        text after them. A reply of several lines is written with one
                        ``S: 250-...`` line per continuation line and ``S: 250 ...`` last;
                        a single ``S: 250 ...`` against a multi-line reply matches its
                        last line (and every line must carry the same code).
    S: <closed>         the server closes the connection here (nothing more may follow)
    Q: bytes            the message named by the last "queued as <id>" reply is stored and
                        its raw ``mail`` column contains these bytes (escapes as in C<:)
    Q!: bytes           ... and does not contain these bytes
    Q#: N               exactly N rows carry that queue id (one row per recipient)

In C: and C<: lines, ``{{N*text}}`` stands for text repeated N times (long lines).
The greeting is the first reply, so every transcript starts with ``S: 220 ...``.

After the transcript (unless it ends with <closed>) the harness sends NOOP and expects
the next reply to be ``250 2.0.0 OK``: a surplus reply (e.g. a second 250 for a smuggled
message) would arrive first and fail the test.
"""
from __future__ import annotations

import codecs
import random
import re
import socket
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import GsmtpdProcess, SQLiteStore

HERE = Path(__file__).resolve().parent / "transcripts"
FILES = sorted(HERE.glob("*.txt"))
MODES = ["whole", "line", "byte", "chunks"]
REPEAT = re.compile(r"\{\{(\d+)\*(.*?)\}\}")
EXPECT = re.compile(r"(\d{3})([ -]|\Z)(?:(\d\.\d{1,3}\.\d{1,3})(?: |\Z))?(.*)\Z")
QUEUED = re.compile(r"queued as ([0-9a-f]{32})")
CLOSED = "<closed>"


# --- parsing the corpus


@dataclass
class Expected:
    lines: list[tuple[str, str, str | None, str]]   # (code, sep, enhanced, regex)
    closed: bool = False


@dataclass
class Check:
    kind: str        # "Q", "Q!", "Q#"
    value: bytes | int


@dataclass
class Step:
    """Client bytes, then the replies they must produce and store checks, in file order."""
    sends: list[bytes] = field(default_factory=list)
    expect: list[Expected | Check] = field(default_factory=list)


@dataclass
class Transcript:
    name: str
    options: dict[str, str]
    xfail: str | None
    steps: list[Step]

    @property
    def closes(self) -> bool:
        return any(isinstance(e, Expected) and e.closed for s in self.steps for e in s.expect)


def _expand(text: str) -> str:
    return REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)


def _raw(text: str) -> bytes:
    return codecs.escape_decode(_expand(text).encode("utf-8"))[0]


def parse_transcript(path: Path) -> Transcript:
    options: dict[str, str] = {}
    xfail = None
    steps: list[Step] = [Step()]
    pending: list[tuple[str, str, str | None, str]] = []   # continuation lines of a reply

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name}:{number}"
        if line.startswith("#!"):
            key, _, value = line[2:].partition(":")
            if key.strip() == "xfail":
                xfail = value.strip()
            else:
                options[key.strip()] = value.strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        tag, sep, rest = line.partition(": ")
        if not sep:
            tag, rest = line.rstrip(":"), ""
        if tag in ("C", "C<"):
            assert not pending, f"{where}: reply continued with '-' but not finished"
            if steps[-1].expect:
                steps.append(Step())
            steps[-1].sends.append(_expand(rest).encode("utf-8") + b"\r\n" if tag == "C" else _raw(rest))
        elif tag == "S":
            if rest.strip() == CLOSED:
                assert not pending, where
                steps[-1].expect.append(Expected([], closed=True))
                continue
            match = EXPECT.match(rest)
            assert match, f"{where}: bad S: line {rest!r}"
            code, dash, enhanced, regex = match.groups()
            dash = dash or " "
            pending.append((code, dash, enhanced, regex))
            if dash == " ":
                steps[-1].expect.append(Expected(pending))
                pending = []
        elif tag in ("Q", "Q!"):
            steps[-1].expect.append(Check(tag, _raw(rest)))
        elif tag == "Q#":
            steps[-1].expect.append(Check(tag, int(rest)))
        else:
            raise AssertionError(f"{where}: unknown directive {line!r}")
    assert not pending, f"{path.name}: the last reply is not finished"
    transcript = Transcript(path.stem, options, xfail, [s for s in steps if s.sends or s.expect])
    first = transcript.steps[0]
    assert not first.sends and first.expect and first.expect[0].lines[0][0] == "220", \
        f"{path.name}: must start with the greeting (S: 220 ...)"
    return transcript


# --- the servers: one per distinct option set, shared by the module


class Servers:
    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.running: dict[tuple, GsmtpdProcess] = {}

    def get(self, options: dict[str, str]) -> GsmtpdProcess:
        key = tuple(sorted(options.items()))
        if key not in self.running:
            tmp = self.tmp_path_factory.mktemp("transcripts")
            store = SQLiteStore(tmp / "mail.db")
            self.running[key] = GsmtpdProcess(tmp, store, {k.replace("-", "_"): v for k, v in options.items()})
        return self.running[key]

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    pool = Servers(tmp_path_factory)
    yield pool
    pool.stop()


# --- replaying


class Conversation:
    """A raw socket that reads whole replies, each kept as its exact list of lines."""

    def __init__(self, server: GsmtpdProcess):
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def reply(self) -> list[bytes] | None:
        """One reply as its lines (each with CRLF); None if the server closed first."""
        lines = []
        while True:
            while b"\n" not in self.buf:
                if not self._fill():
                    assert not lines and not self.buf, f"closed in mid-reply: {lines!r} {self.buf!r}"
                    return None
            line, self.buf = self.buf.split(b"\n", 1)
            line += b"\n"
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def expect_closed(self) -> bytes:
        """Whatever arrives before the close (must be nothing)."""
        extra = self.buf
        self.buf = b""
        while self._fill():
            extra += self.buf
            self.buf = b""
        return extra

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _matches(expected: Expected, got: list[bytes]) -> str | None:
    """None when ``got`` fits ``expected``, else why not."""
    texts = []
    for raw in got:
        if not raw.endswith(b"\r\n"):
            return f"reply line without CRLF: {raw!r}"
        texts.append(raw[:-2].decode("utf-8", "replace"))
    want = expected.lines
    if len(want) == 1:
        code = want[0][0]
        if any(t[:3] != code for t in texts):
            return f"expected code {code} on every line"
        pairs = [(want[0], texts[-1])]
    else:
        if len(want) != len(texts):
            return f"expected {len(want)} lines"
        pairs = list(zip(want, texts))
    for (code, sep, enhanced, regex), text in pairs:
        match = EXPECT.match(text)
        if not match or match.group(1) != code or match.group(2) != sep:
            return f"expected {code}{sep!r}"
        if enhanced and match.group(3) != enhanced:
            return f"expected enhanced code {enhanced}"
        if regex and not re.search(regex, match.group(4)):
            return f"text does not match /{regex}/"
    return None


def _chunks(data: bytes, seed: str) -> list[bytes]:
    rng = random.Random(zlib.crc32(seed.encode()))
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 1, 2, 3, 5, 8, 13, 40, 100, 700])
        out.append(data[i:i + n])
        i += n
    return out


def replay(server: GsmtpdProcess, transcript: Transcript, mode: str) -> list[str]:
    """Run one transcript; returns every reply (queue ids blanked) for comparing modes."""
    conv = Conversation(server)
    seen: list[str] = []
    queue_id: str | None = None
    try:
        def read_replies(step: Step) -> None:
            nonlocal queue_id
            for expected in step.expect:
                if isinstance(expected, Check):
                    run_check(server, expected, queue_id, mode)
                    continue
                if expected.closed:
                    extra = conv.expect_closed()
                    assert not extra, f"{mode}: expected the close, got {extra!r} (after {seen})"
                    seen.append(CLOSED)
                    continue
                got = conv.reply()
                assert got is not None, f"{mode}: server closed; expected {expected.lines} (after {seen})"
                text = b"".join(got).decode("utf-8", "replace")
                problem = _matches(expected, got)
                assert problem is None, f"{mode}: {problem}: got {text!r}, want {expected.lines} (after {seen})"
                found = QUEUED.search(text)
                if found:
                    queue_id = found.group(1)
                seen.append(QUEUED.sub("queued as <id>", text))

        if mode == "whole":
            conv.send(b"".join(b"".join(s.sends) for s in transcript.steps))
            for step in transcript.steps:
                read_replies(step)
        elif mode in ("line", "byte"):
            for step in transcript.steps:
                for data in step.sends:
                    if mode == "line":
                        conv.send(data)
                    else:
                        for i in range(len(data)):
                            conv.send(data[i:i + 1])
                read_replies(step)
        else:
            # Random chunks across step boundaries; read each step's replies once all its
            # bytes are out (later bytes may already be in flight: that is pipelining).
            stream = b"".join(b"".join(s.sends) for s in transcript.steps)
            ends, total = [], 0
            for step in transcript.steps:
                total += sum(len(d) for d in step.sends)
                ends.append(total)
            sent, next_step = 0, 0
            for chunk in _chunks(stream, transcript.name):
                conv.send(chunk)
                sent += len(chunk)
                while next_step < len(ends) and ends[next_step] <= sent:
                    read_replies(transcript.steps[next_step])
                    next_step += 1
            while next_step < len(ends):
                read_replies(transcript.steps[next_step])
                next_step += 1
        if not transcript.closes:
            conv.send(b"NOOP\r\n")
            got = conv.reply()
            assert got == [b"250 2.0.0 OK\r\n"], f"{mode}: surplus reply before the final NOOP's: {got!r}"
    finally:
        conv.close()
    return seen


def run_check(server: GsmtpdProcess, check: Check, queue_id: str | None, mode: str) -> None:
    assert queue_id, f"{mode}: {check.kind}: no 'queued as' reply before this check"
    rows = [r for r in server.store.rows() if queue_id.encode() in bytes(r["mail"])]
    if check.kind == "Q#":
        assert len(rows) == check.value, f"{mode}: {len(rows)} rows for {queue_id}, want {check.value}"
        return
    assert rows, f"{mode}: no stored row for {queue_id}"
    for row in rows:
        mail = bytes(row["mail"])
        if check.kind == "Q":
            assert check.value in mail, f"{mode}: stored mail lacks {check.value!r}: {mail!r}"
        else:
            assert check.value not in mail, f"{mode}: stored mail has {check.value!r}: {mail!r}"


# --- the tests

TRANSCRIPTS = [parse_transcript(p) for p in FILES]
_reference: dict[str, list[str]] = {}


def _params():
    for t in TRANSCRIPTS:
        marks = [pytest.mark.xfail(strict=True, reason=t.xfail)] if t.xfail else []
        for mode in MODES:
            yield pytest.param(t, mode, id=f"{t.name}-{mode}", marks=marks)


@pytest.mark.parametrize("transcript, mode", list(_params()))
def test_transcript(servers, transcript: Transcript, mode: str):
    server = servers.get(transcript.options)
    got = replay(server, transcript, mode)
    if mode == "whole":
        _reference[transcript.name] = got
        return
    if transcript.name not in _reference:
        _reference[transcript.name] = replay(server, transcript, "whole")
    assert got == _reference[transcript.name], f"{mode} and whole replay differ"


def test_corpus_is_not_empty():
    assert len(TRANSCRIPTS) >= 30, [t.name for t in TRANSCRIPTS]
