"""A received message -> the fields gsmtpd stores (subject, from, body ...).

Why not the stdlib email package: its modern policy took over 10 s of CPU
on a To: with 50,000 addresses and recursed to death on MIME nested 300
deep, and even compat32 costs ~1 ms for a small message.  The server is one
gevent thread, so every millisecond here stalls every other session.

So this is a lean parser on bytes, built from three moves:

1. split an entity's header from its body at the first empty line, and
   pick out only the fields we need (headers.py);
2. split multipart bodies at their boundaries with bytes.find on the
   original buffer (offsets, no copies), iteratively, under caps;
3. decode only the one body part that is shown (charsets.py).

parse() never raises: malformed input gives best-effort fields, and a failure of the
parser itself gives the raw message as the body (logged, with the traceback once per place).
"""

from __future__ import annotations

import binascii
import logging
import re
import traceback
from dataclasses import dataclass, field

from gsmtpd import charsets, headers, row

log = logging.getLogger("gsmtpd.mime")

# Caps on hostile structure.  Past a cap the rest of the message is not
# walked and the fields come from what was seen.
MAX_DEPTH = 32          # nested multiparts / message/rfc822
MAX_PARTS = 128         # entities of all kinds in one message
MAX_BOUNDARY_SCANS = 1024  # boundary candidates examined (matches or not)
MAX_HEADER = 2 * 1024 * 1024  # header bytes searched for fields (~2 ms per MB)
MAX_SUBJECT = row.width("subject")          # the widths of their columns (row.py)
MAX_MESSAGE_ID = row.width("message_id")
BOUNDARY_GUESS_WINDOW = 8 * 1024


@dataclass(slots=True)
class Parsed:
    subject: str       # Subject, RFC 2047 decoded, at most 255 characters
    from_addr: str     # the first address in From:, lower-cased ('' if none)
    body: str          # text of the chosen part, newlines as '\n'
    charset: str       # charset the body was decoded from, lower-case
    content_type: str  # content type of the chosen part, lower-case
    has_attach: int    # number of real attachments
    message_id: str    # Message-ID value, stripped, at most 255 characters
    # Where in the raw message a body starts that is exactly the rest of it, decoded as
    # UTF-8, with its CRs dropped (row.py stores such a body as a slice of `mail`); -1: none.
    body_from: int = -1


@dataclass(slots=True)
class _Entity:
    """One MIME entity, as offsets into the raw message (RFC 2045 2.4)."""
    body_start: int
    body_end: int
    content_type: str
    params: dict[str, str]
    encoding: str
    attachment: bool
    inside_attachment: bool  # part of an attached message/rfc822
    fields: dict[bytes, bytes]
    children: list[_Entity] = field(default_factory=list)


_DISPLAYABLE = frozenset({"text/plain", "text/html"})
# RFC 2045 6.1: 7bit, 8bit and binary are identity encodings; an unknown
# value is treated the same (the rule; RFC 2045 6.4 would call the
# part application/octet-stream, which would lose the text).
_BASE64 = "base64"
_QUOTED_PRINTABLE = "quoted-printable"


# What bad bytes can make the decoding steps raise (a codec: UnicodeError, LookupError;
# binascii.Error and int(): ValueError). The corpus and the fuzz tests (tests/test_mime.py,
# which call _parse without this net; 30,000 mangled corpus messages with swapped charset
# labels and transfer encodings, every codec label in encoded words) raised none of them:
# anything else is a bug, and its traceback is logged (once per place it was raised from).
_MALFORMED = (ValueError, LookupError)
_reported: set[tuple] = set()


def parse(raw: bytes, prefer: str = "html", crlf_only: bool = False) -> Parsed:
    """The stored fields of one message as received (CRLF lines).  Never raises: if the
    parser fails, the body is the raw message as text, so the row stays readable.
    ``crlf_only`` says every CR and LF in ``raw`` is part of a CRLF (the server checked)."""
    raw = bytes(raw)
    try:
        return _parse(raw, "text/plain" if prefer == "plain" else "text/html", crlf_only)
    except _MALFORMED as exc:
        # repr, cut: the text may quote the message's bytes (CR, LF, megabytes).
        log.warning("MIME parsing failed (%s: %.200r); the body is the raw message", type(exc).__name__, str(exc))
    except Exception as exc:  # a bug must cost one message's fields, not the session: said loudly
        where = traceback.extract_tb(exc.__traceback__)[-1]
        place = (type(exc), where.filename, where.lineno)
        if place in _reported:
            log.error("MIME parser bug (%s at %s:%d, traceback logged before); the body is the raw message",
                      type(exc).__name__, where.filename, where.lineno)
        else:
            _reported.add(place)
            log.exception("MIME parser bug; the body is the raw message")
    return _raw_fields(raw)


