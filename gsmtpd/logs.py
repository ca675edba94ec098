"""Logging: where lines go (a file, stderr), how they look (text or JSON), and reopening the
file after logrotate moved it (SIGUSR1).

Every process (master and workers) writes its own lines to the same file, opened for append,
so each line is one write(2) and lines of different processes do not mix. Each line carries
the pid, so a reader sees which worker served a connection.

``configure(config)`` may be called again on reload: it replaces the handlers it installed.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# key=value pairs of the per-message and per-connection lines (session.py):
#   message id=3e6b... ip=203.0.113.9 from=<a@example.org> to=b@example.com size=2841 reply=250 2.0.0 OK: ...
# A value runs to the next " key=" (so "reply=250 2.0.0 OK: queued as X" stays whole).
FIELD = re.compile(r"(?:^|\s)([a-z_]+)=")
RESERVED = {"time", "level", "logger", "message", "pid", "exc"}
# Loggers whose lines are made of such fields (others may hold a stray "x=y" in free text).
FIELD_LOGGERS = {"gsmtpd.session"}

_installed: list[logging.Handler] = []


def fields(message: str) -> dict[str, str]:
    """The key=value fields of a log message, for JSON lines; {} when it has none."""
    found = list(FIELD.finditer(message))
    result = {}
    for here, after in zip(found, found[1:] + [None]):
        key = here.group(1)
        if key in RESERVED or key in result:
            continue
        value = message[here.end():after.start() if after else len(message)].strip()
        if value.startswith("<") and value.endswith(">"):
            value = value[1:-1]
        result[key] = value
    return result


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, and the line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        created = time.gmtime(record.created)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "pid": record.process,
        }
        if record.name in FIELD_LOGGERS:
            for key, value in fields(message).items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler that ``reopen()`` points at the file now at its path (after a rename)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


def configure(config) -> None:
    """Install (or replace) the handlers for ``config``: logfile, verbose, log_level, log_format."""
    handlers: list[logging.Handler] = []
    if config.logfile:
        handlers.append(ReopenableFileHandler(config.logfile))
    if config.verbose or not config.logfile:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = JsonFormatter() if config.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    level = logging.DEBUG if config.verbose and config.log_level == "info" else config.log_level.upper()
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(level)


def reopen() -> None:
    """SIGUSR1: logrotate renamed the file; write to a new one at the configured path."""
    for handler in _installed:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()


def flush() -> None:
    for handler in _installed:
        handler.flush()


def log_paths() -> list[str]:
    return [h.baseFilename for h in _installed if isinstance(h, ReopenableFileHandler)]
