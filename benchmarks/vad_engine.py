"""Per-window cost of batched Silero inference, and the real-time streams per core it implies.

    uv run python benchmarks/vad_engine.py [--seconds 3]

For each batch size B, B streams each advance one window per model call (what
the server's worker does when B streams are live). Two baselines in the same
run: the same B streams run one model call each (batch size 1), and the stock
``silero_vad.onnx`` graph at the same batch size (the server runs the restated
graph of ``vad/restated.py``). Sessions use one intra-op thread, so figures are
per core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _corpus import load

from vad.engine import WINDOW, VadEngine
from vad.model import SileroModel


def bench(engine: VadEngine, streams: list, audio: np.ndarray, seconds: float, batched: bool) -> float:
    """Seconds of CPU per window."""
    size = WINDOW[streams[0].rate]
    windows = audio[: (audio.size // size) * size].reshape(-1, size)
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
    ap.add_argument("--rates", default="16000,8000")
    args = ap.parse_args()
    models = {"restated": SileroModel(), "stock": SileroModel(graph="stock")}
    for rate in (int(r) for r in args.rates.split(",")):
        audio = load("dialog_00.flac", rate)
        window_s = WINDOW[rate] / rate
        print(f"\nSilero VAD on onnxruntime, 1 intra-op thread, {rate} Hz, {window_s * 1000:.0f} ms windows; "
              "µs of CPU per window")
        print(f"{'batch':>6} {'restated':>9} {'one-by-one':>11} {'batching':>9} {'stock':>7} {'restating':>10} "
              f"{'streams/core':>13}")
        for size in (int(s) for s in args.sizes.split(",")):
            cost = {}
            for name, model in models.items():
                engine = VadEngine(model, capacity=size)
                streams = [engine.open_stream(rate) for _ in range(size)]
                bench(engine, streams, audio, 0.3, True)  # warm up, allocate slots
                cost[name] = bench(engine, streams, audio, args.seconds, True)
                if name == "restated":
                    cost["single"] = bench(engine, streams, audio, args.seconds / 2, False) if size > 1 \
                        else cost[name]
            fast = cost["restated"]
            print(f"{size:>6} {fast * 1e6:>9.1f} {cost['single'] * 1e6:>11.1f} {cost['single'] / fast:>8.2f}x "
                  f"{cost['stock'] * 1e6:>7.1f} {cost['stock'] / fast:>9.2f}x {window_s / fast:>13.0f}")
    print("\nbatching = one-by-one / batched; restating = stock graph / restated graph (same batch);")
    print("streams/core = real-time streams one core could run on VAD inference alone (window length / cost)")


if __name__ == "__main__":
    main()
