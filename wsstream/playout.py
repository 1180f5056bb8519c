"""Reply audio to wire frames: resample, encode, cut into fixed-length frames, a bounded slice at a time.

A reply function may yield minutes of audio in one chunk. Converting it at once would stall the
event loop for as long as the conversion takes (half a second for ten minutes) and hold every
intermediate copy in memory, so ``FrameEncoder`` only keeps a reference to what was yielded and
converts it on demand, at most ``SLICE_S`` of it per step, as playout needs frames.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from wsstream.codecs import AudioFormat, FormatError, encode, float_to_int16, int16_to_float, to_int16
from wsstream.resample import StreamResampler

MIN_REPLY_RATE = 8000  # reply audio may come at these rates (Hz), what TTS models produce: 8 kHz to 48 kHz
MAX_REPLY_RATE = 48000
SLICE_S = 0.5  # the most source audio converted in one step (well under a millisecond of work)
LAZY_SAMPLES = 48_000  # a flat Python sequence longer than this (1 s at 48 kHz) is made an array a slice at a time


class ReplyAudioRefused(FormatError):
    """Reply audio the server will not play at all (its sample rate is out of bounds): the reply ends."""


def reply_rate(rate: object) -> int:
    """A reply chunk's sample rate as an int, or ``ReplyAudioRefused`` (bounded: a rate of 1 Hz would be
    resampled into 16,000 times as many samples)."""
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating):
        raise ReplyAudioRefused(f"reply audio needs its sample rate as a number, got {type(rate).__name__}")
    if not math.isfinite(rate) or rate != int(rate):
        raise ReplyAudioRefused(f"reply audio sample rate must be a whole number of Hz, got {rate!r}")
    value = int(rate)
    if not MIN_REPLY_RATE <= value <= MAX_REPLY_RATE:
        raise ReplyAudioRefused(f"reply audio at {value} Hz: sample rates from {MIN_REPLY_RATE} to "
                                f"{MAX_REPLY_RATE} Hz are supported")
    return value


class _LazySamples:
    """A long flat list (or tuple) of samples, made an array only a slice at a time as it plays. The whole
    at once would hold the event loop, and the GIL (so no thread helps), for about 50 ms a million samples.
    Integers are read on int16's scale and floats as -1..1, as for the whole list: a list that turns to
    floats after integers is read as floats if those integers were silence (0, +-1), else refused from
    there on. The list must not change once yielded."""

    __slots__ = ("_floats", "_int_peak", "_seq", "shape")
    ndim = 1

    def __init__(self, seq: list[object] | tuple[object, ...], length: int) -> None:
        self._seq = seq
        self.shape = (length,)
        self._floats = False
        self._int_peak = 0

    def check(self) -> None:
        """Fail now, with the reply's other errors, if its first sample is not a number."""
        self._convert(0, 1)

    def _convert(self, start: int, stop: int) -> np.ndarray:
        where = f"reply audio samples {start}..{stop}"
        try:
            audio = np.asarray(self._seq[start:stop])
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{where} are not numbers: {exc}") from None
        if audio.ndim != 1:
            raise FormatError(f"{where} are not a flat list of numbers")
        if audio.size < stop - start:
            raise FormatError(f"{where}: the list was shortened after it was yielded")
        try:
            return _checked_dtype(audio)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None

    def __getitem__(self, part: slice) -> np.ndarray:
        start, stop, _ = part.indices(self.shape[0])
        audio = self._convert(start, stop)
        if np.issubdtype(audio.dtype, np.floating):
            if not self._floats:
                if self._int_peak > 1:
                    raise FormatError(f"reply audio samples {start}..{stop} are floats after integer samples")
                self._floats = True
        elif self._floats:
            audio = audio.astype(np.float64)  # (as the whole list, of floats, would have been read)
        elif audio.size:
            self._int_peak = max(self._int_peak, int(np.abs(audio).max()))
        return audio

    def head(self, n: int) -> _LazySamples:
        """The first ``n`` samples (a reply's length bound), still unconverted."""
        return _LazySamples(self._seq, max(0, min(n, self.shape[0])))


def _checked_dtype(audio: np.ndarray) -> np.ndarray:
    if audio.dtype != np.int16 and not (np.issubdtype(audio.dtype, np.floating)
                                        or np.issubdtype(audio.dtype, np.integer)):
        raise FormatError(f"reply audio has unsupported dtype {audio.dtype}")
    return audio


def _time_major(samples: object) -> np.ndarray | _LazySamples:
    """The chunk as a 1-D array, or 2-D (time, channels), without converting or copying its samples (a long
    flat Python list is left a list, converted as it plays)."""
    if isinstance(samples, list | tuple) and len(samples) > LAZY_SAMPLES and np.ndim(samples[0]) == 0:
        lazy = _LazySamples(samples, len(samples))
        lazy.check()
        return lazy
    audio = np.asarray(samples)
    if audio.ndim == 2:
        if 1 in audio.shape:  # fastrtc hands out (1, n) arrays; (n, 1) is as common
            audio = audio.reshape(-1)
        elif audio.shape[0] < audio.shape[1]:  # (channels, time): the shorter side is the channels
            audio = audio.T
    if audio.ndim not in (1, 2):
        raise FormatError(f"reply audio must be a 1-D (or single-channel 2-D) array, got shape {audio.shape}")
    return _checked_dtype(audio)


