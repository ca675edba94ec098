"""Fault injection under load, bigger than the test run: every 250 must be a committed row.

Runs the scenarios of tests/reliability (kill -9 a worker, kill -9 the server, MariaDB stopped
and killed, a LOCK TABLES stall, SIGTERM, slow-drip clients, large mail) with bench-sized
numbers and prints, per scenario, sent / acked / stored / lost / duplicated, p50/p99 and the
scenario's own figures (replacement time, recovery time, peak RSS ...).

    python bench/reliability.py                       # everything: about 3 minutes
    python bench/reliability.py --only outage,stall   # a subset
    python bench/reliability.py --rate 800 --concurrency 100 --seconds 20 --slow 3000
    python bench/reliability.py --json out.json

Needs the shared MariaDB (GSMTPD_TEST_MYSQL_HOST/PORT/USER/PASSWORD, default root@127.0.0.1:3306;
each scenario gets a fresh database, dropped afterwards) and mariadb-install-db/mariadbd for
the scenarios that stop the database (outage, large): those run a throwaway MariaDB of their
own (own data directory, socket and port), never the shared one. Everything goes to
127.0.0.1 and stops by itself. Exit status 1 when any scenario lost, duplicated or wrongly
stored a message.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, GsmtpdProcess, MySQLStore  # noqa: E402
from reliability import mariadb, scenarios  # noqa: E402

NAMES = ["kill-worker", "kill-server", "outage", "outage-crash", "stall", "sigterm", "hostile", "large",
         "large-stored"]


class Servers:
    """What the gsmtpd_server fixture does, outside pytest."""

    def __init__(self, base: Path, extra: dict):
        self.base = base
        self.extra = extra
        self.started: list[GsmtpdProcess] = []

    def __call__(self, store, **options):
        server = GsmtpdProcess(self.base, store, {**options, **self.extra})
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
        self.started.clear()


class SharedDatabase:
    def __init__(self):
        import pymysql
        self.admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER,
                                     password=MYSQL_PASSWORD, autocommit=True)

    def fresh(self) -> MySQLStore:
        name = "gsmtpd_rel_" + uuid.uuid4().hex[:12]
        with self.admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return MySQLStore(name)

    def drop(self, store: MySQLStore) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{store.database}`")


def run(name: str, numbers: scenarios.Numbers, servers: Servers, shared: SharedDatabase,
        throwaway: "mariadb.ThrowawayMariaDB | None") -> scenarios.Result:
    if name in ("outage", "outage-crash", "large", "large-stored"):
        if throwaway is None:
            raise RuntimeError(mariadb.missing() or "no throwaway MariaDB")
        throwaway.start()
        store = mariadb.ThrowawayStore(throwaway, "rel_" + uuid.uuid4().hex[:12])
        if name.startswith("outage"):
            return scenarios.db_outage(servers, throwaway, store, numbers, crash=name == "outage-crash")
        try:
            return scenarios.large_mail(servers, throwaway, store, numbers,
                                        packet=numbers.large_packet if name == "large-stored" else None)
        finally:
            conn = throwaway.connect()
            with conn.cursor() as cur:
                cur.execute("SET GLOBAL max_allowed_packet = DEFAULT")
            conn.close()
    store = shared.fresh()
    try:
        function = {"kill-worker": scenarios.kill_worker, "kill-server": scenarios.kill_server,
                    "stall": scenarios.db_stall, "sigterm": scenarios.sigterm, "hostile": scenarios.hostile}[name]
        return function(servers, store, numbers)
    finally:
        servers.stop_all()
        shared.drop(store)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(NAMES))
    for field in dataclasses.fields(scenarios.Numbers):
        default = getattr(scenarios.BENCH, field.name)
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default), default=default,
                            help=f"default {default}")
    parser.add_argument("--gsmtpd-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="extra gsmtpd option for every server, e.g. batch_max=500")
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    numbers = scenarios.Numbers(**{f.name: getattr(args, f.name) for f in dataclasses.fields(scenarios.Numbers)})
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or NAMES
    unknown = set(chosen) - set(NAMES)
    if unknown:
        print(f"unknown scenarios: {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}", file=sys.stderr)
        return 2
    extra = dict(item.split("=", 1) for item in args.gsmtpd_arg)
    base = Path(tempfile.mkdtemp(prefix="gsmtpd-rel-"))
    servers = Servers(base, extra)
    shared = SharedDatabase()
    throwaway = None
    if {"outage", "outage-crash", "large", "large-stored"} & set(chosen) and not mariadb.missing():
        throwaway = mariadb.ThrowawayMariaDB()
        throwaway.start()
    results, failed = [], False
    try:
        for name in chosen:
            started = time.monotonic()
            print(f"--- {name}", flush=True)
            try:
                result = run(name, numbers, servers, shared, throwaway)
            except Exception as exc:  # one scenario's failure does not stop the others
                traceback.print_exc()
                results.append({"scenario": name, "error": f"{type(exc).__name__}: {exc}"})
                failed = True
                continue
            finally:
                servers.stop_all()
            print(result.text(), flush=True)
            problems = [p for report in result.reports for p in report.problems]
            for problem in problems:
                print(f"    PROBLEM: {problem}", flush=True)
            # Durations the tests do not assert (they measure the machine too): checked here.
            for target in result.timing_missed():
                print(f"    SLOW: missed '{target}'", flush=True)
            failed = failed or bool(problems)
            results.append({"scenario": name, "seconds": round(time.monotonic() - started, 1),
                            "figures": {k: str(v) for k, v in result.figures.items()},
                            "reports": [report.line() for report in result.reports], "problems": problems,
                            "timing_missed": result.timing_missed()})
    finally:
        if throwaway is not None:
            throwaway.close()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"numbers": dataclasses.asdict(numbers), "results": results}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
