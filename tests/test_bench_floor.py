"""bench/floor.py, the do-nothing gevent server the bench compares gsmtpd with, still speaks
enough SMTP for smtp-source: a floor that ended DATA early would look faster than it is."""
from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys

import pytest

FLOOR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "floor.py")


@pytest.fixture
def floor_port():
    proc = subprocess.Popen([sys.executable, FLOOR, "--workers", "2"], stdout=subprocess.PIPE, text=True)
    try:
        found = re.search(r"listening on \S+ port (\d+)", proc.stdout.readline())
        assert found, "bench/floor.py did not say where it listens"
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_floor_reads_each_message_to_its_real_end(floor_port):
    # Dot lines inside the message, the terminator split from its CRLF: only <CRLF>.<CRLF>
    # ends it. A floor that stopped early would answer the rest of the text as commands.
    tricky = "line\r\n.. a stuffed dot\r\n.x\r\nlast.\r\n" + "y" * 70_000 + "\r\n"
    with smtplib.SMTP("127.0.0.1", floor_port, timeout=10) as client:
        for body in (tricky, "x" * 1_048_576, "short"):
            client.ehlo("client.test")
            assert client.mail("a@client.test")[0] == 250
            assert client.rcpt("b@mx.test")[0] == 250
            assert client.data(body)[0] == 250
        assert client.noop()[0] == 250
        assert client.docmd("QUIT")[0] == 221


def test_floor_serves_smtp_source_with_a_process_per_worker(floor_port):
    done = subprocess.run(["smtp-source", "-s", "4", "-m", "40", "-l", "4096", "-M", "client.test",
                           "-f", "a@client.test", "-t", "b@mx.test", f"127.0.0.1:{floor_port}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
