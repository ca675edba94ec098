"""The byte budget (--memory-budget) and each message held and sent once: real servers,
real sockets, the real MariaDB. The big-data cases run one worker and modest counts, so
the file stays within a minute or two."""
from __future__ import annotations

import hashlib
import smtplib
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER
from gsmtpd import budget as B
from test_metrics import scrape, value

MiB = 1 << 20
LINE = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"ABCD\r\n"
# README "Memory": a worker's peak RSS stays under its idle RSS + the budget + 3 x max_size
# (the copies of the one message being unstuffed or parsed at that instant).
TRANSIENT_COPIES = 3


def mail(size: int, subject: str) -> bytes:
    head = f"From: a@example.org\r\nSubject: {subject}\r\n\r\n".encode()
    return head + LINE * ((size - len(head)) // len(LINE))


def rss_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def metrics_port(server) -> int:
    return int(server.wait_log(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))


class CountingForwarder:
    """127.0.0.1:<port 0> -> MariaDB, counting the bytes the client sends: exactly what
    gsmtpd sends to the database (the server's global Bytes_received counts everyone's)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sent = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                if outbound:
                    with self.lock:
                        self.sent += len(data)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)      # pass the end of the stream on
        except OSError:                        # the other side is gone: so is this one
            sink.close()

    def close(self) -> None:
        self.listener.close()


# --- the budget object itself


def test_a_reservation_grows_in_steps_is_refused_when_full_and_released_on_exit():
    budget = B.Budget(64 * MiB)
    big = budget.hold()
    with big:
        allowed = big.room(1)
        assert allowed >= 1 and budget.used == B.cost(allowed)
        while allowed and allowed < 40 * MiB:
            allowed = big.room(allowed + 64 * 1024)
        # Big mail may use the budget up to its last eighth, never more.
        assert allowed == 0 and big.refused and budget.refusals == 1
        assert budget.limit - budget.headroom - B.cost(2 * B.STEP) < budget.used <= budget.limit - budget.headroom
        # A small message still fits in the eighth kept for small ones.
        with budget.hold() as small:
            assert small.room(4096) >= 4096 and not small.refused
        # A declared size that does not fit now: 452; one that never could: 552.
        assert budget.check_size(9 * MiB, 10 * MiB).code == 452
        assert budget.check_size(30 * MiB, 40 * MiB).code == 552
        assert budget.check_size(11 * MiB, 10 * MiB).code == 552
    assert budget.used == 0 and not budget.live and budget.largest == 0
    assert budget.check_size(9 * MiB, 10 * MiB) is None


# --- over real sockets


def test_twenty_senders_of_9_mib_share_a_64_mib_budget_and_small_mail_keeps_flowing(mysql_store, gsmtpd_server):
    """20 senders of 9 MiB against 64 MiB: some get 452 4.3.1 (at MAIL for their SIZE, or
    after the final dot) and retry; all are stored, none lost; the worker's peak RSS stays
    under idle + budget + 3 x max_size; a 4 KB sender gets its 250s all along."""
    budget, max_size = 64 * MiB, 10 * MiB
    server = gsmtpd_server(mysql_store, workers=1, memory_budget=budget, max_size=max_size,
                           save_timeout=60, metrics="127.0.0.1:0")
    port = metrics_port(server)
    pid = server.proc.pid
    idle_kb = rss_kb(pid, "VmRSS")
    big = mail(9 * MiB, "big")
    refusals: list[str] = []
    stored: list[int] = []
    stored_at: list[float] = []
    problems: list[str] = []

    def big_sender(number: int) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                with server.smtp() as client:
                    client.sendmail("a@example.org", [f"big{number}@test.org"], big)
                stored.append(number)
                stored_at.append(time.monotonic())
                return
            except smtplib.SMTPSenderRefused as refused:       # 452 at MAIL: its SIZE
                refusals.append(f"MAIL {refused.smtp_code} {refused.smtp_error.decode()}")
            except smtplib.SMTPDataError as refused:           # 452 after the final dot
                refusals.append(f"DATA {refused.smtp_code} {refused.smtp_error.decode()}")
            if not refusals[-1].split()[1].startswith("4"):
                problems.append(refusals[-1])
                return
            time.sleep(0.2)       # the sender's retry interval, not a synchronisation
        problems.append(f"sender {number} not stored in time")

    small_replies: list[str] = []
    small_seconds: list[float] = []
    small_at: list[float] = []
    done = threading.Event()

    def small_sender() -> None:
        try:
            send_small()
        except Exception as exc:  # reported by the test, not lost in a thread
            problems.append(f"small sender: {exc!r}")

    def send_small(count: int | None = None) -> None:
        small = mail(4096, "small")
        with server.smtp() as client:
            # The final dot goes alone: without NODELAY it waits for a delayed ACK (40 ms).
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.ehlo()
            while not done.is_set() and (count is None or len(small_seconds) < count):
                assert client.mail("a@example.org")[0] == 250
                assert client.rcpt("small@test.org")[0] == 250
                client.putcmd("data")
                assert client.getreply()[0] == 354
                client.send(small)          # ends with CRLF; no line starts with a dot
                started = time.monotonic()
                client.send(b".\r\n")
                code, text = client.getreply()
                small_seconds.append(time.monotonic() - started)
                small_at.append(time.monotonic())
                small_replies.append(f"{code} {text.decode()[:5]}")

    send_small(30)                   # on the idle server first, for the report's comparison
    idle_seconds = sorted(small_seconds)
    small_seconds.clear()
    small_at.clear()
    senders = [threading.Thread(target=big_sender, args=(n,)) for n in range(20)]
    small = threading.Thread(target=small_sender)
    small.start()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.set()
    small.join()

    peak_kb = rss_kb(pid, "VmHWM")
    assert problems == []
    assert sorted(stored) == list(range(20))
    assert refusals and all(r.split(" ", 1)[1].startswith("452 4.3.1") for r in refusals), refusals
    assert mysql_store.count() == 20 + len(small_replies) and len(small_replies) == len(small_at) + len(idle_seconds)
    assert [r for r in small_replies if not r.startswith("250 2.0.0")] == []
    # Small mail went on while big mail was refused and stored: 250s before the last big one.
    assert sum(1 for t in small_at if t < max(stored_at)) >= 2, (small_at, stored_at)
    rows = mysql_store.rows("subject = 'big'")
    assert len(rows) == 20 and all(bytes(r["mail"]).endswith(big) for r in rows)
    bound_kb = idle_kb + (budget + TRANSIENT_COPIES * max_size) // 1024
    assert peak_kb <= bound_kb, (peak_kb, idle_kb)
    text = scrape(port)[1]
    assert value(text, "gsmtpd_memory_budget_refusals_total") == len(refusals)
    assert value(text, "gsmtpd_memory_budget_used_bytes") == 0
    small_seconds.sort()
    print(f"\n20 x 9 MiB, 64 MiB budget: {len(refusals)} refusals "
          f"({sum(r.startswith('MAIL') for r in refusals)} at MAIL), peak RSS {peak_kb // 1024} MB "
          f"(idle {idle_kb // 1024} MB, bound {bound_kb // 1024} MB); 4 KB sender: {len(small_seconds)} "
          f"messages, dot->250 p50 {small_seconds[len(small_seconds) // 2] * 1000:.1f} ms, "
          f"p99 {small_seconds[int(len(small_seconds) * 0.99)] * 1000:.1f} ms (idle server: p50 "
          f"{idle_seconds[len(idle_seconds) // 2] * 1000:.1f} ms, p99 {idle_seconds[int(len(idle_seconds) * 0.99)] * 1000:.1f} ms)")


def test_a_9_mib_message_to_100_recipients_crosses_to_mariadb_once(mysql_store, gsmtpd_server):
    forwarder = CountingForwarder((MYSQL_HOST, MYSQL_PORT))
    url = f"mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@127.0.0.1:{forwarder.port}/{mysql_store.database}"
    try:
        # 100 rows of 2 x 9 MiB are more than --max-stored-bytes allows by default (1 GiB:
        # the RCPTs past it get 452, see the next test): raised here, with the save timeout.
        server = gsmtpd_server(SimpleNamespace(url=url), workers=1, save_timeout=120, max_stored_bytes=4 << 30)
        message = mail(9 * MiB, "hundred")
        recipients = [f"r{n}@test.org" for n in range(100)]
        before = forwarder.sent
        started = time.monotonic()
        with server.smtp() as client:
            client.sock.settimeout(150)    # the commit of 100 rows: 10-40 s on a busy machine
            assert client.sendmail("a@example.org", recipients, message) == {}
        seconds = time.monotonic() - started
        sent = forwarder.sent - before
    finally:
        forwarder.close()
    rows = mysql_store.rows()
    assert sorted(row["recipient"] for row in rows) == sorted(recipients)
    first = bytes(rows[0]["mail"])
    assert first.endswith(message)
    assert all(bytes(row["mail"]) == first and row["body"] == rows[0]["body"] for row in rows)
    assert len({row["hash"] for row in rows}) == 100
    # Its mail and its body, once each: about 2 x the message for a text message (rows
    # sent whole: 200 x).
    assert sent < 2.1 * len(message), sent
    print(f"\n9 MiB to 100 recipients: {sent / len(message):.3f} x the message sent to MariaDB, "
          f"250 after {seconds:.1f} s")


def test_a_big_declared_size_limits_the_recipients_of_one_transaction(sqlite_store, gsmtpd_server):
    """Rows of 2 x SIZE each, at most --max-stored-bytes: the RCPT past it gets 452 4.5.3
    (RFC 5321 4.5.3.1.10), and the client sends to the rest in another transaction."""
    server = gsmtpd_server(sqlite_store, workers=1, max_stored_bytes=16 * MiB)
    client = server.raw()
    assert client.reply().startswith("220 ")
    assert client.command("EHLO c").startswith("250")
    assert client.command(f"MAIL FROM:<a@example.org> SIZE={1 * MiB}") == "250 2.1.0 Sender OK"
    replies = [client.command(f"RCPT TO:<r{n}@test.org>") for n in range(10)]
    # 8 rows of 2 MiB fit in 16 MiB; the ninth does not.
    assert replies == ["250 2.1.5 Recipient OK"] * 8 + ["452 4.5.3 Too many recipients"] * 2
    assert client.command("RSET") == "250 2.0.0 Reset OK"
    # One recipient always, however big the message: its one row is what it costs anyway.
    assert client.command(f"MAIL FROM:<a@example.org> SIZE={9 * MiB}") == "250 2.1.0 Sender OK"
    assert client.command("RCPT TO:<one@test.org>") == "250 2.1.5 Recipient OK"
    assert client.command("RCPT TO:<two@test.org>") == "452 4.5.3 Too many recipients"


def test_sqlite_stores_a_message_to_many_recipients_from_one_row(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=1)
    message = mail(1 * MiB, "many")
    recipients = [f"r{n}@test.org" for n in range(20)]
    with server.smtp() as client:
        assert client.sendmail("a@example.org", recipients, message) == {}
    rows = sqlite_store.rows()
    assert sorted(row["recipient"] for row in rows) == sorted(recipients)
    digests = {hashlib.sha256(row["mail"]).hexdigest() for row in rows}
    assert len(digests) == 1 and rows[0]["mail"].endswith(message)
    assert {type(row["body"]) for row in rows} == {str} and rows[0]["body"].startswith("abcdef")


def test_declared_size_over_the_free_budget_gets_452_at_mail_and_over_max_size_552(mysql_store, gsmtpd_server):
    """While one session's 14 MiB message fills half a 64 MiB budget, SIZE=15 MiB gets 452
    4.3.1 at MAIL; when that message is in, the same MAIL gets 250. SIZE over max_size:
    552 as always; over what the budget could ever hold: 552 too."""
    server = gsmtpd_server(mysql_store, workers=1, memory_budget=64 * MiB, max_size=30 * MiB)
    filling = server.raw()
    filling.start_data(helo="EHLO c")
    message = mail(14 * MiB, "filling")
    filling.send(message)                        # no final dot yet: the budget stays held
    other = server.raw()
    assert other.reply().startswith("220 ")
    assert other.command("EHLO c").startswith("250")
    assert other.command(f"MAIL FROM:<a@example.org> SIZE={31 * MiB}") == "552 5.3.4 Message size exceeds fixed limit"
    assert other.command(f"MAIL FROM:<a@example.org> SIZE={29 * MiB}") == "552 5.3.4 Message too big for storage"
    deadline = time.monotonic() + 60
    while True:
        reply = other.command(f"MAIL FROM:<a@example.org> SIZE={15 * MiB}")
        if reply.startswith("452") or time.monotonic() > deadline:
            break
        assert other.command("RSET").startswith("250")   # read so far: it fits; ask again
    assert reply == "452 4.3.1 Insufficient system storage, try again later"
    filling.send(b".\r\n")
    assert filling.reply().startswith("250 2.0.0 OK: queued as ")
    assert other.command(f"MAIL FROM:<a@example.org> SIZE={15 * MiB}") == "250 2.1.0 Sender OK"
    assert mysql_store.count() == 1


def wait_metric(port: int, name: str, done, seconds: float = 30) -> float:
    """Scrape until ``done(value)`` (the condition, not a sleep), or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        found = value(scrape(port)[1], name)
        if done(found):
            return found
        assert time.monotonic() < deadline, f"{name} stayed at {found}"
        time.sleep(0.05)


def test_the_budget_is_released_when_a_sender_vanishes_or_times_out_in_data(sqlite_store, gsmtpd_server):
    server = gsmtpd_server(sqlite_store, workers=1, memory_budget=64 * MiB, data_timeout=3, metrics="127.0.0.1:0")
    port = metrics_port(server)
    used = "gsmtpd_memory_budget_used_bytes"
    # A sender that goes away in the middle of its message.
    vanishing = server.raw()
    vanishing.start_data(helo="EHLO c")
    vanishing.send(mail(5 * MiB, "vanishing"))
    assert wait_metric(port, used, lambda v: v >= 10 * MiB) <= 64 * MiB
    assert wait_metric(port, "gsmtpd_largest_message_in_flight_bytes", lambda v: v >= 5 * MiB) < 6 * MiB
    vanishing.sock.close()
    wait_metric(port, used, lambda v: v == 0)
    # A sender whose DATA outlasts --data-timeout: 421, and the budget is free again.
    slow = server.raw()
    slow.start_data(helo="EHLO c")
    slow.send(mail(1 * MiB, "slow"))
    assert wait_metric(port, used, lambda v: v > 0) > 0
    assert slow.reply() == "421 4.4.2 Timeout during DATA, closing connection"
    wait_metric(port, used, lambda v: v == 0)
    assert sqlite_store.count() == 0


# --- a message to many recipients with no SIZE=, EHLO's SIZE, the default budget


def send_raw(server, recipients: list[str], message: bytes, *, bdat: bool, size: int | None = None) -> list[str]:
    """One transaction over a raw socket: the replies to each RCPT, then the one after the
    data (DATA and its final dot, or one BDAT LAST)."""
    client = server.raw()
    try:
        assert client.reply().startswith("220 ")
        assert client.command("EHLO c").startswith("250")
        declared = f" SIZE={size}" if size is not None else ""
        assert client.command(f"MAIL FROM:<a@example.org>{declared}") == "250 2.1.0 Sender OK"
        replies = [client.command(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
        if bdat:
            client.send(f"BDAT {len(message)} LAST\r\n".encode() + message)
            replies.append(client.reply())
        else:
            assert client.command("DATA").startswith("354 ")
            client.send(message)                 # ends with CRLF; no line starts with a dot
            replies.append(client.command("."))
        return replies
    finally:
        client.close()


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_a_message_without_size_to_more_recipients_than_max_stored_bytes_allows_gets_552(any_store, gsmtpd_server, verb):
    """No SIZE=: the RCPTs cannot be held to --max-stored-bytes, so the message is refused
    after its data when its rows (2 x its size, once per recipient) would pass it: 552, for
    a 452 would be retried with the same recipients for ever. Fewer recipients: stored; the
    same message with SIZE= gets 452 4.5.3 at the RCPT past the limit and then its 250."""
    server = gsmtpd_server(any_store, workers=1, max_stored_bytes=4 * MiB)
    message = mail(1 * MiB - 4096, verb)          # 3 rows of 2 x 1 MiB: over 4 MiB; 2 are not
    three = ["r1@test.org", "r2@test.org", "r3@test.org"]
    bdat = verb == "BDAT"
    replies = send_raw(server, three, message, bdat=bdat)
    assert replies == ["250 2.1.5 Recipient OK"] * 3 + [
        "552 5.3.4 Message too big for this many recipients; send it to fewer recipients at a time"]
    assert any_store.count() == 0
    server.wait_log(r"recipients=3 reply=552 5\.3\.4 Message too big for this many recipients")
    replies = send_raw(server, three[:2], message, bdat=bdat)
    assert replies[:2] == ["250 2.1.5 Recipient OK"] * 2 and replies[2].startswith("250 2.0.0 OK: queued as ")
    replies = send_raw(server, three, message, bdat=bdat, size=len(message))
    assert replies[2] == "452 4.5.3 Too many recipients" and replies[3].startswith("250 2.0.0 OK: queued as ")
    rows = any_store.rows()
    assert sorted(row["recipient"] for row in rows) == ["r1@test.org"] * 2 + ["r2@test.org"] * 2
    assert all(bytes(row["mail"]).endswith(message) for row in rows)


def test_ehlo_advertises_no_more_than_the_budget_could_ever_hold(sqlite_store, gsmtpd_server):
    """RFC 1870 4: SIZE is the fixed maximum. A 64 MiB budget holds at most a message of
    (64 - 8) / 2 = 28 MiB (budget.largest_message): with --max-size 40 MiB, EHLO says 28 MiB,
    a MAIL declaring exactly that is taken and one byte more is refused for good."""
    server = gsmtpd_server(sqlite_store, workers=1, memory_budget=64 * MiB, max_size=40 * MiB)
    client = server.raw()
    assert client.reply().startswith("220 ")
    advertised = [line for line in client.command("EHLO c").split("\n") if line.startswith("250-SIZE ")]
    assert advertised == [f"250-SIZE {28 * MiB}"]
    assert client.command(f"MAIL FROM:<a@example.org> SIZE={28 * MiB}") == "250 2.1.0 Sender OK"
    assert client.command("RSET").startswith("250")
    assert client.command(f"MAIL FROM:<a@example.org> SIZE={28 * MiB + 1}") == "552 5.3.4 Message too big for storage"
    # Under the budget's bound, max_size is what is advertised, as before.
    small = gsmtpd_server(sqlite_store, workers=1, memory_budget=64 * MiB, max_size=10 * MiB).raw()
    assert small.reply().startswith("220 ")
    assert f"250-SIZE {10 * MiB}" in small.command("EHLO c").split("\n")


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_default_budget_reads_cgroup_v2_and_v1_memory_limits(tmp_path):
    from gsmtpd.config import cgroup_limit_in, cgroup_memory_limit
    root = tmp_path / "cgroup"
    # One file: a number, "max" (v2: none), v1's page-aligned LONG_MAX (none), missing.
    write(root / "a" / "memory.max", "536870912\n")
    write(root / "b" / "memory.max", "max\n")
    write(root / "c" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_limit_in(str(root / "a" / "memory.max")) == 512 * MiB
    assert cgroup_limit_in(str(root / "b" / "memory.max")) == 0
    assert cgroup_limit_in(str(root / "c" / "memory.limit_in_bytes")) == 0
    assert cgroup_limit_in(str(root / "none" / "memory.max")) == 0
    # v2: the group's own limit is "max", its parent's binds it.
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/system.slice/gsmtpd.service\n")
    write(root / "system.slice" / "gsmtpd.service" / "memory.max", "max\n")
    write(root / "system.slice" / "memory.max", "2147483648\n")
    assert cgroup_memory_limit(str(root), str(proc)) == 2 * 1024 * MiB
    write(root / "system.slice" / "gsmtpd.service" / "memory.max", "1073741824\n")
    assert cgroup_memory_limit(str(root), str(proc)) == 1024 * MiB
    # v1 (a hybrid system, as this project's machine: memory under v1, "0::/" in v2's unified).
    hybrid = tmp_path / "hybrid"
    write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    write(hybrid / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(hybrid / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "805306368\n")
    write(hybrid / "cpu,cpuacct" / "docker" / "abc" / "memory.limit_in_bytes", "1\n")   # not memory's
    assert cgroup_memory_limit(str(hybrid), str(proc)) == 768 * MiB
    # A container without a cgroup namespace: the host's path is not under the mount, whose
    # own file is the container's limit.
    container = tmp_path / "container"
    write(container / "memory.max", "268435456\n")
    write(proc, "0::/kubepods/pod1/abc\n")
    assert cgroup_memory_limit(str(container), str(proc)) == 256 * MiB
    # No limit anywhere, or no cgroups at all: 0, and the machine's memory decides.
    write(container / "memory.max", "max\n")
    assert cgroup_memory_limit(str(container), str(proc)) == 0
    assert cgroup_memory_limit(str(container), str(tmp_path / "no-such-file")) == 0
