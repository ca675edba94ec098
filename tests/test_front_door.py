"""The front door on port 25: TLS, proxies in front, and the limits that keep abusers from
hurting other sessions. Real handshakes, a real HAProxy, real sockets."""
from __future__ import annotations

import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import message
from gsmtpd.wire import Wire

QUEUED = re.compile(r"^250 2\.0\.0 OK: queued as ([0-9a-f]{32})$")


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for mx.test, made with the openssl command line."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def closed_without_reply(sock) -> bool:
    """The server closed (a reset counts: it closed with our bytes unread) and said nothing."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def write_config(tmp_path, text: str):
    path = tmp_path / "gsmtpd.toml"
    path.write_text(text)
    return path


def read_reply(sock) -> bytes:
    """Bytes up to the end of one whole (multi-line) reply."""
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n\Z", data):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def drip_until_answered(sock, data: bytes, pause: float) -> int:
    """A slow client: send ``data`` a byte every ``pause`` seconds until the server answers
    (or closes); returns how many bytes were sent by then."""
    for sent, byte in enumerate(data):
        if select.select([sock], [], [], pause)[0]:
            return sent
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return sent
    return len(data)


# --- TLS


def test_starttls_with_a_real_handshake_stores_is_tls_and_esmtps(any_store, gsmtpd_server, certificate):
    cert, key = certificate
    server = gsmtpd_server(any_store, tls_cert=cert, tls_key=key)
    with server.smtp() as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert client.starttls(context=client_context())[0] == 220
        client.ehlo()
        assert not client.has_extn("starttls"), "STARTTLS is only offered before TLS is on"
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.sendmail("a@example.org", ["b@test.org"], message(subject="secret"))
        client.sendmail("a@example.org", ["b@test.org"], message(subject="utf8"), mail_options=["SMTPUTF8"])
    row, utf8 = any_store.rows()
    assert row["is_tls"] == 1
    assert b" with ESMTPS id " in bytes(row["mail"])
    assert b" with UTF8SMTPS id " in bytes(utf8["mail"]), "RFC 6531 3.7.3"
    server.wait_log(r"disconnect ip=127\.0\.0\.1 tls messages=2")


def test_commands_pipelined_behind_starttls_are_discarded(sqlite_store, gsmtpd_server, certificate):
    """CVE-2011-0411: plaintext injected after STARTTLS must not be run inside TLS."""
    cert, key = certificate
    server = gsmtpd_server(sqlite_store, tls_cert=cert, tls_key=key)
    raw = server.raw()
    raw.reply()
    raw.command("EHLO c")
    raw.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
    assert raw.reply() == "220 2.0.0 Ready to start TLS"
    assert raw.buf == b""
    tls = client_context().wrap_socket(raw.sock, server_hostname="mx.test")
    tls.settimeout(5)
    tls.sendall(b"RCPT TO:<b@test.org>\r\n")
    answer = tls.recv(1000)
    assert answer.startswith(b"503 5.5.1"), "the injected MAIL and even EHLO were forgotten: " + repr(answer)
    tls.sendall(b"EHLO c\r\n")
    ehlo = read_reply(tls)
    assert ehlo.startswith(b"250-mx.test") and b"STARTTLS" not in ehlo
    tls.close()


def test_failed_handshake_closes_only_that_connection(sqlite_store, gsmtpd_server, certificate):
    cert, key = certificate
    server = gsmtpd_server(sqlite_store, tls_cert=cert, tls_key=key)
    bystander = server.raw()
    assert bystander.reply().startswith("220")
    broken = server.raw()
    broken.reply()
    broken.command("EHLO c")
    assert broken.command("STARTTLS").startswith("220")
    broken.send(b"\x16\x03\x01\x00\x05garbage that is no ClientHello\r\n")
    assert broken.closed()
    assert bystander.command("EHLO still-here").startswith("250-mx.test")
    assert server.raw().reply().startswith("220")


def test_implicit_tls_listener_with_swaks(sqlite_store, gsmtpd_server, certificate, tmp_path):
    cert, key = certificate
    config = write_config(tmp_path, '[[listener]]\naddress = "127.0.0.1:0"\ntls = "starttls"\n'
                                    '[[listener]]\naddress = "127.0.0.1:0"\ntls = "implicit"\n')
    server = gsmtpd_server(sqlite_store, config=config, tls_cert=cert, tls_key=key)
    plain, smtps = server.listener_port("tls=starttls"), server.listener_port("tls=implicit")
    result = subprocess.run(["swaks", "--server", f"127.0.0.1:{smtps}", "--tlsc", "--to", "b@test.org",
                             "--from", "a@example.org", "--header", "Subject: over smtps"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(["swaks", "--server", f"127.0.0.1:{plain}", "--tls", "--to", "b@test.org",
                             "--from", "a@example.org", "--header", "Subject: over starttls"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = sqlite_store.rows()
    assert [(r["subject"], r["is_tls"]) for r in rows] == [("over smtps", 1), ("over starttls", 1)]


# --- proxies in front


def haproxy_config(tmp_path, frontend_fd: int, backend_port: int, version: str) -> str:
    send_proxy = "send-proxy-v2" if version == "v2" else "send-proxy"
    path = tmp_path / f"haproxy-{version}.cfg"
    path.write_text(f"""global
    log stderr format raw local0 warning
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind fd@{frontend_fd}
    default_backend gsmtpd
