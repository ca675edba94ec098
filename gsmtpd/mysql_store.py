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

import datetime
import functools
import logging
import re
import time
from importlib import resources

import pymysql

from . import metrics, mysql_protocol, pymysql_adapter
from .members import Member, MemberSet, StoreAddress
from .mysql_protocol import Row
from .row import TABLE, TEXT, mysql_sliced
from .store import (BODY, COLUMNS, MAIL, Backend, Blob, Pending, RowRefused, StoreMisconfigured,
                    StoreUnreachable, TransientError, Verdict, WRITTEN, message_size, sliced_row)

log = logging.getLogger("gsmtpd.store.mysql")

HASH = COLUMNS.index("hash")
# The columns that get no str value: all others are text, in utf8mb4 (schema.sql).
NOT_TEXT = {column.name for column in TABLE if column.kind != TEXT}


def _insert_prefix(sliced: bool) -> str:
    return "INSERT INTO `new_mail` (" + ",".join(f"`{c}`" for c in WRITTEN[sliced]) + ") VALUES "


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
# (A sliced body is '' in @gsmtpd_body, and its body_start is one of each row's own.)
SHARED = {"mail": "@gsmtpd_mail", "body": "@gsmtpd_body", "body_text": "@gsmtpd_body"}
SET_SHARED = b"SET @gsmtpd_mail = ?, @gsmtpd_body = ?"
SHARED_COLUMNS = [MAIL, BODY]      # body_text is in body's place (row.SLICED_NAMES)
OWN_COLUMNS = {sliced: [i for i, c in enumerate(names) if c not in SHARED] for sliced, names in WRITTEN.items()}
# A body that is the mail's text without the CRs of its CRLFs (W4's 1 MiB single-part
# message) is not sent, nor derived into a column on the server: its cost is in storing the
# bytes, not in taking them. bench/body_cost.py (a throwaway MariaDB 10.11, 60 messages x 3
# rounds, medians), db CPU per 1 MiB message: body sent 7.0 ms, no body 2.3, body made on
# the server by REPEAT with nothing of it on the wire (the floor of any derivation) 7.3,
# derived from the mail (REPLACE of CR over 4 KiB pieces in user variables) 8.8. So the
# table stores where it starts in mail instead (row.py: body_start, a VIRTUAL `body`).


# MySQL 8.0.22+ refuses regular expressions on bytes (ER_CHARACTER_SET_MISMATCH:
# https://dev.mysql.com/doc/refman/8.0/en/regexp.html), so schema.sql's `body` cannot be made
# there: on MySQL the table keeps the body whole in a real `body` column, as before.
_SLICED_BODY = re.compile(r"  `body_text` .*\n  `body_start` .*\n  `body` longtext AS .*\n")
WHOLE_BODY = "  `body` longtext NOT NULL COMMENT 'chosen body part as UTF-8 text',\n"


def schema_sql(mariadb: bool = True) -> str:
    """The CREATE TABLE of schema.sql; on MySQL, with `body` a real column."""
    text = resources.files("gsmtpd").joinpath("schema.sql").read_text()
    return text if mariadb else _SLICED_BODY.sub(WHOLE_BODY, text)


@functools.lru_cache(maxsize=None)
def shared_sql(rows: int, sliced: bool = False) -> bytes:
    """The INSERT of ``rows`` rows of one message, its mail and body from SET_SHARED's
    variables; parameters: the OWN_COLUMNS of each row."""
    row = "(" + ",".join(SHARED.get(c, "?") for c in WRITTEN[sliced]) + ")"
    return (_insert_prefix(sliced) + ",".join([row] * rows)).encode()


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
# --batch-max-bytes 0 (the default): a transaction on a Galera member is one write-set, held
# whole in memory on every member and refused past wsrep_max_ws_size (2 GiB by default);
# MySQL Group Replication refuses past 150 MB (group_replication_transaction_size_limit).
# 64 MiB is far below both. A single server has no such limit.
CLUSTER_MAX_BYTES = 64 << 20
UNBOUNDED = 1 << 62
STATEMENT_CACHE = 80          # 38 INSERTs, 38 of shared_sql and SET_SHARED at most

