"""PROXY v1 lines, parsed: exactly the numbers and addresses HAProxy's spec allows (2.1).
The front door tests (test_front_door.py) show that a refused header closes the connection."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gsmtpd.proxy import ProxyError, parse_v1


@pytest.mark.parametrize("line, client", [
    (b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n", ("192.0.2.1", 56324)),
    (b"PROXY TCP4 192.0.2.1 198.51.100.1 0 65535\r\n", ("192.0.2.1", 0)),
    (b"PROXY TCP6 2001:db8::1 2001:DB8::2 65535 25\r\n", ("2001:db8::1", 65535)),
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::1 7 25\r\n", ("::ffff:c000:201", 7)),
    (b"PROXY UNKNOWN\r\n", None),
])
def test_good_v1_lines(line, client):
    assert parse_v1(line) == client


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.1 198.51.100.1 1_000 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 +7 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 -0 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 7\t 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 \t7 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1  7 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 007 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 7 1_0\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 7 +25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 7 99999\r\n",
    b"PROXY TCP4 192.0.2.01 198.51.100.1 7 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.001 7 25\r\n",
    b"PROXY TCP4 192.0.2.256 198.51.100.1 7 25\r\n",
    b"PROXY TCP4 0x7f.0.0.1 198.51.100.1 7 25\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.1 7 25\r\n",
    b"PROXY TCP4 192.0.2.1 2001:db8::1 7 25\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 7 25\r\n",
    b"PROXY TCP6 192.0.2.1 ::1 7 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 7\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.1 \xd9\xa3 25\r\n",
])
def test_bad_v1_lines_are_refused(line):
    with pytest.raises(ProxyError):
        parse_v1(line)


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_every_port_in_range_is_taken(source_port, destination_port):
    line = f"PROXY TCP4 192.0.2.1 198.51.100.1 {source_port} {destination_port}\r\n".encode()
    assert parse_v1(line) == ("192.0.2.1", source_port)


@given(st.text(max_size=12))
def test_a_port_is_taken_only_as_canonical_digits(word):
    line = f"PROXY TCP4 192.0.2.1 198.51.100.1 {word} 25\r\n".encode("utf-8", "surrogatepass")
    try:
        client = parse_v1(line)
    except ProxyError:
        return
    assert word == str(client[1])
