"""A load client that remembers every reply, and a checker that holds it against the database.

``Load`` sends messages with unique subjects ("<run id> <n>") at a steady rate from a pool of
sender greenlets, one message per connection by default, and records for each one what the
server answered to the final "." (code, text, queue id) and when. ``check()`` then reads the
rows of that run from MySQL and reports

    sent / acked / stored / lost / duplicated

- sent: messages whose final "." went out (only those can have been stored)
- acked: answered "250 ... queued as <id>"
- stored: sent messages that have rows
- lost: acked, but their rows are missing (or the first row's hash is not the queue id)
- duplicated: more rows than recipients
- stored_refused: rows for a message the server refused (4xx/5xx): the sender will retry, so
  that is a duplicate in the making, and a broken promise of the reply
- stored_dropped: rows for a message whose connection dropped before a reply: allowed (the
  RFC 5321 6.1 duplicate window), counted so it is visible
- stored_in_doubt: rows for a refused message whose COMMIT the server logged as "outcome
  unknown" (the database went away before it could be asked): the same window, allowed

The load runs gevent in its own thread (its own hub, gevent sockets used explicitly, nothing
monkey-patched), so the test's main thread stays free to kill processes and stop databases.
Everything goes to the address it is given (127.0.0.1 in the tests), every wait is bounded,
and a load stops by itself after ``duration`` seconds or ``count`` messages.
"""
from __future__ import annotations

import itertools
import os
import re
import resource
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import gevent
import gevent.socket as gsocket

CRLF = b"\r\n"


def raise_nofile(wanted: int = 8192) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (bounded by the hard
    limit); children started afterwards (the server) inherit it. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


@dataclass(slots=True)
class Attempt:
    n: int
    subject: str
    rcpts: int
    started: float = 0.0                 # monotonic: connection started (or MAIL, on a reused one)
    dot_at: float | None = None          # monotonic: the final "." was sent
    ended: float | None = None           # monotonic: reply read, or the failure
    code: int | None = None              # reply to the final "." (None: none came)
    reply: str = ""
    queue_id: str | None = None
    stage: str = "connect"               # how far it got: connect, greeting, ehlo, mail, rcpt, data, dot, done
    error: str = ""

    @property
    def sent(self) -> bool:
        return self.dot_at is not None

    @property
    def acked(self) -> bool:
        return self.code == 250 and self.queue_id is not None


class SMTPError(Exception):
    def __init__(self, stage: str, line: str):
        super().__init__(f"{stage}: {line}")
        self.stage = stage
        self.line = line


class Conn:
    """One SMTP client connection over a gevent socket, every read bounded by ``timeout``."""

    def __init__(self, address: tuple[str, int], timeout: float, source: str | None = None):
        self.sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        try:
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self, stage: str) -> tuple[int, str]:
        """One (multi-line) reply: its code and its last line."""
        while True:
            while CRLF not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise SMTPError(stage, "connection closed")
                self.buf += chunk
                if len(self.buf) > 1 << 16:
                    raise SMTPError(stage, "reply line too long")
            line, self.buf = self.buf.split(CRLF, 1)
            if len(line) < 4 or line[3:4] != b"-":
                text = line.decode("utf-8", "replace")
                try:
                    return int(line[:3]), text
                except ValueError:
                    raise SMTPError(stage, "malformed reply " + text[:80]) from None

    def expect(self, stage: str, wanted: int, command: bytes | None = None) -> str:
        if command is not None:
            self.sock.sendall(command + CRLF)
        code, text = self.reply(stage)
        if code != wanted:
            raise SMTPError(stage, text)
        return text

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def build_message(subject: str, body: bytes) -> bytes:
    head = (f"From: Load <load@client.test>\r\nTo: <sink@test.org>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@client.test>\r\n\r\n").encode()
    return head + body


