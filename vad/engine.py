"""Streaming Silero VAD for many streams at once.

Each stream keeps its own recurrent state and its last few samples of context
(64 at 16 kHz, 32 at 8 kHz), exactly as the model was trained to be run. All
streams of one rate live in a ``_Bank``: preallocated arrays indexed by slot, so
that a batch is gathered and scattered with a few vectorised operations per
model call, however many streams it holds.

Threading contract: ``VadStream.push`` and ``VadStream.take_windows`` belong to
the caller's thread (the event loop); ``VadEngine.process`` may run in one other
thread, and is the only code that touches the banks (slot allocation and
release are deferred to it), so no lock is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vad.detector import levels_db
from vad.model import STATE_SIZE, SileroModel

WINDOW = {16000: 512, 8000: 256}
CONTEXT = {16000: 64, 8000: 32}
LEVEL_PARTS = 4  # sub-windows per window for signal levels (8 ms at 16 kHz)
_INT16 = np.dtype(np.int16)


def vad_rate_for(sample_rate: int, narrowband: bool = False) -> int:
    """The rate the model runs at for a stream: 8 kHz stays native, all else goes to 16 kHz
    (or to 8 kHz with ``narrowband``, whose model steps cost about a third less)."""
    return 8000 if sample_rate == 8000 or narrowband else 16000


class _Bank:
    """State and context of all streams at one rate, in slot-indexed arrays that grow by doubling."""

    def __init__(self, rate: int, capacity: int) -> None:
        self.rate = rate
        self.window = WINDOW[rate]
        self.ctx = CONTEXT[rate]
        self.state = np.zeros((2, capacity, STATE_SIZE), dtype=np.float32)
        self.context = np.zeros((capacity, self.ctx), dtype=np.float32)
        self.free = list(range(capacity - 1, -1, -1))

    def allocate(self) -> int:
        if not self.free:
            old = self.state.shape[1]
            self.state = np.concatenate([self.state, np.zeros_like(self.state)], axis=1)
            self.context = np.concatenate([self.context, np.zeros_like(self.context)], axis=0)
            self.free = list(range(2 * old - 1, old - 1, -1))
        slot = self.free.pop()
        self.state[:, slot] = 0.0
        self.context[slot] = 0.0
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)


class VadStream:
    """One audio stream's VAD input side: resampling to the model rate and cutting windows.

    Audio of any chunk length goes in; whole windows come out. A stream at a rate
    other than 8 or 16 kHz is resampled to 16 kHz by a stateful soxr stream, so
    chunk boundaries leave no trace in the audio.
    """

    def __init__(self, engine: VadEngine, sample_rate: int, max_pending_s: float, narrowband: bool = False) -> None:
        self.engine = engine
        self.input_rate = sample_rate
        self.rate = vad_rate_for(sample_rate, narrowband)
        self.window = WINDOW[self.rate]
        self.slot = -1
        self.closed = False
        self.windows_taken = 0
        self._resampler = None
        if sample_rate != self.rate:
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, self.rate, 1, dtype="float32", quality="HQ")
        self._buf = np.zeros(max(int(max_pending_s * self.rate), 4 * self.window), dtype=np.int16)
        self.pending_samples = 0  # model-rate samples waiting for inference (read-only outside; bounded)
        self._read = 0  # where they start in _buf

    @property
    def capacity(self) -> int:
        return self._buf.size

    def push(self, audio: np.ndarray) -> None:
        """Append mono audio at the input rate: int16, or float32 in -1..1 (quantized to int16).
        Raises OverflowError when the buffer is full.

        The buffer holds int16 so that the per-message work is one copy; scaling to float
        happens once per model call for the whole batch (``VadEngine``).
        """
        if self._resampler is not None:  # (in float: soxr's int16 output is not chunking-invariant)
            if audio.dtype == np.int16:
                audio = audio.astype(np.float32) * np.float32(1 / 32768)
            audio = self._resampler.resample_chunk(audio)
        if audio.dtype is not _INT16 and audio.dtype != _INT16:  # (the identity test is the usual case)
            audio = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype(np.int16)
        n = audio.size
        start = self._read + self.pending_samples
        if start + n > self._buf.size:
            self._compact()
            start = self.pending_samples
            if start + n > self._buf.size:
                raise OverflowError(f"VAD input buffer full ({self._buf.size} samples pending)")
        self._buf[start:start + n] = audio
        self.pending_samples += n

    def _compact(self) -> None:
        """Move the pending samples to the front. Taking windows only advances a read position, so
        this copy happens once per buffer's worth of audio, not at every take."""
        read, pending = self._read, self.pending_samples
        if read:
            self._buf[:pending] = self._buf[read:read + pending]
            self._read = 0

    def take_windows(self, limit: int | None = None) -> np.ndarray:
        """Remove and return the whole windows ready for inference, as [n, window] int16."""
        n = self.pending_samples // self.window
        if limit is not None:
            n = min(n, limit)
        if n == 0:
            return np.empty((0, self.window), dtype=np.int16)
        used = n * self.window
        read = self._read
        self.windows_taken += n
        windows = self._buf[read:read + used].reshape(n, self.window).copy()
        self.pending_samples -= used
        self._read = read + used if self.pending_samples else 0
        return windows

    def close(self) -> None:
        """Give the slot back (deferred to the engine's next ``process``)."""
        if not self.closed:
            self.closed = True
            self._buf = np.zeros(0, dtype=np.int16)  # the memory goes now; the slot at the next batch
            self.pending_samples = self._read = 0
            self.engine._closing.append(self)


