"""The demo page and its assets, served by the WebSocket server itself (no second web framework).

``GET /`` is ``static/index.html``; ``GET /static/<name>`` is a file from the
package's ``static/`` directory, and nothing outside it. Every plain HTTP page
of the server is read-only: GET, or HEAD (the same headers, no body); any other
method is 405 with ``Allow``, as Starlette answers under the ASGI driver.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

STATIC = Path(__file__).parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".json": "application/json",
}


REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 426: "Upgrade Required",
           503: "Service Unavailable"}
METHODS = ("GET", "HEAD")  # what every page of ours answers


def response(status: int, body: bytes, content_type: str) -> Response:
    """Every plain HTTP answer of our server: one place for its headers."""
    reason = REASONS.get(status, "")
    headers = Headers([
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
        ("Connection", "close"),
    ])
    return Response(status, reason, headers, body)


def method_not_allowed() -> Response:
    """405 for a method our pages do not take (a POST must not be answered as if it were a GET)."""
    answer = response(405, b"method not allowed: this server's pages take GET and HEAD\n",
                      "text/plain; charset=utf-8")
    answer.headers["Allow"] = ", ".join(METHODS)
    return answer


def for_method(method: str, answer: Response) -> Response:
    """``answer`` (to the request as if it were a GET) fitted to the request's real method: HEAD gets the
    same status and headers, Content-Length included, and no body; a method other than GET or HEAD
    gets 405, except where there is no such page at all (404 is the truer answer, and Starlette's)."""
    if method not in METHODS and answer.status_code != 404:
        return method_not_allowed()
    if method == "HEAD":
        return dataclasses.replace(answer, body=b"")
    return answer


def static_file(name: str, root: Path = STATIC) -> Response | None:
    """The file ``name`` (relative, URL-encoded) under ``root``, or None when there is no such file."""
    name = unquote(name)
    parts = PurePosixPath(name).parts
    if not parts or "\\" in name or "\x00" in name or any(p in ("..", ".") or p.startswith("/") for p in parts):
        return None
    path = root.joinpath(*parts)
    try:
        path = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return None
    content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return response(200, path.read_bytes(), content_type)


def index(request: Request) -> Response | None:
    return static_file("index.html")


def static(request: Request) -> Response | None:
    path = request.path.partition("?")[0]
    return static_file(path.removeprefix("/static/"))


# Keys ending in "*" match every path with that prefix (see WsServer.process_request).
ROUTES = {"/": index, "/static/*": static}
