"""Server-Sent Events: one event per new message in a mailbox, read from the database.

Mail may be stored by any gsmtpd process on any node, so the events come from the table,
not from a worker's memory: one poller greenlet per web process asks for the rows above
the newest id it has seen, every POLL seconds while anyone listens, and hands each row to
the subscribers of its mailbox. With 50 subscribers that is still one cheap query (the
primary key's range) per POLL, not one per subscriber.

Ids are handed out before their transactions commit, so a row may turn up after a row with
a higher id (two writers, or Galera's interleaved auto-increment). The poller therefore asks
again for the ids it has not seen among the LOOKBACK below the newest it has seen (the
holes: none with one writer at rest, a few batches' worth while several commit at once) by
primary key, besides the rows above the newest. (It used to read all of the last 256 ids
again every poll: 7.3 ms of the web process's CPU per poll at W1's rate, and a writer's
batch of 200 committed after another worker's was already out of reach.)

A stream that falls behind (a burst to its mailbox, a slow client) is never dropped: when
its queue is full it is marked behind, and its stream catches up from the table in pages of
PAGE, in id order, up to the newest id the poller has handed out, then takes the live events
again. A client that stops reading holds no more than its queue and one page: its writes
wait, nothing grows. (Before: a full queue ended the stream, and a burst of 1400 messages a
second to one mailbox ended the bench's hot stream after a few events.)

Resume: an event's id is the row's mail_id. A client that reconnects with Last-Event-ID
(browsers do it by themselves), or that opens the stream with ``?last_event_id=N``, first
gets every message of the mailbox above N (the same catch-up, page by page), then the live
ones.

No event twice: a stream remembers the ids it sent within WINDOW below the newest it sent
(at most 2 x WINDOW ids). That is enough because the poller hands out an id only once and
never one more than LOOKBACK below the newest it has handed out (``handed``), and a
stream never reads past ``handed`` from the table.
"""
from __future__ import annotations

import json
import logging
from collections import deque

import gevent
from gevent.queue import Empty, Full, Queue

from .. import mailbox
from ..mailbox import StoreDown
from .app import HTTPError, Request, Response
from .api import address_param, whole_number

log = logging.getLogger("gsmtpd.web.events")

POLL = 0.5                 # seconds between polls: an event arrives within about this of the 250
# ids behind the newest seen whose holes are asked again (late commits): a batch of
# --batch-max rows (200) per worker, committed after the others' batches, lies within this
LOOKBACK = 1024
PER_POLL = 5000            # rows per poll query; a fuller answer is followed by another at once
REMEMBERED = 20000         # ids the poller remembers having seen
HEARTBEAT = 15.0           # seconds: a comment line, so dead connections are noticed
PAGE = 200                 # messages per read when a stream catches up (resume, or behind)
WINDOW = LOOKBACK          # ids below a stream's newest sent that it checks for repeats
SUBSCRIBER_QUEUE = 1000    # live events a client may fall behind before it catches up from the table
PER_WRITE = 100            # queued events sent in one write (one syscall, not one each)
MAX_SUBSCRIBERS = 5000     # streams per web process; more get 429


class Subscriber:
    def __init__(self, address: str, since: int):
        self.address = address
        self.queue: Queue = Queue(SUBSCRIBER_QUEUE)     # (id, encoded event), from the poller
        self.behind = True          # catch up from the table first: what is above ``since``
        self.since = since          # what the client has: never read again from the table
        self.newest = since         # the newest id sent
        self.recent: set[int] = set()   # ids sent above newest - WINDOW

    def fresh(self, mail_id: int) -> bool:
        """True (and counted as sent) unless this id was sent already or is older than the
        window: under the poller's rules such an id is one sent before (see the top)."""
        if mail_id <= self.newest - WINDOW or mail_id in self.recent:
            return False
        self.recent.add(mail_id)
        if mail_id > self.newest:
            self.newest = mail_id
            if len(self.recent) > 2 * WINDOW:
                self.recent = {i for i in self.recent if i > mail_id - WINDOW}
        return True


