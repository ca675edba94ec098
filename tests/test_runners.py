"""Runner greenlets (gsmtpd/runners.py): a finished connection's greenlet serves the next."""
import gevent
from gevent.event import Event

from gsmtpd.runners import Runners


class Recorder:
    """serve(name, done): remembers which greenlet served ``name``; returns when ``done`` is set."""

    def __init__(self):
        self.served_by = {}

    def __call__(self, name: str, done: Event) -> None:
        self.served_by[name] = gevent.getcurrent()
        done.wait()


def hand(runners: Runners, name: str) -> Event:
    """Hand a connection over as the listener does: from the event loop."""
    done = Event()
    gevent.get_hub().loop.run_callback(runners.hand, name, done)
    settle()
    return done


def settle() -> None:
    """Let the loop run what is ready: a callback, then what it started."""
    for _ in range(3):
        gevent.sleep(0)


def test_one_greenlet_serves_connection_after_connection():
    recorder = Recorder()
    runners = Runners(recorder)
    hand(runners, "first").set()
    settle()
    hand(runners, "second").set()
    settle()
    assert recorder.served_by["first"] is recorder.served_by["second"]
    assert len(runners.idle) == 1
    runners.stop()
    settle()
    assert not runners.idle and recorder.served_by["first"].dead


def test_at_most_keep_runners_wait():
    recorder = Recorder()
    runners = Runners(recorder, keep=1)
    first, second = hand(runners, "first"), hand(runners, "second")
    assert recorder.served_by["first"] is not recorder.served_by["second"], "both at once: two runners"
    first.set()
    second.set()
    settle()
    assert len(runners.idle) == 1
    assert [recorder.served_by[n].dead for n in ("first", "second")].count(True) == 1


def test_a_kill_that_comes_after_its_connection_ended_ends_only_that_runner():
    """Server.stop() kills idle sessions without waiting; when the kill lands after the
    session ended, the runner is waiting for its next connection. It ends quietly, is no
    longer offered connections, and the next one gets a new runner."""
    recorder = Recorder()
    runners = Runners(recorder)
    hand(runners, "ended").set()
    settle()
    runner = recorder.served_by["ended"]
    runner.kill(RuntimeError("meant for the session"), block=False)
    settle()
    assert runner.dead and not runners.idle
    hand(runners, "next").set()
    settle()
    assert recorder.served_by["next"] is not runner and not recorder.served_by["next"].dead
