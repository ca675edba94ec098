"""What a user sees: mail sent with real clients lands as rows with every column right,
in SQLite and in MariaDB."""
from __future__ import annotations

import base64
import calendar
import re
import smtplib
import subprocess
import time

import pytest

from conftest import HOSTNAME, QUEUED, message, send



def test_every_column_of_a_plain_message(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store)
    raw = message(subject="Quarterly report", body="Numbers are up.\r\n", sender="Alice <Alice@Example.ORG>",
                  extra="Content-Type: text/plain; charset=utf-8\r\n")
    before = int(time.time())                 # the column has whole seconds
    queue_id = send(server, "bounce@example.org", ["Bob@test.org"], raw)
    after = time.time()
    rows = any_store.rows()
    assert len(rows) == 1
    row = rows[0]
    assert row["hash"] == queue_id
    assert row["from"] == "alice@example.org"
    assert row["to"] == "bob@test.org"
    assert row["recipient"] == "Bob@test.org"
    assert row["return_path"] == "bounce@example.org"
    assert row["subject"] == "Quarterly report"
    assert row["body"] == "Numbers are up.\n"
    assert row["charset"] == "utf-8"
    assert row["content_type"] == "text/plain"
    assert row["ip_addr"] == "127.0.0.1"
    assert row["helo"] == "client.example"
    assert row["is_tls"] == 0
    assert row["spam_score"] == 0
    assert row["has_attach"] == 0
    assert row["size"] == len(raw)
    assert row["message_id"].startswith("<") and row["message_id"].endswith("@example.org>")
    stamp = str(row["date"])
    accepted = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))
    assert before <= accepted <= after, f"date {stamp} is not the UTC time of acceptance"
    mail = bytes(row["mail"])
    assert mail.startswith(b"Received: from client.example ([127.0.0.1])\r\n\tby mx.test (gsmtpd) with ESMTP id "
                           + queue_id.encode())
    assert mail.endswith(raw), "the raw message is kept byte for byte after the Received header"


def test_one_row_per_recipient_with_unique_hashes(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store)
    queue_id = send(server, "a@example.org", ["one@test.org", "Two@sub.wild.test", "postmaster"], message())
    rows = any_store.rows()
    assert [r["recipient"] for r in rows] == ["one@test.org", "Two@sub.wild.test", "postmaster"]
    assert [r["to"] for r in rows] == ["one@test.org", "two@sub.wild.test", f"postmaster@{HOSTNAME}"]
    assert rows[0]["hash"] == queue_id
    assert len({r["hash"] for r in rows}) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["hash"]) for r in rows)
    assert len({bytes(r["mail"]) for r in rows}) == 1
    assert b"\tfor <" not in bytes(rows[0]["mail"]).split(b"\r\n\r\n")[0], "no recipient named for several"


def test_primary_host_files_every_mailbox_under_one_domain(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, primary_host="sharklasers.com")
    send(server, "a@example.org", ["Xyz@test.org", "abc@deep.wild.test"], message())
    assert [r["to"] for r in sqlite_store.rows()] == ["xyz@sharklasers.com", "abc@sharklasers.com"]
    assert [r["recipient"] for r in sqlite_store.rows()] == ["Xyz@test.org", "abc@deep.wild.test"]


def test_bounce_with_null_sender(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store)
    client = server.raw()
    assert client.reply().startswith("220 mx.test ESMTP gsmtpd")
    assert client.command("EHLO c").startswith("250-mx.test")
    assert client.command("MAIL FROM:<>") == "250 2.1.0 Sender OK"
    assert client.command("RCPT TO:<x@test.org>") == "250 2.1.5 Recipient OK"
    assert client.command("DATA").startswith("354 ")
    assert QUEUED.match(client.command(b"Subject: bounce\r\n\r\nsorry\r\n."))
    assert any_store.rows()[0]["return_path"] == ""


