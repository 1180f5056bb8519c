"""What one long reply chunk costs the server's event loop and memory (issue 13, fault 8).

    uv run python benchmarks/reply_chunks.py [--minutes 10]

1. ``FrameEncoder`` alone: a chunk of ``--minutes`` converted at once (what the server did before) and
   the longest single step of converting it as playout asks for it (what it does now), per rate pair.
2. End to end: an in-process server whose reply yields that chunk in one piece; a task on the
   server's own loop records the longest gap between 20 ms sleeps while the reply plays for 3 s, and
   the process's RSS growth. The same with a chunk "at 1 Hz" (refused now).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corpus import load, manifest

from wsstream.codecs import AudioFormat, float_to_int16
from wsstream.config import ServerConfig
from wsstream.playout import FrameEncoder
from wsstream.reply import ReplyOnPause
from wsstream.server import WsServer

PAIRS = [(24000, AudioFormat("pcm16", 16000)), (24000, AudioFormat("mulaw", 8000)),
         (44100, AudioFormat("pcm16", 16000)), (8000, AudioFormat("pcm16", 48000))]


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tone(rate: int, seconds: float) -> np.ndarray:
    period = np.round(8000 * np.sin(2 * np.pi * 441 * np.arange(rate // 441) / rate)).astype(np.int16)
    return np.tile(period, int(seconds * 441) + 1)[:int(rate * seconds)]


def encoder_figures(minutes: float) -> None:
    print(f"FrameEncoder, one {minutes:g}-minute int16 chunk")
    for rate, fmt in PAIRS:
        audio = tone(rate, minutes * 60)
        t0 = time.thread_time()
        FrameEncoder(fmt).push(rate, audio)
        whole = time.thread_time() - t0
        enc = FrameEncoder(fmt)
        enc.feed(rate, audio)
        t0 = time.thread_time()
        enc.take(100)  # the first fill of the playout queue, then a refill of a few frames per pump
        first = time.thread_time() - t0
        steps = []
        while enc.queued:
            t0 = time.thread_time()  # (CPU time of this thread: a shared machine's preemptions left out)
            enc.take(3)
            steps.append(time.thread_time() - t0)
        ms = np.asarray(steps) * 1000
        print(f"  {rate:>5} Hz -> {fmt.encoding} {fmt.sample_rate:>5} Hz: at once {whole * 1000:6.1f} ms; sliced: "
              f"first fill {first * 1000:.2f} ms, then {len(ms)} steps, median {np.median(ms):.3f} ms, "
              f"p99 {np.percentile(ms, 99):.3f} ms, max {ms.max():.2f} ms (CPU)")


async def end_to_end(minutes: float) -> None:
    chunks: dict[str, tuple[int, np.ndarray]] = {"huge": (24000, tone(24000, minutes * 60)),
                                                  "1hz": (1, np.full(2000, 1000, np.int16))}

    async def reply(audio: tuple[int, np.ndarray], kind: str = "huge") -> Any:
        yield chunks[kind]

    end = manifest()["files"]["dialog_00.flac"]["turns"][0]["end"]
    turn = float_to_int16(load("dialog_00.flac")[:end + 16000])
    server = WsServer(ReplyOnPause(fn=reply), ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    try:
        for kind in chunks:
            gaps: list[float] = []

            async def probe(gaps: list[float]) -> None:
                while True:
                    t0 = time.perf_counter()
                    await asyncio.sleep(0.02)
                    gaps.append(time.perf_counter() - t0 - 0.02)

            before = rss()
            task = asyncio.create_task(probe(gaps))
            async with connect(f"ws://127.0.0.1:{server.port}/ws", max_size=1 << 22) as ws:
                await ws.send(json.dumps({"event": "input", "data": {"kind": kind}}))
                for i in range(0, turn.size, 320):  # a turn, as fast as it goes: its pause starts the reply
                    await ws.send(turn[i:i + 320].tobytes())
                got, t0 = 0, time.monotonic()
                while time.monotonic() - t0 < 3.0:
                    try:
                        message = await asyncio.wait_for(ws.recv(), 3.0)
                    except TimeoutError:
                        break
                    if isinstance(message, bytes):
                        got += len(message)
                    elif "error" in message:
                        print(f"  {kind}: the client was told: {json.loads(message)['data']}")
            task.cancel()
            grown = rss() - before
            print(f"  {kind}: longest loop gap {max(gaps) * 1000:6.1f} ms over {len(gaps)} sleeps; "
                  f"{got / 32000:.2f} s of audio in 3 s; RSS grew {grown / 1e6:6.1f} MB")
    finally:
        await server.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # (the refusal's warning in the server log: printed above instead)
    encoder_figures(args.minutes)
    print(f"end to end, in-process server, one {args.minutes:g}-minute chunk at 24 kHz, then 2000 samples at 1 Hz")
    asyncio.run(end_to_end(args.minutes))


if __name__ == "__main__":
    main()
