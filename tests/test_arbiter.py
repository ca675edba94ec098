"""The prefork master: workers that really serve, are replaced when they die or hang, a boot
failure that stops everything, --workers 1 without a master, --user. Real processes, real
sockets on port 0, MariaDB and SQLite."""
from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import MYSQL_HOST, MYSQL_PORT, ROOT, SQLiteStore, message

pytestmark = pytest.mark.timeout(120)


# --- helpers (test_daemon.py uses them too)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_workers(server, count: int, timeout: float = 10.0) -> list[int]:
    return wait_until(lambda: (lambda kids: kids if len(kids) == count else None)(children(server.proc.pid)),
                      timeout, f"{count} workers")


def send(server, subject: str = "Hello", to: str = "bob@test.org") -> str:
    """One message; returns its queue id from the 250 reply."""
    with server.smtp() as client:
        client.ehlo()
        client.mail("alice@example.org")
        client.rcpt(to)
        code, text = client.data(message(subject=subject, to=to))
        assert code == 250, (code, text)
        return text.decode().rsplit(" ", 1)[1]


def served_by(server, queue_id: str) -> int:
    """The pid in the log line of that message."""
    match = server.wait_log(rf"\[(\d+)\] INFO gsmtpd\.session: message id={queue_id} ")
    return int(match.group(1))


# --- workers serve


def test_workers_serve_the_shared_listener_and_ps_tells_them_apart(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store, workers=2)
    workers = wait_workers(server, 2)
    assert title(server.proc.pid).startswith("gsmtpd: master [127.0.0.1:")
    assert all(title(pid) == "gsmtpd: worker" for pid in workers)
    # Stop one worker, and the other takes every connection; then the other way round.
    seen = {}
    for paused, running in (workers, workers[::-1]):
        os.kill(paused, signal.SIGSTOP)
        try:
            queue_id = send(server, f"via {running}")
        finally:
            os.kill(paused, signal.SIGCONT)
        seen[running] = served_by(server, queue_id)
    assert seen == {pid: pid for pid in workers}
    assert {row["subject"] for row in mysql_store.rows()} == {f"via {pid}" for pid in workers}
    assert len(re.findall(r"listening on 127\.0\.0\.1 port \d+", server.log())) == 1


def test_no_line_of_the_master_is_written_again_by_a_worker(sqlite_store, gsmtpd_server):
    """Lines wait in a buffer until the event loop's turn ends; a worker forked meanwhile
    must not inherit and write again what the master had not written yet."""
    server = gsmtpd_server(sqlite_store, workers=4)
    workers = wait_workers(server, 4)
    wait_until(lambda: "gsmtpd ready" in server.log(), 15, "ready")
    started = re.findall(r"\[(\d+)\] INFO \S+: worker (\d+) started", server.log())
    assert sorted(int(worker) for _, worker in started) == sorted(workers)
    assert {int(writer) for writer, _ in started} == {server.proc.pid}, "only the master says it"


