"""MySQL / MariaDB backend over PyMySQL (monkey-patched sockets: it only blocks the writer).

Rows go out as multi-row INSERTs, each statement kept under the server's max_allowed_packet,
all in one transaction and one COMMIT. The query is built as bytes: PyMySQL would send the
raw message as hex (twice its size); quoting it as a binary string literal keeps a 10 MiB
message at about 10 MiB on the wire.
"""
from __future__ import annotations

import datetime
import logging
import time
from importlib import resources

import pymysql

from .store import (COLUMNS, Backend, Blob, Pending, RowRefused, StoreMisconfigured,
                    StoreUnreachable, TransientError, Verdict)

log = logging.getLogger("gsmtpd.store.mysql")

HASH = COLUMNS.index("hash")
INSERT_PREFIX = ("INSERT INTO `new_mail` (" + ",".join(f"`{c}`" for c in COLUMNS) + ") VALUES ").encode()
# Room for the INSERT prefix and the packet header inside max_allowed_packet.
PACKET_SLACK = 4096

# MySQL errors that say "this data will never fit": the row is refused, the batch goes on.
PERMANENT = (pymysql.err.DataError, pymysql.err.IntegrityError)
# A connection idle this long is pinged before use: MySQL drops idle ones (wait_timeout),
# and finding out by failing a batch would cost its messages a 451.
IDLE_PING_SECONDS = 30.0
# Client-side error numbers for "nothing answers there" (CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR,
# CR_SERVER_GONE_ERROR, CR_SERVER_LOST): the server may come back.
UNREACHABLE = {2002, 2003, 2006, 2013}


def quote_bytes(data: bytes) -> bytes:
    """The escaped inside of a MySQL string literal. Only backslash, quote and NUL need
    escaping inside quotes when NO_BACKSLASH_ESCAPES is off (we set sql_mode on connect).
    Usually none is present and the data is used as it is, without a copy."""
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")
    if b"'" in data:
        data = data.replace(b"'", b"\\'")
    if b"\0" in data:
        data = data.replace(b"\0", b"\\0")
    return data


def literal(value: object) -> list[bytes]:
    """The pieces of one SQL literal; they are joined once, with the whole statement."""
    if isinstance(value, Blob):
        return [b"_binary'", *map(quote_bytes, value), b"'"]
    if isinstance(value, bytes):
        return [b"_binary'", quote_bytes(value), b"'"]
    if isinstance(value, str):
        return [b"'", quote_bytes(value.encode("utf-8", "replace")), b"'"]
    if isinstance(value, bool):
        return [b"1" if value else b"0"]
    if isinstance(value, (int, float)):
        return [str(value).encode()]
    if isinstance(value, datetime.datetime):
        return [value.strftime("'%Y-%m-%d %H:%M:%S'").encode()]
    if value is None:
        return [b"NULL"]
    raise TypeError(f"cannot store {type(value).__name__}")


