"""MySQL / MariaDB backend over PyMySQL (monkey-patched sockets: it only blocks the writer).

Rows go out as multi-row INSERTs, prepared once per connection and executed with the
binary protocol (gsmtpd/mysql_protocol.py): values travel as length-prefixed bytes, so we
escape nothing and the server lexes no 1 MiB string literal, and a message's raw mail is
sent from the session's buffer without being copied into a statement. Each
COM_STMT_EXECUTE is kept under the server's max_allowed_packet.

The connection is in autocommit mode. A batch that goes out as one statement (the usual
case: up to 32 rows of messages that fit in a packet) is one round trip: its OK packet comes
after the commit. A batch of several statements runs them in one transaction (BEGIN ...
COMMIT), so a batch is stored whole or not at all either way.
"""
from __future__ import annotations

import functools
import logging
import time
from importlib import resources

import pymysql

from . import mysql_protocol
from .mysql_protocol import Row
from .store import (COLUMNS, Backend, Pending, RowRefused, StoreMisconfigured,
                    StoreUnreachable, TransientError, Verdict, message_size)

log = logging.getLogger("gsmtpd.store.mysql")

HASH = COLUMNS.index("hash")
# The columns that get no str value: all others are text, in utf8mb4 (schema.sql).
NOT_TEXT = {"date", "mail", "spam_score", "is_tls", "size", "has_attach"}
INSERT_PREFIX = "INSERT INTO `new_mail` (" + ",".join(f"`{c}`" for c in COLUMNS) + ") VALUES "
ROW_PLACEHOLDERS = "(" + ",".join("?" * len(COLUMNS)) + ")"
# A message to N recipients crosses the wire once, while each recipient still gets a row
# with the whole message in `mail` (users read it there): its mail and body are set once
# as session variables, and its N rows are one INSERT that names them (shared_sql). The
# server copies them from its memory. (INSERT ... SELECT from the first row, tried first,
# made the server put every copy in an on-disk temporary table, and took shared locks
# that deadlocked two workers' batches: W5 lost 81 of 100 messages to 451s.)
# Messages under COPY_FROM bytes are sent row by row, as before: a shared message needs
# the batch in a transaction, two round trips (BEGIN, COMMIT) that cost more than
# resending 4 KB.
COPY_FROM = 64 * 1024
SHARED = {"mail": "@gsmtpd_mail", "body": "@gsmtpd_body"}
SET_SHARED = ("SET " + ", ".join(f"{name} = ?" for name in SHARED.values())).encode()
SHARED_COLUMNS = [COLUMNS.index(c) for c in SHARED]
OWN_COLUMNS = [i for i, c in enumerate(COLUMNS) if c not in SHARED]


@functools.lru_cache(maxsize=None)
def shared_sql(rows: int) -> bytes:
    """The INSERT of ``rows`` rows of one message, its mail and body from SET_SHARED's
    variables; parameters: the OWN_COLUMNS of each row."""
    row = "(" + ",".join(SHARED.get(c, "?") for c in COLUMNS) + ")"
    return (INSERT_PREFIX + ",".join([row] * rows)).encode()


# What a batch goes out as: runs of whole rows, one list per INSERT; and each message sent
# once for several rows, as (its SET_SHARED values, its rows for shared_sql).
BatchStatements = tuple[list[list[Row]], list[tuple[Row, list[Row]]]]
# A text or blob value this long (or a quarter of max_allowed_packet, when that is less)
# goes ahead of its INSERT with COM_STMT_SEND_LONG_DATA: then each value must fit in a
# packet, not its whole row, so a 9 MiB message with its 9 MiB body fits in MariaDB's
# default 16 MiB. Shorter values stay in the INSERT, as before (W4's 1 MiB mail).
LONG_VALUE = 4 << 20
# Room for the COM_STMT_EXECUTE header and the packet headers inside max_allowed_packet,
# which bounds a command's whole payload, however many 16 MiB packets carry it
# (https://mariadb.com/kb/en/0-packet/#packet-splitting).
PACKET_SLACK = 4096
# Which statements a run of rows goes out as (statement_sizes): up to EXACT_ROWS rows, one
# of exactly that many; longer runs as powers of two from 64 up, then the rest (100 = 64 +
# 32 + 4). Preparing costs about what executing a quarter of its rows does, on both sides,
# so a statement for every row count seen would mostly be prepared once and used once; this
# way at most 38 statements exist and stay prepared, and the usual small batch is still a
# single statement (one round trip, one statement for the server to run). The largest keeps
# its 2048 * 18 placeholders under a statement's limit of 65535.
EXACT_ROWS = 32
MAX_ROWS_PER_STATEMENT = 2048
STATEMENT_CACHE = 80          # 38 INSERTs, 38 of shared_sql and SET_SHARED at most

