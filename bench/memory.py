"""Memory per message: one gsmtpd worker, K concurrent messages of S bytes, peak RSS.

    python bench/memory.py                       # 1 and 5 messages of 9 MiB, 1 and 100 recipients
    python bench/memory.py --count 10 --size 20000000 --mysql mysql://root:@127.0.0.1:PORT

Prints, per case, the worker's idle RSS, its peak RSS (VmHWM), (peak - idle) / (K * S), the
memory per message as a multiple of its size, and MariaDB's Bytes_received during the case
over K * S: the bytes sent to the database per byte of mail (about 1 when each message
crosses the wire once, about N when each of N recipients' rows carries it). Bytes_received
is the whole server's, so others using it at the same time add to it.
The server runs from this work tree (``--rev`` is not offered: use a second work tree).
"""
from __future__ import annotations

import argparse
import os
import re
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstat import status_kb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"ABCD\r\n"


def message(size: int) -> bytes:
    head = b"From: a@example.org\r\nSubject: memory\r\n\r\n"
    return head + LINE * max(1, (size - len(head)) // len(LINE))


def db_status(conn, name: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
        return int(cur.fetchone()[1])


def run_case(args, count: int, recipients: int) -> dict:
    import pymysql
    from urllib.parse import urlsplit
    parts = urlsplit(args.mysql)
    admin = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                            password=parts.password or "", autocommit=True)
    database = "gsmtpd_mem_" + uuid.uuid4().hex[:8]
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    workdir = tempfile.mkdtemp(prefix="gsmtpd-mem-")
    log_path = os.path.join(workdir, "log.txt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gsmtpd", "--port", "0", "--listen", "127.0.0.1", "--workers", "1",
         "--hostname", "mx.test", "--allowed-hosts", "test.org", "--logfile", log_path,
         "--max-size", str(args.size + 1_000_000), "--max-recipients", str(max(100, recipients)),
         "--save-timeout", "60", "--store", f"{args.mysql.rstrip('/')}/{database}", *args.server_arg],
        cwd=workdir, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            time.sleep(0.05)
            found = re.search(r"listening on \S+ port (\d+)", open(log_path).read() if os.path.exists(log_path) else "")
            port = int(found.group(1)) if found else None
        if port is None:
            raise SystemExit("gsmtpd did not start")
        time.sleep(0.3)
        idle_kb = status_kb(proc.pid, "VmRSS")
        data = message(args.size)
        to = [f"r{i}@test.org" for i in range(recipients)]
        replies: list = []
        before = db_status(admin, "Bytes_received")
        started = time.monotonic()

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
                try:
                    client.sendmail("a@example.org", to, data)
                    replies.append(250)
                except smtplib.SMTPException as exc:
                    replies.append(repr(exc)[:80])

        threads = [threading.Thread(target=send) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        received = db_status(admin, "Bytes_received") - before
        peak_kb = status_kb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(30)
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()
    held = (peak_kb - idle_kb) * 1024
    return {"count": count, "size": len(data), "recipients": recipients, "idle_mb": idle_kb / 1024,
            "peak_mb": peak_kb / 1024, "per_message_x": held / (count * len(data)),
            "db_bytes_per_message_x": received / (count * len(data)), "seconds": seconds,
            "replies": {r: replies.count(r) for r in set(replies)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306")
    parser.add_argument("--size", type=int, default=9 << 20, help="bytes per message")
    parser.add_argument("--count", type=int, action="append", help="concurrent messages (repeatable)")
    parser.add_argument("--recipients", type=int, action="append", help="recipients per message (repeatable)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra gsmtpd argument")
    args = parser.parse_args(argv)
    for count in args.count or [1, 5]:
        for recipients in args.recipients or [1, 100]:
            r = run_case(args, count, recipients)
            print(f"{r['count']} x {r['size'] / 1e6:.1f} MB to {r['recipients']} recipients: idle {r['idle_mb']:.0f} MB, "
                  f"peak {r['peak_mb']:.0f} MB, {r['per_message_x']:.2f} x size per message, "
                  f"DB bytes {r['db_bytes_per_message_x']:.2f} x size per message, {r['seconds']:.1f} s, "
                  f"replies {r['replies']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
