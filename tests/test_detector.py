"""The pause detector as a plain state machine: probabilities in, events out, no model."""

from __future__ import annotations

import numpy as np
import pytest

from vad.detector import (
    DetectorOptions,
    PauseCancelled,
    PauseDetected,
    PauseDetector,
    PauseTentative,
    StartedTalking,
    levels_db,
)

W = 512  # 32 ms at 16 kHz


def run(probs: list[float], levels: np.ndarray | None = None, **opts: float) -> tuple[PauseDetector, list]:
    det = PauseDetector(DetectorOptions(**opts), 16000, W)
    return det, det.push(np.array(probs, dtype=np.float32), levels)


def windows(ms: float) -> int:
    return int(np.ceil(ms * 16 / W))


def test_speech_then_pause_gives_exact_positions() -> None:
    probs = [0.0] * 10 + [0.9] * 20 + [0.0] * 30
    _, events = run(probs)
    started = [e for e in events if isinstance(e, StartedTalking)]
    paused = [e for e in events if isinstance(e, PauseDetected)]
    assert len(started) == 1 and len(paused) == 1
    assert started[0].onset == 10 * W
    # min_speech 250 ms = 7.8 windows -> decided at the end of the 8th speech window
    assert started[0].at == (10 + windows(250)) * W
    assert paused[0].speech_end == 30 * W
    # 600 ms of silence after the speech: the first window end at least 9600 samples later
    assert paused[0].at == 30 * W + windows(600) * W
    assert paused[0].at - paused[0].speech_end >= 9600
    assert paused[0].start == 10 * W - 4800  # prefix padding 300 ms
    assert paused[0].end == paused[0].at


def test_short_blip_is_not_speech() -> None:
    _, events = run([0.0] * 5 + [0.9] * 5 + [0.0] * 40)  # 160 ms < min_speech
    assert events == []


def test_gap_shorter_than_pause_stays_one_turn() -> None:
    probs = [0.9] * 20 + [0.0] * (windows(600) - 1) + [0.9] * 20 + [0.0] * 40
    _, events = run(probs)
    assert sum(isinstance(e, PauseDetected) for e in events) == 1
    assert sum(isinstance(e, StartedTalking) for e in events) == 1
    # the short gap was announced as tentative and retracted
    kinds = [type(e) for e in events]
    assert kinds.index(PauseTentative) < kinds.index(PauseCancelled) < kinds.index(PauseDetected)


def test_hysteresis_band_neither_starts_nor_ends_silence() -> None:
    # 0.4 is between neg_threshold (0.35) and threshold (0.5): speech fading into the band
    # does not begin a pause until a window drops below 0.35.
    probs = [0.9] * 20 + [0.4] * 40
    _, events = run(probs)
    assert not any(isinstance(e, PauseDetected) for e in events)
    _, events = run(probs + [0.1] * 5)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    # the band windows count towards the silence once it is confirmed: fires right after confirmation
    assert paused.speech_end == 20 * W and paused.at == 61 * W


def test_onset_survives_a_short_dip_but_not_a_long_one() -> None:
    # a 32 ms dip (a stop consonant) inside the first 250 ms does not lose the start of the turn
    _, events = run([0.0] * 2 + [0.9] * 4 + [0.2] + [0.9] * 4 + [0.0] * 40)
    (started,) = [e for e in events if isinstance(e, StartedTalking)]
    assert started.onset == 2 * W
    # a dip of 100 ms or more cancels the onset: the blip before it was not the start
    _, events = run([0.0] * 2 + [0.9] * 4 + [0.2] * 4 + [0.9] * 4 + [0.0] * 40)
    assert events == []


def test_max_speech_ends_turn() -> None:
    _, events = run([0.9] * 100, max_speech_s=1.0)
    paused = [e for e in events if isinstance(e, PauseDetected)]
    assert paused and paused[0].reason == "max_speech"
    assert paused[0].at - paused[0].onset >= 16000
    assert paused[0].at - paused[0].onset < 16000 + W


def test_prefix_padding_clamped_at_stream_start() -> None:
    _, events = run([0.9] * 20 + [0.0] * 30)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert paused.start == 0


def test_force_end_only_when_talking() -> None:
    det, _ = run([0.0] * 5)
    assert det.force_end() is None
    det, _ = run([0.9] * 20)
    forced = det.force_end()
    assert forced is not None and forced.reason == "forced" and forced.end == 20 * W
    assert det.force_end() is None


def test_chunking_does_not_change_events() -> None:
    rng = np.random.default_rng(1)
    probs = np.repeat(rng.random(60) > 0.5, 8).astype(np.float32) * 0.9
    _, whole = run(list(probs))
    det = PauseDetector(DetectorOptions(), 16000, W)
    pieces = []
    for chunk in np.array_split(probs, 37):
        pieces += det.push(chunk)
    assert pieces == whole and len(whole) > 2


def test_quiet_tail_extends_speech_end() -> None:
    # The model stops calling it speech at window 30, but the signal stays well above the
    # noise floor for two more windows: the pause counts from the end of that tail.
    probs = [0.0] * 10 + [0.9] * 20 + [0.1] * 40
    levels = np.full((70, 4), -70.0)
    levels[10:30] = -20.0
    levels[30:32] = -45.0  # quiet tail, 25 dB above the floor
    _, events = run(probs, levels)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert paused.speech_end == 32 * W
    assert paused.at - paused.speech_end >= 9600
    # without levels, the pause counts from the model's last speech window
    _, events = run(probs)
    (plain,) = [e for e in events if isinstance(e, PauseDetected)]
    assert plain.speech_end == 30 * W


def test_tail_extension_is_bounded() -> None:
    # A loud noise right after the speech cannot hold the turn open beyond tail_ms.
    probs = [0.9] * 20 + [0.1] * 60
    levels = np.full((80, 4), -70.0)
    levels[20:] = -30.0
    _, events = run(probs, levels, tail_ms=200)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert paused.speech_end == 20 * W + 3200


def test_levels_db() -> None:
    x = np.zeros((2, 512), dtype=np.float32)
    x[0, :128] = 0.5
    lv = levels_db(x)
    assert lv.shape == (2, 4)
    assert lv[0, 0] == pytest.approx(20 * np.log10(0.5), abs=0.01)
    assert lv[1].max() < -100


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 0.5, "neg_threshold": 0.6},
                                 {"pause_ms": -1}, {"max_speech_s": 0}])
def test_invalid_options_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        DetectorOptions(**bad)


def test_force_end_during_onset_keeps_the_speech() -> None:
    det, events = run([0.0] * 3 + [0.9] * 4)  # 128 ms: shorter than min_speech, no started_talking yet
    assert events == []
    forced = det.force_end()
    assert forced is not None and forced.onset == 3 * W and forced.end == 7 * W


def test_digital_silence_does_not_sink_the_noise_floor() -> None:
    # Long digital silence (a muted line), then speech, then ordinary room tone at -62 dBFS:
    # the room tone must not count as the tail of the last word.
    n_sil, n_speech, n_room = 100, 20, 40
    probs = [0.0] * n_sil + [0.9] * n_speech + [0.05] * n_room
    levels = np.concatenate([np.full((n_sil, 4), -200.0), np.full((n_speech, 4), -20.0),
                             np.full((n_room, 4), -62.0)])
    _, events = run(probs, levels)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert paused.speech_end == (n_sil + n_speech) * W
