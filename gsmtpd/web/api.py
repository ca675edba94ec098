"""The mailbox API's handlers and its routing table; openapi.json beside this file
describes the same routes (a test checks that the two agree).

Every message is addressed under its mailbox (/api/mailboxes/{address}/messages/{id}):
ids count up, so an id alone would let anyone read every mailbox in turn.
"""
from __future__ import annotations

import json
import re
from importlib import resources

from .. import mailbox
from .app import HTTPError, Request, Response, json_response
from .static import static_routes

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
ID = re.compile(r"[0-9]{1,18}")          # below 2**63: both databases' integer range
MAX_ADDRESS = 255                        # the `to` column's width

# The message's own HTML runs in a sandbox with no scripts, no forms, no plugins, no
# navigation of the page around it, and may load nothing from the network: the CSP
# ``sandbox`` keeps it so even when the URL is opened on its own, outside our iframe.
HTML_POLICY = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:; "
               "font-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
# The same with remote images allowed, when the reader asks for them (?images=remote).
HTML_POLICY_IMAGES = HTML_POLICY.replace("img-src data: cid:", "img-src data: cid: http: https:")


def address_param(request: Request) -> str:
    """The mailbox key as the server stores it: lower-cased local@domain."""
    address = request.params["address"].lower()
    local, at, domain = address.rpartition("@")
    if (not at or not local or not domain or len(address) > MAX_ADDRESS
            or not address.isprintable() or any(c.isspace() for c in address)):
        raise HTTPError(400, "not a mailbox address (local@domain, at most 255 characters)")
    return address


def whole_number(text: str, name: str) -> int:
    if not ID.fullmatch(text):
        raise HTTPError(400, f"{name} must be a whole number from 0 to 999999999999999999")
    return int(text)


def limit_param(request: Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise HTTPError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


class Api:
    def __init__(self, db, events, config):
        self.db = db
        self.events = events
        self.config = config

    def routes(self):
        return [
            ("GET", "/api/openapi.json", self.openapi),
            ("GET", "/api/domains", self.domains),
            ("GET", "/api/mailboxes/{address}/messages", self.list_messages),
            ("GET", "/api/mailboxes/{address}/messages/{id}", self.get_message),
            ("DELETE", "/api/mailboxes/{address}/messages/{id}", self.delete_message),
            ("GET", "/api/mailboxes/{address}/messages/{id}/raw", self.raw_message),
            ("GET", "/api/mailboxes/{address}/messages/{id}/html", self.html_body),
            ("GET", "/api/mailboxes/{address}/events", self.events.stream),
            *static_routes(),
        ]

    def openapi(self, request: Request) -> Response:
        return Response(200, OPENAPI)

    def domains(self, request: Request) -> Response:
        """Where a random address may be made: the allowed domains that are names (a
        '*.example.com' pattern gives example.com's subdomains, so none is offered for it)."""
        names = [host for host in self.config.allowed_hosts if "*" not in host]
        return json_response({"domains": names or [self.config.hostname]})

    def list_messages(self, request: Request) -> Response:
        address = address_param(request)
        after = request.query.get("after")
        after = whole_number(after, "after") if after is not None else None
        limit = limit_param(request)
        items = mailbox.list_messages(self.db, address, after, limit)
        following = items[-1]["id"] if len(items) == limit else None
        return json_response({"mailbox": address, "messages": items, "next_after": following})

    def _message_id(self, request: Request) -> tuple[str, int]:
        return address_param(request), whole_number(request.params["id"], "id")

    def get_message(self, request: Request) -> Response:
        message = mailbox.get_message(self.db, *self._message_id(request))
        if message is None:
            raise HTTPError(404, "no such message in this mailbox")
        return json_response(message)

    def delete_message(self, request: Request) -> Response:
        if not mailbox.delete_message(self.db, *self._message_id(request)):
            raise HTTPError(404, "no such message in this mailbox")
        return Response(204, b"")

    def raw_message(self, request: Request) -> Response:
        address, mail_id = self._message_id(request)
        raw = mailbox.raw_message(self.db, address, mail_id)
        if raw is None:
            raise HTTPError(404, "no such message in this mailbox")
        return Response(200, raw, "message/rfc822",
                        [("Content-Disposition", f'attachment; filename="{mail_id}.eml"')])

    def html_body(self, request: Request) -> Response:
        address, mail_id = self._message_id(request)
        images = request.query.get("images", "none")
        if images not in ("none", "remote"):
            raise HTTPError(400, "images must be none or remote")
        body = mailbox.html_body(self.db, address, mail_id)
        if body is None:
            raise HTTPError(404, "no such message with an HTML body in this mailbox")
        policy = HTML_POLICY_IMAGES if images == "remote" else HTML_POLICY
        return Response(200, body.encode("utf-8", "replace"), "text/html; charset=utf-8",
                        [("Content-Security-Policy", policy)])


def _load_openapi() -> bytes:
    text = resources.files("gsmtpd.web").joinpath("openapi.json").read_text(encoding="utf-8")
    return json.dumps(json.loads(text), indent=1).encode() + b"\n"


OPENAPI = _load_openapi()
