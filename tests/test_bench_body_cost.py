"""bench/body_cost.py, which backs the choice to send a message's body rather than derive it
on the server (mysql_store.py), still measures what it says: its derived rows must be the
sent rows, or its "derived" number would be that of some other, cheaper row."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from reliability import mariadb

BODY_COST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "body_cost.py")


def test_body_cost_stores_the_same_row_every_way():
    reason = mariadb.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: this test must not skip)")
        pytest.skip(reason)
    done = subprocess.run([sys.executable, BODY_COST, "--messages", "3", "--rounds", "1", "--size", "200000"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "derived rows equal to the sent row: 3 of 3" in done.stdout
    medians = re.search(r"median db ms/msg: sent ([\d.]+), sliced ([\d.]+), no body ([\d.]+), generated ([\d.]+), derived ([\d.]+)",
                        done.stdout)
    assert medians, done.stdout