backend gsmtpd
    server g1 127.0.0.1:{backend_port} {send_proxy}
""")
    return str(path)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_in_front_sends_the_real_client_address(any_store, gsmtpd_server, tmp_path, version):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    config = write_config(tmp_path, '[[listener]]\naddress = "127.0.0.1:0"\nproxy_protocol = true\n')
    server = gsmtpd_server(any_store, config=config, trusted_networks="127.0.0.0/8")
    backend = server.listener_port("proxy_protocol")
    # HAProxy's frontend is a socket bound here on port 0 and inherited (bind fd@N): it
    # listens before HAProxy runs, so a connection waits in its backlog, never refused.
    frontend = socket.create_server(("127.0.0.1", 0))
    proc = subprocess.Popen([haproxy, "-db", "-f", haproxy_config(tmp_path, frontend.fileno(), backend, version)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=[frontend.fileno()])
    try:
        # The client connects from 127.0.0.2 so the proxied address differs from HAProxy's own.
        sock = socket.create_connection(frontend.getsockname(), timeout=10, source_address=("127.0.0.2", 0))
        sock.sendall(b"EHLO proxied\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@test.org>\r\nDATA\r\n")
        received = b""
        while received.count(b"\r\n354 ") == 0 and not received.startswith(b"354"):
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        sock.sendall(b"Subject: via haproxy\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        while b"221 " not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"220 mx.test ESMTP gsmtpd"), received
        assert b"250 2.0.0 OK: queued as" in received
        sock.close()
    finally:
        proc.terminate()
        proc.wait(10)
        frontend.close()
    row = any_store.rows()[0]
    assert row["ip_addr"] == "127.0.0.2"
    assert b"([127.0.0.2])" in bytes(row["mail"])
    server.wait_log(r"connect ip=127\.0\.0\.2")


def test_proxy_header_from_an_untrusted_peer_closes_the_connection(sqlite_store, gsmtpd_server, tmp_path):
    config = write_config(tmp_path, '[[listener]]\naddress = "127.0.0.1:0"\nproxy_protocol = true\n')
    server = gsmtpd_server(sqlite_store, config=config, trusted_networks="10.9.9.0/24")
    port = server.listener_port("proxy_protocol")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 25\r\n")
    assert closed_without_reply(sock), "an untrusted peer gets no greeting"
    server.wait_log(r"closed ip=127\.0\.0\.1: PROXY header expected from untrusted peer")


@pytest.mark.parametrize("header", [b"PROXY TCP4 not-an-ip 127.0.0.1 1 25\r\n", b"EHLO no-proxy-header\r\n",
                                    b"PROXY TCP4 192.0.2.1 127.0.0.1 1_000 25\r\n",
                                    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\x00" * 12])
def test_malformed_proxy_header_closes_the_connection(sqlite_store, gsmtpd_server, tmp_path, header):
    config = write_config(tmp_path, '[[listener]]\naddress = "127.0.0.1:0"\nproxy_protocol = true\n')
    server = gsmtpd_server(sqlite_store, config=config, trusted_networks="127.0.0.1")
    port = server.listener_port("proxy_protocol")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(header)
    assert closed_without_reply(sock)
    ok = socket.create_connection(("127.0.0.1", port), timeout=5)
    ok.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 25\r\n")
    assert ok.recv(100).startswith(b"220 mx.test")


def test_xclient_from_a_trusted_peer_sets_the_client(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, trusted_networks="127.0.0.0/8")
    client = server.raw()
    client.reply()
    assert "XCLIENT" in client.command("EHLO proxy")
    assert client.command("XCLIENT ADDR=192.0.2.44 NAME=mail.example HELO=mail.example.net") \
        == "220 mx.test ESMTP gsmtpd"
    assert client.command("MAIL FROM:<a@example.org>").startswith("503 5.5.1"), "XCLIENT restarts the session"
    client.command("EHLO proxy-again")
    client.command("MAIL FROM:<a@example.org>")
    client.command("RCPT TO:<b@test.org>")
    client.command("DATA")
    assert QUEUED.match(client.command(b"Subject: x\r\n\r\nhi\r\n."))
    row = sqlite_store.rows()[0]
    assert (row["ip_addr"], row["helo"]) == ("192.0.2.44", "mail.example.net")


@pytest.mark.parametrize("addr", ["IPV6:fe80::1%eth0", "IPV6:fe80::1%25eth0", "fe80::1%eth0",
                                  "IPV6:::ffff:255.255.255.255%" + "z" * 40, "IPV6:fe80::1%"])
def test_xclient_addr_with_a_zone_is_refused_and_the_next_one_stored(any_store, gsmtpd_server, addr):
    """A zone id ("%eth0") names an interface of the proxy's host, meaningless here (Postfix's
    XCLIENT takes an address, and refuses the "%"), and could overflow the 45-character
    ip_addr column: 501 5.5.4, the session keeps going, and the message is stored with the
    address XCLIENT gave next."""
    server = gsmtpd_server(any_store, trusted_networks="127.0.0.0/8")
    client = server.raw()
    client.reply()
    client.command("EHLO proxy")
    assert client.command(f"XCLIENT ADDR={addr}") == "501 5.5.4 Bad XCLIENT attribute"
    assert client.command("XCLIENT ADDR=IPV6:fe80::7") == "220 mx.test ESMTP gsmtpd"
    client.command("EHLO proxy")
    client.command("MAIL FROM:<a@example.org>")
    client.command("RCPT TO:<b@test.org>")
    client.command("DATA")
    assert QUEUED.match(client.command(b"Subject: x\r\n\r\nhi\r\n."))
    assert [row["ip_addr"] for row in any_store.rows()] == ["fe80::7"]


def test_xclient_from_anyone_else_is_an_unknown_command(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    client = server.raw()
    client.reply()
    assert "XCLIENT" not in client.command("EHLO c")
    assert client.command("XCLIENT ADDR=192.0.2.44") == "500 5.5.2 Command not recognized"


# --- limits


def test_max_clients_answers_421_instead_of_hanging(sqlite_store, gsmtpd_server):
    # max_clients is per process (each worker has its own event loop and limit).
    server = gsmtpd_server(sqlite_store, max_clients=3, workers=1)
    held = [server.raw() for _ in range(3)]
    assert all(c.reply().startswith("220") for c in held)
    extra = server.raw()
    assert extra.reply() == "421 4.3.2 Too many connections, try again later"
    assert extra.closed()
    held[0].command("QUIT")
    assert held[0].closed()
    server.wait_log(r"disconnect ip=127\.0\.0\.1 messages=0")   # logged after its place is given back
    assert server.raw().reply().startswith("220")


@pytest.mark.parametrize("workers", [1, 2])
def test_per_address_limit(sqlite_store, gsmtpd_server, workers):
    server = gsmtpd_server(sqlite_store, max_per_ip=2, workers=workers)   # counted across workers
    held = [server.raw() for _ in range(2)]
    assert all(c.reply().startswith("220") for c in held)
    # Whichever worker accepts them, more connections from this address are refused.
    for _ in range(6):
        extra = server.raw()
        assert extra.reply() == "421 4.7.0 Too many connections from your address, try again later"
        assert extra.closed()
    held[0].command("QUIT")
    assert held[0].closed()
    server.wait_log(r"disconnect ip=127\.0\.0\.1 messages=0")   # logged after its place is given back
    assert server.raw().reply().startswith("220"), "a closed connection frees its place"
    other = socket.create_connection((server.host, server.port), source_address=("127.0.0.3", 0), timeout=5)
    assert other.recv(100).startswith(b"220"), "another address is not affected"


def test_a_line_without_end_is_cut_off_without_buffering_it(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    client = server.raw()
    client.reply()
    client.send(b"MAIL FROM:<" + b"a" * (1 << 20))
    client.send(b">\r\nNOOP\r\n")
    assert client.reply() == "500 5.5.6 Line too long"
    assert client.reply() == "250 2.0.0 OK"


def test_slow_drip_command_is_cut_off_by_its_deadline(sqlite_store, gsmtpd_server):
    """The deadline is for the whole command line: bytes that keep coming do not extend it."""
    server = gsmtpd_server(sqlite_store, timeout=2)
    client = server.raw()
    client.reply()
    line = b"NOOP " + b"and more " * 6       # 15 s at a byte every 0.25 s, no end of line
    sent = drip_until_answered(client.sock, line, 0.25)
    assert sent < len(line), "the client dripped its whole line without being cut off"
    assert client.reply() == "421 4.4.2 Timeout waiting for command, closing connection"
    assert client.closed()


def test_slow_drip_data_is_cut_off_by_the_data_deadline(sqlite_store, gsmtpd_server):
    """Each byte comes well within the command timeout (3 s), but the DATA phase as a whole
    may take only data_timeout (2 s)."""
    server = gsmtpd_server(sqlite_store, timeout=3, data_timeout=2)
    client = server.raw()
    client.start_data()
    content = b"x" * 60                      # 12 s at a byte every 0.2 s
    sent = drip_until_answered(client.sock, content, 0.2)
    assert sent < len(content), "the client dripped all its content without being cut off"
    assert client.reply() == "421 4.4.2 Timeout during DATA, closing connection"
    assert sqlite_store.count() == 0


def test_silent_client_gets_421_after_the_command_timeout(sqlite_store, gsmtpd_server):
    """A client that sends a command every half timeout is served for several timeouts;
    once it falls silent it gets 421 (well before the default 60 s, so --timeout applied)."""
    server = gsmtpd_server(sqlite_store, timeout=2)
    client = server.raw()
    assert client.reply().startswith("220 ")
    assert client.command("EHLO quiet").startswith("250")
    for _ in range(6):                       # 6 s of commands, 1 s apart: each one in time
        assert not select.select([client.sock], [], [], 1.0)[0], "nothing before the next command"
        assert client.command("NOOP") == "250 2.0.0 OK"
    assert client.reply() == "421 4.4.2 Timeout waiting for command, closing connection"
    assert client.closed()


def test_client_silent_during_data_gets_421_and_nothing_is_stored(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, timeout=1)
    client = server.raw()
    client.start_data()
    client.send(b"Subject: half\r\n\r\nand then nothing")
    # The 421 comes from --timeout (1 s), not from data_timeout (600 s): the client
    # socket gives up after 15 s.
    assert client.reply() == "421 4.4.2 Timeout during DATA, closing connection"
    assert client.closed()
    assert sqlite_store.count() == 0


def test_client_that_never_reads_its_replies_is_cut_off(sqlite_store, gsmtpd_server):
    """Replies pile up until the server's send blocks; the server gives up on that client
    after the timeout instead of waiting forever, and serves others meanwhile."""
    server = gsmtpd_server(sqlite_store, timeout=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.setblocking(False)
    commands = b"EHLO never.reads\r\n" * 20000
    sent = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            sent += sock.send(commands[sent % len(commands):])
        except BlockingIOError:
            break      # the server stopped reading: its own send is blocked on us
    assert sent > 0
    other = server.raw()
    assert other.reply().startswith("220 "), "another session is served meanwhile"
    assert other.command("NOOP") == "250 2.0.0 OK"
    assert other.command("QUIT").startswith("221 ")
    assert other.closed()
    # Without reading a byte: the blocked session is ended too (the timeout is 1 s, the
    # wait 10 s: a send without a deadline would block until the client reads).
    server.wait_log(r"(?s)disconnect ip=127\.0\.0\.1 .*disconnect ip=127\.0\.0\.1 ", timeout=10)
    sock.close()


def test_early_talker_is_answered_in_order_by_default(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.sendall(b"EHLO eager\r\nNOOP\r\nQUIT\r\n")
    data = b""
    while not data.endswith(b"Bye\r\n"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    lines = data.split(b"\r\n")
    assert lines[0] == b"220 mx.test ESMTP gsmtpd"
    assert lines[-3:] == [b"250 2.0.0 OK", b"221 2.0.0 mx.test Bye", b""]


def test_early_talker_rejected_when_configured(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, early_talkers="reject", greet_pause=0.5)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.sendall(b"EHLO eager\r\n")
    assert sock.recv(1000) == b"554 5.5.0 Protocol error: talked before the greeting\r\n"
    patient = server.raw()
    assert patient.reply().startswith("220 mx.test")


@pytest.mark.parametrize("mode,expected", [("normalize", "250"), ("reject", "550 5.5.2")])
def test_bare_lf_in_content(sqlite_store, gsmtpd_server, mode, expected):
    server = gsmtpd_server(sqlite_store, bare_lf=mode)
    client = server.raw()
    client.start_data()
    assert client.command(b"Subject: lf\r\n\r\nline one\nline two\r\n.").startswith(expected)
    if mode == "normalize":
        assert bytes(sqlite_store.rows()[0]["mail"]).endswith(b"\r\n\r\nline one\r\nline two\r\n")
    else:
        assert sqlite_store.count() == 0
    assert client.command("NOOP") == "250 2.0.0 OK", "the session stays usable"


@pytest.mark.parametrize("smuggled", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n", b"\n.\r"])
def test_smuggled_end_of_data_never_ends_the_message(sqlite_store, gsmtpd_server, smuggled):
    server = gsmtpd_server(sqlite_store, bare_lf="normalize")
    client = server.raw()
    client.reply()
    client.command("EHLO c")
    client.command("MAIL FROM:<a@example.org>")
    client.command("RCPT TO:<b@test.org>")
    client.command("DATA")
    payload = (b"Subject: first\r\n\r\nbody" + smuggled + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<b@test.org>\r\n"
               b"DATA\r\nSubject: smuggled\r\n\r\nspoof\r\n.")
    assert QUEUED.match(client.command(payload))
    assert client.command("NOOP") == "250 2.0.0 OK", "exactly one reply for the one message"
    rows = sqlite_store.rows()
    assert len(rows) == 1 and rows[0]["subject"] == "first"
    assert b"Subject: smuggled" in bytes(rows[0]["mail"])


def test_nul_bare_cr_and_bad_utf8_in_commands(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store)
    client = server.raw()
    client.reply()
    assert client.command(b"NO\x00OP").startswith("500 5.5.2")
    assert client.command(b"NOOP\rRSET").startswith("500 5.5.2")
    assert client.command(b"EHLO \xff\xfe").startswith("500 5.5.2")
    assert client.command(b"NOOP") == "250 2.0.0 OK"


def test_a_hostile_client_does_not_slow_the_others(sqlite_store, gsmtpd_server):
    """One client streams an endless line; another is answered meanwhile, while the flood
    goes on (its bytes keep being taken). How fast is bench/'s business."""
    server = gsmtpd_server(sqlite_store, timeout=20, workers=1)
    stop = threading.Event()
    flooded = [0]

    def flood():
        sock = socket.create_connection((server.host, server.port), timeout=5)
        try:
            while not stop.is_set():
                flooded[0] += sock.send(b"A" * 65536)
        except OSError:
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        good = server.raw()
        good.reply()
        for _ in range(20):
            assert good.command("NOOP") == "250 2.0.0 OK"
        assert thread.is_alive() and flooded[0] > 0, "the flood went on while the NOOPs were answered"
    finally:
        stop.set()
        thread.join(10)


