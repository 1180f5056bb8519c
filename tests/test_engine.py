"""The Silero engine: model discovery, streaming windows, batched == one-by-one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_corpus

from vad.engine import VadEngine
from vad.model import ModelNotFoundError, SileroModel, find_model_path
from wsstream.codecs import int16_to_float


def test_model_found_without_importing_silero_vad_or_torch() -> None:
    code = ("import sys, vad; p = vad.find_model_path(); vad.SileroModel(p); "
            "assert 'silero_vad' not in sys.modules and 'torch' not in sys.modules; print(p)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("silero_vad/data/silero_vad.onnx")
    assert importlib.util.find_spec("torch") is None, "torch must never be installed"


def test_missing_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("WSSTREAM_VAD_MODEL", str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelNotFoundError, match="is not a file"):
        find_model_path()


def _stream_alone(model: SileroModel, rate: int, audio: np.ndarray, chunks: list[int]) -> np.ndarray:
    engine = VadEngine(model)
    stream = engine.open_stream(rate)
    out = []
    pos = 0
    for size in chunks:
        stream.push(int16_to_float(audio[pos:pos + size]))
        pos += size
        windows = stream.take_windows()
        if len(windows):
            out.append(engine.process([(stream, windows)])[0])
    return np.concatenate(out)


def test_chunk_boundaries_do_not_matter(model: SileroModel) -> None:
    audio = load_corpus("dialog_00.flac")[:16000 * 6]
    rng = np.random.default_rng(3)
    odd = list(rng.integers(1, 2000, size=400))
    a = _stream_alone(model, 16000, audio, [320] * (audio.size // 320 + 1))
    b = _stream_alone(model, 16000, audio, [*odd, audio.size])
    n = min(a.size, b.size)
    assert n >= 180
    np.testing.assert_allclose(a[:n], b[:n], atol=1e-5)
    assert a.max() > 0.9 and a.min() < 0.1  # real speech and real silence were seen


def test_batched_equals_one_by_one_for_interleaved_streams(model: SileroModel) -> None:
    """10 streams at 8, 16 and 48 kHz, pushed in interleaved uneven chunks through one engine."""
    rates = [16000, 8000, 48000, 16000, 8000, 16000, 48000, 8000, 16000, 16000]
    names = [f"dialog_0{i % 8}.flac" for i in range(len(rates))]
    audios = [load_corpus(n, r)[: r * 5] for n, r in zip(names, rates, strict=True)]
    expected = [_stream_alone(model, r, a, [r // 50] * 251) for r, a in zip(rates, audios, strict=True)]

    engine = VadEngine(model, capacity=4)  # forces the slot banks to grow mid-run
    streams = [engine.open_stream(r) for r in rates]
    got: list[list[np.ndarray]] = [[] for _ in rates]
    rng = np.random.default_rng(5)
    pos = [0] * len(rates)
    calls_before = engine.stats.calls
    while any(p < a.size for p, a in zip(pos, audios, strict=True)):
        batch, owners = [], []
        for i, (stream, audio) in enumerate(zip(streams, audios, strict=True)):
            size = int(rng.integers(100, 3000)) * audio.size // (16000 * 5)
            stream.push(int16_to_float(audio[pos[i]:pos[i] + size]))
            pos[i] += size
            windows = stream.take_windows()
            if len(windows):
                batch.append((stream, windows))
                owners.append(i)
        for i, probs in zip(owners, engine.process(batch), strict=True):
            got[i].append(probs)
    for i, exp in enumerate(expected):
        g = np.concatenate(got[i])
        n = min(g.size, exp.size)
        assert n > 0.95 * exp.size
        np.testing.assert_allclose(g[:n], exp[:n], atol=1e-5, err_msg=f"stream {i} at {rates[i]} Hz")
    # it really was batched: 10 streams in 2 rate groups, so well over 2 windows per model call
    assert engine.stats.windows > 2 * (engine.stats.calls - calls_before)


def test_closed_stream_slot_is_reused_with_fresh_state(model: SileroModel) -> None:
    engine = VadEngine(model, capacity=1)
    audio = int16_to_float(load_corpus("dialog_01.flac")[:16000 * 3])
    first = engine.open_stream(16000)
    first.push(audio)
    p1 = engine.process([(first, first.take_windows())])[0]
    first.close()
    second = engine.open_stream(16000)
    second.push(audio)
    p2 = engine.process([(second, second.take_windows())])[0]
    assert second.slot == 0  # the released slot, not a new one
    np.testing.assert_allclose(p1, p2, atol=1e-6)


def test_pending_buffer_is_bounded(model: SileroModel) -> None:
    engine = VadEngine(model, max_pending_s=1.0)
    stream = engine.open_stream(16000)
    stream.push(np.zeros(16000, dtype=np.float32))
    with pytest.raises(OverflowError):
        stream.push(np.zeros(10, dtype=np.float32))


def test_levels_from_the_batch_match_per_window_levels(model: SileroModel) -> None:
    from vad.detector import levels_db

    engine = VadEngine(model)
    a, b = engine.open_stream(16000), engine.open_stream(8000)
    a.push(load_corpus("dialog_02.flac")[:16000 * 2])  # int16 straight in
    b.push(int16_to_float(load_corpus("dialog_02.flac", 8000)[:8000 * 2]))
    wa, wb = a.take_windows(), b.take_windows()
    (pa, la), (pb, lb) = engine.process_with_levels([(a, wa), (b, wb)])
    np.testing.assert_allclose(la, levels_db(wa), atol=1e-3)
    np.testing.assert_allclose(lb, levels_db(wb), atol=1e-3)
    assert pa.shape == (len(wa),) and pb.shape == (len(wb),)


def test_windows_come_out_in_order_across_many_buffer_wraps(model: SileroModel) -> None:
    """Taking windows only advances a read position; the buffer is compacted when a push reaches
    its end. Over many wraps, with odd chunk sizes and takes of any size, every sample comes out
    once and in order, and the bound is on what is pending, not on where it sits."""
    engine = VadEngine(model, max_pending_s=0.1)  # 1600 samples at 16 kHz
    stream = engine.open_stream(16000)
    rng = np.random.default_rng(7)
    audio = rng.integers(-30000, 30000, 16000 * 3, dtype=np.int16)
    out, pos = [], 0
    while pos < audio.size:
        n = int(rng.integers(1, 700))
        chunk = audio[pos:pos + n]
        if stream.pending_samples + chunk.size > stream.capacity:
            with pytest.raises(OverflowError):
                stream.push(chunk)
        else:
            stream.push(chunk)
            pos += chunk.size
        if rng.random() < 0.5:
            out.append(stream.take_windows(limit=int(rng.integers(1, 4))))
    out.append(stream.take_windows())
    taken = np.concatenate(out).reshape(-1)
    assert taken.size == (audio.size // 512) * 512
    assert np.array_equal(taken, audio[:taken.size])
    # full to the last sample, wherever the pending audio started
    stream.push(np.zeros(stream.capacity - stream.pending_samples, dtype=np.int16))
    assert stream.pending_samples == stream.capacity
