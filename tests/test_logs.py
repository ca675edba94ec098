"""Log lines (gsmtpd/logs.py): the lean text formatter writes what the stdlib one would."""
import logging
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
