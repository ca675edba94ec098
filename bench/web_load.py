#!/usr/bin/env python3
"""Does ingest pay for the read side? W1 alone vs W1 with the web process busy, same run.

    python bench/web_load.py                  # 3 rounds of (W1 alone, W1 + web + retention)
    python bench/web_load.py --scale 0.5 --rounds 2

Both runs start on a table that already holds BACKLOG rows older than the retention; the
busy run starts gsmtpd with ``--web 127.0.0.1:0 --retention 3600`` (so the purge runs during
the load),
opens 50 event streams (``--hot`` of them, 1 by default, on the mailbox W1 sends to: each
gets an event per message; the others on quiet mailboxes) and makes 20 API reads a second (the newest page of W1's mailbox and one
message, in turn). Rounds alternate the two runs, so drift of a shared machine hits both.

Reported: W1 msgs/s for each, the ratio (target: at least 0.90), rows purged during the
load, events and reads served, and the web process's CPU per API request (its CPU over the
load, events and polling included, divided by the reads it answered).
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import Database, Gsmtpd, WORKLOADS, mysqld_cpu, run_load, scaled, settle  # noqa: E402

WEB_ON = re.compile(r"web inbox on http://(\S+):(\d+)/")
WEB_PID = re.compile(r"web process (\d+) started")
MAILBOX = "rcpt@mx.test"            # where smtp-source sends everything
SUBSCRIBERS, READS_PER_S, BACKLOG = 50, 20, 100_000
RETENTION = 3600


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill_backlog(db: Database, count: int) -> None:
    """Rows older than the retention, in the table made as gsmtpd makes it (schema.sql)."""
    import pymysql
    conn = pymysql.connect(**db.params, database=db.name, autocommit=True)
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gsmtpd", "schema.sql")) as fh:
        conn.cursor().execute(fh.read())
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - RETENTION - 600))
    with conn.cursor() as cur:
        for start in range(0, count, 5000):
            rows = [(date, "old@mx.test", "old", b"Subject: old\r\n\r\nold\r\n", uuid.uuid4().hex, "old@mx.test")
                    for _ in range(min(5000, count - start))]
            cur.executemany("INSERT INTO new_mail (`date`, `to`, body_text, mail, hash, recipient) "
                            "VALUES (%s, %s, %s, %s, %s, %s)", rows)
    conn.close()


def count_old(db: Database) -> int:
    return db._query("SELECT COUNT(*) FROM new_mail WHERE `to` = 'old@mx.test'", db.name)[0][0]


class Subscriber(threading.Thread):
    def __init__(self, host: str, port: int, address: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port, self.address, self.stop_event = host, port, address, stop
        self.events = 0
        self.failed = ""

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", f"/api/mailboxes/{self.address}/events")
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.failed = repr(exc)
            return
        conn.sock.settimeout(1)         # so the thread notices the end of the run
        while not self.stop_event.is_set():
            try:
                line = response.readline()
            except (TimeoutError, OSError):
                continue
            if not line:
                return
            if line.startswith(b"id: "):
                self.events += 1
        conn.close()


class Reader(threading.Thread):
    """``per_s`` API reads a second on one keep-alive connection, at a steady pace."""

    def __init__(self, host: str, port: int, stop: threading.Event, per_s: int):
        super().__init__(daemon=True)
        self.host, self.port, self.stop_event, self.per_s = host, port, stop, per_s
        self.reads = self.errors = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        newest = None
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            path = (f"/api/mailboxes/{MAILBOX}/messages?limit=50" if newest is None or self.reads % 2 == 0
                    else f"/api/mailboxes/{MAILBOX}/messages/{newest}")
            began = time.monotonic()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    self.errors += 1
                elif b'"messages": [{"id": ' in body:
                    newest = int(body.split(b'"messages": [{"id": ', 1)[1].split(b",", 1)[0])
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            self.reads += 1
            self.latencies.append(time.monotonic() - began)
            next_at += 1.0 / self.per_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()


def quiet_cost(host: str, port: int, pid: int, reads: int = 200) -> float:
    """The web process's CPU per API read with no load beside it (the same reads as Reader:
    the newest page of 50 items, then one message, in turn)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", f"/api/mailboxes/{MAILBOX}/messages?limit=1")
    newest = int(conn.getresponse().read().split(b'"id": ', 1)[1].split(b",", 1)[0])
    before = cpu_of(pid)
    for n in range(reads):
        conn.request("GET", f"/api/mailboxes/{MAILBOX}/messages?limit=50" if n % 2 == 0
                     else f"/api/mailboxes/{MAILBOX}/messages/{newest}")
        conn.getresponse().read()
    conn.close()
    return (cpu_of(pid) - before) * 1000 / reads


def wait_log(path: str, pattern: re.Pattern, timeout: float = 30.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, errors="replace") as fh:
            found = pattern.search(fh.read())
        if found:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"{path}: no {pattern.pattern!r}")


