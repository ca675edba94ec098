"""HUP: read the configuration again, and what of it a running server can take.

The rules are the same for the master and for a single process (``--workers 1``), and live
here only:

- A configuration that does not validate is logged and the running one stays.
- What a Server changes in place (allowed hosts, limits, TLS certificates, log settings) is
  applied by the running processes: no session is dropped.
- ``user`` is taken at start only (files are handed over and root is given up then).
- The listeners, the store and the number of workers need processes that start afresh: the
  master starts a new generation of workers; a single process has no one to hand over to,
  so it keeps what it has and says that a restart is needed. ``workers = 1`` (no master)
  cannot be reached from a master either.
"""
from __future__ import annotations

import logging

from . import config as configuration
from . import notify

# The lines of read() keep the logger name they had when it lived in worker.py (the master
# logged them under it too): log searches, and test_daemon, look for "gsmtpd.worker: reload failed".
log = logging.getLogger("gsmtpd.worker")

NO_MASTER = "without a master (--workers 1) that takes a restart"


def read(argv: list[str] | None):
    """The configuration read again, or None (logged) when it does not validate and the
    running one stays. Tells systemd a reload is under way."""
    try:
        config = configuration.load(argv)
    except configuration.ConfigError as exc:
        log.error("reload failed, keeping the running configuration: %s", "; ".join(exc.problems))
        return None
    notify.notify("RELOADING=1")
    return config


def settle(running, new, alone: bool) -> tuple[object, bool, list[str]]:
    """What a running server does with a new configuration: (the configuration to run with,
    whether it needs a new generation of workers, a warning for each setting kept as it was
    for the caller to log). ``alone``: a single process without a master."""
    kept, notes = {}, []
    if alone:
        if configuration.listeners(new) != configuration.listeners(running):
            notes.append(f"reload: the listeners changed; {NO_MASTER}")
        for name in ("listen", "port", "store", "user"):
            if getattr(new, name) != getattr(running, name):
                kept[name] = getattr(running, name)
                notes.append(f"reload: {name} changed; {NO_MASTER}")
        # The sockets stay as they are; the Server keeps serving them with their old specs.
        return new.replace(**kept), False, notes
    if new.workers == 1:
        kept["workers"] = running.workers
        notes.append(f"reload: workers = 1 (no master) takes a restart; keeping {running.workers} workers")
    if new.user != running.user:
        kept["user"] = running.user
        notes.append("reload: a new user takes a restart")
    config = new.replace(**kept)
    new_workers = (configuration.listeners(config) != configuration.listeners(running)
                   or config.store != running.store or config.workers != running.workers)
    return config, new_workers, notes
