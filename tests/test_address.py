"""gsmtpd.address: a total parser. Any input gives a value or a Reply, never an exception;
valid addresses come back exactly as given; and the RFC 5321 forms real clients send."""
from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gsmtpd import address
from gsmtpd import replies as R
from gsmtpd.address import MAX_PATH, AllowedHosts, Path, parse_helo, parse_params, parse_path, valid_domain

PATH_REPLIES = {R.MAIL_SYNTAX, R.RCPT_SYNTAX, R.BAD_SENDER, R.BAD_RECIPIENT, R.UTF8_NEEDS_SMTPUTF8}

# --- strategies

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
atom = st.text(ATEXT, min_size=1, max_size=12)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
qtext = st.sampled_from([chr(c) for c in range(0x20, 0x7f) if chr(c) not in '"\\'])
quoted_pair = st.sampled_from([chr(c) for c in range(0x20, 0x7f)]).map(lambda c: "\\" + c)
quoted_string = st.lists(st.one_of(qtext, quoted_pair), max_size=10).map(lambda p: '"' + "".join(p) + '"')
label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "[%d.%d.%d.%d]" % t)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[IPv6:{a}]")
mailbox = st.tuples(st.one_of(dot_string, quoted_string), st.one_of(domain, domain, ipv4, ipv6))
# Text that looks like SMTP: brackets, quotes, colons, at signs, spaces, UTF-8, controls.
smtpish = st.text(st.one_of(st.sampled_from('<>@:"\\., =[]-'), st.characters()), max_size=60)


def pieces_to_argument(keyword: str, sep: str, path: str, params: str) -> str:
    return f"{keyword}:{sep}{path}{params}"


# --- totality: any input, a value or a Reply


@settings(max_examples=500)
@given(argument=st.one_of(st.text(), smtpish,
                          st.builds(pieces_to_argument, st.sampled_from(["FROM", "TO", "from", " To "]),
                                    st.sampled_from(["", " ", "  "]), smtpish, smtpish)),
       keyword=st.sampled_from(["FROM", "TO"]), null_allowed=st.booleans(), utf8=st.booleans())
@example(argument="TO:<@[IPv6:::1]:bob@test.org>", keyword="TO", null_allowed=False, utf8=False)
@example(argument="FROM:<\ud800@b.example>", keyword="FROM", null_allowed=True, utf8=True)
@example(argument="TO:<a@\udcff>", keyword="TO", null_allowed=False, utf8=True)
@example(argument='FROM:<"\\', keyword="FROM", null_allowed=True, utf8=False)
def test_parse_path_is_total(argument, keyword, null_allowed, utf8):
    result = parse_path(argument, keyword, null_allowed, utf8=utf8)
    if isinstance(result, R.Reply):
        assert result in PATH_REPLIES
        if result in (R.MAIL_SYNTAX, R.BAD_SENDER):
            assert keyword == "FROM"
        if result in (R.RCPT_SYNTAX, R.BAD_RECIPIENT):
            assert keyword == "TO"
        return
    assert isinstance(result, Path)
    assert result.address.isprintable()
    assert len(result.address.encode("utf-8")) + 2 <= MAX_PATH
    if not utf8 and "SMTPUTF8" not in result.params:
        assert result.address.isascii()
    if result.address == "":
        assert null_allowed
    elif result.domain:
        assert result.address == f"{result.local}@{result.domain}"
        assert valid_domain(result.domain, utf8=True)
        # What we accepted, we accept again, the same (a source route is gone by now).
        again = parse_path(f"{keyword}:<{result.address}>", keyword, null_allowed, utf8=utf8 or "SMTPUTF8" in result.params)
        assert again == Path(result.address, result.local, result.domain, {})
    else:
        assert keyword == "TO" and result.address.lower() == "postmaster"


@given(st.one_of(st.text(), smtpish))
@example("\ud800")
@example("a\u2028b")
def test_parse_helo_is_total(argument):
    name = parse_helo(argument)
    if name is not None:
        assert name and name.isprintable() and len(name) <= 255
        assert not any(ch.isspace() for ch in name)


@given(st.one_of(st.text(), smtpish))
@example("SIZE=1 BODY=8BITMIME SMTPUTF8")
@example("=")
@example("SIZE==1")
def test_parse_params_is_total(text):
    params = parse_params(text)
    if params is not None:
        for key, value in params.items():
            assert key == key.upper() and key and key.isascii()
            assert value is None or (value and "=" not in value and not any(c.isspace() for c in value))


