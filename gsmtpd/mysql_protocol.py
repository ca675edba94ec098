"""Server-side prepared statements (the binary protocol), spoken over a PyMySQL connection.

PyMySQL has no prepared-statement API, but it owns everything else and we reuse it: the
socket and its timeouts, packet framing and sequence ids, and ERR packets, which it turns
into pymysql.err.* exceptions. Its internals are reached through pymysql_adapter.py only,
which checks at startup that they are there. This module adds the three commands the writer needs, as the
MySQL and MariaDB protocol documentation describes them (the standard ones only, no
MariaDB bulk extensions, so that MySQL works too):

- COM_STMT_PREPARE  https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_prepare.html
                    https://mariadb.com/kb/en/com_stmt_prepare/
- COM_STMT_EXECUTE  https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_execute.html
                    https://mariadb.com/kb/en/com_stmt_execute/
- COM_STMT_CLOSE    https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_close.html
- COM_STMT_SEND_LONG_DATA https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_send_long_data.html
                    https://mariadb.com/kb/en/com_stmt_send_long_data/

Parameter values travel as length-prefixed bytes: nothing is escaped on our side and the
server lexes no string literal, which for a 1 MiB message is most of the work of an INSERT.
"""
from __future__ import annotations

import datetime
import struct
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterable, Iterator, NamedTuple

import pymysql
from pymysql.constants import CLIENT, COMMAND, CR

from . import pymysql_adapter as adapter
from .store import Blob, Utf8Text

# Field types of the "parameter types" of COM_STMT_EXECUTE (enum_field_types in mysql_com.h;
# https://mariadb.com/kb/en/result-set-packets/#field-types). The server converts a string
# parameter from character_set_client, a blob parameter not at all: "char[] -> MYSQL_TYPE_STRING
# for TEXT, CHAR, VARCHAR; char[] -> MYSQL_TYPE_BLOB for BLOB, BINARY, VARBINARY"
# (https://dev.mysql.com/doc/c-api/8.0/en/c-api-prepared-statement-type-codes.html).
TYPE_TINY = 1
TYPE_DOUBLE = 5
TYPE_NULL = 6
TYPE_LONGLONG = 8
TYPE_DATETIME = 12
TYPE_NEWDECIMAL = 246
TYPE_BLOB = 252
TYPE_STRING = 254
# Second byte of a parameter type: "a flag byte which has the highest bit set if the type is unsigned".
UNSIGNED = 0x80

# A packet carries at most 2^24-1 bytes; a longer payload goes as several packets, and one of
# exactly a multiple of that ends with an empty packet ("Sending More Than 16Mb",
# https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html).
MAX_PAYLOAD = 0xFFFFFF
# COM_STMT_PREPARE_OK gives num_params as int<2>: a statement has at most 65535 '?'.
MAX_PARAMS = 0xFFFF
# Pieces at least this long are written to the socket as they are; shorter ones are
# gathered and written together, so a 4 KB row is not 20 send() calls.
DIRECT_WRITE = 64 * 1024


class Statement(NamedTuple):
    id: int
    param_count: int


class LongValue(NamedTuple):
    """A parameter sent ahead of COM_STMT_EXECUTE with COM_STMT_SEND_LONG_DATA."""
    param: int          # its number in the row
    pieces: tuple       # the value's bytes, as pieces (no length prefix)
    size: int


class Row(NamedTuple):
    """One row's parameters in wire form, ready to be put into a COM_STMT_EXECUTE."""
    types: bytes        # two bytes per parameter: field type, flag
    nulls: int          # bit i set: parameter i is NULL (it then has no value bytes)
    values: list        # bytes-like pieces, the values one after the other
    size: int           # what the row adds to the COM_STMT_EXECUTE payload
    long: tuple = ()    # LongValues: sent before the execute, not in it
    long_size: int = 0  # their bytes


# --- values ("Binary Protocol Value": https://mariadb.com/kb/en/com_stmt_execute/#binary-parameter-encoding,
#     https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_binary_resultset.html)


def length_prefix(length: int) -> bytes:
    """int<lenenc> (https://mariadb.com/kb/en/protocol-data-types/#length-encoded-integers)."""
    if length < 251:
        return bytes((length,))
    if length < 1 << 16:
        return b"\xfc" + length.to_bytes(2, "little")
    if length < 1 << 24:
        return b"\xfd" + length.to_bytes(3, "little")
    return b"\xfe" + length.to_bytes(8, "little")


