"""The websockets (asyncio) server: routing, dialects, limits, health and metrics.

Every connection (``wsstream.transport.WsConnection``, an asyncio protocol)
gets a dialect and a ``Session``: wire messages go through the dialect into the
session as they are read, and the session's output goes back through the
dialect. Plain HTTP GETs (``/healthz``, ``/metrics``, the demo page) are
answered by the same listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream import web
from wsstream.dialects import NativeDialect, fastrtc, twilio
from wsstream.dialects.base import Dialect
from wsstream.dialects.native import format_from_query
from wsstream.inference import InferenceWorker
from wsstream.metrics import Metrics
from wsstream.reply import ReplyOnPause
from wsstream.session import Session, SessionConfig
from wsstream.transport import CLOSE_TIMEOUT_S, WsConnection

log = logging.getLogger("wsstream.server")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    concurrency_limit: int = 500
    max_message_bytes: int = 1 << 20
    session: SessionConfig = field(default_factory=SessionConfig)
    reuse_port: bool = False
    vad_batch_interval_ms: float = 4.0  # model calls at least this far apart, so more streams share each
    ping_interval_s: float = 20.0  # keepalive pings; a connection silent for 3 intervals is dropped


@dataclass
class Route:
    """A WebSocket path: how to make its dialect and its session's formats from the request."""

    make: Callable[[WsServer, str], tuple[Dialect, dict[str, Any]]]


def _native_route(server: WsServer, query: str) -> tuple[Dialect, dict[str, Any]]:
    return NativeDialect(), {"input_format": format_from_query(query)}


class WsServer:
    """Owns the model, the inference worker and every connection's session."""

    def __init__(self, app: ReplyOnPause, config: ServerConfig | None = None,
                 engine: VadEngine | None = None) -> None:
        self.app = app
        self.config = config or ServerConfig()
        self.metrics = Metrics()
        self.routes: dict[str, Route] = {"/ws": Route(_native_route),
                                         "/telephone/handler": Route(twilio.route),
                                         "/websocket/offer": Route(fastrtc.route)}
        # Plain GETs by path; a key ending in "*" matches every path with that prefix.
        self.http_routes: dict[str, Callable[[Request], Response | None]] = dict(web.ROUTES)
        self.engine = engine
        self.worker: InferenceWorker | None = None
        self.active = 0
        self.draining = False
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self.connections: set[WsConnection] = set()
        self._idle = asyncio.Event()  # set whenever no call is open (drain waits on it)
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.worker is not None and not self.draining

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        if self.engine is None:
            model = await asyncio.to_thread(SileroModel)
            self.engine = VadEngine(model)
        self.worker = InferenceWorker(self.engine, min_interval_s=self.config.vad_batch_interval_ms / 1000)
        self._worker_task = asyncio.create_task(self.worker.run(), name="vad-worker")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: WsConnection(self), self.config.host, self.config.port,
            reuse_port=self.config.reuse_port or None, backlog=1024)
        self._keepalive_task = asyncio.create_task(self._keepalive(), name="keepalive")
        log.info("wsstream listening on ws://%s:%d/ws", self.config.host, self.port)

    async def __aenter__(self) -> WsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def drain(self, seconds: float) -> None:
        """Stop taking calls (listening ends, /healthz would say 503) and let the calls in progress
        finish, for at most ``seconds``; then close what is left (1001) and stop."""
        self.draining = True
        if self._server is not None and seconds > 0:
            self._server.close()
            if self.active:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), seconds)
            log.info("drain over: %d call(s) still open", self.active)
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, close every connection with 1001 (bounded wait), stop the worker."""
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
        for task in (self._keepalive_task, self._worker_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _keepalive(self) -> None:
        """Ping every open connection now and then; drop one that has sent nothing (not even a pong)
        for three intervals: a peer that vanished without a FIN must not hold a session forever."""
        loop = asyncio.get_running_loop()
        interval = self.config.ping_interval_s
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(self.connections):
                if conn.paused:  # we are not reading it (backpressure): it is not the one that is silent
                    conn.last_seen = now
                    continue
                if conn.state != "open":
                    continue
                if now - conn.last_seen > 3 * interval:
                    log.info("dropping a connection silent for %.0f s", now - conn.last_seen)
                    conn.close_code = 1006
                    assert conn.transport is not None
                    conn.transport.abort()
                else:
                    conn.ping()

    # ---- sessions (called by connections) ----------------------------------------

    def new_session(self, dialect: Dialect, kwargs: dict[str, Any]) -> Session:
        assert self.worker is not None
        self.active += 1
        self._idle.clear()
        self.metrics.inc("sessions_total")
        return Session(self.app, self.worker, session_id=f"s{next(self._ids)}", dialect=dialect.name,
                       metrics=self.metrics,
                       **{"config": self.config.session, **kwargs})  # a route may bring its own config

    async def wait_idle(self) -> None:
        """Return once no call is open (a session ends a moment after its connection)."""
        await self._idle.wait()

    def session_ended(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    # ---- HTTP ----------------------------------------------------------------

    def process_request(self, request: Request) -> Response | None:
        """The response to a plain HTTP request, or None to go on with a WebSocket handshake."""
        path = request.path.partition("?")[0]
        if path in self.routes:
            if "upgrade" not in request.headers.get("Connection", "").lower():
                return _text(426, f"{path} is a WebSocket endpoint: connect with a WebSocket client\n")
            return None
        if path == "/healthz":
            return _text(200, "ok\n") if self.ready else _text(503, "not ready\n")
        if path == "/metrics":
            live: Counter[str] = Counter()
            for conn in self.connections:
                if conn.session is not None:
                    live["audio_samples_in"] += conn.session.samples_in
            return _text(200, self.metrics.render(self._gauges(), live), "text/plain; version=0.0.4")
        handler = self.http_routes.get(path) or next(
            (h for p, h in self.http_routes.items() if p.endswith("*") and path.startswith(p[:-1])), None)
        if handler is not None:
            response = handler(request)
            if response is not None:
                return response
        return _text(404, f"not found: {path}\n")

    def _gauges(self) -> dict[str, float]:
        stats = self.worker.stats if self.worker else None
        return {
            "sessions_active": self.active,
            "concurrency_limit": self.config.concurrency_limit,
            "vad_batches": stats.batches if stats else 0,
            "vad_windows": stats.windows if stats else 0,
            "vad_largest_batch": stats.largest_batch if stats else 0,
        }

def _text(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    reason = {200: "OK", 404: "Not Found", 426: "Upgrade Required", 503: "Service Unavailable"}.get(status, "")
    data = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status, reason, headers, data)
