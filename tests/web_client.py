"""Test helpers for the web side: a standalone ``gsmtpd web`` process, a tiny HTTP client
on http.client, and an event-stream reader. Real sockets, real processes."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

from conftest import ROOT

WEB_ON = re.compile(r"web inbox on http://(\S+):(\d+)/")


def wait_web_url(read_log, proc=None, timeout: float = 15.0) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = WEB_ON.search(read_log())
        if match:
            return match.group(1), int(match.group(2))
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gsmtpd web exited with {proc.returncode}: {read_log()}")
        time.sleep(0.05)
    raise RuntimeError("no 'web inbox on' line: " + read_log())


class WebProcess:
    """``gsmtpd web --store URL --listen 127.0.0.1:0`` on its own."""

    def __init__(self, tmp_path, store_url: str, *options: str, listen: str = "127.0.0.1:0"):
        self.log_path = tmp_path / f"web-{uuid.uuid4().hex[:6]}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gsmtpd", "web", "--store", store_url, "--listen", listen,
             "--logfile", str(self.log_path), "--allowed-hosts", "test.org", *options],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.host, self.port = wait_web_url(self.log, self.proc) if listen else (None, None)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Client:
    def __init__(self, host: str, port: int, token: str = ""):
        self.host, self.port, self.token = host, port, token

    def request(self, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            headers = dict(headers or {})
            if self.token:
                headers.setdefault("Authorization", f"Bearer {self.token}")
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, expect: int = 200):
        status, headers, body = self.request(method, path)
        assert status == expect, (status, body)
        assert headers["content-type"] == "application/json", headers
        return json.loads(body)

    def messages(self, address: str, query: str = "") -> list[dict]:
        return self.json("GET", f"/api/mailboxes/{quote(address)}/messages{query}")["messages"]

    def events(self, address: str, last_event_id: int | None = None,
               receive_buffer: int | None = None) -> "EventStream":
        return EventStream(self, address, last_event_id, receive_buffer)


class SmallWindowConnection(http.client.HTTPConnection):
    """``receive_buffer``: the socket's receive buffer, set before connecting (so the window
    stays that small): a client that does not read for a while soon makes the server's writes
    wait, as a slow one does across a real network."""

    def __init__(self, host: str, port: int, timeout: float, receive_buffer: int | None):
        super().__init__(host, port, timeout=timeout)
        self.receive_buffer = receive_buffer

    def connect(self) -> None:
        if self.receive_buffer is None:
            return super().connect()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


class EventStream:
    """An open text/event-stream; ``next_event()`` reads up to the next event."""

    def __init__(self, client: Client, address: str, last_event_id: int | None,
                 receive_buffer: int | None = None):
        self.conn = SmallWindowConnection(client.host, client.port, timeout=10, receive_buffer=receive_buffer)
        headers = {"Accept": "text/event-stream"}
        if client.token:
            headers["Authorization"] = f"Bearer {client.token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", f"/api/mailboxes/{quote(address)}/events", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type").startswith("text/event-stream")

    def next_event(self) -> dict:
        """The next event's fields; raises TimeoutError when none comes within the timeout."""
        fields: dict = {}
        while True:
            line = self.response.readline().decode()
            if not line:
                raise ConnectionError("stream closed")
            line = line.rstrip("\n")
            if not line:
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    def close(self) -> None:
        self.conn.close()
