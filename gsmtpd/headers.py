"""Header fields on raw bytes: find, unfold, decode (RFC 5322, 2047, 2231, 6532).

Only the handful of fields gsmtpd stores or needs to walk MIME are ever
looked at; everything else in a header block is skipped by one regex scan
in C.  Each value is capped before any Python-level work, so a 600 KB
header line or a To: with 50,000 addresses costs a memchr, not a parse.
"""

from __future__ import annotations

import binascii
import re

from gsmtpd import charsets

# A value longer than this is cut before unfolding or decoding.  8 KiB holds
# a 255-character subject even as 4-byte characters in B encoded words.
MAX_VALUE = 8 * 1024
# The From: value is scanned token by token; no real From: is this long.
MAX_FROM = 2 * 1024
MAX_ENCODED_WORDS = 300
MAX_PARAMS = 64

# The fields an entity inside a multipart can usefully carry.
MIME_FIELDS = (b"content-type", b"content-transfer-encoding", b"content-disposition")
# The top-level header adds the ones gsmtpd stores.
MESSAGE_FIELDS = (b"subject", b"from", b"message-id") + MIME_FIELDS


def _any_case(name: bytes) -> bytes:
    """b"from" -> rb"[fF][rR][oO][mM]".

    Spelled out instead of re.IGNORECASE: with IGNORECASE the regex engine
    tries every byte; with a literal "\n" in front it jumps from line to
    line, twice as fast on a megabyte of To: addresses.
    """
    return b"".join(b"[%c%c]" % (c, c - 32) if 97 <= c <= 122 else re.escape(bytes([c])) for c in name)


# RFC 5322 2.2: a header line is a field (a name of printable ASCII but ":", then ":";
# RFC 5322 4.5.3 allows white space before the colon) or, starting with white space,
# a continuation.  8-bit bytes are let into the name too: a mailer's broken field
# must not turn the fields after it into body text.  Possessive, so a long line
# without a colon costs one pass.
_FIELD_NAME = rb"[!-9;-~\x80-\xff]++[ \t]*+:"


def _field_pattern(names: tuple[bytes, ...]) -> tuple[re.Pattern, re.Pattern]:
    # RFC 5322 2.2: a field starts a line; names are case-insensitive;
    # RFC 5322 4.5.3 (obsolete syntax) allows white space before the colon.
    # RFC 5322 2.1: the first empty line ends the header.  Bare LF is
    # accepted, as every mail reader does.  So does a line that is no header
    # line at all: the header ran into the body without its empty line, and
    # that line starts the body (as Python's email parser and MUAs read it).
    # A continuation line is passed over at its first byte (the lookahead), as
    # cheaply as before this rule: the To: of 50,000 addresses is such lines.
    field = rb"(" + b"|".join(_any_case(name) for name in names) + rb")[ \t]*:"
    return re.compile(field), re.compile(rb"\n(?![\t ])(?:" + field + rb"|(\r?\n)|(?!" + _FIELD_NAME + rb"))")


_IS_HEADER_LINE = re.compile(rb"[\t ]|" + _FIELD_NAME)


_PATTERNS = {names: _field_pattern(names) for names in (MIME_FIELDS, MESSAGE_FIELDS)}


def read(raw: bytes, start: int, end: int, names: tuple[bytes, ...],
         limit: int) -> tuple[dict[bytes, bytes], int]:
    """The first occurrence of each named field of the entity raw[start:end],
    unfolded, and where its body starts.

    One regex pass finds both the fields and the end of the header (the empty
    line, or the first line that is not a header line), jumping from line start
    to line start.  A header longer than `limit` is searched no further for
    fields; its end is still found (the empty line).
    """
    if raw.startswith(b"\r\n", start):
        return {}, start + 2
    if raw.startswith(b"\n", start):
        return {}, start + 1
    first_line, field_start = _PATTERNS[names]
    found: dict[bytes, bytes] = {}
    match = first_line.match(raw, start, end)
    if match:
        found[match.group(1).lower()] = _unfolded_value(raw, match.end(), end)
    elif not _IS_HEADER_LINE.match(raw, start, end):
        return found, start         # no header at all: the body starts at once
    scan_end = min(end, start + limit)
    for match in field_start.finditer(raw, start, scan_end):
        if match.group(1) is None:   # the empty line, or a line no header line
            return found, match.end()
        name = match.group(1).lower()
        if name not in found:
            found[name] = _unfolded_value(raw, match.end(), end)
    return found, _body_start_past(raw, scan_end, end)


