"""The demo page's plain-HTTP routes: GET / and /static/<file>, with types, and nothing outside static/."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wsstream.echo import echo
from wsstream.reply import ReplyOnPause
from wsstream.web import STATIC


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET, so paths reach the server exactly as written (no client-side normalising)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
async def port(make_server: Any) -> int:
    server = await make_server(ReplyOnPause(fn=echo))
    return server.port


async def test_index_is_the_demo_page(port: int) -> None:
    status, headers, body = await get(port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert body == (STATIC / "index.html").read_bytes()
    assert b'src="/static/demo.js"' in body


@pytest.mark.parametrize(("name", "content_type"), [
    ("wsstream.js", "text/javascript; charset=utf-8"),
    ("demo.js", "text/javascript; charset=utf-8"),
    ("demo.css", "text/css; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
    ("index.html", "text/html; charset=utf-8"),
])
async def test_static_files_with_their_types(port: int, name: str, content_type: str) -> None:
    status, headers, body = await get(port, f"/static/{name}?v=1")
    assert status == 200
    assert headers["content-type"] == content_type
    assert int(headers["content-length"]) == len(body)
    assert body == (STATIC / name).read_bytes()


@pytest.mark.parametrize("path", [
    "/static/../server.py",
    "/static/%2e%2e/server.py",
    "/static/..%2fserver.py",
    "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/..\\server.py",
    "/static/",
    "/static/nope.js",
    "/static",
    "/index.html",
])
async def test_nothing_outside_static(port: int, path: str) -> None:
    status, _, body = await get(port, path)
    assert status == 404, body


async def test_health_and_websocket_routes_unchanged(port: int) -> None:
    assert (await get(port, "/healthz"))[0] == 200
    assert (await get(port, "/ws"))[0] == 426
