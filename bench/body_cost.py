"""What MariaDB spends on a big message's `body` column, and whether deriving it from
`mail` on the server would spare any of it (issue #18, W4).

A W4 message (1 MiB) is a single text/plain part: its body is the raw text with the CRs
of its CRLFs dropped, so the same megabyte crosses the wire twice (in `mail` and in
`body`). This measures, on a throwaway MariaDB of its own (no other client's work in its
CPU), the server's CPU per message for the same row stored five ways (into the table
schema.sql makes):

- sent:      mail and body as parameters of one INSERT (body_text): how gsmtpd stores a
             body that is not a slice of mail, and every body in a table made before;
- sliced:    as gsmtpd stores this one now (row.py): the mail sent, body_text empty and
             body_start its offset in mail; `body` is made from them when it is read;
- no body:   the body empty (not a way to store mail: the bound on what the body costs);
- generated: the body made on the server by REPEAT, nothing of it on the wire: the least
             any server-side derivation can cost, since it too must make and store it;
- derived:   the mail sent once, as pieces of --chunk bytes in user variables, `mail` their
             CONCAT and `body` the CONCAT of REPLACE(piece, CR, '') (each piece copied once
             per reference, and REPLACE moves the rest of its string for each CR it drops,
             so the pieces are kept small). The rows are checked equal to the sent ones.

Rounds are interleaved (sent, sliced, no body, generated, derived, again) so that the
machine's drift hits all five alike. Also printed: the time of one REPLACE(CR, '') over the
whole body on the server (the obvious derivation), which grows with the square of the size,
and the server's CPU to read `body` back, sliced (REGEXP_REPLACE over the mail's bytes)
and sent (read as stored).

    python3 bench/body_cost.py [--messages 60] [--rounds 3] [--size 1048576] [--chunk 4096] [--reads 20]
                                [--mariadb-arg=--innodb-doublewrite=0]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(ROOT / "bench")]

from procstat import cpu_seconds  # noqa: E402
from reliability.mariadb import ThrowawayMariaDB  # noqa: E402

from gsmtpd import mysql_protocol  # noqa: E402
from gsmtpd.envelope import Envelope, Recipient, build_rows  # noqa: E402
from gsmtpd.row import SLICED_NAMES  # noqa: E402
from gsmtpd.store import BODY, COLUMNS, MAIL  # noqa: E402
from gsmtpd.wire import Data  # noqa: E402

LINE = b"X" * 78 + b"\r\n"     # smtp-source's payload is lines of this shape
WAYS = ("sent", "sliced", "no body", "generated", "derived")


def message(size: int) -> bytes:
    head = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: body cost\r\n\r\n"
    return head + LINE * max(1, (size - len(head)) // len(LINE))


def insert_sql(body: str, mail: str) -> bytes:
    """The row in the sliced table's columns (row.SLICED_NAMES: body_text ..., body_start)."""
    values = ",".join({"body_text": body, "mail": mail}.get(c, "?") for c in SLICED_NAMES)
    return f"INSERT INTO new_mail ({','.join(f'`{c}`' for c in SLICED_NAMES)}) VALUES ({values})".encode()


class Ways:
    def __init__(self, conn, raw: bytes, chunk: int):
        self.conn = conn
        self.statements = mysql_protocol.PreparedStatements(conn, 16)
        envelope = Envelope("a@example.org", recipients=[Recipient("b@example.org", "b@example.org")])
        message = Data(raw, len(raw), crlf_only=True)
        self.row = build_rows(envelope, message, queue_id="0" * 32, now=time.time(), ip="127.0.0.1",
                              helo="bench", hostname="mx.example", is_tls=False, prefer="html")[0]
        mail = self.row[MAIL].join()
        body = self.row[BODY].join()
        start = len(mail) - len(raw) + raw.index(b"\r\n\r\n") + 4
        # Only a body that is the tail of the mail without its CRs is derived.
        if mail[start:].replace(b"\r", b"") != body or getattr(self.row[BODY], "start", None) != start:
            raise SystemExit("the message's body is not its tail without CRs: nothing to derive")
        self.start = start
        self.body_chars = len(body)
        self.pieces = [mail[:start]] + [mail[at:at + chunk] for at in range(start, len(mail), chunk)]
        names = [f"@gsmtpd_p{i}" for i in range(len(self.pieces))]
        self.set_pieces = ("SET " + ",".join(f"{n} = ?" for n in names)).encode()
        self.derived_insert = insert_sql("CONCAT(" + ",".join(f"REPLACE({n}, '\\r', '')" for n in names[1:]) + ")",
                                         "CONCAT(" + ",".join(names) + ")")
        self.count = 0

    def _values(self, body_start=None, **columns) -> list:
        """The row's parameters; a column given as None is none (the SQL gives it)."""
        self.count += 1
        row = dict(zip(COLUMNS, self.row), hash=f"{self.count:032x}", **columns)
        row["body_text"] = row.pop("body")
        return [row[c] for c in SLICED_NAMES[:-1] if row[c] is not None] + [body_start]

    def store(self, way: str) -> None:
        execute = mysql_protocol.execute
        encode = mysql_protocol.encode_row
        blob = mysql_protocol.BLOB_TYPE
        if way == "sent":
            execute(self.conn, self.statements.get(insert_sql("?", "?")), [encode(self._values(), None, blob)])
        elif way == "sliced":
            execute(self.conn, self.statements.get(insert_sql("?", "?")),
                    [encode(self._values(body="", body_start=self.start), None, blob)])
        elif way == "no body":
            execute(self.conn, self.statements.get(insert_sql("''", "?")), [encode(self._values(body=None), None, blob)])
        elif way == "generated":
            sql = insert_sql(f"REPEAT('x', {self.body_chars})", "?")
            execute(self.conn, self.statements.get(sql), [encode(self._values(body=None), None, blob)])
        else:
            self.conn.begin()
            execute(self.conn, self.statements.get(self.set_pieces), [encode(self.pieces, None, blob)])
            execute(self.conn, self.statements.get(self.derived_insert),
                    [encode(self._values(body=None, mail=None), None, blob)])
            self.conn.commit()