# MySQL errors that say "this data will never fit": the row is refused, the batch goes on.
PERMANENT = (pymysql.err.DataError, pymysql.err.IntegrityError)
# A connection idle this long is pinged before use: MySQL drops idle ones (wait_timeout),
# and finding out by failing a batch would cost its messages a 451.
IDLE_PING_SECONDS = 30.0
# Client-side error numbers for "nothing answers there" (CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR,
# CR_SERVER_GONE_ERROR, CR_SERVER_LOST): the server may come back.
UNREACHABLE = {2002, 2003, 2006, 2013}
# ER_UNKNOWN_COM_ERROR: what a Galera member outside the primary component (or not yet
# Synced) answers to any query: "WSREP has not yet prepared node for application use".
NOT_READY = 1047
# ER_LOCK_DEADLOCK (also Galera's certification conflict) and ER_LOCK_WAIT_TIMEOUT: the
# transaction was rolled back, nothing of it is committed: write it again.
CONFLICT = {1213, 1205}
# Tries of one batch when it meets conflicts or a member that goes away (deadlines permitting).
ATTEMPTS = 3
# Seconds the lookup of an in-doubt COMMIT may take at least (connect, catch up, SELECT);
# more while the batch's deadlines leave more: on a cluster the other member's catching up
# waits for the lost member to be evicted (Galera's evs.suspect_timeout, 5 s by default).
IN_DOUBT_TIMEOUT = 1.0
# Kept back from the deadline for the verdict to reach the sessions.
DEADLINE_MARGIN = 0.25


class MemberDown(Exception):
    """The member in use went away or is not ready; the batch did not commit there."""


@functools.lru_cache(maxsize=None)
def insert_sql(rows: int, sliced: bool = False) -> bytes:
    """The INSERT of ``rows`` rows; only the sizes of statement_sizes are asked for."""
    placeholders = "(" + ",".join("?" * len(WRITTEN[sliced])) + ")"
    return (_insert_prefix(sliced) + ",".join([placeholders] * rows)).encode()


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


def _code(exc: BaseException) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


def _opening_failed(exc: BaseException, what: str) -> Exception:
    """What a failure while opening a connection to a member means: not ready (1047, a
    Galera member outside the primary component), nothing answering there, or a refusal
    (credentials, database, schema) that the start reports as a misconfiguration."""
    if isinstance(exc, OSError):
        return StoreUnreachable(f"{what}: {exc}")
    code = _code(exc)
    if code == NOT_READY:
        return MemberDown(str(exc))
    if code in UNREACHABLE:
        return StoreUnreachable(f"{what}: {exc}")
    return StoreMisconfigured(f"MySQL refused us: {exc}")


# Values that add no bytes to message_bytes: their types are known without isinstance(),
# which for an int or float against a class looks up __class__ too.
_NO_BYTES = frozenset({int, float, bool, datetime.datetime, type(None)})


def message_bytes(pending: Pending) -> int:
    """About the bytes a message's rows take in a transaction (text counted in characters:
    the bound it is held to is far from any limit it guards). Walked once a message and
    kept on its Pending: parts_by_bytes and _statements both ask, and a retry again."""
    total = pending.weight
    if total >= 0:
        return total
    total = 0
    for row in pending.rows:
        for value in row:
            kind = type(value)
            if kind is str or kind is bytes:
                total += len(value)
            elif kind in _NO_BYTES:
                continue
            elif isinstance(value, Blob):
                total += sum(len(part) for part in value)
            elif isinstance(value, (bytes, str)):
                total += len(value)
    pending.weight = total
    return total


def parts_by_bytes(batch: list[Pending], limit: int) -> list[list[int]]:
    """The batch's indexes cut into runs of at most ``limit`` bytes (a message bigger than
    that alone is a run of its own, refused with 552 when it is written)."""
    if limit >= UNBOUNDED:
        # No message comes near 2**62 bytes: one part, and no walk over every value of
        # every row (a single server's default). W1, bench/instructions.py: 1028.0k -> 940.8k
        # instructions a message with this and the same skip in MySQLBackend._statements.
        return [list(range(len(batch)))]
    parts: list[list[int]] = [[]]
    size = 0
    for index, pending in enumerate(batch):
        weight = message_bytes(pending)
        if parts[-1] and size + weight > limit:
            parts.append([])
            size = 0
        parts[-1].append(index)
        size += weight
    return parts


