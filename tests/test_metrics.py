"""Prometheus metrics and /healthz, scraped from a real server during a real load."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import MYSQL_HOST, MYSQL_PORT, message
from tcp_proxy import TcpProxy
from test_arbiter import wait_until


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (labels in any order), 0 when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, number = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if metric == name and all(found.get(k) == v for k, v in labels.items()):
            return float(number)
    return 0.0


def test_counters_add_up_to_what_was_sent_across_workers(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store, workers=2, metrics="127.0.0.1:0", max_size=20000)
    metrics_port = server.metrics_port()
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    load = subprocess.Popen([smtp_source, "-s", "10", "-m", "600", "-l", "2000", "-f", "load@example.org",
                             "-t", "sink@test.org", f"{server.host}:{server.port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    during = []
    while load.poll() is None:               # scrape while the load runs
        status, text = scrape(metrics_port)
        assert status == 200
        during.append(value(text, "gsmtpd_messages_total", result="accepted", code="250"))
        time.sleep(0.2)
    assert load.wait(120) == 0
    # A refused one (too big) and a relaying attempt, so not every counter is the 250 one.
    with server.smtp() as client:
        client.ehlo()
        client.mail("a@example.org")
        client.rcpt("b@test.org")
        assert client.data(message(body="x" * 30000))[0] == 552

    def settled() -> str | None:
        """The scrape once the last session is counted and closed."""
        status, text = scrape(metrics_port)
        assert status == 200
        done = (value(text, "gsmtpd_messages_total", result="rejected", code="552") >= 1
                and value(text, "gsmtpd_connections_open") == 0)
        return text if done else None

    text = wait_until(settled, 10, "the last session in the metrics")
    assert value(text, "gsmtpd_messages_total", result="accepted", code="250") == 600 == mysql_store.count()
    assert value(text, "gsmtpd_messages_total", result="rejected", code="552") == 1
    assert value(text, "gsmtpd_recipients_total") == 600
    assert value(text, "gsmtpd_connections_total") >= 601
    assert value(text, "gsmtpd_batch_size_sum") == 600, "every stored message was in one counted batch"
    assert value(text, "gsmtpd_commit_seconds_count") == value(text, "gsmtpd_batch_size_count") > 0
    assert value(text, "gsmtpd_received_bytes_total") > 600 * 2000
    assert value(text, "gsmtpd_connections_open") == 0
    assert value(text, "gsmtpd_store_up") == 1
    pids = set(re.findall(r"\[(\d+)\] INFO gsmtpd\.session: message", server.log()))
    assert len(pids) == 2, "both workers took mail, and the scrape summed them"
    assert any(0 < seen < 600 for seen in during), "counters moved during the load"
    assert scrape(metrics_port, "/healthz") == (200, '{"store": "up"}\n')


def test_healthz_follows_the_store(mysql_store, gsmtpd_server):
    proxy = TcpProxy((MYSQL_HOST, MYSQL_PORT))
    proxy.start()
    mysql_store.url = f"mysql://root:@127.0.0.1:{proxy.port}/{mysql_store.database}"
    server = gsmtpd_server(mysql_store, workers=1, metrics="127.0.0.1:0", save_timeout=2)
    metrics_port = server.metrics_port()
    try:
        assert scrape(metrics_port, "/healthz")[0] == 200
        proxy.stop()
        with server.smtp() as client:            # the writer finds out on its next batch
            client.ehlo()
            client.mail("a@example.org")
            client.rcpt("b@test.org")
            assert client.data(message())[0] == 451
        status, body = scrape(metrics_port, "/healthz")
        assert (status, body) == (503, '{"store": "down"}\n')
        assert value(scrape(metrics_port)[1], "gsmtpd_storage_errors_total") >= 1
        proxy.start()
        deadline = time.monotonic() + 15
        while True:
            with server.smtp() as client:
                client.ehlo()
                client.mail("a@example.org")
                client.rcpt("b@test.org")
                if client.data(message())[0] == 250:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert scrape(metrics_port, "/healthz")[0] == 200
    finally:
        proxy.stop()


def test_no_metrics_endpoint_unless_asked(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=1)
    assert "metrics on http" not in server.log()
