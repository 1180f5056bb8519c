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
the stream's output in order. A client that takes nothing for
``ServerConfig.write_stall_s`` is closed 1008, and a closing handshake is bounded
as on our own transport: a client that has not answered our close within
``CLOSE_TIMEOUT_S`` (less, for one known not to read) is dropped.

Every upgrade goes through the hub's ``AccessPolicy`` (``wsstream.access``)
before it is accepted: a refusal is the HTTP answer to the handshake (401, 403,
429 with a short text, through the ASGI WebSocket Denial Response extension;
a server without it answers 403). For TLS under uvicorn, ``uvicorn_tls(config)``
gives its ``ssl_certfile``/``ssl_keyfile``.
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
from wsstream.access import AccessPolicy, Admit, Refusal, policy_for
from wsstream.config import ServerConfig
from wsstream.dialects import DIALECTS, Dialect, ProtocolError
from wsstream.events import Close, Error, OutEvent
from wsstream.hub import Hub, StreamRefused
from wsstream.logs import STREAM_ID
from wsstream.metrics import CONTENT_TYPE as METRICS_TYPE
from wsstream.runner import StreamRunner, read_message, write_message
from wsstream.transport import CLOSE_TIMEOUT_S, STALL_REASON, THROTTLE_MIN_S, peer_gone, tune_socket
from wsstream.wsframes import close_reason

log = logging.getLogger(__name__)

CLOSE_POLL_S = 0.05  # how often a closing connection is checked for its end
READ_SLICE_S = 0.005  # the longest a reader runs without giving the loop a turn


class _Connection:
    """One WebSocket of the ASGI server running one stream."""

    def __init__(self, websocket: WebSocket, hub: Hub, dialect: Dialect, admit: Admit | None = None) -> None:
        self.ws = websocket
        self.hub = hub
        self.dialect = dialect
        self.admit = admit or Admit(websocket.url.query)
        self.gone = False  # the client disconnected: nothing more can be sent
        self.stalled = False  # the client took nothing for write_stall_s: only the close is tried
        self.close_deadline: float | None = None  # (loop time) our close went out: the client must answer by then
        self._stall_counted = False
        self._read_until = 0.0  # (loop time) the reader yields to the loop once past this

    async def run(self) -> None:
        hub, dialect = self.hub, self.dialect
        await hub.start()
        transport = _transport(self.ws)
        if transport is not None:  # (where the server lets us reach its socket: uvicorn)
            tune_socket(transport)
        await self.ws.accept(subprotocol=self.admit.subprotocol)
        try:
            stream = hub.open_stream(dialect, self.admit.query)
        except StreamRefused as exc:
            await self._send(exc.event)
            await self.ws.close(exc.code, close_reason(exc.reason))
            return
        except ProtocolError as exc:
            await self._send(Error(str(exc)))
            await self.ws.close(exc.code, close_reason(str(exc)))
            return
        STREAM_ID.set(stream.id)  # (this task is this connection's: its lines, and its reader's, are the stream's)
        reader = asyncio.get_running_loop().create_task(self._read(stream))
        try:
            await self._write(stream)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await hub.stream_ended(stream)
        if self.close_deadline is not None:  # (the stream's slot is free already)
            await self._finish_close(self.close_deadline, self.stalled or stream.overflowed)

    async def _read(self, stream: StreamRunner) -> None:
        loop = asyncio.get_running_loop()
        rate = self.hub.config.max_messages_per_s
        tokens, tokens_at, throttled = rate, loop.time(), False
        transport = _transport(self.ws)
        try:
            while True:
                if rate:  # the budget of messages, as on our transport: over it, wait (the server holds the socket)
                    now = loop.time()
                    tokens, tokens_at = min(rate, tokens + (now - tokens_at) * rate), now
                    if throttled and tokens >= rate / 2:
                        throttled = False
                    if tokens < 1:
                        if not throttled:
                            throttled = True
                            self.hub.metrics.inc("reads_throttled")
                        if transport is not None and peer_gone(transport):  # what it left must not run on
                            self.gone = True
                            stream.connection_lost()
                            transport.abort()
                            return
                        await asyncio.sleep(max(THROTTLE_MIN_S, (max(1.0, rate * THROTTLE_MIN_S) - tokens) / rate))
                        continue
                    tokens -= 1
                # The server's receive returns at once while it holds messages (uvicorn queues every message
                # of a read: 32,000 at 8 bytes each): give the loop a turn now and then, so one client's
                # flood of tiny frames does not hold up every other stream.
                if loop.time() > self._read_until:
                    await asyncio.sleep(0)
                    self._read_until = loop.time() + READ_SLICE_S
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
        stall_s = self.hub.config.write_stall_s
        while True:
            event = await stream.next_output()
            if isinstance(event, Close):
                if not self.gone:
                    # (a client known not to read gets the shorter grace, as on our transport)
                    not_reading = self.stalled or stream.overflowed
                    await self._close(event, min(CLOSE_TIMEOUT_S, stall_s) if not_reading else CLOSE_TIMEOUT_S)
                return
            if not self.gone and not self.stalled:
                try:
                    # (the ASGI server's send waits while its socket buffer is full: a stall is one send
                    # that does not return)
                    async with asyncio.timeout(stall_s):
                        await self._send(event, stream)
                except TimeoutError:
                    log.info("stream %s: the client has read nothing for %g s; closing it", stream.id, stall_s)
                    self._count_stall()
                    self.stalled = True
                    stream.close(1008, STALL_REASON)  # (a no-op when the outbox overflow has closed it)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    self.gone = True
                    stream.connection_lost()

    def _count_stall(self) -> None:
        """``write_stall_closes``: a connection ended because its client does not read (once each)."""
        if not self._stall_counted:
            self._stall_counted = True
            self.hub.metrics.inc("write_stall_closes")

    async def _close(self, event: Close, within: float) -> None:
        """Start the closing handshake, which must be over within ``within`` (see ``_finish_close``)."""
        deadline = asyncio.get_running_loop().time() + within
        # (a reason may quote a client's field name: a lone surrogate must not break the close)
        reason = close_reason(event.reason)
        try:
            async with asyncio.timeout_at(deadline):  # (the server's send waits while its buffer is full)
                await self.ws.close(event.code, reason)
        except TimeoutError:
            pass
        except Exception:  # (the client is gone meanwhile)
            return
        self.close_deadline = deadline

    async def _finish_close(self, deadline: float, not_reading: bool) -> None:
        """Wait until the ASGI server has ended the connection (the client answered our close), and drop
        it at ``deadline`` if not: a client that does not read never answers, and the server would wait
        forever for its buffer to drain. Only where the server lets us reach its transport (``_transport``);
        elsewhere the server's own close timeout applies."""
        transport = _transport(self.ws)
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        while not transport.is_closing() or transport.get_write_buffer_size():
            if loop.time() >= deadline:
                if not_reading or transport.get_write_buffer_size():  # (or our close is stuck behind the rest)
                    self._count_stall()
                log.info("a client did not answer our close in time; dropping the connection")
                transport.abort()
                return
            await asyncio.sleep(CLOSE_POLL_S)

    async def _send(self, event: OutEvent, stream: StreamRunner | None = None) -> None:
        message = write_message(stream, self.dialect, event)
        if message is None:
            return
        if isinstance(message, str):
            await self.ws.send_text(message)
        else:
            await self.ws.send_bytes(message)


