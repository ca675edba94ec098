"""Rows longer than one MySQL packet (16 MiB - 1), on the throwaway MariaDB whose
max_allowed_packet a test may raise (the shared server keeps its 16 MiB)."""
from __future__ import annotations

import os

from gsmtpd.mysql_store import MySQLBackend
from gsmtpd.store import Blob, Verdict
from test_mysql_protocol import make_row, new_hash, pending

PACKET = 64 << 20


def test_a_row_longer_than_one_packet_is_split_across_packets(throwaway_mariadb, throwaway_store):
    """Above 16 MiB - 1 a command goes as several packets (a 16 MiB - 1 one, then the rest)."""
    admin = throwaway_store.connect()
    with admin.cursor() as cur:
        cur.execute("SELECT @@global.max_allowed_packet")
        before = cur.fetchone()[0]
        cur.execute(f"SET GLOBAL max_allowed_packet = {PACKET}")
    backend = MySQLBackend("127.0.0.1", throwaway_mariadb.port, "root", "", throwaway_store.database,
                           None, timeout=60)
    try:
        backend.connect()
        assert backend.row_limit() > 20 << 20
        raw = os.urandom(9 << 20)
        body = "y" * (9 << 20)
        rows = [make_row(new_hash(), mail=Blob((b"R\r\n", raw)), body=body) for _ in range(2)]
        assert backend.write([pending(row) for row in rows]) == [Verdict.STORED] * 2
    finally:
        backend.close()
        with admin.cursor() as cur:
            cur.execute(f"SET GLOBAL max_allowed_packet = {before}")
        admin.close()
    stored = throwaway_store.rows()
    assert len(stored) == 2
    for row in stored:
        assert bytes(row["mail"]) == b"R\r\n" + raw and row["body"] == body
