"""Total parsers for what clients put in HELO, MAIL and RCPT.

Each function returns a value or a ``Reply``; none raises on any input, so the dialogue
code never needs a try/except around client data. Grammar: RFC 5321 section 4.1.2, with
RFC 6531 for UTF-8 addresses. Like Postfix (strict_rfc821_envelopes = no) we also take
``MAIL FROM: <a@b>`` with a space and a path without angle brackets.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from . import replies as R

# RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
MAX_PATH = 256
# RFC 5321 4.5.3.1.2: a domain is at most 255 octets.
MAX_DOMAIN = 255
# RFC 1035 2.3.4: a label is at most 63 octets.
MAX_LABEL = 63

# RFC 5321 4.1.2 / RFC 5322 3.2.3: atext, and Dot-string = Atom *("." Atom).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING_TEXT = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_DOT_STRING = re.compile(_DOT_STRING_TEXT + r"\Z")
# RFC 6531 3.3: with SMTPUTF8, atext and sub-domains also take any non-ASCII UTF-8.
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*\Z")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_QUOTED_STRING_UTF8 = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z')
# RFC 5321 4.1.2: sub-domain = Let-dig [Ldh-str]; we allow "_" as real DNS names carry it.
# ASCII labels are one octet a character, so the 63-octet label limit (RFC 1035 2.3.4) is
# in the pattern itself.
_DOMAIN_TEXT = (r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?")
_DOMAIN = re.compile(_DOMAIN_TEXT + r"\Z")
_DOMAIN_UTF8 = re.compile(r"(?:[\w\u0080-\U0010ffff](?:[\w\u0080-\U0010ffff-]*[\w\u0080-\U0010ffff])?\.)*"
                          r"[\w\u0080-\U0010ffff](?:[\w\u0080-\U0010ffff-]*[\w\u0080-\U0010ffff])?\.?\Z")
# RFC 5321 4.1.3: address literals, [1.2.3.4] and [IPv6:...]; the address itself is
# checked by the ipaddress module (no [999.1.1.1], no [IPv6:::::]).
_ADDRESS_LITERAL = re.compile(r"\[(?:(\d{1,3}(?:\.\d{1,3}){3})|IPv6:([0-9A-Fa-f:.]+))\]\Z", re.I)
# RFC 5321 4.1.2: A-d-l = At-domain *( "," At-domain ), then ":"; a hop may be a literal.
_ROUTE_HOP = re.compile(r"@(\[[^\]]*\]|[^,:\[\]]*)([,:])")
# Nearly every MAIL and RCPT is "FROM:<local@domain>" or "TO:<local@domain>", ASCII and
# nothing after it: one match takes those whole. The groups are the grammar above
# (_DOT_STRING, _DOMAIN); everything else goes through the full parser.
_PLAIN_PATH = {
    keyword: re.compile("".join(f"[{c}{c.lower()}]" for c in keyword) +
                        rf":<({_DOT_STRING_TEXT})@({_DOMAIN_TEXT})>\Z")
    for keyword in ("FROM", "TO")
}
# RFC 5321 4.1.2: Esmtp-param = esmtp-keyword ["=" esmtp-value]
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+))?\Z")


@dataclass(frozen=True, slots=True)
class Path:
    address: str                 # exactly as given, without brackets; '' for the null path <>
    local: str
    domain: str                  # '' for the null path and for bare "postmaster"
    params: dict[str, str | None]


def is_ascii(text: str) -> bool:
    return text.isascii()


def valid_domain(domain: str, utf8: bool = False) -> bool:
    # surrogatepass: a lone surrogate (never in decoded UTF-8, but possible in a str) is
    # simply not a valid domain, not a UnicodeEncodeError.
    if not domain or len(domain.encode("utf-8", "surrogatepass")) > MAX_DOMAIN:
        return False
    literal = _ADDRESS_LITERAL.match(domain)
    if literal:
        return _valid_ip(literal.group(1) or literal.group(2), 4 if literal.group(1) else 6)
    if not utf8:
        return bool(_DOMAIN.match(domain))
    if not _DOMAIN_UTF8.match(domain):
        return False
    return all(len(label.encode("utf-8", "surrogatepass")) <= MAX_LABEL for label in domain.split("."))


def _valid_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def parse_helo(argument: str) -> str | None:
    """The HELO/EHLO name, or None when missing or when the line holds a control or
    separator character (a tab, ESC, U+2028...): such a name is refused, never cut at the
    odd character. Like Postfix (smtpd_helo_required, no strict check by default) any
    single word is taken: many real clients send odd names."""
    if not argument.isprintable():      # every control and separator but the ASCII space
        return None
    words = argument.split()
    if not words:
        return None
    return words[0][:255]


def parse_path(argument: str, keyword: str, null_allowed: bool, utf8: bool = False) -> Path | R.Reply:
    """Parse the argument of MAIL ("FROM") or RCPT ("TO"): ``FROM:<a@b> SIZE=10``.
    UTF-8 is allowed in the address when ``utf8`` (the transaction's SMTPUTF8) is true or
    the command itself carries the SMTPUTF8 parameter (RFC 6531 3.4)."""
    plain = _PLAIN_PATH[keyword].match(argument)
    if plain and len(argument) - len(keyword) - 1 <= MAX_PATH:    # "<path>" within the limit
        local, domain = plain.groups()
        return Path(f"{local}@{domain}", local, domain, {})
    syntax = R.MAIL_SYNTAX if keyword == "FROM" else R.RCPT_SYNTAX
    bad = R.BAD_SENDER if keyword == "FROM" else R.BAD_RECIPIENT
    head, colon, rest = argument.partition(":")
    if not colon or head.strip().upper() != keyword:
        return syntax
    rest = rest.lstrip(" ")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        if end < 0:
            return syntax
        path, tail = rest[1:end], rest[end + 1:]
        if tail and not tail.startswith(" "):
            return syntax
    else:
        path, _, tail = rest.partition(" ")
    if not path and not rest.startswith("<"):
        return syntax
    params = parse_params(tail)
    if params is None:
        return syntax
    utf8 = utf8 or "SMTPUTF8" in params
    # The limit is in octets (RFC 6531 3.3 keeps it for UTF-8); printable text has no
    # surrogates, so the encode cannot fail.
    if not path.isprintable() or len(path.encode("utf-8")) + 2 > MAX_PATH:
        return bad
    if not path:
        return Path("", "", "", params) if null_allowed else bad
    # RFC 5321 4.1.2: an A-d-l source route ("@a,@b:") must be accepted and ignored (C.2).
    if path.startswith("@"):
        path = _strip_route(path)
        if path is None:
            return bad
    if not utf8 and not is_ascii(path):
        return R.UTF8_NEEDS_SMTPUTF8
    local, at, domain = path.rpartition("@")
    if not at:
        # RFC 5321 4.5.1: "postmaster" without a domain must be accepted as a recipient.
        if keyword == "TO" and path.lower() == "postmaster":
            return Path(path, path, "", params)
        return bad
    if not _valid_local(local, utf8) or not valid_domain(domain, utf8):
        return bad
    return Path(path, local, domain, params)


def _strip_route(path: str) -> str | None:
    """The mailbox after a well-formed source route, or None. Every hop is "@" and a
    valid domain; a hop may be an IPv6 literal, whose colons do not end the route."""
    pos = 0
    while True:
        hop = _ROUTE_HOP.match(path, pos)
        if not hop or not valid_domain(hop.group(1)):
            return None
        pos = hop.end()
        if hop.group(2) == ":":
            return path[pos:]


def _closing_bracket(text: str) -> int:
    """Index of the '>' that closes the path, skipping quoted strings in the local part."""
    if '"' not in text:
        return text.find(">")
    quoted = False
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return -1


def _valid_local(local: str, utf8: bool) -> bool:
    if not local:
        return False
    if local.startswith('"'):
        return bool((_QUOTED_STRING_UTF8 if utf8 else _QUOTED_STRING).match(local))
    return bool((_DOT_STRING_UTF8 if utf8 else _DOT_STRING).match(local))


def parse_params(text: str) -> dict[str, str | None] | None:
    """``SIZE=100 BODY=8BITMIME`` -> {'SIZE': '100', 'BODY': '8BITMIME'}; None on bad syntax."""
    params: dict[str, str | None] = {}
    for word in text.split():
        match = _PARAM.match(word)
        if not match:
            return None
        params[match.group(1).upper()] = match.group(2)
    return params


class AllowedHosts:
    """Matches recipient domains against ``example.com``, ``*.example.com`` and ``*``."""

    def __init__(self, patterns: list[str]):
        self.match_all = "*" in patterns
        self.exact = {p.lower().rstrip(".") for p in patterns if not p.startswith("*")}
        self.suffixes = tuple(p[1:].lower().rstrip(".") for p in patterns if p.startswith("*."))

    def __contains__(self, domain: str) -> bool:
        if self.match_all:
            return True
        domain = domain.lower().rstrip(".")
        return domain in self.exact or (bool(self.suffixes) and domain.endswith(self.suffixes))