def _raw_fields(raw: bytes) -> Parsed:
    """The fields of a message the parser failed on: the whole message, as UTF-8 text."""
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    return Parsed("", "", charsets.clean(text), "utf-8", "text/plain", 0, "")


def _parse(raw: bytes, preferred: str, crlf_only: bool = False) -> Parsed:
    root, entities = _walk(raw)
    chosen = _choose(raw, root, preferred)
    body, charset, body_from = _body_text(raw, chosen, crlf_only) if chosen else ("", "us-ascii", -1)
    hints = (root.params.get("charset"), charset)
    return Parsed(
        subject=_subject(root.fields.get(b"subject"), hints),
        from_addr=_from_address(root.fields.get(b"from"), hints),
        body=body,
        charset=charset,
        content_type=(chosen or root).content_type,
        has_attach=sum(1 for entity in entities if entity.attachment and not entity.inside_attachment),
        message_id=_message_id(root.fields.get(b"message-id")),
        body_from=body_from,
    )


# --- walking the structure -------------------------------------------------

class _Budget:
    """Work left for one message; shared by every level of the walk."""
    __slots__ = ("parts", "scans")

    def __init__(self) -> None:
        self.parts = MAX_PARTS
        self.scans = MAX_BOUNDARY_SCANS


def _walk(raw: bytes) -> tuple[_Entity, list[_Entity]]:
    """The root and every entity under it, walked iteratively (no recursion limit to hit)."""
    budget = _Budget()
    root = _entity(raw, 0, len(raw), "text/plain", False, headers.MESSAGE_FIELDS)
    entities = [root]
    stack = [(root, 0)]
    while stack:
        entity, depth = stack.pop()
        if depth >= MAX_DEPTH or budget.parts <= 0:
            continue
        children = _children(raw, entity, budget)
        entity.children = children
        entities.extend(children)
        # Reversed, so the first child is walked first: when a cap stops
        # the walk, what was seen is the start of the message.
        stack.extend((child, depth + 1) for child in reversed(children))
    return root, entities


def _children(raw: bytes, entity: _Entity, budget: _Budget) -> list[_Entity]:
    main_type = entity.content_type.partition("/")[0]
    inside = entity.inside_attachment or entity.attachment
    if main_type == "multipart":
        # RFC 2046 5.1.5: in a digest, parts are messages unless they say so.
        default = "message/rfc822" if entity.content_type == "multipart/digest" else "text/plain"
        boundary = entity.params.get("boundary") or _guess_boundary(raw, entity)
        if not boundary:
            return []
        spans = _split_multipart(raw, entity.body_start, entity.body_end, boundary.encode("utf-8", "replace"),
                                 budget)
        return [_entity(raw, start, end, default, inside, headers.MIME_FIELDS) for start, end in spans]
    if entity.content_type in ("message/rfc822", "message/global") and entity.encoding not in (
            _BASE64, _QUOTED_PRINTABLE):
        # RFC 2046 5.2.1 (and RFC 6532 3.7 for message/global): the body is
        # a whole message; walk it so a forwarded message is shown.
        budget.parts -= 1
        return [_entity(raw, entity.body_start, entity.body_end, "text/plain", inside, headers.MESSAGE_FIELDS)]
    return []


_DASH_LINE = re.compile(rb"^--([^\r\n]{1,200}?)[ \t]*\r?$", re.M)


def _guess_boundary(raw: bytes, entity: _Entity) -> str:
    """A multipart without a boundary parameter: take the first "--" line."""
    window_end = min(entity.body_end, entity.body_start + BOUNDARY_GUESS_WINDOW)
    match = _DASH_LINE.search(raw, entity.body_start, window_end)
    return match.group(1).decode("latin-1") if match else ""


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes, budget: _Budget) -> list[tuple[int, int]]:
    """Body parts of a multipart as (start, end) offsets; RFC 2046 5.1.1.

    A delimiter is "--" boundary at the start of a line, then optional
    white space ("transport padding") and the line end; "--" after the
    boundary closes the multipart.  The CRLF before a delimiter belongs to
    the delimiter, not to the part.  Preamble and epilogue are dropped.  A
    missing close delimiter ends the last part at the end of the body.
    """
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start = -1
    position = start
    while budget.scans > 0 and budget.parts > 0:
        found = raw.find(delimiter, position, end)
        if found == -1:
            break
        budget.scans -= 1
        position = found + len(delimiter)
        if found != start and raw[found - 1] != 0x0A:
            continue  # not at the start of a line
        if raw[position:position + 1] not in _AFTER_BOUNDARY:
            continue  # a longer boundary that starts with ours
        closing = raw.startswith(b"--", position)
        line_end = raw.find(b"\n", position, end)
        line_end = end if line_end == -1 else line_end
        if not closing and raw[position:line_end].strip():
            continue  # a longer boundary that starts with ours
        if part_start >= 0:
            spans.append((part_start, _before_line_break(raw, part_start, found)))
            budget.parts -= 1
        if closing:
            return spans
        part_start = min(line_end + 1, end)
    if part_start >= 0 and budget.parts > 0:
        spans.append((part_start, end))
        budget.parts -= 1
    return spans


