"""Every reply the server sends, as named constants.

Codes follow RFC 5321 section 4.2 and the enhanced status codes of RFC 3463 (advertised
as ENHANCEDSTATUSCODES, RFC 2034). Dialogue code sends ``R.NESTED_MAIL``, never a literal
``"503 ..."``; replies that carry a value are small functions returning bytes.
"""
from __future__ import annotations

from functools import lru_cache


class Reply(bytes):
    """A complete reply line with its CRLF; ``.code`` is the three-digit number."""

    @property
    def code(self) -> int:
        return int(self[:3])

    @property
    def enhanced(self) -> str:
        return self[4:].split(b" ", 1)[0].decode()

    @property
    def text(self) -> str:
        return self[:-2].decode("utf-8", "replace")


def reply(code: int, enhanced: str, text: str) -> Reply:
    # RFC 3463 section 2: the class digit of the enhanced code matches the reply's first digit.
    if enhanced:
        assert enhanced[0] == str(code)[0], (code, enhanced)
        return Reply(f"{code} {enhanced} {text}\r\n".encode())
    return Reply(f"{code} {text}\r\n".encode())


def multiline(code: int, lines: list[str]) -> Reply:
    """RFC 5321 4.2.1: every line but the last has a hyphen after the code."""
    body = "".join(f"{code}-{line}\r\n" for line in lines[:-1]) + f"{code} {lines[-1]}\r\n"
    return Reply(body.encode())


# --- 2xx
SENDER_OK = reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = reply(250, "2.1.5", "Recipient OK")
RESET_OK = reply(250, "2.0.0", "Reset OK")
NOOP_OK = reply(250, "2.0.0", "OK")
# RFC 5321 3.5.3: 252 when a server will accept mail for a user it will not verify.
CANNOT_VRFY = reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")


@lru_cache(maxsize=256)   # made for every connection
def greeting(hostname: str) -> Reply:
    return Reply(f"220 {hostname} ESMTP gsmtpd\r\n".encode())


@lru_cache(maxsize=256)   # made for every connection
def goodbye(hostname: str) -> Reply:
    return reply(221, "2.0.0", f"{hostname} Bye")


@lru_cache(maxsize=256)   # made for every connection
def helo_ok(hostname: str, client: str) -> Reply:
    return Reply(f"250 {hostname} Hello {client}\r\n".encode())


@lru_cache(maxsize=256)   # made for every connection
def ehlo_ok(hostname: str, client: str, extensions: tuple[str, ...]) -> Reply:
    return multiline(250, [f"{hostname} Hello {client}", *extensions])


# reply(250, "2.0.0", "OK: queued as ...") made once up to the id: the one reply made anew
# for every message (callgrind, Debian python3.11: 5.3k -> 2.7k instructions a call).
_QUEUED_AS = reply(250, "2.0.0", "OK: queued as ")[:-2]


def queued(queue_id: str) -> Reply:
    return Reply(_QUEUED_AS + queue_id.encode() + b"\r\n")


READY_FOR_TLS = reply(220, "2.0.0", "Ready to start TLS")

# --- 3xx
START_DATA = Reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")

# --- 4xx: transient; the client keeps the message and tries again
SHUTTING_DOWN = reply(421, "4.3.0", "Server shutting down, try again later")
INTERNAL_ERROR = reply(421, "4.3.0", "Internal error, closing connection")
TOO_BUSY = reply(421, "4.3.2", "Too many connections, try again later")
TOO_MANY_ERRORS = reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_FROM_YOU = reply(421, "4.7.0", "Too many connections from your address, try again later")
COMMAND_TIMEOUT = reply(421, "4.4.2", "Timeout waiting for command, closing connection")
DATA_TIMEOUT = reply(421, "4.4.2", "Timeout during DATA, closing connection")
# RFC 5321 4.5.3.1.10: too many recipients is a transient 452; the client sends the rest later.
TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Too many recipients")
STORAGE_FAILED = reply(451, "4.3.0", "Temporary storage failure, try again later")
# RFC 5321 4.2.3 / RFC 3463 4.3.1 "mail system full"; RFC 1870 6.2: 452 for a SIZE that
# cannot be taken now. The worker's byte budget (budget.py) is busy: the sender retries.
INSUFFICIENT_STORAGE = reply(452, "4.3.1", "Insufficient system storage, try again later")