def _transport(websocket: WebSocket) -> Any | None:
    """The ASGI server's transport under ``websocket``, where the server lets us reach it: ASGI has no
    message to drop a connection (and ``websocket.close`` waits for the very buffer that does not
    drain). uvicorn's ``receive`` is a method of its protocol, which holds the transport."""
    protocol = getattr(getattr(websocket, "_receive", None), "__self__", None)
    transport = getattr(protocol, "transport", None)
    needed = ("abort", "is_closing", "get_write_buffer_size")
    return transport if all(callable(getattr(transport, name, None)) for name in needed) else None


def endpoint(hub: Hub, dialect: type[Dialect]) -> Callable[[WebSocket], Any]:
    """The ASGI WebSocket endpoint of one dialect, for a route of your own choosing; the hub's access policy
    admits or refuses each upgrade before it is accepted."""
    async def run(websocket: WebSocket) -> None:
        policy = policy_for(hub)
        verdict = _check(policy, websocket, dialect.path)
        if isinstance(verdict, Refusal):
            await _deny(websocket, verdict)
            return
        try:
            await _Connection(websocket, hub, dialect(), verdict).run()
        finally:
            if verdict.ip is not None:
                policy.closed(verdict.ip)
    return run


def _check(policy: AccessPolicy, websocket: WebSocket, route: str) -> Admit | Refusal:
    """What the ASGI scope tells of the upgrade, put to the policy (the path as sent, for Twilio's signature)."""
    scope = websocket.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope.get("headers", ())]
    client = scope.get("client")
    ip = client[0] if client else ""
    return policy.check(path, query, headers, ip, asyncio.get_running_loop().time(),
                        scheme=scope.get("scheme", "ws"), route=route)


async def _deny(websocket: WebSocket, refusal: Refusal) -> None:
    """Refuse the handshake with the refusal's status and text, where the server lets us (the WebSocket Denial
    Response extension: uvicorn, hypercorn); elsewhere closing before accepting is the server's 403."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(refusal.body, refusal.status,
                                                               headers=dict(refusal.headers)))
    else:
        await websocket.close(1008, refusal.reason)


def uvicorn_tls(config: ServerConfig) -> dict[str, str]:
    """uvicorn's options for ``config``'s TLS (``uvicorn.Config(app, **uvicorn_tls(config))``); none without it."""
    if not config.certfile:
        return {}
    return {"ssl_certfile": config.certfile, **({"ssl_keyfile": config.keyfile} if config.keyfile else {})}


def routes(hub: Hub, prefix: str = "") -> list[BaseRoute]:
    """A WebSocket route per dialect (``/ws``, ``/websocket/offer``, ``/telephone/handler``) under ``prefix``."""
    policy_for(hub)  # (made now: its refusal counters show in /metrics before the first upgrade)
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
        return Response(hub.metrics_text(), media_type=METRICS_TYPE)

    async def static(request: Request) -> Response:
        found = web.static_file(request.path_params.get("name", "index.html"))
        return _plain(found) if found is not None else PlainTextResponse(f"not found: {request.url.path}\n", 404)

    async def upgrade_required(request: Request) -> Response:
        return PlainTextResponse(f"{request.url.path} is a WebSocket endpoint: connect with a WebSocket client\n", 426)

    http = [Route("/healthz", healthz), Route("/metrics", metrics), Route("/", static),
            Route("/static/{name:path}", static), *(Route(path, upgrade_required) for path in DIALECTS)]
    return Starlette(routes=[*routes(hub), *http], lifespan=lifespan(hub, on_ready))