def whole_replace_ms(conn, raw: bytes) -> float:
    with conn.cursor() as cur:
        cur.execute("SET @gsmtpd_whole = %s", (raw,))
        began = time.perf_counter()
        cur.execute("SELECT LENGTH(REPLACE(@gsmtpd_whole, '\\r', ''))")
        cur.fetchall()
        return (time.perf_counter() - began) * 1000


def read_ms(db, conn, ways: Ways, reads: int) -> dict[str, float]:
    """Server CPU to read `body` back, of a sliced row and of a sent one (each checked to
    read as the parser's text)."""
    costs = {}
    with conn.cursor() as cur:
        cur.execute("TRUNCATE new_mail")
        for way in ("sliced", "sent"):
            ways.store(way)
            cur.execute("SELECT MAX(mail_id) FROM new_mail")
            mail_id = cur.fetchone()[0]
            before = cpu_seconds(db.proc.pid)
            for _ in range(reads):
                cur.execute("SELECT body FROM new_mail WHERE mail_id = %s", (mail_id,))
                body = cur.fetchone()[0]
            costs[way] = (cpu_seconds(db.proc.pid) - before) * 1000 / reads
            if body != ways.row[BODY].join().decode():
                raise SystemExit(f"the {way} row does not read back as its body")
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=60, help="messages per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes of a message")
    parser.add_argument("--reads", type=int, default=20, help="reads of a body, sliced and sent")
    parser.add_argument("--chunk", type=int, default=4096, help="bytes of a piece for 'derived'")
    parser.add_argument("--mariadb-arg", action="append", default=[], metavar="ARG",
                        help="one more mariadbd argument (repeatable): --mariadb-arg=--innodb-doublewrite=0")
    args = parser.parse_args()
    raw = message(args.size)
    cpu: dict[str, list[float]] = {way: [] for way in WAYS}
    with ThrowawayMariaDB(extra_args=("--innodb-buffer-pool-size=128M", "--innodb-log-file-size=96M",
                                      "--max-allowed-packet=64M", *args.mariadb_arg)) as db:
        db.create_database("body_cost")
        conn = db.connect("body_cost")
        with conn.cursor() as cur:
            cur.execute((ROOT / "gsmtpd" / "schema.sql").read_text())
        ways = Ways(conn, raw, args.chunk)
        print(f"one REPLACE over the whole {len(raw)} byte body on the server: {whole_replace_ms(conn, raw):.0f} ms")
        for number in range(args.rounds):
            for way in WAYS:
                with conn.cursor() as cur:
                    cur.execute("TRUNCATE new_mail")
                before = cpu_seconds(db.proc.pid)
                for _ in range(args.messages):
                    ways.store(way)
                cpu[way].append((cpu_seconds(db.proc.pid) - before) * 1000 / args.messages)
            print(f"round {number + 1}: " + ", ".join(f"{w} {cpu[w][-1]:.2f}" for w in WAYS) + " db ms/msg",
                  flush=True)
        with conn.cursor() as cur:       # the last round's derived rows against the sent row
            cur.execute("SELECT COUNT(*) FROM new_mail WHERE body = %s AND mail = %s",
                        (ways.row[BODY].join().decode(), ways.row[MAIL].join()))
            same = cur.fetchone()[0]
        reads = read_ms(db, conn, ways, args.reads)
    print(f"derived rows equal to the sent row: {same} of {args.messages}")
    print("median db ms/msg: " + ", ".join(f"{w} {statistics.median(cpu[w]):.2f}" for w in WAYS))
    print("db ms to read body: " + ", ".join(f"{w} {ms:.2f}" for w, ms in reads.items()))
    return 0 if same == args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
