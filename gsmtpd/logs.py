"""Logging: where lines go (a file, stderr), how they look (text or JSON), and reopening the
file after logrotate moved it (SIGUSR1).

Every process (master and workers) writes its own lines to the same file, opened for append.
Lines are written once per turn of the event loop, all of that turn's lines in one write(2)
(two lines a message had been two writes), so lines of different processes never mix
within a line. Each line carries the pid, so a reader sees which worker served a connection.

Two lines per message (the message and the connection's end) cost about 0.09 ms of CPU
per message under smtp-source with the stdlib's defaults: a third of our own work. So
the records skip what no line shows (the caller's file and line, the thread, the
multiprocessing name: the "Optimization" section of the logging docs), the timestamp
text is made once a second, and the handler lock is the real, unpatched RLock rather
than gevent's Python one (emit never yields, so greenlets cannot interleave in it).

``configure(config)`` may be called again on reload: it replaces the handlers it installed.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping

from gevent import get_hub
from gevent.monkey import get_original

from . import pid as this_process
from . import stdlib_adapter

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# key=value pairs of the per-message and per-connection lines (session.py):
#   message id=3e6b... ip=203.0.113.9 from=<a@example.org> to=b@example.com size=2841 reply=250 2.0.0 OK: ...
# A value runs to the next " key=" (so "reply=250 2.0.0 OK: queued as X" stays whole).
FIELD = re.compile(r"(?:^|\s)([a-z_]+)=")
RESERVED = {"time", "level", "logger", "message", "pid", "exc"}
# Loggers whose lines are made of such fields (others may hold a stray "x=y" in free text).
FIELD_LOGGERS = {"gsmtpd.session"}

_installed: list[logging.Handler] = []
_text: "TextFormatter | None" = None     # the installed handlers' formatter, when text
_root = logging.getLogger()


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


# ",000" to ",999": the milliseconds of asctime, looked up rather than formatted ("%03d"
# parses its format spec at every call).
_MILLIS = tuple(f",{millis:03d}" for millis in range(1000))


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the "%Y-%m-%d %H:%M:%S" part of asctime made once a second.
    Lines look exactly as logging.Formatter(TEXT_FORMAT) makes them (test_logs checks)."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int(msecs)
        return self._stamp + (_MILLIS[millis] if millis < 1000 else f",{millis:03d}")

    def line(self, created: float, msecs: float, process: int, levelname: str, name: str, message: str) -> str:
        """A line without its traceback: what format() and logs.info() write."""
        return f"{self.stamp(created, msecs)} [{process}] {levelname} {name}: {message}"

    def format(self, record: logging.LogRecord) -> str:
        """TEXT_FORMAT written out as an f-string: a third of the stdlib's cost."""
        line = self.line(record.created, record.msecs, record.process, record.levelname,
                         record.name, record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


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


_RealRLock = get_original("_thread", "RLock")


class RealLock:
    """Handlers take the unpatched RLock: a C lock, not gevent's Python one. The SQLite
    store's real threads may log too, so some lock is still needed."""

    def createLock(self) -> None:
        self.lock = _RealRLock()


_real_thread_id = get_original("_thread", "get_ident")


class FlushOncePerTurn:
    """A StreamHandler whose lines wait in the stream's buffer until the event loop has run
    what is ready now (gevent's loop.run_callback), then go out in one write. A line logged
    from another real thread (the SQLite store's pool) is written at once, and so is
    everything when flush() is called: at exit, before a fork (os.register_at_fork below,
    or the child would write the parent's lines again), and by logs.flush()."""

    flush_pending = False

    def emit(self, record: logging.LogRecord) -> None:
        # logging.StreamHandler.emit, with the flush deferred.
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self.flush_soon()

    def flush_soon(self) -> None:
        """After a write (with the handler's lock held): flush at the end of this turn."""
        if _real_thread_id() != _loop_thread:
            self.flush()
        elif not self.flush_pending:
            self.flush_pending = True
            get_hub().loop.run_callback(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        super().flush()


class StderrHandler(RealLock, FlushOncePerTurn, logging.StreamHandler):
    pass


class ReopenableFileHandler(RealLock, FlushOncePerTurn, logging.FileHandler):
    """A FileHandler that ``reopen()`` points at the file now at its path (after a rename)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


class LeanRecord(logging.LogRecord):
    """A LogRecord with the same attributes, made with less work: no caller lookup, no
    thread or process names, the pid remembered (and renewed after a fork) rather than
    asked for, and the file name of a path split once. tests/test_logs.py checks it still
    has every attribute the stdlib's record has."""

    def __init__(self, name, level, pathname, lineno, msg, args, exc_info, func=None,
                 sinfo=None, **kwargs):
        created = time.time()
        self.name = name
        self.msg = msg
        # As the stdlib does: a lone mapping argument is the "%(key)s" form.
        if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]
        self.args = args
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.pathname = pathname
        self.filename, self.module = _file_and_module(pathname)
        self.exc_info = exc_info
        self.exc_text = None
        self.stack_info = sinfo
        self.lineno = lineno
        self.funcName = func
        self.created = created
        self.msecs = int((created - int(created)) * 1000) + 0.0
        self.relativeCreated = (created - _LOGGING_STARTED) * 1000
        self.thread = self.threadName = self.processName = self.taskName = None
        self.process = this_process.current()


def _logging_started() -> float:
    """When the logging module was loaded, as a stdlib record's relativeCreated counts
    from: read off one such record rather than logging's private _startTime."""
    record = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
    return record.created - record.relativeCreated / 1000


_LOGGING_STARTED = _logging_started()


@functools.lru_cache(maxsize=64)
def _file_and_module(pathname) -> tuple:
    try:
        filename = os.path.basename(pathname)
        return filename, os.path.splitext(filename)[0]
    except (TypeError, ValueError, AttributeError):
        return pathname, "Unknown module"


def lean_records() -> None:
    """Leave out of every LogRecord what no gsmtpd line prints (the logging docs,
    "Optimization"), and make records with LeanRecord."""
    stdlib_adapter.skip_caller_lookup()
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.setLogRecordFactory(LeanRecord)


def configure(config) -> None:
    """Install (or replace) the handlers for ``config``: logfile, verbose, log_level, log_format."""
    lean_records()
    handlers: list[logging.Handler] = []
    if config.logfile:
        handlers.append(ReopenableFileHandler(config.logfile))
    if config.verbose or not config.logfile:
        handlers.append(StderrHandler(sys.stderr))
    global _text
    formatter = JsonFormatter() if config.log_format == "json" else TextFormatter()
    _text = formatter if isinstance(formatter, TextFormatter) else None
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


# " [pid] INFO name: " by logger name, for info(); forgotten in a forked child (a new pid).
_heads: dict[str, str] = {}
os.register_at_fork(after_in_child=_heads.clear)


def info(logger: logging.Logger, msg: str, *args) -> None:
    """``logger.info(msg, *args)`` for the lines of every message and every connection,
    written straight to the installed handlers as the same text line: no LogRecord, no
    walk through the logging machinery. Taken only when the result is the same, that is
    text lines and nothing but our own handlers on the way (no filter, no other handler:
    pytest's caplog, say, gets the record the usual way). ``args`` are %-format values,
    not the one-mapping form. Two lines a message: bench/instructions.py (W1, Debian
    python3.11) 840k instructions a message with logger.info, 795-808k with this."""
    if not logger.isEnabledFor(logging.INFO):
        return
    text = _text
    if text is None or logger.filters or _root.handlers != _installed:
        logger.info(msg, *args)
        return
    node = logger
    while node is not _root:
        if node.handlers or not node.propagate:
            logger.info(msg, *args)
            return
        node = node.parent
    head = _heads.get(logger.name)
    if head is None:
        head = _heads[logger.name] = f" [{this_process.current()}] INFO {logger.name}: "
    created = time.time()
    # TextFormatter.line, with the part after the time made once per logger.
    line = text.stamp(created, (created - int(created)) * 1000) + head + msg % args + "\n"
    for handler in _installed:
        if handler.filters or handler.level > logging.INFO:
            logger.info(msg, *args)     # (never so: configure() makes them plain)
            return
    for handler in _installed:
        with handler.lock:
            try:
                handler.stream.write(line)
            except Exception:
                handler.handleError(logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0,
                                                      msg, args, None))
                continue
            handler.flush_soon()


def reopen() -> None:
    """SIGUSR1: logrotate renamed the file; write to a new one at the configured path."""
    for handler in _installed:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()


def flush() -> None:
    for handler in _installed:
        handler.flush()


os.register_at_fork(before=flush)
# The thread that runs the event loop: the one that configures logging.
_loop_thread = _real_thread_id()


def log_paths() -> list[str]:
    return [h.baseFilename for h in _installed if isinstance(h, ReopenableFileHandler)]