# What may follow a boundary: "--", transport padding, the line end, the end.
_AFTER_BOUNDARY = frozenset((b"-", b" ", b"\t", b"\r", b"\n", b""))


def _before_line_break(raw: bytes, part_start: int, delimiter_at: int) -> int:
    end = delimiter_at
    if end > part_start and raw[end - 1] == 0x0A:
        end -= 1
        if end > part_start and raw[end - 1] == 0x0D:
            end -= 1
    return end


def _entity(raw: bytes, start: int, end: int, default_type: str, inside_attachment: bool,
            wanted: tuple[bytes, ...]) -> _Entity:
    found, body_start = headers.read(raw, start, end, wanted, MAX_HEADER)
    content_type, params = _content_type(found.get(b"content-type"), default_type)
    disposition, disposition_params = _content_type(found.get(b"content-disposition"), "")
    encoding = found.get(b"content-transfer-encoding", b"7bit").decode("latin-1").strip().lower()
    return _Entity(
        body_start=body_start,
        body_end=end,
        content_type=content_type,
        params=params,
        encoding=encoding,
        attachment=_is_attachment(content_type, params, disposition, disposition_params),
        inside_attachment=inside_attachment,
        fields=found,
    )


_TYPE_SHAPE = re.compile(r"[a-z0-9!#$&.+^_-]+/[a-z0-9!#$&.+^_-]+\Z")


def _content_type(value: bytes | None, default: str) -> tuple[str, dict[str, str]]:
    if value is None:
        return default, {}
    content_type, params = headers.content_type(headers.text(value))
    if not _TYPE_SHAPE.match(content_type):
        # RFC 2045 5.2: a missing or unparseable type means text/plain.
        content_type = default or content_type
    return content_type, params


def _is_attachment(content_type: str, params: dict, disposition: str, disposition_params: dict) -> bool:
    """Content-Disposition: attachment (RFC 2183 2.2), or a named non-text part."""
    if disposition == "attachment":
        return True
    main_type = content_type.partition("/")[0]
    if main_type in ("text", "multipart"):
        return False
    return bool(params.get("name") or disposition_params.get("filename"))


# --- choosing the body -----------------------------------------------------

# How good a candidate body is: a shown part with text beats an empty one
# or one from inside an attached message.
_NONE, _WEAK, _GOOD = 0, 1, 2


def _choose(raw: bytes, root: _Entity, preferred: str) -> _Entity | None:
    """The entity whose text is stored, walking the tree bottom-up iteratively."""
    best: dict[int, tuple[int, _Entity | None]] = {}
    order = []
    stack = [root]
    while stack:  # pre-order; reversed, it visits children before parents
        entity = stack.pop()
        order.append(entity)
        stack.extend(entity.children)
    for entity in reversed(order):
        best[id(entity)] = _candidate(raw, entity, [best[id(child)] for child in entity.children], preferred)
    return best[id(root)][1]


def _candidate(raw: bytes, entity: _Entity, children: list[tuple[int, _Entity | None]],
               preferred: str) -> tuple[int, _Entity | None]:
    if not entity.children:
        return _leaf_candidate(raw, entity)
    found = [child for child in children if child[0] != _NONE]
    if not found:
        return _NONE, None
    if entity.content_type == "multipart/alternative":
        # RFC 2046 5.1.4: alternatives are in increasing order of
        # faithfulness; take the last of the preferred type, else the last.
        for quality, leaf in reversed(found):
            if leaf.content_type == preferred:
                return quality, leaf
        return found[-1]
    # multipart/mixed, related, signed, report, digest, message/rfc822:
    # the first displayable part (RFC 2046 5.1.3), a good one if any.
    return max(found, key=lambda child: child[0])


