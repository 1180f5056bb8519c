"""Engine + detector over the labelled corpus: one pause per turn, at the right time.

The manifest gives each turn's exact last speech sample. With pause_ms 600 a
correct detector fires exactly once per turn, between 600 and 800 ms after it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import corpus_files, load_corpus, turn_ends_s

from vad.detector import DetectorOptions, PauseDetected, PauseDetector, StartedTalking, levels_db
from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream.codecs import int16_to_float

PAUSE_MS = 600


def detect(model: SileroModel, audio: np.ndarray, rate: int, chunk: int) -> list[Any]:
    engine = VadEngine(model)
    stream = engine.open_stream(rate)
    det = PauseDetector(DetectorOptions(pause_ms=PAUSE_MS), stream.rate, stream.window)
    events = []
    for i in range(0, audio.size, chunk):
        stream.push(int16_to_float(audio[i:i + chunk]))
        windows = stream.take_windows()
        if len(windows):
            events += det.push(engine.process([(stream, windows)])[0], levels_db(windows))
    return events


@pytest.mark.parametrize("rate", [16000, 8000])
@pytest.mark.parametrize("name", corpus_files())
def test_one_pause_per_turn_within_window(model: SileroModel, manifest: dict, name: str, rate: int) -> None:
    audio = load_corpus(name, rate)
    events = detect(model, audio, rate, chunk=rate // 50)  # 20 ms frames
    det_rate = 8000 if rate == 8000 else 16000
    pauses = [e.at / det_rate for e in events if isinstance(e, PauseDetected)]
    starts = [e.onset / det_rate for e in events if isinstance(e, StartedTalking)]
    turns = manifest["files"][name]["turns"]
    ends = turn_ends_s(manifest, name)
    assert len(pauses) == len(turns), f"pauses at {pauses}, turn ends at {ends}"
    assert len(starts) == len(turns)
    for turn, start, pause, end in zip(turns, starts, pauses, ends, strict=True):
        latency_ms = (pause - end) * 1000
        assert PAUSE_MS <= latency_ms <= PAUSE_MS + 200, f"pause {latency_ms:.0f} ms after the turn end"
        # the onset is at most two windows before the speech and at most 150 ms after it, well
        # inside the 300 ms prefix padding, so the utterance always holds the turn's first word
        label = turn["start"] / 16000
        assert label - 0.07 <= start <= label + 0.15, f"onset {start:.3f} s, turn starts at {label:.3f} s"


def test_resampled_48k_stream_matches_labels(model: SileroModel, manifest: dict) -> None:
    name = "dialog_03.flac"
    events = detect(model, load_corpus(name, 48000), 48000, chunk=48000 // 50)
    pauses = [e.at / 16000 for e in events if isinstance(e, PauseDetected)]
    ends = turn_ends_s(manifest, name)
    assert len(pauses) == len(ends)
    for pause, end in zip(pauses, ends, strict=True):
        assert PAUSE_MS <= (pause - end) * 1000 <= PAUSE_MS + 200


def test_narrowband_vad_on_wideband_audio(model: SileroModel, manifest: dict) -> None:
    """--vad-rate 8000: a 16 kHz stream judged by the 8 kHz model still meets the same bounds."""
    engine = VadEngine(model)
    name = "dialog_06.flac"
    stream = engine.open_stream(16000, narrowband=True)
    assert (stream.rate, stream.window) == (8000, 256)
    det = PauseDetector(DetectorOptions(pause_ms=PAUSE_MS), stream.rate, stream.window)
    audio = load_corpus(name)
    events = []
    for i in range(0, audio.size, 320):
        stream.push(audio[i:i + 320])
        w = stream.take_windows()
        if len(w):
            events += det.push(engine.process([(stream, w)])[0], levels_db(w))
    pauses = [e.at / 8000 for e in events if isinstance(e, PauseDetected)]
    ends = turn_ends_s(manifest, name)
    assert len(pauses) == len(ends)
    for pause, end in zip(pauses, ends, strict=True):
        assert PAUSE_MS <= (pause - end) * 1000 <= PAUSE_MS + 200
