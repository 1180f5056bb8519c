"""The inference worker: batching across streams, and surviving a failed model call."""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import load_corpus

from vad.engine import VadEngine
from vad.model import SileroModel


class Client:
    def __init__(self, engine: VadEngine) -> None:
        self.vad = engine.open_stream(16000)
        self.probs: list[np.ndarray] = []

    def on_vad(self, probs: np.ndarray, levels: np.ndarray) -> None:
        assert levels.shape == (len(probs), 4)
        self.probs.append(probs)


async def test_worker_batches_streams_and_survives_a_failing_call(model: SileroModel) -> None:
    from wsstream.inference import InferenceWorker

    engine = VadEngine(model)
    worker = InferenceWorker(engine, min_interval_s=0.005)
    real = engine.process_with_levels
    calls = {"n": 0}

    def flaky(batch):  # the first call fails, as a broken model or bad input might
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("onnxruntime exploded")
        return real(batch)

    engine.process_with_levels = flaky  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    clients = [Client(engine) for _ in range(12)]
    audio = load_corpus("dialog_06.flac")[:16000 * 2]
    try:
        for step in range(0, audio.size, 320):
            for c in clients:
                c.vad.push(audio[step:step + 320])
                worker.notify(c)
            await asyncio.sleep(0.004)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert worker.stats.failed_batches == 1
    assert calls["n"] > 5
    # every stream kept getting results after the failure, batched together
    for c in clients:
        assert sum(len(p) for p in c.probs) >= audio.size // 512 - 8
    assert worker.stats.largest_batch == len(clients)
    assert worker.stats.windows / worker.stats.batches > 6
