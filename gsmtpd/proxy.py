"""The PROXY protocol, versions 1 and 2, as HAProxy sends it in front of a listener.

Spec: HAProxy's proxy-protocol.txt. The header is read with exact-length reads (a v1 line
byte by byte after its first 15 bytes), so nothing that follows it, such as an
implicit-TLS ClientHello, is taken from the socket by mistake.
"""
from __future__ import annotations

import ipaddress
import re
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Spec 2.1: a v1 header is at most 107 bytes including the CRLF; the shortest,
# "PROXY UNKNOWN\r\n", is 15.
V1_MAX = 107
V1_MIN = 15
# Spec 2.1: a port is a decimal number 0..65535, an address the usual text form. int()
# and ipaddress are laxer (int() takes "+7", "1_000" and "7\t"; ipaddress takes an IPv6
# scope "%eth0"), so the characters are checked first; no leading zeros, as in the
# dotted quad (which ipaddress already refuses with them).
_V1_PORT = re.compile(r"(?:0|[1-9][0-9]{0,4})\Z")
_V1_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}\Z")
# Spec 2.2: 16 bytes of fixed header, then the addresses and TLVs; bound the total.
V2_MAX = 16 + 1024


class ProxyError(Exception):
    """Malformed or missing PROXY header: the connection is closed without a reply."""


def read_header(sock) -> tuple[str, int] | None:
    """Consume the PROXY header; return the real client (ip, port), or None for a header that
    says LOCAL/UNKNOWN (the proxy's health check: keep the peer's own address)."""
    data = recv_exact(sock, V1_MIN)
    if data[:12] == V2_SIGNATURE:
        data += recv_exact(sock, 1)
        length = struct.unpack("!H", data[14:16])[0]
        if 16 + length > V2_MAX:
            raise ProxyError("PROXY v2 header too long")
        return parse_v2(data + recv_exact(sock, length))
    if not data.startswith(b"PROXY "):
        raise ProxyError("no PROXY header")
    while not data.endswith(b"\r\n"):
        if len(data) >= V1_MAX:
            raise ProxyError("PROXY v1 header without CRLF")
        data += recv_exact(sock, 1)
    return parse_v1(data)


def recv_exact(sock, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise ProxyError("connection closed inside the PROXY header")
        data += chunk
    return data


def parse_v1(line: bytes) -> tuple[str, int] | None:
    """PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\\r\\n"""
    try:
        words = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 header is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return None
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"bad PROXY v1 header {line[:60]!r}")
    version = 4 if words[1] == "TCP4" else 6
    source, destination = (_v1_address(word, version) for word in words[2:4])
    ports = [int(word) if _V1_PORT.match(word) else 65536 for word in words[4:6]]
    if source is None or destination is None or max(ports) > 65535:
        raise ProxyError(f"bad PROXY v1 header {line[:60]!r}")
    return str(source), ports[0]


def _v1_address(word: str, version: int):
    """The address in ``word`` if it is plain text of that IP version, else None."""
    if not _V1_ADDRESS.match(word):
        return None
    try:
        address = ipaddress.ip_address(word)
    except ValueError:
        return None
    return address if address.version == version else None


def parse_v2(header: bytes) -> tuple[str, int] | None:
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        raise ProxyError("PROXY v2 header with a wrong version")
    command = version_command & 0x0F
    if command == 0x0:            # LOCAL: the proxy's own health check
        return None
    if command != 0x1:
        raise ProxyError("PROXY v2 header with an unknown command")
    body = header[16:]
    if family == 0x11:            # TCP over IPv4
        if len(body) < 12:
            raise ProxyError("short PROXY v2 IPv4 address block")
        return str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0]
    if family == 0x21:            # TCP over IPv6
        if len(body) < 36:
            raise ProxyError("short PROXY v2 IPv6 address block")
        return str(ipaddress.IPv6Address(body[0:16])), struct.unpack("!H", body[32:34])[0]
    if family == 0x00:            # UNSPEC
        return None
    raise ProxyError(f"PROXY v2 family {family:#x} is not TCP")