# The length prefix of a value shorter than 251 bytes: its one length byte.
_SHORT_PREFIX = [bytes((size,)) for size in range(251)]


def _string_value(data: bytes) -> tuple[bytes, ...]:
    """string<lenenc>: a long value stays a separate piece, so it is never copied."""
    size = len(data)
    if size < 251:
        return (_SHORT_PREFIX[size] + data,)
    if size < DIRECT_WRITE:
        return (length_prefix(size) + data,)
    return (length_prefix(size), data)


def _blob_value(parts: Blob) -> tuple[bytes, ...]:
    """A Blob's parts follow its length prefix as they are: the 1 MiB message behind the
    Received header is sent from the session's own buffer, not joined into a new one."""
    return (length_prefix(sum(map(len, parts))), *parts)


def _datetime_value(value: datetime.datetime) -> bytes:
    # Length 7: year int<2>, month, day, hour, minute, second. Microseconds are left out,
    # as the text protocol's '%Y-%m-%d %H:%M:%S' did: the columns hold whole seconds.
    return struct.pack("<BHBBBBB", 7, value.year, value.month, value.day,
                       value.hour, value.minute, value.second)


def _int_value(value: int) -> tuple[bytes, tuple[bytes, ...]]:
    if -(1 << 63) <= value < 1 << 63:
        return bytes((TYPE_LONGLONG, 0)), (struct.pack("<q", value),)
    if 0 <= value < 1 << 64:
        return bytes((TYPE_LONGLONG, UNSIGNED)), (struct.pack("<Q", value),)
    # Too big for any integer column: as a decimal string the server refuses it with "out of
    # range" (a DataError), as it did the text protocol's literal.
    return bytes((TYPE_NEWDECIMAL, 0)), _string_value(str(value).encode())


NULL_TYPE = bytes((TYPE_NULL, 0))
STRING_TYPE = bytes((TYPE_STRING, 0))
BLOB_TYPE = bytes((TYPE_BLOB, 0))
TINY_TYPE = bytes((TYPE_TINY, 0))
DOUBLE_TYPE = bytes((TYPE_DOUBLE, 0))
DATETIME_TYPE = bytes((TYPE_DATETIME, 0))
LONGLONG_TYPE = bytes((TYPE_LONGLONG, 0))
_pack_longlong = struct.Struct("<q").pack
_pack_double = struct.Struct("<d").pack
_new_row = tuple.__new__
_NULL = (NULL_TYPE, None)
_FALSE = (TINY_TYPE, (b"\x00",))
_TRUE = (TINY_TYPE, (b"\x01",))

# The one table of how a value of each type is sent: (parameter type, value pieces), None
# for NULL (a bit of the NULL bitmap). Looked up by exact type, which is cheaper than a
# chain of isinstance() checks; a subclass gets its nearest base's entry (encode_value).
_ENCODERS = {
    str: lambda value: (STRING_TYPE, _string_value(value.encode("utf-8", "replace"))),
    # Declared as text_type. The body is one part: short, it is joined with its length
    # prefix into one piece, as a str's would be.
    Utf8Text: lambda value: (STRING_TYPE, _string_value(value[0]) if len(value) == 1 else _blob_value(value)),
    Blob: lambda value: (BLOB_TYPE, _blob_value(value)),
    bytes: lambda value: (BLOB_TYPE, _string_value(value)),
    type(None): lambda value: _NULL,
    bool: lambda value: _TRUE if value else _FALSE,      # a bool is an int: its own entry
    int: _int_value,
    float: lambda value: (DOUBLE_TYPE, (struct.pack("<d", value),)),
    datetime.datetime: lambda value: (DATETIME_TYPE, (_datetime_value(value),)),
}


def encode_value(value: object) -> tuple[bytes, tuple[bytes, ...] | None]:
    """(parameter type, value pieces) from _ENCODERS; a value of a subclass (an IntEnum, a
    StrEnum) as its nearest base in the table, remembered for its type."""
    kind = type(value)
    encoder = _ENCODERS.get(kind)
    if encoder is None:
        base = next((base for base in kind.__mro__ if base in _ENCODERS), None)
        if base is None:
            raise TypeError(f"cannot store {kind.__name__}")
        encoder = _ENCODERS[kind] = _ENCODERS[base]
    return encoder(value)


