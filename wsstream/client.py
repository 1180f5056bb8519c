"""A small client: stream an audio file to a server as a microphone would, collect what comes back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wsstream.codecs import AudioFormat, decode, encode, float_to_int16


@dataclass
class ClientResult:
    events: list[dict[str, Any]] = field(default_factory=list)  # each with "wall" (s since start)
    audio: list[bytes] = field(default_factory=list)
    close_code: int | None = None
    output_format: AudioFormat = field(default_factory=AudioFormat)

    def reply_audio(self) -> np.ndarray:
        return decode(b"".join(self.audio), self.output_format.encoding)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """A mono int16 signal at ``sample_rate`` from any file soundfile reads."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return float_to_int16(mono)


async def stream_file(url: str, path: str | Path, *, fmt: AudioFormat | None = None, speed: float = 1.0,
                      chunk_ms: float = 20.0, media_as: str = "binary", tail_s: float = 2.0,
                      on_event: Callable[[dict[str, Any]], None] | None = None) -> ClientResult:
    """Send ``path`` at ``speed`` times real time, then ``stop``; return all events and reply audio."""
    fmt = fmt or AudioFormat()
    audio = load_audio(path, fmt.sample_rate)
    audio = np.concatenate([audio, np.zeros(int(tail_s * fmt.sample_rate), dtype=np.int16)])
    payload = encode(audio, fmt.encoding)
    step = fmt.frame_bytes(chunk_ms)
    result = ClientResult(output_format=fmt)
    t0 = time.monotonic()

    async with connect(url, compression=None, max_size=1 << 22) as ws:
        await ws.send(json.dumps({"event": "start", "media_as": media_as,
                                  "format": {"encoding": fmt.encoding, "sample_rate": fmt.sample_rate}}))

        async def receive() -> None:
            with contextlib.suppress(ConnectionClosed):
                await _receive()

        async def _receive() -> None:
            async for message in ws:
                wall = round(time.monotonic() - t0, 3)
                if isinstance(message, bytes):
                    result.audio.append(message)
                    continue
                msg = json.loads(message)
                if msg.get("event") == "media":
                    result.audio.append(base64.b64decode(msg["media"]["payload"]))
                    continue
                msg["wall"] = wall
                result.events.append(msg)
                if on_event is not None:
                    on_event(msg)

        receiver = asyncio.create_task(receive())
        try:
            await _send_all(ws, payload, step, media_as, speed, chunk_ms, t0)
            await ws.send(json.dumps({"event": "stop"}))
        except ConnectionClosed:
            pass  # the server ended it (full, policy, ...): the close code says why
        await receiver
        result.close_code = ws.close_code
    return result


async def _send_all(ws: Any, payload: bytes, step: int, media_as: str, speed: float, chunk_ms: float,
                    t0: float) -> None:
    for i, start in enumerate(range(0, len(payload), step)):
        chunk = payload[start:start + step]
        if media_as == "json":
            await ws.send(json.dumps({"event": "media", "media": {"payload": base64.b64encode(chunk).decode()}}))
        else:
            await ws.send(chunk)
        if speed > 0:
            due = t0 + (i + 1) * chunk_ms / 1000 / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