def one_run(busy: bool, messages: int, args, workdir: str, db: Database) -> dict:
    db.truncate()
    # Both runs get the backlog (the same table, the same background work of InnoDB after
    # the inserts), before the start, so the busy run's first pass finds it.
    fill_backlog(db, args.backlog)
    old_before = count_old(db)
    settle()
    wl = WORKLOADS["W1"]
    extra = ["--max-clients", "1000", "--max-per-ip", "1000"]
    if busy:
        extra += ["--web", "127.0.0.1:0", "--retention", str(RETENTION)]
    server = Gsmtpd(workdir, "W1-web" if busy else "W1", db.url, extra)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    result: dict = {"busy": busy}
    try:
        if busy:
            host, port = wait_log(server.logfile, WEB_ON).groups()
            web_pid = int(wait_log(server.logfile, WEB_PID).group(1))
            subscribers = [Subscriber(host, int(port), MAILBOX if i < args.hot else f"quiet{i}@mx.test", stop)
                           for i in range(args.subscribers)]
            reader = Reader(host, int(port), stop, args.reads)
            threads = [*subscribers, reader] if args.reads else subscribers
            for thread in threads:
                thread.start()
            web_cpu = cpu_of(web_pid)
        db_cpu = mysqld_cpu()
        load = run_load(server.port, wl, messages, args.load_timeout)
        result["db_cpu_s"] = mysqld_cpu() - db_cpu
        if busy:
            result["web_cpu_s"] = cpu_of(web_pid) - web_cpu
            stop.set()
            for thread in threads:
                thread.join(5)
            result["purged_during_load"] = old_before - count_old(db)
            result["backlog"] = old_before
            result["events"] = sum(s.events for s in subscribers)
            result["streams_failed"] = sum(1 for s in subscribers if s.failed)
            result["reads"] = reader.reads
            result["read_errors"] = reader.errors
            result["read_p50_ms"] = statistics.median(reader.latencies) * 1000 if reader.latencies else None
            result["web_cpu_ms_per_read"] = result["web_cpu_s"] * 1000 / max(1, reader.reads)
            result["quiet_cpu_ms_per_read"] = quiet_cost(host, int(port), web_pid)
    finally:
        stop.set()
        server.stop()
    logged = server.log_counts()
    result.update(wall_s=load["wall_s"], acked=logged["acked"], msgs_per_s=logged["acked"] / load["wall_s"],
                  not_acked=messages - logged["acked"], rows_new=db.rows() - count_old(db))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of W1's 20000 messages")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=BACKLOG, help="old rows for retention to purge")
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS, help="event streams open")
    parser.add_argument("--reads", type=int, default=READS_PER_S, help="API reads a second")
    parser.add_argument("--hot", type=int, default=1,
                        help="how many of the streams watch W1's own mailbox (an event per message each)")
    parser.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306")
    parser.add_argument("--load-timeout", type=float, default=600.0)
    args = parser.parse_args()
    messages = scaled(WORKLOADS["W1"], args.scale)
    db = Database(args.mysql)
    db.create()
    runs: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gsmtpd-web-bench-") as workdir:
            for round_number in range(args.rounds):
                for busy in ((False, True) if round_number % 2 == 0 else (True, False)):
                    run = one_run(busy, messages, args, workdir, db)
                    runs.append(run)
                    print({k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()}, flush=True)
    finally:
        db.drop()
    alone = [r["msgs_per_s"] for r in runs if not r["busy"]]
    busy = [r["msgs_per_s"] for r in runs if r["busy"]]
    print(f"\nW1 ({messages} messages), {args.rounds} rounds, alternating:")
    print(f"  alone:                 {statistics.median(alone):7.0f} msgs/s (runs: {', '.join(f'{v:.0f}' for v in alone)})")
    print(f"  with web + retention:  {statistics.median(busy):7.0f} msgs/s (runs: {', '.join(f'{v:.0f}' for v in busy)})")
    print(f"  ratio (median busy / median alone): {statistics.median(busy) / statistics.median(alone):.3f}"
          "  (target: at least 0.90)")
    busy_runs = [r for r in runs if r["busy"]]
    print(f"  MariaDB CPU over the load: alone {statistics.median(r['db_cpu_s'] for r in runs if not r['busy']):.2f} s, "
          f"busy {statistics.median(r['db_cpu_s'] for r in busy_runs):.2f} s; web process CPU "
          f"{statistics.median(r['web_cpu_s'] for r in busy_runs):.2f} s (medians)")
    print(f"  web process CPU per API read: "
          f"{statistics.median(r['quiet_cpu_ms_per_read'] for r in busy_runs):.2f} ms with no load beside it; "
          f"{statistics.median(r['web_cpu_ms_per_read'] for r in busy_runs):.2f} ms counting all its CPU over the "
          f"load (event streams, polling and retention's queries included) against the reads it answered")
    print(f"  per busy run: reads {[r['reads'] for r in busy_runs]}, read errors {[r['read_errors'] for r in busy_runs]}, "
          f"events {[r['events'] for r in busy_runs]}, purged during the load "
          f"{[r['purged_during_load'] for r in busy_runs]} of {[r['backlog'] for r in busy_runs]}")
    lost = [r for r in runs if r["rows_new"] < r["acked"]]
    if lost:
        print("  LOST: a 250 without a row in", lost)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
