"""The inbox page: plain HTML, CSS and JavaScript shipped in the package (static/), read
once at start and served from memory. No build step, nothing from another host."""
from __future__ import annotations

from importlib import resources

from .app import HTTPError, Request, Response

TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}

# The page runs only its own script and loads only from this server; message HTML goes into
# a sandboxed iframe from this server (frame-src 'self'), which has its own, stricter policy.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for entry in resources.files("gsmtpd.web").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if entry.is_file() and suffix in TYPES:
            files[entry.name] = (entry.read_bytes(), TYPES[suffix])
    return files


FILES = _load()


def _serve(name: str) -> Response:
    if name not in FILES:
        raise HTTPError(404, "no such file")
    body, content_type = FILES[name]
    return Response(200, body, content_type, [("Content-Security-Policy", PAGE_POLICY)])


def index(request: Request) -> Response:
    return _serve("index.html")


def static_file(request: Request) -> Response:
    return _serve(request.params["name"])


def static_routes():
    return [("GET", "/", index), ("GET", "/static/{name}", static_file)]