def encode_row(values: Iterable[object], shared: dict[int, tuple] | None = None,
               text_type: bytes = STRING_TYPE, long_from: int | None = None) -> Row:
    """A row's parameters in wire form. ``shared`` maps id(text) to the encoding of a long
    text that several rows hold (a message's body, in the row of each recipient), so it is
    encoded to UTF-8 once. The caller keeps those values alive while the dict is in use.

    ``text_type`` declares the str values. As STRING_TYPE the server converts them from
    character_set_client into the column's charset, a character at a time even when both
    are utf8mb4: MariaDB 10.11 spent 1.5-2.5 ms more CPU a MiB than for the same bytes as
    BLOB_TYPE (bench/README.md). BLOB_TYPE is right only for utf8mb4 columns: the UTF-8
    bytes are stored as they are (still checked to be well-formed).

    A text or blob value of ``long_from`` bytes or more becomes a LongValue: sent with
    COM_STMT_SEND_LONG_DATA, it needs to fit in max_allowed_packet alone, not together
    with the rest of its row (a 9 MiB message and its 9 MiB body)."""
    types: list[bytes] = []
    pieces: list = []
    add_type, add = types.append, pieces.append
    long: list[LongValue] = []
    long_size = 0
    nulls = 0
    # The kinds of a stored row (envelope.build_rows) first, each written out here: short
    # text, integers, the body (a Utf8Text of one part), the mail (a Blob), the spam score.
    # The call to an _ENCODERS entry and the tuple it returns cost more than the encoding,
    # and a row is 18 values. W1, bench/instructions.py on Debian /usr/bin/python3.11:
    # 799.5k -> 784.3k instructions a message (1,500 messages); encode_row of a W1 row
    # 71k -> 55k (callgrind, one call).
    # type(), not isinstance(): isinstance of an int, float or datetime against str looks
    # up its __class__ too (a subclass is encoded by encode_value: the same bytes).
    for number, value in enumerate(values):
        kind = type(value)
        if kind is str and len(value) < 251:
            data = value.encode("utf-8", "replace")
            size = len(data)
            add_type(text_type)
            add(_SHORT_PREFIX[size] + data if size < 251 else length_prefix(size) + data)
            continue
        if kind is int and -(1 << 63) <= value < 1 << 63:
            add_type(LONGLONG_TYPE)
            add(_pack_longlong(value))
            continue
        if kind is Utf8Text and len(value) == 1:
            data = value[0]
            size = len(data)
            add_type(text_type)
            if size < 251:
                add(_SHORT_PREFIX[size] + data)
            elif size < DIRECT_WRITE or long_from is None or size < long_from:
                # Prefix and text as two pieces: write_command joins them, once.
                add(length_prefix(size))
                add(data)
            else:
                long.append(LongValue(number, (data,), size))
                long_size += size
            continue
        if kind is Blob:
            size = sum(map(len, value))
            add_type(BLOB_TYPE)
            if long_from is not None and size >= long_from and value:
                long.append(LongValue(number, tuple(value), size))   # without its length prefix
                long_size += size
            else:
                add(length_prefix(size))
                pieces += value
            continue
        if kind is float:
            add_type(DOUBLE_TYPE)
            add(_pack_double(value))
            continue
        if shared is not None and kind is str and len(value) >= DIRECT_WRITE:
            encoded = shared.get(id(value))
            if encoded is None:
                encoded = shared[id(value)] = encode_value(value)
        else:
            encoder = _ENCODERS.get(kind)
            encoded = encoder(value) if encoder is not None else encode_value(value)
        kind, value_pieces = encoded
        add_type(text_type if kind is STRING_TYPE else kind)
        if value_pieces is None:
            nulls |= 1 << number
        elif long_from is not None and len(value_pieces) > 1 and (
                size := sum(map(len, value_pieces)) - len(value_pieces[0])) >= long_from:
            long.append(LongValue(number, value_pieces[1:], size))   # without its length prefix
            long_size += size
        else:
            pieces += value_pieces
    count = len(types)
    # Two type bytes per parameter, and the row's (count + 7) / 8 bytes of NULL bitmap: the
    # statement's bitmap, (all its parameters + 7) / 8 bytes, is never more than their sum.
    size = 2 * count + (count + 7) // 8 + sum(map(len, pieces))
    # tuple.__new__ rather than Row(): the NamedTuple's __new__ is a Python call (~2k instructions).
    return _new_row(Row, (b"".join(types), nulls, pieces, size, tuple(long), long_size))


# --- commands


