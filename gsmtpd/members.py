"""The database members of a MySQL store URL, and which of them the writer uses.

A store URL may list several hosts, in order of preference (a Galera cluster, or a primary
and its stand-ins)::

    mysql://user:pass@db1:3306,db2:3306,[2001:db8::3]:3306/gsmtpd
    mysql://user:pass@%2Frun%2Fmysqld%2Fdb1.sock,db2/gsmtpd       (a Unix socket: its path,
                                                                   percent-encoded, as libpq spells it)
    mysql://user:pass@localhost/gsmtpd?unix_socket=/run/mysqld/mysqld.sock   (one member)

The writer uses the first member that answers and is ready. When it fails, the writer
moves on to the next one; it goes back to a more preferred member only once that member has
answered every probe for ``fail_back_after`` seconds, so a member that flaps (up, down,
up...) does not drag the writer with it. ``MemberSet`` holds that policy and nothing else:
how a member is asked whether it is ready is the MySQL backend's business.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs, unquote

from . import metrics

log = logging.getLogger("gsmtpd.store.members")

DEFAULT_PORT = 3306
# How often members preferred over the one in use are asked whether they are back.
PROBE_INTERVAL = 2.0


@dataclass(frozen=True)
class Member:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_socket: str | None = None

    def __str__(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def connect_args(self) -> dict:
        """The PyMySQL connect() arguments that say where this member is."""
        return {"host": self.host, "port": self.port, "unix_socket": self.unix_socket}


@dataclass(frozen=True)
class StoreAddress:
    members: tuple[Member, ...]
    user: str
    password: str
    database: str


def parse_mysql_url(url: str) -> StoreAddress:
    """mysql://user:pass@host[:port][,host[:port]...]/db[?unix_socket=/path]; ValueError
    with a message that names the bad part."""
    if not url.startswith("mysql://"):
        raise ValueError(f"not a mysql:// URL: {url!r}")
    rest, _, query_text = url[len("mysql://"):].partition("?")
    authority, _, path = rest.partition("/")
    credentials, at, hosts = authority.rpartition("@")
    user, _, password = credentials.partition(":") if at else ("", "", "")
    query = {key: values[-1] for key, values in parse_qs(query_text, keep_blank_values=True).items()}
    socket_path = query.get("unix_socket")
    members = [_member(spec) for spec in hosts.split(",")] if hosts else [Member()]
    if socket_path is not None:
        if len(members) > 1:
            raise ValueError("?unix_socket= names one member; list several sockets as hosts, their "
                             "paths percent-encoded (%2Frun%2Fmysqld%2Fdb1.sock,...)")
        members = [Member(unix_socket=socket_path)]
    if len(set(members)) != len(members):
        raise ValueError(f"a member is listed twice in {hosts!r}")
    database = unquote(path) or "gsmtpd"
    if "/" in database:
        raise ValueError(f"expected one database name after the hosts, got {database!r}")
    return StoreAddress(tuple(members), unquote(user) or "root", unquote(password), database)


def _member(spec: str) -> Member:
    text = spec.strip()
    if not text:
        raise ValueError("an empty host in the member list (two commas, or a trailing one)")
    if text.startswith("/") or text[:3].upper() == "%2F":
        return Member(unix_socket=unquote(text))
    if text.startswith("["):
        host, close, port = text[1:].partition("]")
        if not close or (port and not port.startswith(":")):
            raise ValueError(f"bad IPv6 member {text!r}: expected [address]:port")
        port = port[1:]
    else:
        host, _, port = text.partition(":")
    if not host or any(c in host for c in " @/?#"):
        raise ValueError(f"bad member {text!r}: expected host, host:port, [v6]:port or a %2F-encoded socket path")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port in member {text!r}: expected 1..65535")
    return Member(unquote(host), int(port) if port else DEFAULT_PORT)


class MemberSet:
    """Preference order, what is known of each member's health, and the choice.

    ``candidates()`` is the order to try when (re)connecting: the preference order, with
    members that failed and have not answered a probe since put last (they are still
    tried: when all of them failed, one may be back). ``fail_back_target()`` names a member
    preferred over the one in use that has been healthy for ``fail_back_after`` seconds.
    """

    def __init__(self, members: tuple[Member, ...], fail_back_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.members = members
        self.fail_back_after = fail_back_after
        self.clock = clock
        self.current: int | None = None
        self.healthy_since: list[float | None] = [None] * len(members)
        self.failed_at: list[float | None] = [None] * len(members)
        self.next_probe = 0.0
        self.probing = None          # the probe greenlet, while one runs

    def candidates(self) -> list[int]:
        return sorted(range(len(self.members)), key=lambda i: (self._suspect(i), i))

    def _suspect(self, index: int) -> bool:
        return self.failed_at[index] is not None and self.healthy_since[index] is None

    def connected(self, index: int) -> None:
        if self.current is not None and self.current != index:
            log.warning("database member %s in use instead of %s", self.members[index], self.members[self.current])
            metrics.M.store_failovers.inc()
        self.current = index
        self.healthy(index)

    def healthy(self, index: int) -> None:
        if self.healthy_since[index] is None:
            self.healthy_since[index] = self.clock()

    def failed(self, index: int, reason: object = "") -> None:
        if self.healthy_since[index] is not None or self.failed_at[index] is None:
            log.warning("database member %s is down or not ready: %s", self.members[index], reason)
        self.healthy_since[index] = None
        self.failed_at[index] = self.clock()

    def fail_back_target(self) -> int | None:
        """The most preferred member ahead of the one in use that has been healthy long enough."""
        now = self.clock()
        for index in range(self.current or 0):
            since = self.healthy_since[index]
            if since is not None and now - since >= self.fail_back_after:
                return index
        return None

    def probe_if_due(self, probe: Callable[[Member], bool]) -> None:
        """While a less preferred member is in use, ask the preferred ones every
        PROBE_INTERVAL seconds (in a greenlet of their own: a member that does not answer
        must not hold up the writer) whether they are ready."""
        if not self.current or self.probing is not None or self.clock() < self.next_probe:
            return
        import gevent
        self.next_probe = self.clock() + PROBE_INTERVAL
        self.probing = gevent.spawn(self._probe, probe, self.current)

    def _probe(self, probe: Callable[[Member], bool], upto: int) -> None:
        try:
            for index in range(upto):
                if probe(self.members[index]):
                    self.healthy(index)
                else:
                    self.failed(index, "probe")
        finally:
            self.probing = None

    def describe(self) -> str:
        return ", ".join(str(m) for m in self.members)
