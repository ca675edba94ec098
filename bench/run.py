#!/usr/bin/env python3
"""Throughput benchmark of gsmtpd with MySQL against Postfix's smtp-sink, in the same run.

Each workload is sent by Postfix's smtp-source, first to smtp-sink (which stores nothing:
the ceiling of this machine and client), then to a freshly started gsmtpd writing to a
fresh MariaDB database. After every gsmtpd run the rows in new_mail are counted and must
equal the 250 replies the server logged. See bench/README.md.

    python bench/run.py                    # everything, full size (a few minutes)
    python bench/run.py --scale 0.1        # a quick run
    python bench/run.py --only W1,IDLE --profile
    python bench/run.py --gsmtpd-args "--batch-max 500" --server-arg=--workers=2
    python bench/run.py --peer "other=exec my-smtpd --port {port}" --peer-rows "other=SELECT COUNT(*) FROM db.mail"

--peer adds another SMTP server to every round, between smtp-sink and gsmtpd.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from urllib.parse import unquote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import interpreter  # noqa: E402
from procstat import TreeWatch, cpu_seconds, find_pids  # noqa: E402
from smtpclient import LatencyProbe, SMTPFailure, make_message, open_idle, send_one  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
HOST = "127.0.0.1"
KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Workload:
    name: str
    messages: int
    size: int           # smtp-source -l: body bytes, headers not included
    sessions: int
    per_connection: int
    # gsmtpd rate / smtp-sink rate: issue #18's, 1.1x what go-guerrilla + MySQL reached of
    # smtp-sink on this machine kind (with --peer, the same run's own ratio is the real test)
    target: float
    what: str
    recipients: int = 1  # smtp-source -r: recipients per message (rows per message)


WORKLOADS = {
    w.name: w for w in (
        Workload("W1", 20_000, 4 * KiB, 50, 1, 0.47, "4 KB, 50 sessions, a new connection per message"),
        Workload("W2", 20_000, 4 * KiB, 50, 100, 0.29, "4 KB, 50 sessions, ~100 messages per connection"),
        Workload("W3", 20_000, 4 * KiB, 500, 1, 0.63, "4 KB, 500 sessions, a new connection per message"),
        Workload("W4", 300, 1 * MiB, 10, 1, 0.54, "1 MiB, 10 sessions, a new connection per message"),
        # Issue "Bounded memory": a message to 10 recipients crosses to the database once.
        # No target ratio: it is there for RSS, database bytes per message and lost.
        Workload("W5", 100, 2 * MiB, 50, 1, 0.0, "2 MiB to 10 recipients, 50 sessions, a new connection each",
                 recipients=10),
    )
}
RSS_LIMIT_MB = 100          # per worker, at W3 and W4 (the issue)
EXTRAS = ("IDLE",)          # selectable with --only besides the workloads


# --- the database


class Database:
    """A database of its own for this run: gsmtpd_bench_<random>, dropped at the end."""

    def __init__(self, base_url: str):
        import pymysql  # gsmtpd's own dependency
        parts = urlsplit(base_url)
        self.pymysql = pymysql
        self.params = dict(host=parts.hostname or HOST, port=parts.port or 3306,
                           user=unquote(parts.username or "root"), password=unquote(parts.password or ""))
        self.name = "gsmtpd_bench_" + os.urandom(4).hex()
        self.created = False

    @property
    def url(self) -> str:
        p = self.params
        return f"mysql://{p['user']}:{p['password']}@{p['host']}:{p['port']}/{self.name}"

    def _query(self, sql: str, database: str | None = None):
        conn = self.pymysql.connect(database=database, autocommit=True, connect_timeout=10, **self.params)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def create(self) -> None:
        self._query(f"CREATE DATABASE `{self.name}`")
        self.created = True

    def drop(self) -> None:
        if self.created:
            self._query(f"DROP DATABASE IF EXISTS `{self.name}`")
            self.created = False

    def _has_table(self) -> bool:
        return bool(self._query(f"SHOW TABLES FROM `{self.name}` LIKE 'new_mail'"))

    def rows(self) -> int:
        if not self._has_table():
            return 0
        return int(self._query("SELECT COUNT(*) FROM new_mail", self.name)[0][0])

    def truncate(self) -> None:
        if self._has_table():
            self._query("TRUNCATE TABLE new_mail", self.name)

    def count(self, sql: str) -> int:
        """The number a query of someone else's table returns (--peer-rows): the first
        column of its first row, on this server, no default database."""
        rows = self._query(sql)
        if not rows or rows[0][0] is None:
            raise RuntimeError(f"{sql!r} returned no number")
        return int(rows[0][0])

    def execute(self, sql: str) -> None:
        self._query(sql)

    def server_pids(self) -> list[int] | None:
        """The process of the server this run uses, from its pid file, when it runs on this
        machine; None when that cannot be told. Summing every mariadbd here counted other
        people's throwaway test servers too, and one that exited during a load made the
        database's CPU negative (-3.08 ms a message at W2 on 2026-12-07)."""
        try:
            path = self._query("SELECT @@pid_file")[0][0]
            with open(path) as fh:
                pid = int(fh.read().split()[0])
            with open(f"/proc/{pid}/comm") as fh:
                comm = fh.read().strip()
        except (OSError, ValueError, IndexError, TypeError, self.pymysql.MySQLError):
            return None
        return [pid] if comm in ("mariadbd", "mysqld") else None

    def status(self) -> dict[str, int]:
        """Server-wide counters (shared with anything else using this MariaDB)."""
        rows = self._query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_commit', 'Com_stmt_execute', 'Innodb_data_fsyncs', 'Bytes_received')")
        return {name: int(value) for name, value in rows}

    def variables(self) -> dict:
        names = ("version", "innodb_flush_log_at_trx_commit", "innodb_buffer_pool_size",
                 "max_allowed_packet", "log_bin", "sync_binlog")
        rows = self._query("SHOW VARIABLES WHERE Variable_name IN (%s)" % ",".join(f"'{n}'" for n in names))
        return dict(rows)


# --- the servers