@given(st.one_of(st.text(), smtpish, domain, ipv4, ipv6), st.booleans())
@example("\ud800", False)
@example("\udcff", True)
@example("[IPv6:::::]", False)
@example("\u00fc" * 40 + ".example", True)      # 80 octets in one label
def test_valid_domain_is_total(text, utf8):
    """Never raises; and what it accepts is a domain: at most 255 octets, labels of 1 to 63
    octets (or an address literal), ASCII unless SMTPUTF8, and accepted with SMTPUTF8 too."""
    if not valid_domain(text, utf8):
        return
    assert 0 < len(text.encode("utf-8", "surrogatepass")) <= 255
    assert valid_domain(text, True), "SMTPUTF8 only ever allows more"
    assert utf8 or text.isascii()
    if not text.startswith("["):
        assert all(1 <= len(label.encode("utf-8", "surrogatepass")) <= 63 for label in text.split(".")), text


@given(st.lists(st.one_of(st.text(max_size=20), domain, domain.map(lambda d: "*." + d), st.just("*"))),
       st.one_of(st.text(max_size=30), domain))
def test_allowed_hosts_is_total(patterns, name):
    """Never raises; a listed name, any subdomain of a "*." pattern and, with "*", anything
    is allowed; with no patterns nothing is."""
    hosts = AllowedHosts(patterns)
    allowed = name in hosts
    if "*" in patterns or (name in patterns and not name.startswith("*")):
        assert allowed is True
    if not patterns:
        assert allowed is False
    for pattern in patterns:
        if pattern.startswith("*."):
            assert "sub" + pattern[1:] in hosts, pattern


# --- round trips of valid addresses


@settings(max_examples=300)
@given(mailbox, st.sampled_from(["FROM", "TO"]), st.sampled_from(["", " "]),
       st.sampled_from(["", " SIZE=100", " BODY=8BITMIME SMTPUTF8"]))
def test_valid_address_round_trips(parts, keyword, space, params):
    local, dom = parts
    address = f"{local}@{dom}"
    if len(address) + 2 > MAX_PATH:
        return
    result = parse_path(f"{keyword}:{space}<{address}>{params}", keyword, null_allowed=False)
    assert isinstance(result, Path), (address, result)
    assert (result.address, result.local, result.domain) == (address, local, dom)
    assert result.params == parse_params(params)


@given(dot_string, domain)
def test_unbracketed_address_round_trips(local, dom):
    address = f"{local}@{dom}"
    if len(address) + 2 > MAX_PATH:
        return
    result = parse_path(f"TO:{address} ", "TO", null_allowed=False)
    assert isinstance(result, Path) and result.address == address


@given(st.text(st.characters(min_codepoint=0xA1, categories=["Ll", "Lu", "Lo"]), min_size=1, max_size=10), domain)
def test_utf8_address_needs_smtputf8(local, dom):
    address = f"{local}@{dom}"
    assert parse_path(f"FROM:<{address}>", "FROM", True) == R.UTF8_NEEDS_SMTPUTF8
    result = parse_path(f"FROM:<{address}> SMTPUTF8", "FROM", True)
    assert isinstance(result, Path) and result.address == address
    # RCPT: the transaction's SMTPUTF8 is passed in by the session.
    assert isinstance(parse_path(f"TO:<{address}>", "TO", False, utf8=True), Path)
    assert parse_path(f"TO:<{address}>", "TO", False) == R.UTF8_NEEDS_SMTPUTF8


# --- examples: the forms of RFC 5321 4.1.2 and what real clients send


