"""The websockets (asyncio) server: routing, dialects, limits, health and metrics.

A thin I/O layer: every connection gets a dialect and a ``Session``, a reader
that feeds wire messages through the dialect into the session, and a writer
that drains the session's output back through the dialect. Plain HTTP GETs
(``/healthz``, ``/metrics``, the demo page) are answered by the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream import web
from wsstream.dialects import NativeDialect, ProtocolError, fastrtc, twilio
from wsstream.dialects.base import Dialect, dumps
from wsstream.dialects.native import format_from_query
from wsstream.events import Close, Error
from wsstream.inference import InferenceWorker
from wsstream.metrics import Metrics
from wsstream.reply import ReplyOnPause
from wsstream.session import Session, SessionConfig

log = logging.getLogger("wsstream.server")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    concurrency_limit: int = 500
    max_message_bytes: int = 1 << 20
    session: SessionConfig = field(default_factory=SessionConfig)
    reuse_port: bool = False
    vad_batch_interval_ms: float = 8.0  # model calls at least this far apart, so more streams share each


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
        self._server: Server | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set whenever no call is open (drain waits on it)

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
        self._server = await serve(
            self._connection, self.config.host, self.config.port,
            process_request=self._process_request,
            compression=None,  # PCM does not compress; deflate only costs CPU
            max_size=self.config.max_message_bytes,
            max_queue=32,
            reuse_port=self.config.reuse_port,
        )
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
            self._server.close(close_connections=False)
            if self.active:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), seconds)
            log.info("drain over: %d call(s) still open", self.active)
            # close() is idempotent: the calls still open are closed here, as close() would have done
            await asyncio.gather(*(ws.close(1001, "server shutting down") for ws in self._server.connections),
                                 return_exceptions=True)
        await self.aclose()

    async def aclose(self) -> None:
        self.draining = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._worker_task is not None:
            self._worker_task.cancel()
            await asyncio.gather(self._worker_task, return_exceptions=True)

    # ---- HTTP ----------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path in self.routes:
            if "upgrade" not in request.headers.get("Connection", "").lower():
                return _text(426, f"{path} is a WebSocket endpoint: connect with a WebSocket client\n")
            return None
        if path == "/healthz":
            return _text(200, "ok\n") if self.ready else _text(503, "not ready\n")
        if path == "/metrics":
            return _text(200, self.metrics.render(self._gauges()), "text/plain; version=0.0.4")
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

    # ---- WebSocket -------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        path, _, query = ws.request.path.partition("?")
        route = self.routes[path]
        if self.active >= self.config.concurrency_limit or self.draining:
            self.metrics.inc("sessions_rejected")
            await ws.send(dumps({"status": "failed", "meta": {"error": "concurrency_limit_reached",
                                                               "limit": self.config.concurrency_limit}}))
            await ws.close(1013, "concurrency limit reached")
            return
        try:
            dialect, kwargs = route.make(self, query)
        except ProtocolError as exc:
            await ws.send(dumps({"type": "error", "data": str(exc)}))
            await ws.close(exc.code, str(exc)[:120])
            return
        assert self.worker is not None
        self.active += 1
        self._idle.clear()
        self.metrics.inc("sessions_total")
        session = Session(self.app, self.worker, session_id=f"s{next(self._ids)}", dialect=dialect.name,
                          metrics=self.metrics,
                          **{"config": self.config.session, **kwargs})  # a route may bring its own config
        try:
            async with session:
                writer = asyncio.create_task(self._writer(ws, dialect, session))
                try:
                    await self._reader(ws, dialect, session)
                finally:
                    if not writer.done():
                        writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def _reader(self, ws: ServerConnection, dialect: Dialect, session: Session) -> None:
        try:
            async for message in ws:
                try:
                    events = dialect.parse(message)
                except ProtocolError as exc:
                    self.metrics.inc("protocol_errors")
                    session.emit(Error(str(exc)))
                    if exc.fatal:
                        session.emit(Close(exc.code, str(exc)[:120]))
                        # Keep reading until the writer has closed the connection.
                    continue
                for event in events:
                    await session.handle(event)
        except ConnectionClosed:
            pass

    async def _writer(self, ws: ServerConnection, dialect: Dialect, session: Session) -> None:
        try:
            while True:
                event = await session.next_output()
                if isinstance(event, Close):
                    await ws.close(event.code, event.reason[:120])
                    return
                try:
                    message = dialect.serialize(event)
                except (TypeError, ValueError) as exc:
                    # e.g. an AdditionalOutputs value JSON cannot carry: tell the client, keep the stream
                    log.warning("cannot send %s: %s", type(event).__name__, exc)
                    message = dialect.serialize(Error(f"the server could not encode a {type(event).__name__} "
                                                      f"message: {exc}"))
                if message is not None:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("writer failed; closing the connection")
            await ws.close(1011, "internal error")


def _text(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    reason = {200: "OK", 404: "Not Found", 426: "Upgrade Required", 503: "Service Unavailable"}.get(status, "")
    data = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status, reason, headers, data)