# MySQL errors that say "this data will never fit": the row is refused, the batch goes on.
PERMANENT = (pymysql.err.DataError, pymysql.err.IntegrityError)
# A connection idle this long is pinged before use: MySQL drops idle ones (wait_timeout),
# and finding out by failing a batch would cost its messages a 451.
IDLE_PING_SECONDS = 30.0
# Client-side error numbers for "nothing answers there" (CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR,
# CR_SERVER_GONE_ERROR, CR_SERVER_LOST): the server may come back.
UNREACHABLE = {2002, 2003, 2006, 2013}


@functools.lru_cache(maxsize=None)
def insert_sql(rows: int) -> bytes:
    """The INSERT of ``rows`` rows; only the sizes of statement_sizes are asked for."""
    return (INSERT_PREFIX + ",".join([ROW_PLACEHOLDERS] * rows)).encode()


def statement_sizes(count: int) -> list[int]:
    """The row counts of the statements that insert a run of ``count`` rows."""
    sizes = []
    while count > EXACT_ROWS:
        size = 1 << (count.bit_length() - 1)      # the largest power of two in count
        sizes.append(size)
        count -= size
    return sizes + [count] if count else sizes


def _split(run: list[Row]) -> list[list[Row]]:
    """A run of rows as the statements of statement_sizes; each is a part of the run, so it
    fits in a packet too."""
    statements, start = [], 0
    for count in statement_sizes(len(run)):
        statements.append(run[start:start + count])
        start += count
    return statements


def _first_hashes(batch: list[Pending], verdicts: list[Verdict]) -> list[str]:
    """The queue id (first row's hash) of each message of the batch still to be stored."""
    return [p.rows[0][HASH] for p, v in zip(batch, verdicts) if v is Verdict.STORED and p.rows]


