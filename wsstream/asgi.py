"""The ASGI driver: every dialect over a Starlette (or FastAPI) WebSocket, next to the host app's routes.

Needs the ``asgi`` extra (``pip install 'wsstream[asgi]'``). Mount the
endpoints in your own app::

    hub = wsstream.Hub(reply_fn)
    app = FastAPI(lifespan=wsstream.asgi.lifespan(hub))
    wsstream.asgi.mount(app, hub)          # /ws, /websocket/offer, /telephone/handler

or serve ours whole (``create_app``: the endpoints plus /healthz, /metrics and
the demo page). Every endpoint mounted from one hub, in as many apps as you
like, shares its model, its inference worker and its concurrency limit. Each
connection is two coroutines: a reader feeding the stream (it stops reading
while inference is behind, so the client is pushed back) and a writer sending
the stream's output in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from wsstream import web
from wsstream.dialects import DIALECTS, Dialect, ProtocolError
from wsstream.events import Close, Error, OutEvent
from wsstream.hub import Hub, StreamRefused
from wsstream.runner import StreamRunner, read_message, write_message

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0  # one message the client's socket cannot take for this long ends the stream


class _Connection:
    """One WebSocket of the ASGI server running one stream."""

    def __init__(self, websocket: WebSocket, hub: Hub, dialect: Dialect) -> None:
        self.ws = websocket
        self.hub = hub
        self.dialect = dialect
        self.gone = False  # the client disconnected: nothing more can be sent

    async def run(self) -> None:
        hub, dialect = self.hub, self.dialect
        await hub.start()
        await self.ws.accept()
        try:
            stream = hub.open_stream(dialect, self.ws.url.query)
        except StreamRefused as exc:
            await self._send(exc.event)
            await self.ws.close(exc.code, exc.reason)
            return
        except ProtocolError as exc:
            await self._send(Error(str(exc)))
            await self.ws.close(exc.code, str(exc)[:120])
            return
        reader = asyncio.get_running_loop().create_task(self._read(stream))
        try:
            await self._write(stream)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await hub.stream_ended(stream)

    async def _read(self, stream: StreamRunner) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    self.gone = True
                    code = message.get("code", 1005)  # the peer's close code, as our transport reports it
                    stream.close(1000 if code == 1005 else code, "peer closed")
                    return
                data: str | bytes | None = message.get("bytes")
                if data is None:
                    data = message.get("text")
                if data is None:
                    continue
                for event in read_message(stream, self.dialect, data):
                    while not stream.offer(event):  # inference is behind: stop reading until it has room
                        await stream.wait_vad_room()
        except WebSocketDisconnect:
            self.gone = True
            stream.connection_lost()
        except Exception:
            log.exception("stream %s failed on input; closing it", stream.id)
            stream.close(1011, "internal error")

    async def _write(self, stream: StreamRunner) -> None:
        while True:
            event = await stream.next_output()
            if isinstance(event, Close):
                if not self.gone:
                    with contextlib.suppress(Exception):  # (the client may be gone meanwhile)
                        # (a reason may quote a client's field name: a lone surrogate must not break the close)
                        reason = event.reason[:120].encode("utf-8", "replace").decode("utf-8")
                        await self.ws.close(event.code, reason)
                return
            if not self.gone:
                try:
                    # A client that takes nothing for this long is gone (or will not read): end the stream
                    # and free its slot, as our transport's close timeout does.
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await self._send(event, stream)
                except TimeoutError:
                    log.info("stream %s: the client took nothing for %.0f s; ending it", stream.id, SEND_TIMEOUT_S)
                    self.gone = True
                    stream.close(1008, "client is not reading")
                except (WebSocketDisconnect, RuntimeError, OSError):
                    self.gone = True
                    stream.connection_lost()

    async def _send(self, event: OutEvent, stream: StreamRunner | None = None) -> None:
        message = write_message(stream, self.dialect, event)
        if message is None:
            return
        if isinstance(message, str):
            await self.ws.send_text(message)
        else:
            await self.ws.send_bytes(message)


def endpoint(hub: Hub, dialect: type[Dialect]) -> Callable[[WebSocket], Any]:
    """The ASGI WebSocket endpoint of one dialect, for a route of your own choosing."""
    async def run(websocket: WebSocket) -> None:
        await _Connection(websocket, hub, dialect()).run()
    return run


def routes(hub: Hub, prefix: str = "") -> list[BaseRoute]:
    """A WebSocket route per dialect (``/ws``, ``/websocket/offer``, ``/telephone/handler``) under ``prefix``."""
    return [WebSocketRoute(prefix + path, endpoint(hub, cls)) for path, cls in DIALECTS.items()]


def mount(app: Any, hub: Hub, prefix: str = "") -> None:
    """Add our WebSocket endpoints to a Starlette or FastAPI ``app``."""
    app.router.routes.extend(routes(hub, prefix))


def lifespan(hub: Hub, on_ready: Callable[[], Any] | None = None
             ) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """For ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)``: the model loads at startup and every
    stream is closed (1001) at shutdown."""
    @contextlib.asynccontextmanager
    async def span(app: Any) -> AsyncIterator[None]:
        async with hub:
            if on_ready is not None:
                on_ready()
            yield
    return span


def _plain(response: Any) -> Response:
    """A websockets ``Response`` (what ``wsstream.web`` builds for our own server) as Starlette's."""
    headers = {k: v for k, v in response.headers.raw_items() if k.lower() not in ("content-length", "connection")}
    return Response(response.body, response.status_code, headers=headers)


def create_app(hub: Hub, *, on_ready: Callable[[], Any] | None = None) -> Starlette:
    """Our whole server as an ASGI app: the WebSocket endpoints, /healthz, /metrics and the demo page."""
    async def healthz(request: Request) -> Response:
        status, text = hub.health()
        return PlainTextResponse(text, status)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(hub.metrics_text(), media_type="text/plain; version=0.0.4")

    async def static(request: Request) -> Response:
        found = web.static_file(request.path_params.get("name", "index.html"))
        return _plain(found) if found is not None else PlainTextResponse(f"not found: {request.url.path}\n", 404)

    async def upgrade_required(request: Request) -> Response:
        return PlainTextResponse(f"{request.url.path} is a WebSocket endpoint: connect with a WebSocket client\n", 426)

    http = [Route("/healthz", healthz), Route("/metrics", metrics), Route("/", static),
            Route("/static/{name:path}", static), *(Route(path, upgrade_required) for path in DIALECTS)]
    return Starlette(routes=[*routes(hub), *http], lifespan=lifespan(hub, on_ready))