def _leaf_candidate(raw: bytes, entity: _Entity) -> tuple[int, _Entity | None]:
    if entity.content_type not in _DISPLAYABLE or entity.attachment:
        return _NONE, None
    if entity.inside_attachment or not _NOT_SPACE.search(raw, entity.body_start, entity.body_end):
        return _WEAK, entity
    return _GOOD, entity


_NOT_SPACE = re.compile(rb"\S")


# --- decoding the body ------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)


# Charsets whose text has a CR exactly where the bytes have one.
_CR_FOR_CR = frozenset({"us-ascii", "utf-8", "iso-8859-1", "windows-1252"})


def _body_text(raw: bytes, entity: _Entity, crlf_only: bool = False) -> tuple[str, str, int]:
    """(text, charset, body_from): body_from is entity.body_start when the text is exactly
    raw[body_start:] as UTF-8 without its CRs (Parsed.body_from), else -1."""
    data = _transfer_decoded(raw[entity.body_start:entity.body_end], entity.encoding)
    label = entity.params.get("charset")
    if not label and entity.content_type == "text/html":
        # No MIME charset: the HTML's own <meta charset> (HTML5 8.2.2.2).
        meta = _META_CHARSET.search(data, 0, 2048)
        label = meta.group(1).decode("ascii") if meta else None
    # Every CR byte starts a CRLF: the server saw it so in the message, an identity transfer
    # encoding kept it, and the part does not end between a CR and its LF.
    crs_start_crlfs = (crlf_only and entity.encoding not in (_BASE64, _QUOTED_PRINTABLE)
                       and not data.endswith(b"\r"))
    # A slice of the raw message to its end: the same bytes, whatever the charset's name.
    to_the_end = crs_start_crlfs and entity.body_end == len(raw)
    if crs_start_crlfs and data.isascii() and charsets.normalize(label) not in charsets.NOT_ASCII_COMPATIBLE:
        # Most bodies: ASCII, which any ASCII-compatible charset decodes a byte to a
        # character. Dropping the CR bytes before decoding (memchr) is cheaper than the
        # str replace below: smtp-source's 4 KB message was parsed in 125k instructions
        # instead of 143k (callgrind).
        data = data.replace(b"\r", b"")     # the part's slice goes: a 10 MiB body is not held 3 times
        text, charset = charsets.decode(data, label)
        body = charsets.clean(text)
        # ASCII is UTF-8; clean() returns its argument when it drops no NUL.
        return body, charset, entity.body_start if to_the_end and body is text else -1
    text, charset = charsets.decode(data, label)
    # Strict UTF-8, no NUL: charset "utf-8" with no U+FFFD is the bytes decoded without
    # error (a lenient decode marks each error with one).
    exact = to_the_end and charset == "utf-8" and "\x00" not in text and "\ufffd" not in text
    if "\r" in text:
        if crs_start_crlfs and charset in _CR_FOR_CR:
            # A CR in these charsets is a CR byte, so dropping CRs is the replace below, in
            # a quarter of the time (a one-character pattern is searched with memchr).
            text = text.replace("\r", "")
        else:
            text = text.replace("\r\n", "\n")
    return charsets.clean(text), charset, entity.body_start if exact else -1


def _transfer_decoded(data: bytes, encoding: str) -> bytes:
    """RFC 2045 6: undo the Content-Transfer-Encoding."""
    if encoding == _BASE64:
        return headers.b64decode_lenient(data) or b""
    if encoding == _QUOTED_PRINTABLE:
        # RFC 2045 6.7: soft breaks "=" CRLF, =XX in either case; a stray
        # "=" that starts no escape is kept as written.
        return binascii.a2b_qp(data)
    return data


# --- header fields ----------------------------------------------------------

def _subject(value: bytes | None, hints: tuple) -> str:
    if value is None:
        return ""
    text = headers.decode_words(headers.text(value, hints), limit=MAX_SUBJECT)
    # A subject is one line; CR/LF can only come from encoded words (=0D=0A).
    text = _LINE_BREAKS.sub(" ", text)
    return _cut(charsets.clean(text.strip()), MAX_SUBJECT)


_LINE_BREAKS = re.compile(r"[\r\n]+")


def _from_address(value: bytes | None, hints: tuple) -> str:
    if value is None:
        return ""
    return charsets.clean(headers.address(headers.text(value, hints)))


def _message_id(value: bytes | None) -> str:
    if value is None:
        return ""
    return _cut(charsets.clean(headers.text(value).strip()), MAX_MESSAGE_ID)


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters; str slicing never splits a code point."""
    return text[:limit].rstrip() if len(text) > limit else text
