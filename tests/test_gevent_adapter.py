"""The one door to gevent's internals (gsmtpd/gevent_adapter.py), on the installed gevent."""
import socket

import gevent
import gevent.socket

from gsmtpd import gevent_adapter


def test_the_installed_gevent_has_everything_gsmtpd_uses():
    assert gevent_adapter.unsupported() is None


def test_the_fast_path_reads_the_socket_gevent_wraps():
    server, client = gevent.socket.socketpair()
    try:
        raw, wait_readable = gevent_adapter.fast_path(server)
        gevent.spawn_later(0.05, client.sendall, b"EHLO x\r\n")
        with gevent.Timeout(10):
            wait_readable()
        assert raw.recv(100) == b"EHLO x\r\n"
    finally:
        server.close()
        client.close()


def test_any_other_socket_has_no_fast_path():
    one, other = socket.socketpair()     # the standard library's, not gevent's
    try:
        assert gevent_adapter.fast_path(one) == (None, None)
    finally:
        one.close()
        other.close()
