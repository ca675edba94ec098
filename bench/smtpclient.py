"""A small SMTP client for what smtp-source cannot measure.

- ``LatencyProbe``: one message at a time, a new connection each (like W1), timing the
  interval from sending the final "." line to reading the reply. It runs beside a
  smtp-source load, so it sees the queueing that load causes.
- ``open_idle``: many connections that read the greeting and then sit, to measure the
  server's memory per connection.

Plain blocking sockets with timeouts; everything goes to the address it is given
(127.0.0.1 in run.py) and every wait is bounded.
"""
from __future__ import annotations

import socket
import threading
import time


class SMTPFailure(Exception):
    pass


def make_message(size: int, subject: str = "gsmtpd bench probe") -> bytes:
    """Headers and about ``size`` bytes of body in 78-character lines, CRLF, no dot lines."""
    head = (f"From: <probe@client.test>\r\nTo: <probe@mx.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@client.test>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, size // len(line))


class Reader:
    def __init__(self, sock: socket.socket):
        self.file = sock.makefile("rb")

    def reply(self) -> tuple[int, bytes]:
        """One (possibly multi-line) reply: its code and its last line."""
        while True:
            line = self.file.readline(1024)
            if not line:
                raise SMTPFailure("connection closed")
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), line.rstrip()


def _expect(reader: Reader, wanted: int) -> None:
    code, line = reader.reply()
    if code != wanted:
        raise SMTPFailure(line.decode("ascii", "replace"))


def send_one(host: str, port: int, message: bytes, timeout: float = 30.0) -> tuple[float, int]:
    """Deliver one message on a new connection; returns (seconds from final dot to reply, code)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        # Without this, Nagle holds the short final "." until the body is ACKed, and the
        # peer's delayed ACK adds ~40 ms to every sample.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        _expect(reader, 220)
        for command, wanted in ((b"EHLO probe.client.test", 250), (b"MAIL FROM:<probe@client.test>", 250),
                                (b"RCPT TO:<probe@mx.test>", 250), (b"DATA", 354)):
            sock.sendall(command + b"\r\n")
            _expect(reader, wanted)
        sock.sendall(message)
        started = time.perf_counter()
        sock.sendall(b".\r\n")
        code, _ = reader.reply()
        elapsed = time.perf_counter() - started
        try:
            sock.sendall(b"QUIT\r\n")
            reader.reply()
        except (OSError, SMTPFailure):
            pass
        return elapsed, code


class LatencyProbe:
    """Sends messages one after another until stopped; keeps (finish time, latency, code).

    A message starts at most every ``interval`` seconds, so the probe adds the same small
    load (40 messages/s by default) to a fast server as to a slow one and does not eat
    the CPU the measured load needs.
    """

    def __init__(self, host: str, port: int, size: int = 4096, timeout: float = 30.0,
                 interval: float = 0.025):
        self.host, self.port, self.timeout, self.interval = host, port, timeout, interval
        self.message = make_message(size)
        self.samples: list[tuple[float, float, int]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="latency-probe", daemon=True)

    def start(self) -> "LatencyProbe":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(self.timeout + 5)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            next_start = time.monotonic() + self.interval
            try:
                latency, code = send_one(self.host, self.port, self.message, self.timeout)
            except (OSError, SMTPFailure) as exc:
                self.errors.append(str(exc))
                self.stopping.wait(0.05)
                continue
            self.samples.append((time.monotonic(), latency, code))
            self.stopping.wait(max(0.0, next_start - time.monotonic()))

    @property
    def acked(self) -> int:
        return sum(1 for _, _, code in self.samples if code == 250)

    def summary(self, until: float | None = None) -> dict:
        """Percentiles in ms of the 250 replies received before ``until`` (the load's end)."""
        times = sorted(lat for t, lat, code in self.samples
                       if code == 250 and (until is None or t <= until))
        return {
            "samples": len(times),
            "p50_ms": _ms(percentile(times, 50)),
            "p90_ms": _ms(percentile(times, 90)),
            "p99_ms": _ms(percentile(times, 99)),
            "max_ms": _ms(times[-1] if times else None),
            "not_250": sum(1 for _, _, code in self.samples if code != 250),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    rank = max(1, -(-len(values) * pct // 100))   # ceil
    return values[int(rank) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def open_idle(host: str, port: int, count: int, deadline: float,
              timeout: float = 10.0) -> tuple[list[socket.socket], list[str]]:
    """Open up to ``count`` connections, each reading its greeting; stop at ``deadline``
    (monotonic). Returns the open sockets and the problems met (refusals, timeouts)."""
    socks: list[socket.socket] = []
    problems: list[str] = []
    for _ in range(count):
        if time.monotonic() > deadline:
            problems.append(f"gave up after {len(socks)} connections: time limit")
            break
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            problems.append(f"connect: {exc}")
            break
        try:
            greeting = sock.recv(512)
        except OSError as exc:
            problems.append(f"greeting: {exc}")
            sock.close()
            break
        if not greeting.startswith(b"220"):
            problems.append(f"greeting: {greeting[:80]!r}")
            sock.close()
            break
        socks.append(sock)
    return socks, problems
