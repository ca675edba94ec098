"""The fault scenarios, each a function of (a way to start gsmtpd, a store, the numbers).

The tests in this package run them with modest numbers and assert on what they return;
``bench/reliability.py`` runs them bigger and prints the figures. Each returns a ``Result``:
the load client's ``Report``s (sent/acked/stored/lost/duplicated, p50/p99) and the
scenario's own figures (time to replace a worker, recovery time, peak RSS ...).

``start_server(store, **options)`` is conftest's ``gsmtpd_server`` fixture (or the same class
outside pytest): it starts ``python -m gsmtpd --port 0`` and returns a process object with
``host``, ``port``, ``proc``, ``log()`` and ``stop()``.
"""
from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field

from .loadclient import (Load, Report, RssWatch, SlowDrip, check, describe_drips, filler, in_doubt,
                         loopback_sources, process_tree, raise_nofile, rate)

# Every figure printed by a scenario, for the terminal summary (conftest.py) and the bench.
FIGURES: list[str] = []


@dataclass
class Numbers:
    """How big a run is. The defaults fit the normal test run on a 2-core machine."""
    rate: float = 200.0            # messages per second offered
    concurrency: int = 30          # sender connections at most
    seconds: float = 3.0           # load before a fault, and again after it
    size: int = 2000               # body bytes per message
    per_connection: int = 5        # messages per connection for kill/TERM: idle sessions too
    workers: int = 2               # for the scenarios that need a master
    save_timeout: float = 3.0
    outage: float = 10.0           # seconds MariaDB is down
    stall: float = 8.0             # seconds new_mail is locked
    queue_max: int = 100           # for the stall: a small queue bound
    stall_concurrency: int = 150   # more clients than the queue holds
    stall_size: int = 20000
    slow: int = 1000               # slow-drip connections
    slow_sources: int = 25         # spread over 127.0.0.2 ... (max_per_ip)
    command_timeout: float = 5.0   # --timeout for the slow-drip scenario
    data_timeout: float = 8.0      # --data-timeout for it
    large: int = 10                # concurrent large messages
    large_size: int = 20_000_000
    large_packet: int = 128 << 20  # max_allowed_packet for the "stored whole" half


BENCH = Numbers(rate=500.0, concurrency=60, seconds=10.0, slow=2000, slow_sources=50,
                stall_concurrency=300, queue_max=200, command_timeout=6.0, data_timeout=10.0)


# How quickly things should happen. These measure the machine as much as the code, so the
# tests assert the behaviour (the 451, the 421, the replacement, the recovery) and
# bench/reliability.py checks these durations and prints the ones missed.
REPLY_MARGIN = 1.5      # seconds past the save timeout that a reply may take (scheduling, a round trip)
RECOVERY = 6.0          # seconds from the database's return to a stored message
REPLACEMENT = 10.0      # seconds from a worker's death to its replacement
CUT_OFF_MARGIN = 3.0    # seconds past a slow client's deadline for the cut-off to reach it
P99_FLOOR = 0.05        # beside slow clients, p99 to 250 within 2x calm, or this many seconds


@dataclass
class Result:
    name: str
    reports: list[Report] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    timing: list[tuple[str, bool]] = field(default_factory=list)   # (target, met): for the bench

    def text(self) -> str:
        lines = [report.line() for report in self.reports]
        if self.figures:
            lines.append(f"{self.name}: " + " ".join(f"{k}={v}" for k, v in self.figures.items()))
        return "\n".join(lines)

    def timing_missed(self) -> list[str]:
        return [target for target, met in self.timing if not met]

    def publish(self) -> "Result":
        FIGURES.append(self.text())
        print(self.text(), flush=True)
        return self


def per_ip(n: Numbers) -> int:
    """--max-per-ip for a run: every load connection comes from 127.0.0.1."""
    return max(50, n.concurrency, n.stall_concurrency, n.large) + 50


