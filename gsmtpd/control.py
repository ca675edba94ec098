"""The link between the master and each worker it forks, both ends in one place.

- The heartbeat: a shared anonymous mapping per worker, made by the master before the fork.
  The worker writes the monotonic time of its last beat (and once, that it serves); the
  master reads it to tell a booted worker from a booting one and a stuck one from a busy one.
  CLOCK_MONOTONIC is the same clock in every process of the machine.
- The control pipe, master -> worker: length-prefixed pickles, ``("config", Config)`` to
  apply a reloaded configuration and ``("drain",)`` to stop accepting and finish.
- The parent-death signal: a worker gets SIGTERM when the master dies, even by SIGKILL.

Signals (TERM, QUIT, HUP, USR1) are the third channel; worker.py says what each one does.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import signal
import struct
import time
from typing import Iterator

import gevent.os

# --- the heartbeat. Layout: monotonic time of the last beat (double), then a state byte.
HEARTBEAT = struct.Struct("dB")
BOOTING, READY = 0, 1


class Heartbeat:
    """One worker's heartbeat; made in the master, shared with the worker by the fork."""

    def __init__(self) -> None:
        self.mapping = mmap.mmap(-1, HEARTBEAT.size)
        HEARTBEAT.pack_into(self.mapping, 0, time.monotonic(), BOOTING)

    def read(self) -> tuple[float, int]:
        return HEARTBEAT.unpack_from(self.mapping, 0)

    @property
    def ready(self) -> bool:
        return self.read()[1] == READY

    def silent_for(self, now: float) -> float:
        return now - self.read()[0]

    # --- in the worker

    def beat(self) -> None:
        HEARTBEAT.pack_into(self.mapping, 0, time.monotonic(), self.read()[1])

    def serving(self) -> None:
        HEARTBEAT.pack_into(self.mapping, 0, time.monotonic(), READY)

    def close(self) -> None:
        self.mapping.close()


# --- the control pipe
LENGTH = struct.Struct("!I")


CONFIG = "config"       # ("config", Config): apply this (already validated) configuration in place
DRAIN = ("drain",)      # replaced by new workers: stop accepting, finish the open sessions


def config_message(config) -> tuple:
    return (CONFIG, config)


def send(fd: int, message: tuple) -> None:
    data = pickle.dumps(message)
    os.write(fd, LENGTH.pack(len(data)) + data)


def receive(fd: int) -> Iterator[tuple]:
    """In the worker: each message from the master as it arrives, until the pipe closes
    (the master is gone). Blocks only the calling greenlet."""
    gevent.os.make_nonblocking(fd)
    buffer = b""
    while True:
        try:
            chunk = gevent.os.nb_read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buffer)
            if len(buffer) < LENGTH.size + size:
                break
            yield pickle.loads(buffer[LENGTH.size:LENGTH.size + size])
            buffer = buffer[LENGTH.size + size:]


def die_with_parent() -> None:
    """Linux: SIGTERM (a graceful stop) when the master dies, even by SIGKILL, so no orphan
    keeps the port. The worker's heartbeat greenlet also notices a new parent."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