class MySQLBackend(Backend):
    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 unix_socket: str | None, timeout: float):
        self.params = dict(host=host, port=port, user=user, password=password, database=database,
                           unix_socket=unix_socket, charset="utf8mb4", autocommit=True,
                           connect_timeout=max(1, min(int(timeout), 10)),
                           read_timeout=timeout, write_timeout=timeout,
                           max_allowed_packet=1 << 30)
        self.conn: pymysql.connections.Connection | None = None
        # Statement ids are the connection's: every new connection starts with none.
        self.statements: mysql_protocol.PreparedStatements | None = None
        self.max_packet = 16 << 20
        self.last_used = 0.0
        self.schema_ready = False    # CREATE TABLE once: on reconnects it would wait on locks
        self.text_type = mysql_protocol.STRING_TYPE
        # True while a commit is under way (a COMMIT, or a lone autocommitted INSERT): if the
        # connection breaks then, the rows may or may not be there.
        self.committing = False

    def connect(self, timeout: float | None = None) -> None:
        """Open a connection; ``timeout`` overrides the connect and read timeouts."""
        self.close()
        params = self.params if timeout is None else {
            **self.params, "connect_timeout": timeout, "read_timeout": timeout, "write_timeout": timeout}
        try:
            conn = pymysql.connect(**params)
            with conn.cursor() as cur:
                # Strict: a value that does not fit is an error (PERMANENT), not truncated.
                cur.execute("SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'")
                if not self.schema_ready:
                    cur.execute(resources.files("gsmtpd").joinpath("schema.sql").read_text())
                cur.execute("SELECT @@max_allowed_packet")
                self.max_packet = int(cur.fetchone()[0])
                self.text_type = self._text_type(cur)
            conn.commit()
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if code in UNREACHABLE:
                raise StoreUnreachable(f"cannot connect to MySQL: {exc}") from exc
            raise StoreMisconfigured(f"MySQL refused us: {exc}") from exc
        except OSError as exc:
            raise StoreUnreachable(f"cannot connect to MySQL: {exc}") from exc
        self.conn = conn
        self.statements = mysql_protocol.PreparedStatements(conn, STATEMENT_CACHE)
        self.schema_ready = True
        self.last_used = time.monotonic()

    @staticmethod
    def _text_type(cur) -> bytes:
        """How to send text (mysql_protocol.encode_row): as raw UTF-8 when every text
        column we write is utf8mb4, as schema.sql makes them. A table made otherwise by
        hand (a latin1 body, say) gets strings the server converts into its charset."""
        names = [column for column in COLUMNS if column not in NOT_TEXT]
        cur.execute("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = 'new_mail' AND COLUMN_NAME IN %s AND CHARACTER_SET_NAME = 'utf8mb4'",
                    (names,))
        all_utf8mb4 = cur.fetchone()[0] == len(names)
        return mysql_protocol.BLOB_TYPE if all_utf8mb4 else mysql_protocol.STRING_TYPE

    def row_limit(self) -> int:
        return self.max_packet - PACKET_SLACK

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # already broken: nothing more to say to it
                pass
            self.conn = None
            self.statements = None

    def write(self, batch: list[Pending]) -> list[Verdict]:
        verdicts = [Verdict.STORED] * len(batch)
        if self.conn is None:
            self.connect()
        elif time.monotonic() - self.last_used > IDLE_PING_SECONDS:
            self._revive()
        self.committing = False
        try:
            try:
                self._store(self._statements(batch, verdicts))
            except PERMANENT:
                # One message's rows were refused and nothing of the batch was committed
                # (a statement is atomic, a transaction rolled back), but we cannot tell
                # which message it was: redo the batch one message at a time.
                self.committing = False
                self.conn.rollback()
                self.conn.begin()
                self._insert_one_by_one(batch, verdicts)
                self._commit()
        except (pymysql.err.MySQLError, OSError) as exc:
            if self.committing:
                committed = self._was_committed(batch, verdicts)
                if committed:
                    log.warning("the COMMIT's answer was lost but the rows are there: %s", exc)
                    return verdicts
                if committed is None:
                    # RFC 5321 6.1: a duplicate is better than a loss. 451 makes the sender
                    # retry; if the COMMIT did happen, its retry stores the message again.
                    log.warning("COMMIT outcome unknown, answering 451 (a retry may store a "
                                "duplicate): %s in_doubt=%s", exc, ",".join(_first_hashes(batch, verdicts)))
            raise TransientError(str(exc)) from exc
        self.last_used = time.monotonic()
        return verdicts

    def _store(self, statements: BatchStatements) -> None:
        """Insert and commit. One statement is committed by itself (autocommit): its OK
        packet, one round trip after it was sent, says the rows are stored. Several, or a
        message sent once for several rows (SET_SHARED, shared_sql), run in a transaction,
        so that a batch is never half stored."""
        inserts, shared = statements
        if len(inserts) == 1 and not shared:
            prepared = self.statements.get(insert_sql(len(inserts[0])))
            self.committing = True
            mysql_protocol.execute(self.conn, prepared, inserts[0])
            return
        if inserts or shared:
            self.conn.begin()
            self._execute(statements)
            self._commit()

    def _commit(self) -> None:
        self.committing = True
        self.conn.commit()

    def _was_committed(self, batch: list[Pending], verdicts: list[Verdict]) -> bool | None:
        """The connection broke after COMMIT was sent: did it happen? One quick look on a
        fresh connection turns a would-be 451 (and a duplicate when the client retries)
        into the 250 it deserves. None when the database cannot be asked (it is going
        down): the sessions get 451 and the COMMIT may or may not have happened."""
        hashes = _first_hashes(batch, verdicts)
        if not hashes:
            return False
        try:
            self.connect(timeout=1)
            with self.conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM new_mail WHERE hash IN %s", (hashes,))
                found = cur.fetchone()[0]
            self.conn.commit()
        except (TransientError, pymysql.err.MySQLError, OSError):
            return None
        finally:
            self.close()     # its timeouts are short; the next write opens a normal one
        # One transaction: all of the batch's rows are there, or none.
        return found == len(hashes)

    def _revive(self) -> None:
        try:
            self.conn.ping(reconnect=False)
        except (pymysql.err.MySQLError, OSError):
            log.info("idle MySQL connection was closed by the server; reconnecting")
            self.connect()

    def _statements(self, batch: list[Pending], verdicts: list[Verdict]) -> BatchStatements:
        """The rows of the batch's messages, grouped as the statements that insert them:
        runs of at most max_allowed_packet bytes (a row with long values may be a run of its
        own above it), each cut in the sizes of statement_sizes; and, apart, each message
        of COPY_FROM bytes or more to several recipients as (its mail and body for
        SET_SHARED, its rows without them for shared_sql). A message too big for any
        statement is refused alone (its verdict is set here), before anything is sent."""
        limit = self.row_limit()
        statements: list[list[Row]] = []
        shared: list[tuple[Row, list[Row]]] = []
        run: list[Row] = []
        run_size = 0
        for index, pending in enumerate(batch):
            if verdicts[index] is not Verdict.STORED:
                continue
            try:
                if len(pending.rows) > 1 and message_size(pending.rows) >= COPY_FROM:
                    shared.append(self._shared(pending, limit))
                    continue
                rows = self._rows(pending.rows, limit)
            except RowRefused as refused:
                verdicts[index] = refused.verdict
                continue
            for row in rows:
                if run and (run_size + row.size + row.long_size > limit or len(run) == MAX_ROWS_PER_STATEMENT):
                    statements += _split(run)
                    run, run_size = [], 0
                run.append(row)
                run_size += row.size + row.long_size
        if run:
            statements += _split(run)
        return statements, shared

    def _execute(self, statements: BatchStatements) -> None:
        inserts, shared = statements
        for rows in inserts:
            mysql_protocol.execute(self.conn, self.statements.get(insert_sql(len(rows))), rows)
        for values, rows in shared:
            mysql_protocol.execute(self.conn, self.statements.get(SET_SHARED), [values])
            for statement in _split(rows):
                mysql_protocol.execute(self.conn, self.statements.get(shared_sql(len(statement))), statement)

    def _insert_one_by_one(self, batch: list[Pending], verdicts: list[Verdict]) -> None:
        """A savepoint per message: its rows may take more than one statement, and when a
        later one is refused the earlier ones must go too, or a refused message would
        leave rows behind."""
        with self.conn.cursor() as cur:
            for index, pending in enumerate(batch):
                if verdicts[index] is not Verdict.STORED:
                    continue
                cur.execute("SAVEPOINT one_message")
                try:
                    self._execute(self._statements([pending], verdicts[index:index + 1]))
                except PERMANENT as exc:
                    log.warning("database refused a message: %s", exc)
                    cur.execute("ROLLBACK TO SAVEPOINT one_message")
                    verdicts[index] = Verdict.REFUSED

    def _rows(self, rows: list[tuple], limit: int) -> list[Row]:
        """Rows in wire form; a body shared by several rows is encoded once."""
        long_from = min(LONG_VALUE, self.max_packet // 4)
        shared: dict[int, tuple] = {}
        encoded = []
        for values in rows:
            row = mysql_protocol.encode_row(values, shared, self.text_type, long_from)
            if row.size > limit or any(value.size > limit for value in row.long):
                raise RowRefused(Verdict.TOO_BIG, f"row of {row.size + row.long_size} bytes > max_allowed_packet")
            encoded.append(row)
        return encoded

    def _shared(self, pending: Pending, limit: int) -> tuple[Row, list[Row]]:
        """A message's mail and body once (SET_SHARED), and each of its rows without them."""
        first = pending.rows[0]
        values = self._rows([[first[i] for i in SHARED_COLUMNS]], limit)[0]
        return values, [mysql_protocol.encode_row([row[i] for i in OWN_COLUMNS], None, self.text_type)
                        for row in pending.rows]
