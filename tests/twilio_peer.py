"""A scripted Twilio Media Streams peer: Twilio's side of ``/telephone/handler``, as a test client.

It sends what Twilio sends (``connected``, ``start``, ``media`` every 20 ms with
track/chunk/timestamp/sequenceNumber, ``dtmf``, ``mark`` echoes, ``stop``) and
plays what the server sends the way Twilio does: media frames go into a
playback buffer that drains in real time, a ``mark`` is echoed once the audio
before it has played, and ``clear`` empties the buffer. Every received message
is kept with its wall-clock time, and replies are split at ``mark`` / ``clear``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

FRAME_S = 0.02


@dataclass
class TReply:
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


class TwilioPeer:
    def __init__(self, url: str, *, stream_sid: str = "MZ00000000000000000000000000000001",
                 call_sid: str = "CA00000000000000000000000000000001",
                 encoding: str = "audio/x-mulaw", sample_rate: int = 8000,
                 custom: dict[str, str] | None = None) -> None:
        self.url = url
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.custom = custom or {}
        self.silence = b"\xd5" if encoding == "audio/x-alaw" else b"\xff"
        self.filler: bytes | None = None  # what the line carries between turns (default: digital silence)
        self._fill = 0
        self.ws: ClientConnection | None = None
        self.seq = 0
        self.chunk = 0
        self.messages: list[tuple[float, dict[str, Any]]] = []  # everything received, with wall time
        self.replies: list[TReply] = []
        self.sent = bytearray()  # every audio byte sent, in order
        self.sent_wall: list[float] = []  # wall time of each sent frame
        self.play_end = 0.0  # wall time at which the playback buffer runs dry
        self.max_buffered = 0.0  # the most audio ever in the playback buffer (incl. the frame just in), s
        self.marks_echoed: list[str] = []
        self.cleared: list[float] = []  # for each clear, the seconds of audio it dropped from the buffer
        self.close_code: int | None = None
        self.t0 = time.monotonic()
        self._changed = asyncio.Event()
        self._pending_marks: list[tuple[float, str]] = []
        self._tasks: list[asyncio.Task[Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def __aenter__(self) -> TwilioPeer:
        self.ws = await connect(self.url, compression=None, open_timeout=20)
        self.t0 = time.monotonic()
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"}, seq=False)
        await self.send({"event": "start", "streamSid": self.stream_sid, "start": {
            "accountSid": "AC00000000000000000000000000000001", "streamSid": self.stream_sid,
            "callSid": self.call_sid, "tracks": ["inbound"],
            "mediaFormat": {"encoding": self.encoding, "sampleRate": self.sample_rate, "channels": 1},
            "customParameters": self.custom}})
        self._tasks.append(asyncio.create_task(self._receive()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send(self, msg: dict[str, Any], seq: bool = True) -> None:
        assert self.ws is not None
        if seq:
            self.seq += 1
            msg = {**msg, "sequenceNumber": str(self.seq)}
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, message: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(message)

    async def send_audio(self, data: bytes, realtime: bool = True) -> None:
        """Wire bytes (μ-law or A-law), as 160-byte media messages: one per 20 ms of wall time, like Twilio."""
        step = int(self.sample_rate * FRAME_S)
        start = time.monotonic()
        for i, off in enumerate(range(0, len(data), step)):
            if realtime:
                delay = start + (i + 1) * FRAME_S - time.monotonic()  # a frame exists once captured
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 50 == 49:
                await asyncio.sleep(0)
            payload = data[off:off + step]
            self.chunk += 1
            await self.send({"event": "media", "streamSid": self.stream_sid, "media": {
                "track": "inbound", "chunk": str(self.chunk), "timestamp": str(int(self.chunk * 20)),
                "payload": base64.b64encode(payload).decode()}})
            self.sent += payload
            self.sent_wall.append(self.now())

    async def send_silence_until(self, predicate: Any, within: float = 30.0) -> None:
        """Keep the line open with silence, as a phone line does, until predicate(self) holds."""
        deadline = time.monotonic() + within
        step = int(self.sample_rate * FRAME_S)
        filler = self.filler or self.silence * step
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last messages: {[m for _, m in self.messages[-5:]]}")
            await self.send_audio(filler[self._fill:self._fill + step])
            self._fill = (self._fill + step) % len(filler)

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "streamSid": self.stream_sid,
                         "dtmf": {"track": "inbound_track", "digit": digit}})

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamSid": self.stream_sid,
                         "stop": {"accountSid": "AC00000000000000000000000000000001", "callSid": self.call_sid}})

    async def _receive(self) -> None:
        assert self.ws is not None
        marks = asyncio.create_task(self._echo_marks())
        try:
            async for message in self.ws:
                t = self.now()
                msg = json.loads(message)
                self.messages.append((t, msg))
                event = msg.get("event")
                if event == "media":
                    payload = base64.b64decode(msg["media"]["payload"])
                    if not self.replies or self.replies[-1].ended_by is not None:
                        self.replies.append(TReply())
                    self.replies[-1].frames.append((t, payload))
                    # Twilio's playback buffer: starts playing at once when empty, drains in real time
                    self.play_end = max(self.play_end, t) + len(payload) / self.sample_rate
                    self.max_buffered = max(self.max_buffered, self.play_end - t)
                elif event in ("mark", "clear"):
                    if self.replies and self.replies[-1].ended_by is None:
                        self.replies[-1].ended_by = event
                        self.replies[-1].end_wall = t
                        self.replies[-1].mark = msg.get("mark", {}).get("name")
                    if event == "mark":
                        self._pending_marks.append((max(self.play_end, t), msg["mark"]["name"]))
                    else:
                        self.cleared.append(max(self.play_end - t, 0.0))
                        self.play_end = t  # buffered audio dropped
                        # Twilio returns the marks still waiting in a cleared buffer
                        self._pending_marks = [(t, name) for _, name in self._pending_marks]
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
                    await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
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
                raise AssertionError(f"timed out; last messages: {[m for _, m in self.messages[-5:]]}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_closed(self, within: float = 10.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._tasks[0]), within)
        return self.close_code

    def outbound(self) -> list[dict[str, Any]]:
        return [m for _, m in self.messages]


def ahead_of_realtime(reply: TReply, sample_rate: int = 8000) -> float:
    """The most audio this reply was ever sent ahead of real time, counted from its first frame (s)."""
    worst, total = -1.0, 0
    t_first = reply.first
    for t, payload in reply.frames:
        total += len(payload)
        worst = max(worst, total / sample_rate - (t - t_first))
    return worst

