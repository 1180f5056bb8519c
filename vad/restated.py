"""Silero VAD, restated as a graph that runs large batches efficiently.

Profiling the stock ``silero_vad.onnx`` at batch 256 showed ~85% of its time in
three Conv nodes (the STFT and the first two encoder blocks). onnxruntime runs
a Conv as one small GEMM per batch item, and here each item has only four
time frames, so the GEMMs are too thin to be fast. This module builds the same
network from the same weights, read out of ``silero_vad.onnx`` itself, with
every convolution written as framing plus one MatMul over all ``batch x frames``
rows, which is the shape GEMM kernels are built for. Inputs, outputs and state
layout are those of the stock model at each rate (16 and 8 kHz); a test checks
the two agree on corpus audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vad.onnx_proto import GraphBuilder


@dataclass(frozen=True)
class Geometry:
    """Per-rate shape of the network: window and context, and STFT size."""

    window: int
    context: int
    n_fft: int

    @property
    def hop(self) -> int:
        return self.n_fft // 2

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1


GEOMETRY = {16000: Geometry(512, 64, 256), 8000: Geometry(256, 32, 128)}
_BASIS = "stft.forward_basis_buffer"


def weights_for_rate(tensors: dict[str, np.ndarray], rate: int) -> dict[str, np.ndarray]:
    """The weights of one rate's branch, by their PyTorch names (``encoder.0.reparam_conv.weight``, ...).

    ``silero_vad.onnx`` keeps each rate's weights as Constants inside an If branch, named
    ``<branch prefix><PyTorch name>``; the branch is recognised by its STFT basis size.
    """
    n_fft = GEOMETRY[rate].n_fft
    for name, basis in tensors.items():
        if name.endswith(_BASIS) and basis.shape == (n_fft + 2, 1, n_fft):
            prefix = name[: -len(_BASIS)]
            return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    raise ValueError(f"no {rate} Hz branch (STFT basis [{n_fft + 2}, 1, {n_fft}]) in the model")


def _taps(weight: np.ndarray, taps: range) -> np.ndarray:
    """Conv1d weight [out, in, k] as a MatMul weight whose rows are (tap, in_channel) in ``taps`` order."""
    return np.ascontiguousarray(np.concatenate([weight[:, :, k].T for k in taps], axis=0), dtype=np.float32)


def build_model(tensors: dict[str, np.ndarray], rate: int) -> bytes:
    """Serialized ONNX model for one rate: input [B, context + window], state [2, B, 128]
    -> output [B, 1], stateN [2, B, 128], as the stock model at that rate.

    ``tensors`` is ``read_tensors`` of ``silero_vad.onnx``.
    """
    geo = GEOMETRY[rate]
    w = weights_for_rate(tensors, rate)
    hop, bins = geo.hop, geo.bins
    g = GraphBuilder(f"silero_vad_{rate // 1000}k_batched")
    x = g.input("input", ["batch", geo.context + geo.window])
    state = g.input("state", [2, "batch", 128])
    g.output("output", ["batch", 1])
    g.output("stateN", [2, "batch", 128])

    def rows(data: str, start: int, end: int, step: int = 1) -> str:
        return g.op("Slice", data, g.const([start]), g.const([end]), g.const([1]), g.const([step]))

    def dense(data: str, weight: np.ndarray, bias: np.ndarray | None, relu: bool = True) -> str:
        y = g.op("MatMul", data, g.const(weight.astype(np.float32)))
        if bias is not None:
            y = g.op("Add", y, g.const(bias.astype(np.float32)))
        return g.op("Relu", y) if relu else y

    zero_pad_time = g.const([0, 1, 0, 0, 1, 0])

    # STFT: reflect-pad by half a hop to 5 hops (640 at 16 kHz); frame k is hops k and k+1, so all
    # four frames of every window go through one MatMul.
    padded = g.op("Pad", x, g.const([0, 0, 0, hop // 2]), mode="reflect")
    hops = g.op("Reshape", padded, g.const([-1, 5, hop]))
    frames = g.op("Concat", rows(hops, 0, 4), rows(hops, 1, 5), axis=2)  # [B, 4, n_fft]
    basis = w["stft.forward_basis_buffer"][:, 0, :].T  # [n_fft, 2 * bins]
    spec = g.op("MatMul", frames, g.const(np.ascontiguousarray(basis, dtype=np.float32)))
    real, imag = g.op("Split", spec, g.const([bins, bins]), outputs=2, axis=2)
    power = g.op("Add", g.op("Mul", real, real), g.op("Mul", imag, imag))
    mag = g.op("Sqrt", power)  # [B, 4, bins]

    # Encoder block 1: k=3, stride 1, pad 1 -> [B, 4, 128].
    p1 = g.op("Pad", mag, zero_pad_time)
    col1 = g.op("Concat", rows(p1, 0, 4), rows(p1, 1, 5), rows(p1, 2, 6), axis=2)
    h1 = dense(col1, _taps(w["encoder.0.reparam_conv.weight"], range(3)), w["encoder.0.reparam_conv.bias"])
    # Block 2: k=3, stride 2, pad 1 -> [B, 2, 64].
    p2 = g.op("Pad", h1, zero_pad_time)
    col2 = g.op("Concat", rows(p2, 0, 4, 2), rows(p2, 1, 5, 2), rows(p2, 2, 6, 2), axis=2)
    h2 = dense(col2, _taps(w["encoder.1.reparam_conv.weight"], range(3)), w["encoder.1.reparam_conv.bias"])
    # Block 3: k=3, stride 2, pad 1 over two frames -> one frame; its left tap only sees padding.
    flat = g.op("Reshape", h2, g.const([-1, 128]))
    h3 = dense(flat, _taps(w["encoder.2.reparam_conv.weight"], range(1, 3)), w["encoder.2.reparam_conv.bias"])
    # Block 4: one frame, so only the centre tap sees data.
    h4 = dense(h3, _taps(w["encoder.3.reparam_conv.weight"], range(1, 2)), w["encoder.3.reparam_conv.bias"])  # [B, 128]

    # LSTM cell (gate order i, f, g, o), both matrices in one MatMul over [x, h].
    h_prev = g.op("Gather", state, g.const(np.array(0, dtype=np.int64)), axis=0)
    c_prev = g.op("Gather", state, g.const(np.array(1, dtype=np.int64)), axis=0)
    w_gates = np.concatenate([w["decoder.rnn.weight_ih"].T, w["decoder.rnn.weight_hh"].T], axis=0)
    b_gates = w["decoder.rnn.bias_ih"] + w["decoder.rnn.bias_hh"]
    gates = dense(g.op("Concat", h4, h_prev, axis=1), w_gates, b_gates, relu=False)
    gi, gf, gg, go = g.op("Split", gates, g.const([128] * 4), outputs=4, axis=1)
    c_new = g.op("Add", g.op("Mul", g.op("Sigmoid", gf), c_prev),
                 g.op("Mul", g.op("Sigmoid", gi), g.op("Tanh", gg)))
    h_new = g.op("Mul", g.op("Sigmoid", go), g.op("Tanh", c_new))

    # Decoder: ReLU, 1x1 conv to one channel, sigmoid.
    logit = dense(g.op("Relu", h_new), w["decoder.decoder.2.weight"][0], w["decoder.decoder.2.bias"], relu=False)
    g.op("Sigmoid", logit, out="output")
    axis0 = g.const([0])
    g.op("Concat", g.op("Unsqueeze", h_new, axis0), g.op("Unsqueeze", c_new, axis0), axis=0, out="stateN")
    return g.model()