@contextmanager
def _exchange(conn: pymysql.connections.Connection) -> Iterator[None]:
    """One command and its answer. When the server answers with an ERR packet, PyMySQL
    raises pymysql.err.* and the exchange is over: the connection stays usable. When the
    connection broke, PyMySQL closed it already. Anything else half-way (a timeout, the
    writer being killed, a bug here) leaves an unknown part of a command or an answer on the
    wire, so the connection is closed: the writer's next call reconnects."""
    try:
        yield
    except pymysql.err.MySQLError:
        raise
    except BaseException:
        adapter.force_close(conn)
        raise


def _out_of_sync(conn: pymysql.connections.Connection, what: str) -> pymysql.err.OperationalError:
    adapter.force_close(conn)
    return pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, f"Command Out of Sync: {what}")


def prepare(conn: pymysql.connections.Connection, sql: bytes) -> Statement:
    """COM_STMT_PREPARE. The answer is COM_STMT_PREPARE_OK (0x00, statement_id int<4>,
    num_columns int<2>, num_params int<2>, filler, warning_count int<2>), then a column
    definition per parameter and per result column, each list ended by an EOF packet unless
    CLIENT_DEPRECATE_EOF was agreed on (PyMySQL does not ask for it)."""
    with _exchange(conn):
        adapter.execute_command(conn, COMMAND.COM_STMT_PREPARE, sql)
        first = adapter.read_packet(conn).get_all_data()
        if len(first) < 12 or first[0] != 0:
            raise _out_of_sync(conn, "expected COM_STMT_PREPARE_OK")
        statement_id, columns, params = struct.unpack_from("<IHH", first, 1)
        with_eof = not conn.client_flag & CLIENT.DEPRECATE_EOF
        for count in (params, columns):
            # The definitions say nothing we need: the types are ours to choose at execute.
            for _ in range(count + (1 if count and with_eof else 0)):
                adapter.read_packet(conn)
    return Statement(statement_id, params)


def close_statement(conn: pymysql.connections.Connection, statement: Statement) -> None:
    """COM_STMT_CLOSE (0x19, statement_id int<4>): the server sends no answer."""
    with _exchange(conn):
        adapter.execute_command(conn, COMMAND.COM_STMT_CLOSE, struct.pack("<I", statement.id))


def execute(conn: pymysql.connections.Connection, statement: Statement, rows: list[Row]) -> int:
    """COM_STMT_EXECUTE of a statement without a result set (an INSERT): the rows' parameters
    in order. Returns the affected rows of the server's OK packet.

    Payload: 0x17, statement_id int<4>, flags int<1> (0: no cursor), iteration_count int<4>
    (always 1), then as num_params > 0: the NULL bitmap of (num_params + 7) / 8 bytes,
    new_params_bound_flag int<1> = 1, two type bytes per parameter, and the values of the
    parameters that are not NULL. (MySQL 8 adds a parameter_count and names when the client
    asks for CLIENT_QUERY_ATTRIBUTES; PyMySQL does not.) The types are sent every time:
    they may change from one execution to the next (a NULL, a datetime for a string)."""
    param_count = sum(len(row.types) for row in rows) // 2
    if param_count != statement.param_count:
        raise ValueError(f"{param_count} parameters for a statement of {statement.param_count}")
    header = [struct.pack("<BIBI", COMMAND.COM_STMT_EXECUTE, statement.id, 0, 1)]
    if param_count:
        header += [_null_bitmap(rows, param_count), b"\x01", *(row.types for row in rows)]
    pieces = header + [piece for row in rows for piece in row.values]
    with _exchange(conn):
        _send_long_values(conn, statement, rows)
        write_command(conn, pieces)
        packet = adapter.read_packet(conn)
        if not packet.is_ok_packet():
            raise _out_of_sync(conn, "COM_STMT_EXECUTE of an INSERT answered with a result set")
        ok = adapter.OKPacketWrapper(packet)
        conn.server_status = ok.server_status
    return ok.affected_rows


# A long value goes in commands of at most this many bytes: each is a packet of its own,
# well under any max_allowed_packet that lets a value go long (MySQLBackend.long_from).
LONG_DATA_CHUNK = 1 << 20


def _send_long_values(conn: pymysql.connections.Connection, statement: Statement, rows: list[Row]) -> None:
    """COM_STMT_SEND_LONG_DATA (0x18, statement_id int<4>, param_id int<2>, data) for each
    long value, in chunks the server appends to the parameter; it answers none of them, and
    the next COM_STMT_EXECUTE takes the value from there (and forgets it after). The
    chunks are memoryviews of the session's buffers: nothing is copied."""
    first = 0
    for row in rows:
        for value in row.long:
            prefix = struct.pack("<BIH", COMMAND.COM_STMT_SEND_LONG_DATA, statement.id, first + value.param)
            chunk: list = []
            room = LONG_DATA_CHUNK
            for piece in value.pieces:
                view = memoryview(piece)
                while view:
                    part, view = view[:room], view[room:]
                    chunk.append(part)
                    room -= len(part)
                    if not room:
                        write_command(conn, [prefix, *chunk])
                        chunk, room = [], LONG_DATA_CHUNK
            if chunk:
                write_command(conn, [prefix, *chunk])
        first += len(row.types) // 2


