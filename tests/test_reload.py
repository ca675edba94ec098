"""The reload rules (reload.py) and the master -> worker pipe (control.py), without a server
process: what a HUP may change in place, what needs new workers, what needs a restart."""
from __future__ import annotations

import os

from gsmtpd import config as configuration
from gsmtpd import control, reload


def load(*argv: str):
    return configuration.load(["--listen", "127.0.0.1", "--port", "2525", "--workers", "2",
                               "--allowed-hosts", "test.org", *argv], environ={})


def test_what_a_server_changes_in_place_needs_no_new_workers():
    running = load()
    config, new_workers, notes = reload.settle(running, load("--allowed-hosts", "new.test", "--max-size", "99"),
                                               alone=False)
    assert (config.allowed_hosts, config.max_size, new_workers, notes) == (["new.test"], 99, False, [])


def test_listeners_store_or_worker_count_need_new_workers_under_a_master():
    running = load()
    for argv in (("--port", "2526"), ("--store", "sqlite:///other.db"), ("--workers", "3")):
        config, new_workers, notes = reload.settle(running, load(*argv), alone=False)
        assert new_workers and notes == [], argv


def test_user_and_workers_1_are_kept_under_a_master():
    running = load()
    config, new_workers, notes = reload.settle(running, load("--workers", "1", "--user", "nobody"), alone=False)
    assert (config.workers, config.user, new_workers) == (2, "", False)
    assert notes == ["reload: workers = 1 (no master) takes a restart; keeping 2 workers",
                     "reload: a new user takes a restart"]


def test_a_single_process_keeps_its_sockets_and_store_and_says_so():
    running = load("--workers", "1")
    config, new_workers, notes = reload.settle(
        running, load("--workers", "1", "--port", "2526", "--store", "sqlite:///other.db", "--max-errors", "3"),
        alone=True)
    assert (config.port, config.store, config.max_errors, new_workers) == (2525, running.store, 3, False)
    assert notes == ["reload: the listeners changed; without a master (--workers 1) that takes a restart",
                     "reload: port changed; without a master (--workers 1) that takes a restart",
                     "reload: store changed; without a master (--workers 1) that takes a restart"]


def test_messages_cross_the_control_pipe_whole_and_in_order():
    read_end, write_end = os.pipe()
    config = load()
    control.send(write_end, control.config_message(config))
    control.send(write_end, control.DRAIN)
    os.close(write_end)
    received = list(control.receive(read_end))
    os.close(read_end)
    assert [message[0] for message in received] == [control.CONFIG, "drain"]
    assert received[0][1].values == config.values and received[1] == control.DRAIN


def test_heartbeat_tells_booting_from_serving():
    beat = control.Heartbeat()
    assert not beat.ready
    beat.serving()
    assert beat.ready and beat.silent_for(beat.read()[0] + 3) == 3
    beat.close()
