"""The one door to PyMySQL's internals (gsmtpd/pymysql_adapter.py), on the installed PyMySQL
and the real MariaDB."""

import pymysql
import pytest
from pymysql.constants import COMMAND

from conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, require_mysql, start_after
from gsmtpd import pymysql_adapter


def test_the_installed_pymysql_has_everything_gsmtpd_uses():
    assert pymysql_adapter.unsupported() is None


def test_a_pymysql_without_a_piece_stops_the_start_naming_it_and_the_tested_range(tmp_path):
    """As gsmtpd would meet a PyMySQL release that renamed an internal: exit 1 at start,
    before any session, with the reason in the log."""
    done = start_after("import sys, pymysql.connections\n"
                       "del pymysql.connections.Connection._force_close\n", tmp_path)
    assert done.returncode == 1
    assert (f"cannot start: PyMySQL {pymysql.VERSION_STRING} lacks Connection._force_close, which gsmtpd "
            "uses; the tested versions are PyMySQL >= 1.1.1, < 1.3") in done.stderr
    assert "listening on" not in done.stderr


@pytest.fixture
def conn():
    require_mysql()
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD)
    yield conn
    if not pymysql_adapter.is_closed(conn):
        conn.close()


def test_timeouts_set_after_connect_apply_to_the_next_read(conn):
    pymysql_adapter.set_timeouts(conn, 0.5)
    with pytest.raises(pymysql.err.OperationalError) as lost:
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(30)")       # answered after 30 s, were the timeout not applied
    assert lost.value.args[0] == 2013           # CR_SERVER_LOST: the read timed out
    assert pymysql_adapter.is_closed(conn)


def test_commands_and_their_answers_through_the_door(conn):
    """COM_PING sent whole and written by hand (write_bytes, expect_answer), as
    mysql_protocol writes its commands; each answer read; the connection still in step
    with PyMySQL after them."""
    pymysql_adapter.execute_command(conn, COMMAND.COM_PING, b"")
    assert pymysql_adapter.read_packet(conn).is_ok_packet()
    pymysql_adapter.write_bytes(conn, b"\x01\x00\x00\x00" + bytes((COMMAND.COM_PING,)))
    pymysql_adapter.expect_answer(conn, 1)
    ok = pymysql_adapter.OKPacketWrapper(pymysql_adapter.read_packet(conn))
    assert ok.affected_rows == 0
    with conn.cursor() as cur:
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)
    pymysql_adapter.force_close(conn)
    assert pymysql_adapter.is_closed(conn)