def new_run(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def workers_of(pid: int, want: int, timeout: float = 15.0, exclude: set[int] = frozenset()) -> list[int]:
    """The master's worker processes, once there are ``want`` of them that are not in
    ``exclude`` (dead ones being replaced); [] when none appear."""
    deadline = time.monotonic() + timeout
    found: list[int] = []
    while time.monotonic() < deadline:
        found = [p for p in process_tree(pid)[1:] if p not in exclude and alive(p)]
        if len(found) >= want:
            return found
        time.sleep(0.05)
    return found


def socket_count(pid: int) -> int:
    try:
        return sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
                   if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
    except OSError:
        return 0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


# --- 1. kill -9


class NoMaster(Exception):
    """gsmtpd started with --workers N has no worker processes: there is no prefork master."""


def kill_worker(start_server, store, n: Numbers) -> Result:
    """kill -9 one worker under load: the master replaces it, nothing acknowledged is lost."""
    server = start_server(store, workers=n.workers, save_timeout=n.save_timeout, max_per_ip=per_ip(n))
    workers = workers_of(server.proc.pid, n.workers)
    if len(workers) < n.workers:
        raise NoMaster(f"--workers {n.workers}: found worker processes {workers}")
    load = Load((server.host, server.port), rate=n.rate, concurrency=n.concurrency,
                duration=n.seconds * 2 + 3, size=n.size, per_connection=n.per_connection,
                run_id=new_run("killworker")).start()
    time.sleep(n.seconds)
    # The busiest worker: the one holding the most sockets (client connections).
    victim = max(workers, key=socket_count)
    in_flight = socket_count(victim)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    replaced = workers_of(server.proc.pid, n.workers, timeout=20, exclude={victim})
    replaced_after = time.monotonic() - killed_at if len(replaced) >= n.workers else None
    attempts = load.wait()
    report = check(attempts, store.connect, load.run_id, "kill -9 worker")
    result = Result("kill -9 worker", [report], {
        "victim_sockets": in_flight, "replaced_after": secs(replaced_after), "workers_after": len(replaced),
        "acked_after_kill": sum(1 for a in attempts if a.acked and a.dot_at > killed_at + 0.5),
        "master_alive": server.proc.poll() is None, "rate": f"{rate(attempts):.0f}/s"})
    result.replaced_after = replaced_after
    result.master_alive = server.proc.poll() is None
    result.timing = [(f"worker replaced within {REPLACEMENT:.0f}s",
                      replaced_after is not None and replaced_after < REPLACEMENT)]
    return result


def kill_server(start_server, store, n: Numbers) -> Result:
    """kill -9 the master and every worker under load, start a new server on the same store:
    nothing acknowledged is lost; the new server stores mail again."""
    options = dict(workers=n.workers, save_timeout=n.save_timeout, max_per_ip=per_ip(n))
    server = start_server(store, **options)
    load = Load((server.host, server.port), rate=n.rate, concurrency=n.concurrency,
                duration=n.seconds * 2 + 2, size=n.size, per_connection=n.per_connection,
                run_id=new_run("killserver")).start()
    time.sleep(n.seconds)
    tree = process_tree(server.proc.pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = time.monotonic()
    server.proc.wait(10)
    # The kernel has reset every open connection; the clients see refusals until the new
    # server listens (on a new port: the load follows it).
    again = start_server(store, **options)
    load.target = (again.host, again.port)
    restarted_after = time.monotonic() - killed_at
    attempts = load.wait()
    report = check(attempts, store.connect, load.run_id, "kill -9 server")
    return Result("kill -9 server", [report], {
        "processes_killed": len(tree), "restarted_after": secs(restarted_after),
        "acked_after_restart": sum(1 for a in attempts if a.acked and a.dot_at > killed_at + restarted_after),
        "rate": f"{rate(attempts):.0f}/s"})


# --- 2. MariaDB down for a while


def db_outage(start_server, db, store, n: Numbers, crash: bool = False) -> Result:
    """Stop the throwaway MariaDB (clean shutdown, or kill -9 with ``crash``) for
    ``n.outage`` seconds under load, then start it again; gsmtpd is not restarted."""
    server = start_server(store, workers=1, save_timeout=n.save_timeout, max_per_ip=per_ip(n))
    load = Load((server.host, server.port), rate=n.rate, concurrency=n.concurrency,
                duration=n.seconds + n.outage + n.seconds + 8, size=n.size,
                run_id=new_run("outage")).start()
    time.sleep(n.seconds)
    stopping_at = time.monotonic()
    db.kill() if crash else db.stop()
    down_at = time.monotonic()
    time.sleep(n.outage)
    db.start()
    up_at = time.monotonic()
    # Keep the load going until mail has been stored again for a while (bounded by duration).
    while load.thread.is_alive() and time.monotonic() < up_at + n.seconds + 8:
        first = load.first_ack_after(up_at)
        if first is not None and time.monotonic() > first + n.seconds:
            break
        time.sleep(0.1)
    attempts = load.stop()
    report = check(attempts, store.connect, load.run_id, "MariaDB " + ("kill -9" if crash else "stopped"),
                   doubtful=in_doubt(server.log()))
    during = [a for a in attempts if a.sent and down_at + 0.2 <= a.dot_at <= up_at]
    first = load.first_ack_after(up_at)
    result = Result(report.name + f" {n.outage:.0f}s", [report], {
        "stop_took": secs(down_at - stopping_at),
        "during_outage": dict(codes_of(during)),
        "max_wait_during": secs(max((a.ended - a.dot_at for a in during if a.ended), default=None)),
        "stored_again_after": secs(None if first is None else first - up_at),
        "save_timeout": n.save_timeout})
    result.during = during
    result.recovered_after = None if first is None else first - up_at
    result.timing = [
        (f"every reply within save_timeout + {REPLY_MARGIN}s",
         report.max_reply_wait is not None and report.max_reply_wait <= n.save_timeout + REPLY_MARGIN),
        (f"stored again within {RECOVERY:.0f}s", result.recovered_after is not None
         and result.recovered_after <= RECOVERY)]
    return result


def codes_of(attempts) -> dict:
    counts: dict = {}
    for a in attempts:
        key = a.reply[:9] if a.code is not None else "no reply"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- 3. a stalled database


def db_stall(start_server, store, n: Numbers) -> Result:
    """LOCK TABLES new_mail WRITE from another connection for ``n.stall`` seconds under more
    clients than the queue holds: 451 after the save timeout, bounded memory, recovery."""
    server = start_server(store, workers=1, save_timeout=n.save_timeout, queue_max=n.queue_max,
                          max_per_ip=per_ip(n))
    watch = RssWatch(server.proc.pid).start()
    load = Load((server.host, server.port), rate=n.rate, concurrency=n.stall_concurrency,
                duration=n.seconds + n.stall + n.seconds + 6, size=n.stall_size,
                timeout=n.save_timeout * 4 + 30, run_id=new_run("stall")).start()
    time.sleep(n.seconds)
    calm_mb = watch.now_mb()
    locker = store.connect()
    with locker.cursor() as cur:
        cur.execute("LOCK TABLES new_mail WRITE")
    locked_at = time.monotonic()
    time.sleep(n.stall)
    with locker.cursor() as cur:
        cur.execute("UNLOCK TABLES")
    locker.close()
    unlocked_at = time.monotonic()
    while load.thread.is_alive() and time.monotonic() < unlocked_at + n.seconds + 6:
        first = load.first_ack_after(unlocked_at)
        if first is not None and time.monotonic() > first + n.seconds:
            break
        time.sleep(0.1)
    attempts = load.stop()
    watch.stop()
    report = check(attempts, store.connect, load.run_id, "LOCK TABLES")
    # Sent while locked, early enough that their save timeout ran out before the unlock.
    during = [a for a in attempts if a.sent and locked_at + 0.1 <= a.dot_at <= unlocked_at - n.save_timeout - 1]
    first = load.first_ack_after(unlocked_at)
    waits_451 = [a.ended - a.dot_at for a in attempts if a.code == 451 and a.ended]
    peak_mb = watch.peak_between(locked_at, unlocked_at + 1)
    result = Result(f"LOCK TABLES {n.stall:.0f}s", [report], {
        "during_stall": dict(codes_of(during)),
        "451_wait_min": secs(min(waits_451, default=None)), "451_wait_max": secs(max(waits_451, default=None)),
        "max_wait_during": secs(max((a.ended - a.dot_at for a in during if a.ended), default=None)),
        "save_timeout": n.save_timeout, "queue_max": n.queue_max, "clients": n.stall_concurrency,
        "rss_calm_mb": round(calm_mb), "rss_peak_stall_mb": round(peak_mb),
        "stored_again_after": secs(None if first is None else first - unlocked_at)})
    result.during = during
    result.waits_451 = waits_451
    result.calm_mb, result.peak_mb = calm_mb, peak_mb
    result.recovered_after = None if first is None else first - unlocked_at
    # Once a bug: a message the writer had claimed waited for the database's own timeout on
    # top of its time in the queue, and a reconnect re-ran CREATE TABLE against the lock (~2x).
    waits_during = [a.ended - a.dot_at for a in during if a.ended]
    result.timing = [
        (f"every 451 within save_timeout + {REPLY_MARGIN}s", max(waits_451, default=0) <= n.save_timeout + REPLY_MARGIN),
        (f"every reply during the stall within save_timeout + {REPLY_MARGIN}s",
         max(waits_during, default=0) <= n.save_timeout + REPLY_MARGIN),
        (f"stored again within {RECOVERY:.0f}s", result.recovered_after is not None
         and result.recovered_after <= RECOVERY)]
    return result


# --- 4. SIGTERM under load


def sigterm(start_server, store, n: Numbers) -> Result:
    """TERM under load: exit status 0, every 250 has its row, no 250 after the exit."""
    server = start_server(store, workers=n.workers, save_timeout=n.save_timeout, max_per_ip=per_ip(n))
    load = Load((server.host, server.port), rate=n.rate, concurrency=n.concurrency,
                duration=n.seconds + 6, size=n.size, per_connection=n.per_connection,
                run_id=new_run("sigterm")).start()
    time.sleep(n.seconds)
    term_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        status = server.proc.wait(60)
    except Exception:  # noqa: BLE001 - still running: that is the failure we report
        status = None
    exited_at = time.monotonic()
    attempts = load.stop()
    report = check(attempts, store.connect, load.run_id, "SIGTERM")
    acked_after_exit = [a for a in attempts if a.acked and a.ended > exited_at]
    result = Result("SIGTERM", [report], {
        "exit_status": status, "exit_after": secs(exited_at - term_at),
        "acked_after_term": sum(1 for a in attempts if a.acked and a.ended > term_at),
        "acked_after_exit": len(acked_after_exit),
        "replies_after_term": dict(codes_of([a for a in attempts if a.sent and a.dot_at > term_at])),
        "log_stopped": "stopped" in server.log()})
    result.status = status
    result.acked_after_exit = acked_after_exit
    return result


# --- 5. slow and hostile clients next to good ones


def hostile(start_server, store, n: Numbers) -> Result:
    """Good clients' time to 250, calm and then beside ``n.slow`` slow-drip connections that
    the server must cut off at --timeout (command lines) and --data-timeout (DATA)."""
    raise_nofile(n.slow * 2 + 2000)
    server = start_server(store, workers=1, save_timeout=n.save_timeout, timeout=n.command_timeout,
                          data_timeout=n.data_timeout, max_clients=n.slow + n.concurrency + 500,
                          max_per_ip=max(50, n.slow // n.slow_sources + 10))
    target = (server.host, server.port)
    calm_seconds = max(4.0, n.seconds)
    calm_load = Load(target, rate=n.rate, concurrency=n.concurrency, duration=calm_seconds,
                     size=n.size, run_id=new_run("calm"))
    calm = check(calm_load.run(), store.connect, calm_load.run_id, "calm")
    drip = SlowDrip(target, count=n.slow, sources=loopback_sources(n.slow_sources),
                    give_up=n.data_timeout + 30, open_rate=1000).start()
    drip.wait_greeted(60)
    open_now = drip.open_now
    busy_load = Load(target, rate=n.rate, concurrency=n.concurrency,
                     duration=min(calm_seconds, n.command_timeout - 1.5), size=n.size,
                     run_id=new_run("hostile"))
    busy_attempts = busy_load.run()
    open_after = drip.open_now
    busy = check(busy_attempts, store.connect, busy_load.run_id, f"beside {n.slow} slow")
    drips = drip.wait()
    summary = describe_drips(drips)
    result = Result(f"{n.slow} slow-drip clients", [calm, busy], {
        "slow_open_during_load": f"{open_now}..{open_after}", "p99_total_ratio": (
            f"{busy.p99_total / calm.p99_total:.2f}" if calm.p99_total and busy.p99_total else "-"),
        "timeout": n.command_timeout, "data_timeout": n.data_timeout, **summary})
    result.calm, result.busy, result.drips = calm, busy, drips
    result.open_now, result.open_after = open_now, open_after
    late = [d for d in drips if d.connected and (d.seconds is None or d.seconds > CUT_OFF_MARGIN + (
        n.command_timeout if d.mode == "command" else n.data_timeout))]
    result.timing = [
        (f"p99 to 250 beside slow clients within 2x calm or {P99_FLOOR * 1000:.0f} ms",
         busy.p99_total is not None and calm.p99_total is not None
         and busy.p99_total <= max(2 * calm.p99_total, P99_FLOOR)),
        (f"every slow client cut off within its deadline + {CUT_OFF_MARGIN:.0f}s ({len(late)} later)", not late)]
    return result


# --- 6. large mail


def large_mail(start_server, db, store, n: Numbers, packet: int | None = None) -> Result:
    """``n.large`` concurrent messages of ``n.large_size`` bytes. With MariaDB's default 16 MiB
    max_allowed_packet none fits: each must get 552 5.3.4; with ``packet`` raised each must be
    stored whole. Never a 250 without the whole message in its row; peak RSS reported."""
    conn = db.connect()
    with conn.cursor() as cur:
        if packet:
            cur.execute(f"SET GLOBAL max_allowed_packet = {int(packet)}")
        cur.execute("SELECT @@global.max_allowed_packet")
        effective = cur.fetchone()[0]
    conn.close()
    body = filler(n.large_size)
    server = start_server(store, workers=1, max_size=n.large_size + 5_000_000, save_timeout=60)
    watch = RssWatch(server.proc.pid).start()
    time.sleep(0.3)
    idle_mb = watch.now_mb()
    load = Load((server.host, server.port), rate=0, concurrency=n.large, count=n.large, body=body,
                timeout=180, run_id=new_run("large"))
    attempts = load.run()
    watch.stop()
    report = check(attempts, store.connect, load.run_id, f"{n.large}x{n.large_size // 1_000_000}MB "
                   f"packet={effective >> 20}MiB")
    whole = stored_whole(store, load.run_id, body)
    result = Result(report.name, [report], {
        "replies": dict(codes_of([a for a in attempts if a.sent])),
        "stored_whole": sum(whole.values()), "stored_broken": sum(1 for ok in whole.values() if not ok),
        "rss_idle_mb": round(idle_mb), "rss_peak_mb": round(watch.peak_mb),
        "seconds": secs(max((a.ended or 0) for a in attempts) - min(a.started for a in attempts))})
    result.whole, result.attempts, result.effective_packet = whole, attempts, effective
    result.idle_mb, result.peak_mb = idle_mb, watch.peak_mb
    return result


def stored_whole(store, run_id: str, body: bytes) -> dict[str, bool]:
    """subject -> whether the stored raw message ends with the body byte for byte (the
    Received header and our headers come before it)."""
    digest = hashlib.md5(body).hexdigest()
    conn = store.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT subject, MD5(RIGHT(mail, %s)), LENGTH(mail) FROM new_mail WHERE subject LIKE %s",
                        (len(body), run_id + " %"))
            return {subject: md5 == digest and length > len(body) for subject, md5, length in cur.fetchall()}
    finally:
        conn.close()
