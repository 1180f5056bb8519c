"""The inference worker: one task, one thread, every ready window of every stream per call.

Streams tell the worker they have audio (``notify``); the worker collects the
whole windows of all of them, runs one batched ``VadEngine.process`` in its
thread while the event loop goes on, and hands each stream its probabilities.
While a batch runs, the next one accumulates: batching adapts to load by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vad.engine import LEVEL_PARTS, VadEngine, VadStream
from wsstream.metrics import Metrics

log = logging.getLogger(__name__)


class VadClient(Protocol):
    vad: VadStream

    def on_vad(self, probs: np.ndarray, levels: np.ndarray) -> None: ...


@dataclass
class WorkerStats:
    batches: int = 0
    windows: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class InferenceWorker:
    def __init__(self, engine: VadEngine, *, max_windows_per_stream: int = 32,
                 min_interval_s: float = 0.004, batched: bool = True, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics  # queue delay, batch size and call time histograms (a hub gives its own)
        self.batched = batched  # False: one model call per stream (the baseline benchmarks compare with)
        self.max_windows = max_windows_per_stream
        self.min_interval = min_interval_s
        self.stats = WorkerStats()
        self._ready: dict[int, VadClient] = {}
        self._since: dict[int, float] = {}  # when each ready client's first window waiting became ready
        self._call_s = 0.0  # how long the last model call took, in its thread
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")

    def notify(self, client: VadClient) -> None:
        """The client has pushed audio; its windows join the next batch."""
        vad = client.vad
        if vad.pending_samples >= vad.window:
            key = id(client)
            if key not in self._ready:
                self._since[key] = time.monotonic()
            self._ready[key] = client
            self._wake.set()

    async def run(self) -> None:
        """Serve batches until cancelled."""
        loop = asyncio.get_running_loop()
        last_start = 0.0
        try:
            while True:
                if not self._ready:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # Each model call has a fixed cost (~250 µs here) on top of ~100 µs per window, so
                # calls no closer than min_interval let windows from more streams share one.
                gap = last_start + self.min_interval - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
                last_start = loop.time()
                await self._run_batch(loop)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _process(self, batch: list[tuple[VadStream, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        start = time.perf_counter()
        try:
            if self.batched:
                return self.engine.process_with_levels(batch)
            return [self.engine.process_with_levels([item])[0] for item in batch]
        finally:
            self._call_s = time.perf_counter() - start  # (read on the loop once the call is over)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        clients = list(self._ready.values())
        since, self._since = self._since, {}
        taken_at = time.monotonic()
        self._ready.clear()
        # Each window of a stream is one sequential model step, so a stream sending faster than real
        # time must not make everyone's batch long: the more streams are waiting, the fewer steps each.
        limit = max(2, min(self.max_windows, 128 // len(clients)))
        batch, owners, waited = [], [], []
        for client in clients:
            if client.vad.closed:
                continue
            windows = client.vad.take_windows(limit)
            if len(windows):
                batch.append((client.vad, windows))
                owners.append(client)
                waited.append(taken_at - since.get(id(client), taken_at))
            if client.vad.pending_samples >= client.vad.window:  # more than one batch's worth: waits from now
                self._ready[id(client)] = client
                self._since[id(client)] = taken_at
        if not batch:
            return
        metrics = self.metrics
        if metrics is not None:
            metrics.observe_many("vad_queue_delay_seconds", np.asarray(waited))
            metrics.observe("vad_batch_streams", len(batch))
        try:
            results = await loop.run_in_executor(self._executor, self._process, batch)
        except Exception:
            # A failing model call must not stop VAD for every stream. Its windows count as silence, so
            # each stream's positions stay aligned with its audio and nothing waits for them forever.
            log.exception("VAD inference failed for a batch of %d streams", len(batch))
            self.stats.failed_batches += 1
            results = [(np.zeros(len(w), dtype=np.float32), np.full((len(w), LEVEL_PARTS), -120.0, np.float32))
                       for _, w in batch]
        if metrics is not None:
            metrics.observe("vad_call_seconds", self._call_s)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for client, (probs, levels) in zip(owners, results, strict=True):
            self.stats.windows += len(probs)
            try:
                client.on_vad(probs, levels)
            except Exception:  # one stream's bug must not stop the others' VAD
                log.exception("VAD result handler failed")
