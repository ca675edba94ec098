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
load, events and polling included, divided by the reads it answered); each hot stream's
events against the rows stored in W1's mailbox (exit 1 when one is missing or repeated);
the CPU per message of gsmtpd, MariaDB, the web process, smtp-source and this process, and
the ratio those would give on a machine busy with this bench alone. For the breakdown:
--subscribers 0, --reads 0, --hot 0, --no-retention, --no-web (retention only).
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procstat import cpu_seconds, descendants  # noqa: E402
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


def smtp_cpu(master: int, web_pid: int | None) -> float:
    """CPU seconds of gsmtpd's master and SMTP workers (the web process left out)."""
    return sum(cpu_seconds(pid) or 0.0 for pid in descendants(master) if pid != web_pid)


def children_cpu() -> float:
    """CPU seconds of this process's finished children: the smtp-source runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def count_mailbox(db: Database) -> int:
    return db._query(f"SELECT COUNT(*) FROM new_mail WHERE `to` = '{MAILBOX}'", db.name)[0][0]


def mailbox_ids(db: Database) -> list[int]:
    return [row[0] for row in db._query(f"SELECT mail_id FROM new_mail WHERE `to` = '{MAILBOX}' "
                                        "ORDER BY mail_id", db.name)]


def missing_ranges(stored: list[int], got: set[int], shown: int = 8) -> str:
    """The first ``shown`` runs of stored ids a stream did not get, as 'first-last'."""
    runs: list[list[int]] = []
    for mail_id in stored:
        if mail_id in got:
            continue
        if runs and runs[-1][1] == mail_id - 1:
            runs[-1][1] = mail_id
        else:
            runs.append([mail_id, mail_id])
    return f"{len(runs)} runs: " + " ".join(f"{a}-{b}" for a, b in runs[:shown])


def count_old(db: Database) -> int:
    return db._query("SELECT COUNT(*) FROM new_mail WHERE `to` = 'old@mx.test'", db.name)[0][0]


class Subscriber(threading.Thread):
    """One event stream, read from a plain socket. (http.client's reader cannot be read
    again after a timeout: each later read raised "cannot read from timed out object", so
    the first quiet second ended the count at a few events and left the thread spinning on
    that error: the 50 streams' threads took 11.0 s of CPU in 10.8 s, a core of the two
    taken from the server being measured; that, not the read side, made most of the ratio's
    0.56-0.68 before.)"""

    def __init__(self, host: str, port: int, address: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port, self.address, self.stop_event = host, port, address, stop
        self.events = 0
        self.ids: set[int] = set()
        self.failed = ""
        self.closed = False
        self.open = threading.Event()   # the stream's first bytes came: it is subscribed

    def run(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=10)
            sock.sendall(f"GET /api/mailboxes/{self.address}/events HTTP/1.1\r\nHost: bench\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
        except OSError as exc:
            self.failed = repr(exc)
            return
        sock.settimeout(1)              # so the thread notices the end of the run
        pending = b""
        with sock:
            while not self.stop_event.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    self.failed = repr(exc)
                    return
                if not data:
                    self.closed = True
                    return
                self.open.set()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:      # each event is written whole, inside one chunk
                    if line.startswith(b"id: "):
                        self.events += 1
                        self.ids.add(int(line[4:]))


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
    web = busy and not args.no_web
    if web:
        extra += ["--web", "127.0.0.1:0"]
    if busy and not args.no_retention:
        extra += ["--retention", str(RETENTION)]
    server = Gsmtpd(workdir, "W1-web" if busy else "W1", db.url, extra)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    result: dict = {"busy": busy}
    try:
        subscribers: list[Subscriber] = []
        reader = None
        if web:
            host, port = wait_log(server.logfile, WEB_ON).groups()
            subscribers = [Subscriber(host, int(port), MAILBOX if i < args.hot else f"quiet{i}@mx.test", stop)
                           for i in range(args.subscribers)]
            reader = Reader(host, int(port), stop, args.reads) if args.reads else None
            threads = [*subscribers, *([reader] if reader else [])]
            for thread in threads:
                thread.start()
            # The load starts once every stream is open: a stream opened later starts from
            # then, and the hot one would miss the messages before (not the server's fault).
            deadline = time.monotonic() + 30
            for subscriber in subscribers:
                subscriber.open.wait(max(0.0, deadline - time.monotonic()))
            result["streams_not_open"] = sum(1 for s in subscribers if not s.open.is_set())
        web_pid = None
        if busy:
            web_pid = int(wait_log(server.logfile, WEB_PID).group(1))
            web_cpu = cpu_of(web_pid)
        db_cpu, gsmtpd_cpu, source_cpu = mysqld_cpu(args.db_pids), smtp_cpu(server.pid, web_pid), children_cpu()
        client_cpu = time.process_time()
        load = run_load(server.port, wl, messages, args.load_timeout)
        result["db_cpu_s"] = mysqld_cpu(args.db_pids) - db_cpu
        result["gsmtpd_cpu_s"] = smtp_cpu(server.pid, web_pid) - gsmtpd_cpu
        result["source_cpu_s"] = children_cpu() - source_cpu
        result["client_cpu_s"] = time.process_time() - client_cpu
        if busy:
            result["web_cpu_s"] = cpu_of(web_pid) - web_cpu
            result["purged_during_load"] = old_before - count_old(db)     # now, not after the wait below
            result["backlog"] = old_before
        if web:
            # Every row of W1's mailbox must come as one event on each hot stream: wait for
            # the last ones (an event follows its 250 within about a second).
            hot = subscribers[:args.hot]
            stored = count_mailbox(db)
            deadline = time.monotonic() + 15
            while any(len(s.ids) < stored and not s.closed for s in hot) and time.monotonic() < deadline:
                time.sleep(0.1)
            result["hot_stored"] = stored
            result["hot_events"] = [s.events for s in hot]
            result["hot_distinct"] = [len(s.ids) for s in hot]
            result["hot_closed"] = sum(1 for s in hot if s.closed)
            if hot:
                result["hot_missing"] = missing_ranges(mailbox_ids(db), hot[0].ids)
            stop.set()
            for thread in threads:
                thread.join(5)
            result["events"] = sum(s.events for s in subscribers)
            result["streams_failed"] = sum(1 for s in subscribers if s.failed)
            result["reads"] = reader.reads if reader else 0
            result["read_errors"] = reader.errors if reader else 0
            result["read_p50_ms"] = statistics.median(reader.latencies) * 1000 if reader and reader.latencies else None
            result["web_cpu_ms_per_read"] = result["web_cpu_s"] * 1000 / max(1, result["reads"])
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
    parser.add_argument("--no-retention", action="store_true", help="the busy run without --retention")
    parser.add_argument("--no-web", action="store_true",
                        help="the busy run without --web (retention only: no streams, no reads)")
    parser.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306")
    parser.add_argument("--load-timeout", type=float, default=600.0)
    args = parser.parse_args()
    messages = scaled(WORKLOADS["W1"], args.scale)
    db = Database(args.mysql)
    db.create()
    args.db_pids = db.server_pids()   # this run's MariaDB, not every mariadbd on the machine
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
    if not args.no_web:
        print(f"  web process CPU per API read: "
              f"{statistics.median(r['quiet_cpu_ms_per_read'] for r in busy_runs):.2f} ms with no load beside it; "
              f"{statistics.median(r['web_cpu_ms_per_read'] for r in busy_runs):.2f} ms counting all its CPU over "
              f"the load (event streams, polling and retention's queries included) against the reads it answered")
    print(f"  per busy run: reads {[r.get('reads') for r in busy_runs]}, read errors "
          f"{[r.get('read_errors') for r in busy_runs]}, events {[r.get('events') for r in busy_runs]}, purged "
          f"during the load {[r['purged_during_load'] for r in busy_runs]} of {[r['backlog'] for r in busy_runs]}")
    print(f"  bench client CPU over the load (smtp-source not counted): alone "
          f"{statistics.median(r['client_cpu_s'] for r in runs if not r['busy']):.2f} s, busy "
          f"{statistics.median(r['client_cpu_s'] for r in busy_runs):.2f} s")
    # On a machine shared with other work the wall-clock ratio swings with it; the CPU each
    # message cost, summed over everything that works for it, does not as much. Were the
    # machine given to this bench alone and busy, rates would go as the inverse of it.
    def per_message(run: dict) -> float:
        return (run["gsmtpd_cpu_s"] + run["db_cpu_s"] + run.get("web_cpu_s", 0.0) + run["source_cpu_s"]
                + run["client_cpu_s"]) * 1000 / max(1, run["acked"])
    for label, group in (("alone", [r for r in runs if not r["busy"]]), ("busy", busy_runs)):
        print(f"  CPU per message, {label}: " + ", ".join(
            f"{key} {statistics.median(r.get(key + '_cpu_s', 0.0) for r in group) * 1000 / messages:.2f} ms"
            for key in ("gsmtpd", "db", "web", "source", "client"))
            + f"; total {statistics.median(per_message(r) for r in group):.2f} ms")
    print(f"  CPU-bound estimate of the ratio (total CPU per message, alone / busy): "
          f"{statistics.median(per_message(r) for r in runs if not r['busy']) / statistics.median(per_message(r) for r in busy_runs):.3f}"
          " (MariaDB's CPU includes whatever else uses it meanwhile)")
    short = []
    if args.hot and args.subscribers and not args.no_web:
        for r in busy_runs:
            print(f"  hot streams: events {r['hot_events']} (distinct {r['hot_distinct']}) for {r['acked']} "
                  f"messages acked, {r['hot_stored']} stored in the mailbox; streams ended early: {r['hot_closed']}")
            if any(d < r["hot_stored"] for d in r["hot_distinct"]) or any(
                    e != d for e, d in zip(r["hot_events"], r["hot_distinct"])) or r["hot_closed"]:
                short.append(r)
    if short:
        print("  EVENTS: a hot stream missed or repeated events, or ended")
    lost = [r for r in runs if r["rows_new"] < r["acked"]]
    if lost:
        print("  LOST: a 250 without a row in", lost)
        return 1
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
