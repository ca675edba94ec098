"""This process's pid, remembered and renewed in a forked child.

os.getpid() is a system call; the log lines and the per-address counts want the pid for
every message, and the profile showed those calls.
"""
from __future__ import annotations

import os

_pid = os.getpid()


def _renew() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_renew)


def current() -> int:
    return _pid
