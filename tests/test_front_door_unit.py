"""The connection's opening (gsmtpd/frontdoor.py) on its own, over a real socket pair: the
PROXY header, the per-address limit, early talkers, TLS and XCLIENT's change of address,
without a server process. (tests/test_front_door.py has the same through a real server.)"""

import gevent
import gevent.socket
import gevent.ssl
import pytest

from gsmtpd import replies as R
from gsmtpd.config import ListenerSpec, load
from gsmtpd.deadline import Clock
from gsmtpd.frontdoor import FrontDoor, Hangup
from gsmtpd.server import ADDRESS_COUNTS, Server
from test_deadline import guard, pair  # noqa: F401  (fixtures: a socket pair; a wait nobody ends fails)
from test_front_door import certificate  # noqa: F401  (a fixture)

PLAIN = ListenerSpec("127.0.0.1", 0)
PROXIED = ListenerSpec("127.0.0.1", 0, proxy_protocol=True)


SERVING: list[Server] = []


@pytest.fixture(autouse=True)
def stop_watchdogs():
    yield
    while SERVING:
        SERVING.pop().watchdog.stop()


def serving(*argv: str) -> Server:
    """A Server with this configuration and its watchdog running (until the test ends),
    listening nowhere."""
    server = Server(load(["--store", "sqlite:///unused.db", *argv], environ={}), store=None)
    server.watchdog.start(server.config.timeout)
    SERVING.append(server)
    return server


def with_tls(certificate, *argv: str) -> Server:  # noqa: F811
    """A server with TLS. This process is not monkey-patched as gsmtpd's is, so the
    context is made with gevent's ssl module, which cli.py's patching makes ssl's."""
    cert, key = certificate
    server = serving("--tls-cert", str(cert), "--tls-key", str(key), *argv)
    server.tls = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
    server.tls.load_cert_chain(cert, key)
    return server


def door(server: Server, sock, ip: str, listener: ListenerSpec = PLAIN) -> FrontDoor:
    clock = Clock(server.config.timeout, gevent.getcurrent())
    server.watchdog.clocks.add(clock)
    return FrontDoor(sock, (ip, 40000), server, listener, clock)


def hangup_of(opening) -> Hangup:
    with pytest.raises(Hangup) as hangup:
        opening()
    return hangup.value


def test_a_proxy_header_from_a_trusted_peer_names_the_real_client(pair):
    server_sock, client = pair
    server = serving("--trusted-networks", "127.0.0.0/8")
    front = door(server, server_sock, "127.0.0.11", PROXIED)
    client.sendall(b"PROXY TCP4 192.0.2.11 198.51.100.1 56324 25\r\nEHLO mx\r\n")
    front.open()
    assert (front.peer_ip, front.ip) == ("127.0.0.11", "192.0.2.11")
    assert ADDRESS_COUNTS.count("192.0.2.11") == 1 and ADDRESS_COUNTS.count("127.0.0.11") == 0
    assert front.wire.read_line(512, 5.0) == b"EHLO mx", "nothing past the header was taken"
    front.close()
    assert ADDRESS_COUNTS.count("192.0.2.11") == 0


@pytest.mark.parametrize("peer,header", [
    ("10.9.9.12", b"PROXY TCP4 192.0.2.12 198.51.100.1 56324 25\r\n"),   # untrusted peer
    ("127.0.0.12", b"EHLO no-header\r\n"),
    ("127.0.0.12", b""),                                                  # none within the timeout
])
def test_a_missing_or_untrusted_proxy_header_closes_without_a_reply(pair, peer, header):
    server_sock, client = pair
    server = serving("--trusted-networks", "127.0.0.0/8", "--timeout", "1")
    front = door(server, server_sock, peer, PROXIED)
    client.sendall(header)
    hangup = hangup_of(front.open)
    assert hangup.reply is None and not front.admitted
    assert ADDRESS_COUNTS.count(peer) == 0 and ADDRESS_COUNTS.count("192.0.2.12") == 0


def test_past_max_per_ip_the_next_connection_gets_421_until_one_closes():
    server = serving("--max-per-ip", "1")
    pairs = [gevent.socket.socketpair() for _ in range(2)]
    first, second = (door(server, sock, "192.0.2.13") for sock, _ in pairs)
    first.open()
    assert hangup_of(second.open).reply == R.TOO_MANY_FROM_YOU
    first.close()
    second.open()
    assert second.admitted and ADDRESS_COUNTS.count("192.0.2.13") == 1
    second.close()
    for sock, client in pairs:
        sock.close()
        client.close()


def test_an_early_talker_is_refused_and_a_patient_client_let_in(pair):
    server_sock, client = pair
    server = serving("--early-talkers", "reject", "--greet-pause", "0.05")
    patient = door(server, server_sock, "192.0.2.14")
    patient.open()
    patient.close()
    other_sock, other_client = gevent.socket.socketpair()
    try:
        other_client.sendall(b"EHLO hasty\r\n")
        hangup = hangup_of(door(server, other_sock, "192.0.2.15").open)
        assert (hangup.reply, hangup.discard_queued) == (R.EARLY_TALKER, True)
    finally:
        other_sock.close()
        other_client.close()


def test_starttls_drops_plaintext_sent_ahead_and_goes_on_over_tls(pair, certificate):  # noqa: F811
    server_sock, client = pair
    server = with_tls(certificate)
    front = door(server, server_sock, "192.0.2.16", ListenerSpec("127.0.0.1", 0, tls="starttls"))
    front.open()
    assert front.can_starttls()
    front.wire.buf += b"RSET\r\n"          # pipelined behind STARTTLS in plaintext

    def client_side():
        context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, gevent.ssl.CERT_NONE
        tls = context.wrap_socket(client, server_hostname="mx.test")
        tls.sendall(b"EHLO secure\r\n")
        return tls

    talking = gevent.spawn(client_side)
    front.start_tls()
    assert front.is_tls and not front.can_starttls()
    assert front.wire.read_line(512, 5.0) == b"EHLO secure"
    talking.get().close()
    front.close()


def test_a_failed_handshake_ends_only_with_a_hangup(pair, certificate):  # noqa: F811
    server_sock, client = pair
    server = with_tls(certificate)
    front = door(server, server_sock, "192.0.2.17", ListenerSpec("127.0.0.1", 0, tls="implicit"))
    client.sendall(b"EHLO not-tls\r\n")
    hangup = hangup_of(front.open)
    assert hangup.reply is None and not front.is_tls
    front.close()
    assert ADDRESS_COUNTS.count("192.0.2.17") == 0


def test_xclient_moves_the_per_address_count_to_the_real_client(pair):
    server_sock, client = pair
    server = serving("--max-per-ip", "1")
    front = door(server, server_sock, "192.0.2.18")
    front.open()
    front.readmit("192.0.2.19")
    assert ADDRESS_COUNTS.count("192.0.2.18") == 0 and ADDRESS_COUNTS.count("192.0.2.19") == 1
    other_sock, other_client = gevent.socket.socketpair()
    try:
        full = door(server, other_sock, "192.0.2.18")
        full.open()
        assert hangup_of(lambda: full.readmit("192.0.2.19")).reply == R.TOO_MANY_FROM_YOU
        full.close()
    finally:
        other_sock.close()
        other_client.close()
    front.close()
    assert ADDRESS_COUNTS.count("192.0.2.19") == 0
