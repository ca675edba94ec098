"""Shared fixtures: a real gsmtpd process on an ephemeral port, real MariaDB, real clients.

``gsmtpd_server(store=..., **options)`` starts ``python -m gsmtpd --port 0`` and learns the
port from its log line "listening on 127.0.0.1 port N". ``mysql_store`` gives a fresh MySQL
database for one test (dropped afterwards); in CI (CI=true) a missing MariaDB fails the
test instead of skipping it.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MYSQL_HOST = os.environ.get("GSMTPD_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("GSMTPD_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("GSMTPD_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("GSMTPD_TEST_MYSQL_PASSWORD", "")
HOSTNAME = "mx.test"
DOMAINS = "test.org,*.wild.test"
LISTENING = re.compile(r"listening on (\S+) port (\d+)")
METRICS_LISTENING = re.compile(r"metrics on http://(\S+):(\d+)/metrics")


# --- stores


class MySQLStore:
    def __init__(self, database: str):
        self.database = database
        self.url = f"mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{MYSQL_HOST}:{MYSQL_PORT}/{database}"

    def connect(self):
        import pymysql
        return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER,
                               password=MYSQL_PASSWORD, database=self.database, charset="utf8mb4",
                               autocommit=True)

    def rows(self, where: str = "1", args: tuple = ()) -> list[dict]:
        import pymysql.cursors
        conn = self.connect()
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(f"SELECT * FROM new_mail WHERE {where} ORDER BY mail_id", args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def count(self) -> int:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM new_mail")
                return cur.fetchone()[0]
        finally:
            conn.close()


class SQLiteStore:
    def __init__(self, path: Path):
        self.path = path
        self.url = f"sqlite:///{path}"

    def rows(self, where: str = "1", args: tuple = ()) -> list[dict]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            where = where.replace("%s", "?")
            return [dict(r) for r in conn.execute(f"SELECT * FROM new_mail WHERE {where} ORDER BY mail_id", args)]
        finally:
            conn.close()

    def count(self) -> int:
        return len(self.rows())


def start_after(prelude: str, tmp_path) -> subprocess.CompletedProcess:
    """Start gsmtpd (SQLite, port 0) in a Python that first runs ``prelude``, as gsmtpd would
    meet a library or a Python that changed, and wait for it to end (a start that works
    serves until killed: the tests that use this expect it to refuse)."""
    start = prelude + "from gsmtpd import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", start, "--port", "0", "--listen", "127.0.0.1",
                           "--store", f"sqlite:///{tmp_path / 'mail.db'}"],
                          cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)


def mysql_available() -> str | None:
    """None when MariaDB answers, else the reason."""
    try:
        import pymysql
        pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                        connect_timeout=3).close()
        return None
    except Exception as exc:  # any failure means: no usable MariaDB
        return f"MariaDB at {MYSQL_HOST}:{MYSQL_PORT} unreachable: {exc}"


def require_mysql() -> None:
    reason = mysql_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: MySQL tests must not skip)")
        pytest.skip(reason)


@pytest.fixture
def mysql_store():
    require_mysql()
    import pymysql
    name = "gsmtpd_test_" + uuid.uuid4().hex[:12]
    admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                            autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield MySQLStore(name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def sqlite_store(tmp_path):
    return SQLiteStore(tmp_path / "mail.db")


@pytest.fixture(params=["sqlite", "mysql"])
def any_store(request, tmp_path):
    """Runs a test once against SQLite and once against MariaDB."""
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "mail.db")
    return request.getfixturevalue("mysql_store")


# --- the server process


class GsmtpdProcess:
    def __init__(self, tmp_path: Path, store, options: dict):
        self.log_path = tmp_path / f"gsmtpd-{uuid.uuid4().hex[:6]}.log"
        self.store = store
        args = [sys.executable, "-m", "gsmtpd", "--listen", options.pop("listen", "127.0.0.1"),
                "--port", "0", "--hostname", HOSTNAME, "--allowed-hosts", DOMAINS,
                "--logfile", str(self.log_path), "--store", store.url]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.host, self.port = self._wait_listening()

    def _wait_listening(self, timeout: float = 15.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gsmtpd exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode()} {self.log()}")
            match = LISTENING.search(self.log())
            if match:
                return match.group(1), int(match.group(2))
            time.sleep(0.05)
        raise RuntimeError("gsmtpd did not start listening: " + self.log())

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"log has no {pattern!r}:\n{self.log()[-3000:]}")

    def listener_port(self, spec: str) -> int:
        """The port the server reports for the listener whose logged spec contains ``spec``
        ("tls=implicit", "proxy_protocol" ...): listeners bind port 0, the kernel picks."""
        return int(self.wait_log(rf"listening on \S+ port (\d+) \([^)]*{re.escape(spec)}[^)]*\)").group(1))

    def metrics_port(self) -> int:
        """The port of ``--metrics 127.0.0.1:0``, as the server reports it."""
        return int(self.wait_log(METRICS_LISTENING.pattern).group(2))

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    # --- clients

    def smtp(self, **kwargs):
        import smtplib
        client = smtplib.SMTP(self.host, self.port, local_hostname="client.example", timeout=30, **kwargs)
        return client

    def raw(self) -> "RawClient":
        return RawClient(self.host, self.port)


@pytest.fixture
def gsmtpd_server(tmp_path):
    """Factory: ``server = gsmtpd_server(store, max_size=1000)``; stopped after the test."""
    started: list[GsmtpdProcess] = []

    def start(store, **options) -> GsmtpdProcess:
        server = GsmtpdProcess(tmp_path, store, dict(options))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class RawClient:
    """A socket that sends bytes exactly as given and reads whole (multi-line) replies."""

    def __init__(self, host: str, port: int, timeout: float = 15.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One reply, all its lines joined by newlines, without CRLF."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed; got so far: " + repr(lines))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def start_data(self, helo: str = "HELO c", sender: str = "a@example.org", rcpt: str = "b@test.org") -> None:
        """Greeting, HELO, MAIL, RCPT and DATA, each answered as expected: ready for content."""
        assert self.reply().startswith("220 ")
        assert self.command(helo).startswith("250")
        assert self.command(f"MAIL FROM:<{sender}>") == "250 2.1.0 Sender OK"
        assert self.command(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Recipient OK"
        assert self.command("DATA").startswith("354 ")

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server has closed the connection (after anything still buffered)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


QUEUED = re.compile(r"^250 2\.0\.0 OK: queued as ([0-9a-f]{32})$")


def send(server, sender: str, recipients, data: bytes, options=()) -> str:
    """Send one message with smtplib (MAIL parameters in ``options``); every recipient
    and the data must get 250. Returns the queue id from the 250 reply."""
    with server.smtp() as client:
        client.ehlo()
        client.mail(sender, list(options))
        for rcpt in recipients:
            code, _ = client.rcpt(rcpt)
            assert code == 250, rcpt
        code, text = client.data(data)
        assert code == 250, text
        match = QUEUED.match(f"{code} {text.decode()}")
        assert match, text
        return match.group(1)


def message(subject: str = "Hello", body: str = "Just a test.\r\n", sender: str = "Alice <alice@example.org>",
            to: str = "bob@test.org", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
            f"{extra}\r\n{body}").encode()
