"""The mailbox API over real HTTP, against a real gsmtpd fed by real SMTP (smtplib, swaks),
on SQLite and MariaDB; its events from another process; its token; its errors."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from email.message import EmailMessage
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from conftest import message, send
from web_client import Client, WebProcess, wait_web_url


def web_client(server, token: str = "") -> Client:
    return Client(*wait_web_url(server.log, server.proc), token=token)


def html_message(to: str, subject: str, html: str) -> bytes:
    return message(subject=subject, to=to, body=html, extra="MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n")


def with_attachment(to: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "carol@example.org", to, "report attached"
    msg.set_content("see the attachment")
    msg.add_attachment(b"x" * 1234, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


def test_api_reads_what_smtp_stored(any_store, gsmtpd_server):
    server = gsmtpd_server(any_store, web="127.0.0.1:0")
    web = web_client(server)
    box = "reader@test.org"
    send(server, "a@example.org", [box], message(subject="first plain", to=box, body="Hello plain\r\n"))
    send(server, "a@example.org", [box], html_message(box, "second html", "<p>Hi <b>there</b> &amp; you</p>"))
    send(server, "a@example.org", [box], with_attachment(box))
    result = subprocess.run(["swaks", "--server", f"{server.host}:{server.port}", "--to", box,
                             "--from", "s@example.org", "--header", "Subject: via swaks"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    send(server, "a@example.org", ["other@test.org"], message(subject="not yours", to="other@test.org"))
    rows = any_store.rows("`to` = %s", (box,))
    ids = [row["mail_id"] for row in rows]

    items = web.messages(box.upper())                    # the address is case-insensitive
    assert [item["id"] for item in items] == ids[::-1]   # newest first
    assert [item["subject"] for item in items] == ["via swaks", "report attached", "second html", "first plain"]
    assert items[2]["snippet"] == "Hi there & you"        # tags dropped, entities decoded
    assert items[1]["has_attach"] == 1 and items[3]["from"] == "alice@example.org"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", items[0]["date"])

    page = web.json("GET", f"/api/mailboxes/{box}/messages?limit=3")
    assert [i["id"] for i in page["messages"]] == ids[:0:-1] and page["next_after"] == ids[1]
    rest = web.json("GET", f"/api/mailboxes/{box}/messages?limit=3&after={page['next_after']}")
    assert [i["id"] for i in rest["messages"]] == [ids[0]] and rest["next_after"] is None

    html = web.json("GET", f"/api/mailboxes/{box}/messages/{ids[1]}")
    assert html["is_html"] is True and html["body"].startswith("<p>Hi <b>there</b>")
    assert html["content_type"] == "text/html" and html["mailbox"] == box
    attached = web.json("GET", f"/api/mailboxes/{box}/messages/{ids[2]}")
    assert attached["attachments"] == [{"filename": "report.pdf", "content_type": "application/pdf", "size": 1234}]
    assert attached["is_html"] is False and "see the attachment" in attached["body"]

    status, headers, raw = web.request("GET", f"/api/mailboxes/{box}/messages/{ids[3]}/raw")
    assert status == 200 and headers["content-type"] == "message/rfc822"
    assert raw == bytes(rows[3]["mail"])                  # byte for byte

    status, headers, body = web.request("GET", f"/api/mailboxes/{box}/messages/{ids[1]}/html")
    assert status == 200 and body.startswith(b"<p>Hi <b>there</b>")
    assert headers["content-security-policy"].startswith("sandbox; default-src 'none'")
    web.json("GET", f"/api/mailboxes/{box}/messages/{ids[0]}/html", expect=404)   # a text body

    # A message is read only under its own mailbox: its id alone opens nothing.
    web.json("GET", f"/api/mailboxes/other@test.org/messages/{ids[0]}", expect=404)
    status, _, _ = web.request("DELETE", f"/api/mailboxes/other@test.org/messages/{ids[0]}")
    assert status == 404
    status, _, body = web.request("DELETE", f"/api/mailboxes/{box}/messages/{ids[0]}")
    assert (status, body) == (204, b"")
    web.json("GET", f"/api/mailboxes/{box}/messages/{ids[0]}", expect=404)
    assert [item["id"] for item in web.messages(box)] == ids[:0:-1]


BAD_INPUTS = [
    ("GET", "/api/mailboxes/not-an-address/messages", 400),
    ("GET", "/api/mailboxes/a@b/messages?limit=0", 400),
    ("GET", "/api/mailboxes/a@b/messages?limit=201", 400),
    ("GET", "/api/mailboxes/a@b/messages?limit=100000000000000000000000", 400),
    ("GET", "/api/mailboxes/a@b/messages?limit=-1", 400),
    ("GET", "/api/mailboxes/a@b/messages?limit=1e3", 400),
    ("GET", "/api/mailboxes/a@b/messages?limit=%EF%BC%95", 400),     # a full-width digit
    ("GET", "/api/mailboxes/a@b/messages?after=abc", 400),
    ("GET", "/api/mailboxes/a@b/messages?after=-5", 400),
    ("GET", "/api/mailboxes/a@b/messages?after=99999999999999999999", 400),
    ("GET", "/api/mailboxes/a@b/messages?after=%FF", 400),
    ("GET", "/api/mailboxes/a@b/messages?" + "x" * 5000, 414),
    ("GET", "/api/mailboxes/%FF%FE@b/messages", 400),
    ("GET", "/api/mailboxes/a%00b@c/messages", 400),
    ("GET", "/api/mailboxes/a%20b@c/messages", 400),
    ("GET", "/api/mailboxes/" + "a" * 300 + "@b/messages", 400),
    ("GET", "/api/mailboxes/a@b/messages/abc", 400),
    ("GET", "/api/mailboxes/a@b/messages/-1", 400),
    ("GET", "/api/mailboxes/a@b/messages/99999999999999999999", 400),
    ("GET", "/api/mailboxes/a@b/messages/123456", 404),
    ("GET", "/api/mailboxes/a@b/messages/123456/raw", 404),
    ("GET", "/api/mailboxes/a@b/messages/123456/html", 404),
    ("GET", "/api/mailboxes/a@b/messages/1/html?images=evil", 400),
    ("DELETE", "/api/mailboxes/a@b/messages/123456", 404),
    ("GET", "/api/mailboxes/a@b/events?last_event_id=abc", 400),
    ("POST", "/api/mailboxes/a@b/messages", 405),
    ("PUT", "/api/domains", 405),
    ("GET", "/api/mailboxes", 404),
    ("GET", "/api/nothing", 404),
    ("GET", "/static/../../etc/passwd", 404),
    ("GET", "/static/nothing.js", 404),
]


def test_bad_input_gets_a_4xx_json_error(sqlite_store, gsmtpd_server, tmp_path):
    send(gsmtpd_server(sqlite_store), "a@example.org", ["x@test.org"], message(to="x@test.org"))
    web = WebProcess(tmp_path, sqlite_store.url)
    try:
        client = Client(web.host, web.port)
        for method, path, expected in BAD_INPUTS:
            status, headers, body = client.request(method, path)
            assert status == expected, (method, path, status, body)
            assert headers["content-type"] == "application/json", (path, headers)
            error = json.loads(body)
            assert error["status"] == expected and error["error"], (path, error)
        status, _, body = client.request("GET", "/api/mailboxes/a@b/events", {"Last-Event-ID": "1; DROP"})
        assert status == 400 and json.loads(body)["error"].startswith("Last-Event-ID")
    finally:
        web.stop()
    assert "Traceback" not in web.log() and "unexpected error" not in web.log()


def test_events_carry_mail_stored_by_another_process(any_store, gsmtpd_server, tmp_path):
    """The web process is not the one that stores: events come from the database."""
    server = gsmtpd_server(any_store)
    web = WebProcess(tmp_path, any_store.url)
    try:
        client = Client(web.host, web.port)
        box = "live@test.org"
        send(server, "a@example.org", [box], message(subject="before the stream", to=box))
        assert client.messages(box)                         # the web process sees it: it is old news
        stream = client.events(box)
        send(server, "a@example.org", ["someone-else@test.org"], message(to="someone-else@test.org"))
        send(server, "a@example.org", [box], message(subject="live one", to=box))
        event = stream.next_event()
        row = any_store.rows("subject = %s", ("live one",))[0]
        assert event["event"] == "message" and int(event["id"]) == row["mail_id"]
        assert event["data"]["subject"] == "live one" and event["data"]["id"] == row["mail_id"]
        stream.close()

        # Away for a while; the browser comes back with Last-Event-ID and misses nothing.
        send(server, "a@example.org", [box], message(subject="while away 1", to=box))
        send(server, "a@example.org", [box], message(subject="while away 2", to=box))
        resumed = client.events(box, last_event_id=row["mail_id"])
        subjects = [resumed.next_event()["data"]["subject"] for _ in range(2)]
        assert subjects == ["while away 1", "while away 2"]
        send(server, "a@example.org", [box], message(subject="live again", to=box))
        assert resumed.next_event()["data"]["subject"] == "live again"
        resumed.close()
    finally:
        web.stop()


def test_web_token_guards_every_endpoint(sqlite_store, gsmtpd_server, tmp_path):
    server = gsmtpd_server(sqlite_store)
    send(server, "a@example.org", ["t@test.org"], message(to="t@test.org"))
    web = WebProcess(tmp_path, sqlite_store.url, "--web-token", "s3cret")
    try:
        anonymous, wrong, right = (Client(web.host, web.port, token) for token in ("", "nope", "s3cret"))
        paths = ["/api/domains", "/api/mailboxes/t@test.org/messages", "/api/mailboxes/t@test.org/messages/1",
                 "/api/mailboxes/t@test.org/messages/1/raw", "/api/mailboxes/t@test.org/events"]
        for path in paths:
            for client in (anonymous, wrong):
                status, headers, body = client.request("GET", path)
                assert status == 401 and json.loads(body)["status"] == 401, (path, status)
                assert headers["www-authenticate"].startswith("Bearer")
        status, _, _ = anonymous.request("DELETE", "/api/mailboxes/t@test.org/messages/1")
        assert status == 401
        assert right.json("GET", "/api/mailboxes/t@test.org/messages/1")["id"] == 1
        assert right.json("GET", "/api/domains") == {"domains": ["test.org"]}
        status, _, _ = anonymous.request("GET", "/api/mailboxes/t@test.org/messages/1/raw?access_token=s3cret")
        assert status == 200                  # what EventSource and an iframe can send
        assert anonymous.json("GET", "/api/openapi.json")["openapi"].startswith("3.")
        stream = right.events("t@test.org", last_event_id=0)
        assert stream.next_event()["data"]["id"] == 1
        stream.close()
    finally:
        web.stop()


def test_openapi_documents_every_route_and_nothing_else(sqlite_store, tmp_path):
    from gsmtpd.web.api import Api
    api = Api(db=None, events=SimpleNamespace(stream=None), config=None)
    served = {(method.lower(), path) for method, path, _ in api.routes() if path.startswith("/api/")}
    web = WebProcess(tmp_path, sqlite_store.url)
    try:
        document = Client(web.host, web.port).json("GET", "/api/openapi.json")
    finally:
        web.stop()
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == served


def test_web_process_is_a_child_of_the_master_not_a_worker(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, web="127.0.0.1:0", workers=2, retention=3600)
    web = web_client(server)
    first = int(server.wait_log(r"web process (\d+) started").group(1))
    workers = {int(pid) for pid in re.findall(r"worker (\d+) started", server.log())}
    assert first not in workers and first != server.proc.pid
    with open(f"/proc/{first}/stat") as fh:
        assert int(fh.read().rsplit(")", 1)[1].split()[1]) == server.proc.pid   # its parent: the master
    assert web.json("GET", "/api/domains") == {"domains": ["test.org"]}
    server.wait_log(r"retention pass: purged=0")                                 # retention runs there too

    os.kill(first, signal.SIGKILL)                  # the master starts a new one, on the same socket
    deadline = time.monotonic() + 10
    while len(started := re.findall(r"web process (\d+) started", server.log())) < 2:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    second = int(started[1])
    deadline = time.monotonic() + 10
    while True:
        try:
            assert web.json("GET", "/api/domains") == {"domains": ["test.org"]}
            break
        except (ConnectionError, OSError):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
    assert server.stop() == 0
    assert not os.path.exists(f"/proc/{second}")     # stopped and reaped with the master


@pytest.mark.parametrize("argv, problem", [
    (["--web", "nowhere"], "web: expected HOST:PORT"),
    (["--retention", "-1"], "must be at least 0"),
])
def test_bad_web_settings_are_reported(argv, problem):
    import sys
    result = subprocess.run([sys.executable, "-m", "gsmtpd", *argv, "--check-config"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and problem in result.stderr, result.stderr


def test_web_process_beside_a_single_process_server(sqlite_store, gsmtpd_server):
    """--workers 1 has no master: the single process starts the web process itself."""
    server = gsmtpd_server(sqlite_store, web="127.0.0.1:0", workers=1)
    web = web_client(server)
    send(server, "a@example.org", ["solo@test.org"], message(subject="solo", to="solo@test.org"))
    deadline = time.monotonic() + 10
    while True:
        try:
            assert [m["subject"] for m in web.messages("solo@test.org")] == ["solo"]
            break
        except (ConnectionError, OSError):               # the web process is still starting
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
    status, headers, body = web.request("HEAD", "/api/mailboxes/solo@test.org/events")
    assert (status, body) == (200, b"") and headers["content-type"].startswith("text/event-stream")
    pid = int(server.wait_log(r"web process (\d+) started").group(1))
    assert server.stop() == 0
    assert not os.path.exists(f"/proc/{pid}")
