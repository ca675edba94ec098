"""Postfix's smtp-source, the load tool our users run, against a real server and MariaDB."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


@pytest.fixture
def smtp_source():
    if not shutil.which(SMTP_SOURCE):
        pytest.fail("smtp-source is missing: install Debian's postfix package (.ci/run does)")
    return SMTP_SOURCE


def test_smtp_source_10000_messages_20_sessions_store_exactly_10000_rows(mysql_store, gsmtpd_server, smtp_source):
    server = gsmtpd_server(mysql_store)
    result = subprocess.run([smtp_source, "-s", "20", "-m", "10000", "-l", "4096", "-f", "load@example.org",
                             "-t", "sink@test.org", f"{server.host}:{server.port}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert mysql_store.count() == 10000
    log = server.log()
    acknowledged = re.findall(r"message id=([0-9a-f]{32}) .* reply=250 ", log)
    assert len(acknowledged) == 10000
    stored = {row["hash"] for row in mysql_store.rows()}
    assert stored == set(acknowledged), "every 250 has its row and every row had its 250"


def test_smtp_source_into_sqlite_with_several_recipients(sqlite_store, gsmtpd_server, smtp_source):
    server = gsmtpd_server(sqlite_store)
    result = subprocess.run([smtp_source, "-s", "10", "-m", "500", "-r", "3", "-l", "2000", "-f", "load@example.org",
                             "-t", "sink@test.org", f"{server.host}:{server.port}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sqlite_store.count() == 1500