def _null_bitmap(rows: list[Row], param_count: int) -> bytes:
    """Bit i (counting from the lowest bit of the first byte) for parameter i. Unlike a
    binary result row's bitmap, COM_STMT_EXECUTE's has no offset."""
    bits, shift = 0, 0
    for row in rows:
        bits |= row.nulls << shift
        shift += len(row.types) // 2
    return bits.to_bytes((param_count + 7) // 8, "little")


def write_command(conn: pymysql.connections.Connection, pieces: list) -> None:
    """Send one command whose payload is the concatenation of ``pieces``, in packets of at
    most MAX_PAYLOAD bytes with sequence ids from 0, as PyMySQL's _execute_command does for
    a payload it is given whole."""
    if adapter.is_closed(conn):
        raise pymysql.err.InterfaceError(0, "")      # what execute_command says when closed
    length = sum(map(len, pieces))
    if length < DIRECT_WRITE:
        # A small command (a few rows of 4 KB mail): copying it whole is cheaper than
        # looking at each piece.
        adapter.write_bytes(conn, b"".join([_packet_header(length, 0), *pieces]))
        sequence = 1
    else:
        if length < MAX_PAYLOAD:
            wire, sequence = [_packet_header(length, 0), *pieces], 1
        else:
            wire, sequence = _split_into_packets(pieces, length)
        _write_gathered(conn, wire)
    adapter.expect_answer(conn, sequence)


def _packet_header(length: int, sequence: int) -> bytes:
    """payload_length int<3>, sequence_id int<1>."""
    return length.to_bytes(3, "little") + bytes((sequence,))


def _split_into_packets(pieces: list, length: int) -> tuple[list, int]:
    """The pieces with a packet header every MAX_PAYLOAD bytes; a full packet is always
    followed by another, empty when the payload ends there. A piece that straddles two
    packets is cut with memoryviews, not copied."""
    wire: list = []
    queue = [memoryview(piece) for piece in reversed(pieces)]
    sequence = 0
    while True:
        size = min(length, MAX_PAYLOAD)
        wire.append(_packet_header(size, sequence))
        sequence = (sequence + 1) % 256
        needed = size
        while needed:
            piece = queue.pop()
            if len(piece) > needed:
                queue.append(piece[needed:])
                piece = piece[:needed]
            wire.append(piece)
            needed -= len(piece)
        length -= size
        if size < MAX_PAYLOAD:
            return wire, sequence


def _write_gathered(conn: pymysql.connections.Connection, wire: list) -> None:
    """Long pieces go to the socket as they are; runs of short ones are joined first, so a
    4 KB row is not twenty send() calls."""
    run: list = []
    run_size = 0
    for piece in wire:
        if len(piece) >= DIRECT_WRITE:
            if run:
                adapter.write_bytes(conn, b"".join(run))
                run, run_size = [], 0
            adapter.write_bytes(conn, piece)
            continue
        run.append(piece)
        run_size += len(piece)
        if run_size >= DIRECT_WRITE:
            adapter.write_bytes(conn, b"".join(run))
            run, run_size = [], 0
    if run:
        adapter.write_bytes(conn, b"".join(run))


# --- the statements of one connection


class PreparedStatements:
    """Statements prepared on one connection, by SQL text. Statement ids belong to the
    connection: a new connection needs a new PreparedStatements. The least recently used
    statement is closed when ``capacity`` are open, so the server's max_prepared_stmt_count
    (shared by all its clients) is never filled by us."""

    def __init__(self, conn: pymysql.connections.Connection, capacity: int = 16):
        self.conn = conn
        self.capacity = capacity
        self.open: OrderedDict[bytes, Statement] = OrderedDict()

    def get(self, sql: bytes) -> Statement:
        statement = self.open.get(sql)
        if statement is not None:
            self.open.move_to_end(sql)
            return statement
        if len(self.open) >= self.capacity:
            _, oldest = self.open.popitem(last=False)
            close_statement(self.conn, oldest)
        statement = self.open[sql] = prepare(self.conn, sql)
        return statement
