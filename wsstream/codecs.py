"""Audio encodings of the wire: pcm16, float32, G.711 μ-law and A-law, all vectorised.

G.711 follows the classic reference algorithm (the one Python's ``audioop`` and
most telephony stacks use), so our bytes match theirs exactly. Encoding is one
lookup in a 65536-entry table indexed by the int16 sample; decoding one lookup
in a 256-entry table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

ENCODINGS = ("pcm16", "mulaw", "alaw", "float32")
BYTES_PER_SAMPLE = {"pcm16": 2, "mulaw": 1, "alaw": 1, "float32": 4}
_LITTLE_ENDIAN = sys.byteorder == "little"  # the wire is little-endian; so is every CPU we run on
_PCM16 = np.dtype("<i2")  # (a dtype object, passed positionally: numpy parses a dtype= keyword per call)
_BYTE = np.dtype(np.uint8)
MIN_RATE, MAX_RATE = 8000, 48000


class FormatError(ValueError):
    """An audio format or payload the server cannot take."""


@dataclass(frozen=True)
class AudioFormat:
    encoding: str = "pcm16"
    sample_rate: int = 16000
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise FormatError(f"unsupported encoding {self.encoding!r}; use one of {', '.join(ENCODINGS)}")
        if not isinstance(self.sample_rate, int) or isinstance(self.sample_rate, bool) \
                or not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise FormatError(f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE}, "
                              f"got {self.sample_rate!r}")
        if self.channels != 1:
            raise FormatError(f"only mono audio is supported (channels: 1), got channels={self.channels!r}")

    @property
    def sample_width(self) -> int:
        return BYTES_PER_SAMPLE[self.encoding]

    def frame_bytes(self, ms: float) -> int:
        return int(round(self.sample_rate * ms / 1000)) * self.sample_width


_SEG_END_U = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_END_A = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _build_ulaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(_SEG_END_U, mag)  # first segment whose end >= mag
    code = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code) ^ mask
    table = np.empty(65536, dtype=np.uint8)
    table[np.arange(-32768, 32768).astype(np.int16).view(np.uint16)] = code
    return table


def _build_alaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_END_A, mag)
    low = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (seg << 4) | low) ^ mask
    table = np.empty(65536, dtype=np.uint8)
    table[np.arange(-32768, 32768).astype(np.int16).view(np.uint16)] = code
    return table


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int64) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int64) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_ENCODE = _build_ulaw_encode()
ALAW_ENCODE = _build_alaw_encode()
ULAW_DECODE = _build_ulaw_decode()
ALAW_DECODE = _build_alaw_decode()


def decode(data: bytes | bytearray | memoryview, encoding: str) -> np.ndarray:
    """Wire bytes to int16 samples. A trailing partial sample is a FormatError."""
    width = BYTES_PER_SAMPLE[encoding]
    if len(data) % width:
        raise FormatError(f"{encoding} audio must be a whole number of {width}-byte samples, "
                          f"got {len(data)} bytes")
    if encoding == "pcm16":
        samples = np.frombuffer(data, _PCM16)
        return samples if _LITTLE_ENDIAN else samples.astype(np.int16)
    if encoding == "mulaw":
        return ULAW_DECODE[np.frombuffer(data, _BYTE)]
    if encoding == "alaw":
        return ALAW_DECODE[np.frombuffer(data, _BYTE)]
    samples = np.frombuffer(data, dtype="<f4")
    if not np.isfinite(samples).all():
        raise FormatError("float32 audio contains NaN or infinity")
    return float_to_int16(samples)


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) * np.float32(1.0 / 32768.0)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Any reply audio (int16, float in -1..1, other ints) to mono int16."""
    samples = np.asarray(samples)
    if samples.ndim == 2:
        if 1 in samples.shape:  # fastrtc hands out (1, n) arrays; (n, 1) is as common
            samples = samples.reshape(-1)
        else:  # several channels: mix down, keeping the sample type (and so its scale)
            mixed = samples.mean(axis=0 if samples.shape[0] < samples.shape[1] else 1)
            samples = mixed.round().astype(samples.dtype) if np.issubdtype(samples.dtype, np.integer) else mixed
    if samples.ndim != 1:
        raise FormatError(f"reply audio must be a 1-D (or single-channel 2-D) array, got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples
    if np.issubdtype(samples.dtype, np.floating):
        return float_to_int16(np.nan_to_num(samples.astype(np.float32)))
    if np.issubdtype(samples.dtype, np.integer):
        return np.clip(samples, -32768, 32767).astype(np.int16)
    raise FormatError(f"reply audio has unsupported dtype {samples.dtype}")


def encode(samples: np.ndarray, encoding: str) -> bytes:
    """int16 samples to wire bytes."""
    if encoding == "pcm16":
        return samples.astype("<i2", copy=False).tobytes()
    if encoding == "mulaw":
        return ULAW_ENCODE[samples.view(np.uint16)].tobytes()
    if encoding == "alaw":
        return ALAW_ENCODE[samples.view(np.uint16)].tobytes()
    return int16_to_float(samples).astype("<f4", copy=False).tobytes()
