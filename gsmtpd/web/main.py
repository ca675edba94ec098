"""``gsmtpd web``: the read side's own process: the mailbox API, the live inbox, retention.

    gsmtpd web --store URL --listen ADDR:PORT [--web-token T] [--retention S] [other options]

Every option of the main command is understood (a configuration file shared with the SMTP
server works as it is); ``--listen`` here is the web address. ``--listen ''`` serves no HTTP
and only runs retention. The master starts this process itself for ``--web`` or
``--retention`` (web/child.py), handing over the socket it bound in GSMTPD_WEB_FD.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from .. import config as configuration
from .. import logs
from ..mailbox import open_database
from ..retention import Retention
from ..control import die_with_parent
from ..startup import set_title

log = logging.getLogger("gsmtpd.web")

FD_ENV = "GSMTPD_WEB_FD"
DEFAULT_LISTEN = "127.0.0.1:8025"
MAX_CONNECTIONS = 10000        # HTTP connections at once (event streams included)
# Ingest must not pay for the read side: when the machine is short of CPU, the SMTP workers
# go first. bench/web_load.py, W1 with 20 API reads a second on a busy 2-core machine: see
# the commit that set this for the numbers with and without it.
NICENESS = 10
EXIT_OK, EXIT_START_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(prog="gsmtpd web", allow_abbrev=False, add_help=False)
    parser.add_argument("--listen", default=None, metavar="ADDR:PORT")
    known, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
    config = configuration.load(rest)
    listen = known.listen if known.listen is not None else (config.web or DEFAULT_LISTEN)
    if listen:
        try:
            configuration.host_port(listen)
        except ValueError as exc:
            raise configuration.ConfigError([f"--listen: {exc}"]) from None
    return config.replace(web=listen)


def bind(listen: str) -> socket.socket:
    host, port = configuration.host_port(listen)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # gevent's WSGI handler sends a response's headers and its body in two writes; with
    # Nagle's algorithm the body then waited for the client's delayed ACK of the headers:
    # every API read took 44 ms on loopback (its CPU: 2-3 ms), and a client reading one at a
    # time got at most ~20 a second. TCP_NODELAY sends the body at once: 0.7 ms (median of
    # 40 reads of a 3-item page). Set on the listening socket: Linux's accepted sockets
    # inherit it, so no connection pays a system call for it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def announce(sock: socket.socket) -> None:
    """The line operators and tests read the port from (port 0 picks one)."""
    host, port = sock.getsockname()[:2]
    log.info("web inbox on http://%s:%d/", f"[{host}]" if ":" in host else host, port)


def build_app(config, db):
    from .api import Api
    from .app import App
    from .sse import Events
    return App(Api(db, Events(db), config).routes(), config.web_token)


def main(argv: list[str]) -> int:
    try:
        config = parse(argv)
    except configuration.ConfigError as exc:
        print("gsmtpd web: bad configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logs.configure(config)
    inherited = os.environ.pop(FD_ENV, None)
    if inherited is not None:
        die_with_parent()
    set_title(f"web [{config.web or 'retention only'}]")
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    sock = None
    if inherited is not None and config.web:
        sock = socket.socket(fileno=int(inherited))
    elif config.web:
        try:
            sock = bind(config.web)
        except OSError as exc:
            log.error("cannot listen for the web inbox on %s: %s", config.web, exc.strerror or exc)
            return EXIT_START_FAILED
        announce(sock)
    db = open_database(config.store)
    retention = None
    if config.retention:
        retention = Retention(open_database(config.store), config.retention)
        retention.start()
        log.info("retention: rows older than %ds are deleted", config.retention)
    server = None
    if sock is not None:
        server = WSGIServer(sock, build_app(config, db), log=None, error_log=log, spawn=Pool(MAX_CONNECTIONS))
        server.start()
    done = Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        gevent.signal_handler(signum, done.set)
    gevent.signal_handler(signal.SIGUSR1, logs.reopen)
    done.wait()
    if retention is not None:
        retention.stop()
    if server is not None:
        server.stop(timeout=1)     # event streams never end by themselves; clients reconnect
    db.close()
    log.info("web process stopped")
    logs.flush()
    return EXIT_OK
