"""The listing's snippets over real HTTP, against a real gsmtpd fed by real SMTP, on SQLite
and MariaDB: on a sliced table (row.py) mailbox.py reads them from a bounded prefix of
`mail`, yet each one is what the query before gave, the snippet of the body's first
SNIPPET_SOURCE characters; and a table made before (a real `body` column) lists the same."""
from __future__ import annotations

import base64

import pytest

from conftest import message, send
from gsmtpd.mailbox import SLICE_PREFIX, SNIPPET_SOURCE, is_html, snippet
from test_body_slice import old_schema, run_sql
from web_client import Client, wait_web_url

BOX = "snippets@test.org"
EMOJI = "\U0001F600"          # 4 bytes in UTF-8


def lines(text: str, width: int) -> str:
    """``text`` in CRLF lines of ``width`` characters (RFC 5321 4.5.3.1.6: 1000 octets a line)."""
    return "".join(text[i:i + width] + "\r\n" for i in range(0, len(text), width))


def cut_mid_character(make) -> str:
    """The body ``make(pad)`` gives for the first pad (ASCII characters put first) whose
    SLICE_PREFIX bytes end inside a character: the prefix mailbox.py reads cuts it."""
    for pad in range(4):
        body = make("p" * pad)
        raw = body.encode()
        if len(raw) > SLICE_PREFIX and (raw[SLICE_PREFIX] & 0xC0) == 0x80:
            return body
    raise AssertionError("no pad puts the cut inside a character")


def text_with_cut(pad: str) -> str:
    return lines(pad + ("caf\u00e9 \u20ac " + EMOJI * 3) * 900, 70)


def html_with_cut(pad: str) -> str:
    # One line (DATA has no line limit here) of 4-byte characters but two: the prefix holds
    # just over SNIPPET_SOURCE characters. The tag ends near character 2000, so the snippet
    # shows the source's last characters: one more or one less than SNIPPET_SOURCE, or a
    # byte of the cut character, and it differs.
    return "<" + pad + EMOJI * 1990 + ">" + EMOJI * 600 + "\r\n"


MESSAGES = [   # (subject, body, extra headers, sliced?)
    ("big text", lines("the quick brown fox jumps over the lazy dog " * 26000, 76), "", True),
    ("utf-8 cut", cut_mid_character(text_with_cut),
     "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n", True),
    ("html", "<p>Hello <b>there</b> &amp; <script>x()</script>you</p>\r\n" + lines("<br>more " * 2000, 72),
     "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n", True),
    ("html utf-8 cut", cut_mid_character(html_with_cut),
     "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n", True),
    ("base64", lines(base64.b64encode("This text was base64 encoded. caf\u00e9\r\n".encode() * 300).decode(), 76),
     "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n", False),
]


@pytest.mark.parametrize("table", ["sliced", "old"])
def test_listed_snippets_are_those_of_the_whole_body(any_store, gsmtpd_server, table):
    if table == "old":
        run_sql(any_store, [old_schema(not any_store.url.startswith("sqlite"))])
    server = gsmtpd_server(any_store, web="127.0.0.1:0")
    assert len(MESSAGES[0][1]) > 1024 * 1024
    for subject, body, extra, _ in MESSAGES:
        send(server, "a@example.org", [BOX], message(subject=subject, to=BOX, body=body, extra=extra))
    rows = {row["subject"]: row for row in any_store.rows("`to` = %s", (BOX,))}
    # The rows are the cases named: sliced where the body is the rest of mail, or not.
    for subject, body, _, sliced in MESSAGES:
        if table == "sliced":
            assert (rows[subject]["body_start"] is not None) == sliced, subject
        else:
            assert "body_start" not in rows[subject]
        if sliced:
            assert rows[subject]["body"] == body.replace("\r\n", "\n"), subject

    items = Client(*wait_web_url(server.log, server.proc)).messages(BOX)
    got = {item["subject"]: item["snippet"] for item in items}
    # What SELECT SUBSTR(body, 1, SNIPPET_SOURCE) made of it.
    want = {subject: snippet(row["body"][:SNIPPET_SOURCE], is_html(row["content_type"]))
            for subject, row in rows.items()}
    assert got == want
    assert got["html"].startswith("Hello there & you more more")
    assert got["base64"].startswith("This text was base64 encoded. caf\u00e9 This")
    assert got["html utf-8 cut"].startswith(EMOJI) and "\ufffd" not in got["html utf-8 cut"]
