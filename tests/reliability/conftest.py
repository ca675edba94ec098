"""Fixtures of the reliability suite: a throwaway MariaDB that tests may stop and stall, and
the figures of every scenario printed at the end of the run."""
from __future__ import annotations

import os
import uuid

import pytest

from . import mariadb
from .scenarios import FIGURES


@pytest.fixture(scope="package")
def throwaway_mariadb(tmp_path_factory):
    """Our own mariadbd (own data directory, socket and port): never the shared one."""
    reason = mariadb.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: MySQL tests must not skip)")
        pytest.skip(reason)
    # A short base path: the Unix socket path must stay under ~108 bytes.
    server = mariadb.ThrowawayMariaDB()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def throwaway_store(throwaway_mariadb):
    """A fresh database on the throwaway server, started again if a test left it down."""
    throwaway_mariadb.start()
    return mariadb.ThrowawayStore(throwaway_mariadb, "rl_" + uuid.uuid4().hex[:12])


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for text in FIGURES:
            terminalreporter.write_line(text)
