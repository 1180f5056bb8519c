"""Stateful streaming resampling (soxr), so chunk boundaries leave no clicks or drift."""

from __future__ import annotations

import numpy as np
import soxr


class StreamResampler:
    """float32 mono in at one rate, out at another; a no-op when the rates match."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._soxr = None if in_rate == out_rate else soxr.ResampleStream(
            in_rate, out_rate, 1, dtype="float32", quality=quality)

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._soxr is None:
            return samples
        return self._soxr.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter at the end of a stream."""
        if self._soxr is None:
            return np.empty(0, dtype=np.float32)
        return self._soxr.resample_chunk(np.empty(0, dtype=np.float32), last=True)
