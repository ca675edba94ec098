"""Prometheus metrics and /healthz, aggregated over all worker processes.

prometheus-client's multiprocess mode keeps each process's values in files under
PROMETHEUS_MULTIPROC_DIR; any process can then answer a scrape with the sum over all of
them. So the metrics socket is bound once (by the master, before forking, like the SMTP
listeners), every worker serves it, and whichever worker the kernel hands a scrape to
answers for the whole server.

When ``--metrics`` is off nothing here is imported from prometheus_client and every
recording call is a no-op attribute on ``NOOP``: the hot path pays one attribute lookup.

Order of calls: ``prepare(config)`` in the master (or the single process) before any
worker exists; ``enable()`` then ``serve(sock, store)`` in each worker;
``process_died(pid)`` in the master when a worker exits.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile

from .config import host_port

log = logging.getLogger("gsmtpd.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"

# Reply codes we count separately; anything else is counted under its class ("4xx").
RESULT_BY_CLASS = {"2": "accepted", "4": "deferred", "5": "rejected"}


class _Noop:
    """Stands for every metric when metrics are off."""

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def labels(self, *args, **kwargs) -> "_Noop":
        return self


NOOP = _Noop()


class Metrics:
    """The names, as Prometheus conventions want them: base units, _total on counters."""

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.connections_open = Gauge("gsmtpd_connections_open", "Client connections open now",
                                      multiprocess_mode="livesum")
        self.connections = Counter("gsmtpd_connections_total", "Client connections accepted")
        self.messages = Counter("gsmtpd_messages_total", "Messages answered after DATA, by result and reply code",
                                ["result", "code"])
        self.received_bytes = Counter("gsmtpd_received_bytes_total", "Bytes of message data received")
        self.recipients = Counter("gsmtpd_recipients_total", "Recipients of accepted messages (rows written)")
        self.queue_depth = Gauge("gsmtpd_queue_depth", "Messages waiting for the writer",
                                 multiprocess_mode="livesum")
        self.batch_size = Histogram("gsmtpd_batch_size", "Messages per commit",
                                    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
        self.commit_seconds = Histogram("gsmtpd_commit_seconds", "Time to write and commit one batch",
                                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.storage_errors = Counter("gsmtpd_storage_errors_total", "Batches that failed with a transient error")
        # A cluster store (members.py): retries after a certification conflict or lock
        # wait (MySQL 1213/1205), and moves of the writer from one member to another.
        self.store_conflicts = Counter("gsmtpd_store_conflicts_total",
                                       "Batches retried after a deadlock, certification conflict or lock wait")
        self.store_failovers = Counter("gsmtpd_store_failovers_total",
                                       "Times a writer moved to another database member")
        self.tls_sessions = Counter("gsmtpd_tls_sessions_total", "TLS handshakes completed (STARTTLS and implicit)")
        # min over live workers: 0 as soon as one worker cannot reach its store.
        self.store_up = Gauge("gsmtpd_store_up", "1 while the store is reachable", multiprocess_mode="livemin")
        # The byte budget (budget.py): bytes of mail held, 452s for want of it, and the
        # largest message held now (max over workers).
        self.budget_used = Gauge("gsmtpd_memory_budget_used_bytes", "Bytes of the memory budget reserved for mail in flight",
                                 multiprocess_mode="livesum")
        self.budget_refusals = Counter("gsmtpd_memory_budget_refusals_total",
                                       "Messages refused with 452 4.3.1 because the memory budget was full")
        self.largest_message = Gauge("gsmtpd_largest_message_in_flight_bytes",
                                     "Size of the largest message over 1 MiB held now (0: none)",
                                     multiprocess_mode="livemax")

    def message(self, code: int, size: int, recipients: int) -> None:
        self.messages.labels(RESULT_BY_CLASS.get(str(code)[0], "other"), str(code)).inc()
        self.received_bytes.inc(size)
        if code == 250:
            self.recipients.inc(recipients)


class _Disabled:
    """``M`` when metrics are off: every metric is NOOP and message() does nothing."""

    def __getattr__(self, name: str) -> _Noop:
        setattr(self, name, NOOP)    # found directly from now on: metrics sit on the hot path
        return NOOP

    def message(self, code: int, size: int, recipients: int) -> None:
        pass


M: Metrics | _Disabled = _Disabled()


def prepare(config) -> socket.socket | None:
    """In the master, before forking: a fresh multiprocess directory and the bound socket."""
    if not config.metrics:
        return None
    directory = tempfile.mkdtemp(prefix="gsmtpd-metrics-")
    os.environ[ENV] = directory
    host, port = host_port(config.metrics)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    log.info("metrics on http://%s:%d/metrics", *sock.getsockname()[:2])
    return sock


def cleanup() -> None:
    directory = os.environ.pop(ENV, None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


def enable() -> None:
    """In each worker (or the single process), after prepare()."""
    global M
    if ENV in os.environ and isinstance(M, _Disabled):
        M = Metrics()


def process_died(pid: int) -> None:
    """In the master: forget a dead worker's live gauges (its counters still count)."""
    if ENV in os.environ:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


def scrape() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def store_reachable() -> bool:
    """From the aggregate: every live worker reports its store up (and there is one)."""
    from prometheus_client import CollectorRegistry, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for family in registry.collect():
        if family.name == "gsmtpd_store_up":
            values = [sample.value for sample in family.samples]
            return bool(values) and min(values) >= 1
    return False


def wsgi_app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/metrics":
        body, content_type = scrape()
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]
    if path == "/healthz":
        healthy = store_reachable()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps({"store": "up" if healthy else "down"}).encode() + b"\n"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"try /metrics or /healthz\n"]


def serve(sock: socket.socket):
    """Serve /metrics and /healthz on the inherited socket from this worker's event loop."""
    from gevent.pywsgi import WSGIServer
    server = WSGIServer(sock, wsgi_app, log=None)
    server.start()
    return server
