"""Every reply the server can send is well-formed (RFC 5321 4.2, RFC 3463)."""
from __future__ import annotations

import re

from gsmtpd import replies as R

LINE = re.compile(rb"^([2-5][0-5][0-9])([ -])(.*)\r\n")


def all_replies() -> dict[str, bytes]:
    found = {name: value for name, value in vars(R).items() if isinstance(value, R.Reply)}
    found.update({
        "greeting": R.greeting("mx.test"), "goodbye": R.goodbye("mx.test"), "queued": R.queued("ab" * 16),
        "helo_ok": R.helo_ok("mx.test", "c"), "ehlo_ok": R.ehlo_ok("mx.test", "c", ("SIZE 1", "PIPELINING")),
    })
    return found


def test_every_reply_is_well_formed_and_its_enhanced_code_matches_its_class():
    replies = all_replies()
    assert len(replies) > 40
    for name, data in replies.items():
        lines = data.split(b"\r\n")[:-1]
        assert lines, name
        codes = set()
        for number, line in enumerate(lines):
            match = LINE.match(line + b"\r\n")
            assert match, (name, line)
            codes.add(match.group(1))
            last = number == len(lines) - 1
            assert match.group(2) == (b" " if last else b"-"), (name, line)
            assert len(line) + 2 <= 512, (name, "RFC 5321 4.5.3.1.5: a reply line is at most 512 octets")
        assert len(codes) == 1, name
        text = lines[-1][4:]
        enhanced = re.match(rb"([245])\.\d{1,3}\.\d{1,3} ", text)
        if enhanced:
            assert enhanced.group(1) == lines[-1][:1], (name, "RFC 3463 2: class digit matches the reply")
        elif name not in ("greeting", "helo_ok", "ehlo_ok", "START_DATA"):
            raise AssertionError(f"{name} has no enhanced status code: {data!r}")


def test_the_queued_reply_is_the_one_reply_makes():
    for queue_id in ("0123456789abcdef0123456789abcdef", "ab" * 16):
        made = R.queued(queue_id)
        assert made == R.reply(250, "2.0.0", f"OK: queued as {queue_id}") and type(made) is R.Reply
        assert made.code == 250 and made.enhanced == "2.0.0"