@dataclass
class EngineStats:
    calls: int = 0
    windows: int = 0


class VadEngine:
    """Batched Silero inference across streams; results equal running each stream alone."""

    def __init__(self, model: SileroModel | None = None, *, capacity: int = 64,
                 max_pending_s: float = 4.0) -> None:
        self.model = model or SileroModel()
        self.max_pending_s = max_pending_s
        self._banks = {rate: _Bank(rate, capacity) for rate in WINDOW}
        self._closing: list[VadStream] = []
        self.stats = EngineStats()

    def open_stream(self, sample_rate: int, narrowband: bool = False) -> VadStream:
        """A stream at ``sample_rate``; ``narrowband`` runs the model at 8 kHz whatever the input rate."""
        return VadStream(self, sample_rate, self.max_pending_s, narrowband)

    def _housekeeping(self) -> None:
        while self._closing:
            stream = self._closing.pop()
            if stream.slot >= 0:
                self._banks[stream.rate].release(stream.slot)
                stream.slot = -1

    def process(self, batch: Sequence[tuple[VadStream, np.ndarray]]) -> list[np.ndarray]:
        """Run windows ([n_i, window] per stream, in order) and return one probability per window.

        Streams of one rate share each model call; a stream with several windows
        advances one window per call, since each window needs the state left by
        the one before it.
        """
        return [probs for probs, _ in self._process(batch, with_levels=False)]

    def process_with_levels(self, batch: Sequence[tuple[VadStream, np.ndarray]]
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
        """As ``process``, plus each window's sub-window levels (``levels_db``), computed for the whole
        batch at once rather than stream by stream."""
        return self._process(batch, with_levels=True)

    def _process(self, batch: Sequence[tuple[VadStream, np.ndarray]], with_levels: bool
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        self._housekeeping()
        empty = np.empty(0, dtype=np.float32)
        results: list[tuple[np.ndarray, np.ndarray]] = [(empty, empty)] * len(batch)
        by_rate: dict[int, list[int]] = {}
        for i, (stream, windows) in enumerate(batch):
            if stream.closed or len(windows) == 0:
                continue
            if stream.slot < 0:
                stream.slot = self._banks[stream.rate].allocate()
            by_rate.setdefault(stream.rate, []).append(i)
        for rate, members in by_rate.items():
            self._run_rate(self._banks[rate], batch, members, results, with_levels)
        return results

    def _run_rate(self, bank: _Bank, batch: Sequence[tuple[VadStream, np.ndarray]], members: list[int],
                  results: list[tuple[np.ndarray, np.ndarray]], with_levels: bool) -> None:
        n_members = len(members)
        counts = [len(batch[i][1]) for i in members]
        slots_all = np.fromiter((batch[i][0].slot for i in members), dtype=np.intp, count=n_members)
        steps, fewest = max(counts), min(counts)
        counts_arr = np.asarray(counts)
        ctx, win = bank.ctx, bank.window
        if fewest == steps:  # the usual case: every stream has as many windows
            stacked = np.stack([batch[i][1] for i in members])  # [B, steps, window]
        else:
            stacked = np.zeros((n_members, steps, win), dtype=batch[members[0]][1].dtype)
            for j, i in enumerate(members):
                stacked[j, :counts[j]] = batch[i][1]
        scale = np.float32(1 / 32768) if stacked.dtype == np.int16 else None  # VadStream gives int16
        probs_all = np.zeros((n_members, steps), dtype=np.float32)
        levels_all = None
        if with_levels:  # one pass over the whole batch (padding rows included; they are never read)
            levels_all = levels_db(stacked.reshape(-1, win), LEVEL_PARTS).reshape(n_members, steps, LEVEL_PARTS)
        for step in range(steps):
            if step < fewest:  # every stream still has a window at this step
                active: slice | np.ndarray = slice(None)
                slots = slots_all
            else:
                active = np.flatnonzero(counts_arr > step)
                slots = slots_all[active]
            x = np.empty((len(slots), ctx + win), dtype=np.float32)
            x[:, :ctx] = bank.context[slots]
            x[:, ctx:] = stacked[active, step]
            if scale is not None:
                x[:, ctx:] *= scale
            probs, state = self.model(x, bank.state[:, slots], bank.rate)
            bank.state[:, slots] = state
            bank.context[slots] = x[:, -ctx:]
            probs_all[active, step] = probs
            self.stats.calls += 1
            self.stats.windows += len(slots)
        none = probs_all[0, :0]
        for j, i in enumerate(members):
            n = counts[j]
            results[i] = (probs_all[j, :n], levels_all[j, :n] if levels_all is not None else none)
