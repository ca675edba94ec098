"""Postfix's XCLIENT command: attributes a trusted proxy sends about the real client.

Syntax (Postfix XCLIENT_README): ``XCLIENT attribute-name=attribute-value ...`` with the
value in xtext (RFC 3461 4), and the special values [UNAVAILABLE] and [TEMPUNAVAIL].
"""
from __future__ import annotations

import ipaddress
import re

from . import replies as R

ATTRIBUTES = {"NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT"}
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
UNKNOWN_VALUES = {"[UNAVAILABLE]", "[TEMPUNAVAIL]"}
# ADDR is an address (Postfix XCLIENT_README; its valid_ipv6_hostaddr() takes hex digits,
# ":" and "." only). ipaddress also takes an IPv6 zone ("%eth0"), an interface of the
# proxy's host that means nothing here and would not fit the 45-character ip_addr column
# (39 for the longest IPv6 text, 45 for the IPv4-mapped one written out): checked first.
_ADDRESS_CHARACTERS = re.compile(r"[0-9A-Fa-f:.]{2,45}\Z")


def decode_xtext(value: str) -> str:
    return _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)


def parse_xclient(argument: str) -> dict[str, str] | R.Reply:
    """{'ADDR': '192.0.2.7', 'HELO': 'mail.example'}; unknown values are left out."""
    words = argument.split()
    if not words:
        return R.BAD_XCLIENT
    attributes: dict[str, str] = {}
    for word in words:
        name, equals, value = word.partition("=")
        name = name.upper()
        if not equals or name not in ATTRIBUTES or not value.isascii():
            return R.BAD_XCLIENT
        value = decode_xtext(value)
        if value.upper() in UNKNOWN_VALUES:
            continue
        if name == "ADDR":
            address = value[5:] if value.upper().startswith("IPV6:") else value
            if not _ADDRESS_CHARACTERS.match(address):
                return R.BAD_XCLIENT
            try:
                value = str(ipaddress.ip_address(address))
            except ValueError:
                return R.BAD_XCLIENT
        elif name == "PORT" and not (value.isdigit() and int(value) < 65536):
            return R.BAD_XCLIENT
        elif not value.isprintable():
            return R.BAD_XCLIENT
        attributes[name] = value
    return attributes