def test_listening_is_logged_once_per_listener_with_the_real_port(sqlite_store, tmp_path):
    config = tmp_path / "two.toml"
    config.write_text('[[listener]]\naddress = "127.0.0.1:0"\n\n[[listener]]\naddress = "127.0.0.1:0"\n')
    log = tmp_path / "two.log"
    proc = subprocess.Popen([sys.executable, "-m", "gsmtpd", "--config", str(config), "--workers", "2",
                             "--allowed-hosts", "test.org", "--store", sqlite_store.url, "--logfile", str(log)],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_until(lambda: log.exists() and "gsmtpd ready" in log.read_text(), 15, "ready")
        ports = [int(p) for p in re.findall(r"listening on 127\.0\.0\.1 port (\d+)", log.read_text())]
        assert len(ports) == 2 and len(set(ports)) == 2 and 0 not in ports
        for port in ports:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                assert client.ehlo()[0] == 250
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


# --- a worker dies or hangs


def listening_socket(port: int) -> str:
    """The "socket:[inode]" link of the TCP socket listening on 127.0.0.1:port (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":      # 0A: LISTEN
            return f"socket:[{fields[9]}]"
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def open_files(pid: int) -> set[str]:
    links = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.add(os.readlink(fd))
        except FileNotFoundError:       # closed while we looked
            pass
    return links


def test_workers_do_not_hold_the_web_socket(sqlite_store, gsmtpd_server):
    """The master binds the web socket for the web process; an SMTP worker has no use for it,
    and holding it would keep the port open (and its backlog filling) after the web process
    and the master are gone."""
    server = gsmtpd_server(sqlite_store, web="127.0.0.1:0", workers=2)
    web = listening_socket(int(server.wait_log(r"web inbox on http://127\.0\.0\.1:(\d+)/").group(1)))
    workers = [int(pid) for pid in re.findall(r"worker (\d+) serving",
                                              server.wait_log(r"(?s)worker \d+ serving.*worker \d+ serving").string)]
    assert web in open_files(server.proc.pid)       # the master keeps it, to restart the web process
    web_process = int(server.wait_log(r"web process (\d+) started").group(1))
    wait_until(lambda: web in open_files(web_process), what="the web process holding the socket")
    assert [pid for pid in workers if web in open_files(pid)] == []
    os.kill(workers[0], signal.SIGKILL)             # a worker forked later does not get it either
    new = wait_until(lambda: [int(pid) for pid in re.findall(r"worker (\d+) serving", server.log())
                              if int(pid) not in workers], what="a new worker")
    assert [pid for pid in new if web in open_files(pid)] == []


def test_killed_worker_is_replaced_and_every_250_has_its_row(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store, workers=2)
    first = wait_workers(server, 2)
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def sender(n: int):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                acknowledged.append(send(server, f"s{n}-{i}"))
            except (smtplib.SMTPException, OSError, AssertionError) as exc:
                failures.append(repr(exc))   # cut off by the kill: no 250, so no promise
                time.sleep(0.05)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acknowledged) >= 20, 20, "20 messages before the kill")
        os.kill(first[0], signal.SIGKILL)
        server.wait_log(rf"worker {first[0]} was killed by SIGKILL; starting a new one")
        replaced = wait_until(lambda: (lambda k: k if len(k) == 2 and first[0] not in k else None)(
            children(server.proc.pid)), 10, "a replacement worker")
        assert first[1] in replaced
        count = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= count + 20, 20, "20 more messages after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    stored = {row["hash"] for row in mysql_store.rows()}
    assert set(acknowledged) <= stored, "a 250 without its row"
    assert len(failures) < 20, failures


def test_a_worker_whose_event_loop_is_stuck_is_killed_and_replaced(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=2, worker_timeout=2)
    workers = wait_workers(server, 2)
    os.kill(workers[0], signal.SIGSTOP)          # its loop no longer runs: no heartbeat
    server.wait_log(rf"worker {workers[0]} has not checked in for [\d.]+s \(event loop stuck\): killing it",
                    timeout=10)
    server.wait_log(rf"worker {workers[0]} was killed by SIGKILL; starting a new one")
    replaced = wait_workers(server, 2)
    assert workers[0] not in replaced and workers[1] in replaced
    assert not alive(workers[0])
    send(server, "after the hang")
    # Busy but alive workers are left alone: the heartbeat runs on the same loop as
    # sessions. Keep them busy for longer than worker_timeout (2 s), until the master has
    # checked each worker's heartbeat many times.
    busy_until = time.monotonic() + 3
    sent = 1
    while time.monotonic() < busy_until:
        send(server, "busy")
        sent += 1
    assert wait_workers(server, 2) == replaced
    assert len(re.findall(r"has not checked in", server.log())) == 1, "only the stopped worker was killed"
    assert [row["subject"] for row in sqlite_store.rows()] == ["after the hang"] + ["busy"] * (sent - 1)


# --- boot failure, no master, --user


def test_a_worker_that_cannot_boot_stops_the_server_with_the_reason(mysql_store, tmp_path):
    url = f"mysql://nobody_here:wrong@{MYSQL_HOST}:{MYSQL_PORT}/{mysql_store.database}"
    log = tmp_path / "boot.log"
    result = subprocess.run([sys.executable, "-m", "gsmtpd", "--listen", "127.0.0.1", "--port", "0",
                             "--workers", "3", "--store", url, "--logfile", str(log)],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    text = log.read_text()
    assert result.returncode == 1, text
    assert "Access denied" in text and "could not start (see above): stopping" in text
    assert "listening on" not in text, "nothing is announced when the workers cannot serve"
    assert "starting a new one" not in text
    assert len(re.findall(r"cannot start: ", text)) <= 3


def test_workers_1_runs_without_a_master(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=1)
    assert title(server.proc.pid).startswith("gsmtpd: single [127.0.0.1:")
    queue_id = send(server)
    assert served_by(server, queue_id) == server.proc.pid
    assert children(server.proc.pid) == []
    assert "gsmtpd.arbiter" not in server.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")
def test_user_nobody_with_an_sqlite_store_in_a_fresh_directory(gsmtpd_server):
    import pwd
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="gsmtpd-user-"))
    try:
        base.chmod(0o755)                          # nobody must be able to reach the store
        store = SQLiteStore(base / "data" / "mail.db")   # data/ is created by gsmtpd
        server = gsmtpd_server(store, workers=2, user="nobody")
        workers = wait_workers(server, 2)
        assert uid(server.proc.pid) == nobody.pw_uid
        assert all(uid(pid) == nobody.pw_uid for pid in workers)
        # An 8-bit charset: the codec is imported before the switch (the user cannot read /root).
        body = "Привет".encode("koi8-r")
        with server.smtp() as client:
            client.sendmail("a@example.org", ["bob@test.org"],
                            b"Subject: koi\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n" + body + b"\r\n")
        send(server, "as nobody")
        rows = store.rows()
        assert [r["subject"] for r in rows] == ["koi", "as nobody"]
        assert "Привет" in rows[0]["body"]
        for path in (base / "data", base / "data" / "mail.db", server.log_path):
            assert path.stat().st_uid == nobody.pw_uid, path
        assert "running as user nobody" in server.log()
        assert server.stop() == 0
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_unknown_user_fails_the_start(sqlite_store, tmp_path):
    result = subprocess.run([sys.executable, "-m", "gsmtpd", "--listen", "127.0.0.1", "--port", "0",
                             "--user", "no-such-user-here", "--store", sqlite_store.url],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot switch to user no-such-user-here: no such user" in result.stderr


def test_ttin_and_ttou_change_the_number_of_workers(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=2)
    first = wait_workers(server, 2)
    os.kill(server.proc.pid, signal.SIGTTIN)
    assert set(first) < set(wait_workers(server, 3))
    os.kill(server.proc.pid, signal.SIGTTOU)
    server.wait_log(r"SIGTTOU: now 2 workers")
    left = wait_workers(server, 2)
    assert first[0] not in left, "the oldest worker goes first"
    send(server, "after ttou")
