"""A scripted telephone bridge: the provider's side of a call, as a test client, for any provider.

``TelephonyPeer`` does what every bridge does with a media stream: it sends the
caller's audio one 20 ms frame per 20 ms of wall time, puts what the server sends
into a playback buffer that drains in real time, reports a marker back once the
audio before it has played, and empties the buffer when told to flush. What
differs between providers (the JSON or binary spelling of each of these) is a
``Wire``: one small class per provider in this package, no sockets in it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect

FRAME_S = 0.02


@dataclass
class Received:
    """One server message as the bridge understands it."""

    kind: str  # "media", "mark", "clear" or "other"
    payload: bytes = b""  # media: audio in the call's encoding
    name: str | None = None  # mark: the marker's name
    message: Any = None  # the parsed message: a dict for JSON, the bytes for a binary one


class Wire(Protocol):
    """A provider's spelling of a media stream. Counters (sequence numbers, timestamps) are the wire's."""

    provider: str  # e.g. "telnyx"
    path: str  # the server path its calls go to, e.g. "/telephone/telnyx" (may carry a query)
    encoding: str  # the call's audio as wsstream.codecs names it: "mulaw", "alaw" or "pcm16"
    sample_rate: int
    marks_on_clear: bool  # a flush reports the markers still queued behind it as played (Twilio does)

    def opening(self) -> list[str | bytes]:
        """What the provider sends once connected, before any audio (connected, start, ...)."""
        ...

    def media(self, payload: bytes) -> str | bytes:
        """One inbound frame (20 ms of audio in the call's encoding)."""
        ...

    def dtmf(self, digit: str) -> str | bytes:
        ...

    def played(self, name: str) -> str | bytes | None:
        """The provider's report that playback reached marker ``name``; None if it has no such report."""
        ...

    def cleared(self) -> str | bytes | None:
        """What the provider sends after it flushed its buffer, or None."""
        ...

    def stop(self) -> str | bytes | None:
        """What the provider sends when the call ends; None: it just closes the socket."""
        ...

    def read(self, message: str | bytes) -> Received:
        ...


@dataclass
class Reply:
    frames: list[tuple[float, bytes]] = field(default_factory=list)  # (wall time, payload)
    ended_by: str | None = None  # "mark" or "clear"
    end_wall: float | None = None
    mark: str | None = None

    @property
    def audio(self) -> bytes:
        return b"".join(p for _, p in self.frames)

    @property
    def first(self) -> float:
        return self.frames[0][0]


def bytes_per_sample(encoding: str) -> int:
    return 2 if encoding == "pcm16" else 1


class TelephonyPeer:
    def __init__(self, base_url: str, wire: Wire) -> None:
        self.url = base_url + wire.path
        self.wire = wire
        self.sample_rate = wire.sample_rate
        self.frame_bytes = int(wire.sample_rate * FRAME_S) * bytes_per_sample(wire.encoding)
        self.byte_rate = wire.sample_rate * bytes_per_sample(wire.encoding)
        self.filler: bytes | None = None  # what the line carries between turns (default: digital silence)
        self.silence = (b"\xd5" if wire.encoding == "alaw" else b"\xff" if wire.encoding == "mulaw"
                        else b"\x00") * self.frame_bytes
        self._fill = 0
        self.ws: ClientConnection | None = None
        self.received: list[tuple[float, Received]] = []  # everything received, with wall time
        self.replies: list[Reply] = []
        self.sent = bytearray()  # every audio byte sent, in order
        self.sent_wall: list[float] = []  # wall time of each sent frame
        self.play_end = 0.0  # wall time at which the playback buffer runs dry
        self.max_buffered = 0.0  # the most audio ever in the playback buffer (incl. the frame just in), s
        self.marks_echoed: list[str] = []
        self.marks_sent: list[str] = []  # every marker the server sent
        self.cleared: list[float] = []  # for each flush, the seconds of audio it dropped from the buffer
        self.close_code: int | None = None
        self.t0 = time.monotonic()
        self._changed = asyncio.Event()
        self._pending_marks: list[tuple[float, str]] = []
        self._tasks: list[asyncio.Task[Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def __aenter__(self) -> TelephonyPeer:
        self.ws = await connect(self.url, compression=None, open_timeout=20)
        self.t0 = time.monotonic()
        for message in self.wire.opening():
            await self.ws.send(message)
        self._tasks.append(asyncio.create_task(self._receive()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send_raw(self, message: str | bytes | None) -> None:
        assert self.ws is not None
        if message is not None:
            await self.ws.send(message)

    async def send_audio(self, data: bytes, realtime: bool = True) -> None:
        """Audio in the call's encoding, one frame per 20 ms of wall time, as a bridge sends it."""
        step = self.frame_bytes
        start = time.monotonic()
        for i, off in enumerate(range(0, len(data), step)):
            if realtime:
                delay = start + (i + 1) * FRAME_S - time.monotonic()  # a frame exists once captured
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 50 == 49:
                await asyncio.sleep(0)
            payload = data[off:off + step]
            await self.send_raw(self.wire.media(payload))
            self.sent += payload
            self.sent_wall.append(self.now())

    async def send_silence_until(self, predicate: Any, within: float = 30.0) -> None:
        """Keep the line open with silence, as a phone line does, until predicate(self) holds."""
        deadline = time.monotonic() + within
        step = self.frame_bytes
        filler = self.filler or self.silence
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.wire.provider}: timed out; last messages: {self.last(5)}")
            await self.send_audio(filler[self._fill:self._fill + step])
            self._fill = (self._fill + step) % len(filler)

    async def dtmf(self, digit: str) -> None:
        await self.send_raw(self.wire.dtmf(digit))

    async def stop(self) -> None:
        await self.send_raw(self.wire.stop())

    def last(self, n: int) -> list[Any]:
        return [r.message if r.kind != "media" else "<media>" for _, r in self.received[-n:]]

    async def _receive(self) -> None:
        assert self.ws is not None
        marks = asyncio.create_task(self._echo_marks())
        try:
            async for message in self.ws:
                t = self.now()
                got = self.wire.read(message)
                self.received.append((t, got))
                if got.kind == "media":
                    if not self.replies or self.replies[-1].ended_by is not None:
                        self.replies.append(Reply())
                    self.replies[-1].frames.append((t, got.payload))
                    # the bridge's playback buffer: starts playing at once when empty, drains in real time
                    self.play_end = max(self.play_end, t) + len(got.payload) / self.byte_rate
                    self.max_buffered = max(self.max_buffered, self.play_end - t)
                elif got.kind in ("mark", "clear"):
                    if self.replies and self.replies[-1].ended_by is None:
                        self.replies[-1].ended_by = got.kind
                        self.replies[-1].end_wall = t
                        self.replies[-1].mark = got.name
                    if got.kind == "mark":
                        assert got.name is not None
                        self.marks_sent.append(got.name)
                        self._pending_marks.append((max(self.play_end, t), got.name))
                    else:
                        self.cleared.append(max(self.play_end - t, 0.0))
                        self.play_end = t  # buffered audio dropped
                        if self.wire.marks_on_clear:
                            self._pending_marks = [(t, name) for _, name in self._pending_marks]
                        else:  # a flushed marker is never reported
                            self._pending_marks = []
                        await self.send_raw(self.wire.cleared())
                self._changed.set()
        finally:
            marks.cancel()
            self.close_code = self.ws.close_code
            self._changed.set()

    async def _echo_marks(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            now = self.now()
            while self._pending_marks and self._pending_marks[0][0] <= now:
                _, name = self._pending_marks.pop(0)
                try:
                    await self.send_raw(self.wire.played(name))
                except Exception:
                    return
                self.marks_echoed.append(name)
                self._changed.set()

    async def wait_for(self, predicate: Any, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not predicate(self):
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.wire.provider}: timed out; last messages: {self.last(5)}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_closed(self, within: float = 10.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._tasks[0]), within)
        return self.close_code


def ahead_of_realtime(reply: Reply, byte_rate: int) -> float:
    """The most audio this reply was ever sent ahead of real time, counted from its first frame (s)."""
    worst, total = -1.0, 0
    t_first = reply.first
    for t, payload in reply.frames:
        total += len(payload)
        worst = max(worst, total / byte_rate - (t - t_first))
    return worst
