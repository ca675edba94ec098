"""``gsmtpd`` on the command line: argv -> config -> logging -> store -> server.

gevent's monkey patching comes first, before anything imports socket, so PyMySQL's socket
only blocks its own greenlet. Exit codes: 0 clean stop, 1 cannot start (store, port),
2 bad configuration.
"""
from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402  (after patching, on purpose)
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from . import config as configuration  # noqa: E402
from .server import Server  # noqa: E402
from .store import Store, TransientError, open_backend  # noqa: E402

log = logging.getLogger("gsmtpd")

EXIT_OK, EXIT_START_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


def setup_logging(config) -> None:
    handlers: list[logging.Handler] = []
    if config.logfile:
        handlers.append(logging.FileHandler(config.logfile))
    if config.verbose or not config.logfile:
        handlers.append(logging.StreamHandler(sys.stderr))
    level = logging.DEBUG if config.verbose and config.log_level == "info" else config.log_level.upper()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
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

    setup_logging(config)
    store = Store(open_backend(config.store, config.save_timeout), batch_max=config.batch_max,
                  queue_max=config.queue_max, save_timeout=config.save_timeout)
    try:
        store.start()
    except TransientError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_START_FAILED
    server = Server(config, store)
    try:
        server.start()
    except OSError as exc:
        log.error("cannot listen on %s port %s: %s", config.listen, config.port, exc.strerror or exc)
        store.close()
        return EXIT_START_FAILED
    log.info("gsmtpd ready: hostname=%s store=%s allowed_hosts=%s", config.hostname,
             configuration.redact_url(config.store), ",".join(config.allowed_hosts))

    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    stopping.wait()
    log.info("stopping: no new connections, waiting for open sessions")
    server.stop(timeout=10.0)
    store.close()
    log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
