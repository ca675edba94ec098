"""The one door to the standard library's private names (gsmtpd/stdlib_adapter.py), on the
running Python."""
import logging
import sys

from conftest import ROOT, start_after
from gsmtpd import logs, stdlib_adapter


def test_this_python_has_everything_gsmtpd_uses():
    assert stdlib_adapter.unsupported() is None


def test_a_python_without_the_switch_stops_the_start_naming_it(tmp_path):
    """As gsmtpd would meet a Python whose logging no longer reads _srcfile: exit 1 at start,
    before any session, with the reason in the log (setting the name would silently do
    nothing). Here Logger._log is a wrapper that does not read it."""
    done = start_after("import sys, logging\n"
                       "original = logging.Logger._log\n"
                       "logging.Logger._log = lambda self, *args, **kwargs: original(self, *args, **kwargs)\n",
                       tmp_path)
    assert done.returncode == 1
    version = sys.version.split()[0]
    assert (f"cannot start: Python {version} lacks logging._srcfile (read by Logger._log), which gsmtpd uses; "
            "the tested versions are Python 3.11") in done.stderr
    assert "listening on" not in done.stderr


def test_records_count_from_when_logging_was_loaded_as_the_stdlib_does():
    ours = logs.LeanRecord("x", logging.INFO, "/a/b.py", 1, "m", None, None)
    theirs = logging.LogRecord("x", logging.INFO, "/a/b.py", 1, "m", None, None)
    assert 0 <= theirs.relativeCreated - ours.relativeCreated < 1000


def test_no_module_outside_the_adapters_uses_a_library_private_name():
    """The three modules above are the only ones that reach a library's private names; a
    stdlib name that started with an underscore would also be found here."""
    import re
    private = re.compile(r"\b(?:logging|codecs|pymysql|gevent|sys|os|socket|ssl)\._[a-z]\w*")
    found = []
    for path in sorted((ROOT / "gsmtpd").rglob("*.py")):
        if path.name in ("gevent_adapter.py", "pymysql_adapter.py", "stdlib_adapter.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for match in private.finditer(code):
                if match.group() != "os._exit":   # documented: the way a forked child ends
                    found.append(f"{path.name}:{number}: {match.group()}")
    assert found == []
