"""The master's side of the web process: bind its socket, start it, restart it, stop it.

The web side is a process of its own (``python -m gsmtpd web``), never inside an SMTP
worker: a slow page or a thousand event streams cannot take an SMTP worker's time. The
master binds the web socket before giving up root (as it does the SMTP listeners) and hands
it over in GSMTPD_WEB_FD; the child gets the master's own argv, so it reads the same
configuration (file, environment, command line). It is started for ``--web`` or for
``--retention`` (retention runs there too).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

from gevent import subprocess

from .main import FD_ENV, announce, bind

log = logging.getLogger("gsmtpd.web")

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
STABLE = 10.0              # seconds alive that reset the backoff
STOP_TIMEOUT = 5.0


class WebChild:
    def __init__(self, config, argv: list[str]):
        self.config = config
        self.argv = list(argv)
        self.sock = None
        self.proc = None
        self.started = 0.0
        self.failures = 0
        self.start_after = 0.0

    @classmethod
    def prepare(cls, config, argv) -> "WebChild | None":
        """In the master, before --user: bind the web socket (OSError when it cannot)."""
        if not config.web and not config.retention:
            return None
        child = cls(config, argv)
        if config.web:
            child.sock = bind(config.web)
            announce(child.sock)
        return child

    def start(self) -> None:
        env = dict(os.environ)
        fds = ()
        listen = ""
        if self.sock is not None:
            env[FD_ENV] = str(self.sock.fileno())
            fds = (self.sock.fileno(),)
            listen = self.config.web
        args = [sys.executable, "-m", "gsmtpd", "web", *self.argv, "--listen", listen]
        self.proc = subprocess.Popen(args, env=env, pass_fds=fds, stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        log.info("web process %d started", self.proc.pid)

    def check(self) -> None:
        """From the master's loop: restart a web process that died, with backoff."""
        now = time.monotonic()
        if self.proc is None:
            if now >= self.start_after:
                self.start()
            return
        status = self.proc.poll()
        if status is None:
            return
        self.failures = 1 if now - self.started > STABLE else self.failures + 1
        delay = min(BACKOFF_MIN * 2 ** (self.failures - 1), BACKOFF_MAX)
        log.error("web process %d exited with status %s; starting a new one in %.1fs",
                  self.proc.pid, status, delay)
        self.proc = None
        self.start_after = now + delay

    def restart(self, config, argv) -> None:
        """HUP: the new configuration (the web address stays until a restart)."""
        self.config = config.replace(web=self.config.web)
        self.argv = list(argv)
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("web process %d stopped", proc.pid)

    def leave(self) -> None:
        """In a forked SMTP worker: close its copy of the web socket, which it never serves
        and which would keep the port open after the master and the web process are gone.
        The web process stays the master's to watch and stop."""
        if self.sock is not None:
            self.sock.close()
        self.sock = self.proc = None

    def close(self) -> None:
        self.stop()
        if self.sock is not None:
            self.sock.close()
