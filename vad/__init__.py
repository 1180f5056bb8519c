"""Silero VAD on onnxruntime (streaming, batched across streams) and the pause detector.

No WebSocket code lives here: this package is usable on its own.
"""

from vad.detector import (
    DetectorEvent,
    DetectorOptions,
    PauseCancelled,
    PauseDetected,
    PauseDetector,
    PauseTentative,
    StartedTalking,
    levels_db,
)
from vad.engine import CONTEXT, WINDOW, VadEngine, VadStream, vad_rate_for
from vad.model import ModelNotFoundError, SileroModel, find_model_path

__all__ = [
    "CONTEXT",
    "WINDOW",
    "DetectorEvent",
    "DetectorOptions",
    "ModelNotFoundError",
    "PauseCancelled",
    "PauseDetected",
    "PauseDetector",
    "PauseTentative",
    "SileroModel",
    "StartedTalking",
    "VadEngine",
    "VadStream",
    "find_model_path",
    "levels_db",
    "vad_rate_for",
]
