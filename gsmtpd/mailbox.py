"""The read side's view of ``new_mail``: what the web API and retention ask of the store.

It has its own connections (never the writer's): PyMySQL for MySQL, sqlite3 for SQLite.
Every query is written once, with MySQL's quoting (backticks, ``%s``); SQLite accepts the
backticks and gets ``?`` for ``%s``. Nothing here imports the session, the wire or the
writer, and the writer never waits for anything here.

A mailbox is the `to` column (lower-cased by the server). Every read of a message names
its mailbox too, so knowing a message id alone reads nothing (ids count up: they would let
anyone walk through every mailbox).
"""
from __future__ import annotations

import datetime
import email.parser
import email.policy
import html
import re
import sqlite3
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from gevent import get_hub
from gevent.queue import Empty, LifoQueue

from .row import mysql_sliced, sqlite_sliced

SNIPPET_SOURCE = 2000         # characters of the body read to make a snippet
SNIPPET_LENGTH = 120          # characters of text in a list item's snippet
POOL_SIZE = 4                 # connections per process; a request waits for a free one
WAIT_FOR_CONNECTION = 10.0    # seconds; then the request gets 503 "store busy"


class StoreDown(Exception):
    """The store cannot be reached or answered with an error: the API says 503."""


# --- the two databases


# A list item's snippet is made from the first SNIPPET_SOURCE characters of its body. In a
# table made by schema.sql, `body` is VIRTUAL (row.py): for a sliced row, SUBSTR(body, ...)
# made MariaDB build the whole body (every CR of the message taken out) to keep 2000
# characters of it, 7.5 ms of MariaDB CPU per 1 MiB message listed. So on such a table the
# snippet is made from the first SLICE_PREFIX bytes of the slice: those hold at least
# SNIPPET_SOURCE whole characters (UTF-8 takes at most 4 bytes a character, and a CR dropped
# from a CRLF leaves its LF), so a character cut at the prefix's end (one '?' per byte in
# MariaDB, kept as bytes by SQLite) lies beyond the SNIPPET_SOURCE characters kept, and the
# source is the same text SUBSTR(body, ...) gives. A table made before (a real `body`
# column) is read as before. Which table it is, each connection asks when it opens
# (row.mysql_sliced, row.sqlite_sliced, as the stores do); one opened before the table
# exists, or before it is migrated, keeps SUBSTR(body, ...): right on either table, only slower.
SLICE_PREFIX = 4 * SNIPPET_SOURCE
WHOLE_SNIPPET = f"SUBSTR(body, 1, {SNIPPET_SOURCE})"
SNIPPET = "{snippet}"         # in a statement: the snippet source of the connection's table


class Link(NamedTuple):
    """An open connection, and the snippet source for the table it reads."""
    conn: object
    snippet: str


class Pool:
    """POOL_SIZE connection slots, each opened on first use (None until then), as a Link:
    SNIPPET in a statement stands for the Link's snippet source."""

    def __init__(self):
        self.pool: LifoQueue = LifoQueue()
        for _ in range(POOL_SIZE):
            self.pool.put(None)

    def take(self) -> Link | None:
        try:
            return self.pool.get(timeout=WAIT_FOR_CONNECTION)
        except Empty:
            raise StoreDown("every store connection is busy") from None

    def close(self) -> None:
        while True:
            try:
                link = self.pool.get_nowait()
            except Empty:
                return
            if link is not None:
                link.conn.close()


class MySQLDatabase(Pool):
    # MariaDB CPU to list a page of 50 sliced 1 MiB messages (80-byte CRLF lines): 205 ms
    # with SUBSTR(body, ...), 5 ms with this (a throwaway MariaDB 10.11 of its own, 10
    # rounds of 5 pages, medians; /proc ticks of 10 ms, so the 5 is 4 to 8).
    SLICED_SNIPPET = (f"IF(body_start IS NULL, SUBSTR(body_text, 1, {SNIPPET_SOURCE}), SUBSTR(CONVERT("
                      f"REGEXP_REPLACE(SUBSTRING(mail, body_start + 1, {SLICE_PREFIX}), '\\r', '') "
                      f"USING utf8mb4), 1, {SNIPPET_SOURCE}))")
    RETRY = (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError)

    def __init__(self, url: str, timeout: float = 10.0):
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.params = dict(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                           user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
                           database=unquote(parts.path.lstrip("/")) or "gsmtpd",
                           unix_socket=query.get("unix_socket"), charset="utf8mb4", autocommit=True,
                           connect_timeout=max(1, int(timeout)), read_timeout=timeout,
                           write_timeout=timeout)
        super().__init__()

    def _open(self) -> Link:
        conn = pymysql.connect(**self.params)
        try:
            with conn.cursor() as cur:
                return Link(conn, self.SLICED_SNIPPET if mysql_sliced(cur) else WHOLE_SNIPPET)
        except BaseException:
            conn.close()
            raise

    def _run(self, sql: str, work):
        link = self.take()
        try:
            link = link or self._open()
            with link.conn.cursor(pymysql.cursors.DictCursor) as cur:
                result = work(cur, sql.replace(SNIPPET, link.snippet))
        except self.RETRY as exc:
            if link is not None:
                link.conn.close()
            link = None
            raise StoreDown(f"MySQL: {exc}") from exc
        except pymysql.err.MySQLError as exc:
            raise StoreDown(f"MySQL: {exc}") from exc
        finally:
            self.pool.put(link)
        return result

    def rows(self, sql: str, args: tuple = ()) -> list[dict]:
        return self._run(sql, lambda cur, sql: (cur.execute(sql, args), list(cur.fetchall()))[1])

    def execute(self, sql: str, args: tuple = ()) -> int:
        """One statement in its own (autocommitted) transaction; the rows it changed."""
        return self._run(sql, lambda cur, sql: cur.execute(sql, args))

    def is_conflict(self, exc: StoreDown) -> bool:
        """A deadlock, a lock wait timeout or a Galera certification failure: try again."""
        cause = exc.__cause__
        return isinstance(cause, pymysql.err.MySQLError) and bool(cause.args) and cause.args[0] in (1205, 1213)



