"""CPU cost of gsmtpd.mime.parse per message, typical and hostile.

    python bench/bench_mime.py [--seconds 0.5]

Prints CPU microseconds per message (time.process_time over as many
iterations as fit in the time given).  parse() runs on the server's only
thread, so these numbers are how long every other session waits.

The hostile messages are built here and reused by tests/test_mime.py, so
the benchmark and the "returns sane fields" tests check the same inputs.
"""

from __future__ import annotations

import argparse
import base64
import quopri
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gsmtpd.mime import parse  # noqa: E402

CRLF = b"\r\n"
HEADER = (
    b"Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n"
    b"\tby mx.example.net with ESMTPS id 4F2Xk; Tue, 4 Jun 2024 10:00:00 +0000\r\n"
    b"From: \"Ann Example\" <Ann@Example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Date: Tue, 4 Jun 2024 10:00:00 +0000\r\n"
    b"Message-ID: <20240604100000.4F2Xk@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
)


def _lines(text: str, width: int = 72) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) >= width:
            lines.append(line)
            line = ""
        line = f"{line} {word}" if line else word
    return "\r\n".join(lines + [line])


PROSE = "Grüße aus Köln — the quarterly report is attached, figures in € and ¥ are final. " * 48


def plain_utf8() -> bytes:
    body = _lines(PROSE)[:3500].encode("utf-8", "ignore")
    return (HEADER + b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body + CRLF)


def alternative_base64() -> bytes:
    text = PROSE[:1200].encode("utf-8")
    html = b"<html><body><p>" + PROSE[:1200].encode("utf-8") + b"</p></body></html>"

    def part(content_type: str, data: bytes) -> bytes:
        return (b"--b1\r\nContent-Type: " + content_type.encode() + b"; charset=UTF-8\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n"
                + base64.encodebytes(data).replace(b"\n", CRLF))

    return (HEADER + b"Subject: =?UTF-8?B?UXVhcnRlcmx5IHJlcG9ydCDigJQgZmluYWw=?=\r\n"
            b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
            + part("text/plain", text) + part("text/html", html) + b"--b1--\r\n")


def qp_latin1() -> bytes:
    text = ("Très chère Amélie, voilà le résumé de la réunion de ce matin à Genève. " * 40)
    body = quopri.encodestring(_lines(text).encode("latin-1")).replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    return (HEADER + b"Subject: =?ISO-8859-1?Q?R=E9sum=E9_de_la_r=E9union?=\r\n"
            b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body + CRLF)


def undeclared_koi8r() -> bytes:
    """No charset parameter and 8-bit bytes: the one case that pays for cchardet."""
    text = "Съешь же ещё этих мягких французских булок, да выпей чаю. " * 60
    return (HEADER + b"Subject: report\r\nContent-Type: text/plain\r\n\r\n"
            + _lines(text)[:3800].encode("koi8_r") + CRLF)


# --- hostile shapes (the list) -------------------------------------

def to_50000_addresses() -> bytes:
    addresses = b",\r\n ".join(b"user%d@example.com" % n for n in range(50_000))
    return HEADER + b"To: " + addresses + b"\r\nSubject: many\r\n\r\nhello\r\n"


def nested_300_deep() -> bytes:
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=\"n%d\"\r\n\r\n--n%d\r\n" % (n, n)
                       for n in range(300))
    closing = b"".join(b"\r\n--n%d--" % n for n in reversed(range(300)))
    return (HEADER + b"Subject: deep\r\n" + opening + b"Content-Type: text/plain\r\n\r\ninnermost"
            + closing + CRLF)


def parts_10000() -> bytes:
    part = b"--p\r\nContent-Type: text/plain\r\n\r\npart\r\n"
    return (HEADER + b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n"
            + part * 10_000 + b"--p--\r\n")


def header_line_600kb() -> bytes:
    return HEADER + b"Subject: " + b"x" * 600_000 + b"\r\n\r\nbody\r\n"


def from_parens_20000() -> bytes:
    return b"From: " + b"(" * 20_000 + b"\r\nSubject: parens\r\n\r\nbody\r\n"


def subject_20000_encoded_words() -> bytes:
    """Each word in a charset of its own, none of them known: one lookup each, not a retry
    of the whole header per word."""
    words = b" ".join(b"=?x-charset-%d?q?w%d?=" % (n, n) for n in range(20_000))
    return HEADER + b"Subject: " + words + b"\r\n\r\nbody\r\n"


TYPICAL = {
    "plain UTF-8 4 KB": plain_utf8,
    "multipart/alternative base64 4 KB": alternative_base64,
    "quoted-printable latin-1": qp_latin1,
    "no charset, KOI8-R 4 KB (cchardet)": undeclared_koi8r,
}
PATHOLOGICAL = {
    "To: with 50,000 addresses": to_50000_addresses,
    "MIME nested 300 deep": nested_300_deep,
    "10,000 parts": parts_10000,
    "600 KB header line": header_line_600kb,
    "From: (((( 20,000 deep": from_parens_20000,
    "Subject: 20,000 encoded words": subject_20000_encoded_words,
}


def cpu_us_per_parse(message: bytes, seconds: float) -> tuple[float, int]:
    iterations = 0
    started = time.process_time()
    elapsed = 0.0
    while elapsed < seconds:
        for _ in range(10):
            parse(message)
        iterations += 10
        elapsed = time.process_time() - started
    return elapsed / iterations * 1e6, iterations


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--seconds", type=float, default=0.5, help="CPU time per case")
    options = arguments.parse_args()
    for name, build in {**TYPICAL, **PATHOLOGICAL}.items():
        message = build()
        micros, iterations = cpu_us_per_parse(message, options.seconds)
        print(f"{name:38} {len(message):>9,} B {micros:>10.1f} us/msg  ({iterations} runs)")


if __name__ == "__main__":
    main()
