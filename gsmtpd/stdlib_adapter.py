"""Every use of the standard library below its documented API, behind one door.

Logging looks up the caller's file and line for every record, by walking the stack, unless
the module-level ``logging._srcfile`` is None: the logging docs ("Optimization") name that
private switch as the way to turn it off, and there is no public one. Setting a name a
later Python no longer reads would silently lose the saving, so ``unsupported()``, run at
startup, says in one sentence what this Python lacks.
"""
from __future__ import annotations

import logging
import sys

# The versions the suite has run against (setup.py: python_requires=">=3.11").
TESTED = "Python 3.11"


def skip_caller_lookup() -> None:
    """Make records without looking up the caller (file, line and function of the logging
    call): no gsmtpd line prints them. Only where the name exists: creating it would hide
    from unsupported() (run after logging is configured) that this Python lacks it."""
    if hasattr(logging, "_srcfile"):
        logging._srcfile = None


def unsupported() -> str | None:
    """None when this Python's logging still has the switch; else what it lacks, the
    running version and the tested range."""
    missing = []
    read = getattr(getattr(logging.Logger, "_log", None), "__code__", None)
    if not hasattr(logging, "_srcfile") or "_srcfile" not in getattr(read, "co_names", ()):
        missing.append("logging._srcfile (read by Logger._log)")
    if not missing:
        return None
    return (f"Python {sys.version.split()[0]} lacks {', '.join(missing)}, which gsmtpd uses; "
            f"the tested versions are {TESTED}")