# --- 5xx: permanent
UNKNOWN_COMMAND = reply(500, "5.5.2", "Command not recognized")
LINE_TOO_LONG = reply(500, "5.5.6", "Line too long")
SYNTAX_ERROR = reply(501, "5.5.4", "Syntax error in parameters or arguments")
HELO_SYNTAX = reply(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX = reply(501, "5.5.4", "Syntax: EHLO hostname")
MAIL_SYNTAX = reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
BAD_SENDER = reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = reply(501, "5.1.3", "Bad recipient address syntax")
NO_ARGUMENTS = reply(501, "5.5.4", "This command takes no arguments")
BAD_PARAMETER = reply(555, "5.5.4", "MAIL/RCPT parameter not recognized or not implemented")
UTF8_NEEDS_SMTPUTF8 = reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
NEED_HELO = reply(503, "5.5.1", "Send HELO or EHLO first")
NEED_MAIL = reply(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = reply(503, "5.5.1", "Need RCPT command first")
NESTED_MAIL = reply(503, "5.5.1", "Sender already given")
TLS_ALREADY_ACTIVE = reply(503, "5.5.1", "TLS already active")
XCLIENT_IN_TRANSACTION = reply(503, "5.5.1", "XCLIENT not allowed in a mail transaction")
BAD_XCLIENT = reply(501, "5.5.4", "Bad XCLIENT attribute")
# Postfix 3.9 smtpd_forbid_bare_newline = reject: "550 5.5.2 Error: bare <LF> received".
BARE_LF = reply(550, "5.5.2", "Bare <LF> received; lines must end with <CR><LF>")
# RFC 5321 3.1 / 4.3.1: the client must wait for the greeting (554 is the refusal reply).
EARLY_TALKER = reply(554, "5.5.0", "Protocol error: talked before the greeting")
RELAY_DENIED = reply(550, "5.7.1", "Relaying denied")
# RFC 1870 section 6.1: 552 when the declared or actual size exceeds the fixed limit.
TOO_BIG = reply(552, "5.3.4", "Message size exceeds fixed limit")
TOO_BIG_TO_STORE = reply(552, "5.3.4", "Message too big for storage")
# A message with no SIZE= whose rows (its size and body, once per recipient) pass
# --max-stored-bytes, found after its data: permanent, because a 452 here would be retried
# with the same recipients and refused again, forever (session.Session.deliver says why).
TOO_BIG_FOR_RECIPIENTS = reply(552, "5.3.4", "Message too big for this many recipients; "
                               "send it to fewer recipients at a time")
REJECTED_BY_STORE = reply(554, "5.3.0", "Message refused by storage")

# --- CHUNKING and BINARYMIME (RFC 3030)


def chunk_received(size: int) -> Reply:
    return reply(250, "2.0.0", f"{size} octets received")


BDAT_SYNTAX = reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
# RFC 3030 2: CHUNKING is offered in the EHLO reply; a HELO client has not seen it.
BDAT_NEEDS_EHLO = reply(503, "5.5.1", "Send EHLO first to use BDAT")
DATA_AFTER_BDAT = reply(503, "5.5.1", "DATA not allowed after BDAT in one transaction")
RCPT_AFTER_BDAT = reply(503, "5.5.1", "RCPT not allowed after BDAT")
# RFC 3030 3: a BINARYMIME message cannot be sent with DATA.
BINARYMIME_NEEDS_BDAT = reply(503, "5.5.1", "BODY=BINARYMIME requires BDAT")
TLS_WITH_CHUNKS_PENDING = reply(503, "5.5.1", "STARTTLS not allowed while BDAT chunks are pending")