def test_relaying_is_denied_and_nothing_stored(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    with server.smtp() as client:
        client.ehlo()
        client.mail("a@example.org")
        code, text = client.rcpt("victim@elsewhere.com")
        assert (code, text) == (550, b"5.7.1 Relaying denied")
        code, text = client.rcpt("x@wild.test")
        assert code == 550, "*.wild.test matches subdomains, not wild.test itself"
    assert sqlite_store.count() == 0


def test_dot_stuffing_is_undone_and_crlf_kept(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store)
    client = server.raw()
    client.start_data()
    wire = b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n.\r\n"
    assert QUEUED.match(client.command(wire[:-2]))
    mail = bytes(any_store.rows()[0]["mail"])
    assert mail.endswith(b"\r\n\r\n.leading dot\r\n..two\r\n")


@pytest.mark.parametrize("wire,stored", [
    (b"Subject: dots\r\n\r\nfirst\r\n..second\r\n.\r\n", b"first\r\n.second\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),                                      # only a stuffed dot
    (b"Subject: lf\r\n\r\nfirst\n..second\r\n.\r\n", b"first\r\n.second\r\n"),  # bare LF, normalized
])
def test_dot_stuffing_split_across_reads(sqlite_store, gsmtpd_server, wire, stored):
    """Sent a byte at a time, so the stuffed dot and the end of data arrive split every
    way between reads."""
    server = gsmtpd_server(sqlite_store)
    client = server.raw()
    client.start_data()
    for octet in wire:
        client.send(bytes([octet]))
    assert QUEUED.match(client.reply())
    assert bytes(sqlite_store.rows()[0]["mail"]).endswith(stored)


def test_pipelined_transaction_gets_one_reply_per_command_in_order(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store)
    client = server.raw()
    client.reply()
    client.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@test.org>\r\nRCPT TO:<no@other.net>\r\n"
                b"RCPT TO:<c@test.org>\r\nDATA\r\nSubject: piped\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
    replies = [client.reply() for _ in range(9)]
    assert replies[0].startswith("250-mx.test")
    assert [r[:3] for r in replies[1:]] == ["250", "250", "550", "250", "354", "250", "250", "221"]
    assert QUEUED.match(replies[6])
    assert client.closed()
    assert [r["recipient"] for r in any_store.rows()] == ["b@test.org", "c@test.org"]


def test_oversized_message_is_refused_after_data_and_session_stays_usable(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store, max_size=2000)
    with server.smtp() as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "2000"
        code, text = client.mail("a@example.org", ["SIZE=5000"])
        assert (code, text) == (552, b"5.3.4 Message size exceeds fixed limit")
        client.rset()
        client.mail("a@example.org")
        client.rcpt("b@test.org")
        code, text = client.data(message(body=("y" * 70 + "\r\n") * 100))
        assert (code, text) == (552, b"5.3.4 Message size exceeds fixed limit")
        assert client.noop()[0] == 250
        client.mail("a@example.org")
        client.rcpt("b@test.org")
        assert client.data(message(subject="small"))[0] == 250
    assert [r["subject"] for r in any_store.rows()] == ["small"]


def test_message_exactly_at_the_limit_is_accepted(sqlite_store, gsmtpd_server):
    raw = message(body="z" * 100 + "\r\n")
    server = gsmtpd_server(sqlite_store, max_size=len(raw))
    send(server, "a@example.org", ["b@test.org"], raw)
    assert sqlite_store.rows()[0]["size"] == len(raw)


def test_too_many_recipients_gets_452_and_the_rest_is_delivered(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store, max_recipients=2)
    with server.smtp() as client:
        client.ehlo()
        client.mail("a@example.org")
        assert client.rcpt("r1@test.org")[0] == 250
        assert client.rcpt("r2@test.org")[0] == 250
        assert client.rcpt("r3@test.org") == (452, b"4.5.3 Too many recipients")
        assert client.data(message())[0] == 250
    assert any_store.count() == 2


def test_multipart_alternative_base64_body_and_encoded_subject(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store)
    html = "<p>Grüße aus Köln 😀</p>"
    raw = ("From: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.de>\r\nTo: b@test.org\r\n"
           "Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
           "--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           "Gr=FC=DFe\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(html.encode()).decode().replace("\n", "\r\n") + "--b1--\r\n").encode()
    send(server, "a@example.org", ["b@test.org"], raw)
    row = any_store.rows()[0]
    assert row["subject"] == "Grüße"
    assert row["from"] == "jurgen@example.de"
    assert row["body"] == html
    assert row["content_type"] == "text/html"
    assert row["charset"] == "utf-8"


@pytest.mark.parametrize("charset,text", [
    ("iso-8859-1", "Ça coûte très cher"),
    ("windows-1251", "Привет, как дела"),
    ("koi8-r", "Съешь же ещё этих мягких французских булок"),
    ("shift_jis", "日本語のメールです"),
    ("gb2312", "这是一封中文邮件"),
    ("big5", "這是一封中文郵件"),
    ("euc-kr", "한국어 메일입니다"),
])
def test_legacy_charsets_become_utf8(mysql_store, gsmtpd_server, charset, text):
    server = gsmtpd_server(mysql_store)
    raw = (f"From: a@example.org\r\nSubject: {charset}\r\nContent-Type: text/plain; charset={charset}\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + text.encode(charset) + b"\r\n"
    send(server, "a@example.org", ["b@test.org"], raw)
    row = mysql_store.rows()[0]
    assert row["body"] == text + "\n"
    assert row["charset"].replace("_", "-") in (charset.replace("_", "-"), "gb18030", "cp936", "gbk")


def test_utf8_addresses_with_smtputf8_are_stored_exactly(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store)
    client = server.raw()
    client.reply()
    client.command("EHLO c")
    assert client.command("MAIL FROM:<jürgen@exämple.de> SMTPUTF8") == "250 2.1.0 Sender OK"
    assert client.command("RCPT TO:<Ünïcode@test.org>") == "250 2.1.5 Recipient OK"
    client.command("DATA")
    assert QUEUED.match(client.command("Subject: ü\r\n\r\nhi\r\n.".encode()))
    row = mysql_store.rows()[0]
    assert (row["return_path"], row["recipient"], row["to"]) == ("jürgen@exämple.de", "Ünïcode@test.org",
                                                                 "ünïcode@test.org")
    assert b"with UTF8SMTP id" in bytes(row["mail"])


def test_swaks_delivers_into_mysql(mysql_store, gsmtpd_server):
    server = gsmtpd_server(mysql_store)
    result = subprocess.run(["swaks", "--server", f"{server.host}:{server.port}", "--to", "swaks@test.org",
                             "--from", "sender@example.org", "--header", "Subject: from swaks",
                             "--body", "hello from swaks"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    queue_id = re.search(r"<-  250 2\.0\.0 OK: queued as ([0-9a-f]{32})", result.stdout).group(1)
    row = mysql_store.rows()[0]
    assert (row["hash"], row["subject"], row["to"]) == (queue_id, "from swaks", "swaks@test.org")
    assert row["body"].strip() == "hello from swaks"
    assert re.search(rf"message id={queue_id} ip=127\.0\.0\.1 from=<sender@example\.org> to=swaks@test\.org "
                     rf"size=\d+ reply=250 2\.0\.0 OK: queued as {queue_id}", server.log())


def test_log_has_one_line_per_connection_and_message(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    queue_id = send(server, "a@example.org", ["b@test.org", "c@test.org"], message())
    server.wait_log(r"disconnect ip=127\.0\.0\.1 messages=1 errors=0")
    assert len(re.findall(r"disconnect ip=", server.log())) == 1
    assert re.search(rf"message id={queue_id} ip=127\.0\.0\.1 from=<a@example\.org> to=b@test\.org,c@test\.org "
                     rf"size=\d+ reply=250", server.log())


def test_smtplib_sendmail_many_messages_on_one_connection(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store)
    with server.smtp() as client:
        for i in range(20):
            client.sendmail("a@example.org", ["b@test.org"], message(subject=f"n{i}"))
    assert [r["subject"] for r in any_store.rows()] == [f"n{i}" for i in range(20)]


def test_unknown_commands_end_in_421(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    client = server.raw()
    client.reply()
    for _ in range(10):
        assert client.command("BOGUS") == "500 5.5.2 Command not recognized"
    assert client.reply() == "421 4.7.0 Too many errors, closing connection"
    assert client.closed()


def test_greeting_names_the_hostname(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    assert server.raw().reply() == "220 mx.test ESMTP gsmtpd"


def test_a_helo_name_cannot_open_or_close_a_comment_in_the_received_header(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    client = server.raw()
    client.start_data(helo="HELO ev(il)\\name")
    assert client.command(b"Subject: x\r\n\r\nbody\r\n.").startswith("250 ")
    mail = bytes(sqlite_store.rows()[0]["mail"])
    assert mail.startswith(b"Received: from evilname ([127.0.0.1])\r\n")
    assert sqlite_store.rows()[0]["helo"] == "ev(il)\\name", "the helo column keeps the name as given"
