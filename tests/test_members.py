"""The member list of a store URL and the failover policy (gsmtpd/members.py): parsing as
the user writes it, and the choice of member over (a given) time. The real failovers are
in test_cluster.py."""
from __future__ import annotations

import pytest

from gsmtpd.members import Member, MemberSet, parse_mysql_url
from test_cli import gsmtpd


def test_several_hosts_in_order_with_sockets_and_ipv6():
    address = parse_mysql_url("mysql://us%40er:p%3Ass@db1:3307,db2,[2001:db8::3]:3308,%2Frun%2Fdb4.sock/mail")
    assert address.members == (Member("db1", 3307), Member("db2", 3306), Member("2001:db8::3", 3308),
                               Member(unix_socket="/run/db4.sock"))
    assert (address.user, address.password, address.database) == ("us@er", "p:ss", "mail")
    assert [str(m) for m in address.members] == ["db1:3307", "db2:3306", "[2001:db8::3]:3308",
                                                 "unix:/run/db4.sock"]


def test_one_host_as_before():
    assert parse_mysql_url("mysql://root@localhost/gsmtpd?unix_socket=/run/mysqld/mysqld.sock").members == (
        Member(unix_socket="/run/mysqld/mysqld.sock"),)
    assert parse_mysql_url("mysql:///gsmtpd").members == (Member("127.0.0.1", 3306),)
    assert parse_mysql_url("mysql://u:p@db").database == "gsmtpd"


@pytest.mark.parametrize("url, complaint", [
    ("mysql://u:p@db1,,db2/g", "empty host"),
    ("mysql://u:p@db1,/g", "empty host"),
    ("mysql://u:p@db1:0/g", "bad port"),
    ("mysql://u:p@db1:99999/g", "bad port"),
    ("mysql://u:p@db1:x/g", "bad port"),
    ("mysql://u:p@[::1/g", "IPv6"),
    ("mysql://u:p@db1,db1:3306/g", "listed twice"),
    ("mysql://u:p@db1,db2/g?unix_socket=/s", "one member"),
    ("mysql://u:p@db1/g/h", "one database"),
])
def test_a_bad_member_list_is_named(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_mysql_url(url)


def test_check_config_prints_the_members_and_refuses_a_bad_list():
    good = gsmtpd("--check-config", "--store", "mysql://u:secret@db1:3306,db2,%2Frun%2Fdb3.sock/g")
    assert good.returncode == 0, good.stderr
    assert "# store members, in order of preference: db1:3306, db2:3306, unix:/run/db3.sock" in good.stdout
    assert "secret" not in good.stdout
    bad = gsmtpd("--check-config", "--store", "mysql://u:p@db1:3306,,db3/g")
    assert bad.returncode == 2
    assert "empty host in the member list" in bad.stderr


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failed_members_go_last_and_a_preferred_one_returns_only_after_fail_back_after():
    clock = Clock()
    members = MemberSet((Member("a"), Member("b"), Member("c")), fail_back_after=30, clock=clock)
    assert members.candidates() == [0, 1, 2]
    members.failed(0, "refused")
    assert members.candidates() == [1, 2, 0]
    members.connected(1)
    members.healthy(0)                  # a probe found it ready again
    clock.now += 29
    assert members.fail_back_target() is None
    members.failed(0, "flapped")        # down again before the time was up: the clock restarts
    members.healthy(0)
    clock.now += 29
    assert members.fail_back_target() is None
    clock.now += 1
    assert members.fail_back_target() == 0
    members.connected(0)
    assert members.fail_back_target() is None


def test_every_member_failed_means_try_them_all_in_order():
    members = MemberSet((Member("a"), Member("b")), clock=Clock())
    members.failed(1)
    members.failed(0)
    assert members.candidates() == [0, 1]


class NoMembers:
    """A store whose members are Unix sockets nobody listens on."""

    def __init__(self, tmp_path):
        self.url = "mysql://root:@" + ",".join(str(tmp_path / name).replace("/", "%2F")
                                              for name in ("m1.sock", "m2.sock")) + "/gsmtpd"


def started_answering_451(server, reasons: str) -> None:
    """The server started although no member was ready, logged each member's reason
    (``reasons``, a pattern), and answers a message with 451."""
    server.wait_log(r"store unreachable at start, answering 451 until it is back: no database member is "
                    r"ready: " + reasons)
    client = server.raw()
    client.start_data()
    assert client.command(b"Subject: x\r\n\r\nhi\r\n.").startswith("451 4.3.0")
    client.close()


def test_no_member_answering_starts_and_answers_451(gsmtpd_server, tmp_path):
    server = gsmtpd_server(NoMembers(tmp_path), workers=1, save_timeout=2)
    started_answering_451(server, r"unix:\S+/m1\.sock: cannot connect: .*; unix:\S+/m2\.sock: cannot connect")