@pytest.mark.parametrize("argument, address, local, domain", [
    ('TO:<"john doe"@test.org>', '"john doe"@test.org', '"john doe"', "test.org"),
    ('TO:<"a\\"b"@test.org>', '"a\\"b"@test.org', '"a\\"b"', "test.org"),
    ('TO:<"x>y"@test.org>', '"x>y"@test.org', '"x>y"', "test.org"),
    ('TO:<"a@b"@test.org>', '"a@b"@test.org', '"a@b"', "test.org"),
    ('TO:<""@test.org>', '""@test.org', '""', "test.org"),
    ("TO:<@relay.example:bob@test.org>", "bob@test.org", "bob", "test.org"),
    ("TO:<@a.example,@b.example:bob@test.org>", "bob@test.org", "bob", "test.org"),
    ("TO:<@[IPv6:2001:db8::1]:bob@test.org>", "bob@test.org", "bob", "test.org"),
    ("TO:<@[192.0.2.1],@b.example:bob@test.org>", "bob@test.org", "bob", "test.org"),
    ("TO:<bob@[192.0.2.1]>", "bob@[192.0.2.1]", "bob", "[192.0.2.1]"),
    ("TO:<bob@[IPv6:2001:db8::1]>", "bob@[IPv6:2001:db8::1]", "bob", "[IPv6:2001:db8::1]"),
    ("TO:<bob@[IPv6:::ffff:192.0.2.1]>", "bob@[IPv6:::ffff:192.0.2.1]", "bob", "[IPv6:::ffff:192.0.2.1]"),
    ("TO:<bob@test.org.>", "bob@test.org.", "bob", "test.org."),
    ("TO:<bob@_dmarc.test.org>", "bob@_dmarc.test.org", "bob", "_dmarc.test.org"),
    ("TO: <bob@test.org>", "bob@test.org", "bob", "test.org"),
    (" to :<bob@test.org>", "bob@test.org", "bob", "test.org"),
    ("TO:bob@test.org", "bob@test.org", "bob", "test.org"),
    ("TO:<postmaster>", "postmaster", "postmaster", ""),
    ("TO:<PostMaster>", "PostMaster", "PostMaster", ""),
])
def test_accepted_forms(argument, address, local, domain):
    result = parse_path(argument, "TO", null_allowed=False)
    assert isinstance(result, Path), result
    assert (result.address, result.local, result.domain) == (address, local, domain)


@pytest.mark.parametrize("argument, reply", [
    ("TO:<>", R.BAD_RECIPIENT),
    ("TO:", R.RCPT_SYNTAX),
    ("TO <bob@test.org>", R.RCPT_SYNTAX),
    ("FROM:<bob@test.org>", R.RCPT_SYNTAX),
    ("TO:<bob@test.org", R.RCPT_SYNTAX),
    ("TO:<bob@test.org>x", R.RCPT_SYNTAX),
    ("TO:<bob@test.org> =1", R.RCPT_SYNTAX),
    ('TO:<"bob@test.org>', R.RCPT_SYNTAX),
    ("TO:<bob>", R.BAD_RECIPIENT),
    ("TO:<bob@>", R.BAD_RECIPIENT),
    ("TO:<@test.org>", R.BAD_RECIPIENT),
    ("TO:<a..b@test.org>", R.BAD_RECIPIENT),
    ("TO:<.a@test.org>", R.BAD_RECIPIENT),
    ("TO:<a.@test.org>", R.BAD_RECIPIENT),
    ("TO:<a b@test.org>", R.BAD_RECIPIENT),
    ('TO:<"a"b"@test.org>', R.RCPT_SYNTAX),                         # the third quote opens a string
    ("TO:<bob@-test.org>", R.BAD_RECIPIENT),
    ("TO:<bob@test-.org>", R.BAD_RECIPIENT),
    ("TO:<bob@test..org>", R.BAD_RECIPIENT),
    ("TO:<bob@" + "a" * 64 + ".org>", R.BAD_RECIPIENT),          # RFC 1035: labels <= 63
    ("TO:<bob@[999.1.1.1]>", R.BAD_RECIPIENT),
    ("TO:<bob@[1.2.3]>", R.BAD_RECIPIENT),
    ("TO:<bob@[IPv6:::::]>", R.BAD_RECIPIENT),
    ("TO:<bob@[IPv6:192.0.2.1]>", R.BAD_RECIPIENT),
    ("TO:<bob@[tag:content]>", R.BAD_RECIPIENT),
    ("TO:<@relay.example>", R.BAD_RECIPIENT),
    ("TO:<@:bob@test.org>", R.BAD_RECIPIENT),
    ("TO:<@a.example,b.example:bob@test.org>", R.BAD_RECIPIENT),   # every hop needs its "@"
    ("TO:<@a.example,,@b.example:bob@test.org>", R.BAD_RECIPIENT),
    ("TO:<@-bad.example:bob@test.org>", R.BAD_RECIPIENT),
    ("TO:<bob\x00@test.org>", R.BAD_RECIPIENT),
    ("TO:<b\u00f6b@test.org>", R.UTF8_NEEDS_SMTPUTF8),
    ("TO:<" + "b" * 246 + "@test.org>", R.BAD_RECIPIENT),            # 257 octets with <>
    # The limit is in octets: 123 two-octet characters + 9 = 255 octets (RFC 6531 3.3).
    ("TO:<" + "\u00f6" * 123 + "@test.org> SMTPUTF8", R.BAD_RECIPIENT),
])
def test_refused_forms(argument, reply):
    assert parse_path(argument, "TO", null_allowed=False) == reply