class MySQLBackend(Backend):
    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 unix_socket: str | None, timeout: float):
        self.params = dict(host=host, port=port, user=user, password=password, database=database,
                           unix_socket=unix_socket, charset="utf8mb4", autocommit=False,
                           connect_timeout=max(1, min(int(timeout), 10)),
                           read_timeout=timeout, write_timeout=timeout,
                           max_allowed_packet=1 << 30)
        self.conn: pymysql.connections.Connection | None = None
        self.max_packet = 16 << 20
        self.last_used = 0.0
        self.schema_ready = False    # CREATE TABLE once: on reconnects it would wait on locks

    def connect(self, timeout: float | None = None) -> None:
        """Open a connection; ``timeout`` overrides the connect and read timeouts."""
        self.close()
        params = self.params if timeout is None else {
            **self.params, "connect_timeout": timeout, "read_timeout": timeout, "write_timeout": timeout}
        try:
            conn = pymysql.connect(**params)
            with conn.cursor() as cur:
                # Backslash escapes on (quote_bytes relies on it), strict: no silent truncation.
                cur.execute("SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'")
                if not self.schema_ready:
                    cur.execute(resources.files("gsmtpd").joinpath("schema.sql").read_text())
                cur.execute("SELECT @@max_allowed_packet")
                self.max_packet = int(cur.fetchone()[0])
            conn.commit()
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if code in UNREACHABLE:
                raise StoreUnreachable(f"cannot connect to MySQL: {exc}") from exc
            raise StoreMisconfigured(f"MySQL refused us: {exc}") from exc
        except OSError as exc:
            raise StoreUnreachable(f"cannot connect to MySQL: {exc}") from exc
        self.conn = conn
        self.schema_ready = True
        self.last_used = time.monotonic()

    def row_limit(self) -> int:
        return self.max_packet - PACKET_SLACK

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # already broken: nothing more to say to it
                pass
            self.conn = None

    def write(self, batch: list[Pending]) -> list[Verdict]:
        verdicts = [Verdict.STORED] * len(batch)
        if self.conn is None:
            self.connect()
        elif time.monotonic() - self.last_used > IDLE_PING_SECONDS:
            self._revive()
        committing = False
        try:
            try:
                self._insert(batch, verdicts)
            except PERMANENT:
                # One message's rows were refused; InnoDB undid only that statement, but we
                # cannot tell which message it was: redo the batch one message per statement.
                self.conn.rollback()
                self._insert_one_by_one(batch, verdicts)
            committing = True
            self.conn.commit()
        except (pymysql.err.MySQLError, OSError) as exc:
            if committing and self._was_committed(batch, verdicts):
                log.warning("the COMMIT's answer was lost but the rows are there: %s", exc)
                return verdicts
            raise TransientError(str(exc)) from exc
        self.last_used = time.monotonic()
        return verdicts

    def _was_committed(self, batch: list[Pending], verdicts: list[Verdict]) -> bool:
        """The connection broke after COMMIT was sent: did it happen? One quick look on a
        fresh connection turns a would-be 451 (and a duplicate when the client retries)
        into the 250 it deserves. Any doubt left: False, and the sessions get 451."""
        hashes = [p.rows[0][HASH] for p, v in zip(batch, verdicts) if v is Verdict.STORED and p.rows]
        if not hashes:
            return False
        try:
            self.connect(timeout=1)
            with self.conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM new_mail WHERE hash IN %s", (hashes,))
                found = cur.fetchone()[0]
            self.conn.commit()
        except (TransientError, pymysql.err.MySQLError, OSError):
            return False
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

    def _insert(self, batch: list[Pending], verdicts: list[Verdict]) -> None:
        """Multi-row INSERTs, each under max_allowed_packet, built as a list of pieces and
        joined once: a 1 MiB message is not copied again for every layer of the statement."""
        limit = self.max_packet - PACKET_SLACK
        pieces: list[bytes] = [INSERT_PREFIX]
        length = len(INSERT_PREFIX)
        with self.conn.cursor() as cur:
            for index, pending in enumerate(batch):
                try:
                    rows = self._rows(pending, limit)
                except RowRefused as refused:
                    verdicts[index] = refused.verdict
                    continue
                for row, size in rows:
                    if len(pieces) > 1 and length + size + 1 > limit:
                        cur.execute(b"".join(pieces))
                        pieces, length = [INSERT_PREFIX], len(INSERT_PREFIX)
                    if len(pieces) > 1:
                        pieces.append(b",")
                    pieces += row
                    length += size + 1
            if len(pieces) > 1:
                cur.execute(b"".join(pieces))

    def _insert_one_by_one(self, batch: list[Pending], verdicts: list[Verdict]) -> None:
        for index, pending in enumerate(batch):
            if verdicts[index] is not Verdict.STORED:
                continue
            try:
                self._insert([pending], verdicts[index:index + 1])
            except PERMANENT as exc:
                log.warning("database refused a message: %s", exc)
                verdicts[index] = Verdict.REFUSED

    @staticmethod
    def _rows(pending: Pending, limit: int) -> list[tuple[list[bytes], int]]:
        """The pieces of "(v1,v2,...)" for each row, with their length; the raw mail,
        shared by every row of a message, is escaped once."""
        quoted: dict[int, list[bytes]] = {}
        rows = []
        for row in pending.rows:
            pieces = [b"("]
            for number, value in enumerate(row):
                if number:
                    pieces.append(b",")
                if isinstance(value, (bytes, Blob)):
                    part = quoted.get(id(value))
                    if part is None:
                        part = quoted[id(value)] = literal(value)
                    pieces += part
                else:
                    pieces += literal(value)
            pieces.append(b")")
            size = sum(map(len, pieces))
            if size > limit:
                raise RowRefused(Verdict.TOO_BIG, f"row of {size} bytes > max_allowed_packet")
            rows.append((pieces, size))
        return rows
