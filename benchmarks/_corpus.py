"""Corpus access for benchmarks (the copy in tests/data, so a fresh clone has it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def manifest() -> dict[str, Any]:
    return json.loads((DATA / "manifest.json").read_text())


def load(name: str, rate: int = 16000) -> np.ndarray:
    """float32 mono at ``rate``."""
    audio, sr = sf.read(DATA / name, dtype="float32")
    return audio if rate == sr else soxr.resample(audio, sr, rate).astype(np.float32)


def percentile_row(values: list[float]) -> str:
    v = np.asarray(values)
    return (f"min {v.min():6.0f}  median {np.median(v):6.0f}  p95 {np.percentile(v, 95):6.0f}  "
            f"max {v.max():6.0f}")