class SQLiteDatabase(Pool):
    """sqlite3 blocks its OS thread, so each call runs in gevent's thread pool on a
    connection of its own (one per pool slot), and the event loop keeps serving."""
    SLICED_SNIPPET = (f"CASE WHEN body_start IS NULL THEN substr(body_text, 1, {SNIPPET_SOURCE}) ELSE substr("
                      f"replace(CAST(substr(mail, body_start + 1, {SLICE_PREFIX}) AS TEXT), char(13), ''), "
                      f"1, {SNIPPET_SOURCE}) END")

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        super().__init__()

    def _open(self) -> Link:
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False,
                               isolation_level=None)      # autocommit: each statement its own transaction
        conn.row_factory = sqlite3.Row
        try:
            return Link(conn, self.SLICED_SNIPPET if sqlite_sliced(conn) else WHOLE_SNIPPET)
        except BaseException:
            conn.close()
            raise

    def _call(self, link: Link | None, sql: str, args: tuple, fetch: bool):
        link = link or self._open()
        try:
            cur = link.conn.execute(sql.replace(SNIPPET, link.snippet).replace("%s", "?"), args)
            return link, ([dict(row) for row in cur.fetchall()] if fetch else cur.rowcount), None
        except (sqlite3.Error, OSError) as exc:   # handed back: raised in the pool, gevent prints it
            return link, None, exc

    def _run(self, sql: str, args: tuple, fetch: bool):
        link = self.take()
        try:
            link, result, error = get_hub().threadpool.apply(self._call, (link, sql, args, fetch))
        except (sqlite3.Error, OSError) as exc:       # opening the file failed
            link, error = None, exc
        finally:
            self.pool.put(link)
        if error is not None:
            raise StoreDown(f"SQLite: {error}") from error
        return result

    def rows(self, sql: str, args: tuple = ()) -> list[dict]:
        return self._run(sql, args, True)

    def execute(self, sql: str, args: tuple = ()) -> int:
        return self._run(sql, args, False)

    def is_conflict(self, exc: StoreDown) -> bool:
        return isinstance(exc.__cause__, sqlite3.OperationalError) and "locked" in str(exc.__cause__)



def open_database(url: str, timeout: float = 10.0):
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(unquote(url[len("sqlite:///"):]) or "gsmtpd.db", timeout)
    if url.startswith("sqlite:"):
        return SQLiteDatabase(unquote(urlsplit(url).path) or "gsmtpd.db", timeout)
    if url.startswith("mysql:"):
        return MySQLDatabase(url, timeout)
    raise ValueError(f"unknown store {url!r}")


# --- what the API reads

ITEM = ("mail_id, `to`, `from`, subject, `date`, size, has_attach, content_type, "
        f"{SNIPPET} AS snippet")
LIST = f"SELECT {ITEM} FROM new_mail WHERE `to` = %s"
ONE = ("SELECT mail_id, `from`, `to`, subject, `date`, size, has_attach, content_type, charset, "
       "body, recipient, return_path, message_id, is_tls FROM new_mail WHERE mail_id = %s AND `to` = %s")


def iso_date(value) -> str:
    """The `date` column (a datetime from MySQL, text from SQLite), UTC, as ISO 8601."""
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value).replace(" ", "T") + "Z"


TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)


def snippet(body: str, is_html: bool) -> str:
    """A short line of text: tags dropped from HTML, entities decoded, spaces collapsed.
    It is only ever shown as text (escaped), never as HTML."""
    if is_html:
        body = html.unescape(TAG.sub(" ", body))
    # split() and join, on no more text than the snippet can use: with a regex over all
    # SNIPPET_SOURCE characters a page of 50 items cost 3.7 ms of CPU, now 1.4 ms.
    return " ".join(body[:SNIPPET_LENGTH * 8].split())[:SNIPPET_LENGTH]


