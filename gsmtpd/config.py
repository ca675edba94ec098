"""Every setting, declared once.

The command line, the TOML file (``--config``), the environment (``GSMTPD_<NAME>``)
and ``--help`` are all derived from the ``SETTINGS`` list below, as gunicorn derives
its parser from its declared settings. Precedence: defaults < file < env < command line.

``load(argv)`` returns a ``Config`` or raises ``ConfigError`` carrying *every* problem
found, so a user fixes a bad configuration in one go.
"""
from __future__ import annotations

import argparse
import os
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__

MiB = 1024 * 1024


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- value parsers: each takes a str (env, argv) or a TOML value and returns the value or raises ValueError


def as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, int):
        return value
    text = str(value).strip().replace("_", "")
    if not text.lstrip("-").isdigit():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(text)


def as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def as_str(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def as_list(value: Any) -> list[str]:
    """A comma-separated string or a TOML array of strings."""
    if isinstance(value, (list, tuple)):
        items = [as_str(v) for v in value]
    else:
        items = as_str(value).split(",")
    return [item.strip() for item in items if item.strip()]


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = as_str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text
    return parse


def at_least(minimum: float, parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        result = parse(value)
        if result < minimum:
            raise ValueError(f"must be at least {minimum}, got {result}")
        return result
    check.__name__ = parse.__name__
    return check


def zero_or_at_least(minimum: float, parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """0 (meaning "the default rule") or at least ``minimum``."""
    bounded = at_least(minimum, parse)

    def check(value: Any) -> Any:
        result = parse(value)
        return result if result == 0 else bounded(result)
    check.__name__ = parse.__name__
    return check


def port_number(value: Any) -> int:
    port = as_int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"a port is 0..65535, got {port}")
    return port


def store_url(value: Any) -> str:
    url = as_str(value).strip()
    if not (url.startswith("mysql://") or url.startswith("sqlite://")):
        raise ValueError(f"expected mysql://user:pass@host:port/db or sqlite:///path, got {url!r}")
    if url.startswith("mysql://"):
        from .members import parse_mysql_url
        parse_mysql_url(url)       # several hosts: each must be host[:port] or a socket path
    return url


@dataclass(frozen=True)
class ListenerSpec:
    host: str
    port: int
    tls: str = "none"              # none | starttls | implicit
    proxy_protocol: bool = False   # expect a PROXY v1/v2 header from a trusted peer

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} tls={self.tls}" + (" proxy_protocol" if self.proxy_protocol else "")


def host_port(value: Any) -> tuple[str, int]:
    """'0.0.0.0:25', '[::]:465', '127.0.0.1:0' -> (host, port)."""
    text = as_str(value).strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (IPv6 as [::1]:25), got {text!r}")
    return host, port_number(port)


LISTENER_KEYS = {"address", "tls", "proxy_protocol"}


def listener_list(value: Any) -> list[ListenerSpec]:
    """TOML ``[[listener]]`` tables: address = "0.0.0.0:25", tls = "starttls", proxy_protocol = true."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("expected [[listener]] tables")
    specs = []
    for number, table in enumerate(value, 1):
        unknown = set(table) - LISTENER_KEYS
        if unknown:
            raise ValueError(f"listener {number}: unknown keys {', '.join(sorted(unknown))}")
        if "address" not in table:
            raise ValueError(f"listener {number}: address = \"HOST:PORT\" is required")
        host, port = host_port(table["address"])
        tls = one_of("none", "starttls", "implicit")(table.get("tls", "none"))
        specs.append(ListenerSpec(host, port, tls, as_bool(table.get("proxy_protocol", False))))
    return specs


def network_list(value: Any) -> list[str]:
    """Comma-separated CIDRs or addresses: '127.0.0.0/8,10.1.2.3,::1'."""
    import ipaddress
    networks = as_list(value)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"not an IP network: {network!r}") from None
    return networks


@dataclass(frozen=True)
class Setting:
    name: str                      # attribute name, TOML key, and GSMTPD_<NAME.upper()>
    parse: Callable[[Any], Any]
    default: Any
    help: str
    flags: tuple[str, ...] = ()    # extra short flags for argparse
    cli: bool = True               # False: file and environment only
    metavar: str | None = None


def _fqdn() -> str:
    return socket.getfqdn() or "localhost"


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's physical memory, or its cgroup's
    limit when that is less (a container, a systemd MemoryMax=); 0 when nothing says."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        physical = 0
    limit = cgroup_memory_limit()
    return min(physical, limit) if physical and limit else physical or limit


# cgroup v1 writes "no limit" as the largest page-aligned long (9223372036854771712); v2
# writes "max". Anything this big is no limit either.
NO_CGROUP_LIMIT = 1 << 62


def cgroup_limit_in(path: str) -> int:
    """The memory limit one cgroup file sets (v2 memory.max, v1 memory.limit_in_bytes):
    bytes, or 0 for none ("max", v1's huge number, no such file, not a number)."""
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return 0
    if not text.isdigit():
        return 0               # "max"
    limit = int(text)
    return limit if 0 < limit < NO_CGROUP_LIMIT else 0


def cgroup_memory_limit(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int:
    """The least memory limit of this process's cgroups, v2 and v1 (0: none). Each line of
    ``membership`` is "id:controllers:path" (cgroups(7)): "0::/path" is the v2 group, mounted
    at ``root`` (or at root/unified on a hybrid v1/v2 system); a v1 line whose controllers
    include memory names its group under root/memory. A parent's limit binds its children,
    so the group and each parent up to the mount are read. In a container without a cgroup
    namespace of its own the path is the host's and is not found under the mount, whose own
    files are then the container's limit: missing files are passed over."""
    try:
        with open(membership) as file:
            lines = file.read().splitlines()
    except OSError:
        return 0
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            places, name = [root, os.path.join(root, "unified")], "memory.max"
        elif "memory" in controllers.split(","):
            places, name = [os.path.join(root, "memory")], "memory.limit_in_bytes"
        else:
            continue
        parts = [part for part in path.split("/") if part and part not in (".", "..")]
        for place in places:
            for depth in range(len(parts), -1, -1):
                limits.append(cgroup_limit_in(os.path.join(place, *parts[:depth], name)))
    return min((limit for limit in limits if limit), default=0)


def default_memory_budget(workers: int) -> int:
    """A quarter of the memory this process may use (the machine's, or its cgroup's limit
    when less) for mail in flight, shared by the workers: the database (often on the same
    machine), the page cache and the workers' own ~50 MB each need the rest. Never under
    64 MiB, the room for three 10 MiB messages (budget.py)."""
    return max(64 * MiB, machine_memory() // 4 // max(1, workers))


# A default of a callable is computed when the config is loaded (the hostname is the machine's).
SETTINGS: list[Setting] = [
    Setting("port", port_number, 25, "TCP port to listen on (0: any free port, logged at start)", ("-p",)),
    Setting("listen", as_str, "0.0.0.0", "address to listen on: 0.0.0.0, ::, 127.0.0.1 ..."),
    Setting("hostname", as_str, _fqdn, "name in the greeting and the Received header (default: the FQDN)"),
    Setting("allowed_hosts", as_list, None,
            "comma-separated domains to receive mail for, '*' wildcards allowed "
            "(*.example.com); default: the hostname", metavar="LIST"),
    Setting("primary_host", as_str, "",
            "file every accepted local part under local@PRIMARY_HOST in the `to` column (catch-all)"),
    Setting("store", store_url, "sqlite:///gsmtpd.db",
            "where mail goes: mysql://user:pass@host:port/db[?unix_socket=/path] or sqlite:///path.db",
            metavar="URL"),
    Setting("max_size", at_least(1, as_int), 10 * MiB,
            "largest message in bytes, advertised as SIZE (RFC 1870)", metavar="BYTES"),
    Setting("max_recipients", at_least(1, as_int), 100,
            "recipients per message; RFC 5321 4.5.3.1.8 asks for at least 100", metavar="N"),
    Setting("timeout", at_least(1, as_float), 60.0,
            "seconds to wait for each command line from a client", metavar="SECONDS"),
    Setting("data_timeout", at_least(1, as_float), 600.0,
            "seconds the whole DATA phase may take (RFC 5321 4.5.3.2.6 suggests 10 minutes)",
            metavar="SECONDS"),
    Setting("max_clients", at_least(1, as_int), 1000,
            "concurrent connections per process; beyond it: 421 4.3.2 and close", metavar="N"),
    Setting("max_errors", at_least(1, as_int), 10,
            "unknown commands and errors per session before 421 and close", metavar="N"),
    Setting("save_timeout", at_least(0.1, as_float), 15.0,
            "seconds a message may wait for its commit; then 451 4.3.0", metavar="SECONDS"),
    Setting("batch_max", at_least(1, as_int), 200,
            "most messages written in one INSERT/COMMIT (group commit)", metavar="N"),
    # --- memory (budget.py): every byte of mail a worker holds counts against its budget
    Setting("memory_budget", at_least(0, as_int), 0,
            "bytes of mail one worker may hold at once (DATA being read, messages waiting for "
            "and being written); beyond it 452 4.3.1. 0: a quarter of the machine's memory (or "
            "of its cgroup's limit, when less) over the workers, at least 64 MiB", metavar="BYTES"),
    Setting("max_stored_bytes", at_least(1, as_int), 1024 * MiB,
            "bytes of rows one message may make (its size and body, once per recipient): a RCPT "
            "past it for the declared SIZE gets 452 4.5.3 and the client sends to the rest later. "
            "MariaDB wrote 100-190 MB/s of rows on the project's machine: 1 GiB commits well "
            "within the default save timeout", metavar="BYTES"),
    Setting("queue_max", at_least(1, as_int), 2000,
            "messages waiting for the writer before sessions wait for room", metavar="N"),
    # --- a clustered store (MariaDB Galera; README "Scaling out")
    # 0: 64 MiB on a Galera member (mysql_store.CLUSTER_MAX_BYTES says why), no bound on a
    # single server, where a transaction is no write-set and a big message to many
    # recipients must still be stored (issue #15).
    Setting("batch_max_bytes", zero_or_at_least(1 * MiB, as_int), 0,
            "most bytes of rows in one transaction: a batch is cut at this size, and a message "
            "whose rows alone exceed it gets 552 5.3.4 (MySQL stores only; 0: 64 MiB on a "
            "Galera member, none on a single server)", metavar="BYTES"),
    Setting("fail_back_after", at_least(0, as_float), 30.0,
            "with several database hosts in --store: seconds a preferred member must have been "
            "ready before the writer returns to it (no flapping)", metavar="SECONDS"),
    Setting("prefer", one_of("html", "plain"), "html",
            "which part of multipart/alternative becomes the stored body"),
    Setting("logfile", as_str, "",
            "log to this file ('-l' alone: ./log.txt); default: stderr", ("-l",), metavar="FILE"),
    Setting("verbose", as_bool, False, "also log to the console, and log more", ("-v",)),
    Setting("log_level", one_of("debug", "info", "warning", "error"), "info", "log level"),
    Setting("log_format", one_of("text", "json"), "text", "log line format: text, or json for log shippers"),
    # --- processes (a master forks the workers; see arbiter.py)
    Setting("workers", at_least(0, as_int), 0,
            "worker processes; 0: one per CPU; 1: a single process without a master", metavar="N"),
    Setting("user", as_str, "", "after binding the ports, switch to this user (e.g. nobody)", metavar="NAME"),
    Setting("pid_file", as_str, "", "write the master's process id to this file", metavar="FILE"),
    Setting("graceful_timeout", at_least(0, as_float), 30.0,
            "on TERM, seconds open sessions get to finish before they are cut off", metavar="SECONDS"),
    Setting("worker_timeout", at_least(1, as_float), 30.0,
            "a worker whose event loop has not checked in for this long is killed and replaced",
            metavar="SECONDS"),
    Setting("metrics", as_str, "", "serve Prometheus metrics and /healthz on ADDR:PORT (off when empty)",
            metavar="ADDR:PORT"),
    # --- the front door (TLS, proxies, limits against abuse)
    Setting("listener", listener_list, None,
            "[[listener]] tables (file only): address, tls = none|starttls|implicit, proxy_protocol; "
            "when absent, one listener on --listen/--port", cli=False),
    Setting("tls_cert", as_str, "", "PEM certificate chain; enables STARTTLS", metavar="FILE"),
    Setting("tls_key", as_str, "", "PEM private key for --tls-cert", metavar="FILE"),
    Setting("trusted_networks", network_list, [],
            "networks allowed to send PROXY headers and XCLIENT (comma-separated CIDRs)", metavar="LIST"),
    Setting("max_per_ip", at_least(1, as_int), 50,
            "concurrent connections from one client address; beyond it 421 4.7.0", metavar="N"),
    Setting("bare_lf", one_of("normalize", "reject"), "normalize",
            "a bare LF in message content: store it as CRLF, or reject the message with 550 5.5.2"),
    Setting("early_talkers", one_of("accept", "reject"), "accept",
            "a client that talks before the greeting: answer it in order, or 554 5.5.0 and close"),
    Setting("greet_pause", at_least(0, as_float), 1.0,
            "with early_talkers = reject: seconds to wait before the greeting, watching for early talk",
            metavar="SECONDS"),
    # --- the read side: mailbox API, live inbox, retention (gsmtpd/web/, retention.py)
    Setting("web", as_str, "",
            "serve the mailbox API and the web inbox on ADDR:PORT from a child process (off when empty)",
            metavar="ADDR:PORT"),
    Setting("web_token", as_str, "",
            "every API request must carry 'Authorization: Bearer TOKEN' (default: a mailbox is "
            "readable by whoever knows its address)", metavar="TOKEN"),
    Setting("retention", at_least(0, as_int), 0,
            "delete rows older than this many seconds (0: keep forever); runs in the web process",
            metavar="SECONDS"),
]

BY_NAME = {s.name: s for s in SETTINGS}


@dataclass
class Config:
    values: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    check_only: bool = False

    def __post_init__(self) -> None:
        # Settings become plain attributes: sessions read them on every command, and a
        # lookup through __getattr__ cost ~25 calls per message.
        for name, value in self.values.items():
            if name not in ("values", "config_file", "check_only"):
                self.__dict__[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes: Any) -> "Config":
        return Config({**self.values, **changes}, self.config_file, self.check_only)


def env_name(setting: Setting) -> str:
    return "GSMTPD_" + setting.name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gsmtpd",
        description="Inbound-only SMTP server that stores every message it accepts in MySQL or SQLite.",
        epilog="Every option can also be set in the TOML file given with --config (key = option name "
               "with underscores) and as an environment variable GSMTPD_<OPTION> (e.g. GSMTPD_MAX_SIZE). "
               "Precedence: defaults < config file < environment < command line.",
    )
    parser.add_argument("--version", action="version", version=f"gsmtpd {__version__}")
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings (see conf/gsmtpd.toml)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it, and exit (status 2 when invalid)")
    for setting in SETTINGS:
        if not setting.cli:
            continue
        flags = (*setting.flags, "--" + setting.name.replace("_", "-"))
        default = setting.default() if callable(setting.default) else setting.default
        help_text = f"{setting.help} [{env_name(setting)}; default: {default if default not in (None, '') else '-'}]"
        if setting.parse is as_bool:
            parser.add_argument(*flags, dest=setting.name, action="store_const", const="true",
                                default=None, help=help_text)
        elif setting.name == "logfile":
            parser.add_argument(*flags, dest=setting.name, nargs="?", const="log.txt", default=None,
                                metavar=setting.metavar, help=help_text)
        else:
            parser.add_argument(*flags, dest=setting.name, default=None,
                                metavar=setting.metavar or setting.name.upper(), help=help_text)
    return parser


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Defaults < file < environment < command line; raises ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    problems: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}  # name -> (value, where it came from)

    config_file = args.config or environ.get("GSMTPD_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:
            problems.append(f"{config_file}: cannot read: {exc.strerror}")
            table = {}
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"{config_file}: not valid TOML: {exc}")
            table = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in BY_NAME:
                problems.append(f"{config_file}: unknown setting {key!r}")
                continue
            raw[name] = (value, f"{config_file}: {key}")

    for setting in SETTINGS:
        if env_name(setting) in environ:
            raw[setting.name] = (environ[env_name(setting)], env_name(setting))

    for setting in SETTINGS:
        value = getattr(args, setting.name, None)
        if value is not None:
            raw[setting.name] = (value, "--" + setting.name.replace("_", "-"))

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in raw:
            value, origin = raw[setting.name]
            try:
                values[setting.name] = setting.parse(value)
            except ValueError as exc:
                problems.append(f"{origin}: {exc}")
        else:
            values[setting.name] = setting.default() if callable(setting.default) else setting.default

    if not values.get("allowed_hosts"):
        values["allowed_hosts"] = [values.get("hostname") or "localhost"]
    if not values.get("workers"):
        values["workers"] = os.cpu_count() or 1
    if not values.get("memory_budget") and values.get("workers"):
        values["memory_budget"] = default_memory_budget(values["workers"])
    problems.extend(_check_consistency(values))
    if problems:
        raise ConfigError(problems)
    return Config(values, config_file, args.check_config)


def listeners(config: "Config") -> list[ListenerSpec]:
    """The [[listener]] tables, or the one listener of --listen/--port."""
    if config.listener:
        return list(config.listener)
    return [ListenerSpec(config.listen, config.port, "starttls" if config.tls_cert else "none")]


def _check_consistency(values: dict[str, Any]) -> list[str]:
    problems = []
    if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
        problems.append("tls_cert and tls_key go together")
    for name in ("tls_cert", "tls_key"):
        if values.get(name) and not os.access(values[name], os.R_OK):
            problems.append(f"{name}: cannot read {values[name]!r}")
    if not values.get("tls_cert") and any(spec.tls != "none" for spec in values.get("listener") or []):
        problems.append("a listener wants TLS but tls_cert/tls_key are not set")
    if values.get("metrics"):
        try:
            host_port(values["metrics"])
        except ValueError as exc:
            problems.append(f"metrics: {exc}")
    if values.get("web"):
        try:
            host_port(values["web"])
        except ValueError as exc:
            problems.append(f"web: {exc}")
    for host in values.get("allowed_hosts") or []:
        if "*" in host.replace("*.", "", 1) and host != "*":
            problems.append(f"allowed_hosts: {host!r}: a wildcard may only lead, as in *.example.com")
    if values.get("listen") is not None:
        try:
            socket.getaddrinfo(values["listen"], None, flags=socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            problems.append(f"listen: {values['listen']!r} is not an IP address")
    return problems


def describe(config: Config) -> str:
    """The effective settings, one per line, as --check-config prints them."""
    lines = []
    for setting in SETTINGS:
        value = config.values[setting.name]
        if setting.name == "store":
            value = redact_url(value)
        if setting.name == "web_token" and value:
            value = "***"
        lines.append(f"{setting.name} = {value!r}")
        if setting.name == "store" and value.startswith("mysql://"):
            from .members import parse_mysql_url
            members = parse_mysql_url(config.values["store"]).members
            lines.append(f"# store members, in order of preference: {', '.join(map(str, members))}")
    return "\n".join(lines)


def redact_url(url: str) -> str:
    """mysql://user:secret@host -> mysql://user:***@host, for logs."""
    head, sep, tail = url.partition("://")
    creds, at, rest = tail.rpartition("@")
    if at and ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest}"
    return url