def _body_start_past(raw: bytes, position: int, end: int) -> int:
    if position >= end:
        return end
    blank = raw.find(b"\n\r\n", position - 1, end)
    return end if blank == -1 else blank + 3


def _unfolded_value(raw: bytes, start: int, end: int) -> bytes:
    """RFC 5322 2.2.3: a field continues on lines starting with SP or HTAB."""
    line_end = raw.find(b"\n", start, end)
    while line_end != -1 and line_end + 1 < end and raw[line_end + 1] in b" \t":
        if line_end - start > MAX_VALUE:
            break
        line_end = raw.find(b"\n", line_end + 1, end)
    if line_end == -1:
        line_end = end
    value = raw[start:min(line_end, start + MAX_VALUE)]
    # Unfolding removes the CRLF only, keeping the white space after it.
    return value.replace(b"\r", b"").replace(b"\n", b"").strip()


# --- raw bytes -> str (RFC 6532 and legacy 8-bit) --------------------------

def text(value: bytes, hints: tuple[str | None, ...] = ()) -> str:
    """A header value as str, before RFC 2047 decoding.

    RFC 6532 3.2 allows raw UTF-8 in headers.  Raw bytes that are not UTF-8
    are a legacy mailer's own charset: the message's declared charsets are
    the best guess, then cchardet.
    """
    if value.isascii():
        return value.decode("ascii")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        pass
    for hint in hints:
        canonical = charsets.normalize(hint)
        if canonical and canonical not in charsets.NOT_ASCII_COMPATIBLE and canonical != "utf-8":
            decoded = charsets.decode_strict(value, canonical)
            if decoded is not None:
                return decoded
    return charsets.decode(value, None)[0]


# --- RFC 2047 encoded words ------------------------------------------------

# RFC 2047 2: =?charset?encoding?encoded-text?= ; the charset may carry an
# RFC 2231 5 language suffix (*en).  Real mail puts spaces inside Q words,
# so encoded-text is anything printable but '?'.
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
_ONLY_SPACE = re.compile(r"[ \t\r\n]*\Z")


def _word_bytes(encoding: str, payload: str) -> bytes | None:
    """The octets of one encoded word, or None if it is malformed."""
    if not payload.isascii():
        return None
    data = payload.encode("ascii")
    if encoding in "qQ":
        # RFC 2047 4.2: '_' is space, =XX is an octet.
        return binascii.a2b_qp(data, header=True)
    return b64decode_lenient(data, strict=True)


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(set(range(256)) - set(_BASE64_ALPHABET + b"="))


def b64decode_lenient(data: bytes, strict: bool = False) -> bytes | None:
    """Base64 with line noise, missing or misplaced padding (RFC 2045 6.8).

    RFC 2045 6.8: characters outside the alphabet are ignored (one
    bytes.translate, C speed even on megabytes).  Missing padding is
    restored; a '=' in the middle (concatenated encodings) splits chunks.
    strict=True is for encoded words: junk or inner padding makes the word
    malformed (None), so it is shown as written.
    """
    if not strict and b"=" not in data.rstrip(b"= \t\r\n"):
        try:  # the common case: binascii already skips line breaks
            return binascii.a2b_base64(data)
        except binascii.Error:
            pass  # missing padding
    clean = data.translate(None, _NOT_BASE64)
    if strict and len(clean) != len(data):
        return None
    body = clean.rstrip(b"=")
    if b"=" not in body:
        return _b64_chunk(body)
    if strict:
        return None
    return b"".join(_b64_chunk(chunk) or b"" for chunk in body.split(b"=") if chunk)


