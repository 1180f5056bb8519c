"""Reply audio to wire frames: resample, encode, cut into fixed-length frames."""

from __future__ import annotations

import numpy as np

from wsstream.codecs import AudioFormat, encode, float_to_int16, int16_to_float, to_int16
from wsstream.resample import StreamResampler


class FrameEncoder:
    """Turns reply chunks at any rate into ``frame_ms`` frames in the output format.

    Resampling is stateful across chunks of one reply; a change of source rate
    mid-reply flushes the old resampler first.
    """

    def __init__(self, fmt: AudioFormat, frame_ms: float = 20.0) -> None:
        self.fmt = fmt
        self.frame_samples = int(round(fmt.sample_rate * frame_ms / 1000))
        self._resampler: StreamResampler | None = None
        self._pending = np.empty(0, dtype=np.int16)

    def push(self, sample_rate: int, samples: np.ndarray) -> list[bytes]:
        audio = to_int16(samples)
        if self._resampler is None or self._resampler.in_rate != sample_rate:
            tail = self._resampler.flush() if self._resampler is not None else None
            if tail is not None and tail.size:
                self._append(float_to_int16(tail))
            self._resampler = StreamResampler(sample_rate, self.fmt.sample_rate)
        if sample_rate != self.fmt.sample_rate:
            audio = float_to_int16(self._resampler.process(int16_to_float(audio)))
        return self._append(audio)

    def _append(self, audio: np.ndarray) -> list[bytes]:
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = buf.size // self.frame_samples
        cut = n * self.frame_samples
        self._pending = buf[cut:].copy()
        if n == 0:
            return []
        data = encode(buf[:cut], self.fmt.encoding)  # one encode for the chunk, then cut the bytes
        size = len(data) // n
        return [data[i:i + size] for i in range(0, len(data), size)]

    def flush(self, pad: bool = False) -> list[bytes]:
        """The last, partial frame (zero-padded to full length when ``pad``)."""
        frames = []
        if self._resampler is not None:
            tail = self._resampler.flush()
            if tail.size:
                frames += self._append(float_to_int16(tail))
        if self._pending.size:
            last = self._pending
            if pad:
                last = np.concatenate([last, np.zeros(self.frame_samples - last.size, dtype=np.int16)])
            frames.append(encode(last, self.fmt.encoding))
            self._pending = np.empty(0, dtype=np.int16)
        return frames
