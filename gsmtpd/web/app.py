"""The WSGI application: a routing table, bearer-token access, JSON errors.

A route is (method, pattern, handler); a handler takes a ``Request`` and returns a
``Response`` or raises ``HTTPError``. Whatever else goes wrong inside a handler is logged
with its traceback and answered with a plain 500 JSON body (no traceback leaves the
server); the tests check that no documented input gets there.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable, Iterable
from urllib.parse import parse_qs

from ..mailbox import StoreDown

log = logging.getLogger("gsmtpd.web")

# Sent with every answer: no sniffing a JSON or raw message into HTML, no referrer leaking
# a mailbox address to a site a message links to.
COMMON_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                  ("Cache-Control", "no-store")]
MAX_QUERY = 2048          # bytes of query string; more is 414


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(value, status: int = 200) -> Response:
    return Response(status, json.dumps(value, ensure_ascii=False).encode() + b"\n")


def error_response(status: int, message: str, headers=()) -> Response:
    response = json_response({"error": message, "status": status}, status)
    response.headers.extend(headers)
    return response


class Request:
    def __init__(self, environ: dict, params: dict[str, str]):
        self.environ = environ
        self.params = params                     # from the path
        query = environ.get("QUERY_STRING", "")
        if len(query) > MAX_QUERY:
            raise HTTPError(414, "query string too long")
        try:
            self.query = {k: v[-1] for k, v in parse_qs(query, errors="strict").items()}
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "query string is not valid UTF-8") from None

    def header(self, name: str) -> str:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"), "")


Handler = Callable[[Request], Response]


class Router:
    """{(method, compiled pattern): handler}, tried in order. ``{name}`` in a pattern is one
    path segment (an empty one too: the handler says what is wrong with it)."""

    def __init__(self, routes: list[tuple[str, str, Handler]]):
        self.routes = [(method, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]*)", path) + "$"), handler)
                       for method, path, handler in routes]

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = []
        for route_method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match:
                if route_method == method or (method == "HEAD" and route_method == "GET"):
                    return handler, match.groupdict()
                allowed.append(route_method)
        if allowed:
            raise HTTPError(405, f"method {method} not allowed here",
                            [("Allow", ", ".join(sorted(set(allowed))))])
        raise HTTPError(404, "no such endpoint")


class App:
    """``token``: when set, every path under /api/ needs 'Authorization: Bearer TOKEN'
    (or ``?access_token=TOKEN``, for what a browser cannot give a header to: EventSource
    and an iframe's src)."""

    def __init__(self, routes, token: str = ""):
        self.router = Router(routes)
        self.token = token.encode()

    def __call__(self, environ, start_response):
        try:
            response = self.respond(environ)
        except Exception:  # the last line of defence: logged, and no traceback to the client
            log.exception("web: unexpected error on %s %s", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO"))
            response = error_response(500, "internal error (logged)")
        headers = [("Content-Type", response.content_type), *COMMON_HEADERS, *response.headers]
        body = response.body
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
            body = [body]
        if environ.get("REQUEST_METHOD") == "HEAD":
            if hasattr(body, "close"):
                body.close()
            body = []
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return body

    def respond(self, environ) -> Response:
        try:
            path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return error_response(400, "path is not valid UTF-8")
        try:
            handler, params = self.router.find(environ.get("REQUEST_METHOD", "GET"), path)
            request = Request(environ, params)
            if path.startswith("/api/") and path != "/api/openapi.json":
                self.check_token(request)
            return handler(request)
        except HTTPError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except StoreDown as exc:
            log.warning("web: store unavailable: %s", exc)
            return error_response(503, "store unavailable, try again", [("Retry-After", "5")])

    def check_token(self, request: Request) -> None:
        if not self.token:
            return
        given = request.header("Authorization")
        given = given[7:] if given[:7].lower() == "bearer " else request.query.get("access_token", "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token):
            raise HTTPError(401, "a bearer token is required", [("WWW-Authenticate", 'Bearer realm="gsmtpd"')])
