"""A throwaway MariaDB server that a test may stop, start and stall at will.

The machine's shared MariaDB on 3306 is never touched: this one has its own data directory
(under a temporary directory), its own Unix socket and pid file, and a TCP port on
127.0.0.1 held for the server's whole life (``reserve_port``). ``stop()`` is a clean
shutdown (SIGTERM, as ``systemctl stop`` does), ``kill()`` a crash (SIGKILL); ``start()``
brings the same data directory back on the same port, so a client that knew the old
address finds it again.

    with ThrowawayMariaDB(tmp_dir) as db:
        url = db.url("gsmtpd")      # mysql://root:@127.0.0.1:PORT/gsmtpd
        db.stop(); ...; db.start()
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import MySQLStore

INSTALL_DB = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
MARIADBD = (shutil.which("mariadbd") or shutil.which("mysqld")
            or next((p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if os.access(p, os.X_OK)), None))


def missing() -> str | None:
    """None when a throwaway server can be made here, else the reason."""
    if not INSTALL_DB or not MARIADBD:
        return "mariadb-install-db / mariadbd not installed (Debian: mariadb-server)"
    return None


def reserve_port() -> socket.socket:
    """A port for this server's whole life. mariadbd cannot bind port 0 and say which port
    it got (--port=0 means 3306), so we hold the port instead: a socket bound with
    SO_REUSEADDR but never listening. mariadbd (which also sets SO_REUSEADDR) binds and
    listens beside it; connections go to the listener only and are refused while mariadbd
    is down; and no bind(0) of another test gets this port meanwhile, as it could after a
    bind-close probe."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    return holder


class ThrowawayMariaDB:
    # The system user mariadbd runs as when started by root (tests/galera.py wants "mysql").
    user = "root"

    def __init__(self, base: str | Path | None = None, port: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.own_base = base is None
        # A Unix socket path must stay under ~108 bytes: keep the directory short.
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="gsmtpd-mdb-"))
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.pid_file = self.base / "mysqld.pid"
        self.error_log = self.base / "error.log"
        # A caller that brings its own port (tests/galera.py picks and retries its four
        # ports together) holds it itself; otherwise the port is held here for life.
        self.reservation = reserve_port() if port is None else None
        self.port = port or self.reservation.getsockname()[1]
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    # --- lifecycle

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        args = [INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db"]
        if os.geteuid() == 0:
            args.append(f"--user={self.user}")
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({result.returncode}): {result.stderr[-2000:]}")

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not (self.datadir / "mysql").is_dir():
            self.install()
        args = [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.pid_file}",
                f"--log-error={self.error_log}", "--skip-name-resolve",
                # Small and quick: this server holds a few thousand test rows at most.
                "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M",
                "--max-connections=200", *self.extra_args]
        if os.geteuid() == 0:
            args.append(f"--user={self.user}")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"mariadbd did not answer within {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown; waits until the port is closed."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        if self.reservation is not None:
            self.reservation.close()
        if self.own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "ThrowawayMariaDB":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- clients

    def answers(self) -> bool:
        try:
            self.connect(connect_timeout=1).close()
            return True
        except Exception:  # not up (yet)
            return False

    def connect(self, database: str | None = None, **kwargs):
        import pymysql
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                               database=database, charset="utf8mb4", autocommit=True, **kwargs)

    def create_database(self, name: str) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()

    def url(self, database: str) -> str:
        return f"mysql://root:@127.0.0.1:{self.port}/{database}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class ThrowawayStore(MySQLStore):
    """A database on a ThrowawayMariaDB: conftest's MySQLStore (url, connect, rows, count)
    pointed at our own server, so the gsmtpd_server fixture and the checker take either."""

    def __init__(self, server: ThrowawayMariaDB, database: str):
        self.server = server
        self.database = database
        server.create_database(database)
        self.url = server.url(database)

    def connect(self):
        return self.server.connect(self.database)
