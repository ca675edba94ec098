"""gsmtpd.mime: real-world-shaped messages -> the fields a user would see stored.

The corpus (tests/mime_corpus/NAME.eml + expected.json) is bytes as on the
wire; tests/mime_corpus/generate.py wrote it, with the expectations typed
by hand.  Hostile shapes come from bench/bench_mime.py, so the benchmark
and these tests exercise the same inputs.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gsmtpd import charsets, headers, mime
from gsmtpd.mime import Parsed, parse

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "mime_corpus"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
EXACT_FIELDS = ("subject", "from_addr", "body", "charset", "content_type", "has_attach", "message_id")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_mime", ROOT / "bench" / "bench_mime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()


def assert_storable(parsed: Parsed) -> None:
    """What MySQL utf8mb4 accepts: valid UTF-8, no NUL; and the column limits."""
    for name in ("subject", "from_addr", "body", "charset", "content_type", "message_id"):
        value = getattr(parsed, name)
        assert isinstance(value, str), name
        value.encode("utf-8")  # raises on a lone surrogate
        assert "\x00" not in value, name
    assert len(parsed.subject) <= 255
    assert len(parsed.message_id) <= 255
    assert isinstance(parsed.has_attach, int) and parsed.has_attach >= 0
    assert parsed.charset == parsed.charset.lower() and parsed.charset
    assert parsed.content_type == parsed.content_type.lower() and "/" in parsed.content_type


# --- the corpus ----------------------------------------------------------------

def test_corpus_is_large_enough():
    charset_names = {expected["charset"] for expected in EXPECTED.values() if "charset" in expected}
    assert len(charset_names) >= 40, sorted(charset_names)
    for name in EXPECTED:
        assert b"\n" not in (CORPUS / f"{name}.eml").read_bytes().replace(b"\r\n", b"") or name.startswith("bare_lf")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_message(name):
    expected = dict(EXPECTED[name])
    prefer = expected.pop("prefer", "html")
    parsed = parse((CORPUS / f"{name}.eml").read_bytes(), prefer)
    assert_storable(parsed)
    for field in EXACT_FIELDS:
        if field in expected:
            assert getattr(parsed, field) == expected[field], field
    for piece in expected.get("body_contains", []):
        assert piece in parsed.body


def crlf_only(raw: bytes) -> bool:
    line_ends = bytes(b for b in raw if b in (10, 13))
    return line_ends == b"\r\n" * (len(line_ends) // 2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_crlf_only_shortcut_gives_the_same_fields(name):
    """The server tells parse() when every CR and LF is part of a CRLF; the body's line
    ends are then dropped a quicker way, which must change nothing."""
    raw = (CORPUS / f"{name}.eml").read_bytes()
    if crlf_only(raw):
        assert_same_fields_and_a_true_slice(raw)


def assert_same_fields_and_a_true_slice(raw: bytes) -> None:
    """parse() with crlf_only gives the fields it gives without, and may say more: where a
    body starts that is the rest of the message without its CRs (body_from, which row.py
    stores in place of the text and the database turns back into it)."""
    shortcut, plain = parse(raw, crlf_only=True), parse(raw)
    assert plain.body_from == -1
    assert dataclasses.replace(shortcut, body_from=-1) == plain
    if shortcut.body_from >= 0:
        assert raw[shortcut.body_from:].replace(b"\r", b"").decode("utf-8") == shortcut.body


def encoded_body(content: bytes, encoding: str) -> bytes:
    """``content`` (any bytes, lone CRs and LFs too) as a CRLF-lined body in ``encoding``."""
    if encoding == "base64":
        return base64.encodebytes(content).replace(b"\n", b"\r\n")
    if encoding == "quoted-printable":
        return binascii.b2a_qp(content, istext=False).replace(b"\n", b"\r\n") + b"\r\n"
    return content.replace(b"\r", b"").replace(b"\n", b"\r\n") + b"\r\n"


@given(st.sampled_from(["us-ascii", "utf-8", "iso-8859-1", "windows-1252", "utf-16", "koi8-r", "utf-7", None]),
       st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]),
       st.lists(st.sampled_from([b"a", b"\xe9", b"\r", b"\n", b"\r\n", b"\x00", b"+AA0-", b" "]), max_size=20)
       .map(b"".join))
def test_the_crlf_only_shortcut_on_any_body(charset, encoding, content):
    label = f"; charset={charset}" if charset else ""
    raw = (f"Subject: x\r\nContent-Type: text/plain{label}\r\n"
           f"Content-Transfer-Encoding: {encoding}\r\n\r\n").encode() + encoded_body(content, encoding)
    assert crlf_only(raw)
    assert_same_fields_and_a_true_slice(raw)


def test_corpus_with_bare_lf_everywhere_gives_the_same_fields():
    """Mail readers accept bare LF; so does parse, for every message of the corpus."""
    differ = [name for name in sorted(EXPECTED)
              if parse((CORPUS / f"{name}.eml").read_bytes().replace(b"\r\n", b"\n"))
              != parse((CORPUS / f"{name}.eml").read_bytes())]
    assert differ == []


# --- hostile input -------------------------------------------------------------

# What each hostile message of bench/bench_mime.py must give, field by field. How fast it
# is given is that benchmark's business (python bench/bench_mime.py), not a test's.
PATHOLOGICAL_FIELDS = {
    "To: with 50,000 addresses": ("ann@example.org", "many", "hello\n", "text/plain"),
    "MIME nested 300 deep": ("ann@example.org", "deep", "", "multipart/mixed"),
    "10,000 parts": ("ann@example.org", "parts", "part", "text/plain"),
    "600 KB header line": ("ann@example.org", "x" * 255, "body\n", "text/plain"),
    "From: (((( 20,000 deep": ("", "parens", "body\n", "text/plain"),
    "Subject: 20,000 encoded words": ("ann@example.org", "".join(f"w{n}" for n in range(20_000))[:255],
                                      "body\n", "text/plain"),
}


def test_every_hostile_message_of_the_benchmark_is_tested():
    assert sorted(PATHOLOGICAL_FIELDS) == sorted(BENCH.PATHOLOGICAL)


@pytest.mark.parametrize("name", sorted(BENCH.PATHOLOGICAL))
def test_pathological_message_gives_sane_fields(name):
    parsed = parse(BENCH.PATHOLOGICAL[name]())
    assert_storable(parsed)
    assert (parsed.from_addr, parsed.subject, parsed.body, parsed.content_type) == PATHOLOGICAL_FIELDS[name]


def test_parts_past_the_cap_still_give_the_first_body():
    parsed = parse(BENCH.parts_10000())
    assert (parsed.body, parsed.content_type) == ("part", "text/plain")


def test_deep_nesting_within_the_cap_finds_the_body():
    parsed = parse(BENCH.nested_300_deep().replace(b"n30\"", b"none\""))  # cut the chain at depth 30
    assert parsed.subject == "deep"


def test_huge_subject_is_cut_to_255():
    assert parse(BENCH.header_line_600kb()).subject == "x" * 255


def test_bytes_like_input_is_accepted():
    assert parse(bytearray(b"Subject: hi\r\n\r\nbody")).subject == "hi"
    assert parse(memoryview(b"Subject: hi\r\n\r\nbody")).subject == "hi"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_give_storable_fields(raw):
    # The inner parser, so a bug shows here instead of hiding in parse()'s
    # last-resort except.
    assert_storable(mime._parse(raw, "text/html"))


_CORPUS_BYTES = [(CORPUS / f"{name}.eml").read_bytes() for name in sorted(EXPECTED)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_CORPUS_BYTES), st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=8)),
                                                max_size=6), st.integers(0, 10**6), st.sampled_from(["html", "plain"]))
def test_mangled_real_messages_give_storable_fields(raw, edits, cut, prefer):
    """Real structure with random damage reaches the deep paths random bytes never do."""
    data = bytearray(raw)
    for position, insert in edits:
        position %= len(data) + 1
        data[position:position + len(insert)] = insert
    assert_storable(mime._parse(bytes(data[:cut % (len(data) + 1)]), f"text/{prefer}"))


# --- the pieces ------------------------------------------------------------------

@pytest.mark.parametrize("label, canonical", [
    ("UTF-8", "utf-8"), ('"utf8"', "utf-8"), ("ks_c_5601-1987", "ks_c_5601-1987"), ("euc-kr", "euc-kr"), ("x-euc-kr", "euc-kr"), ("iso-8859-8-i", "iso-8859-8-i"),
    ("x-mac-cyrillic", "x-mac-cyrillic"), ("unicode-1-1-utf-7", "utf-7"), ("gb2312", "gbk"),
    ("windows-874", "windows-874"), ("us-ascii (Plain text)", "us-ascii"), ("unknown-8bit", ""),
    ("x-no-such", None), ("base64", None), ("zlib", None), ("rot13", None), ("latin10", "iso-8859-16"), ("cp1125", "cp1125"),
    ("utf-8*en", "utf-8"), ("", ""), ("UHC", "ks_c_5601-1987"), ("MAC-CYRILLIC", "x-mac-cyrillic"),
])
def test_charset_labels(label, canonical):
    assert charsets.normalize(label) == canonical


def test_every_table_label_names_a_working_codec():
    for label, canonical in charsets._LABELS.items():
        if canonical and canonical not in charsets.NOT_ASCII_COMPATIBLE:
            text, _ = charsets.decode(b"abc \xe9\xa4 def", label)
            assert "abc" in text, label


def test_clean_removes_nul_and_lone_surrogates():
    assert charsets.clean("a\x00b\ud800c😀") == "ab\ufffdc😀"


@pytest.mark.parametrize("value, decoded", [
    ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
    ("=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),
    ("=?iso-8859-1?q?caf=E9?= =?utf-8?q?_caf=C3=A9?=", "café café"),
    ("=?utf-8?b?w6k?=", "é"),  # missing padding
    ("plain =?utf-8?q?unterminated", "plain =?utf-8?q?unterminated"),
])
def test_encoded_words(value, decoded):
    assert headers.decode_words(value) == decoded


@pytest.mark.parametrize("value, expected", [
    ('; name="a \\"q\\" b"', {"name": 'a "q" b'}),
    ("; filename*=iso-8859-1'fr'caf%E9.txt", {"filename": "café.txt"}),
    ("; title*0*=us-ascii'en'This%20is; title*1*=%20fun; title*2=\" really\"", {"title": "This is fun really"}),
    ("; CHARSET=UTF-8", {"charset": "UTF-8"}),
])
def test_rfc2231_parameters(value, expected):
    assert headers.params(value) == expected


_FROM_PIECES = st.sampled_from(["a", "Bo", "x.org", "é", "-", "+", "=?utf-8?q?A?=", ".", "@", "<", ">",
                                " ", "\t", '"', "(", ")", ",", ";", ":", "\\", "[", "]"])


@given(st.lists(_FROM_PIECES, max_size=12).map("".join))
def test_the_quick_from_path_finds_what_the_tokenizer_finds(value):
    """headers.address() takes plain "a@b", "<a@b>" and "Name <a@b>" by one regex; on every
    input it must answer what the full RFC 5322 tokenizer answers."""
    full = headers._first_addr_spec(value)
    if not full and "=?" in value:
        full = headers._first_addr_spec(headers.decode_words(value))
    assert headers.address(value) == full
