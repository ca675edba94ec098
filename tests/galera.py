"""A real three-member MariaDB Galera cluster on loopback, for tests and the bench.

Each member is its own ``mariadbd`` (own data directory, socket and pid file under one
temporary directory) with Debian's galera-4 provider. Node 1 is bootstrapped with
``--wsrep-new-cluster``; 2 and 3 join it and get their data by rsync SST. Readiness is
asked, never slept on: ``wait_synced()`` polls every member until ``wsrep_cluster_size``
is the number of members up and each says ``Synced`` and ``wsrep_ready = ON``.

mariadbd cannot bind port 0, nor tell Galera its ports afterwards, so each member gets
free-looking ports (SQL, gcomm, IST, SST) picked at start, and the whole start is tried
again with new ones when a port turns out to be taken ("Address already in use").
A member keeps its ports when it is killed and started again, so the others find it.

    with GaleraCluster(3) as cluster:
        cluster.members[0].url("gsmtpd")     # mysql://root:@127.0.0.1:PORT/gsmtpd
        cluster.members[1].kill(); cluster.members[1].start(); cluster.wait_synced()
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from reliability.mariadb import INSTALL_DB, MARIADBD, ThrowawayMariaDB

PROVIDER = next((p for p in ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so",
                             "/usr/lib64/galera-4/libgalera_smm.so") if os.path.exists(p)), None)


def _run_as() -> str:
    """As root, members run as Debian's "mysql" user, as in production: run as root,
    wsrep_sst_rsync's receiving rsync daemon would drop to "nobody" and could not write
    the data directory, so a joiner would never get its state."""
    if os.geteuid() != 0:
        return ""
    try:
        import pwd
        pwd.getpwnam("mysql")
        return "mysql"
    except KeyError:
        return "root"


RUN_AS = _run_as()

# Galera's failure detector, shortened from its defaults (suspect 5 s, inactive 15 s) so a
# member that dies or is cut off leaves the primary component in ~2-3 s, not 15: the tests
# wait for that. Production keeps the defaults (conf/galera/).
FAST_EVS = ("evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;evs.inactive_timeout=PT3S;"
            "evs.inactive_check_period=PT0.5S;evs.install_timeout=PT3S;gcache.size=64M")


def missing() -> str | None:
    """None when a cluster can be started here, else the reason."""
    if not PROVIDER:
        return "galera-4 is not installed (libgalera_smm.so not found)"
    if not MARIADBD or not INSTALL_DB:
        return "mariadb-server is not installed (mariadbd / mariadb-install-db not found)"
    if not shutil.which("rsync"):
        return "rsync is not installed (Galera's SST)"
    return None


def _ports() -> dict[str, int]:
    """Four ports in a range the kernel does not hand out for port 0 (below 32768)."""
    base = random.randrange(20000, 32000, 4)
    return {"sql": base, "gcomm": base + 1, "ist": base + 2, "sst": base + 3}


class PortTaken(Exception):
    pass


class Member(ThrowawayMariaDB):
    """One member: tests/reliability's throwaway server (install, stop, kill, clients),
    started with Galera's settings and ports."""

    user = RUN_AS or "root"

    def __init__(self, cluster: "GaleraCluster", index: int):
        self.cluster = cluster
        self.index = index
        self.name = f"m{index + 1}"
        self.ports = _ports()
        super().__init__(cluster.base / self.name, port=self.ports["sql"])

    def new_ports(self) -> None:
        self.ports = _ports()
        self.port = self.ports["sql"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['gcomm']}"

    @property
    def host_spec(self) -> str:
        """This member in a multi-host store URL (TCP)."""
        return f"127.0.0.1:{self.port}"

    @property
    def socket_spec(self) -> str:
        """This member in a multi-host store URL, by its Unix socket (percent-encoded path)."""
        return str(self.socket).replace("/", "%2F")

    def args(self, bootstrap: bool) -> list[str]:
        others = ",".join(m.address for m in self.cluster.members)
        args = [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={self.port}", "--bind-address=127.0.0.1",
                f"--pid-file={self.pid_file}", f"--log-error={self.error_log}", "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M", "--max-connections=200",
                "--performance-schema=OFF", "--innodb-flush-log-at-trx-commit=2",
                # What Galera needs (conf/galera/galera.cnf says why each):
                "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}", f"--wsrep-cluster-name={self.cluster.name}",
                f"--wsrep-cluster-address=gcomm://{others}", f"--wsrep-node-name={self.name}",
                f"--wsrep-node-address={self.address}", "--wsrep-sst-method=rsync",
                f"--wsrep-sst-receive-address=127.0.0.1:{self.ports['sst']}",
                f"--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{self.ports['gcomm']};"
                f"ist.recv_addr=127.0.0.1:{self.ports['ist']};{FAST_EVS}",
                "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2", "--default-storage-engine=InnoDB"]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        if os.geteuid() == 0:
            args.append(f"--user={self.user}")
        return args

    def start(self, bootstrap: bool = False, timeout: float = 90.0) -> None:
        """Start and wait until it answers SQL (not yet until it is Synced: wait_synced)."""
        if self.running:
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if RUN_AS == "mysql":
            for path in (self.cluster.base, self.base):
                shutil.chown(path, RUN_AS, RUN_AS)
            subprocess.run(["chown", "-R", f"{RUN_AS}:{RUN_AS}", str(self.datadir)], check=True)
        if bootstrap and not (self.datadir / "mysql").is_dir():
            self.install()
        if bootstrap:
            self._allow_bootstrap()
        logged = self.error_log.stat().st_size if self.error_log.exists() else 0
        self.proc = subprocess.Popen(self.args(bootstrap), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tail = self.log_tail(since=logged)
            if "Address already in use" in tail or "Failed to listen" in tail:
                self.kill()
                raise PortTaken(tail[-500:])
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: mariadbd exited with {self.proc.returncode}: {tail[-3000:]}")
            if self.status() is not None:
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.name}: no answer within {timeout}s: {self.log_tail()[-3000:]}")

    def _allow_bootstrap(self) -> None:
        """A cluster restarted after every member went down: this one founds it again."""
        state = self.datadir / "grastate.dat"
        if state.exists():
            state.write_text(state.read_text().replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1"))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def connect(self, database: str | None = None, timeout: float = 2.0):
        return super().connect(database, connect_timeout=timeout, read_timeout=timeout * 5,
                               write_timeout=timeout * 5)

    def query(self, sql: str, database: str | None = None) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    def status(self) -> dict[str, str] | None:
        """The wsrep status variables, or None when the member does not answer."""
        try:
            return dict(self.query("SHOW GLOBAL STATUS LIKE 'wsrep_%'"))
        except Exception:  # down, starting, frozen: not answering
            return None

    def synced(self, size: int) -> bool:
        status = self.status()
        return (status is not None and status.get("wsrep_ready") == "ON"
                and status.get("wsrep_local_state_comment") == "Synced"
                and status.get("wsrep_cluster_size") == str(size))

    def in_primary(self) -> bool:
        """Synced and ready in the primary component (of whatever size)."""
        status = self.status() or {}
        return (status.get("wsrep_cluster_status") == "Primary" and status.get("wsrep_ready") == "ON"
                and status.get("wsrep_local_state_comment") == "Synced")

    def isolate(self, on: bool = True) -> None:
        """Cut this member off the others with Galera's own switch: it leaves the primary
        component (wsrep_ready=OFF, queries get 1047) until isolate(False)."""
        self.query(f"SET GLOBAL wsrep_provider_options = 'gmcast.isolate={1 if on else 0}'")

    def log_tail(self, chars: int = 4000, since: int = 0) -> str:
        try:
            with open(self.error_log, "rb") as fh:
                fh.seek(since)
                return fh.read().decode(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class GaleraCluster:
    def __init__(self, size: int = 3, base: Path | None = None):
        self.own_base = base is None
        # Unix socket paths must stay under ~108 bytes: a short base.
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="gal-"))
        self.name = "gsmtpd_test_" + self.base.name.replace("-", "_")
        self.members = [Member(self, i) for i in range(size)]

    def start(self, attempts: int = 5) -> None:
        """Node 1 founds the cluster, 2 and 3 join; new ports when one is taken."""
        for attempt in range(attempts):
            try:
                for index, member in enumerate(self.members):
                    member.start(bootstrap=index == 0)
                    self.wait_synced(timeout=120, want=index + 1)
                return
            except PortTaken:
                self.kill_all()
                shutil.rmtree(self.base, ignore_errors=True)
                for member in self.members:
                    member.new_ports()
        raise RuntimeError(f"no free ports for Galera after {attempts} attempts")

    def up(self) -> list[Member]:
        return [m for m in self.members if m.running]

    def wait_synced(self, timeout: float = 90.0, want: int | None = None) -> None:
        """Until every running member is Synced in one primary component of them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = self.up()
            size = want or len(running)
            if all(m.synced(size) for m in running):
                return
            time.sleep(0.1)
        raise RuntimeError("cluster not Synced: " + "; ".join(
            f"{m.name}: {(m.status() or {}).get('wsrep_local_state_comment')} "
            f"size={(m.status() or {}).get('wsrep_cluster_size')} {m.log_tail(600)}" for m in self.members))

    def heal(self) -> None:
        """After a scenario: every member running, not isolated, Synced in one cluster of all."""
        if not any(m.running for m in self.members):
            self.restart_all()
        for member in self.members:
            if member.running and member.status() is not None:
                try:
                    member.isolate(False)
                except Exception:  # a member that left on its own: nothing to undo
                    pass
        for member in self.members:
            member.start()
        self.wait_synced(want=len(self.members))

    def stop_all(self) -> None:
        """The whole cluster down, cleanly, one after the other: the last one out (member 1)
        may found it again (safe_to_bootstrap)."""
        for member in reversed(self.members):
            member.stop()

    def restart_all(self) -> None:
        self.members[0].start(bootstrap=True)
        self.wait_synced(want=1)
        for member in self.members[1:]:
            member.start()
        self.wait_synced(want=len(self.members))

    def kill_all(self) -> None:
        for member in self.members:
            member.kill()

    def close(self) -> None:
        self.kill_all()
        if self.own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "GaleraCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
