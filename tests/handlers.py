"""Reply functions used by tests (importable as ``handlers:...`` with tests/ on sys.path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from wsstream.reply import AdditionalOutputs, CloseStream, current_context

FINALLY: list[tuple[str, ...]] = []  # (kind, *inputs) per generator whose finally ran
CALLS: list[dict[str, Any]] = []


def _tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def long_sync(audio: tuple[int, np.ndarray], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Ten seconds of tone from a sync generator that does blocking work between chunks."""
    try:
        for _ in range(20):
            time.sleep(0.01)  # blocking on purpose: must not stall the event loop
            yield 24000, _tone(24000, 0.5)
    finally:
        FINALLY.append(("sync", *args))


async def long_async(audio: tuple[int, np.ndarray], *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    try:
        for _ in range(20):
            await asyncio.sleep(0.01)
            yield 24000, _tone(24000, 0.5)
    finally:
        FINALLY.append(("async", *args))


def recording(audio: tuple[int, np.ndarray], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Records what it was called with, sends extra outputs, replies with a short tone."""
    ctx = current_context()
    CALLS.append({"rate": audio[0], "samples": audio[1].size, "dtype": str(audio[1].dtype),
                  "args": args, "kwargs": kwargs, "session": ctx.session_id, "client_id": ctx.client_id})
    yield AdditionalOutputs("heard", round(audio[1].size / audio[0], 2))
    yield audio[0], np.zeros(audio[0] // 10, dtype=np.int16)


def failing(audio: tuple[int, np.ndarray], *args: Any) -> Iterator[Any]:
    yield audio[0], np.zeros(160, dtype=np.int16)
    raise RuntimeError("the model fell over")


def closing(audio: tuple[int, np.ndarray], *args: Any) -> Iterator[Any]:
    yield audio[0], np.zeros(audio[0] // 10, dtype=np.int16)
    yield CloseStream("goodbye")


def greeting() -> Iterator[Any]:
    yield 16000, np.full(8000, 1000, dtype=np.int16)
