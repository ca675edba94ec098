"""Every use of PyMySQL below its documented API, behind one door.

PyMySQL has no prepared-statement API; mysql_protocol.py speaks COM_STMT_* over PyMySQL's
own connection and reuses its packet framing, sequence ids, timeouts and ERR handling. This
module is the only place that reaches into those internals, and ``unsupported()``, run at
startup, says in one sentence what a PyMySQL outside the tested range lacks, instead of an
AttributeError in the writer under load.
"""
from __future__ import annotations

import pymysql
from pymysql.connections import Connection
from pymysql.protocol import MysqlPacket, OKPacketWrapper  # noqa: F401  (for mysql_protocol.py)

# The range the suite has run against (setup.py pins the same).
TESTED = "PyMySQL >= 1.1.1, < 1.3"

# Connection's own methods, taken as they are: calling one costs what ``conn._name(...)``
# does. None when missing, which unsupported() reports.
# Send a command whose payload is given whole (packets of it, sequence ids from 0).
execute_command = getattr(Connection, "_execute_command", None)
# The next packet of an answer, checked for its sequence id; an ERR packet is raised as
# pymysql.err.*.
read_packet = getattr(Connection, "_read_packet", None)
# Bytes onto the socket under the write timeout; a failure closes the connection.
write_bytes = getattr(Connection, "_write_bytes", None)
# Close at once, without COM_QUIT: for a connection left in an unknown state.
force_close = getattr(Connection, "_force_close", None)


def is_closed(conn: Connection) -> bool:
    return conn._sock is None


def expect_answer(conn: Connection, sequence: int) -> None:
    """After a command written with write_bytes: the sequence id its answer comes with."""
    conn._next_seq_id = sequence


def set_timeouts(conn: Connection, seconds: float) -> None:
    """The read and write timeouts of an open connection (PyMySQL takes them only at
    connect); its next read or write applies them."""
    conn._read_timeout = conn._write_timeout = seconds


def unsupported() -> str | None:
    """None when this PyMySQL has what the module uses; else what it lacks, the installed
    version and the tested range. The instance attributes are looked for among the names
    PyMySQL's own methods use: a connection is not needed to tell."""
    missing = [f"Connection.{name}" for name in ("_execute_command", "_read_packet", "_write_bytes",
                                                 "_force_close") if not callable(getattr(Connection, name, None))]
    missing += [f"MysqlPacket.{name}" for name in ("get_all_data", "is_ok_packet")
                if not callable(getattr(MysqlPacket, name, None))]
    for method, names in ((read_packet, ("_sock", "_next_seq_id", "_read_timeout")),
                          (write_bytes, ("_sock", "_write_timeout")),
                          (OKPacketWrapper.__init__, ("affected_rows", "server_status"))):
        used = getattr(getattr(method, "__code__", None), "co_names", ())
        if method is not None:
            missing += [f"{method.__qualname__}'s {name}" for name in names if name not in used]
    if not missing:
        return None
    # (pymysql.__version__ is the mysqlclient version PyMySQL poses as, for Django.)
    return (f"PyMySQL {getattr(pymysql, 'VERSION_STRING', '?')} lacks {', '.join(missing)}, which gsmtpd uses; "
            f"the tested versions are {TESTED}")
