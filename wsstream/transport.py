"""One WebSocket connection as an ``asyncio.Protocol``: the lean driver of a stream.

Per-message cost is what bounds streams per core, so the hot path has no
coroutines in it: bytes from the socket go through ``FrameParser`` and the
dialect straight into the stream (``StreamRunner.offer``) inside ``data_received``. Only
backpressure (inference behind) suspends anything: reading pauses and one task
waits for room. The HTTP handshake (and plain GETs) is websockets' sans-I/O
``ServerProtocol``; after the 101 the connection speaks ``wsstream.wsframes``.

Each connection owns at most two tasks, both ended on close: the writer (the
stream's output that could not be written at once, and its Close) and the
backlog drainer while reading is paused; one timer covers the handshake, then
the closing handshake, one the keepalive pings, and one a write stall (a peer
that does not read: keepalive cannot see it, as it may well keep sending). The
connection knows its host only through ``Host``: the hub that opens streams,
the access policy that admits upgrades, the HTTP answers, the set of open
connections. Over TLS (``loop.create_server(ssl=...)``) nothing here changes:
the transport given is the TLS one.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import http
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from wsstream import web
from wsstream.access import AccessPolicy, Refusal
from wsstream.dialects import DIALECTS, ProtocolError
from wsstream.dialects.base import Dialect
from wsstream.events import AudioIn, Close, Error, InEvent, OutEvent
from wsstream.hub import Hub, StreamRefused
from wsstream.runner import StreamRunner, read_message, write_message
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

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0  # to complete the HTTP handshake
CLOSE_TIMEOUT_S = 5.0  # for the peer to answer our close frame
MAX_REQUEST_BYTES = 16384
WRITE_HIGH_WATER = 256 * 1024
# The kernel's send buffer of each accepted socket (Linux doubles it: 128 KB). Left alone, it autotunes
# up to tcp_wmem's max (4 MB on loopback), minutes of reply audio a client that never reads can soak up
# before our own buffer passes WRITE_HIGH_WATER and the write stall can start. 64 KB still carries
# 5 Mbit/s at 100 ms round trip, twenty times a 16 kHz PCM reply.
SEND_BUFFER = 64 * 1024
THROTTLE_MIN_S = 0.02  # the shortest wait of a connection over its budget of messages (a batch, not one)
_TCP_ESTABLISHED = 1
STALL_REASON = "client is not reading"


class _HandshakeLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' handshake log without its DEBUG lines, which quote every request and response header (a
    token in Authorization, in the query, in the subprotocol): a token must never reach a log."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


HANDSHAKE_LOG = _HandshakeLog(logging.getLogger("websockets.server"), {})


class Host(Protocol):
    """What a connection needs of the server that accepted it."""

    hub: Hub
    access: AccessPolicy
    connections: set[WsConnection]

    def process_request(self, request: Request) -> Response | None:
        """The answer to a plain HTTP request, or None to go on with the WebSocket handshake."""
        ...


class WsConnection(asyncio.Protocol):
    """States: handshake -> open -> closing -> closed (explicit, in ``state``)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.hub = host.hub
        self.state = "handshake"
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None
        self.stream: StreamRunner | None = None
        self.dialect: Dialect | None = None
        self.last_seen = 0.0
        self.close_code: int | None = None
        self._query = ""  # what the dialect sees of the request's query (the access policy took any token out)
        self._slot_ip: str | None = None  # a per-address connection slot this connection holds
        self._loop = asyncio.get_running_loop()
        max_bytes = self.hub.config.max_message_bytes
        self._handshake = ServerProtocol(max_size=max_bytes, logger=HANDSHAKE_LOG)
        self._request_buf = bytearray()
        self._parser = FrameParser(max_bytes)
        self._ping_timer: asyncio.TimerHandle | None = None
        self._backlog: collections.deque[InEvent] | None = None  # events held while reading is paused
        self._writable = asyncio.Event()
        self._writable.set()
        self._out: list[bytes] = []  # frames waiting for this loop turn's flush
        self._audio_bytes: Callable[[bytes], bytes] | None = None
        self._pending_pong: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None  # armed while the socket takes nothing
        self._stall_counted = False
        # The budget of frames (a token bucket of max_messages_per_s, as deep as one second's worth); over
        # it, reading pauses (the parser keeps what was read) and _throttle resumes it when it has refilled.
        self._rate = self.hub.config.max_messages_per_s
        self._tokens = self._rate
        self._tokens_at = self._loop.time()
        self._throttle: asyncio.TimerHandle | None = None
        self._throttled = False  # in a throttled episode (counted once), until half the burst refills
        self._writer: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()  # closed, and its stream ended

    # ---- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        tune_socket(self.transport)
        self.last_seen = self._loop.time()
        self.host.connections.add(self)
        self._timer = self._loop.call_later(OPEN_TIMEOUT_S, self._abort)

    def data_received(self, data: bytes) -> None:
        now = self.last_seen = self._loop.time()
        if self._throttle is not None:  # over budget (a transport may deliver after pause_reading): it waits
            self._parser.feed(data, 0)
            return
        if (self._audio_bytes is not None and self._backlog is None and self.state == "open"
                and (not self._rate or self._budget(now) >= 1)):
            payload = self._parser.whole_binary(data)
            if payload is not None:  # the hot path: one read, one binary audio message
                self._tokens -= 1
                audio = self._audio_bytes(payload)
                if not self.stream.offer_audio(audio):  # type: ignore[union-attr]
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
        if self._stall_timer is None and self.state in ("open", "closing"):
            self._stall_timer = self._loop.call_later(self.hub.config.write_stall_s, self._write_stalled)

    def resume_writing(self) -> None:
        self._writable.set()
        if self._stall_timer is not None:  # the peer read something: not stalled
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._pending_pong is not None:
            self._write(OP_PONG, self._pending_pong)
            self._pending_pong = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = "closed"
        self.close_code = self.close_code or 1006
        self.host.connections.discard(self)
        if self._slot_ip is not None:
            self.host.access.closed(self._slot_ip)
            self._slot_ip = None
        for timer in (self._timer, self._ping_timer, self._stall_timer, self._throttle):
            if timer is not None:
                timer.cancel()
        self._writable.set()
        if self._drainer is not None:
            self._drainer.cancel()
        if self.stream is not None:
            self.stream.connection_lost()  # ends the writer, which ends the stream
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
            # (pages answer as to a GET; for_method fits that to HEAD, or to another method's 405)
            response = web.for_method(request.method, self.host.process_request(request) or self._upgrade(request))
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

    def _upgrade(self, request: Request) -> Response:
        """The answer to an upgrade on a WebSocket path: the access policy's refusal, or the handshake's."""
        assert self.transport is not None
        path, _, query = request.path.partition("?")
        peer = self.transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else ""
        scheme = "wss" if self.transport.get_extra_info("ssl_object") is not None else "ws"
        verdict = self.host.access.check(path, query, request.headers.raw_items(), ip, self._loop.time(),
                                         scheme=scheme)
        if isinstance(verdict, Refusal):
            return refusal_response(verdict)
        self._slot_ip = verdict.ip  # (given back in connection_lost, whatever happens next)
        self._query = verdict.query
        response = self._handshake.accept(request)
        if response.status_code == 101 and verdict.subprotocol is not None:
            response.headers["Sec-WebSocket-Protocol"] = verdict.subprotocol
        return response

    def _flush_handshake(self) -> None:
        assert self.transport is not None
        for chunk in self._handshake.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def _open(self, request: Request) -> None:
        path = request.path.partition("?")[0]
        dialect = self.dialect = DIALECTS[path]()
        try:
            stream = self.hub.open_stream(dialect, self._query)
        except StreamRefused as exc:
            self._emit(exc.event)
            self.close(exc.code, exc.reason)
            return
        except ProtocolError as exc:
            self._emit(Error(str(exc)))
            self.close(exc.code, str(exc))
            return
        self.stream = stream
        self._audio_bytes = dialect.audio if dialect.binary_audio else None
        stream.sink = self._sink
        self._writer = self._loop.create_task(self._run(stream), context=stream.log_context.copy())
        self._writer.add_done_callback(self._finished)
        self._ping_timer = self._loop.call_later(self.hub.config.ping_interval_s, self._keepalive)

    def _keepalive(self) -> None:
        """Ping now and then; drop a peer that has sent nothing (not even a pong) for three intervals:
        one that vanished without a FIN must not hold a stream forever."""
        if self.state != "open":
            return
        interval = self.hub.config.ping_interval_s
        now = self._loop.time()
        if self.paused or self._throttle is not None:  # we are not reading it: it is not the one that is silent
            if self._peer_gone():
                self._abort()
                return
            self.last_seen = now
        elif now - self.last_seen > 3 * interval:
            log.info("dropping a connection silent for %.0f s", now - self.last_seen, extra=self._about())
            self.close_code = 1006
            self._abort()
            return
        else:
            self.ping()
        self._ping_timer = self._loop.call_later(interval, self._keepalive)

    # ---- inbound ---------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        parser = self._parser
        limit = self._budget(self._loop.time()) if self._rate else None
        events = parser.feed(data, limit)
        if limit is not None:
            self._tokens -= parser.frames
            if parser.frames >= limit and parser.buffered and not parser.failed:
                self._throttle_reading()
        for event in events:
            if isinstance(event, Message):
                if self.state == "open" and self.stream is not None:
                    self._message(event.data)
            elif isinstance(event, Ping):
                if self._writable.is_set():
                    self._write(OP_PONG, event.payload)
                else:  # a client that pings but does not read gets one pong, for its latest ping
                    self._pending_pong = event.payload
            elif isinstance(event, CloseFrame):
                self._peer_closed(event)
            elif isinstance(event, Violation):  # fail the connection: close frame, then end TCP at once
                dialect = self.dialect.name if self.dialect is not None else "none"
                self.hub.metrics.inc_labelled("protocol_errors", dialect, "framing")
                self.close(event.code, event.reason)
                self._flush()
                assert self.transport is not None
                self.transport.close()
            # a Pong only refreshes last_seen, done on every read

    def _message(self, message: str | bytes) -> None:
        assert self.stream is not None and self.dialect is not None
        stream = self.stream
        events = read_message(stream, self.dialect, message)
        backlog = self._backlog
        if backlog is not None:  # reading is paused; what was already read waits its turn
            backlog.extend(events)
            return
        for i, event in enumerate(events):
            if not stream.offer(event):
                self._pause(events[i:])
                return

    def _budget(self, now: float) -> int:
        """Whole frames this connection may have parsed now (the bucket refilled since it was last seen)."""
        rate = self._rate
        tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens, self._tokens_at = tokens, now
        if self._throttled and tokens >= rate / 2:
            self._throttled = False  # under budget long enough: a later flood is a new episode
        return int(tokens)

    def _throttle_reading(self) -> None:
        """Over budget: stop reading (what was read waits in the parser, the rest in the kernel, so TCP
        pushes the client back) until enough of the budget has refilled for a batch of frames."""
        assert self.transport is not None
        if self.state == "closed" or self._throttle is not None:
            return
        if not self._throttled:
            self._throttled = True
            self.hub.metrics.inc("reads_throttled")
        self.transport.pause_reading()
        wait = max(THROTTLE_MIN_S, (max(1.0, self._rate * THROTTLE_MIN_S) - self._tokens) / self._rate)
        self._throttle = self._loop.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttle = None
        if self.state == "closed":
            return
        if self._peer_gone():  # what it left unread must not go on through VAD for minutes
            self._abort()
            return
        self._read_on()

    def _read_on(self) -> None:
        """After a pause (budget refilled, backlog drained): parse what the parser holds, then read the
        socket again, unless that paused it anew."""
        if self.state == "closed" or self._throttle is not None or self._backlog is not None:
            return
        if self._parser.buffered:
            self._frames(b"")
        if (self._throttle is None and self._backlog is None and self.transport is not None
                and not self.transport.is_closing()):
            self.transport.resume_reading()

    def _peer_gone(self) -> bool:
        assert self.transport is not None
        return peer_gone(self.transport)

    def _pause(self, events: list[InEvent]) -> None:
        """Inference is behind for this stream: stop reading (TCP pushes back) until it has room."""
        assert self.transport is not None
        self.transport.pause_reading()
        self._backlog = collections.deque(events)
        context = self.stream.log_context.copy() if self.stream is not None else None
        self._drainer = self._loop.create_task(self._drain_backlog(), context=context)

    async def _drain_backlog(self) -> None:
        assert self.stream is not None and self._backlog is not None
        backlog, stream = self._backlog, self.stream
        try:
            while backlog:
                if stream.offer(backlog[0]):
                    backlog.popleft()
                else:
                    await stream.wait_vad_room()
        except Exception:
            log.exception("stream failed on input; closing the connection")
            self._drainer = None
            self.close(1011, "internal error")
            return
        self._backlog = None
        self._drainer = None
        if self.state == "open":
            self._read_on()

    def _peer_closed(self, frame: CloseFrame) -> None:
        if self.state == "open":  # the peer began: answer with its code, then end the TCP connection
            self._write(OP_CLOSE, b"" if frame.code == 1005 else close_payload(frame.code))
        self.close_code = frame.code
        self.state = "closing"
        self._stop_backlog()
        if self.stream is not None:
            self.stream.close(frame.code if frame.code != 1005 else 1000, "peer closed")
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

    def _arm_timer(self, seconds: float, then: Callable[[], None] | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(seconds, then or self._abort)

    def _stop_backlog(self) -> None:
        if self._backlog is not None:
            self._backlog = None
            if self._drainer is not None:
                self._drainer.cancel()
                self._drainer = None
            if self._throttle is None and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()  # (a throttled one resumes when its budget refills)

    @property
    def paused(self) -> bool:
        """Reading is paused for backpressure (the peer is not silent, we are not listening)."""
        return self._backlog is not None

    def _write_stalled(self) -> None:
        """The socket has taken nothing for ``write_stall_s``: the peer does not read (and keepalive
        cannot tell, as it may keep sending). Open: close 1008 (the frame leaves only if the peer reads
        after all), end the stream, and abort if that is not over within the grace, for a peer that
        does not read never answers a close. Closing already: our close is stuck behind what it did
        not read, so abort now."""
        self._stall_timer = None
        if self.state not in ("open", "closing"):
            return
        stall_s = self.hub.config.write_stall_s
        self._count_stall()
        if self.state == "closing":
            log.info("dropping a closing connection that has read nothing for %.1f s", stall_s, extra=self._about())
            self._abort()
            return
        log.info("closing a connection that has read nothing for %.1f s", stall_s, extra=self._about())
        self.close(1008, STALL_REASON)
        if self.stream is not None:
            self.stream.close(1008, STALL_REASON)  # its reply is cancelled and its slot freed
        self._arm_timer(min(CLOSE_TIMEOUT_S, stall_s))

    def _about(self) -> dict[str, Any]:
        """``extra`` for a log line about this connection: its stream's id (wsstream.logs)."""
        return {"stream_id": self.stream.id if self.stream is not None else None}

    def _count_stall(self) -> None:
        """``write_stall_closes``: a connection ended because its client does not read (once each)."""
        if not self._stall_counted:
            self._stall_counted = True
            self.hub.metrics.inc("write_stall_closes")

    def _drop_not_reading(self) -> None:
        """The client whose outbox overflowed has not taken our close in time either: drop it."""
        self._count_stall()
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _sink(self, event: OutEvent) -> bool:
        """The stream's direct path: write ``event`` now if the socket can take it."""
        if not self._writable.is_set() or self.state != "open":
            return False
        self._emit(event)
        return True

    def _emit(self, event: OutEvent) -> None:
        assert self.dialect is not None
        message = write_message(self.stream, self.dialect, event)
        if message is not None:
            self.send(message)

    async def _run(self, stream: StreamRunner) -> None:
        """The writer: what the direct path could not take (the socket was full), in order, and the
        stream's Close; then the stream ends."""
        try:
            while True:
                event = await stream.next_output()
                if isinstance(event, Close):
                    self.close(event.code, event.reason)  # (close_payload cuts it to 123 bytes)
                    if stream.overflowed:  # it does not read: it will not answer the close for long either
                        self._arm_timer(min(CLOSE_TIMEOUT_S, self.hub.config.write_stall_s), self._drop_not_reading)
                    return
                self._emit(event)
                if not self._writable.is_set():
                    await self._writable.wait()  # the client reads slowly: wait, the outbox is bounded
        finally:
            await self.hub.stream_ended(stream)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("connection writer failed", exc_info=task.exception(), extra=self._about())
            self.close(1011, "internal error")
        self._maybe_done()


def peer_gone(transport: asyncio.BaseTransport) -> bool:
    """The client has closed its end (FIN or RST) while we were not reading it: the kernel's TCP state
    says so before the bytes in front of it are read. (False where that cannot be told; and a FIN still
    behind bytes the client's kernel holds, for want of room in ours, cannot be seen before they are read.)"""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "TCP_INFO") or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_ESTABLISHED
    except (OSError, ValueError, IndexError):
        return False


def tune_socket(transport: asyncio.BaseTransport) -> None:
    """Cap the kernel's send buffer of ``transport``'s socket at SEND_BUFFER, so that a client that does
    not read fills our write buffer within seconds and the write stall can see it; and set TCP_NODELAY,
    which asyncio sets only on sockets that say they are TCP (an ASGI server given a socket made with
    proto 0, as ``socket.create_server`` and uvicorn's ``--workers`` make them, has it off: Nagle's
    algorithm then holds a reply frame sent right after ``pause_detected`` for about 20 ms)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # (not a TCP socket: nothing to tune)
            pass


def refusal_response(refusal: Refusal) -> Response:
    """An access refusal as the HTTP answer to the upgrade: its status, its short text, its headers."""
    response = web.response(refusal.status, refusal.body.encode(), "text/plain; charset=utf-8")
    for name, value in refusal.headers:
        response.headers[name] = value
    return dataclasses.replace(response, reason_phrase=http.HTTPStatus(refusal.status).phrase)
