"""One WebSocket connection as an ``asyncio.Protocol``: the lean I/O layer under a ``Session``.

Per-message cost is what bounds streams per core, so the hot path has no
coroutines in it: bytes from the socket go through ``FrameParser`` and the
dialect straight into ``Session.offer`` inside ``data_received``. Only
backpressure (inference behind) suspends anything: reading pauses and one task
waits for room. The HTTP handshake (and plain GETs) is websockets' sans-I/O
``ServerProtocol``; after the 101 the connection speaks ``wsstream.wsframes``.

Each connection owns at most two tasks, both ended on close: the writer (the
session's output that could not be written at once, and its Close) and the
backlog drainer while reading is paused; one timer covers the handshake, then
the closing handshake.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from websockets.http11 import Request
from websockets.server import ServerProtocol

from wsstream.dialects import ProtocolError
from wsstream.dialects.base import Dialect, dumps
from wsstream.events import AudioIn, Close, Error, InEvent, OutEvent
from wsstream.session import Session
from wsstream.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseFrame,
    FrameParser,
    Message,
    Ping,
    Violation,
    close_payload,
    encode,
)

if TYPE_CHECKING:
    from wsstream.server import WsServer

log = logging.getLogger("wsstream.transport")

OPEN_TIMEOUT_S = 10.0  # to complete the HTTP handshake
CLOSE_TIMEOUT_S = 5.0  # for the peer to answer our close frame
MAX_REQUEST_BYTES = 16384
WRITE_HIGH_WATER = 256 * 1024


class WsConnection(asyncio.Protocol):
    """States: handshake -> open -> closing -> closed (explicit, in ``state``)."""

    def __init__(self, server: WsServer) -> None:
        self.server = server
        self.state = "handshake"
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None
        self.session: Session | None = None
        self.dialect: Dialect | None = None
        self.last_seen = 0.0
        self.close_code: int | None = None
        self._loop = asyncio.get_running_loop()
        self._handshake = ServerProtocol(max_size=server.config.max_message_bytes)
        self._request_buf = bytearray()
        self._parser = FrameParser(server.config.max_message_bytes)
        self._backlog: collections.deque[InEvent] | None = None  # events held while reading is paused
        self._writable = asyncio.Event()
        self._writable.set()
        self._out: list[bytes] = []  # frames waiting for this loop turn's flush
        self._audio_bytes: Callable[[bytes], bytes] | None = None
        self._pending_pong: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()  # closed, and its session ended

    # ---- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.last_seen = self._loop.time()
        self.server.connections.add(self)
        self._timer = self._loop.call_later(OPEN_TIMEOUT_S, self._abort)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self._loop.time()
        if self._audio_bytes is not None and self._backlog is None and self.state == "open":
            payload = self._parser.whole_binary(data)
            if payload is not None:  # the hot path: one read, one binary audio message
                audio = self._audio_bytes(payload)
                if not self.session.offer_audio(audio):  # type: ignore[union-attr]
                    self._pause([AudioIn(audio)])
                return
        if self.state == "handshake":
            self._handshake_data(data)
        elif self.state != "closed":
            self._frames(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed client is a gone client

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._pending_pong is not None:
            self._write(OP_PONG, self._pending_pong)
            self._pending_pong = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = "closed"
        self.close_code = self.close_code or 1006
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._writable.set()
        if self._drainer is not None:
            self._drainer.cancel()
        if self.session is not None:
            self.session.emit(Close(1006, "connection lost"))  # ends the writer, which ends the session
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.state == "closed" and (self._writer is None or self._writer.done()) and not self.done.done():
            self.done.set_result(None)

    # ---- handshake -------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        buf = self._request_buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_REQUEST_BYTES:
                self._abort()
            return
        request_bytes, rest = bytes(buf[:end + 4]), bytes(buf[end + 4:])
        self._request_buf = bytearray()
        hs = self._handshake
        hs.receive_data(request_bytes)
        events = hs.events_received()
        request = events[0] if events and isinstance(events[0], Request) else None
        response = None
        if request is not None:
            response = self.server.process_request(request)
            if response is None:
                response = hs.accept(request)
            hs.send_response(response)
        self._flush_handshake()
        if request is None or response is None or response.status_code != 101:
            self.state = "closed"
            assert self.transport is not None
            self.transport.close()  # after the response is written
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.request = request
        self.state = "open"
        self._open(request)
        if rest and self.state != "closed":  # (a refused stream is "closing": its close is still read)
            self._frames(rest)

    def _flush_handshake(self) -> None:
        assert self.transport is not None
        for chunk in self._handshake.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def _open(self, request: Request) -> None:
        server = self.server
        path, _, query = request.path.partition("?")
        route = server.routes[path]
        if server.active >= server.config.concurrency_limit or server.draining:
            server.metrics.inc("sessions_rejected")
            self.send(dumps({"status": "failed", "meta": {"error": "concurrency_limit_reached",
                                                           "limit": server.config.concurrency_limit}}))
            self.close(1013, "concurrency limit reached")
            return
        try:
            dialect, kwargs = route.make(server, query)
        except ProtocolError as exc:
            self.send(dumps({"type": "error", "data": str(exc)}))
            self.close(exc.code, str(exc))
            return
        assert server.worker is not None
        self.dialect = dialect
        self._audio_bytes = getattr(dialect, "audio_bytes", None)  # dialects whose binary messages are audio
        self.session = server.new_session(dialect, kwargs)
        self.session.sink = self._sink
        self._writer = self._loop.create_task(self._run(self.session))
        self._writer.add_done_callback(self._finished)

    # ---- inbound ---------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        for event in self._parser.feed(data):
            if isinstance(event, Message):
                if self.state == "open" and self.session is not None:
                    self._message(event.data)
            elif isinstance(event, Ping):
                if self._writable.is_set():
                    self._write(OP_PONG, event.payload)
                else:  # a client that pings but does not read gets one pong, for its latest ping
                    self._pending_pong = event.payload
            elif isinstance(event, CloseFrame):
                self._peer_closed(event)
            elif isinstance(event, Violation):  # fail the connection: close frame, then end TCP at once
                self.server.metrics.inc("protocol_errors")
                self.close(event.code, event.reason)
                self._flush()
                assert self.transport is not None
                self.transport.close()
            # a Pong only refreshes last_seen, done on every read

    def _message(self, message: str | bytes) -> None:
        assert self.session is not None and self.dialect is not None
        session = self.session
        if self._audio_bytes is not None and type(message) is bytes and self._backlog is None:
            data = self._audio_bytes(message)
            if not session.offer_audio(data):
                self._pause([AudioIn(data)])
            return
        try:
            events = self.dialect.parse(message)
        except ProtocolError as exc:
            self.server.metrics.inc("protocol_errors")
            session.emit(Error(str(exc)))
            if exc.fatal:
                session.emit(Close(exc.code, str(exc)[:120]))
            return
        backlog = self._backlog
        if backlog is not None:  # reading is paused; what was already read waits its turn
            backlog.extend(events)
            return
        for i, event in enumerate(events):
            if not session.offer(event):
                self._pause(events[i:])
                return

    def _pause(self, events: list[InEvent]) -> None:
        """Inference is behind for this stream: stop reading (TCP pushes back) until it has room."""
        assert self.transport is not None
        self.transport.pause_reading()
        self._backlog = collections.deque(events)
        self._drainer = self._loop.create_task(self._drain_backlog())

    async def _drain_backlog(self) -> None:
        assert self.session is not None and self._backlog is not None
        backlog, session = self._backlog, self.session
        try:
            while backlog:
                if session.offer(backlog[0]):
                    backlog.popleft()
                else:
                    await session.wait_vad_room()
        except Exception:
            log.exception("session failed on input; closing the connection")
            self._drainer = None
            self.close(1011, "internal error")
            return
        self._backlog = None
        self._drainer = None
        if self.state == "open" and self.transport is not None:
            self.transport.resume_reading()

    def _peer_closed(self, frame: CloseFrame) -> None:
        if self.state == "open":  # the peer began: answer with its code, then end the TCP connection
            self._write(OP_CLOSE, b"" if frame.code == 1005 else close_payload(frame.code))
        self.close_code = frame.code
        self.state = "closing"
        self._stop_backlog()
        if self.session is not None:
            self.session.emit(Close(frame.code if frame.code != 1005 else 1000, "peer closed"))
        self._flush()
        assert self.transport is not None
        self.transport.close()  # waits for our buffer to drain: bounded by the timer below
        self._arm_timer(CLOSE_TIMEOUT_S)

    # ---- outbound --------------------------------------------------------------

    def _write(self, opcode: int, payload: bytes) -> None:
        """Queue a frame; frames queued in one turn of the event loop leave in one write (one syscall)."""
        if self.state != "closed" and self.transport is not None and not self.transport.is_closing():
            self._out.append(encode(opcode, payload))
            if len(self._out) == 1:
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        out = self._out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def send(self, message: str | bytes) -> None:
        """Queue one message on the socket (no flow control here: ``_sink`` and ``_run`` see to it)."""
        if self.state == "open":
            if isinstance(message, str):
                self._write(OP_TEXT, message.encode())
            else:
                self._write(OP_BINARY, message)

    def ping(self) -> None:
        if self.state == "open":
            self._write(OP_PING, b"")

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; the peer has CLOSE_TIMEOUT_S to answer before we drop it."""
        if self.state != "open":
            return
        self._write(OP_CLOSE, close_payload(code, reason))
        self.state = "closing"
        self.close_code = code
        self._stop_backlog()  # and read again, or the peer's close frame would never be seen
        self._arm_timer(CLOSE_TIMEOUT_S)

    def _arm_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(seconds, self._abort)

    def _stop_backlog(self) -> None:
        if self._backlog is not None:
            self._backlog = None
            if self._drainer is not None:
                self._drainer.cancel()
                self._drainer = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    @property
    def paused(self) -> bool:
        """Reading is paused for backpressure (the peer is not silent, we are not listening)."""
        return self._backlog is not None

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _sink(self, event: OutEvent) -> bool:
        """The session's direct path: write ``event`` now if the socket can take it."""
        if not self._writable.is_set() or self.state != "open":
            return False
        self._emit(event)
        return True

    def _emit(self, event: OutEvent) -> None:
        assert self.dialect is not None
        try:
            message = self.dialect.serialize(event)
        except (TypeError, ValueError) as exc:
            # e.g. an AdditionalOutputs value JSON cannot carry: tell the client, keep the stream
            log.warning("cannot send %s: %s", type(event).__name__, exc)
            message = self.dialect.serialize(Error(f"the server could not encode a {type(event).__name__} "
                                                   f"message: {exc}"))
        if message is not None:
            self.send(message)

    async def _run(self, session: Session) -> None:
        """The writer: what the direct path could not take (the socket was full), in order, and the
        session's Close."""
        async with session:
            while True:
                event = await session.next_output()
                if isinstance(event, Close):
                    self.close(event.code, event.reason[:120])
                    return
                self._emit(event)
                if not self._writable.is_set():
                    await self._writable.wait()  # the client reads slowly: wait, the outbox is bounded

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.server.session_ended()
        if not task.cancelled() and task.exception() is not None:
            log.error("connection writer failed", exc_info=task.exception())
            self.close(1011, "internal error")
        self._maybe_done()