def _b64_chunk(chunk: bytes) -> bytes | None:
    remainder = len(chunk) % 4
    if remainder == 1:  # a lone sextet carries no whole octet
        chunk = chunk[:-1]
    elif remainder:
        chunk += b"=" * (4 - remainder)
    try:
        return binascii.a2b_base64(chunk)
    except binascii.Error:
        return None


def decode_words(value: str, limit: int = MAX_VALUE) -> str:
    """Decode RFC 2047 encoded words; malformed ones stay as they are.

    RFC 2047 6.2: white space between two adjacent encoded words is
    dropped.  Adjacent words in one charset are decoded together, because
    senders split a multibyte character across two words (forbidden by
    RFC 2047 5 (3), common in practice).  Stops once `limit` characters
    are out, so a huge subject costs only what is kept.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    produced = 0
    pending: list[bytes] = []  # octets of adjacent words in one charset
    pending_charset = None
    position = 0
    for count, match in enumerate(_ENCODED_WORD.finditer(value)):
        octets = _word_bytes(match.group(2), match.group(3))
        if octets is None or count >= MAX_ENCODED_WORDS:
            continue  # left in the gap text: shown as written
        gap = value[position:match.start()]
        adjacent = position > 0 and bool(_ONLY_SPACE.match(gap))
        charset = match.group(1).lower()
        if pending and not (adjacent and charset == pending_charset):
            produced += _flush(out, pending, pending_charset)
        if not adjacent:
            out.append(gap)
            produced += len(gap)
        pending.append(octets)
        pending_charset = charset
        position = match.end()
        if produced > limit:
            break
    if pending:
        produced += _flush(out, pending, pending_charset)
    if produced <= limit:
        out.append(value[position:])
    return "".join(out)


def _flush(out: list[str], pending: list[bytes], charset: str | None) -> int:
    decoded = charsets.decode(b"".join(pending), charset)[0]
    pending.clear()
    out.append(decoded)
    return len(decoded)


# --- parameters (RFC 2045 5.1, RFC 2231) ----------------------------------

_PARAM = re.compile(
    r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_SECTION = re.compile(r"^(.*?)\*(\d+)(\*?)$")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def content_type(value: str) -> tuple[str, dict[str, str]]:
    """'Text/HTML; charset="UTF-8"' -> ('text/html', {'charset': 'UTF-8'})."""
    head, _, rest = value.partition(";")
    return head.strip().lower(), params(";" + rest) if rest else {}


def params(value: str) -> dict[str, str]:
    """Parameters, with RFC 2231 3 continuations and 4 charset/percent encoding."""
    simple: dict[str, str] = {}
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for count, match in enumerate(_PARAM.finditer(value)):
        if count >= MAX_PARAMS:
            break
        name, raw_value = match.group(1).lower(), match.group(2).strip()
        if raw_value.startswith('"'):
            raw_value = _QUOTED_PAIR.sub(r"\1", raw_value[1:].removesuffix('"'))
        section = _SECTION.match(name)
        if section:
            base, number, encoded = section.groups()
            sections.setdefault(base, []).append((int(number), bool(encoded), raw_value))
        elif name.endswith("*"):
            simple.setdefault(name[:-1], _rfc2231_value(raw_value))
        else:
            simple.setdefault(name, raw_value)
    for base, parts in sections.items():
        simple.setdefault(base, _joined_sections(parts))
    return simple


def _joined_sections(parts: list[tuple[int, bool, str]]) -> str:
    """RFC 2231 3: name*0, name*1* ... joined in order; only *0* names the charset."""
    parts.sort(key=lambda part: part[0])
    charset = None
    octets = []
    for number, encoded, piece in parts[:MAX_PARAMS]:
        if encoded and number == 0:
            charset, _, piece = _split_charset(piece)
        octets.append(_unpercent(piece) if encoded else piece.encode("utf-8", "replace"))
    return charsets.decode(b"".join(octets), charset)[0]


def _rfc2231_value(value: str) -> str:
    charset, _, encoded = _split_charset(value)
    return charsets.decode(_unpercent(encoded), charset)[0]


def _split_charset(value: str) -> tuple[str | None, str, str]:
    """RFC 2231 4: charset'language'percent-encoded-text."""
    pieces = value.split("'", 2)
    if len(pieces) != 3:
        return None, "", value
    return pieces[0] or None, pieces[1], pieces[2]


def _unpercent(text: str) -> bytes:
    return _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1", "replace")


# --- the From: address (RFC 5322 3.4) --------------------------------------

# Tokens outside a comment: quoted string, quoted pair, a run of '(' that
# opens comments, specials, and everything else.  Inside a comment only
# parentheses and quoted pairs matter (RFC 5322 3.2.2).
_OUTSIDE = re.compile(r'"(?:[^"\\]|\\.)*"?|\\.|\(+|[<>,:;@]|[^"\\(<>,:;@]+', re.S)
_INSIDE = re.compile(r"\(+|\)|\\.|[^()\\]+", re.S)
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 (256 with the angle brackets)


# The usual From: values, "a@b.org", "<a@b.org>" and "Name <a@b.org>": no quotes,
# comments, groups or lists, so the tokenizer below would find exactly this address.
_PLAIN_ATOMS = r'[^\s"\\()<>,:;@\[\]]+'
_SIMPLE_FROM = re.compile(rf'\s*(?:[^"\\()<>,:;@\[\]]*<)?({_PLAIN_ATOMS}@{_PLAIN_ATOMS})>?\s*\Z')


def address(value: str) -> str:
    """The first mailbox's addr-spec in a From: value, lower-cased, or ''."""
    if len(value) <= MAX_FROM:
        simple = _SIMPLE_FROM.match(value)
        if simple:
            return _checked(simple.group(1))
    found = _first_addr_spec(value[:MAX_FROM])
    if not found and "=?" in value:
        # Some mailers encode the whole "Name <addr>" as one encoded word.
        found = _first_addr_spec(decode_words(value[:MAX_FROM]))
    return found


