"""The command line and configuration: names other tools depend on, and clear failures."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def gsmtpd(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gsmtpd", *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=cwd, timeout=30)


def setting(output: str, name: str) -> str:
    for line in output.splitlines():
        if line.startswith(name + " = "):
            return line.split(" = ", 1)[1]
    raise AssertionError(f"{name} not in {output}")


def test_help_documents_every_option():
    """Every declared setting that has flags: the flags and its environment variable; and
    the options that are not settings."""
    from gsmtpd.config import SETTINGS, env_name
    result = gsmtpd("--help")
    assert result.returncode == 0
    words = set(result.stdout.replace(",", " ").replace("[", " ").replace(";", " ").split())
    wanted = {"--config", "--check-config", "--version"}
    for setting in SETTINGS:
        if setting.cli:
            wanted |= {*setting.flags, "--" + setting.name.replace("_", "-"), env_name(setting)}
    assert sorted(wanted - words) == []


def test_shipped_config_file_is_valid_and_matches_the_defaults():
    shipped = gsmtpd("--config", str(ROOT / "conf" / "gsmtpd.toml"), "--check-config", "--hostname", "h.test")
    defaults = gsmtpd("--check-config", "--hostname", "h.test")
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout == defaults.stdout


def test_precedence_defaults_file_env_command_line(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text('port = 2526\nmax_size = 1000\nallowed_hosts = ["a.test", "*.b.test"]\ntimeout = 5\n')
    result = gsmtpd("--config", str(config), "--check-config", "--max-size", "3000",
                    env={"GSMTPD_MAX_SIZE": "2000", "GSMTPD_TIMEOUT": "7"})
    assert result.returncode == 0, result.stderr
    assert setting(result.stdout, "port") == "2526"            # file over default
    assert setting(result.stdout, "timeout") == "7.0"          # env over file
    assert setting(result.stdout, "max_size") == "3000"        # command line over env
    assert setting(result.stdout, "allowed_hosts") == "['a.test', '*.b.test']"
    assert setting(result.stdout, "max_recipients") == "100"   # default


def test_bad_configuration_lists_every_problem_and_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('max_size = "big"\nno_such_option = 1\nprefer = "rtf"\n')
    result = gsmtpd("--config", str(config), "--port", "99999", "--store", "postgres://x",
                    env={"GSMTPD_TIMEOUT": "soon"})
    assert result.returncode == 2
    for problem in ("max_size", "no_such_option", "prefer", "--port", "--store", "GSMTPD_TIMEOUT"):
        assert problem in result.stderr, problem
    assert "listening" not in result.stderr


def test_short_flags_and_logfile_default(tmp_path):
    result = gsmtpd("-p", "2527", "-l", "-v", "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert setting(result.stdout, "port") == "2527"
    assert setting(result.stdout, "logfile") == "'log.txt'"
    assert setting(result.stdout, "verbose") == "True"


def test_store_password_is_not_printed():
    result = gsmtpd("--store", "mysql://mail:s3cret@db.example:3306/mail", "--check-config")
    assert "s3cret" not in result.stdout and "mysql://mail:***@db.example:3306/mail" in result.stdout


def test_port_in_use_fails_with_a_clear_message(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = gsmtpd("--listen", "127.0.0.1", "--port", str(port), "--store", f"sqlite:///{tmp_path}/x.db")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr


def test_ipv6_listener(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, listen="::1")
    import socket
    with socket.create_connection(("::1", server.port), timeout=10) as sock:
        assert sock.recv(100).startswith(b"220 mx.test ESMTP gsmtpd")
