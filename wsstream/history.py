"""Bounded history of a stream's input audio, from which utterances are cut."""

from __future__ import annotations

from collections import deque

import numpy as np


class AudioHistory:
    """int16 chunks with absolute sample positions; trimmed to what a turn may still need.

    Memory stays proportional to the current turn (capped at ``max_samples``),
    not to the length of the call.
    """

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._chunks: deque[np.ndarray] = deque()
        self._start = 0  # absolute position of the first kept sample
        self.total = 0  # samples appended since the stream began

    @property
    def kept(self) -> int:
        return self.total - self._start

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self.total += samples.size
            if self.total - self._start > self.max_samples:  # (kept, without the property call)
                self.trim(self.total - self.max_samples, exact=True)

    def trim(self, keep_from: int, exact: bool = False) -> None:
        """Forget samples before ``keep_from``: whole chunks only (it runs once per VAD window, and
        at most one chunk more than asked for stays), or to the sample with ``exact``."""
        chunks = self._chunks
        while chunks and self._start + chunks[0].size <= keep_from:
            self._start += chunks.popleft().size
        if exact and chunks and self._start < keep_from:
            chunks[0] = chunks[0][keep_from - self._start:]
            self._start = keep_from

    def slice(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end), clipped to what is kept; one concatenate, not a loop of copies."""
        start = max(start, self._start)
        end = min(end, self.total)
        if end <= start:
            return np.empty(0, dtype=np.int16)
        picked: list[np.ndarray] = []
        pos, first = self._start, -1  # first: absolute position of picked[0]
        for chunk in self._chunks:
            following = pos + chunk.size
            if following > start:
                if first < 0:
                    first = pos
                picked.append(chunk)
            pos = following
            if pos >= end:
                break
        return np.concatenate(picked)[start - first:end - first]