def filler(size: int) -> bytes:
    """About ``size`` bytes of body: 78-character CRLF lines, no line starts with a dot."""
    line = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"ABCD" + CRLF
    return line * max(1, size // len(line))


class Load:
    """Steady load: message n starts at ``t0 + n / rate`` (or at once, when behind), at most
    ``concurrency`` at a time. ``target`` may be changed while it runs (a restarted server
    listens on a new port)."""

    def __init__(self, target: tuple[str, int], *, rate: float = 200.0, concurrency: int = 30,
                 duration: float = 10.0, count: int | None = None, size: int = 2000,
                 rcpts: int = 1, per_connection: int = 1, timeout: float = 30.0,
                 body: bytes | None = None, sources: list[str] | None = None, run_id: str | None = None):
        self.target = target
        self.rate = rate
        self.concurrency = concurrency
        self.duration = duration
        self.count = count
        self.rcpts = rcpts
        self.per_connection = max(1, per_connection)
        self.timeout = timeout
        self.body = body if body is not None else filler(size)
        self.sources = sources or [None]
        self.run_id = run_id or "rl-" + uuid.uuid4().hex[:10]
        self.attempts: list[Attempt] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.started_at = 0.0
        self.error: BaseException | None = None

    # --- control (from the test's thread)

    def start(self) -> "Load":
        self.thread = threading.Thread(target=self._main, name=f"load-{self.run_id}", daemon=True)
        self.thread.start()
        while not self.started_at:
            time.sleep(0.005)
        return self

    def stop(self, timeout: float | None = None) -> list[Attempt]:
        """Stop starting messages, wait for those under way (bounded by the socket timeout)."""
        self.stopping.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> list[Attempt]:
        if self.thread is not None:
            self.thread.join(timeout if timeout is not None else self.timeout * 3 + 10)
            if self.thread.is_alive():
                raise RuntimeError("load client did not stop")
        if self.error is not None:
            raise self.error
        return self.attempts

    def run(self) -> list[Attempt]:
        """Start, and wait until ``duration``/``count`` is reached."""
        return self.start().wait(self.duration + self.timeout * 3 + 10)

    def acked_since(self, moment: float) -> int:
        return sum(1 for a in list(self.attempts) if a.acked and a.ended and a.ended >= moment)

    def first_ack_after(self, moment: float) -> float | None:
        times = [a.ended for a in list(self.attempts) if a.acked and a.dot_at and a.dot_at >= moment]
        return min(times) if times else None

    # --- the load (in its own thread, on its own gevent hub)

    def _main(self) -> None:
        try:
            self.started_at = time.monotonic()
            self.deadline = self.started_at + self.duration
            self.numbers = itertools.count()
            senders = [gevent.spawn(self._sender, index) for index in range(self.concurrency)]
            gevent.joinall(senders)
            for sender in senders:
                if sender.exception is not None:
                    raise sender.exception
        except BaseException as exc:  # handed to the test's thread in wait()
            self.error = exc
            self.started_at = self.started_at or time.monotonic()
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    def _next(self) -> int | None:
        if self.stopping.is_set():
            return None
        n = next(self.numbers)
        if self.count is not None and n >= self.count:
            return None
        due = self.started_at + n / self.rate if self.rate else 0.0
        if due >= self.deadline and self.count is None:
            return None
        delay = due - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        if self.stopping.is_set():
            return None
        return n

    def _sender(self, index: int) -> None:
        source = self.sources[index % len(self.sources)]
        conn: Conn | None = None
        sent_on_conn = 0
        while True:
            n = self._next()
            if n is None:
                break
            attempt = Attempt(n, f"{self.run_id} {n}", self.rcpts, started=time.monotonic())
            self.attempts.append(attempt)
            try:
                if conn is None:
                    conn = Conn(self.target, self.timeout, source)
                    attempt.stage = "greeting"
                    conn.expect("greeting", 220)
                    attempt.stage = "ehlo"
                    conn.expect("ehlo", 250, b"EHLO load.client.test")
                    sent_on_conn = 0
                self._transaction(conn, attempt)
                sent_on_conn += 1
                if attempt.code != 250 or sent_on_conn >= self.per_connection:
                    self._quit(conn)
                    conn = None
            except (OSError, SMTPError, gevent.Timeout) as exc:
                attempt.ended = time.monotonic()
                attempt.error = f"{attempt.stage}: {type(exc).__name__}: {exc}"[:200]
                if conn is not None:
                    conn.close()
                    conn = None
                if attempt.stage in ("connect", "greeting"):
                    gevent.sleep(0.05)   # a server that is not there: do not spin
        if conn is not None:
            self._quit(conn)

    def _transaction(self, conn: Conn, attempt: Attempt) -> None:
        attempt.stage = "mail"
        conn.expect("mail", 250, b"MAIL FROM:<load@client.test> SIZE=%d" % (len(self.body) + 200))
        attempt.stage = "rcpt"
        for r in range(attempt.rcpts):
            conn.expect("rcpt", 250, b"RCPT TO:<sink%d@test.org>" % r)
        attempt.stage = "data"
        conn.expect("data", 354, b"DATA")
        head = build_message(attempt.subject, b"")
        conn.sock.sendall(head)
        conn.sock.sendall(self.body)
        attempt.dot_at = time.monotonic()
        attempt.stage = "dot"
        conn.sock.sendall(b".\r\n")
        code, text = conn.reply("dot")
        attempt.ended = time.monotonic()
        attempt.code, attempt.reply = code, text
        if code == 250 and "queued as " in text:
            attempt.queue_id = text.rsplit("queued as ", 1)[1].strip()
        attempt.stage = "done"

    @staticmethod
    def _quit(conn: Conn) -> None:
        try:
            conn.sock.sendall(b"QUIT\r\n")
            conn.reply("quit")
        except (OSError, SMTPError):
            pass
        conn.close()


# --- the check


@dataclass
class Report:
    name: str = ""
    attempted: int = 0
    sent: int = 0
    acked: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    stored_refused: int = 0
    stored_in_doubt: int = 0
    stored_dropped: int = 0
    unknown_rows: int = 0
    refused: Counter = field(default_factory=Counter)      # "451 4.3.0" -> count (replies to ".")
    dropped: int = 0                                       # "." sent, no reply
    not_sent: Counter = field(default_factory=Counter)     # stage -> count (failed before ".")
    p50: float | None = None       # seconds from "." to 250
    p99: float | None = None
    p99_total: float | None = None  # seconds from connecting to 250
    p50_total: float | None = None
    max_reply_wait: float | None = None   # longest wait from "." to any reply or drop
    lost_ids: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        def ms(value):
            return "-" if value is None else f"{value * 1000:.0f}ms"
        refused = ",".join(f"{k}x{v}" for k, v in self.refused.most_common(4)) or "-"
        text = (f"{self.name}: sent={self.sent} acked={self.acked} stored={self.stored} lost={self.lost} "
                f"duplicated={self.duplicated} stored_refused={self.stored_refused} "
                f"stored_in_doubt={self.stored_in_doubt} "
                f"stored_dropped={self.stored_dropped} dropped={self.dropped} refused={refused} "
                f"p50={ms(self.p50)} p99={ms(self.p99)} p99_total={ms(self.p99_total)} "
                f"max_wait={ms(self.max_reply_wait)}")
        if self.not_sent:
            text += " not_sent=" + ",".join(f"{k}x{v}" for k, v in self.not_sent.most_common())
        for key, value in self.extra.items():
            text += f" {key}={value}"
        return text

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} acknowledged messages have no row: {self.lost_ids[:5]}")
        if self.duplicated:
            found.append(f"{self.duplicated} messages stored more than once")
        if self.stored_refused:
            found.append(f"{self.stored_refused} messages stored although the server refused them")
        if self.unknown_rows:
            found.append(f"{self.unknown_rows} rows that no attempt of this run sent")
        return found


