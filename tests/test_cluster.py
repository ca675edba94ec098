"""Scale-out: clients -> HAProxy (send-proxy-v2) -> two gsmtpd nodes -> a three-member Galera cluster.

Everything is real and on loopback: three mariadbd members (tests/galera.py), two gsmtpd
nodes of two workers each whose store URLs list the members in different orders (node A by
TCP: m1, m2, m3; node B by Unix socket: m2, m3, m1), and HAProxy spreading the clients over
the nodes with a PROXY v2 header and an SMTP health check. The load client sends from
127.0.0.2, so a row whose ip_addr is 127.0.0.2 came through the PROXY header, not from
HAProxy's own connection.

Each scenario breaks one thing under load and then holds every reply against the rows read
from a member that stayed up: nothing acknowledged is missing (lost = 0), nothing refused
is stored unless the node logged it in doubt, nothing is stored twice. The cluster and the
nodes are started once for the module; each scenario first makes them whole again.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import galera
from conftest import GsmtpdProcess
from reliability.loadclient import Load, check, in_doubt, process_tree
from reliability.scenarios import FIGURES
from test_members import started_answering_451

DATABASE = "gsmtpd"
SAVE_TIMEOUT = 6.0
FAIL_BACK_AFTER = 3.0
CLIENT = "127.0.0.2"          # the load's source address: what ip_addr must say
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def _require_cluster() -> None:
    reason = galera.missing() or (None if os.access(HAPROXY, os.X_OK) else "haproxy is not installed")
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: the cluster tests must not skip)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    _require_cluster()
    members = galera.GaleraCluster(3)
    try:
        members.start()      # a cluster that cannot start fails here, in CI and out of it
        members.members[0].query(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
        yield members
    finally:
        members.close()


class Store:
    """What GsmtpdProcess and check() need: a URL, and a connection to a member that is up."""

    def __init__(self, cluster: galera.GaleraCluster, url: str):
        self.cluster = cluster
        self.url = url

    def connect(self):
        for member in self.cluster.members:
            if member.in_primary():
                return member.connect(DATABASE)
        raise AssertionError("no member is Synced in the primary component")


class Deployment:
    """Two gsmtpd nodes and HAProxy in front of them."""

    def __init__(self, cluster: galera.GaleraCluster | None, base: Path, urls: dict[str, str] | None = None):
        self.cluster = cluster
        self.base = base
        self.urls = urls or self.cluster_urls(cluster)
        self.nodes: dict[str, GsmtpdProcess] = {}
        self.haproxy: subprocess.Popen | None = None
        self.port = 0
        config = base / "gsmtpd.toml"
        config.write_text('[[listener]]\naddress = "127.0.0.1:0"\nproxy_protocol = true\n')
        self.options = dict(config=config, workers=2, save_timeout=SAVE_TIMEOUT, trusted_networks="127.0.0.1/32",
                            max_per_ip=1000, fail_back_after=FAIL_BACK_AFTER, metrics="127.0.0.1:0")

    @staticmethod
    def cluster_urls(cluster: galera.GaleraCluster) -> dict[str, str]:
        m1, m2, m3 = cluster.members
        return {
            "A": f"mysql://root:@{m1.host_spec},{m2.host_spec},{m3.host_spec}/{DATABASE}",
            "B": f"mysql://root:@{m2.socket_spec},{m3.socket_spec},{m1.socket_spec}/{DATABASE}",
        }

    def start_node(self, name: str) -> GsmtpdProcess:
        directory = self.base / name
        directory.mkdir(exist_ok=True)
        node = GsmtpdProcess(directory, Store(self.cluster, self.urls[name]), dict(self.options))
        self.nodes[name] = node
        return node

    def kill_node(self, name: str) -> None:
        """kill -9 the node's master and workers at once."""
        node = self.nodes[name]
        for pid in process_tree(node.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.proc.wait(10)

    def start_haproxy(self, attempts: int = 10) -> None:
        """HAProxy cannot bind port 0: a free-looking port, another one if it is taken."""
        self.stop_haproxy()
        for _ in range(attempts):
            port = galera.random.randrange(20000, 32000)
            config = self.base / "haproxy.cfg"
            config.write_text(haproxy_config(port, [(n, p.port) for n, p in sorted(self.nodes.items())]))
            proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            if self._wait_up(proc, port):
                self.haproxy, self.port = proc, port
                return
            proc.kill()
            proc.wait(5)
        raise RuntimeError("HAProxy found no free port")

    @staticmethod
    def _wait_up(proc: subprocess.Popen, port: int, timeout: float = 10.0) -> bool:
        """True once HAProxy answers with a node's greeting; False when it exited (port taken)."""
        import socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    if sock.recv(100).startswith(b"220 "):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop_haproxy(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        self.haproxy = None

    def logs(self) -> str:
        return "".join(node.log() for node in self.nodes.values())

    def metric(self, name: str) -> float:
        """A metric summed over both nodes, from their /metrics."""
        total = 0.0
        for node in self.nodes.values():
            address = re.search(r"metrics on (http://\S+/metrics)", node.log()).group(1)
            text = urllib.request.urlopen(address, timeout=10).read().decode()
            total += sum(float(value) for value in re.findall(rf"^{name} (\S+)$", text, re.M))
        return total

    def close(self) -> None:
        self.stop_haproxy()
        for node in self.nodes.values():
            node.stop()


def haproxy_config(port: int, nodes: list[tuple[str, int]]) -> str:
    """As conf/haproxy.cfg, on loopback, with checks quick enough for a test."""
    servers = "\n".join(f"    server node{name} 127.0.0.1:{node_port} send-proxy-v2 check check-send-proxy "
                        f"inter 500ms fall 2 rise 2" for name, node_port in nodes)
    return f"""global
    log stderr format raw local0 warning
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
frontend smtp
    bind 127.0.0.1:{port}
    default_backend gsmtpd
backend gsmtpd
    balance roundrobin
    option smtpchk EHLO haproxy.check
{servers}
"""


@pytest.fixture(scope="module")
def deployment(cluster, tmp_path_factory):
    deploy = Deployment(cluster, tmp_path_factory.mktemp("deploy"))
    try:
        deploy.start_node("A")
        deploy.start_node("B")
        deploy.start_haproxy()
        yield deploy
    finally:
        deploy.close()


@pytest.fixture
def whole(cluster, deployment):
    """Every member Synced, both nodes running, HAProxy in front of both."""
    cluster.heal()
    restarted = False
    for name, node in deployment.nodes.items():
        if node.proc.poll() is not None:
            deployment.start_node(name)
            restarted = True
    if restarted or deployment.haproxy is None or deployment.haproxy.poll() is not None:
        deployment.start_haproxy()
    return deployment


def load(deploy: Deployment, seconds: float, rate: float = 150.0) -> Load:
    return Load(("127.0.0.1", deploy.port), rate=rate, concurrency=20, duration=seconds, size=2000,
                per_connection=5, timeout=30, sources=[CLIENT], run_id="cl-" + uuid.uuid4().hex[:8]).start()


def verify(deploy: Deployment, run: Load, name: str, fault_at: float | None = None, **figures) -> dict:
    """Hold every reply of the run against the rows on a member that is up."""
    attempts = run.wait()
    store = Store(deploy.cluster, "")
    report = check(attempts, store.connect, run.run_id, name, doubtful=in_doubt(deploy.logs()))
    conn = store.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT ip_addr FROM new_mail WHERE subject LIKE %s", (run.run_id + " %",))
        addresses = {row[0] for row in cur.fetchall()}
    conn.close()
    if fault_at is not None:
        figures["longest_gap_after_fault"] = f"{ack_gap(attempts, fault_at):.2f}s"
    text = report.line() + " " + " ".join(f"{k}={v}" for k, v in figures.items())
    FIGURES.append(text)
    print(text)
    assert report.problems == [], text
    assert report.acked > 0, text
    assert addresses == {CLIENT}, f"stored ip_addr {addresses}, the client was {CLIENT}"
    return {"report": report, "attempts": attempts}


def ack_gap(attempts, since: float) -> float:
    """The longest time after ``since`` without a 250: how long the fault stopped the mail."""
    times = sorted(a.ended for a in attempts if a.acked and a.ended >= since)
    points = [since, *times]
    return max((b - a for a, b in zip(points, points[1:])), default=0.0)


# --- what ships


def test_shipped_haproxy_and_galera_configs_are_read_as_meant():
    _require_cluster()
    conf = Path(__file__).resolve().parent.parent / "conf"
    checked = subprocess.run([HAPROXY, "-c", "-f", str(conf / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    effective = subprocess.run([galera.MARIADBD, f"--defaults-file={conf / 'galera' / 'galera.cnf'}",
                                "--user=mysql", "--verbose", "--help"], capture_output=True, text=True, timeout=60)
    values = dict(line.split(None, 1) for line in effective.stdout.splitlines() if line and not line[0].isspace()
                  and len(line.split(None, 1)) == 2)
    assert values["wsrep-on"].strip() == "TRUE"
    assert values["binlog-format"].strip() == "ROW"
    assert values["innodb-autoinc-lock-mode"].strip() == "2"
    assert values["wsrep-provider"].strip().endswith("libgalera_smm.so")
    assert values["wsrep-cluster-address"].strip().startswith("gcomm://")


# --- the scenarios (numbers as in the issue)


def test_1_kill_one_gsmtpd_node(whole):
    """kill -9 node A mid-load: HAProxy takes it out, new sessions go to node B; lost 0."""
    run = load(whole, 8)
    time.sleep(2)                       # load before the fault
    killed_at = time.monotonic()
    whole.kill_node("A")
    result = verify(whole, run, "kill -9 gsmtpd node", killed_at)
    assert sum(1 for a in result["attempts"] if a.acked and a.dot_at > killed_at + 2) > 0


def test_2_kill_the_member_a_node_writes_to(whole, cluster):
    """kill -9 m1, node A's member: A fails over to the next member, lost 0; m1 rejoins,
    catches up by IST (the write-sets it missed, from a donor's gcache), and A returns to it once it has been ready for FAIL_BACK_AFTER seconds."""
    m1 = cluster.members[0]
    run = load(whole, 8)
    time.sleep(2)
    killed_at = time.monotonic()
    m1.kill()
    verify(whole, run, "kill -9 member m1", killed_at)
    whole.nodes["A"].wait_log(rf"database member 127\.0\.0\.1:{m1.ports['sql']} is down")
    whole.nodes["A"].wait_log(r"database member 127\.0\.0\.1:\d+ in use instead of 127\.0\.0\.1:"
                              rf"{m1.ports['sql']}")
    logged = m1.error_log.stat().st_size
    m1.start()
    cluster.wait_synced(want=3)
    assert "IST received" in m1.log_tail(chars=1 << 20, since=logged), "m1 did not catch up by IST"
    rows_m1 = m1.query("SELECT COUNT(*) FROM new_mail", DATABASE)[0][0]
    rows_m2 = cluster.members[1].query("SELECT COUNT(*) FROM new_mail", DATABASE)[0][0]
    assert rows_m1 == rows_m2, "the member that came back has not caught up"
    # Back to the preferred member: needs batches to write, and probes to see m1 ready.
    again = load(whole, 3 + FAIL_BACK_AFTER * 2, rate=60)
    whole.nodes["A"].wait_log(rf"returning to the preferred database member 127\.0\.0\.1:{m1.ports['sql']}",
                              timeout=3 + FAIL_BACK_AFTER * 2 + 10)
    verify(whole, again, "after m1 rejoined")


def test_3_member_cut_off_the_primary_component(whole, cluster):
    """gmcast.isolate=1 on m2, node B's member: m2 leaves the primary component; nothing is
    acknowledged that the primary component does not hold, and B fails over in time."""
    m2 = cluster.members[1]
    run = load(whole, 10)
    time.sleep(2)
    cut_at = time.monotonic()
    m2.isolate()
    result = verify(whole, run, "member m2 isolated", cut_at)
    whole.nodes["B"].wait_log(r"database member unix:\S+/m2/mysqld\.sock is down")
    # A node whose only member is the cut-off one starts, says why, and answers 451.
    directory = whole.base / "alone"
    directory.mkdir(exist_ok=True)
    alone = GsmtpdProcess(directory, Store(cluster, f"mysql://root:@{m2.host_spec}/{DATABASE}"),
                          {"workers": 1, "save_timeout": 2})
    try:
        started_answering_451(alone, r"127\.0\.0\.1:\d+: wsrep_ready=OFF state=(Initialized|Joining|Joined|Donor)")
    finally:
        alone.stop()
    # Every reply, 451s included, came within the save timeout (plus the client's own slack).
    waits = [a.ended - a.dot_at for a in result["attempts"] if a.code is not None]
    assert max(waits) < SAVE_TIMEOUT + 1.0


def test_4_two_nodes_write_the_same_rows(whole, cluster):
    """Both nodes at full speed on different members, every batch also updating one shared
    row (a trigger): Galera certification conflicts happen; each is retried and counted,
    lost 0."""
    m1 = cluster.members[0]
    m1.query("CREATE TABLE hot (id int PRIMARY KEY, n bigint NOT NULL)", DATABASE)
    m1.query("INSERT INTO hot VALUES (1, 0)", DATABASE)
    m1.query("CREATE TRIGGER contended BEFORE INSERT ON new_mail FOR EACH ROW "
             "UPDATE hot SET n = n + 1 WHERE id = 1", DATABASE)
    before = whole.metric("gsmtpd_store_conflicts_total")
    try:
        run = load(whole, 6, rate=400)
        verify(whole, run, "two nodes, one hot row")
    finally:
        m1.query("DROP TRIGGER contended", DATABASE)
        m1.query("DROP TABLE hot", DATABASE)
    conflicts = whole.metric("gsmtpd_store_conflicts_total") - before
    FIGURES.append(f"conflicts retried: {conflicts:.0f}")
    assert conflicts > 0
    assert re.search(r"writing \d+ messages again \(try 2\): \(1213", whole.logs())


def test_5_whole_cluster_down_for_10_seconds(whole, cluster):
    """Every member stopped for 10 s: every sender gets 451 within the save timeout, and
    storing resumes by itself when the cluster is back."""
    run = load(whole, 60, rate=60)
    time.sleep(2)
    down_at = time.monotonic()
    cluster.stop_all()
    stopped_at = time.monotonic()
    time.sleep(10)                      # the outage itself
    cluster.restart_all()
    up_at = time.monotonic()
    while run.first_ack_after(up_at) is None and time.monotonic() < up_at + 20:
        time.sleep(0.1)
    run.stop()
    result = verify(whole, run, "whole cluster down 10 s", down_at,
                    stop_took=f"{stopped_at - down_at:.1f}s", restart_took=f"{up_at - stopped_at - 10:.1f}s")
    during = [a for a in result["attempts"] if a.dot_at and stopped_at + 1 < a.dot_at < stopped_at + 10]
    assert during and all(a.code == 451 for a in during), {a.reply for a in during}
    assert max(a.ended - a.dot_at for a in during) < SAVE_TIMEOUT + 1.0
    assert any(a.acked and a.dot_at > up_at for a in result["attempts"]), "storing did not resume"
