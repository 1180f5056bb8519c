"""Our own server: the lean transport on a listening socket, plain HTTP GETs, graceful close.

Every connection (``wsstream.transport.WsConnection``, an asyncio protocol)
opens its stream on the server's ``Hub`` once the server's ``AccessPolicy`` has
admitted its upgrade; plain HTTP GETs (``/healthz``, ``/metrics``, the demo
page) are answered by the same listener. With ``certfile`` set the listener
speaks TLS (wss://, https://). ``serve()`` is the in-process API:
``async with serve(reply_fn) as server:`` in a host app's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.http11 import Request, Response

from vad.engine import VadEngine
from wsstream import web
from wsstream.access import AccessPolicy
from wsstream.config import ServerConfig, tune_process
from wsstream.dialects import DIALECTS
from wsstream.hub import Hub
from wsstream.metrics import CONTENT_TYPE as METRICS_TYPE
from wsstream.reply import ReplyFn, ReplyOnPause
from wsstream.transport import CLOSE_TIMEOUT_S, OPEN_TIMEOUT_S, WsConnection

log = logging.getLogger(__name__)


class WsServer:
    """Owns the listener and its connections; streams live in ``hub`` (given, or made here)."""

    def __init__(self, app: ReplyOnPause | ReplyFn | Hub, config: ServerConfig | None = None,
                 engine: VadEngine | None = None) -> None:
        if isinstance(app, Hub):
            self.hub = app
            self.config = config or app.config
        else:
            self.config = config or ServerConfig()
            self.hub = Hub(app, self.config, engine=engine)
        self.metrics = self.hub.metrics
        self.access = AccessPolicy(self.config, self.metrics)  # (the server's config: it may not be the hub's)
        # Plain GETs by path; a key ending in "*" matches every path with that prefix.
        self.http_routes: dict[str, Callable[[Request], Response | None]] = dict(web.ROUTES)
        self.connections: set[WsConnection] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'wss' if self.config.tls else 'ws'}://{self.config.host}:{self.port}"

    @property
    def ready(self) -> bool:
        return self.hub.ready

    @property
    def active(self) -> int:
        return self.hub.active

    @property
    def draining(self) -> bool:
        """Taking no new streams (``/healthz`` says 503)."""
        return self.hub.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.hub.draining = value

    async def start(self) -> None:
        await self.hub.start()
        loop = asyncio.get_running_loop()
        tls = ssl_context(self.config)
        self._server = await loop.create_server(
            lambda: WsConnection(self), self.config.host, self.config.port,
            reuse_port=self.config.reuse_port or None, backlog=1024,
            ssl=tls, ssl_handshake_timeout=OPEN_TIMEOUT_S if tls else None)
        log.info("wsstream listening on %s/ws", self.url)

    async def __aenter__(self) -> WsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def wait_idle(self) -> None:
        """Return once no stream is open (a stream ends a moment after its connection)."""
        await self.hub.wait_idle()

    async def drain(self, seconds: float) -> None:
        """Stop taking calls (listening ends, /healthz would say 503) and let the calls in progress
        finish, for at most ``seconds``; then close what is left (1001) and stop."""
        self.draining = True
        if self._server is not None and seconds > 0:
            self._server.close()
            await self.hub.let_finish(seconds)
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, close every connection with 1001 (bounded wait), stop the hub."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        connections = list(self.connections)
        for conn in connections:
            conn.close(1001, "server shutting down")
        if connections:
            _, late = await asyncio.wait([c.done for c in connections], timeout=CLOSE_TIMEOUT_S + 1)
            for conn in connections:
                if not conn.done.done() and conn.transport is not None:
                    conn.transport.abort()
            if late:
                await asyncio.wait(late, timeout=2)
        await self.hub.aclose()

    # ---- HTTP ----------------------------------------------------------------

    def process_request(self, request: Request) -> Response | None:
        """The response to a plain HTTP request, or None to go on with a WebSocket handshake."""
        path = request.path.partition("?")[0]
        if path in DIALECTS:
            if "upgrade" not in request.headers.get("Connection", "").lower():
                return _text(426, f"{path} is a WebSocket endpoint: connect with a WebSocket client\n")
            return None
        if path == "/healthz":
            return _text(*self.hub.health())
        if path == "/metrics":
            return _text(200, self.hub.metrics_text(), METRICS_TYPE)
        handler = self.http_routes.get(path) or next(
            (h for p, h in self.http_routes.items() if p.endswith("*") and path.startswith(p[:-1])), None)
        if handler is not None:
            response = handler(request)
            if response is not None:
                return response
        return _text(404, f"not found: {path}\n")


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context of ``certfile``/``keyfile``, or None (plain ws://). Python's server defaults (TLS 1.2 and
    up, its cipher choice); HTTP/1.1 only over ALPN, as a WebSocket upgrade needs it."""
    if not config.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.certfile, config.keyfile or None)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _text(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    return web.response(status, body.encode(), content_type)


@contextlib.asynccontextmanager
async def serve(app: ReplyOnPause | ReplyFn | Hub, *, host: str = "127.0.0.1", port: int = 8000,
                config: ServerConfig | None = None, engine: VadEngine | None = None,
                tune: bool = False, **options: Any) -> AsyncIterator[WsServer]:
    """Our server in the caller's loop: ``async with serve(reply_fn, port=0) as server:``.

    ``options`` are ``ServerConfig`` fields; ``tune`` applies ``tune_process`` once listening (what
    ``wsstream serve`` does). On exit every stream is closed (1001) and every task ended.
    """
    base = config or (app.config if isinstance(app, Hub) else ServerConfig())
    config = dataclasses.replace(base, host=host, port=port, **options)
    server = WsServer(app, config, engine=engine)
    await server.start()
    try:
        if tune:
            tune_process()
        yield server
    finally:
        await server.aclose()

