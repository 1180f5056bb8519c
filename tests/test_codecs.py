"""Codecs, framing and the audio history (G.711 against its oracle is in test_g711.py)."""

from __future__ import annotations

import numpy as np
import pytest

from wsstream.codecs import AudioFormat, FormatError, decode, encode, to_int16
from wsstream.history import AudioHistory
from wsstream.playout import FrameEncoder


def test_pcm16_and_float32_round_trip() -> None:
    x = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    assert np.array_equal(decode(encode(x, "pcm16"), "pcm16"), x)
    y = decode(encode(x, "float32"), "float32")
    assert np.abs(y.astype(int) - x).max() <= 1


def test_trailing_half_sample_and_nan_are_errors() -> None:
    with pytest.raises(FormatError, match="whole number of 4-byte samples"):
        decode(b"\x00" * 6, "float32")
    with pytest.raises(FormatError, match="NaN"):
        decode(np.array([np.nan], dtype="<f4").tobytes(), "float32")


def test_reply_shapes_and_types() -> None:
    ramp = np.arange(0, 1000, 7, dtype=np.int16)
    assert np.array_equal(to_int16(ramp.reshape(1, -1)), ramp)  # fastrtc's (1, n)
    assert np.array_equal(to_int16(ramp.reshape(-1, 1)), ramp)
    stereo = np.stack([ramp, ramp])
    assert np.array_equal(to_int16(stereo), ramp)
    assert to_int16(np.array([0.5, -1.5], dtype=np.float32)).tolist() == [16384, -32767]


@pytest.mark.parametrize("bad", [{"encoding": "opus"}, {"sample_rate": 7999}, {"channels": 2}])
def test_audio_format_validation(bad: dict) -> None:
    with pytest.raises(FormatError):
        AudioFormat(**bad)


def test_frame_encoder_frames_resamples_and_pads() -> None:
    enc = FrameEncoder(AudioFormat("mulaw", 8000))
    frames = enc.push(24000, np.zeros(24000, dtype=np.int16))  # 1 s at 24 kHz
    frames += enc.push(24000, np.zeros(1000, dtype=np.int16))
    frames += enc.flush(pad=True)
    assert all(len(f) == 160 for f in frames)
    total = 8000 + 1000 // 3
    assert len(frames) == -(-total // 160)
    assert frames[-1] == b"\xff" * 160  # μ-law silence


def test_history_slices_across_chunks_and_trims() -> None:
    h = AudioHistory(max_samples=1000)
    for i in range(10):
        h.append(np.arange(i * 100, (i + 1) * 100, dtype=np.int16))
    assert h.slice(250, 420).tolist() == list(range(250, 420))
    h.trim(300)
    assert h.slice(0, 310).tolist() == list(range(300, 310))  # clipped to what is kept
    h.append(np.arange(1000, 1900, dtype=np.int16))  # over the cap: the oldest go
    assert h.kept == 1000 and h.slice(0, 901)[0] == 900
