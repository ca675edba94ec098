"""One mail transaction (MAIL, RCPT..., DATA) and the rows it becomes."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import mime, row
from .store import BODY, MAIL, Blob, SlicedText, Utf8Text
from .wire import Data


# Column widths (row.py); longer values are cut so strict SQL mode never refuses a row.
# The address of the peer and the hash are never longer than theirs: they are not cut.
(FROM, TO, SUBJECT, CHARSET, CONTENT_TYPE, RECIPIENT, RETURN_PATH, HELO,
 MESSAGE_ID) = map(row.width, ("from", "to", "subject", "charset", "content_type", "recipient",
                               "return_path", "helo", "message_id"))


@dataclass(slots=True)
class Recipient:
    address: str        # exactly as given in RCPT TO
    mailbox: str        # the `to` column: local@primary_host, or the address lower-cased


@dataclass(slots=True)
class Envelope:
    sender: str                                   # MAIL FROM address, '' for <>
    smtputf8: bool = False
    size: int = 0                                 # MAIL FROM ... SIZE= (RFC 1870), 0 if none
    recipients: list[Recipient] = field(default_factory=list)
    binarymime: bool = False                      # BODY=BINARYMIME: only BDAT may carry it
    chunks: bytearray | None = None               # BDAT content so far; None before the first
    chunks_deadline: float = 0.0                  # all chunks must be in by then (monotonic)


def new_queue_id() -> str:
    """32 hex digits: the `hash` column of the first row, named in the 250 reply."""
    return os.urandom(16).hex()


def row_hashes(queue_id: str, count: int) -> list[str]:
    """One unique hash per row: the queue id, then the queue id counted up by one per
    further recipient, so every row of a message can be found from the 250 reply."""
    if count == 1:
        return [queue_id]
    base = int(queue_id, 16)
    return [queue_id] + [f"{(base + i) % (1 << 128):032x}" for i in range(1, count)]


class _Stamps:
    """The Received date and the `date` column of a second, made once that second: a
    server storing thousands of messages a second would format the same text each time."""

    def __init__(self):
        self.second = -1
        self.received = self.column = ""

    def at(self, now: float) -> "_Stamps":
        second = int(now)
        if second != self.second:
            moment = time.gmtime(second)
            self.received = time.strftime("%a, %d %b %Y %H:%M:%S +0000", moment)
            self.column = time.strftime("%Y-%m-%d %H:%M:%S", moment)
            self.second = second
        return self


_STAMPS = _Stamps()


def trace_name(helo: str) -> str:
    """The HELO name as it may appear inside the Received header's "from" clause:
    printable, and nothing that would open or close a comment."""
    if helo.isprintable() and "(" not in helo and ")" not in helo and "\\" not in helo:
        return helo
    return "".join(ch for ch in helo if ch.isprintable() and ch not in "()\\")


def protocol_name(*, esmtp: bool, is_tls: bool, smtputf8: bool) -> str:
    """The "with" of the Received header (RFC 5321 4.4; the IANA Mail Transmission Types
    of RFC 3848 and RFC 6531): SMTP after HELO, ESMTP after EHLO, an S for TLS, UTF8SMTP
    for a transaction with SMTPUTF8 (which needs EHLO). The registry has no "SMTPS": a
    HELO client over TLS is recorded as SMTP (the row's is_tls still says TLS). No A:
    gsmtpd has no AUTH."""
    if not esmtp:
        return "SMTP"
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if is_tls else "")


def received_header(*, helo: str, ip: str, hostname: str, protocol: str, queue_id: str,
                    recipients: list[Recipient], now: float) -> bytes:
    """RFC 5321 4.4 trace header; "for" only names a single recipient (privacy, as Postfix)."""
    stamp = _STAMPS.at(now).received
    for_clause = f"\r\n\tfor <{recipients[0].address}>" if len(recipients) == 1 else ""
    text = (f"Received: from {trace_name(helo)} ([{ip}])\r\n\tby {hostname} (gsmtpd) with {protocol} "
            f"id {queue_id}{for_clause};\r\n\t{stamp}\r\n")
    return text.encode("utf-8", "replace")


def parse_message(message: Data, prefer: str) -> mime.Parsed:
    """MIME never costs a message: mime.parse() never raises (on a failure the body is the
    raw message, and the failure is logged there). What the wire learnt while reading
    (every line end a CRLF) spares mime a scan."""
    return mime.parse(message.message, prefer, message.crlf_only)


def build_rows(envelope: Envelope, message: Data, *, queue_id: str, now: float, ip: str, helo: str,
               hostname: str, is_tls: bool, prefer: str, esmtp: bool = True) -> list[tuple]:
    """The new_mail rows for ``message`` (as the wire read it), one per recipient, in
    row.COLUMNS order. ``esmtp``: the client said EHLO, not HELO."""
    raw = message.message
    protocol = protocol_name(esmtp=esmtp, is_tls=is_tls, smtputf8=envelope.smtputf8)
    received = received_header(helo=helo, ip=ip, hostname=hostname, protocol=protocol,
                               queue_id=queue_id, recipients=envelope.recipients, now=now)
    mail = Blob((received, raw))
    parsed = parse_message(message, prefer)
    # Encoded here, once: the str is dropped with ``parsed``, so the message is held as its
    # raw bytes plus its UTF-8 body until the writer is done (budget.py counts those two).
    body_bytes = (parsed.body.encode("utf-8", "replace"),)
    # A body that is the rest of the mail without its CRs is stored as where it starts in
    # `mail`, where the table allows (row.py); its text stays for a table that does not.
    body = (Utf8Text(body_bytes) if parsed.body_from < 0
            else SlicedText(body_bytes, len(received) + parsed.body_from))
    date = _STAMPS.at(now).column
    hashes = row_hashes(queue_id, len(envelope.recipients))
    return [
        (date, parsed.from_addr[:FROM], rcpt.mailbox[:TO], parsed.subject[:SUBJECT], body,
         parsed.charset[:CHARSET], mail, 0.0, row_hash, parsed.content_type[:CONTENT_TYPE],
         rcpt.address[:RECIPIENT], envelope.sender[:RETURN_PATH], ip, helo[:HELO], int(is_tls),
         len(raw), parsed.has_attach, parsed.message_id[:MESSAGE_ID])
        for rcpt, row_hash in zip(envelope.recipients, hashes)
    ]


def held_bytes(rows: list[tuple]) -> int:
    """The bytes a message's rows hold (its mail and its body, shared by all of them).
    build_rows makes both parts (a Blob and a Utf8Text): summed here, not by value_size,
    whose call and isinstance cost more than the sums for a 4 KB message."""
    first = rows[0]
    return sum(map(len, first[MAIL])) + sum(map(len, first[BODY]))
