"""What the process that bound the listeners does before it serves or forks workers, the
same with a master or without one (``--workers 1``): name itself for ps, make the SQLite
database once, hand the files it writes to ``--user`` and give up root.

Order (cli.py): bind -> metrics socket -> pid file -> switch_user -> prepare_store (with a
master: as the user, so the files SQLite makes are the user's) -> serve or fork.
"""
from __future__ import annotations

import logging
import os

try:
    import setproctitle
except ImportError:  # pragma: no cover
    pass

from . import logs, metrics

log = logging.getLogger("gsmtpd.startup")


def set_title(role: str) -> None:
    """What ps shows: "gsmtpd: master [...]", "gsmtpd: worker"."""
    title = f"gsmtpd: {role}"
    try:
        setproctitle.setproctitle(title)
    except NameError:  # pragma: no cover - setproctitle is a dependency; comm is the fallback
        try:
            with open("/proc/self/comm", "w") as comm:
                comm.write(title[:15])
        except OSError:
            pass


# --- before forking


def prepare_store(config) -> None:
    """SQLite: create the database and switch it to WAL once, here, before the workers open
    it together: two connections turning a new file to WAL at the same moment get
    "database is locked" without waiting (the WAL switch does not use the busy timeout).
    WAL is a property of the file, so the workers find it done. Raises StoreMisconfigured."""
    if config.store.startswith("sqlite:"):
        from .store import open_backend
        backend = open_backend(config.store, config.save_timeout)
        backend.connect()
        backend.close()


# --- --user: after binding, before forking


def switch_user(config, pid_file: str = "") -> None:
    """Hand the files gsmtpd writes (log, pid file, an SQLite store) to ``config.user``, load
    what workers would import lazily, then drop root: setgid, initgroups, setuid. Raises
    OSError or KeyError with a message fit for the log."""
    import pwd
    try:
        user = pwd.getpwnam(config.user)
    except KeyError:
        raise KeyError(f"no such user {config.user!r}") from None
    if os.geteuid() != 0:
        if os.geteuid() == user.pw_uid:
            return
        raise PermissionError(f"switching to user {config.user!r} needs root")
    for path in handed_over(config, pid_file):
        os.chown(path, user.pw_uid, user.pw_gid)
    preload()
    os.setgid(user.pw_gid)
    os.initgroups(user.pw_name, user.pw_gid)
    os.setuid(user.pw_uid)
    log.info("running as user %s (uid %d)", user.pw_name, user.pw_uid)


def handed_over(config, pid_file: str) -> list[str]:
    """The paths the user must be able to write: the log file, the pid file, and an SQLite
    database with its -wal and -shm files (created now when missing, with a directory we
    create). SQLite running as the user also creates -wal/-shm in the database's directory,
    so an existing directory must be writable by the user (e.g. /var/lib/gsmtpd owned by it)."""
    paths = [path for path in (*logs.log_paths(), pid_file, os.environ.get(metrics.ENV))
             if path and os.path.exists(path)]
    if config.store.startswith("sqlite:"):
        from .store import open_backend
        database = os.path.abspath(open_backend(config.store, config.save_timeout).path)
        directory = os.path.dirname(database)
        if not os.path.isdir(directory):
            os.makedirs(directory)
            paths.append(directory)
        if not os.path.exists(database):
            open(database, "ab").close()
        paths.extend(p for p in (database, database + "-wal", database + "-shm") if os.path.exists(p))
    return paths


def preload() -> None:
    """Workers run as the user, who may not be able to read the Python installation (say,
    under /root): import now what would otherwise be imported on first use, the two store
    backends and every codec a message may be converted from."""
    import encodings
    import importlib
    import pkgutil
    for module in pkgutil.iter_modules(encodings.__path__):
        try:
            importlib.import_module("encodings." + module.name)
        except Exception:  # codecs of other platforms (mbcs, oem ...)
            pass
    # (PyMySQL's connections module imports its auth scramblers itself, with mysql_store.)
    for name in ("gsmtpd.mysql_store", "gsmtpd.sqlite_store", "sqlite3"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