def test_path_length_limit_is_256_octets_with_brackets():
    fits = "b" * 245 + "@test.org"                 # 254 + 2
    assert isinstance(parse_path(f"TO:<{fits}>", "TO", False), Path)
    assert parse_path(f"TO:<b{fits}>", "TO", False) == R.BAD_RECIPIENT


def test_null_path_only_for_mail():
    assert parse_path("FROM:<>", "FROM", null_allowed=True) == Path("", "", "", {})
    assert parse_path("FROM:<> SIZE=10", "FROM", null_allowed=True) == Path("", "", "", {"SIZE": "10"})
    assert parse_path("FROM:<>", "FROM", null_allowed=False) == R.BAD_SENDER
    assert parse_path("FROM:<postmaster>", "FROM", null_allowed=True) == R.BAD_SENDER


def test_params():
    result = parse_path("FROM:<a@b.example> size=100 Body=8BITMIME SMTPUTF8", "FROM", True)
    assert result.params == {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None}
    assert parse_params("") == {}
    assert parse_params("SIZE=") is None
    assert parse_params("-X=1") is None
    assert parse_params("X-FOO=a+b") == {"X-FOO": "a+b"}


@pytest.mark.parametrize("argument, name", [
    ("client.example", "client.example"),
    ("  client.example  ", "client.example"),
    ("first second", "first"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("x" * 300, "x" * 255),
    ("", None),
    ("   ", None),
    ("a\x1bb", None),
    ("client.example\x1fjunk", None),
    ("client.example\tjunk", None),
    ("client.example\x0bjunk", None),
    ("client.example\x85junk", None),
    ("client.example\u2028junk", None),
    ("client.example \x01", None),
])
def test_parse_helo(argument, name):
    assert parse_helo(argument) == name


@pytest.mark.parametrize("domain, allowed", [
    ("test.org", True), ("TEST.ORG", True), ("test.org.", True),
    ("sub.test.org", False), ("nottest.org", False), ("test.org.evil.example", False),
    ("a.wild.test", True), ("A.B.WILD.TEST", True), ("x.wild.test.", True),
    ("wild.test", False), ("xwild.test", False), ("wild.test.evil", False),
    ("", False), ("[127.0.0.1]", False),
])
def test_allowed_hosts_wildcards(domain, allowed):
    assert (domain in AllowedHosts(["test.org", "*.wild.test"])) is allowed


def test_allowed_hosts_star_and_case():
    assert "anything.example" in AllowedHosts(["*"])
    assert "a.example.com" in AllowedHosts(["*.Example.COM."])
    assert "example.com" in AllowedHosts(["Example.COM."])
    assert "example.com" not in AllowedHosts([])


# --- the shortcut for plain paths gives what the full parser gives

NEVER = re.compile(r"(?!)")
long_local = st.integers(240, 262).map(lambda n: "a" * (n - 4))    # "<" + local + "@b>": 240-262 octets


def full_parse(*args, **kwargs):
    """parse_path with its shortcut turned off."""
    shortcut = address._PLAIN_PATH
    address._PLAIN_PATH = {"FROM": NEVER, "TO": NEVER}
    try:
        return parse_path(*args, **kwargs)
    finally:
        address._PLAIN_PATH = shortcut


@settings(max_examples=400)
@given(keyword=st.sampled_from(["FROM", "TO"]), spelled=st.sampled_from(["upper", "lower", "title"]),
       local=st.one_of(dot_string, quoted_string, long_local, smtpish),
       domain=st.one_of(domain, domain.map(lambda d: d + "."), ipv4, smtpish,
                        st.integers(60, 66).map(lambda n: "a" * n + ".test")),
       tail=st.sampled_from(["", " ", " SIZE=10", ">", " X"]), null_allowed=st.booleans())
@example(keyword="TO", spelled="upper", local="a" * 251, domain="b", tail="", null_allowed=False)  # 256: fits
@example(keyword="TO", spelled="upper", local="a" * 252, domain="b", tail="", null_allowed=False)  # 257: too long
def test_plain_paths_take_a_shortcut_to_the_same_answer(keyword, spelled, local, domain, tail, null_allowed):
    argument = f"{getattr(keyword, spelled)()}:<{local}@{domain}>{tail}"
    assert parse_path(argument, keyword, null_allowed) == full_parse(argument, keyword, null_allowed)