def rows_of_run(connect, run_id: str) -> dict[str, list[tuple[str, str]]]:
    """subject -> [(hash, recipient)] for every row of one run, in insertion order."""
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT subject, hash, recipient FROM new_mail WHERE subject LIKE %s ORDER BY mail_id",
                        (run_id + " %",))
            found: dict[str, list[tuple[str, str]]] = {}
            for subject, hash_, recipient in cur.fetchall():
                found.setdefault(subject, []).append((hash_, recipient))
            return found
    finally:
        conn.close()


def in_doubt(server_log: str) -> set[str]:
    """Queue ids of messages whose COMMIT the server could not confirm (it answered 451)."""
    return {queue_id for listed in re.findall(r"in_doubt=([0-9a-f,]+)", server_log)
            for queue_id in listed.split(",")}


def check(attempts: list[Attempt], connect, run_id: str, name: str = "",
          doubtful: set[str] = frozenset()) -> Report:
    """Hold the replies against the rows. ``connect()`` gives a PyMySQL connection to the
    store; ``doubtful`` are queue ids the server logged as in doubt (``in_doubt()``)."""
    rows = rows_of_run(connect, run_id)
    report = Report(name=name, attempted=len(attempts))
    subjects = set()
    waits = []
    for attempt in attempts:
        subjects.add(attempt.subject)
        found = rows.get(attempt.subject, [])
        if not attempt.sent:
            report.not_sent[attempt.stage] += 1
            if found:
                report.unknown_rows += len(found)   # never sent, yet stored: impossible
            continue
        report.sent += 1
        if found:
            report.stored += 1
        if len(found) > attempt.rcpts:
            report.duplicated += 1
        if attempt.ended is not None:
            waits.append(attempt.ended - attempt.dot_at)
        if attempt.acked:
            report.acked += 1
            if len(found) < attempt.rcpts or found[0][0] != attempt.queue_id:
                report.lost += 1
                report.lost_ids.append(attempt.queue_id)
        elif attempt.code is not None:
            report.refused[attempt.reply[:9]] += 1
            if found and found[0][0] in doubtful:
                report.stored_in_doubt += 1
            elif found:
                report.stored_refused += 1
        else:
            report.dropped += 1
            if found:
                report.stored_dropped += 1
    report.unknown_rows += sum(len(v) for k, v in rows.items() if k not in subjects)
    acked = [a for a in attempts if a.acked]
    to_reply = [a.ended - a.dot_at for a in acked]
    total = [a.ended - a.started for a in acked]
    report.p50, report.p99 = percentile(to_reply, 0.5), percentile(to_reply, 0.99)
    report.p50_total, report.p99_total = percentile(total, 0.5), percentile(total, 0.99)
    report.max_reply_wait = max(waits) if waits else None
    return report


