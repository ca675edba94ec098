"""The master: binds the listeners, forks the workers and keeps them running.

It never accepts a connection and never touches the database. Its own loop runs on gevent
(cli.py patched everything before we get here), so workers are forked with gevent's fork
support (``gevent.os.fork_and_watch``: the hub and its thread pool are re-initialised in the
child, and the master is told of the child's exit by a child watcher).

Signal handlers and child watchers only enqueue; ``run()`` dispatches (as gunicorn's master):

- TERM: graceful stop, forwarded to the workers (see worker.py); exit 0.
- INT, QUIT: quick stop.
- HUP: read the configuration again (what may change, and how: reload.py). A configuration
  that does not validate is logged and the running one stays. Otherwise, when only what a Server can change in place differs
  (allowed hosts, limits, TLS certificates, log settings), the new configuration goes down
  each worker's control pipe and the worker applies it: no session is dropped. When the
  listeners, the store or the number of workers change, the master binds what is new, starts
  a new generation of workers, and the old ones stop accepting and finish their sessions.
- USR1: reopen the log file, and have every worker do the same.

A worker that dies is replaced (with backoff when they keep dying). A worker whose heartbeat
(a timestamp in memory shared with the master; control.py, with the control pipe) is older
than ``worker_timeout`` has a stuck event loop: it is killed and replaced. A worker that cannot boot (wrong database credentials,
a bad schema: anything that will not get better by retrying) stops the whole server with
exit status 1 instead of a restart loop.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field

import gevent
import gevent.os
from gevent.queue import Empty, Queue

from . import config as configuration
from . import control, logs, metrics, notify, reload
from .server import announce, bind
from .startup import set_title
from .worker import Worker

log = logging.getLogger("gsmtpd.arbiter")

EXIT_OK, EXIT_START_FAILED = 0, 1
WORKER_BOOT_FAILED = 3          # a worker's exit status: do not restart, stop the server
KILL_MARGIN = 5.0               # seconds past graceful_timeout before stragglers get SIGKILL
QUICK_TIMEOUT = 5.0             # seconds a quick stop waits before SIGKILL
BACKOFF_MIN, BACKOFF_MAX = 0.1, 10.0
STABLE = 10.0                   # a worker that lived this long resets the backoff


@dataclass(eq=False)
class WorkerInfo:
    pid: int
    generation: int
    control: int                     # write end of the worker's control pipe
    heartbeat: control.Heartbeat
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False           # replaced by a reload, or told to stop: do not restart
    killed: bool = False             # SIGKILLed for a stale heartbeat

    @property
    def ready(self) -> bool:
        return self.heartbeat.ready

    def silent_for(self, now: float) -> float:
        return self.heartbeat.silent_for(now)


class Arbiter:
    def __init__(self, config, bound, argv: list[str] | None, metrics_sock=None, web=None):
        self.config = config
        self.web = web                   # web/child.py: the web process, or None
        self.bound = bound               # [(ListenerSpec, socket)]
        self.metrics_sock = metrics_sock
        self.argv = argv
        self.events: Queue = Queue()
        self.workers: dict[int, WorkerInfo] = {}
        self.generation = 0
        self.failures = 0                # deaths in a row, for the backoff
        self.spawn_after = 0.0
        self.stopping = False
        self.exit_status = EXIT_OK
        self.watchers = []

    # --- the main loop

    def run(self) -> int:
        set_title(f"master [{self._listen_text()}]")
        self.watchers = [gevent.signal_handler(signum, self.events.put_nowait, signum)
                         for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                                        signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU)]
        log.info("master starting %d workers", self.config.workers)
        self.manage_workers()
        status = self.wait_booted()
        if status is not None:
            return status
        announce(self.bound)
        log.info("gsmtpd ready: hostname=%s store=%s allowed_hosts=%s workers=%d", self.config.hostname,
                 configuration.redact_url(self.config.store), ",".join(self.config.allowed_hosts),
                 self.config.workers)
        notify.notify("READY=1", f"STATUS=serving with {self.config.workers} workers", f"MAINPID={os.getpid()}")
        while True:
            if self.web is not None:
                self.web.check()
            try:
                event = self.events.get(timeout=0.5)
            except Empty:
                event = None
            if event is not None:
                try:
                    result = self.dispatch(event)
                except Exception:  # a bug in a handler must not leave the workers unattended
                    log.exception("handling %r failed", event)
                    result = None
                if result is not None:
                    return result
            self.murder_stuck_workers()
            self.manage_workers()

    def dispatch(self, event) -> int | None:
        if isinstance(event, tuple):        # ("exit", pid, status)
            return self.handle_exit(*event[1:])
        name = signal.Signals(event).name
        return getattr(self, "handle_" + name[3:].lower())()

    # --- signals

    def handle_term(self) -> int:
        return self.stop(graceful=True)

    def handle_int(self) -> int:
        return self.stop(graceful=False)

    handle_quit = handle_int

    def handle_usr1(self) -> None:
        logs.reopen()
        log.info("log file reopened")
        self.kill_all(signal.SIGUSR1)

    def handle_ttin(self) -> None:
        self.config = self.config.replace(workers=self.config.workers + 1)
        log.info("SIGTTIN: now %d workers", self.config.workers)

    def handle_ttou(self) -> None:
        if self.config.workers > 1:
            self.config = self.config.replace(workers=self.config.workers - 1)
            log.info("SIGTTOU: now %d workers", self.config.workers)

    def handle_hup(self) -> None:
        config = reload.read(self.argv)
        if config is None:
            return
        try:
            config, new_workers, notes = reload.settle(self.config, config, alone=False)
            for note in notes:
                log.warning("%s", note)
            logs.configure(config)
            if self.web is not None:
                self.web.restart(config, self.argv)
            if new_workers:
                self.replace_workers(config, configuration.listeners(config))
            else:
                self.config = config
                for worker in self.live_workers():
                    self.send(worker, control.config_message(config))
                log.info("configuration reloaded: allowed_hosts=%s", ",".join(config.allowed_hosts))
        finally:
            notify.notify("READY=1")

    # --- workers

    def live_workers(self) -> list[WorkerInfo]:
        return [w for w in self.workers.values() if not w.retiring]

    def manage_workers(self) -> None:
        if self.stopping:
            return
        live = self.live_workers()
        if len(live) < self.config.workers and time.monotonic() >= self.spawn_after:
            for _ in range(self.config.workers - len(live)):
                self.spawn_worker()
        elif len(live) > self.config.workers:
            for worker in sorted(live, key=lambda w: w.started)[:len(live) - self.config.workers]:
                worker.retiring = True
                self.signal(worker, signal.SIGTERM)

    def spawn_worker(self) -> None:
        read_end, write_end = os.pipe()
        heartbeat = control.Heartbeat()
        pid = gevent.os.fork_and_watch(callback=self._child_exited)
        if pid:
            os.close(read_end)
            os.set_blocking(write_end, False)
            os.set_inheritable(write_end, False)
            self.workers[pid] = WorkerInfo(pid, self.generation, write_end, heartbeat)
            log.info("worker %d started", pid)
            return
        # --- in the child: never return into the master's loop
        status = WORKER_BOOT_FAILED
        try:
            os.close(write_end)
            status = self._worker_main(read_end, heartbeat)
        except BaseException:
            log.exception("worker %d crashed", os.getpid())
        finally:
            logs.flush()
            os._exit(status)

    def _worker_main(self, pipe: int, heartbeat: control.Heartbeat) -> int:
        for watcher in self.watchers:
            watcher.cancel()
        for other in self.workers.values():
            os.close(other.control)
        if self.web is not None:
            self.web.leave()
        notify.forget()
        control.die_with_parent()
        set_title("worker")
        worker = Worker(self.config, self.bound, self.argv, pipe=pipe, heartbeat=heartbeat,
                        metrics_sock=self.metrics_sock)
        try:
            worker.boot()
        except Exception as exc:
            log.error("worker %d cannot start: %s", os.getpid(), exc)
            return WORKER_BOOT_FAILED
        log.info("worker %d serving", os.getpid())
        return worker.serve()

    def _child_exited(self, watcher) -> None:
        # In the hub: only enqueue.
        self.events.put_nowait(("exit", watcher.rpid, watcher.rstatus))

    def handle_exit(self, pid: int, status: int) -> int | None:
        worker = self.workers.pop(pid, None)
        if worker is None:
            return None
        os.close(worker.control)
        worker.heartbeat.close()
        metrics.process_died(pid)
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        if self.stopping or worker.retiring:
            log.info("worker %d %s", pid, how)
            return None
        if code == WORKER_BOOT_FAILED:
            return self.halt(f"worker {pid} could not start (see above): stopping")
        now = time.monotonic()
        self.failures = 1 if now - worker.started > STABLE else self.failures + 1
        delay = min(BACKOFF_MIN * 2 ** (self.failures - 1), BACKOFF_MAX)
        self.spawn_after = now + delay
        log.error("worker %d %s; starting a new one in %.1fs", pid, how, delay)
        return None

    def wait_booted(self) -> int | None:
        """None once every first worker is ready; an exit status when one could not start."""
        deadline = time.monotonic() + self.config.worker_timeout
        while not all(w.ready for w in self.live_workers()):
            try:
                event = self.events.get(timeout=0.05)
            except Empty:
                event = None
            if isinstance(event, tuple):
                status = self.handle_exit(*event[1:])
                if status is not None:
                    return status
            elif event is not None:
                self.events.put_nowait(event)        # a signal: dispatched once serving
                return None
            self.murder_stuck_workers()
            self.manage_workers()
            if time.monotonic() > deadline:
                return self.halt(f"workers did not start within worker_timeout "
                                 f"({self.config.worker_timeout:.0f}s): stopping")
        return None

    def murder_stuck_workers(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            silent = worker.silent_for(now)
            if not worker.killed and silent > self.config.worker_timeout:
                log.error("worker %d has not checked in for %.1fs (event loop stuck): killing it",
                          worker.pid, silent)
                worker.killed = True         # reaped and replaced as any dead worker
                self.signal(worker, signal.SIGKILL)

    def replace_workers(self, config, specs) -> None:
        """A reload that changed listeners, store or worker count: bind what is new, start a
        new generation, let the old one finish its sessions."""
        # A listener whose address is unchanged keeps its socket (port 0 included): no
        # connection in its backlog is lost.
        by_address: dict[tuple[str, int], list] = {}
        for spec, sock in self.bound:
            by_address.setdefault((spec.host, spec.port), []).append(sock)
        bound, fresh = [], []
        try:
            for spec in specs:
                same = by_address.get((spec.host, spec.port))
                sock = same.pop(0) if same else None
                if sock is None:
                    sock = bind(spec)
                    fresh.append(sock)
                bound.append((spec, sock))
        except OSError as exc:
            for sock in fresh:
                sock.close()
            log.error("reload failed, keeping the running configuration: cannot listen on %s: %s",
                      spec, exc.strerror or exc)
            return
        old_bound, self.bound, self.config = self.bound, bound, config
        self.generation += 1
        old = self.live_workers()
        for _ in range(config.workers):
            self.spawn_worker()
        for worker in old:
            worker.retiring = True
            self.send(worker, control.DRAIN)
        kept = {id(sock) for _, sock in bound}
        for _, sock in old_bound:
            if id(sock) not in kept:
                sock.close()                 # the old workers hold their own copies until they exit
        if fresh:
            announce([(spec, sock) for spec, sock in bound if sock in fresh])
        log.info("configuration reloaded: %d new workers, %d old ones finishing", config.workers, len(old))

    # --- stopping

    def stop(self, graceful: bool) -> int:
        self.stopping = True
        notify.notify("STOPPING=1")
        if graceful:
            log.info("stopping: no new connections, open sessions get %.0fs to finish",
                     self.config.graceful_timeout)
        else:
            log.info("stopping now")
        for _, sock in self.bound:
            sock.close()
        self.kill_all(signal.SIGTERM if graceful else signal.SIGQUIT)
        if self.web is not None:
            self.web.stop()
        limit = self.config.graceful_timeout + KILL_MARGIN if graceful else QUICK_TIMEOUT
        self.reap_all(limit, quick_on_signal=graceful)
        if self.workers:
            log.warning("workers %s still running after %.0fs: killing them",
                        ",".join(map(str, self.workers)), limit)
            self.kill_all(signal.SIGKILL)
            self.reap_all(timeout=5.0)
        log.info("stopped")
        return self.exit_status

    def halt(self, reason: str) -> int:
        log.error("%s", reason)
        self.exit_status = EXIT_START_FAILED
        self.stopping = True
        notify.notify("STOPPING=1", f"STATUS={reason}")
        for _, sock in self.bound:
            sock.close()
        if self.web is not None:
            self.web.stop()
        self.kill_all(signal.SIGTERM)
        self.reap_all(timeout=QUICK_TIMEOUT)
        if self.workers:
            self.kill_all(signal.SIGKILL)
            self.reap_all(timeout=5.0)
        return EXIT_START_FAILED

    def reap_all(self, timeout: float, quick_on_signal: bool = False) -> None:
        """Wait up to ``timeout`` for the workers to exit. With ``quick_on_signal`` (a
        graceful stop), INT or QUIT meanwhile makes it quick: the workers get QUIT and the
        wait shrinks to QUICK_TIMEOUT."""
        deadline = time.monotonic() + timeout
        while self.workers and time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except Empty:
                continue
            if isinstance(event, tuple):
                self.handle_exit(*event[1:])
            elif quick_on_signal and event in (signal.SIGINT, signal.SIGQUIT):
                log.info("quick stop requested during the graceful one")
                quick_on_signal = False
                self.kill_all(signal.SIGQUIT)
                deadline = min(deadline, time.monotonic() + QUICK_TIMEOUT)

    def kill_all(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            self.signal(worker, signum)

    @staticmethod
    def signal(worker: WorkerInfo, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass

    @staticmethod
    def send(worker: WorkerInfo, message: tuple) -> None:
        try:
            control.send(worker.control, message)
        except OSError as exc:
            log.error("cannot reach worker %d: %s", worker.pid, exc)

    def _listen_text(self) -> str:
        return " ".join(f"{sock.getsockname()[0]}:{sock.getsockname()[1]}" for _, sock in self.bound)
