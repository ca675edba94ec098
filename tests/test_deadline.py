"""Every wait of a connection has one owner (gsmtpd/deadline.py): the Clock and the Watchdog
that ends overdue waits, over a real socket pair, without a server process."""
import socket

import gevent
import gevent.socket
import pytest

from gsmtpd.deadline import Clock, Expired, Watchdog
from gsmtpd.wire import Wire


@pytest.fixture(autouse=True)
def guard():
    """A wait the watchdog fails to end fails the test in seconds, not at pytest's 300."""
    with gevent.Timeout(10, AssertionError("a wait was not ended")):
        yield


@pytest.fixture
def watchdog():
    """A watchdog ticking every 20 ms in this process's event loop."""
    dog = Watchdog()
    dog.start(0.2)
    yield dog
    dog.stop()


@pytest.fixture
def pair():
    server, client = gevent.socket.socketpair()
    yield server, client
    server.close()
    client.close()


def watched(dog: Watchdog, wait: float) -> Clock:
    clock = Clock(wait, gevent.getcurrent())
    dog.clocks.add(clock)
    return clock


def test_a_silent_client_is_cut_off_after_one_wait(watchdog, pair):
    server, client = pair
    clock = watched(watchdog, 0.2)
    wire = Wire(server, clock)
    with pytest.raises(socket.timeout):
        wire.read_line(512, 30.0)
    assert clock.expires is None, "the clock is left unarmed for the next wait"


def test_a_client_in_time_is_not_cut_off(watchdog, pair):
    server, client = pair
    clock = watched(watchdog, 30.0)
    wire = Wire(server, clock)
    gevent.spawn_later(0.1, client.sendall, b"NOOP\r\n")
    assert wire.read_line(512, 30.0) == b"NOOP"
    assert clock.expires is None


def test_a_drip_gets_expired_at_the_first_read_past_the_phase_deadline(pair):
    """No watchdog here: it would end a wait that spans the deadline with socket.timeout
    (as it should); this is the other half, the read that returns past it."""
    server, client = pair
    wire = Wire(server, Clock(30.0, gevent.getcurrent()))

    def drip():
        for _ in range(200):
            client.sendall(b"x")
            gevent.sleep(0.02)

    dripper = gevent.spawn(drip)
    try:
        with pytest.raises(Expired):
            wire.read_line(512, 0.3)
    finally:
        dripper.kill()


def test_a_client_that_never_reads_is_cut_off(watchdog, pair):
    server, client = pair
    clock = watched(watchdog, 0.2)
    wire = Wire(server, clock)
    wire.send(b"x" * (64 << 20))     # far more than both socket buffers hold
    with pytest.raises(socket.timeout):
        wire.flush()
    assert clock.expires is None


def test_bounded_ends_a_wait_made_by_other_code(watchdog, pair):
    """The PROXY header's reads and the TLS handshake block in code that is not ours."""
    server, client = pair
    clock = watched(watchdog, 30.0)
    with pytest.raises(socket.timeout):
        with clock.bounded(0.2):
            server.recv(10)
    assert clock.expires is None
    client.sendall(b"PROXY")
    with clock.bounded(30.0):
        assert server.recv(10) == b"PROXY"


def test_the_watchdog_leaves_unwatched_and_unblocked_connections_alone(watchdog, pair):
    server, client = pair
    clock = Clock(0.01, gevent.getcurrent())     # not watched
    clock.block()
    gevent.spawn_later(0.3, client.sendall, b"late\r\n")
    assert server.recv(10) == b"late\r\n"
    clock.unblock()
    watchdog.clocks.add(clock)                   # watched, but not blocked:
    gevent.sleep(0.1)                            # five ticks that must not raise into us


def test_quiet_for_tells_a_silent_client_from_an_early_talker(pair):
    server, client = pair
    assert Clock.quiet_for(server, 0.05)
    client.sendall(b"EHLO early\r\n")
    assert not Clock.quiet_for(server, 5.0)


def test_the_watchdog_stops_and_restarts(pair):
    server, client = pair
    dog = Watchdog()
    dog.start(60.0)
    dog.start(0.2)                               # a reload with a shorter timeout
    clock = watched(dog, 0.2)
    try:
        with pytest.raises(socket.timeout):
            Wire(server, clock).read_line(512, 30.0)
    finally:
        dog.stop()
    assert dog.timer is None
