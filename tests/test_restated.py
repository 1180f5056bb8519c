"""The restated Silero graph: same answers as the stock ONNX file, at both rates, streaming and batched."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_corpus

from vad.model import SileroModel, find_model_path
from vad.onnx_proto import GraphBuilder, read_tensors
from vad.restated import GEOMETRY, weights_for_rate
from wsstream.codecs import int16_to_float


@pytest.fixture(scope="module")
def stock() -> SileroModel:
    return SileroModel(graph="stock")


def _stream(model: SileroModel, audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of one stream run window by window, and the final state."""
    geo = GEOMETRY[rate]
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros(geo.context, dtype=np.float32)
    probs = []
    for start in range(0, audio.size - geo.window + 1, geo.window):
        x = np.concatenate([context, audio[start:start + geo.window]])[None]
        context = x[0, -geo.context:]
        p, state = model(x, state, rate)
        probs.append(p[0])
    return np.array(probs), state


@pytest.mark.parametrize("rate", [16000, 8000])
def test_restated_matches_stock_on_corpus_audio(model: SileroModel, stock: SileroModel, rate: int) -> None:
    assert model.graph == "restated" and stock.graph == "stock"
    audio = int16_to_float(load_corpus("dialog_03.flac", rate))[:rate * 15]
    fast, fast_state = _stream(model, audio, rate)
    slow, slow_state = _stream(stock, audio, rate)
    assert slow.max() > 0.9 and slow.min() < 0.1  # the stretch holds real speech and real pauses
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    np.testing.assert_allclose(fast_state, slow_state, atol=1e-3)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_restated_batch_rows_are_independent(model: SileroModel, stock: SileroModel, rate: int) -> None:
    geo = GEOMETRY[rate]
    rng = np.random.default_rng(7)
    batch = 37
    x = (rng.standard_normal((batch, geo.context + geo.window)) * 0.2).astype(np.float32)
    state = (rng.standard_normal((2, batch, 128)) * 0.3).astype(np.float32)
    probs, new_state = model(x, state, rate)
    ref_probs, ref_state = stock(x, state, rate)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    np.testing.assert_allclose(new_state, ref_state, atol=1e-4)
    one_probs, one_state = model(x[5:6], state[:, 5:6], rate)  # a row alone gives what it gave in the batch
    np.testing.assert_allclose(one_probs[0], probs[5], atol=1e-6)
    np.testing.assert_allclose(one_state[:, 0], new_state[:, 5], atol=1e-5)


def test_weights_are_read_from_the_shipped_model_by_branch() -> None:
    tensors = read_tensors(find_model_path().read_bytes())
    w16, w8 = weights_for_rate(tensors, 16000), weights_for_rate(tensors, 8000)
    assert w16["encoder.0.reparam_conv.weight"].shape == (128, 129, 3)
    assert w8["encoder.0.reparam_conv.weight"].shape == (128, 65, 3)
    assert w16["decoder.rnn.weight_ih"].shape == w8["decoder.rnn.weight_ih"].shape == (512, 128)
    assert not np.array_equal(w16["decoder.rnn.weight_ih"], w8["decoder.rnn.weight_ih"])
    with pytest.raises(ValueError, match="no 16000 Hz branch"):
        weights_for_rate({}, 16000)


def test_proto_writer_round_trips_through_reader_and_onnxruntime() -> None:
    import onnxruntime as ort

    g = GraphBuilder("roundtrip")
    x = g.input("x", ["n", 3])
    g.output("y", ["n", 2])
    weight = np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5
    g.op("Add", g.op("MatMul", x, g.const(weight, name="w")), g.const(np.float32([0.5, -1.0]), name="b"), out="y")
    blob = g.model()
    tensors = read_tensors(blob)
    np.testing.assert_array_equal(tensors["w"], weight)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    inp = np.array([[1, 2, 3], [-1, 0, 4]], dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": inp})[0], inp @ weight + [0.5, -1.0], rtol=1e-6)
