"""Log lines (gsmtpd/logs.py): the lean text formatter writes what the stdlib one would."""
import logging
import re
import sys

from gsmtpd import logs


def record(created: float, exc_info=None) -> logging.LogRecord:
    rec = logging.LogRecord("gsmtpd.session", logging.INFO, "", 0, "message id=%s size=%d",
                            ("abc", 42), exc_info)
    rec.created, rec.msecs = created, (created - int(created)) * 1000
    return rec


def test_text_lines_match_the_stdlib_formatter_across_seconds():
    lean, stdlib = logs.TextFormatter(), logging.Formatter(logs.TEXT_FORMAT)
    for created in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.5, 1_700_000_000.25):
        assert lean.format(record(created)) == stdlib.format(record(created))


def test_a_traceback_follows_the_line_as_in_the_stdlib():
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    lean, stdlib = logs.TextFormatter(), logging.Formatter(logs.TEXT_FORMAT)
    line = lean.format(record(1_700_000_000.5, info))
    assert line == stdlib.format(record(1_700_000_000.5, info))
    assert line.endswith("ValueError: boom")


def test_lean_records_have_every_attribute_of_the_stdlib_record():
    args = ("message id=%s size=%d", ("abc", 42), None)
    stdlib = logging.LogRecord("gsmtpd.session", logging.INFO, "(unknown file)", 0, *args)
    lean = logs.LeanRecord("gsmtpd.session", logging.INFO, "(unknown file)", 0, *args)
    assert set(vars(stdlib)) <= set(vars(lean))
    assert lean.getMessage() == stdlib.getMessage() == "message id=abc size=42"
    assert (lean.process, lean.filename, lean.levelname) == (stdlib.process, stdlib.filename, "INFO")
    mapping = logs.LeanRecord("x", logging.INFO, "/a/b.py", 1, "%(n)d", ({"n": 7},), None)
    assert mapping.getMessage() == "7" and mapping.module == "b"


def test_the_direct_lines_are_the_lines_logging_writes(tmp_path, monkeypatch):
    class Config:
        logfile, verbose, log_format, log_level = str(tmp_path / "log.txt"), False, "text", "info"
    root = logging.getLogger()
    others = root.handlers[:]          # pytest's own capture handlers: off the way for this test
    logs.configure(Config)
    try:
        root.handlers = logs._installed[:]
        logger = logging.getLogger("gsmtpd.session")
        fmt = "message id=%s ip=%s size=%d seconds=%.2f reply=%s"
        values = ("3e6b", "203.0.113.9", 2841, 0.125, "250 2.0.0 OK: queued as 3e6b")
        with monkeypatch.context() as patched:
            patched.setattr(logger, "makeRecord", None)     # the direct path makes no record
            logs.info(logger, fmt, *values)
        logger.info(fmt, *values)
        logs.flush()
        direct, stdlib = (tmp_path / "log.txt").read_text().splitlines()
        # Apart from the milliseconds between the two, the same line.
        assert direct[23:] == stdlib[23:] == (
            f" [{logs.this_process.current()}] INFO gsmtpd.session: message id=3e6b "
            "ip=203.0.113.9 size=2841 seconds=0.12 reply=250 2.0.0 OK: queued as 3e6b")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", direct[:23])
    finally:
        for handler in logs._installed:
            handler.close()
        root.handlers = others
        logs._installed.clear()


def test_another_handler_on_the_way_still_gets_the_record(tmp_path):
    class Config:
        logfile, verbose, log_format, log_level = str(tmp_path / "log.txt"), False, "text", "info"
    logs.configure(Config)
    seen = []
    extra = logging.Handler()
    extra.emit = seen.append
    logging.getLogger().addHandler(extra)
    try:
        logs.info(logging.getLogger("gsmtpd.session"), "disconnect ip=%s messages=%d", "192.0.2.1", 1)
        logs.flush()
        assert [r.getMessage() for r in seen] == ["disconnect ip=192.0.2.1 messages=1"]
        assert (tmp_path / "log.txt").read_text().endswith("disconnect ip=192.0.2.1 messages=1\n")
    finally:
        logging.getLogger().handlers.clear()
        logs._installed.clear()
