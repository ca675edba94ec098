"""gsmtpd as a daemon: signals (TERM, INT, HUP, USR1), the pid file, sd_notify, JSON logs,
logrotate and supervisord with the files shipped in conf/. Real processes on port 0."""
from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import HOSTNAME, LISTENING, ROOT, GsmtpdProcess, RawClient, message
from test_arbiter import alive, children, send, wait_until, wait_workers

pytestmark = pytest.mark.timeout(120)


class Daemon(GsmtpdProcess):
    """gsmtpd with a config file (for HUP) and no --allowed-hosts on the command line, which
    would win over the file."""

    def __init__(self, tmp_path: Path, store, config: str, *args: str, env: dict | None = None):
        self.config_path = tmp_path / f"gsmtpd-{uuid.uuid4().hex[:6]}.toml"
        self.config_path.write_text(config)
        self.log_path = tmp_path / f"gsmtpd-{uuid.uuid4().hex[:6]}.log"
        self.store = store
        argv = [sys.executable, "-m", "gsmtpd", "--config", str(self.config_path), "--hostname", HOSTNAME,
                "--logfile", str(self.log_path), "--store", store.url, *args]
        self.proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.host, self.port = self._wait_listening()


@pytest.fixture
def daemon(tmp_path):
    started: list[Daemon] = []

    def start(store, config: str = "", *args: str, **kwargs) -> Daemon:
        config = config or 'listen = "127.0.0.1"\nport = 0\nallowed_hosts = ["test.org"]\n'
        started.append(Daemon(tmp_path, store, config, *args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def start_data(client: RawClient, to: str = "bob@test.org") -> None:
    """A session paused in the middle of its message."""
    assert client.reply().startswith("220")
    assert client.command("EHLO client.example").startswith("250")
    assert client.command("MAIL FROM:<alice@example.org>").startswith("250")
    assert client.command(f"RCPT TO:<{to}>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(message(subject="mid-DATA")[:40])


def queue_id(reply: str) -> str:
    assert reply.startswith("250 2.0.0 OK: queued as "), reply
    return reply.rsplit(" ", 1)[1]


# --- TERM, INT


@pytest.mark.parametrize("workers", [2, 1])
def test_term_lets_data_finish_gives_idle_sessions_421_and_exits_0(any_store, gsmtpd_server, tmp_path, workers):
    pid_file = tmp_path / "gsmtpd.pid"
    server = gsmtpd_server(any_store, workers=workers, pid_file=pid_file)
    assert pid_file.read_text().strip() == str(server.proc.pid)
    busy, idle = server.raw(), server.raw()
    start_data(busy)
    assert idle.reply().startswith("220") and idle.command("EHLO idle.example").startswith("250")

    server.proc.send_signal(signal.SIGTERM)
    assert idle.reply() == "421 4.3.0 Server shutting down, try again later"
    assert idle.closed()
    # The transfer goes on only once every process is stopping (the master and each worker
    # say so): busy and idle may be on different workers.
    wait_until(lambda: server.log().count("stopping: no new connections") == (workers + 1 if workers > 1 else 1),
               10, "every process to be stopping")
    busy.send(message(subject="mid-DATA")[40:] + b".\r\n")
    stored = queue_id(busy.reply())
    assert [r["subject"] for r in any_store.rows("hash = %s", (stored,))] == ["mid-DATA"]

    assert server.proc.wait(30) == 0
    log = server.log()
    assert re.search(r"INFO gsmtpd\.(arbiter|worker): stopped\n\Z", log), log[-2000:]
    assert not pid_file.exists(), "the pid file is removed on exit"
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=2)


@pytest.mark.parametrize("workers", [2, 1])
def test_term_lets_a_bdat_transaction_finish_as_data_does(any_store, gsmtpd_server, workers):
    """Between two chunks a BDAT session waits for a command, but its message is under way:
    on TERM it is not idle, its next chunks are read and LAST gets the 250 after the row."""
    server = gsmtpd_server(any_store, workers=workers)
    busy, idle = server.raw(), server.raw()
    assert busy.reply().startswith("220") and busy.command("EHLO busy.example").startswith("250")
    assert busy.command("MAIL FROM:<alice@example.org>").startswith("250")
    assert busy.command("RCPT TO:<bob@test.org>").startswith("250")
    content = message(subject="mid-BDAT")
    busy.send(b"BDAT 40\r\n" + content[:40])
    assert busy.reply() == "250 2.0.0 40 octets received"
    assert idle.reply().startswith("220") and idle.command("EHLO idle.example").startswith("250")

    server.proc.send_signal(signal.SIGTERM)
    assert idle.reply() == "421 4.3.0 Server shutting down, try again later"
    wait_until(lambda: server.log().count("stopping: no new connections") == (workers + 1 if workers > 1 else 1),
               10, "every process to be stopping")
    rest = content[40:]
    middle = len(rest) // 2
    busy.send(b"BDAT %d\r\n" % middle + rest[:middle])
    assert busy.reply() == f"250 2.0.0 {middle} octets received"
    busy.send(b"BDAT %d LAST\r\n" % (len(rest) - middle) + rest[middle:])
    stored = queue_id(busy.reply())
    assert [r["subject"] for r in any_store.rows("hash = %s", (stored,))] == ["mid-BDAT"]
    assert busy.command("NOOP") == "421 4.3.0 Server shutting down, try again later", \
        "the transaction done, the session ends as any other"
    assert server.proc.wait(30) == 0


def test_graceful_timeout_cuts_off_a_stalled_transfer(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=2, graceful_timeout=1)
    stalled = server.raw()
    start_data(stalled)
    server.proc.send_signal(signal.SIGTERM)
    # Within 20 s, where the default graceful_timeout (30 s) would still be waiting.
    assert server.proc.wait(20) == 0
    assert stalled.closed()
    assert sqlite_store.count() == 0


def test_int_is_a_quick_stop(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=2)
    workers = wait_workers(server, 2)
    stalled = server.raw()
    start_data(stalled)
    server.proc.send_signal(signal.SIGINT)
    # Within 10 s, where a graceful stop would give the stalled transfer 30 s.
    assert server.proc.wait(10) == 0
    assert "stopping now" in server.log()
    assert stalled.closed()
    assert not any(alive(pid) for pid in workers)


def test_int_during_a_graceful_stop_makes_it_quick(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=2, graceful_timeout=60)
    workers = wait_workers(server, 2)
    stalled = server.raw()
    start_data(stalled)
    server.proc.send_signal(signal.SIGTERM)
    server.wait_log("stopping: no new connections")
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(15) == 0, "not the 60 s of the graceful stop"
    assert "quick stop requested during the graceful one" in server.log()
    assert stalled.closed()
    assert not any(alive(pid) for pid in workers)


def test_workers_stop_when_the_master_is_killed(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=2)
    workers = wait_workers(server, 2)
    server.proc.kill()
    server.proc.wait(5)
    wait_until(lambda: not any(alive(pid) for pid in workers), 10, "orphaned workers to exit")


# --- HUP


def test_hup_reloads_allowed_hosts_and_keeps_established_sessions(mysql_store, daemon):
    server = daemon(mysql_store)
    before = server.raw()
    assert before.reply().startswith("220") and before.command("EHLO c").startswith("250")
    assert before.command("MAIL FROM:<a@example.org>").startswith("250")
    assert before.command("RCPT TO:<x@new.test>").startswith("550 5.7.1")
    assert before.command("RCPT TO:<bob@test.org>").startswith("250")

    server.config_path.write_text('listen = "127.0.0.1"\nport = 0\nallowed_hosts = ["test.org", "new.test"]\n')
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(re.findall(r"gsmtpd\.worker: configuration reloaded: allowed_hosts=test\.org,new\.test",
                                      server.log())) == 2, 10, "both workers to reload")
    after = server.raw()
    assert after.reply().startswith("220") and after.command("EHLO c").startswith("250")
    assert after.command("MAIL FROM:<a@example.org>").startswith("250")
    assert after.command("RCPT TO:<x@new.test>").startswith("250")

    # The session opened before the reload carries on and its message is stored.
    assert before.command("DATA").startswith("354")
    stored = queue_id(before.command(message(subject="across the reload") + b"."))
    assert [r["subject"] for r in mysql_store.rows("hash = %s", (stored,))] == ["across the reload"]
    assert server.proc.poll() is None and len(children(server.proc.pid)) == 2


def test_hup_with_a_bad_config_keeps_the_old_one(sqlite_store, daemon):
    server = daemon(sqlite_store)
    workers = wait_workers(server, 2)
    server.config_path.write_text('listen = "127.0.0.1"\nport = 0\nallowed_hosts = ["new.test"]\nmax_size = "big"\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"ERROR gsmtpd\.worker: reload failed, keeping the running configuration: .*max_size")
    client = server.raw()
    assert client.reply().startswith("220") and client.command("EHLO c").startswith("250")
    assert client.command("MAIL FROM:<a@example.org>").startswith("250")
    assert client.command("RCPT TO:<x@new.test>").startswith("550 5.7.1")
    assert client.command("RCPT TO:<bob@test.org>").startswith("250")
    assert children(server.proc.pid) == workers


def test_hup_without_a_master_reloads_too(sqlite_store, daemon):
    server = daemon(sqlite_store, "", "--workers", "1")
    server.config_path.write_text('listen = "127.0.0.1"\nport = 0\nallowed_hosts = ["new.test"]\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"configuration reloaded: allowed_hosts=new\.test")
    send(server, "to the new domain", to="x@new.test")
    server.config_path.write_text("max_size = -1\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"reload failed, keeping the running configuration: .*max_size")
    send(server, "still", to="x@new.test")


def test_hup_with_a_new_listener_starts_new_workers_and_old_sessions_finish(sqlite_store, daemon):
    one = '[[listener]]\naddress = "127.0.0.1:0"\n'
    server = daemon(sqlite_store, 'allowed_hosts = ["test.org"]\n' + one)
    old_workers = wait_workers(server, 2)
    before = server.raw()
    assert before.reply().startswith("220") and before.command("EHLO c").startswith("250")

    server.config_path.write_text('allowed_hosts = ["test.org"]\n' + one + "\n" + one)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"configuration reloaded: 2 new workers, 2 old ones finishing")
    ports = [int(p) for p in re.findall(r"listening on 127\.0\.0\.1 port (\d+)", server.log())]
    assert len(ports) == 2 and ports[0] == server.port
    wait_until(lambda: len(set(children(server.proc.pid)) - set(old_workers)) == 2, 10, "new workers")
    for port in ports:
        client = RawClient("127.0.0.1", port)
        assert client.reply().startswith("220")
        client.command("QUIT")
    # The session from before the reload is not dropped: its worker finishes it, then exits.
    assert before.command("MAIL FROM:<a@example.org>").startswith("250")
    assert before.command("RCPT TO:<bob@test.org>").startswith("250")
    assert before.command("DATA").startswith("354")
    queue_id(before.command(message(subject="old worker") + b"."))
    before.command("QUIT")
    wait_until(lambda: not any(alive(pid) for pid in old_workers), 10, "old workers to exit")
    assert [r["subject"] for r in sqlite_store.rows()] == ["old worker"]


# --- USR1, logrotate


def test_logrotate_with_the_shipped_config_moves_the_log_and_usr1_reopens_it(sqlite_store, gsmtpd_server, tmp_path):
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.path.exists(logrotate):
        pytest.fail("logrotate is missing: install Debian's logrotate package (tests/run does)")
    pid_file = tmp_path / "gsmtpd.pid"
    server = gsmtpd_server(sqlite_store, workers=2, pid_file=pid_file)
    workers = wait_workers(server, 2)
    send(server, "before rotation")
    shipped = (ROOT / "conf" / "logrotate.d" / "gsmtpd").read_text()
    assert "kill -USR1" in shipped and "\n    copytruncate" not in shipped
    rotate_conf = tmp_path / "logrotate.conf"
    rotate_conf.write_text(shipped.replace("/var/log/gsmtpd/gsmtpd.log", str(server.log_path))
                           .replace("/run/gsmtpd/gsmtpd.pid", str(pid_file))
                           .replace("create 0640 gsmtpd adm", "create 0640 root root"))
    result = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "logrotate.state"), str(rotate_conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    rotated = Path(str(server.log_path) + ".1")
    assert rotated.exists()
    # Master and both workers reopen; then the new lines go to the new file only.
    wait_until(lambda: len(re.findall(r"log file reopened", server.log())) == 3, 10, "3 processes to reopen")
    pids = {int(p) for p in re.findall(r"\[(\d+)\] INFO gsmtpd\.\w+: log file reopened", server.log())}
    assert pids == {server.proc.pid, *workers}
    send(server, "after rotation")
    server.wait_log(r"message id=\w+ .* reply=250")
    assert "before rotation" not in server.log()
    old = rotated.read_text()
    assert len(re.findall(r"message id=", old)) == 1 and len(re.findall(r"message id=", server.log())) == 1


# --- sd_notify, JSON logs


@pytest.mark.parametrize("workers,abstract", [(2, False), (1, True)])
def test_sd_notify_ready_reloading_stopping(sqlite_store, daemon, tmp_path, workers, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"gsmtpd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(10)
    try:
        server = daemon(sqlite_store, "", "--workers", str(workers), env={"NOTIFY_SOCKET": address})
        ready = sock.recv(4096).decode().split("\n")
        assert "READY=1" in ready and f"MAINPID={server.proc.pid}" in ready
        assert LISTENING.search(server.log()), "READY=1 comes once listening"
        send(server)
        server.proc.send_signal(signal.SIGHUP)
        assert sock.recv(4096) == b"RELOADING=1"
        assert sock.recv(4096) == b"READY=1"
        server.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert server.proc.wait(30) == 0
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            extra = sock.recv(4096)          # workers never notify
            raise AssertionError(f"unexpected notification {extra!r}")
    finally:
        sock.close()


def test_json_log_lines(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store, workers=2, log_format="json")
    queue = send(server, "json please")
    server.wait_log(r'"message": "disconnect ')
    entries = [json.loads(line) for line in server.log().splitlines()]
    assert all({"time", "level", "logger", "message", "pid"} <= set(e) for e in entries)
    line = next(e for e in entries if e["message"].startswith("message id="))
    assert line["id"] == queue and line["ip"] == "127.0.0.1" and line["from"] == "alice@example.org"
    assert line["to"] == "bob@test.org" and line["reply"] == f"250 2.0.0 OK: queued as {queue}"
    assert int(line["size"]) > 0 and line["level"] == "INFO" and line["logger"] == "gsmtpd.session"
    assert line["pid"] in children(server.proc.pid)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["time"])


# --- supervisord with conf/supervisord.conf


def test_supervisord_restarts_a_killed_gsmtpd_and_stops_it_gracefully(sqlite_store, tmp_path):
    supervisord = shutil.which("supervisord")
    if supervisord is None:
        pytest.fail("supervisord is missing: pip install -e '.[test]' installs it (tests/run does)")
    shipped = configparser.RawConfigParser()
    shipped.read(ROOT / "conf" / "supervisord.conf")
    program = dict(shipped["program:gsmtpd"])
    assert program["stopsignal"] == "TERM" and program["autorestart"] == "true"
    assert int(program["stopwaitsecs"]) > 30, "more than graceful_timeout"
    log = tmp_path / "gsmtpd.log"
    program.update({
        "command": f"{sys.executable} -m gsmtpd --listen 127.0.0.1 --port 0 --workers 2 --allowed-hosts test.org "
                   f"--store {sqlite_store.url} --logfile {log} --pid-file {tmp_path / 'gsmtpd.pid'}",
        "directory": str(tmp_path),
        "environment": f'PYTHONPATH="{ROOT}"',
        "stdout_logfile": str(tmp_path / "gsmtpd.out"),
        "startsecs": "1",
    })
    socket_path = tmp_path / "supervisor.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        f"[supervisord]\nlogfile={tmp_path / 'supervisord.log'}\npidfile={tmp_path / 'supervisord.pid'}\n"
        f"childlogdir={tmp_path}\nnodaemon=true\n\n"
        f"[unix_http_server]\nfile={socket_path}\n\n"
        f"[supervisorctl]\nserverurl=unix://{socket_path}\n\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        "[program:gsmtpd]\n" + "".join(f"{key}={value}\n" for key, value in program.items()))

    def ctl(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                              capture_output=True, text=True, timeout=60).stdout

    def listening_ports() -> list[int]:
        return [int(p) for p in re.findall(r"listening on 127\.0\.0\.1 port (\d+)", log.read_text())] \
            if log.exists() else []

    class Client:
        host = "127.0.0.1"

        def __init__(self, port):
            self.port = port

        def smtp(self):
            import smtplib
            return smtplib.SMTP(self.host, self.port, local_hostname="client.example", timeout=30)

    sup = subprocess.Popen([supervisord, "-c", str(conf)], cwd=tmp_path)
    try:
        wait_until(lambda: len(listening_ports()) == 1, 20, "gsmtpd under supervisord")
        first = send(Client(listening_ports()[0]), "first")
        pid = int(ctl("pid", "gsmtpd").strip())
        workers = children(pid)
        assert len(workers) == 2
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(listening_ports()) == 2, 20, "supervisord to start gsmtpd again")
        new_pid = int(ctl("pid", "gsmtpd").strip())
        assert new_pid != pid
        second = send(Client(listening_ports()[1]), "second")
        wait_until(lambda: not any(alive(p) for p in workers), 10, "the killed master's workers to exit")
        assert {r["hash"] for r in sqlite_store.rows()} == {first, second}

        assert "gsmtpd: stopped" in ctl("stop", "gsmtpd")
        assert not alive(new_pid)
        assert log.read_text().rstrip().endswith("INFO gsmtpd.arbiter: stopped")
        sup_log = (tmp_path / "supervisord.log").read_text()
        assert "stopped: gsmtpd (exit status 0)" in sup_log, sup_log
    finally:
        sup.terminate()
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
