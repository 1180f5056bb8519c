"""Locating and running the Silero VAD ONNX model.

The model file ships inside the ``silero-vad`` wheel. We locate it with
``importlib.util.find_spec`` instead of importing the package, because its
``__init__`` imports torch, which this project never installs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vad.onnx_proto import read_tensors
from vad.restated import GEOMETRY, build_model

STATE_SIZE = 128
log = logging.getLogger(__name__)
MODEL_ENV = "WSSTREAM_VAD_MODEL"


class ModelNotFoundError(RuntimeError):
    """The Silero ONNX file is not where the installed silero-vad package keeps it."""


def find_model_path() -> Path:
    """Path of ``silero_vad.onnx``: $WSSTREAM_VAD_MODEL, else the silero-vad package's data dir."""
    override = os.environ.get(MODEL_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise ModelNotFoundError(f"{MODEL_ENV}={override} is not a file")
        return path
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the silero-vad package is not installed (it carries silero_vad.onnx); "
            f"install it, or set {MODEL_ENV} to the model file"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    raise ModelNotFoundError(f"silero-vad is installed but has no data/silero_vad.onnx under "
                             f"{list(spec.submodule_search_locations)}")


class SileroModel:
    """The Silero network for both rates, shared by every stream (streams keep the state).

    By default each rate runs as a restated graph (``vad.restated``): the same
    weights, read out of the ONNX file, with the convolutions written as large
    MatMuls, about 2.3x cheaper per window at batch 64 than the stock graph and equal
    to it within float rounding. ``graph="stock"`` runs the file as shipped (the
    baseline in benchmarks); a file whose weights cannot be found by name falls
    back to it, with a warning.

    Threads are set explicitly: intra-op parallelism does not pay for a tiny
    recurrent model, and a server wants its cores for more streams, not for one call.
    """

    def __init__(self, path: Path | None = None, *, intra_op_threads: int = 1,
                 graph: Literal["restated", "stock"] = "restated") -> None:
        import onnxruntime as ort

        self.path = path or find_model_path()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3

        def session(model: str | bytes) -> Any:
            return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

        self._srs = {rate: np.array(rate, dtype=np.int64) for rate in (8000, 16000)}
        self._restated: dict[int, Any] = {}
        if graph == "restated":
            try:
                tensors = read_tensors(self.path.read_bytes())
                self._restated = {rate: session(build_model(tensors, rate)) for rate in GEOMETRY}
            except (ValueError, KeyError) as exc:
                log.warning("VAD: cannot restate %s (%s); running the stock graph", self.path, exc)
        self.graph = "restated" if self._restated else "stock"
        # the file as shipped, loaded only when some rate runs on it
        self._stock = None if set(self._restated) >= set(GEOMETRY) else session(str(self.path))

    def __call__(self, x: np.ndarray, state: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Run one step for a batch: x is [B, context + window], state [2, B, 128].

        Returns (probabilities [B], new state [2, B, 128]).
        """
        restated = self._restated.get(sample_rate)
        if restated is not None:
            out, new_state = restated.run(None, {"input": x, "state": state})
        else:
            assert self._stock is not None
            out, new_state = self._stock.run(None, {"input": x, "state": state, "sr": self._srs[sample_rate]})
        return out[:, 0], new_state