def test_long_text_lines_in_data_are_stored_unchanged(any_store, gsmtpd_server):
    """RFC 5321 4.5.3.1.6 allows 1000 octets per text line; longer lines happen in real mail
    and are kept as they came (the message is never silently altered), up to --max-size."""
    server = gsmtpd_server(any_store)
    long_lines = b"A" * 5000 + b"\r\n" + b"b" * 200000 + b"\r\n"
    raw = b"Subject: long lines\r\n\r\n" + long_lines
    with server.smtp() as client:
        client.ehlo()
        client.mail("a@example.org")
        client.rcpt("b@test.org")
        assert client.data(raw)[0] == 250
    assert bytes(any_store.rows()[0]["mail"]).endswith(b"\r\n\r\n" + long_lines)


def test_xclient_moves_the_per_address_count_to_the_real_client(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, trusted_networks="127.0.0.0/8", max_per_ip=1, workers=1)
    proxy = server.raw()
    proxy.reply()
    assert proxy.command("XCLIENT ADDR=192.0.2.44").startswith("220")
    second = server.raw()
    assert second.reply().startswith("220"), "127.0.0.1's place was given back"
    assert second.command("XCLIENT ADDR=192.0.2.44") == \
        "421 4.7.0 Too many connections from your address, try again later"
    assert second.closed()


@pytest.mark.parametrize("content,crlf_only,bare_lf", [
    (b"a\r\nb\r\n", True, False),
    (b"a\rb\r\n", False, False),        # a bare CR
    (b"a\nb\r\n", False, True),         # a bare LF
    (b"a\n\rb\r\n", False, True),       # as many CRs as LFs, none of them a pair
    (b"", True, False),
])
def test_line_ends_of_a_message_are_told_apart(content, crlf_only, bare_lf):
    """Wire tells the MIME parser when every CR and LF is a CRLF (a quicker body path)."""
    data = Wire._unstuff(bytearray(b"\r\n" + content), "reject", 1000)
    assert (data.crlf_only, data.bare_lf) == (crlf_only, bare_lf)
    assert data.message == content