def is_html(content_type: str) -> bool:
    return content_type.lower().startswith("text/html")


def summary(row: dict) -> dict:
    return {"id": int(row["mail_id"]), "from": row["from"], "subject": row["subject"],
            "date": iso_date(row["date"]), "size": int(row["size"]), "has_attach": int(row["has_attach"]),
            "snippet": snippet(row["snippet"] or "", is_html(row["content_type"]))}


def list_messages(db, address: str, after: int | None, limit: int) -> list[dict]:
    """Newest first; ``after``: the id the previous page ended with (older ones follow)."""
    if after is None:
        rows = db.rows(LIST + " ORDER BY mail_id DESC LIMIT %s", (address, limit))
    else:
        rows = db.rows(LIST + " AND mail_id < %s ORDER BY mail_id DESC LIMIT %s", (address, after, limit))
    return [summary(row) for row in rows]


def newer_messages(db, address: str, since: int, limit: int, until: int) -> list[dict]:
    """Oldest first, ids above ``since`` up to ``until``: what an event stream catching up
    sends (after Last-Event-ID, or after falling behind)."""
    rows = db.rows(LIST + " AND mail_id > %s AND mail_id <= %s ORDER BY mail_id LIMIT %s",
                   (address, since, until, limit))
    return [summary(row) for row in rows]


def summaries(db, ids: list[int]) -> list[dict]:
    """List items (with their mailbox) for these ids, oldest first."""
    marks = ",".join(["%s"] * len(ids))
    rows = db.rows(f"SELECT {ITEM} FROM new_mail WHERE mail_id IN ({marks}) ORDER BY mail_id", tuple(ids))
    return [{**summary(row), "mailbox": row["to"]} for row in rows]


def get_message(db, address: str, mail_id: int) -> dict | None:
    rows = db.rows(ONE, (mail_id, address))
    if not rows:
        return None
    row = rows[0]
    message = {
        "id": int(row["mail_id"]), "mailbox": row["to"], "from": row["from"], "subject": row["subject"],
        "date": iso_date(row["date"]), "size": int(row["size"]), "has_attach": int(row["has_attach"]),
        "content_type": row["content_type"], "charset": row["charset"], "is_html": is_html(row["content_type"]),
        "body": row["body"], "recipient": row["recipient"], "return_path": row["return_path"],
        "message_id": row["message_id"], "is_tls": bool(row["is_tls"]), "attachments": []}
    if message["has_attach"]:
        message["attachments"] = attachments(raw_message(db, address, mail_id) or b"")
    return message


def attachments(raw: bytes) -> list[dict]:
    """Name, content type and decoded size of each attachment. A message the parser
    cannot take apart has none listed (it is still readable raw)."""
    found = []
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
        for part in message.walk():
            if part.is_multipart():
                continue
            disposition = (part.get("Content-Disposition") or "").lower()
            name = part.get_filename()
            if name is None and not disposition.startswith("attachment"):
                continue
            payload = part.get_payload(decode=True) or b""
            found.append({"filename": str(name or ""), "content_type": part.get_content_type(),
                          "size": len(payload)})
    except Exception:  # hostile MIME: the parser's failures are many and undocumented
        return found
    return found


def raw_message(db, address: str, mail_id: int) -> bytes | None:
    rows = db.rows("SELECT mail FROM new_mail WHERE mail_id = %s AND `to` = %s", (mail_id, address))
    return bytes(rows[0]["mail"]) if rows else None


def html_body(db, address: str, mail_id: int) -> str | None:
    """The body when it is HTML; None when there is no such message or it is text."""
    rows = db.rows("SELECT body, content_type FROM new_mail WHERE mail_id = %s AND `to` = %s",
                   (mail_id, address))
    if not rows or not is_html(rows[0]["content_type"]):
        return None
    return rows[0]["body"]


def delete_message(db, address: str, mail_id: int) -> bool:
    return db.execute("DELETE FROM new_mail WHERE mail_id = %s AND `to` = %s", (mail_id, address)) > 0


def new_ids(db, since: int, limit: int) -> list[tuple[int, str]]:
    """(id, mailbox) of every row above ``since``, oldest first: what the event poller reads."""
    rows = db.rows("SELECT mail_id, `to` FROM new_mail WHERE mail_id > %s ORDER BY mail_id LIMIT %s",
                   (since, limit))
    return [(int(row["mail_id"]), row["to"]) for row in rows]


def ids_of(db, ids: list[int]) -> list[tuple[int, str]]:
    """(id, mailbox) of those of ``ids`` that are there now, oldest first."""
    marks = ",".join(["%s"] * len(ids))
    rows = db.rows(f"SELECT mail_id, `to` FROM new_mail WHERE mail_id IN ({marks}) ORDER BY mail_id", tuple(ids))
    return [(int(row["mail_id"]), row["to"]) for row in rows]


def newest_id(db) -> int:
    rows = db.rows("SELECT MAX(mail_id) AS newest FROM new_mail")
    return int(rows[0]["newest"] or 0) if rows else 0