def _mono(part: np.ndarray) -> np.ndarray:
    """One slice of a chunk as mono int16 (several channels mixed down, keeping the sample type's scale)."""
    if part.ndim == 2:
        mixed = part.mean(axis=1)
        part = mixed.round().astype(part.dtype) if np.issubdtype(part.dtype, np.integer) else mixed
    return to_int16(part)


@dataclass
class _Source:
    rate: int
    audio: np.ndarray | _LazySamples  # time-major: the caller's array (a view) or list, never copied whole
    pos: int = 0


class FrameEncoder:
    """Turns reply chunks at any rate into ``frame_ms`` frames in the output format.

    ``feed`` queues a chunk (validated, not converted); ``take(n)`` converts just enough of what is
    queued for ``n`` frames. Resampling is stateful across chunks of one reply; a change of source
    rate mid-reply flushes the old resampler first.
    """

    def __init__(self, fmt: AudioFormat, frame_ms: float = 20.0) -> None:
        self.fmt = fmt
        self.frame_samples = int(round(fmt.sample_rate * frame_ms / 1000))
        self._resampler: StreamResampler | None = None
        self._pending = np.empty(0, dtype=np.int16)
        self._sources: deque[_Source] = deque()
        # chunks found bad as they were converted, to report: (why, seconds of it dropped)
        self.problems: list[tuple[str, float]] = []

    @property
    def queued(self) -> bool:
        """Is there fed audio not yet converted?"""
        return bool(self._sources)

    def feed(self, sample_rate: object, samples: object, max_s: float = math.inf) -> float:
        """Queue one chunk, at most ``max_s`` seconds of it; returns the chunk's whole duration (s)."""
        rate = reply_rate(sample_rate)
        audio = _time_major(samples)
        seconds = audio.shape[0] / rate
        if seconds > max_s:
            keep = max(int(max_s * rate), 0)
            audio = audio.head(keep) if isinstance(audio, _LazySamples) else audio[:keep]
        if audio.shape[0]:
            self._sources.append(_Source(rate, audio))
        return seconds

    def push(self, sample_rate: object, samples: object) -> list[bytes]:
        """Feed one chunk and convert all of it now (for short chunks; replies go through ``take``)."""
        self.feed(sample_rate, samples)
        return self.take(None)

    def take(self, max_frames: int | None) -> list[bytes]:
        """Frames from the queued audio: at least ``max_frames`` (all of it when None) unless it runs out,
        converted ``SLICE_S`` at most at a time."""
        frames: list[bytes] = []
        out_rate = self.fmt.sample_rate
        while self._sources and (max_frames is None or len(frames) < max_frames):
            src = self._sources[0]
            if self._resampler is None or self._resampler.in_rate != src.rate:
                if self._resampler is not None:
                    tail = self._resampler.flush()
                    if tail.size:
                        frames += self._append(float_to_int16(tail))
                self._resampler = StreamResampler(src.rate, out_rate)
            step = int(src.rate * SLICE_S)
            if max_frames is not None:  # just what the frames still wanted need (at least 10 ms)
                want = (max_frames - len(frames)) * self.frame_samples - self._pending.size
                step = min(step, max(math.ceil(want * src.rate / out_rate), src.rate // 100))
            try:
                part = _mono(src.audio[src.pos:src.pos + step])
            except FormatError as exc:  # (a lazy list's later samples: the rest of this chunk is dropped)
                self._sources.popleft()
                self.problems.append((str(exc), (src.audio.shape[0] - src.pos) / src.rate))
                continue
            if not part.size:  # (never: a step is at least one sample; but an empty one must not spin)
                self._sources.popleft()
                continue
            src.pos += part.size
            if src.pos >= src.audio.shape[0]:
                self._sources.popleft()
            if src.rate != out_rate:
                part = float_to_int16(self._resampler.process(int16_to_float(part)))
            frames += self._append(part)
        return frames

    def _append(self, audio: np.ndarray) -> list[bytes]:
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = buf.size // self.frame_samples
        cut = n * self.frame_samples
        self._pending = buf[cut:].copy()
        if n == 0:
            return []
        data = encode(buf[:cut], self.fmt.encoding)  # one encode for the slice, then cut the bytes
        size = len(data) // n
        return [data[i:i + size] for i in range(0, len(data), size)]

    def flush(self, pad: bool = False) -> list[bytes]:
        """What is still queued, then the last, partial frame (zero-padded to full length when ``pad``)."""
        frames = self.take(None)
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