def _tokens_outside_comments(value: str):
    depth = 0
    position = 0
    while position < len(value):
        pattern = _INSIDE if depth else _OUTSIDE
        match = pattern.match(value, position)
        if match is None:  # cannot happen: the patterns cover every character
            return
        token = match.group()
        position = match.end()
        if token[0] == "(":
            depth += len(token)
        elif depth:
            if token == ")":
                depth -= 1
        else:
            yield token


def _first_addr_spec(value: str) -> str:
    """Walk tokens: the first <angle-addr>, else the first bare addr-spec."""
    words: list[str] = []
    angle: list[str] | None = None
    for token in _tokens_outside_comments(value):
        if angle is not None:
            if token == ">":
                found = _angle_spec(angle)
                if found:
                    return found
                angle = None
            else:
                angle.append(token)
        elif token == "<":
            angle = []
            words = []
        elif token in (",", ";"):
            found = _bare_spec(words)
            if found:
                return found
            words = []
        elif token == ":":
            words = []  # RFC 5322 3.4: a group's display name
        else:
            words.append(token)
    if angle:  # an unterminated "<addr" is still meant as an address
        return _angle_spec(angle)
    return _bare_spec(words)


def _angle_spec(tokens: list[str]) -> str:
    """Inside <...>: white space outside quoted strings is folding, not content."""
    spec = "".join(token if token[0] == '"' else "".join(token.split()) for token in tokens)
    if spec.startswith("@") and ":" in spec:
        spec = spec.split(":", 1)[1]  # RFC 5322 4.4: obs-route "@relay:"
    return _checked(spec)


def _bare_spec(tokens: list[str]) -> str:
    """No angle brackets: the words touching the first '@' ("John j@x.org" too)."""
    try:
        at = tokens.index("@")
    except ValueError:
        return ""
    before = tokens[at - 1] if at else ""
    after = tokens[at + 1].split() if at + 1 < len(tokens) else []
    local = before if before.startswith('"') else (before.split() or [""])[-1]
    if before[-1:].isspace() or not after or tokens[at + 1][:1].isspace():
        return ""
    return _checked(local + "@" + after[0])


def _checked(spec: str) -> str:
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or len(spec) > MAX_ADDRESS:
        return ""
    return spec.lower()
