"""Per-window cost of batched Silero inference, and the real-time streams per core it implies.

    uv run python benchmarks/vad_engine.py [--seconds 3]

For each batch size B, B streams each advance one 32 ms window per model call
(what the server's worker does when B streams are live). The baseline in the
same run is the same B streams run one model call each (batch size 1). The
model session uses one intra-op thread, so figures are per core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _corpus import load

from vad.engine import VadEngine
from vad.model import SileroModel


def bench(engine: VadEngine, streams: list, audio: np.ndarray, seconds: float, batched: bool) -> float:
    """Seconds of CPU per window."""
    windows = audio[: (audio.size // 512) * 512].reshape(-1, 512)
    step = 0
    done = 0
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        batch = [(s, windows[(step + i * 7) % len(windows)][None, :]) for i, s in enumerate(streams)]
        if batched:
            engine.process(batch)
        else:
            for item in batch:
                engine.process([item])
        done += len(streams)
        step += 1
    return (time.process_time() - t0) / done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per measurement")
    ap.add_argument("--sizes", default="1,8,64,256")
    args = ap.parse_args()
    model = SileroModel()
    audio = load("dialog_00.flac")
    window_s = 512 / 16000
    print(f"Silero VAD on onnxruntime, 1 intra-op thread, 16 kHz, {window_s * 1000:.0f} ms windows")
    print(f"{'batch':>6} {'µs/window':>10} {'one-by-one':>11} {'speedup':>8} {'streams/core':>13}")
    for size in (int(s) for s in args.sizes.split(",")):
        engine = VadEngine(model, capacity=size)
        streams = [engine.open_stream(16000) for _ in range(size)]
        bench(engine, streams, audio, 0.3, True)  # warm up, allocate slots
        batched = bench(engine, streams, audio, args.seconds, True)
        single = bench(engine, streams, audio, args.seconds / 2, False) if size > 1 else batched
        print(f"{size:>6} {batched * 1e6:>10.1f} {single * 1e6:>11.1f} {single / batched:>7.2f}x "
              f"{window_s / batched:>13.0f}")
    print("streams/core = real-time streams one core could run on VAD inference alone (window length / cost)")


if __name__ == "__main__":
    main()
