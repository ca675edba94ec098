"""Instructions per message of one gsmtpd process under smtp-source, counted by callgrind.

The bench's msgs/s and CPU ms/msg move by 20-30 % from run to run on a shared 2-core
machine; an instruction count does not (within 2-3 %: how messages fall into batches
still varies), so it can tell a 3 % change in the hot path. It counts user-space work
only: system calls and page faults are not in it (compare those with strace -c).

    python bench/instructions.py                  # the work tree, W1-like: 600 msgs, 10 sessions
    python bench/instructions.py --rev HEAD~3     # gsmtpd/ as of a commit
    python bench/instructions.py --reuse          # one connection per session (smtp-source -d)

Needs valgrind, smtp-source and the MariaDB of bench/run.py (a database is made and
dropped). The server runs with --workers 1 under valgrind, about 50 times slower, so it
is warmed up with 50 messages and only the load's instructions are counted
(--instr-atstart=no, then callgrind_control -i on / off).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import LISTENING, export_rev, source_argv  # noqa: E402  (bench/run.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARM_UP = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="count gsmtpd/ as of this commit instead of the work tree")
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096, help="message size (smtp-source -l)")
    parser.add_argument("--reuse", action="store_true", help="smtp-source -d: every session keeps its connection")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="gsmtpd-instructions-")
    source = export_rev(args.rev, workdir) if args.rev else ROOT
    database = f"gsmtpd_instr_{os.getpid()}"
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {database}")
    log = os.path.join(workdir, "log.txt")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/callgrind.%p",
         sys.executable, "-m", "gsmtpd", "--port", "0", "--listen", "127.0.0.1", "--workers", "1",
         "--max-per-ip", "1000", "--timeout", "300", "--allowed-hosts", "*",
         "--store", f"mysql://root@127.0.0.1:3306/{database}", "--logfile", log],
        cwd=workdir, env=dict(os.environ, PYTHONPATH=source), stderr=subprocess.DEVNULL)
    try:
        port = wait_for_port(log, deadline=time.monotonic() + 120)
        def load(messages: int) -> list[str]:
            return source_argv(port, args.size, args.sessions, messages, keep_connection=args.reuse)
        subprocess.run(load(WARM_UP), check=True, timeout=600)
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        subprocess.run(load(args.messages), check=True, timeout=1200)
        time.sleep(1)      # the last commits
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
        admin.cursor().execute(f"DROP DATABASE {database}")
    (profile,) = glob.glob(f"{workdir}/callgrind.*")
    total = int(re.search(r"^totals: (\d+)", open(profile).read(), re.M).group(1))
    acked = len(re.findall(r"reply=250", open(log).read())) - WARM_UP
    print(f"{total / acked / 1000:.1f}k instructions a message ({acked} messages; "
          f"callgrind_annotate {profile} for where)")
    return 0


def wait_for_port(log: str, deadline: float) -> int:
    while time.monotonic() < deadline:
        if os.path.exists(log):
            found = LISTENING.search(open(log).read())
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise SystemExit("gsmtpd did not start under valgrind")


if __name__ == "__main__":
    sys.exit(main())