class MySQLBackend(Backend):
    def __init__(self, host: str = "127.0.0.1", port: int = 3306, user: str = "root", password: str = "",
                 database: str = "gsmtpd", unix_socket: str | None = None, timeout: float = 7.5, *,
                 address: StoreAddress | None = None, batch_max_bytes: int = 0,
                 fail_back_after: float = 30.0):
        """One server by host/port/unix_socket, or the members of ``address`` (a store URL
        with several hosts, members.parse_mysql_url)."""
        if address is None:
            address = StoreAddress((Member(host, port, unix_socket),), user, password, database)
        self.params = dict(user=address.user, password=address.password, database=address.database,
                           charset="utf8mb4", autocommit=True, max_allowed_packet=1 << 30)
        self.timeout = timeout
        self.configured_max_bytes = batch_max_bytes      # 0: CLUSTER_MAX_BYTES on Galera only
        self.members = MemberSet(address.members, fail_back_after)
        self.member: int | None = None       # index of the member self.conn talks to
        self.cluster = False                 # that member is a Galera node (wsrep_on)
        self.conn: pymysql.connections.Connection | None = None
        # Statement ids are the connection's: every new connection starts with none.
        self.statements: mysql_protocol.PreparedStatements | None = None
        self.max_packet = 16 << 20
        self.last_used = 0.0
        self.schema_ready = False    # CREATE TABLE once: on reconnects it would wait on locks
        self.text_type = mysql_protocol.STRING_TYPE
        self.sliced = False          # the table stores the body as a slice of mail (row.mysql_sliced)
        # True while a commit is under way (a COMMIT, or a lone autocommitted INSERT): if the
        # connection breaks then, the rows may or may not be there.
        self.committing = False

    def connect(self, timeout: float | None = None) -> None:
        """Open a connection to the first member, in MemberSet.candidates() order, that
        answers and is ready. All of them together may take about ``timeout`` (default: the
        backend's, half the save timeout) to connect; the connection then gets the
        backend's read and write timeouts."""
        self.close()
        budget = self.timeout if timeout is None else timeout
        order = self.members.candidates()
        problems = []
        for index in order:
            member = self.members.members[index]
            each = max(0.5, min(10.0, budget / len(order)))
            try:
                conn, cluster = self._open(member, each)
            except (StoreUnreachable, MemberDown) as exc:
                self.members.failed(index, exc)
                problems.append(f"{member}: {exc}")
                continue
            self.conn, self.cluster, self.member = conn, cluster, index
            self.members.connected(index)
            pymysql_adapter.set_timeouts(conn, timeout or self.timeout)
            self.statements = mysql_protocol.PreparedStatements(conn, STATEMENT_CACHE)
            self.schema_ready = True
            self.last_used = time.monotonic()
            return
        raise StoreUnreachable("no database member is ready: " + "; ".join(problems))

    def _open(self, member: Member, timeout: float) -> tuple[pymysql.connections.Connection, bool]:
        """A connection to ``member``, checked ready, with the schema in place; and
        whether the member is a Galera node."""
        try:
            conn = pymysql.connect(**self.params, **member.connect_args(), connect_timeout=timeout,
                                   read_timeout=timeout, write_timeout=timeout)
        except (pymysql.err.MySQLError, OSError) as exc:
            raise _opening_failed(exc, "cannot connect") from exc
        try:
            with conn.cursor() as cur:
                cluster = self._check_ready(cur)
                # Strict: a value that does not fit is an error (PERMANENT), not truncated.
                cur.execute("SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'")
                if not self.schema_ready:
                    cur.execute("SELECT VERSION()")
                    cur.execute(schema_sql("MariaDB" in cur.fetchone()[0]))
                cur.execute("SELECT @@max_allowed_packet")
                self.max_packet = int(cur.fetchone()[0])
                self.sliced = mysql_sliced(cur)
                self.text_type = self._text_type(cur, self.sliced)
            conn.commit()
            return conn, cluster
        except BaseException as exc:
            try:
                conn.close()
            except Exception:  # already broken
                pass
            if isinstance(exc, (pymysql.err.MySQLError, OSError)):
                raise _opening_failed(exc, "lost while connecting") from exc
            raise

    @staticmethod
    def _check_ready(cur) -> bool:
        """MemberDown unless the member may take writes: on a Galera node (wsrep_on), only
        when it is Synced in the primary component. True on a Galera node."""
        try:
            cur.execute("SELECT @@wsrep_on")
        except pymysql.err.OperationalError as exc:
            if _code(exc) == 1193:     # ER_UNKNOWN_SYSTEM_VARIABLE: MySQL, not MariaDB
                return False
            raise
        if not int(cur.fetchone()[0] or 0):
            return False
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state_comment')")
        status = dict(cur.fetchall())
        if status.get("wsrep_ready") != "ON" or status.get("wsrep_local_state_comment") != "Synced":
            raise MemberDown(f"wsrep_ready={status.get('wsrep_ready')} "
                             f"state={status.get('wsrep_local_state_comment')}")
        return True

    def probe(self, member: Member) -> bool:
        """Is ``member`` up and ready? (MemberSet asks, to know when to return to it.)"""
        try:
            conn = pymysql.connect(**self.params, **member.connect_args(), connect_timeout=2,
                                   read_timeout=2, write_timeout=2)
        except (pymysql.err.MySQLError, OSError):
            return False
        try:
            with conn.cursor() as cur:
                self._check_ready(cur)
            return True
        except (MemberDown, pymysql.err.MySQLError, OSError):
            return False
        finally:
            conn.close()

    @staticmethod
    def _text_type(cur, sliced: bool = False) -> bytes:
        """How to send text (mysql_protocol.encode_row): as raw UTF-8 when every text
        column we write is utf8mb4, as schema.sql makes them. A table made otherwise by
        hand (a latin1 body, say) gets strings the server converts into its charset."""
        names = [column for column in WRITTEN[sliced] if column not in NOT_TEXT]
        cur.execute("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = 'new_mail' AND COLUMN_NAME IN %s AND CHARACTER_SET_NAME = 'utf8mb4'",
                    (names,))
        all_utf8mb4 = cur.fetchone()[0] == len(names)
        return mysql_protocol.BLOB_TYPE if all_utf8mb4 else mysql_protocol.STRING_TYPE

    @property
    def batch_max_bytes(self) -> int:
        """The byte bound of one transaction: as configured, else CLUSTER_MAX_BYTES on a
        Galera member and none on a single server, where a transaction is no write-set (and
        a 9 MiB message to 100 recipients, 1.8 GB of rows, still commits: issue #15)."""
        if self.configured_max_bytes:
            return self.configured_max_bytes
        return CLUSTER_MAX_BYTES if self.cluster else UNBOUNDED

    def row_limit(self) -> int:
        return min(self.max_packet - PACKET_SLACK, self.batch_max_bytes)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # already broken: nothing more to say to it
                pass
            self.conn = None
            self.statements = None
        self.member = None

    def write(self, batch: list[Pending]) -> list[Verdict]:
        """Each run of at most batch_max_bytes is one transaction (parts_by_bytes): a
        cluster replicates a transaction as one write-set, which has a size limit."""
        self._fail_back_if_due()
        parts = parts_by_bytes(batch, self.batch_max_bytes)
        if len(parts) == 1:
            # The usual case, one transaction: no copy of the batch, no merge of verdicts.
            verdicts = self._write_retrying(batch)
            self.last_used = time.monotonic()
            return verdicts
        verdicts = [Verdict.STORED] * len(batch)
        for number, part in enumerate(parts):
            try:
                part_verdicts = self._write_retrying([batch[i] for i in part])
            except TransientError:
                if number == 0:
                    raise
                # The parts before this one are committed: they keep their 250.
                log.error("store write failed, %d of %d messages get 451", len(batch) - part[0], len(batch))
                self.close()
                for index in range(part[0], len(batch)):
                    verdicts[index] = Verdict.TRANSIENT
                return verdicts
            for index, verdict in zip(part, part_verdicts):
                verdicts[index] = verdict
        self.last_used = time.monotonic()
        return verdicts

    def _write_retrying(self, batch: list[Pending]) -> list[Verdict]:
        """Write one transaction; again after a conflict (rolled back), or on the next
        member when the one in use went away before the COMMIT was sent, while every
        message of the batch has time for one more try. A COMMIT that was sent is never
        written again: its outcome is looked up (_was_committed)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._write_once(batch)
            except MemberDown as exc:
                retry = exc
                if self.member is not None:
                    self.members.failed(self.member, exc)
                self.close()
            except pymysql.err.MySQLError as exc:
                if _code(exc) not in CONFLICT:
                    raise TransientError(str(exc)) from exc
                retry = exc
                metrics.M.store_conflicts.inc()
                self._rollback()
            deadline = min(p.deadline for p in batch)
            if attempt == ATTEMPTS or deadline - time.monotonic() < self.timeout:
                raise TransientError(f"{retry} (after {attempt} tries)") from retry
            log.warning("writing %d messages again (try %d): %s", len(batch), attempt + 1, retry)
        raise AssertionError("unreachable")

    def _write_once(self, batch: list[Pending]) -> list[Verdict]:
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
            code = _code(exc)
            if code in CONFLICT:
                raise                   # rolled back: _write_retrying writes it again
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
                # Known not committed: still 451, not written again here. Were the COMMIT
                # only slow, not lost, its rows could yet appear and meet a second write.
                raise TransientError(str(exc)) from exc
            if code in UNREACHABLE or code == NOT_READY or isinstance(exc, OSError):
                raise MemberDown(str(exc)) from exc
            raise TransientError(str(exc)) from exc
        return verdicts

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except (pymysql.err.MySQLError, OSError, AttributeError):
            self.close()

    def _fail_back_if_due(self) -> None:
        """Between batches: return to a preferred member once it has been ready for a while."""
        if not self.members.current:
            return      # the most preferred member is in use (or none yet): nothing to probe or return to
        self.members.probe_if_due(self.probe)
        target = self.members.fail_back_target()
        if target is not None and self.conn is not None:
            log.info("returning to the preferred database member %s", self.members.members[target])
            try:
                self.connect()
            except TransientError as exc:
                log.warning("cannot return to a preferred member: %s", exc)

    def _store(self, statements: BatchStatements) -> None:
        """Insert and commit. One statement is committed by itself (autocommit): its OK
        packet, one round trip after it was sent, says the rows are stored. Several, or a
        message sent once for several rows (SET_SHARED, shared_sql), run in a transaction,
        so that a batch is never half stored."""
        inserts, shared = statements
        if len(inserts) == 1 and not shared:
            prepared = self.statements.get(insert_sql(len(inserts[0]), self.sliced))
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
        down): the sessions get 451 and the COMMIT may or may not have happened.

        On a cluster the look is on another member when one is ready (the one in use is
        marked failed, so it comes last), and only after that member has applied every
        write-set ordered before the question (wsrep_sync_wait = 1): a plain read there
        could miss a COMMIT that did happen, and its messages would get 451, stored and
        not named in doubt."""
        hashes = _first_hashes(batch, verdicts)
        if not hashes:
            return False
        if self.member is not None:
            self.members.failed(self.member, "the answer to a COMMIT was lost")
        left = min(p.deadline for p in batch) - time.monotonic() - DEADLINE_MARGIN
        try:
            self.connect(timeout=max(IN_DOUBT_TIMEOUT, left))
            with self.conn.cursor() as cur:
                if self.cluster:
                    cur.execute("SET SESSION wsrep_sync_wait = 1")
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
        bound = self.batch_max_bytes
        statements: list[list[Row]] = []
        shared: list[tuple[Row, list[Row]]] = []
        run: list[Row] = []
        run_size = 0
        for index, pending in enumerate(batch):
            if verdicts[index] is not Verdict.STORED:
                continue
            try:
                if bound < UNBOUNDED and message_bytes(pending) > bound:
                    # Its N rows are one write-set however they cross the wire.
                    raise RowRefused(Verdict.TOO_BIG, f"message rows > batch_max_bytes ({bound})")
                if len(pending.rows) > 1 and message_size(pending.rows) >= COPY_FROM:
                    shared.append(self._shared(pending, limit))
                    continue
                rows = self._rows(self._written(pending.rows), limit)
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
            mysql_protocol.execute(self.conn, self.statements.get(insert_sql(len(rows), self.sliced)), rows)
        for values, rows in shared:
            mysql_protocol.execute(self.conn, self.statements.get(SET_SHARED), [values])
            for statement in _split(rows):
                mysql_protocol.execute(self.conn, self.statements.get(shared_sql(len(statement), self.sliced)),
                                       statement)

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
            if row.size > limit or (row.long and any(value.size > limit for value in row.long)):
                raise RowRefused(Verdict.TOO_BIG, f"row of {row.size + row.long_size} bytes > max_allowed_packet")
            encoded.append(row)
        return encoded

    def _shared(self, pending: Pending, limit: int) -> tuple[Row, list[Row]]:
        """A message's mail and body once (SET_SHARED), and each of its rows without them."""
        rows = self._written(pending.rows)
        first = rows[0]
        values = self._rows([[first[i] for i in SHARED_COLUMNS]], limit)[0]
        own = OWN_COLUMNS[self.sliced]
        return values, [mysql_protocol.encode_row([row[i] for i in own], None, self.text_type) for row in rows]

    def _written(self, rows: list[tuple]) -> list:
        """The rows' values in the order of WRITTEN[self.sliced]."""
        return [sliced_row(row) for row in rows] if self.sliced else rows
