"""The MIME corpus through the real server into MariaDB: what the web app will read.

Every message of tests/mime_corpus/ is sent over a raw socket exactly as it is on disk
(only dot-stuffed), and the stored row must carry the expected subject, from, body,
charset, content_type, has_attach and message_id: the same values test_mime.py expects
from the parser, now after SMTP framing, the Received header and utf8mb4 storage.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "mime_corpus"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
COLUMN = {"subject": "subject", "from_addr": "from", "body": "body", "charset": "charset",
          "content_type": "content_type", "has_attach": "has_attach", "message_id": "message_id"}
QUEUED = re.compile(r"^250 2\.0\.0 OK: queued as ([0-9a-f]{32})$")


def dot_stuff(raw: bytes) -> bytes:
    """RFC 5321 4.5.2, as a client does it; ends the message with <CRLF>.<CRLF>."""
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


@pytest.mark.parametrize("prefer", ["html", "plain"])
def test_corpus_lands_in_mysql_as_expected(mysql_store, gsmtpd_server, prefer):
    names = sorted(n for n, e in EXPECTED.items() if e.get("prefer", "html") == prefer)
    server = gsmtpd_server(mysql_store, prefer=prefer, max_size=50 << 20)
    client = server.raw()
    assert client.reply().startswith("220")
    client.command("EHLO corpus.test")
    hashes = {}
    for name in names:
        assert client.command("MAIL FROM:<corpus@example.org> BODY=8BITMIME") == "250 2.1.0 Sender OK"
        assert client.command("RCPT TO:<reader@test.org>") == "250 2.1.5 Recipient OK"
        assert client.command("DATA").startswith("354")
        client.send(dot_stuff((CORPUS / f"{name}.eml").read_bytes()))
        reply = client.reply()
        assert QUEUED.match(reply), (name, reply)
        hashes[QUEUED.match(reply).group(1)] = name
    rows = {row["hash"]: row for row in mysql_store.rows()}
    assert set(rows) == set(hashes)
    mismatches = []
    for queue_id, name in hashes.items():
        expected, row = dict(EXPECTED[name]), rows[queue_id]
        raw = (CORPUS / f"{name}.eml").read_bytes()
        if not raw.endswith(b"\r\n"):
            # SMTP content always ends with CRLF (RFC 5321 4.1.1.4): the client adds one,
            # so the body's last line may gain its line end.
            raw = raw.rstrip(b"\n") + b"\r\n"
            if "body" in expected and row["body"].rstrip("\n") == expected["body"].rstrip("\n"):
                expected["body"] = row["body"]
        for field, column in COLUMN.items():
            if field in expected and row[column] != expected[field]:
                mismatches.append(f"{name}: {column} = {row[column]!r:.120}, expected {expected[field]!r:.120}")
        for piece in expected.get("body_contains", []):
            if piece not in row["body"]:
                mismatches.append(f"{name}: body lacks {piece!r:.80}")
        if not name.startswith("bare_lf") and not bytes(row["mail"]).endswith(raw):
            mismatches.append(f"{name}: raw mail not kept byte for byte")
    assert not mismatches, "\n".join(mismatches)


def _bench_messages():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_mime", Path(__file__).parent.parent / "bench" / "bench_mime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PATHOLOGICAL


@pytest.mark.parametrize("name,build", sorted(_bench_messages().items()))
def test_hostile_message_is_stored_while_other_sessions_keep_answering(mysql_store, gsmtpd_server, name, build):
    """While a pathological message goes through framing, MIME and storage, another
    connection on the same worker (one event loop) keeps getting its NOOPs answered. How
    long a parse holds the loop is measured by bench/bench_mime.py, not here."""
    import threading
    server = gsmtpd_server(mysql_store, workers=1, max_size=50 << 20)
    watcher = server.raw()
    watcher.reply()
    stop = threading.Event()
    replies: list[str] = []

    def watch():
        while not stop.is_set():
            try:
                replies.append(watcher.command("NOOP"))
            except OSError as exc:       # asserted below: an exception here would be lost
                replies.append(repr(exc))
                return

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        client = server.raw()
        client.start_data("EHLO hostile.test", "h@example.org", "victim@test.org")
        client.send(dot_stuff(build()))
        assert QUEUED.match(client.reply())
    finally:
        stop.set()
        thread.join(30)
    assert replies and set(replies) == {"250 2.0.0 OK"}, replies[-3:]
    row = mysql_store.rows()[0]
    assert row["size"] == len(build()) + (0 if build().endswith(b"\r\n") else 2)


# A bug in the parser, planted in the real server by a sitecustomize module: any From:
# holding "parser-bug@" makes _from_address raise, as a mistake in our code would.
PLANTED_BUG = '''
import gsmtpd.mime as mime
_from_address = mime._from_address
def _buggy(value, hints):
    if value and b"parser-bug@" in value:
        raise TypeError("planted parser bug")
    if value and b"bad-bytes@" in value:
        raise UnicodeDecodeError("utf-8", value, 0, 1, "planted\\r\\ninvalid start byte")
    return _from_address(value, hints)
mime._from_address = _buggy
'''


@pytest.fixture
def planted_server(mysql_store, gsmtpd_server, tmp_path, monkeypatch):
    """A real gsmtpd on MariaDB whose parser has PLANTED_BUG."""
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(PLANTED_BUG)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    return gsmtpd_server(mysql_store)


def test_a_parser_bug_stores_the_raw_message_and_logs_its_traceback_once(mysql_store, planted_server):
    """Bad input never costs a message: the 250 comes after the row, whose body is the raw
    message; the bug is not hidden: its traceback is in the log, once, and the next message
    it hits gets one line naming where."""
    server = planted_server
    client = server.raw()
    client.start_data()
    raw = b"From: <parser-bug@example.org>\r\nSubject: caf\xc3\xa9\r\n\r\nfirst line\r\nsecond line\r\n"
    assert QUEUED.match(client.command(dot_stuff(raw)[:-2]))
    assert client.command("MAIL FROM:<a@example.org>").startswith("250")
    assert client.command("RCPT TO:<b@test.org>").startswith("250")
    assert client.command("DATA").startswith("354")
    assert QUEUED.match(client.command(dot_stuff(b"From: <parser-bug@example.org>\r\n\r\nagain\r\n")[:-2]))
    rows = mysql_store.rows()
    assert [row["body"] for row in rows] == [
        "From: <parser-bug@example.org>\nSubject: caf\u00e9\n\nfirst line\nsecond line\n",
        "From: <parser-bug@example.org>\n\nagain\n"]
    assert [row["charset"] for row in rows] == ["utf-8", "utf-8"]
    log = server.wait_log(r"MIME parser bug \(TypeError at \S+sitecustomize.py:\d+, traceback logged before\)").string
    assert log.count("TypeError: planted parser bug") == 1
    assert log.count("MIME parser bug; the body is the raw message\nTraceback") == 1


def test_what_bad_bytes_raise_stores_the_raw_message_with_one_warning(mysql_store, planted_server):
    """A decoding error (what malformed input could raise, though the fuzz tests found none)
    is no bug of ours: one warning line, no traceback, and the raw message as the body."""
    server = planted_server
    client = server.raw()
    client.start_data()
    raw = b"From: <bad-bytes@example.org>\r\n\r\nbody\r\n"
    assert QUEUED.match(client.command(dot_stuff(raw)[:-2]))
    assert [row["body"] for row in mysql_store.rows()] == ["From: <bad-bytes@example.org>\n\nbody\n"]
    log = server.wait_log(r"WARNING gsmtpd\.mime: MIME parsing failed \(UnicodeDecodeError: "
                          r"\"'utf-8' codec can't decode byte 0x3c in position 0: planted\\r\\ninvalid start byte\"\); "
                          r"the body is the raw message\n").string
    assert "Traceback" not in log
