"""CPU per stream-second of the server's VAD path, without sockets: batched vs per-stream inference.

    uv run python benchmarks/vad_path.py [--streams 200] [--seconds 10]

N sessions (the real ``StreamRunner`` and ``StreamCore`` with the real inference worker and detector)
each receive a corpus file as 20 ms pcm16 frames in real time (staggered), as
the transport hands them over (``StreamRunner.offer_audio``); no reply audio is
produced (the reply function does nothing), so the figure is the VAD path alone: decoding, history,
VAD buffering, batched Silero inference, the detector and its events. The
baseline in the same run is the same load with one model call per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corpus import load, manifest

from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream.core import StreamCore
from wsstream.inference import InferenceWorker
from wsstream.reply import ReplyOnPause
from wsstream.runner import StreamRunner


async def silent_reply(audio: tuple[int, np.ndarray]) -> AsyncIterator[tuple[int, np.ndarray]]:
    return
    yield


async def run(model: SileroModel, streams: int, seconds: float, batched: bool,
              interval_s: float) -> tuple[float, int, int]:
    files = sorted(manifest()["files"])
    frames = {}
    for name in files:
        pcm = (np.clip(load(name), -1, 1) * 32767).astype("<i2")
        frames[name] = [pcm[i:i + 320].tobytes() for i in range(0, pcm.size - 319, 320)]
    engine = VadEngine(model, capacity=streams)
    worker = InferenceWorker(engine, batched=batched, min_interval_s=interval_s)
    worker_task = asyncio.create_task(worker.run())
    app = ReplyOnPause(fn=silent_reply)
    sessions = [StreamRunner(StreamCore(app, engine.open_stream, stream_id=f"b{i}"), worker) for i in range(streams)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cpu0 = time.process_time()
    sent = 0
    tick = 0
    total_ticks = int(seconds / 0.02)
    while tick < total_ticks:
        due = t0 + tick * 0.02
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for i, s in enumerate(sessions):
            if tick < i * 100 // streams:  # staggered over the first 2 s
                continue
            fr = frames[files[i % len(files)]]
            data = fr[(tick - i * 100 // streams) % len(fr)]
            while not s.offer_audio(data):  # what the transport does with a binary frame
                await s.wait_vad_room()  # (inference behind: wait for room, as a paused reader would)
            sent += 1
        tick += 1
    await asyncio.sleep(0.1)
    cpu = time.process_time() - cpu0
    lag_ms = int((loop.time() - t0 - seconds - 0.1) * 1000)
    for s in sessions:
        await s.aclose()
    worker_task.cancel()
    await asyncio.gather(worker_task, return_exceptions=True)
    stream_seconds = sent * 0.02
    return cpu / stream_seconds * 1000, worker.stats.windows // max(worker.stats.batches, 1), lag_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval-ms", type=float, default=4.0, help="the worker's minimum spacing of model calls")
    args = ap.parse_args()
    model = SileroModel()
    print(f"{args.streams} real-time streams for {args.seconds:.0f} s, one process (inference thread + loop)")
    res = {}
    for batched in (True, False):
        ms, per_batch, lag = asyncio.run(run(model, args.streams, args.seconds, batched, args.interval_ms / 1000))
        res[batched] = ms
        label = "batched (one worker)" if batched else "per-stream calls"
        print(f"  {label:22} {ms:6.2f} ms CPU per stream-second   {per_batch:4d} windows per worker batch   "
              f"loop finished {lag} ms late")
    print(f"  batched is {res[False] / res[True]:.2f}x cheaper per stream; at {res[True]:.2f} ms per stream-second "
          f"one core could carry {1000 / res[True]:.0f} streams on this path alone")


if __name__ == "__main__":
    main()