def free_port() -> int:
    """A port that was free a moment ago (for smtp-sink, which cannot bind port 0 and tell)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_greeting(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on port {port}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Sink:
    """Postfix smtp-sink: accepts and discards, the reference rate."""

    def __init__(self, workdir: str, concurrency: int):
        self.port = free_port()
        self.stderr = open(os.path.join(workdir, f"smtp-sink-{self.port}.err"), "wb")
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-m", str(concurrency), f"{HOST}:{self.port}", "4096"],
            stdout=subprocess.DEVNULL, stderr=self.stderr)
        try:
            wait_for_greeting(self.port, time.monotonic() + 10)
        except RuntimeError:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.stderr.close()


class Floor:
    """bench/floor.py: a gevent SMTP responder that does no work, as many processes as
    gsmtpd has workers. The most the fixed design can reach on this machine."""

    def __init__(self, workdir: str, workers: int):
        self.stderr = open(os.path.join(workdir, "floor.err"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(BENCH_DIR, "floor.py"), "--workers", str(workers), "--listen", HOST],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        found = LISTENING.search(self.proc.stdout.readline())
        if found is None:
            self.stop()
            raise RuntimeError("bench/floor.py did not say where it listens")
        self.port = int(found.group(1))
        wait_for_greeting(self.port, time.monotonic() + 10)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc.stdout.close()
        self.stderr.close()


class Peer:
    """Another SMTP server measured beside gsmtpd (--peer NAME=COMMAND): COMMAND runs under
    /bin/sh in a process group of its own, with {port} replaced by a port that was free a
    moment ago (it must listen there on 127.0.0.1) and {dir} by an empty directory of its
    own for configuration, logs and pid files. A fresh start per load, as for gsmtpd."""

    started = 0

    def __init__(self, workdir: str, name: str, template: str, timeout: float):
        Peer.started += 1
        self.name = name
        self.dir = os.path.join(workdir, f"peer-{Peer.started:02d}-{safe_name(name)}")
        os.makedirs(self.dir)
        self.port = free_port()
        self.command = template.replace("{port}", str(self.port)).replace("{dir}", self.dir)
        self.output_path = os.path.join(self.dir, "output")
        self.output = open(self.output_path, "wb")
        # A session of its own: stop() signals the whole group, so a command that did not
        # exec (a shell running a script) still goes away with everything it started.
        self.proc = subprocess.Popen(["/bin/sh", "-c", self.command], stdin=subprocess.DEVNULL,
                                     stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with status {self.proc.returncode}")
                try:
                    wait_for_greeting(self.port, min(deadline, time.monotonic() + 0.5))
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no 220 greeting on port {self.port} within {timeout:.0f} s") from None
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"peer {name}: {exc}; command: {self.command}; its output ends: "
                               f"{self.tail()[-1200:]}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        with open(self.output_path, errors="replace") as fh:
            return fh.read()[-2000:]

    def stop(self, grace: float = 20.0) -> int | None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        if not self.output.closed:
            self.output.close()
        return self.proc.returncode


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def gsmtpd_workers(extra: list[str]) -> int:
    """--workers as the bench passes it to gsmtpd (none or 0: gsmtpd's default, one per CPU)."""
    workers = 0
    for i, arg in enumerate(extra):
        if arg.startswith("--workers="):
            workers = int(arg.split("=", 1)[1])
        elif arg == "--workers" and i + 1 < len(extra):
            workers = int(extra[i + 1])
    return workers or os.cpu_count() or 1


def server_flags(source: str) -> set[str]:
    """The long options this gsmtpd knows, from its --help (older revisions lack some)."""
    done = subprocess.run([sys.executable, "-m", "gsmtpd", "--help"], cwd=source, capture_output=True,
                          text=True, timeout=60)
    return set(re.findall(r"--[a-z][a-z0-9-]+", done.stdout))


def limit_args(args, connections: int) -> list[str]:
    """Raise the server's connection limits above what the bench opens: every bench
    connection comes from 127.0.0.1, which a per-address limit would otherwise refuse."""
    wanted = {"--max-clients": connections, "--max-per-ip": connections}
    return [item for flag, value in wanted.items() if flag in args.server_flags
            for item in (flag, str(value))]


LISTENING = re.compile(r"listening on \S+ port (\d+)")


class Gsmtpd:
    """``python -m gsmtpd`` from this repository, on port 0, logging to a file of its own."""

    started = 0

    def __init__(self, workdir: str, tag: str, store_url: str, extra_args: list[str], source: str = REPO):
        # A log of its own per start: gsmtpd appends, and an old "listening on" would mislead.
        Gsmtpd.started += 1
        self.logfile = os.path.join(workdir, f"gsmtpd-{Gsmtpd.started:02d}-{tag}.log")
        self.stderr_path = os.path.join(workdir, f"gsmtpd-{Gsmtpd.started:02d}-{tag}.err")
        self.argv = [sys.executable, "-m", "gsmtpd", "--listen", HOST, "--port", "0",
                     "--store", store_url, "--hostname", "mx.test", "--allowed-hosts", "*",
                     "--logfile", self.logfile, *extra_args]
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=source, stdout=subprocess.DEVNULL, stderr=self.stderr)
        try:
            self.port = self._wait_listening(time.monotonic() + 30)
            wait_for_greeting(self.port, time.monotonic() + 10)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"gsmtpd: {exc}; its stderr ends: {self.tail()[-1200:]}") from None

    def _wait_listening(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gsmtpd exited with status {self.proc.returncode}: {self.tail()}")
            try:
                with open(self.logfile, errors="replace") as fh:
                    found = LISTENING.search(fh.read())
            except FileNotFoundError:
                found = None
            if found:
                return int(found.group(1))
            time.sleep(0.05)
        raise RuntimeError(f"gsmtpd did not log 'listening on' within 30 s: {self.tail()}")

    def tail(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        with open(self.stderr_path, errors="replace") as fh:
            return fh.read()[-2000:]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int | None:
        stop_process(self.proc)
        self.stderr.close()
        return self.proc.returncode

    def log_counts(self) -> dict:
        """What the server logged: replies to DATA by class, connections, problems."""
        replies: Counter = Counter()
        connects = refused = 0
        problems: list[str] = []
        reply = re.compile(r" reply=(\d)")
        with open(self.logfile, errors="replace") as fh:
            for line in fh:
                if " message id=" in line:
                    found = reply.search(line)
                    replies[found.group(1) if found else "?"] += 1
                elif " disconnect ip=" in line:     # (the connect line is at debug level)
                    connects += 1
                elif " refused ip=" in line:
                    refused += 1
                if (" ERROR " in line or " WARNING " in line or " CRITICAL " in line) and len(problems) < 5:
                    problems.append(line.strip()[:300])
        return {"acked": replies["2"], "4xx": replies["4"], "5xx": replies["5"],
                "connections": connects, "refused": refused, "log_problems": problems}


# --- the load


def source_argv(port: int, size: int, sessions: int, messages: int, keep_connection: bool,
                recipients: int = 1) -> list[str]:
    # -A: carry on after a 4xx/5xx (those are counted from the server log, not hidden
    # by smtp-source dying at the first one). -d: several messages per connection.
    # -r: recipients per message (1rcpt@, 2rcpt@ ...).
    argv = ["smtp-source", "-A", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", "client.test", "-f", "sender@client.test", "-t", "rcpt@mx.test"]
    if keep_connection:
        argv.append("-d")
    if recipients > 1:
        argv += ["-r", str(recipients)]
    return argv + [f"{HOST}:{port}"]


def run_load(port: int, wl: Workload, messages: int, timeout: float) -> dict:
    """Send ``messages`` as workload ``wl`` describes; returns wall time and smtp-source's exits.

    One connection per message is one smtp-source. For N messages per connection, each of
    the ``sessions`` lanes runs ``smtp-source -s 1 -m N -d`` again and again (smtp-source -d
    alone keeps every session on one connection to the end).
    """
    deadline = time.monotonic() + timeout
    failures: list[str] = []
    counts: Counter = Counter()
    lock = threading.Lock()

    def run(argv: list[str]) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            with lock:
                failures.append("not started: time limit")
            return
        try:
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=left)
        except subprocess.TimeoutExpired:
            with lock:
                failures.append(f"smtp-source killed after the {timeout:.0f} s limit")
            return
        stderr = done.stderr.decode(errors="replace")
        refused = refused_messages(stderr, wl.recipients)
        with lock:
            counts["refused"] += refused
            if done.returncode != 0:
                counts["source_exits"] += 1
            if done.returncode != 0 or stderr:
                failures.append(f"exit {done.returncode}: {stderr[-300:].strip()}")

    started = time.monotonic()
    if wl.per_connection <= 1:
        run(source_argv(port, wl.size, min(wl.sessions, messages), messages, False, wl.recipients))
    else:
        lanes = min(wl.sessions, messages)

        def lane(quota: int) -> None:
            while quota > 0:
                chunk = min(wl.per_connection, quota)
                run(source_argv(port, wl.size, 1, chunk, True, wl.recipients))
                quota -= chunk

        threads = [threading.Thread(target=lane, args=(messages // lanes + (i < messages % lanes),))
                   for i in range(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {"wall_s": time.monotonic() - started, "source_failures": failures,
            "source_refused": counts["refused"], "source_exits": counts["source_exits"]}


# smtp-source -A warns once for each reply it did not want and carries on; these end a
# message without a 250 ("HELO rejected" does not: it goes on to MAIL FROM).
REFUSED = re.compile(r"warning: (sender|recipient|data|end of data) rejected: \d")


def refused_messages(stderr: str, recipients: int) -> int:
    """Messages of one smtp-source run that got no 250, from its -A warnings. A message is
    dropped when every recipient is refused, so refused recipients count per ``recipients``
    (exact for one recipient a message, as W1-W4 send)."""
    found = Counter(m.group(1) for m in REFUSED.finditer(stderr))
    return (found["sender"] + found["data"] + found["end of data"]
            + found["recipient"] // max(1, recipients))


def scaled(wl: Workload, scale: float) -> int:
    return max(wl.sessions if wl.per_connection == 1 else 1, round(wl.messages * scale), 10)


# --- the phases


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from the first line of /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]          # idle + iowait
    total = sum(values[:8])               # guest time is already in user
    return total - idle, total


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the whole machine (every core) that was busy, in percent."""
    return 100.0 * (after[0] - before[0]) / max(1, after[1] - before[1])


# Before each phase the machine should be as quiet as it was for the others: MariaDB goes
# on flushing and purging for seconds after a gsmtpd run, and a smtp-sink run started in
# that wake is slowed by it (its rate, the ratio's denominator, swung by a quarter).
SETTLE_BELOW_PCT = 10.0
SETTLE_MAX_S = 15.0


def settle(window: float = 0.5, max_wait: float = SETTLE_MAX_S) -> float:
    """Wait (at most ``max_wait`` seconds) until the machine is below SETTLE_BELOW_PCT busy
    over ``window``; the busy percent of the last window."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_cpu()
        time.sleep(window)
        busy = busy_pct(before, machine_cpu())
        if busy < SETTLE_BELOW_PCT or time.monotonic() > deadline:
            return round(busy, 1)


def mysqld_cpu(pids: list[int] | None = None) -> float:
    """CPU seconds of the database server: ``pids`` (Database.server_pids()), else of every
    mariadbd/mysqld on the machine."""
    return sum(cpu_seconds(pid) or 0.0 for pid in (find_pids("mariadbd", "mysqld") if pids is None else pids))


def phase_sink(wl: Workload, messages: int, args, workdir: str, probe: bool, floor: bool = False) -> dict:
    """smtp-sink under the load; with ``floor``, bench/floor.py instead."""
    settled = settle(max_wait=args.settle_max)
    server = Floor(workdir, gsmtpd_workers(args.extra)) if floor else Sink(workdir, max(1024, wl.sessions + 64))
    try:
        watch = TreeWatch(server.pid).start()
        watch.mark()
        latency = LatencyProbe(HOST, server.port).start() if probe else None
        machine = machine_cpu()
        load = run_load(server.port, wl, messages, args.load_timeout)
        machine = busy_pct(machine, machine_cpu())
        ended = time.monotonic()
        if latency:
            latency.stop()
        watch.stop()
    finally:
        server.stop()
    cpu = watch.cpu_since_mark()
    return {
        "messages": messages, **load, "msgs_per_s": messages / load["wall_s"],
        "cpu_ms_per_msg": cpu * 1000 / messages, "peak_rss_mb": watch.peak_rss_kb() / 1024,
        "machine_busy_pct": machine, "busy_before_pct": settled,
        "latency": latency.summary(until=ended) if latency else None,
    }


def measured_load(server, wl: Workload, messages: int, args, db: Database, probe: bool) -> tuple:
    """The load against a started server (gsmtpd or a peer), with what every phase measures
    over it: (process-tree watch, latency probe, load, machine busy %, MariaDB status
    counters' growth, MariaDB CPU seconds, the monotonic time the load ended)."""
    watch = TreeWatch(server.pid).start()
    watch.mark()
    db_cpu = mysqld_cpu(args.db_pids)
    latency = LatencyProbe(HOST, server.port).start() if probe else None
    db_status = db.status()
    machine = machine_cpu()
    load = run_load(server.port, wl, messages, args.load_timeout)
    machine = busy_pct(machine, machine_cpu())
    db_status = {k: v - db_status.get(k, 0) for k, v in db.status().items()}
    ended = time.monotonic()
    if latency:
        latency.stop()
    db_cpu = mysqld_cpu(args.db_pids) - db_cpu
    watch.stop()
    return watch, latency, load, machine, db_status, db_cpu, ended


def phase_gsmtpd(wl: Workload, messages: int, args, workdir: str, db: Database, probe: bool,
                 profile_to: str | None = None) -> dict:
    db.truncate()
    settled = settle(max_wait=args.settle_max)
    tag = wl.name + ("-profile" if profile_to else "")
    extra = [*limit_args(args, max(1000, wl.sessions * 2 + 100)), *args.extra]
    server = Gsmtpd(workdir, tag, db.url, extra, args.source)
    spy = None
    try:
        if profile_to:
            spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "--subprocesses", "--nolineno",
                                    "--format", "raw", "--rate", "200", "-o", profile_to,
                                    "--pid", str(server.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)   # let it attach before the load starts
        watch, latency, load, machine, db_status, db_cpu, ended = measured_load(server, wl, messages, args, db, probe)
        if spy:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
    finally:
        status = server.stop()
    logged = server.log_counts()
    rows = db.rows()
    probe_acked = latency.acked if latency else 0
    source_acked = logged["acked"] - probe_acked
    cpu = watch.cpu_since_mark()
    result = {
        "messages": messages, **load, **logged, "rows": rows,
        # A message has a row per recipient (W5: 10).
        "lost": max(0, logged["acked"] * wl.recipients - rows),    # 250 said, no row: must be 0
        "rows_not_acked": max(0, rows - logged["acked"] * wl.recipients),   # stored, no 250 logged
        "not_acked": messages - source_acked,                # 4xx/5xx/errors: the client retries
        "probe_acked": probe_acked,
        "msgs_per_s": source_acked / load["wall_s"],
        "cpu_ms_per_msg": cpu * 1000 / max(1, logged["acked"]),
        "db_cpu_ms_per_msg": db_cpu * 1000 / max(1, logged["acked"]),
        "peak_rss_mb": watch.peak_rss_kb() / 1024, "processes": watch.processes(),
        "machine_busy_pct": machine, "busy_before_pct": settled, "db_commits": db_status.get("Com_commit"),
        "db_fsyncs": db_status.get("Innodb_data_fsyncs"),
        # Bytes MariaDB received (from everyone: noisy on a shared server) per acked message.
        "db_bytes_per_msg": db_status.get("Bytes_received", 0) / max(1, logged["acked"]),
        # Nearly every batch is one INSERT that commits itself (autocommit), so messages
        # per INSERT executed is the group-commit batch size.
        "db_inserts": db_status.get("Com_stmt_execute"),
        "msgs_per_insert": logged["acked"] / db_status["Com_stmt_execute"] if db_status.get("Com_stmt_execute") else None,
        "exit_status": status,
        "latency": latency.summary(until=ended) if latency else None,
        "logfile": server.logfile,
    }
    if spy:
        result["profile"] = summarize_profile(profile_to, spy)
    return result


def phase_peer(wl: Workload, messages: int, args, workdir: str, db: Database, name: str, probe: bool) -> dict:
    """The load against a --peer server. Its 250s are the messages smtp-source did not see
    refused (it warns for each under -A; a peer's log is its own business); its rows, when
    --peer-rows says how to count them, are what the count grew by over the run, taken
    after the peer stopped, so a 250 given before its row was committed shows as lost."""
    rows_sql, reset_sql = args.peer_rows.get(name), args.peer_reset.get(name)

    def peer_sql(option: str, sql: str, run):
        try:
            return run(sql)
        except db.pymysql.MySQLError as exc:
            raise RuntimeError(f"peer {name}: {option} {sql!r}: {exc}") from None

    if reset_sql:
        peer_sql("--peer-reset", reset_sql, db.execute)
    rows_before = peer_sql("--peer-rows", rows_sql, db.count) if rows_sql else None
    settled = settle(max_wait=args.settle_max)
    server = Peer(workdir, name, args.peers[name], args.peer_start_timeout)
    try:
        watch, latency, load, machine, db_status, db_cpu, ended = measured_load(server, wl, messages, args, db, probe)
    finally:
        status = server.stop()
    probe_acked = latency.acked if latency else 0
    # A smtp-source that exited with an error stopped sending: what it did not send is not
    # in its warnings, so the count below is then an upper bound.
    source_acked = messages - load["source_refused"]
    acked = source_acked + probe_acked
    rows = peer_sql("--peer-rows", rows_sql, db.count) - rows_before if rows_sql else None
    return {
        "messages": messages, **load, "acked": acked, "acked_upper_bound": load["source_exits"] > 0,
        "rows": rows,
        "lost": max(0, acked * wl.recipients - rows) if rows is not None else None,
        "rows_not_acked": max(0, rows - acked * wl.recipients) if rows is not None else None,
        "not_acked": load["source_refused"], "probe_acked": probe_acked,
        "msgs_per_s": source_acked / load["wall_s"],
        "cpu_ms_per_msg": watch.cpu_since_mark() * 1000 / max(1, acked),
        "db_cpu_ms_per_msg": db_cpu * 1000 / max(1, acked),
        "peak_rss_mb": watch.peak_rss_kb() / 1024, "processes": watch.processes(),
        "machine_busy_pct": machine, "busy_before_pct": settled,
        "db_bytes_per_msg": db_status.get("Bytes_received", 0) / max(1, acked),
        "db_inserts": db_status.get("Com_stmt_execute"),
        "msgs_per_insert": acked / db_status["Com_stmt_execute"] if db_status.get("Com_stmt_execute") else None,
        "exit_status": status, "command": server.command,
        "latency": latency.summary(until=ended) if latency else None,
    }


def peer_summary(runs: list[dict], sink_rate: float, gsmtpd_rate: float) -> dict:
    """A peer's runs of one workload as the table shows them: the median rate, the other
    columns from the run with the median rate (as for gsmtpd)."""
    rate = statistics.median(r["msgs_per_s"] for r in runs)
    middle = sorted(runs, key=lambda r: r["msgs_per_s"])[(len(runs) - 1) // 2]
    losses = [r["lost"] for r in runs]
    return {**middle, "msgs_per_s": rate, "ratio": rate / sink_rate,
            "gsmtpd_to_peer": gsmtpd_rate / rate if rate else None,
            "lost_total": None if None in losses else sum(losses), "runs": runs}


def phase_idle(count: int, args, workdir: str, db: Database) -> dict:
    extra = [*limit_args(args, count + 100), "--timeout", "300", *args.extra]
    server = Gsmtpd(workdir, "IDLE", db.url, extra, args.source)
    socks: list[socket.socket] = []
    try:
        watch = TreeWatch(server.pid).start()
        time.sleep(0.5)
        before = watch.rss_now_kb()
        started = time.monotonic()
        socks, problems = open_idle(HOST, server.port, count, started + args.load_timeout)
        opened_s = time.monotonic() - started
        time.sleep(1.0)
        after = watch.rss_now_kb()
        # Is the server still quick for a new client while all those sit there?
        message = make_message(4 * KiB)
        samples = []
        for _ in range(20):
            try:
                samples.append(send_one(HOST, server.port, message, timeout=30)[0])
            except (OSError, SMTPFailure) as exc:
                problems.append(f"message while idle: {exc}")
                break
        cpu_s = watch.cpu_since_mark()
        watch.stop()
    finally:
        for sock in socks:
            sock.close()
        server.stop()
    opened = len(socks)
    return {
        "connections": opened, "wanted": count, "open_s": opened_s, "problems": problems[:5],
        "rss_before_mb": before / 1024, "rss_after_mb": after / 1024,
        "kb_per_connection": (after - before) / opened if opened else None,
        "peak_rss_mb": watch.peak_rss_kb() / 1024, "server_cpu_s": cpu_s,
        "message_ms_while_idle": round(statistics.median(samples) * 1000, 2) if samples else None,
    }


def summarize_profile(path: str, spy: subprocess.Popen, top: int = 15) -> dict:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                # --subprocesses puts a "process PID:cmdline" frame first: not a function.
                frames = [f for f in stack.split(";") if not f.startswith("process ")]
                if not frames:
                    frames = ["(no Python frame)"]
                n = int(count)
                total += n
                own[frames[-1]] += n
                for frame in set(frames):
                    inclusive[frame] += n
    except FileNotFoundError:
        return {"error": "py-spy wrote nothing: " + spy.stderr.read().decode(errors="replace")[-500:]}

    def share(counter: Counter) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]
    return {"file": path, "samples": total, "self_pct": share(own), "inclusive_pct": share(inclusive)}


# --- the report


def fmt(value, spec: str = ".0f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def report(results: dict) -> str:
    lines = []
    python = results.get("interpreter")
    if python:
        lines.append(interpreter.summary(python))
        if interpreter.warning(python):
            lines.append(interpreter.warning(python))
        lines.append("")
    head = (f"{'':4} {'msgs':>6} {'sink/s':>8} {'gsmtpd/s':>8} {'ratio':>6} {'target':>6} {'ok':>3} "
            f"{'acked':>6} {'rows':>6} {'lost':>4} {'!ack':>5} {'conns':>6} {'cpu ms/msg':>10} "
            f"{'db ms/msg':>9} {'RSS MB':>7} {'msg/insert':>10} {'busy%':>9} {'sink ms/msg':>11}")
    lines += [head, "-" * len(head)]
    for name, wl in WORKLOADS.items():
        r = results["workloads"].get(name)
        if not r:
            continue
        sink, g = r["sink"], r["gsmtpd"]
        ok = "yes" if r["ratio"] >= wl.target and r["lost_total"] == 0 else "NO"
        lines.append(
            f"{name:4} {g['messages']:>6} {r['sink_msgs_per_s']:>8.0f} {r['gsmtpd_msgs_per_s']:>8.0f} "
            f"{r['ratio']:>6.2f} {wl.target:>6.2f} {ok:>3} {g['acked']:>6} {g['rows']:>6} {g['lost']:>4} "
            f"{g['not_acked']:>5} {g['connections']:>6} {g['cpu_ms_per_msg']:>10.2f} "
            f"{g['db_cpu_ms_per_msg']:>9.2f} {g['peak_rss_mb']:>7.1f} {fmt(g.get('msgs_per_insert'), '.1f'):>10} "
            f"{sink['machine_busy_pct']:>4.0f}/{g['machine_busy_pct']:<4.0f} {sink['cpu_ms_per_msg']:>11.3f}")
    for name, r in results["workloads"].items():
        if len(r["ratios"]) > 1:
            lines.append(f"  {name}: {len(r['ratios'])} runs, rates are medians; ratio of each pair: "
                         f"{', '.join(f'{x:.2f}' for x in r['ratios'])}; lost in all runs: {r['lost_total']}")
        for side in ("sink", "gsmtpd"):
            for failure in r[side]["source_failures"][:3]:
                lines.append(f"  {name} {side}: smtp-source: {failure}")
        for problem in r["gsmtpd"]["log_problems"][:3]:
            lines.append(f"  {name} gsmtpd log: {problem}")
        if name in ("W3", "W4") and r["gsmtpd"]["peak_rss_mb"] >= RSS_LIMIT_MB:
            lines.append(f"  {name}: peak RSS {r['gsmtpd']['peak_rss_mb']:.0f} MB >= {RSS_LIMIT_MB} MB per worker")
    lines += peer_report(results)
    floors = [(name, r) for name, r in results["workloads"].items() if "floor_msgs_per_s" in r]
    if floors:
        lines.append("")
        lines.append("floor: bench/floor.py, gevent with canned replies and nothing stored (medians):")
        for name, r in floors:
            needed = WORKLOADS[name].target * r["sink_msgs_per_s"]
            lines.append(f"  {name}: floor {r['floor_msgs_per_s']:.0f} msgs/s = {r['floor_ratio']:.2f} of sink, "
                         f"{r['floor_cpu_ms_per_msg']:.3f} ms CPU/msg; gsmtpd = {r['gsmtpd_to_floor']:.2f} of floor; "
                         f"the target needs {needed / r['floor_msgs_per_s']:.2f} of floor")
    w5 = results["workloads"].get("W5")
    if w5:
        g, wl = w5["gsmtpd"], WORKLOADS["W5"]
        lines.append("")
        lines.append(f"W5 ({wl.what}): {g['msgs_per_s']:.1f} msgs/s, peak RSS {g['peak_rss_mb']:.0f} MB per worker, "
                     f"{g['db_bytes_per_msg'] / MiB:.2f} MiB to the database per message "
                     f"({g['db_bytes_per_msg'] / wl.size:.2f} x its body; its rows hold "
                     f"{wl.recipients} x (mail + body)), lost {g['lost']}")
    w1 = results["workloads"].get("W1")
    if w1 and w1["gsmtpd"]["latency"]:
        lines.append("")
        lines.append("final dot -> 250 under W1 load (a probe client beside smtp-source: at most 40 msgs/s, new connection each):")
        sides = [("sink", w1["sink"]), *w1.get("peers", {}).items(), ("gsmtpd", w1["gsmtpd"])]
        for side, measured in sides:
            lat = measured["latency"]
            if not lat:
                continue
            lines.append(f"  {side[:12]:12} p50 {fmt(lat['p50_ms'], '.2f')} ms  p90 {fmt(lat['p90_ms'], '.2f')} ms  "
                         f"p99 {fmt(lat['p99_ms'], '.2f')} ms  max {fmt(lat['max_ms'], '.2f')} ms  "
                         f"({lat['samples']} samples, {lat['not_250']} not 250, {lat['errors']} errors)")
    idle = results.get("idle")
    if idle:
        lines.append("")
        lines.append(f"idle connections: {idle['connections']}/{idle['wanted']} open in {idle['open_s']:.1f} s; "
                     f"RSS {idle['rss_before_mb']:.1f} -> {idle['rss_after_mb']:.1f} MB = "
                     f"{fmt(idle['kb_per_connection'], '.1f')} KB per connection; a message meanwhile: "
                     f"{fmt(idle['message_ms_while_idle'], '.2f')} ms (dot to 250)")
        for problem in idle["problems"]:
            lines.append(f"  idle: {problem}")
    profile = (results.get("profile") or {}).get("profile")
    if profile and "self_pct" in profile:
        lines.append("")
        lines.append(f"profile of gsmtpd under W1 ({profile['samples']} samples, {profile['file']}):")
        lines.append("  self %:")
        lines += [f"    {pct:5.1f}  {frame}" for frame, pct in profile["self_pct"][:12]]
        lines.append("  inclusive %:")
        lines += [f"    {pct:5.1f}  {frame}" for frame, pct in profile["inclusive_pct"][:12]]
    elif profile:
        lines.append(f"profile: {profile.get('error')}")
    return "\n".join(lines)


def peer_report(results: dict) -> list[str]:
    """Every server of the run side by side (--peer): smtp-sink, the peers, gsmtpd."""
    compared = [(name, r) for name, r in results["workloads"].items() if r.get("peers")]
    if not compared:
        return []
    rounds = max(len(r["runs"]) for _, r in compared)
    lines = ["", f"same run, every server ({rounds} round{'s' if rounds > 1 else ''} of sink, "
                 f"{', '.join(results['peers'])}, gsmtpd; rates are medians, ratio is to smtp-sink's):"]
    head = (f"{'':4} {'server':14} {'msgs/s':>8} {'ratio':>6} {'acked':>6} {'rows':>6} {'lost':>4} {'!ack':>5} "
            f"{'cpu ms/msg':>10} {'db ms/msg':>9} {'RSS MB':>7} {'msg/insert':>10} {'busy%':>5}")
    lines += [head, "-" * len(head)]
    for name, r in compared:
        sink = r["sink"]
        lines.append(f"{name:4} {'smtp-sink':14} {r['sink_msgs_per_s']:>8.0f} {1:>6.2f} {'':>6} {'':>6} {'':>4} "
                     f"{'':>5} {sink['cpu_ms_per_msg']:>10.3f} {'':>9} {sink['peak_rss_mb']:>7.1f} {'':>10} "
                     f"{sink['machine_busy_pct']:>5.0f}")
        servers = [(peer, p, p["msgs_per_s"], p["ratio"]) for peer, p in r["peers"].items()]
        servers.append(("gsmtpd", r["gsmtpd"], r["gsmtpd_msgs_per_s"], r["ratio"]))
        for server, g, rate, ratio in servers:
            acked = f"{g['acked']}{'+' if g.get('acked_upper_bound') else ''}"
            lines.append(
                f"{'':4} {server[:14]:14} {rate:>8.0f} {ratio:>6.2f} {acked:>6} {fmt(g['rows']):>6} "
                f"{fmt(g['lost']):>4} {g['not_acked']:>5} {g['cpu_ms_per_msg']:>10.2f} {g['db_cpu_ms_per_msg']:>9.2f} "
                f"{g['peak_rss_mb']:>7.1f} {fmt(g.get('msgs_per_insert'), '.1f'):>10} {g['machine_busy_pct']:>5.0f}")
        lines.append(f"{'':4} gsmtpd / " + ", ".join(
            f"{peer}: {fmt(p['gsmtpd_to_peer'], '.2f')}" for peer, p in r["peers"].items()))
    for name, r in compared:
        for peer, p in r["peers"].items():
            if p["lost_total"] is None:
                lines.append(f"  {name} {peer}: rows not counted (no --peer-rows), so lost is not known")
            elif p["lost_total"]:
                lines.append(f"  {name} {peer}: LOST {p['lost_total']}: 250s without a row")
            if p.get("acked_upper_bound"):
                lines.append(f"  {name} {peer}: smtp-source failed, so acked is an upper bound (+)")
            if p["source_failures"]:
                last = p["source_failures"][-1].strip().splitlines()[-1]
                lines.append(f"  {name} {peer}: smtp-source complained {len(p['source_failures'])} time(s), "
                             f"{p['source_refused']} message(s) refused; the last: {last[:200]}")
    return lines


# --- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every workload's message count (0.1: a quick run)")
    parser.add_argument("--only", default="",
                        help="comma-separated subset of W1,W2,W3,W4,IDLE (default: all)")
    parser.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306",
                        help="MariaDB/MySQL server; a database gsmtpd_bench_<random> is made and dropped")
    parser.add_argument("--gsmtpd-args", default="", help="extra gsmtpd arguments, one shell-quoted string")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one extra gsmtpd argument (repeatable): --server-arg=--workers=2")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each workload (sink, then gsmtpd) this many times; the table shows the "
                             "run with the median ratio")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections to open (IDLE)")
    parser.add_argument("--no-latency", action="store_true", help="no latency probe during W1")
    parser.add_argument("--floor", action="store_true",
                        help="also run each load against bench/floor.py, a gevent server that does no "
                             "work: the most this design reaches here")
    parser.add_argument("--profile", action="store_true",
                        help="after W1, run W1 once more against gsmtpd under py-spy and show the top")
    parser.add_argument("--load-timeout", type=float, default=240.0,
                        help="seconds one load may take before smtp-source is killed")
    parser.add_argument("--rev", help="benchmark gsmtpd/ as of this commit (git archive into a temp dir) "
                                      "instead of the work tree, which others may be editing")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=COMMAND",
                        help="also measure another SMTP server, in every round between smtp-sink and gsmtpd "
                             "(repeatable). COMMAND runs under /bin/sh, started afresh for each load; {port} "
                             "in it becomes the port it must listen on at 127.0.0.1, {dir} an empty directory "
                             "for its files. The bench waits for its 220 greeting")
    parser.add_argument("--peer-rows", action="append", default=[], metavar="NAME=QUERY",
                        help="a query on the --mysql server that counts the rows peer NAME has stored (e.g. "
                             "SELECT COUNT(*) FROM db.table): what it grows by over a load is held against the "
                             "250s the peer gave. Without it the peer's rows and lost are not known")
    parser.add_argument("--peer-reset", action="append", default=[], metavar="NAME=SQL",
                        help="a statement run on the --mysql server before each load of peer NAME (e.g. "
                             "TRUNCATE TABLE db.table), so it starts on an empty table as gsmtpd does")
    parser.add_argument("--peer-start-timeout", type=float, default=30.0,
                        help="seconds a peer may take to answer with its greeting")
    parser.add_argument("--settle-max", type=float, default=SETTLE_MAX_S,
                        help="seconds each phase waits at most for the machine to go quiet before it starts")
    parser.add_argument("--json", help="where to write the results (default: bench/results/bench-<time>.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs (in the temp dir)")
    args = parser.parse_args(argv)
    args.extra = shlex.split(args.gsmtpd_args) + args.server_arg
    wanted = [w.strip().upper() for w in args.only.split(",") if w.strip()] or [*WORKLOADS, *EXTRAS]
    unknown = [w for w in wanted if w not in WORKLOADS and w not in EXTRAS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join([*WORKLOADS, *EXTRAS])}")
    args.wanted = wanted
    args.peers = named_values(parser, "--peer", args.peer)
    args.peer_rows = named_values(parser, "--peer-rows", args.peer_rows)
    args.peer_reset = named_values(parser, "--peer-reset", args.peer_reset)
    for option, values in (("--peer-rows", args.peer_rows), ("--peer-reset", args.peer_reset)):
        strays = [name for name in values if name not in args.peers]
        if strays:
            parser.error(f"{option}: no --peer named {', '.join(strays)}")
    return args


def named_values(parser: argparse.ArgumentParser, option: str, items: list[str]) -> dict[str, str]:
    """NAME=VALUE items of a repeatable option, in the order given (each name once)."""
    named: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            parser.error(f"{option} wants NAME=VALUE, got {item!r}")
        if name in named or name in ("sink", "gsmtpd", "floor"):
            parser.error(f"{option}: the name {name!r} is taken")
        named[name] = value
    return named


def preflight() -> list[str]:
    problems = [f"{tool} not found on PATH (apt-get install postfix)" for tool in ("smtp-source", "smtp-sink")
                if shutil.which(tool) is None]
    try:
        import pymysql  # noqa: F401
    except ImportError:
        problems.append("PyMySQL is missing (pip install -e .)")
    return problems


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def git(*argv: str) -> str | None:
    try:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def export_rev(rev: str, workdir: str) -> str:
    """gsmtpd/ as committed in rev, unpacked under workdir; returns the directory to run in."""
    target = os.path.join(workdir, "src")
    os.makedirs(target)
    archive = subprocess.run(["git", "archive", rev, "gsmtpd"], cwd=REPO, capture_output=True, timeout=60)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {rev}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", target], input=archive.stdout, check=True, timeout=60)
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = preflight()
    if args.profile and shutil.which("py-spy") is None:
        problems.append("--profile needs py-spy (pip install py-spy)")
    if problems:
        print("bench: cannot run:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    raise_fd_limit()
    # gsmtpd runs on this same interpreter (sys.executable): say which one it is.
    python = interpreter.describe()
    print(interpreter.summary(python), flush=True)
    if interpreter.warning(python):
        print(interpreter.warning(python), file=sys.stderr, flush=True)
    workdir = tempfile.mkdtemp(prefix="gsmtpd-bench-")
    db = Database(args.mysql)
    results: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git("rev-parse", "--short", "HEAD"),
        # The server runs from the work tree: say when it is not the commit.
        "uncommitted": (git("status", "--porcelain", "--", "gsmtpd") or "").splitlines(), "scale": args.scale,
        "gsmtpd_args": args.extra, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "interpreter": python, "workloads": {},
        "peers": {name: {"command": command, "rows": args.peer_rows.get(name), "reset": args.peer_reset.get(name)}
                  for name, command in args.peers.items()},
    }
    status = 0
    args.source = REPO
    try:
        if args.rev:
            args.source = export_rev(args.rev, workdir)
            results["rev"] = git("rev-parse", "--short", args.rev)
        args.server_flags = server_flags(args.source)
        db.create()
        args.db_pids = db.server_pids()
        results["database"] = {"name": db.name, "server_pids": args.db_pids, **db.variables()}
        for name in args.wanted:
            wl = WORKLOADS.get(name)
            if wl is None:
                continue
            messages = scaled(wl, args.scale)
            probe = name == "W1" and not args.no_latency
            print(f"{name}: {messages} messages, {wl.what} (load average {os.getloadavg()[0]:.2f})",
                  flush=True)
            runs = []
            for _ in range(args.repeat):
                sink = phase_sink(wl, messages, args, workdir, probe)
                print(f"  smtp-sink  {sink['msgs_per_s']:8.0f} msgs/s in {sink['wall_s']:.1f} s", flush=True)
                run = {"sink": sink}
                if args.floor:
                    floor = run["floor"] = phase_sink(wl, messages, args, workdir, False, floor=True)
                    print(f"  floor      {floor['msgs_per_s']:8.0f} msgs/s in {floor['wall_s']:.1f} s, "
                          f"ratio {floor['msgs_per_s'] / sink['msgs_per_s']:.2f}", flush=True)
                # Peers between smtp-sink and gsmtpd in every round, so a drift of the
                # machine over the run reaches all of them alike.
                for peer in args.peers:
                    got = run.setdefault("peers", {})[peer] = phase_peer(wl, messages, args, workdir, db, peer, probe)
                    print(f"  {peer[:10]:10} {got['msgs_per_s']:8.0f} msgs/s in {got['wall_s']:.1f} s, "
                          f"ratio {got['msgs_per_s'] / sink['msgs_per_s']:.2f}, acked {got['acked']}, "
                          f"rows {fmt(got['rows'])}, lost {fmt(got['lost'])}", flush=True)
                gsmtpd = phase_gsmtpd(wl, messages, args, workdir, db, probe)
                ratio = gsmtpd["msgs_per_s"] / sink["msgs_per_s"]
                print(f"  gsmtpd     {gsmtpd['msgs_per_s']:8.0f} msgs/s in {gsmtpd['wall_s']:.1f} s, "
                      f"ratio {ratio:.2f} (target {wl.target}), acked {gsmtpd['acked']}, "
                      f"rows {gsmtpd['rows']}, lost {gsmtpd['lost']}", flush=True)
                runs.append({"ratio": ratio, **run, "gsmtpd": gsmtpd})
                if gsmtpd["lost"] or gsmtpd["rows_not_acked"]:
                    status = 1
            # Sink and gsmtpd rates wander independently (other processes, the kernel), so the
            # ratio is of their medians; the other columns come from the gsmtpd run with the
            # median rate. Every run is in the JSON.
            sink_rate = statistics.median(r["sink"]["msgs_per_s"] for r in runs)
            gsmtpd_rate = statistics.median(r["gsmtpd"]["msgs_per_s"] for r in runs)
            middle = sorted(runs, key=lambda run: run["gsmtpd"]["msgs_per_s"])[(len(runs) - 1) // 2]
            results["workloads"][name] = {
                **asdict(wl), **middle, "ratio": gsmtpd_rate / sink_rate,
                "sink_msgs_per_s": sink_rate, "gsmtpd_msgs_per_s": gsmtpd_rate,
                "lost_total": sum(r["gsmtpd"]["lost"] for r in runs),
                "ratios": [round(r["ratio"], 3) for r in runs], "runs": runs}
            if args.floor:
                floor_rate = statistics.median(r["floor"]["msgs_per_s"] for r in runs)
                results["workloads"][name].update(
                    floor_msgs_per_s=floor_rate, floor_ratio=floor_rate / sink_rate,
                    gsmtpd_to_floor=gsmtpd_rate / floor_rate,
                    floor_cpu_ms_per_msg=statistics.median(r["floor"]["cpu_ms_per_msg"] for r in runs))
            if args.peers:
                results["workloads"][name]["peers"] = {
                    peer: peer_summary([r["peers"][peer] for r in runs], sink_rate, gsmtpd_rate)
                    for peer in args.peers}
            if name == "W1" and args.profile:
                os.makedirs(os.path.join(BENCH_DIR, "results"), exist_ok=True)
                out = os.path.join(BENCH_DIR, "results", f"profile-W1-{time.strftime('%Y%m%d-%H%M%S')}.txt")
                print("  W1 again under py-spy", flush=True)
                results["profile"] = phase_gsmtpd(wl, messages, args, workdir, db, False, profile_to=out)
        if "IDLE" in args.wanted:
            print(f"IDLE: {args.idle} idle connections", flush=True)
            results["idle"] = phase_idle(args.idle, args, workdir, db)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        status = 130
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        status = 1
    except Exception:  # a bench bug: still print and save what was measured
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        try:
            db.drop()
        except Exception as exc:  # report, but do not hide the results
            print(f"bench: could not drop database {db.name}: {exc}", file=sys.stderr)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}")
    results["loadavg_end"] = os.getloadavg()
    print()
    print(report(results))
    path = args.json or os.path.join(BENCH_DIR, "results", f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    print(f"\nresults: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
