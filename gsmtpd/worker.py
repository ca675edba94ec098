"""One serving process: a Store (writer greenlet + database connection) and a Server on
sockets bound by someone else. It runs alone (``--workers 1``, no master) or as a child of
the arbiter, which talks to it through signals, a control pipe and a heartbeat (control.py).

Signal handlers only enqueue; ``serve()`` takes them off the queue one at a time:

- TERM: graceful. Stop accepting; a session in DATA (or between BDAT chunks: its next
  chunks are read) gets its 250 after the commit, idle sessions get 421 4.3.0; the writer
  flushes; after ``graceful_timeout`` the rest is cut off.
- INT, QUIT: quick. Sessions are cut off, the writer gets a moment to flush.
- HUP (alone only): reload the configuration file. Under a master, the master reloads and
  sends the checked configuration down the control pipe instead.
- USR1: reopen the log file (logrotate).
"""
from __future__ import annotations

import logging
import os
import signal
import time

import gevent
from gevent.queue import Queue

from . import control, logs, metrics, notify, reload
from .server import Server
from .store import Store, open_backend

log = logging.getLogger("gsmtpd.worker")

QUICK_FLUSH = 2.0   # seconds the writer gets on a quick stop


class Worker:
    def __init__(self, config, bound, argv: list[str] | None = None,
                 pipe: int | None = None, heartbeat: control.Heartbeat | None = None, metrics_sock=None):
        self.config = config
        self.bound = bound
        self.metrics_sock = metrics_sock  # bound by metrics.prepare(), served by every worker
        self.metrics_server = None
        self.argv = argv
        self.pipe = pipe              # read end of the master's control pipe; None when alone
        self.heartbeat = heartbeat
        self.events: Queue = Queue()
        self.store: Store | None = None
        self.server: Server | None = None
        self.greenlets: list[gevent.Greenlet] = []
        # Installed first, so a TERM during boot is a graceful stop and not a sudden death.
        self.watchers = [gevent.signal_handler(signum, self.events.put_nowait, signum)
                         for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                                        signal.SIGHUP, signal.SIGUSR1)]
        if heartbeat is not None:
            self.greenlets.append(gevent.spawn(self._beat))

    @property
    def alone(self) -> bool:
        return self.pipe is None

    # --- lifecycle

    def boot(self) -> None:
        """Connect the store and start serving. Raises StoreMisconfigured (wrong credentials,
        bad schema) or whatever else stops this process from serving."""
        config = self.config
        metrics.enable()
        backend = open_backend(config.store, config.save_timeout, batch_max_bytes=config.batch_max_bytes,
                               fail_back_after=config.fail_back_after)
        self.store = Store(backend, batch_max=config.batch_max,
                           queue_max=config.queue_max, save_timeout=config.save_timeout)
        self.store.start()
        self.server = Server(config, self.store, self.bound)
        self.server.start(announce_listeners=self.alone)
        if self.metrics_sock is not None:
            self.metrics_server = metrics.serve(self.metrics_sock)
        if self.heartbeat is not None:
            self.heartbeat.serving()
        if self.pipe is not None:
            self.greenlets.append(gevent.spawn(self._read_control))

    def serve(self) -> int:
        """Dispatch events until stopped; returns the exit status."""
        while True:
            event = self.events.get()
            try:
                status = self.dispatch(event)
            except Exception:  # a bug in a handler must not take the sessions down with it
                log.exception("handling %r failed", event)
                continue
            if status is not None:
                return status

    def dispatch(self, event) -> int | None:
        if event == signal.SIGTERM:
            return self.stop(graceful=True)
        if event in (signal.SIGINT, signal.SIGQUIT):
            return self.stop(graceful=False)
        if event == signal.SIGHUP:
            if self.alone:
                self.reload()
        elif event == signal.SIGUSR1:
            logs.reopen()
            log.info("log file reopened")
        elif event[0] == control.CONFIG:
            self.apply(event[1])
        elif event == control.DRAIN:
            return self.drain()
        elif event[0] == "orphaned":
            log.warning("the master is gone: stopping")
            return self.stop(graceful=True)
        return None

    def stop(self, graceful: bool) -> int:
        notify.notify("STOPPING=1")        # alone only: workers have no NOTIFY_SOCKET
        timeout = self.config.graceful_timeout if graceful else 0.0
        if graceful:
            log.info("stopping: no new connections, open sessions get %.0fs to finish", timeout)
        else:
            log.info("stopping now: open sessions are cut off")
        deadline = time.monotonic() + timeout
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.server is not None:
            self.server.stop(timeout=timeout)
        if self.store is not None:
            self.store.close(timeout=max(QUICK_FLUSH, deadline - time.monotonic()))
        for greenlet in self.greenlets:
            greenlet.kill(block=False)
        log.info("stopped")
        return 0

    def drain(self) -> int:
        """Replaced after a reload that changed the listeners or the store: stop accepting and
        let open sessions end by themselves; after graceful_timeout, a graceful stop."""
        log.info("replaced by new workers: no new connections, waiting for open sessions")
        # Only the listeners close: ``accepting`` stays, or sessions would get 421 at their
        # next command (session.next_command).
        for listener in self.server.listeners:
            listener.close()
        deadline = time.monotonic() + self.config.graceful_timeout
        while self.server.sessions and time.monotonic() < deadline:
            gevent.sleep(0.1)
        return self.stop(graceful=True)

    # --- reload

    def reload(self) -> None:
        """HUP without a master: read the configuration again; keep the old one if it is bad."""
        config = reload.read(self.argv)
        if config is None:
            return
        try:
            config, _, notes = reload.settle(self.config, config, alone=True)
            for note in notes:
                log.warning("%s", note)
            self.apply(config)
        finally:
            notify.notify("READY=1")

    def apply(self, config) -> None:
        try:
            self.server.apply(config)
        except Exception as exc:  # e.g. an unreadable TLS certificate: keep serving as before
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self.config = config
        logs.configure(config)
        log.info("configuration reloaded: allowed_hosts=%s", ",".join(config.allowed_hosts))

    # --- talking to the master

    def _beat(self) -> None:
        interval = min(1.0, self.config.worker_timeout / 4)
        master = os.getppid()
        while True:
            self.heartbeat.beat()
            if os.getppid() != master:
                self.events.put_nowait(("orphaned",))
                return
            gevent.sleep(interval)

    def _read_control(self) -> None:
        for message in control.receive(self.pipe):
            self.events.put_nowait(message)
        self.events.put_nowait(("orphaned",))
