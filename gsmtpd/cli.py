"""``gsmtpd`` on the command line: argv -> config -> logging -> listeners -> user -> serve.

gevent's monkey patching comes first, before anything imports socket, so PyMySQL's socket
only blocks its own greenlet. The listeners are bound here, before anything else, because
port 25 needs root and ``--user`` gives root up right after. Then either one process serves
(``--workers 1``: no master) or the arbiter forks the workers (arbiter.py).

Exit codes: 0 clean stop, 1 cannot start (store, port, user, a worker that cannot boot),
2 bad configuration.
"""
from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402  (after patching, on purpose)
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from . import config as configuration  # noqa: E402
from . import gevent_adapter, logs, metrics, notify  # noqa: E402
from . import pymysql_adapter, stdlib_adapter  # noqa: E402
from .arbiter import Arbiter  # noqa: E402
from .server import bind  # noqa: E402
from .startup import prepare_store, set_title, switch_user  # noqa: E402
from .web.child import WebChild  # noqa: E402
from .worker import Worker  # noqa: E402

log = logging.getLogger("gsmtpd")

EXIT_OK, EXIT_START_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["web"]:
        from .web.main import main as web_main
        return web_main(argv[1:])
    try:
        config = configuration.load(argv)
    except configuration.ConfigError as exc:
        print("gsmtpd: bad configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if config.check_only:
        print(configuration.describe(config))
        print("configuration OK")
        return EXIT_OK

    logs.configure(config)
    unsupported = (gevent_adapter.unsupported() or pymysql_adapter.unsupported()
                   or stdlib_adapter.unsupported())
    if unsupported:
        log.error("cannot start: %s", unsupported)
        return EXIT_START_FAILED
    bound = []
    for spec in configuration.listeners(config):
        try:
            bound.append((spec, bind(spec)))
        except OSError as exc:
            log.error("cannot listen on %s port %s: %s", spec.host, spec.port, exc.strerror or exc)
            return close(bound, EXIT_START_FAILED)
    try:
        metrics_sock = metrics.prepare(config)
    except OSError as exc:
        log.error("cannot listen for metrics on %s: %s", config.metrics, exc.strerror or exc)
        return close(bound, EXIT_START_FAILED)
    try:
        web = WebChild.prepare(config, argv)     # the web process: --web or --retention
    except OSError as exc:
        log.error("cannot listen for the web inbox on %s: %s", config.web, exc.strerror or exc)
        return close(bound, EXIT_START_FAILED)
    if config.pid_file:
        try:
            write_pid_file(config.pid_file)
        except OSError as exc:
            log.error("cannot write the pid file %s: %s", config.pid_file, exc.strerror or exc)
            return close(bound, EXIT_START_FAILED)
    try:
        if config.user:
            try:
                switch_user(config, config.pid_file)
            except (OSError, KeyError) as exc:
                log.error("cannot switch to user %s: %s", config.user, exc.args[0] if exc.args else exc)
                return close(bound, EXIT_START_FAILED)
        if config.workers != 1:
            try:
                prepare_store(config)       # as the user: the files SQLite makes are the user's
            except Exception as exc:
                log.error("cannot start: %s", exc)
                return close(bound, EXIT_START_FAILED)
        if config.workers == 1:
            return run_alone(config, bound, argv, metrics_sock, web)
        return Arbiter(config, bound, argv, metrics_sock, web=web).run()
    finally:
        if web is not None:
            web.close()
        metrics.cleanup()
        if config.pid_file:
            remove_pid_file(config.pid_file)


def run_alone(config, bound, argv, metrics_sock=None, web=None) -> int:
    """--workers 1: this process serves, with no master."""
    set_title(f"single [{' '.join('%s:%d' % sock.getsockname()[:2] for _, sock in bound)}]")
    worker = Worker(config, bound, argv, metrics_sock=metrics_sock)
    try:
        worker.boot()
    except Exception as exc:
        log.error("cannot start: %s", exc)
        worker.stop(graceful=False)
        return close(bound, EXIT_START_FAILED)
    log.info("gsmtpd ready: hostname=%s store=%s allowed_hosts=%s", config.hostname,
             configuration.redact_url(config.store), ",".join(config.allowed_hosts))
    notify.notify("READY=1", "STATUS=serving", f"MAINPID={os.getpid()}")
    watcher = gevent.spawn(keep_web_running, web) if web is not None else None
    try:
        return worker.serve()
    finally:
        if watcher is not None:
            watcher.kill()


def keep_web_running(web) -> None:
    """--workers 1 has no master loop: this greenlet starts the web process and restarts it."""
    while True:
        web.check()
        gevent.sleep(0.5)


def close(bound, status: int) -> int:
    for _, sock in bound:
        sock.close()
    return status


def write_pid_file(path: str) -> None:
    with open(path + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(path + ".tmp", path)


def remove_pid_file(path: str) -> None:
    """Only our own: a newer gsmtpd may have written its pid there since."""
    try:
        with open(path) as fh:
            if fh.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError as exc:
        log.warning("cannot remove the pid file %s: %s", path, exc.strerror or exc)


if __name__ == "__main__":
    sys.exit(main())
