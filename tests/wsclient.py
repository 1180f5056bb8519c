"""A test client for /ws that records everything with wall-clock times and splits replies."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from wsstream.codecs import AudioFormat, encode


@dataclass
class Reply:
    audio: bytearray = field(default_factory=bytearray)
    started: float = 0.0  # wall time of response_starting
    first_audio: float | None = None
    ended_by: str | None = None  # "mark" or "clear"
    mark: str | None = None
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (wall time, bytes) per message


class Conversation:
    """One /ws connection: send audio in the chosen format, collect events and replies."""

    def __init__(self, url: str, fmt: AudioFormat | None = None, media_as: str = "binary",
                 start: bool = True, extra_start: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fmt = fmt or AudioFormat()
        self.media_as = media_as
        self.send_start = start
        self.extra_start = extra_start or {}
        self.events: list[dict[str, Any]] = []
        self.replies: list[Reply] = []
        self.t0 = time.monotonic()
        self.sent_samples = 0
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> Conversation:
        self.ws = await connect(self.url, compression=None, max_size=1 << 22, open_timeout=20)
        self.t0 = time.monotonic()
        if self.send_start:
            await self.ws.send(json.dumps({"event": "start", "media_as": self.media_as, **self.extra_start,
                                           "format": {"encoding": self.fmt.encoding,
                                                      "sample_rate": self.fmt.sample_rate}}))
        self._receiver = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        await self.ws.close()
        self._receiver.cancel()
        await asyncio.gather(self._receiver, return_exceptions=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _receive(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                t = self.now()
                if isinstance(message, bytes):
                    self._audio(message, t)
                    continue
                msg = json.loads(message)
                if msg.get("event") == "media":
                    self._audio(base64.b64decode(msg["media"]["payload"]), t)
                    continue
                msg["wall"] = t
                self.events.append(msg)
                if msg.get("data") == "response_starting":
                    self.replies.append(Reply(started=t))
                elif msg.get("event") in ("mark", "clear") and self.replies and self.replies[-1].ended_by is None:
                    self.replies[-1].ended_by = msg["event"]
                    self.replies[-1].mark = msg.get("mark", {}).get("name")
                self._changed.set()
        finally:
            self.close_code = self.ws.close_code
            self._changed.set()

    def _audio(self, data: bytes, t: float) -> None:
        if not self.replies or self.replies[-1].ended_by is not None:
            self.replies.append(Reply(started=t))  # audio without response_starting: recorded, tests catch it
        reply = self.replies[-1]
        if reply.first_audio is None:
            reply.first_audio = t
        reply.audio += data
        reply.chunks.append((t, len(data)))
        self._changed.set()

    def logs(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "log" and e.get("data") == name]

    def of(self, key: str, value: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get(key) == value]

    async def send_audio(self, pcm: np.ndarray, speed: float = 0.0, chunk_ms: float = 20.0) -> None:
        """int16 samples at the conversation's rate, in chunk_ms frames; speed 0 = as fast as possible."""
        assert self.ws is not None
        data = encode(pcm, self.fmt.encoding)
        step = self.fmt.frame_bytes(chunk_ms)
        t_start = time.monotonic()
        for i, offset in enumerate(range(0, len(data), step)):
            chunk = data[offset:offset + step]
            if speed > 0:
                # like a microphone: a frame exists only once its last sample has been captured
                delay = t_start + (offset + len(chunk)) / self.fmt.sample_width / self.fmt.sample_rate / speed \
                    - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 50 == 49:
                await asyncio.sleep(0)
            if self.media_as == "json":
                await self.ws.send(json.dumps({"event": "media",
                                               "media": {"payload": base64.b64encode(chunk).decode()}}))
            else:
                await self.ws.send(chunk)
            self.sent_samples += len(chunk) // self.fmt.sample_width

    async def send_json(self, value: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(value))

    async def wait_for(self, predicate: Any, within: float = 20.0) -> None:
        """Until predicate(self) is true; fails the test on timeout with what was seen."""
        deadline = time.monotonic() + within
        while not predicate(self):
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; events so far: {self.events[-12:]}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_closed(self, within: float = 20.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._receiver), within)
        return self.close_code
