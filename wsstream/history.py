"""Bounded history of a stream's input audio, from which utterances are cut."""

from __future__ import annotations

from collections import deque
from itertools import islice

import numpy as np

BLOCK_SAMPLES = 8192  # 16 KiB of int16: about 0.5 s at 16 kHz, 1 s of telephone audio


class AudioHistory:
    """int16 samples with absolute positions, in fixed-size blocks; trimmed to what a turn may still need.

    Audio is copied into preallocated blocks, not kept as one array per message: a client that sends
    each sample in a message of its own then costs what its audio does (an array object per 2-byte
    message cost ~175 bytes a sample). Memory stays proportional to the current turn (capped at
    ``max_samples``, plus a block), not to the length of the call or the number of messages.
    """

    def __init__(self, max_samples: int, block: int = BLOCK_SAMPLES) -> None:
        self.max_samples = max_samples
        self._block = block
        self._blocks: deque[np.ndarray] = deque()  # all full but the last, which fills from _fill
        self._fill = block  # samples used in the last block (full: the next append starts a new one)
        self._first = 0  # absolute position of _blocks[0][0]
        self._start = 0  # absolute position of the first kept sample (>= _first)
        self.total = 0  # samples appended since the stream began

    @property
    def kept(self) -> int:
        return self.total - self._start

    @property
    def nbytes(self) -> int:
        """Bytes held in sample blocks (what the history costs, besides a small object per block)."""
        return len(self._blocks) * self._block * 2

    def append(self, samples: np.ndarray) -> None:
        n = samples.size
        if not n:
            return
        block, fill = self._block, self._fill
        if fill + n <= block:  # the usual case: it fits in the last block (a 20 ms frame, or one sample)
            self._blocks[-1][fill:fill + n] = samples
            self._fill = fill + n
        else:
            done = 0
            while done < n:
                if self._fill == block:
                    self._blocks.append(np.empty(block, np.int16))
                    self._fill = 0
                take = min(block - self._fill, n - done)
                self._blocks[-1][self._fill:self._fill + take] = samples[done:done + take]
                self._fill += take
                done += take
        self.total += n
        if self.total - self._start > self.max_samples:  # (kept, without the property call)
            self.trim(self.total - self.max_samples)

    def trim(self, keep_from: int) -> None:
        """Forget samples before ``keep_from`` (to the sample; the blocks wholly before it are freed, so at
        most one block's worth more is held). It runs once per VAD result: a few comparisons."""
        keep_from = min(keep_from, self.total)
        if keep_from <= self._start:
            return
        self._start = keep_from
        blocks, block = self._blocks, self._block
        while len(blocks) > 1 and self._first + block <= keep_from:
            blocks.popleft()
            self._first += block
        if len(blocks) == 1 and self._first + self._fill <= keep_from:  # all of it: the block is reused
            self._first += self._fill
            self._fill = 0

    def slice(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end), clipped to what is kept; one concatenate, not a loop of copies."""
        start = max(start, self._start)
        end = min(end, self.total)
        if end <= start:
            return np.empty(0, dtype=np.int16)
        block, first = self._block, self._first
        lo, hi = (start - first) // block, (end - first - 1) // block + 1
        base = first + lo * block
        return np.concatenate(list(islice(self._blocks, lo, hi)))[start - base:end - base]
