"""bench/run.py --peer measures another SMTP server in the same run as smtp-sink and gsmtpd.
Its 250s come from what smtp-source did not see refused and its rows from the --peer-rows
query, so a peer that answers 250 and stores nothing must show every message lost, and a
peer that refuses every message must show none acked: otherwise a peer's rate could be
that of a server that drops mail, and the comparison would flatter it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, require_mysql

RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "run.py")


def sink_command(*options: str) -> str:
    # smtp-sink refuses to run as root without -u.
    user = "-u nobody " if os.geteuid() == 0 else ""
    return f"exec smtp-sink {user}{' '.join(options)} 127.0.0.1:{{port}} 256"


def test_peer_acked_rows_and_lost_come_from_what_it_did(tmp_path):
    require_mysql()
    for tool in ("smtp-sink", "smtp-source"):
        if shutil.which(tool) is None:
            reason = f"{tool} not installed (Debian: postfix)"
            if os.environ.get("CI") == "true":
                pytest.fail(reason + " (CI=true: this test must not skip)")
            pytest.skip(reason)
    out = tmp_path / "bench.json"
    mysql = f"mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{MYSQL_HOST}:{MYSQL_PORT}"
    done = subprocess.run(
        [sys.executable, RUN, "--only", "W1", "--scale", "0.001", "--no-latency", "--settle-max", "1",
         "--mysql", mysql, "--json", str(out),
         # A peer that says 250 to everything and stores nothing ("SELECT 0" rows).
         "--peer", "discards=" + sink_command(), "--peer-rows", "discards=SELECT 0",
         "--peer-reset", "discards=DO 0",
         # A peer that answers 450 to every final dot.
         "--peer", "refuses=" + sink_command("-r", "."), "--peer-rows", "refuses=SELECT 0"],
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr   # gsmtpd itself lost nothing
    w1 = json.loads(out.read_text())["workloads"]["W1"]
    messages = w1["gsmtpd"]["messages"]
    discards, refuses = w1["peers"]["discards"], w1["peers"]["refuses"]

    assert (discards["acked"], discards["rows"], discards["lost"]) == (messages, 0, messages)
    assert discards["msgs_per_s"] > 0
    assert (refuses["acked"], refuses["not_acked"], refuses["lost"]) == (0, messages, 0)
    assert refuses["msgs_per_s"] == 0

    assert f"W1 discards: LOST {messages}: 250s without a row" in done.stdout
    table = done.stdout[done.stdout.index("same run, every server"):]
    assert [line.split()[0] for line in table.splitlines()[3:7]] == ["W1", "discards", "refuses", "gsmtpd"]
