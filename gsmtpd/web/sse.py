"""Server-Sent Events: one event per new message in a mailbox, read from the database.

Mail may be stored by any gsmtpd process on any node, so the events come from the table,
not from a worker's memory: one poller greenlet per web process asks for the rows above
the newest id it has seen, every POLL seconds while anyone listens, and hands each row to
the subscribers of its mailbox. With 50 subscribers that is still one cheap query (the
primary key's range) per POLL, not one per subscriber.

Ids are handed out before their transactions commit, so a row may turn up after a row with
a higher id (two writers, or Galera's interleaved auto-increment). The poller therefore
looks LOOKBACK ids behind the newest it has seen and remembers what it already sent.

Resume: an event's id is the row's mail_id. A client that reconnects with Last-Event-ID
(browsers do it by themselves), or that opens the stream with ``?last_event_id=N``, first
gets every message of the mailbox above N, then the live ones.
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
LOOKBACK = 256             # ids behind the newest seen that are asked again (late commits)
PER_POLL = 5000            # rows per poll query; a fuller answer is followed by another at once
REMEMBERED = 20000         # ids the poller remembers having seen
HEARTBEAT = 15.0           # seconds: a comment line, so dead connections are noticed
BACKLOG = 200              # messages sent on resume before the live ones
SUBSCRIBER_QUEUE = 1000    # events a slow client may fall behind before it is dropped (it resumes)
MAX_SUBSCRIBERS = 5000     # streams per web process; more get 429


class Subscriber:
    def __init__(self, address: str):
        self.address = address
        self.queue: Queue = Queue(SUBSCRIBER_QUEUE)
        self.dropped = False


class Events:
    def __init__(self, db):
        self.db = db
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.count = 0
        self.cursor: int | None = None            # newest id seen; None while nobody listens
        self.seen: set[int] = set()
        self.seen_order: deque[int] = deque()
        self.poller = gevent.spawn(self._poll_forever)

    # --- subscribers

    def subscribe(self, address: str) -> Subscriber:
        if self.count >= MAX_SUBSCRIBERS:
            raise HTTPError(429, "too many event streams open", [("Retry-After", "5")])
        subscriber = Subscriber(address)
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

    def poll(self) -> None:
        self.start_cursor()
        while True:
            rows = mailbox.new_ids(self.db, max(0, self.cursor - LOOKBACK), PER_POLL)
            wanted = []
            for mail_id, address in rows:
                if mail_id in self.seen:
                    continue
                self._remember(mail_id)
                if address in self.subscribers:
                    wanted.append(mail_id)
            if rows:
                self.cursor = max(self.cursor, rows[-1][0])
            for start in range(0, len(wanted), 500):
                for item in mailbox.summaries(self.db, wanted[start:start + 500]):
                    self._deliver(item)
            if len(rows) < PER_POLL:
                return

    def _remember(self, mail_id: int) -> None:
        self.seen.add(mail_id)
        self.seen_order.append(mail_id)
        if len(self.seen_order) > REMEMBERED:
            self.seen.discard(self.seen_order.popleft())

    def _deliver(self, item: dict) -> None:
        address = item.pop("mailbox")
        for subscriber in list(self.subscribers.get(address, ())):
            try:
                subscriber.queue.put_nowait(item)
            except Full:                     # too slow: dropped; the browser resumes by itself
                subscriber.dropped = True
                self.unsubscribe(subscriber)

    # --- the HTTP side

    def stream(self, request: Request) -> Response:
        address = address_param(request)
        last = request.header("Last-Event-ID") or request.query.get("last_event_id")
        since = whole_number(last, "Last-Event-ID") if last is not None else None
        if since is None:
            since = mailbox.newest_id(self.db)    # from now on
        # Subscribed before the poller's cursor is set and before the backlog is read, so a
        # row committed meanwhile comes by one way or the other (duplicates are skipped).
        subscriber = self.subscribe(address)
        try:
            self.start_cursor()
            backlog = mailbox.newer_messages(self.db, address, since, BACKLOG)
        except BaseException:
            self.unsubscribe(subscriber)
            raise
        return Response(200, Stream(self, subscriber, backlog), "text/event-stream; charset=utf-8",
                        [("X-Accel-Buffering", "no")])

    def _events(self, subscriber: Subscriber, backlog: list[dict]):
        sent: set[int] = set()
        try:
            yield b"retry: 2000\n: gsmtpd events for this mailbox\n\n"
            for item in backlog:
                sent.add(item["id"])
                yield encode(item)
            while not subscriber.dropped:
                try:
                    item = subscriber.queue.get(timeout=HEARTBEAT)
                except Empty:
                    yield b": ping\n\n"
                    continue
                if item["id"] not in sent:
                    yield encode(item)
        finally:
            self.unsubscribe(subscriber)


class Stream:
    """The response body. The WSGI server calls close() when the response ends, even one it
    never iterated (a HEAD request, a client gone before the first byte): the subscriber is
    removed then too, which a generator's own ``finally`` would not do before it started."""

    def __init__(self, events: Events, subscriber: Subscriber, backlog: list[dict]):
        self.events, self.subscriber = events, subscriber
        self.iterator = events._events(subscriber, backlog)

    def __iter__(self):
        return self.iterator

    def close(self) -> None:
        self.iterator.close()
        self.events.unsubscribe(self.subscriber)


def encode(item: dict) -> bytes:
    return f"id: {item['id']}\nevent: message\ndata: {json.dumps(item, ensure_ascii=False)}\n\n".encode()