class Events:
    def __init__(self, db):
        self.db = db
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.count = 0
        self.cursor: int | None = None            # newest id seen; None while nobody listens
        self.handed = 0                           # newest id handed out (or passed over)
        self.seen: set[int] = set()
        self.seen_order: deque[int] = deque()
        self.poller = gevent.spawn(self._poll_forever)

    # --- subscribers

    def subscribe(self, address: str, since: int) -> Subscriber:
        if self.count >= MAX_SUBSCRIBERS:
            raise HTTPError(429, "too many event streams open", [("Retry-After", "5")])
        subscriber = Subscriber(address, since)
        self.subscribers.setdefault(address, set()).add(subscriber)
        self.count += 1
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self.subscribers.get(subscriber.address)
        if subscribers and subscriber in subscribers:
            subscribers.discard(subscriber)
            self.count -= 1
            if not subscribers:
                del self.subscribers[subscriber.address]

    # --- the poller

    def _poll_forever(self) -> None:
        while True:
            try:
                if self.count:
                    self.poll()
                else:
                    self.cursor = None
            except StoreDown as exc:
                log.warning("events: poll failed: %s", exc)
            except Exception:  # a bug here must not end the events for everyone
                log.exception("events: poll failed")
            gevent.sleep(POLL)

    def start_cursor(self) -> None:
        """Start from now: what is already there is no event (the lookback window below the
        newest row counts as seen, or it would be sent as new)."""
        if self.cursor is None:
            newest = mailbox.newest_id(self.db)
            for mail_id, _ in mailbox.new_ids(self.db, max(0, newest - LOOKBACK), PER_POLL):
                self._remember(mail_id)
            if self.cursor is None:
                self.cursor = newest
                self.handed = max(self.handed, newest)

    def poll(self) -> None:
        self.start_cursor()
        holes = [i for i in range(max(1, self.cursor - LOOKBACK + 1), self.cursor + 1) if i not in self.seen]
        late = mailbox.ids_of(self.db, holes) if holes else []
        while True:
            rows = mailbox.new_ids(self.db, self.cursor, PER_POLL)
            full = len(rows) == PER_POLL
            if late:
                rows, late = sorted(late + rows), []
            wanted = []
            for mail_id, address in rows:
                if mail_id in self.seen:
                    continue
                self._remember(mail_id)
                if address in self.subscribers:
                    wanted.append(mail_id)
            if rows:
                self.cursor = max(self.cursor, rows[-1][0])
            # In id order, so ``handed`` only grows and what is still to come of this
            # answer is above it (the catch-up's bound depends on that).
            for start in range(0, len(wanted), 500):
                for item in mailbox.summaries(self.db, wanted[start:start + 500]):
                    self._deliver(item)
            self.handed = max(self.handed, self.cursor)
            if not full:
                return

    def _remember(self, mail_id: int) -> None:
        self.seen.add(mail_id)
        self.seen_order.append(mail_id)
        if len(self.seen_order) > REMEMBERED:
            self.seen.discard(self.seen_order.popleft())

    def _deliver(self, item: dict) -> None:
        address = item.pop("mailbox")
        self.handed = max(self.handed, item["id"])
        event = None
        for subscriber in self.subscribers.get(address, ()):
            if subscriber.behind:        # it reads this from the table when it catches up
                continue
            event = event or (item["id"], encode(item))     # encoded once for every stream
            try:
                subscriber.queue.put_nowait(event)
            except Full:                 # it catches up from the table, then goes on live
                subscriber.behind = True

    # --- the HTTP side

    def stream(self, request: Request) -> Response:
        address = address_param(request)
        last = request.header("Last-Event-ID") or request.query.get("last_event_id")
        since = whole_number(last, "Last-Event-ID") if last is not None else None
        if since is None:
            since = mailbox.newest_id(self.db)    # from now on
        # Subscribed before the poller's cursor is set and before the table is read, so a
        # row committed meanwhile comes by one way or the other (repeats are skipped).
        subscriber = self.subscribe(address, since)
        try:
            self.start_cursor()
        except BaseException:
            self.unsubscribe(subscriber)
            raise
        return Response(200, Stream(self, subscriber), "text/event-stream; charset=utf-8",
                        [("X-Accel-Buffering", "no")])

    def _events(self, subscriber: Subscriber):
        try:
            yield b"retry: 2000\n: gsmtpd events for this mailbox\n\n"
            while True:
                if subscriber.behind:
                    yield from self._catch_up(subscriber)
                    continue
                try:
                    events = [subscriber.queue.get(timeout=HEARTBEAT)]
                except Empty:
                    yield b": ping\n\n"
                    continue
                while len(events) < PER_WRITE and not subscriber.queue.empty():
                    events.append(subscriber.queue.get_nowait())
                data = b"".join(event for mail_id, event in events if subscriber.fresh(mail_id))
                if data:
                    yield data
        except StoreDown as exc:         # the client reconnects with Last-Event-ID
            log.warning("events: catching up failed, stream ended: %s", exc)
        finally:
            self.unsubscribe(subscriber)

    def _catch_up(self, subscriber: Subscriber):
        """Everything of the mailbox above what the stream sent, from the table, up to the
        newest id the poller has handed out; live events queued meanwhile are repeats then
        (skipped) or above that id (sent after)."""
        subscriber.behind = False
        while not subscriber.queue.empty():          # all at or below ``handed``: read again below
            subscriber.queue.get_nowait()
        until = self.handed
        after = max(subscriber.since, subscriber.newest - WINDOW)
        while True:
            items = mailbox.newer_messages(self.db, subscriber.address, after, PAGE, until)
            data = b"".join(encode(item) for item in items if subscriber.fresh(item["id"]))
            if data:
                yield data
            if len(items) < PAGE:
                return
            after = items[-1]["id"]


class Stream:
    """The response body. The WSGI server calls close() when the response ends, even one it
    never iterated (a HEAD request, a client gone before the first byte): the subscriber is
    removed then too, which a generator's own ``finally`` would not do before it started."""

    def __init__(self, events: Events, subscriber: Subscriber):
        self.events, self.subscriber = events, subscriber
        self.iterator = events._events(subscriber)

    def __iter__(self):
        return self.iterator

    def close(self) -> None:
        self.iterator.close()
        self.events.unsubscribe(self.subscriber)


def encode(item: dict) -> bytes:
    return f"id: {item['id']}\nevent: message\ndata: {json.dumps(item, ensure_ascii=False)}\n\n".encode()