def rate(attempts: list[Attempt]) -> float:
    acked = [a.ended for a in attempts if a.acked]
    if len(acked) < 2:
        return 0.0
    return (len(acked) - 1) / max(1e-6, max(acked) - min(acked))


# --- memory of the server, from /proc


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def process_tree(root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(_children(pid))
    return found


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssWatch:
    """Samples the RSS of a process and its descendants every ``interval`` seconds in a
    thread; ``peak_mb`` is the largest total seen, ``peak_one_mb`` the largest single process."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.peak_one_kb = 0
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RssWatch":
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.is_set():
            sizes = [rss_kb(pid) for pid in process_tree(self.pid)]
            total = sum(sizes)
            self.samples.append((time.monotonic(), total))
            self.peak_kb = max(self.peak_kb, total)
            self.peak_one_kb = max([self.peak_one_kb, *sizes])
            self.stopping.wait(self.interval)

    def stop(self) -> "RssWatch":
        self.stopping.set()
        self.thread.join(5)
        return self

    def now_mb(self) -> float:
        return sum(rss_kb(pid) for pid in process_tree(self.pid)) / 1024

    def peak_between(self, start: float, end: float) -> float:
        values = [kb for t, kb in self.samples if start <= t <= end]
        return max(values) / 1024 if values else 0.0

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    @property
    def peak_one_mb(self) -> float:
        return self.peak_one_kb / 1024


# --- hostile clients


@dataclass(slots=True)
class Drip:
    index: int
    mode: str                  # "command": drips a command line; "data": drips the message body
    source: str
    opened: float = 0.0
    connected: bool = False
    refused: str = ""          # a 421 at connect (limits)
    ended: float | None = None
    last_reply: str = ""
    error: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.opened


class SlowDrip:
    """``count`` connections that send one byte every ``interval`` seconds and never finish a
    line (mode "command") or a message (mode "data"); the server must cut each off at its
    deadline (--timeout for a command line, --data-timeout for DATA). Connections are spread
    over ``sources`` (127.0.0.x) because of the per-address limit; every one ends by itself
    after ``give_up`` seconds."""

    def __init__(self, target: tuple[str, int], count: int = 1000, interval: float = 1.0,
                 sources: list[str] | None = None, give_up: float = 60.0, open_rate: float = 500.0):
        self.target = target
        self.count = count
        self.interval = interval
        self.sources = sources or ["127.0.0.1"]
        self.give_up = give_up
        self.open_rate = open_rate
        self.drips = [Drip(i, "command" if i % 2 == 0 else "data", self.sources[i % len(self.sources)])
                      for i in range(count)]
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.all_open = threading.Event()

    def start(self) -> "SlowDrip":
        self.thread = threading.Thread(target=self._main, name="slowdrip", daemon=True)
        self.thread.start()
        return self

    def wait(self, timeout: float | None = None) -> list[Drip]:
        self.thread.join(timeout if timeout is not None else self.give_up + 30)
        if self.thread.is_alive():
            raise RuntimeError("slow-drip clients did not stop")
        if self.error is not None:
            raise self.error
        return self.drips

    @property
    def open_now(self) -> int:
        return sum(1 for d in self.drips if d.connected and d.ended is None)

    def wait_greeted(self, timeout: float) -> bool:
        """Until every connection has had its greeting (or a refusal, or an error): the
        slow clients are all in place. False if that takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_open.is_set() and all(d.connected or d.refused or d.error or d.ended for d in self.drips):
                return True
            time.sleep(0.05)
        return False

    def _main(self) -> None:
        try:
            started = time.monotonic()
            greenlets = []
            for drip in self.drips:
                due = started + drip.index / self.open_rate
                delay = due - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)
                greenlets.append(gevent.spawn(self._one, drip))
            self.all_open.set()
            gevent.joinall(greenlets)
        except BaseException as exc:
            self.error = exc
        finally:
            self.all_open.set()
            gevent.get_hub().destroy(destroy_loop=True)

    def _one(self, drip: Drip) -> None:
        drip.opened = time.monotonic()
        conn = None
        try:
            with gevent.Timeout(self.give_up, SMTPError("give-up", "still connected")):
                conn = Conn(self.target, self.give_up, drip.source)
                code, text = conn.reply("greeting")
                if code != 220:
                    drip.refused = text
                    drip.ended = time.monotonic()
                    return
                drip.connected = True
                if drip.mode == "data":
                    conn.expect("ehlo", 250, b"EHLO slow.client.test")
                    conn.expect("mail", 250, b"MAIL FROM:<slow@client.test>")
                    conn.expect("rcpt", 250, b"RCPT TO:<sink@test.org>")
                    conn.expect("data", 354, b"DATA")
                    payload = b"Subject: slow\r\n\r\n" + b"x" * 100000
                else:
                    payload = b"EHLO " + b"s" * 400   # never reaches CRLF
                for byte in itertools.cycle(payload[i:i + 1] for i in range(len(payload))):
                    conn.sock.sendall(byte)
                    # Between bytes, wait for a reply (the server's 421) or EOF: either ends it.
                    try:
                        conn.sock.settimeout(self.interval)
                        chunk = conn.sock.recv(4096)
                    except (TimeoutError, gsocket.timeout):
                        continue
                    finally:
                        conn.sock.settimeout(self.give_up)
                    if not chunk:
                        drip.last_reply = drip.last_reply or "closed"
                        break
                    conn.buf += chunk
                    drip.last_reply = conn.buf.split(CRLF)[0].decode("utf-8", "replace")[:80]
                    # wait for the close that follows the reply
                    try:
                        while conn.sock.recv(4096):
                            pass
                    except OSError:
                        pass
                    break
        except (OSError, SMTPError, gevent.Timeout) as exc:
            drip.error = f"{type(exc).__name__}: {exc}"[:160]
        finally:
            drip.ended = drip.ended or time.monotonic()
            if conn is not None:
                conn.close()


def describe_drips(drips: list[Drip]) -> dict:
    connected = [d for d in drips if d.connected]
    by_mode = {}
    for mode in ("command", "data"):
        ones = [d for d in connected if d.mode == mode and d.seconds is not None]
        by_mode[mode] = {
            "n": len(ones),
            "max_s": round(max((d.seconds for d in ones), default=0.0), 2),
            "min_s": round(min((d.seconds for d in ones), default=0.0), 2),
            "replies": Counter(d.last_reply[:9] or d.error[:30] for d in ones).most_common(3),
        }
    return {"connected": len(connected), "refused": sum(1 for d in drips if d.refused),
            "errors": Counter(d.error[:40] for d in drips if d.error).most_common(3), **by_mode}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def loopback_sources(count: int, first: int = 2) -> list[str]:
    """127.0.0.<first> ... : Linux routes all of 127/8 to lo, so each is a distinct client."""
    return [f"127.0.0.{first + i}" for i in range(count)]


def cpu_count() -> int:
    return os.cpu_count() or 1
