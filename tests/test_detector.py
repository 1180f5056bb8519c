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
SUB = W // 4  # a level sub-window, 8 ms
ROOM_DB = -62.0


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


@pytest.mark.parametrize("backdate", [True, False])
def test_quiet_tail_extends_speech_end(backdate: bool) -> None:
    # The model stops calling it speech at window 30, but the signal stays well above the
    # noise floor for two more windows: the pause counts from the end of that tail (back-dated:
    # one sub-window later still, as the speech may go on below the bar for part of it).
    probs = [0.0] * 10 + [0.9] * 20 + [0.1] * 40
    levels = np.full((70, 4), -70.0)
    levels[10:30] = -20.0
    levels[30:32] = -45.0  # quiet tail, 25 dB above the floor
    _, events = run(probs, levels, backdate=backdate)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert paused.speech_end == 32 * W + (SUB if backdate else 0)
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
    _, events = run(probs, levels, tail_ms=200, backdate=False)
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


@pytest.mark.parametrize("backdate", [True, False])
def test_digital_silence_does_not_sink_the_noise_floor(backdate: bool) -> None:
    # Long digital silence (a muted line), then speech, then ordinary room tone at -62 dBFS:
    # the room tone must not count as the tail of the last word.
    n_sil, n_speech, n_room = 100, 20, 40
    probs = [0.0] * n_sil + [0.9] * n_speech + [0.05] * n_room
    levels = np.concatenate([np.full((n_sil, 4), -200.0), np.full((n_speech, 4), -20.0),
                             np.full((n_room, 4), -62.0)])
    _, events = run(probs, levels, backdate=backdate)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert paused.speech_end == (n_sil + n_speech) * W + (SUB if backdate else 0)


# ---- back-dating (issue 11): the pause counts from where the signal says the speech ended -------------


def speech_levels(n: int, ends_at: int, room_db: float = ROOM_DB, speech_db: float = -20.0,
                  room_from: int = 0) -> np.ndarray:
    """Sub-window levels for n windows: room tone, speech from ``room_from`` windows in up to the
    sample ``ends_at`` (to the sub-window), room tone after."""
    flat = np.full(n * 4, room_db)
    flat[room_from * 4:ends_at // SUB] = speech_db
    return flat.reshape(n, 4)


def first_pause(probs: list[float], levels: np.ndarray | None, **opts: float) -> PauseDetected:
    _, events = run(probs, levels, **opts)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    return paused


def test_trailing_probability_is_back_dated_but_never_before_the_speech() -> None:
    # Speech (after 1 s of room tone, so the room is known) ends mid-window; the model goes on
    # scoring speech for 2 more windows (64 ms), as Silero's probability trails the end.
    lead, talk = 32, 40
    end = (lead + talk) * W - 3 * SUB  # the last speech sample: a quarter window into a window
    probs = [0.0] * lead + [0.9] * (talk + 2) + [0.05] * 40
    levels = speech_levels(len(probs), end, room_from=lead)
    ours = first_pause(probs, levels)
    plain = first_pause(probs, None)
    assert ours.speech_end >= end and ours.at >= end + 9600  # never earlier than the truth
    assert ours.speech_end - end <= 2 * SUB  # found to the sub-window, not where the model fell
    assert plain.at - ours.at >= 2 * W  # and so the decision comes sooner than on probabilities alone


def test_intra_turn_gap_held_by_the_probability_is_not_a_pause() -> None:
    # A 480 ms gap at room level inside a turn, through which the model keeps scoring speech: the
    # silence counts from the gap's start, but the next phrase comes before the pause is up.
    lead = 32
    probs = [0.0] * lead + [0.9] * 20 + [0.9] * 15 + [0.9] * 20 + [0.05] * 30
    flat = np.full(len(probs) * 4, ROOM_DB)
    flat[lead * 4:(lead + 20) * 4] = -20.0
    flat[(lead + 35) * 4:(lead + 55) * 4] = -20.0
    _, events = run(probs, flat.reshape(-1, 4))
    paused = [e for e in events if isinstance(e, PauseDetected)]
    assert len(paused) == 1 and paused[0].speech_end >= (lead + 55) * W
    # a gap of 800 ms is a pause even though the model held it: the silence counts from at most
    # tail_ms - lookback_ms (100 ms) after the speaker's last window, and the speaker was silent longer
    probs = [0.0] * lead + [0.9] * 20 + [0.9] * 25 + [0.9] * 20 + [0.05] * 30
    flat = np.full(len(probs) * 4, ROOM_DB)
    flat[lead * 4:(lead + 20) * 4] = -20.0
    flat[(lead + 45) * 4:(lead + 65) * 4] = -20.0
    _, events = run(probs, flat.reshape(-1, 4))
    paused = [e for e in events if isinstance(e, PauseDetected)]
    assert len(paused) == 2 and (lead + 20) * W + 9600 + 1600 <= paused[0].at < (lead + 45) * W


def test_end_never_before_the_models_last_speech_window_minus_lookback() -> None:
    # The signal drops to room level at window 52, the model keeps scoring speech for 6 windows more
    # (192 ms, within tail_ms): the end is taken no earlier than that last window minus lookback_ms,
    # since the model may be hearing what the level cannot (a tail under the noise).
    lead = 32
    probs = [0.0] * lead + [0.9] * 26 + [0.05] * 40
    flat = np.full(len(probs) * 4, ROOM_DB)
    flat[lead * 4:(lead + 20) * 4] = -20.0
    for lookback in (50, 100, 150):
        paused = first_pause(probs, flat.reshape(-1, 4), lookback_ms=lookback)
        assert paused.speech_end == max((lead + 26) * W - lookback * 16, (lead + 20) * W + SUB)


def test_digital_silence_does_not_pull_the_decision_early() -> None:
    # A muted telephone leg: exact zeros between turns (levels far below any signal), the model falling
    # fast on them. The room is never learned from zeros, and the pause is never before the speech + pause.
    lead, talk = 40, 30
    for cut in (0, 1, 2, 3):  # the speech ends in each sub-window of its last window
        end = (lead + talk) * W - cut * SUB
        probs = [0.0] * lead + [0.9] * talk + [0.05] * 40
        flat = np.full(len(probs) * 4, -120.0)
        flat[lead * 4:end // SUB] = -25.0
        flat[end // SUB - 1] = -58.0  # the very end of the word, quieter than any room tone
        det, events = run(probs, flat.reshape(-1, 4))
        (paused,) = [e for e in events if isinstance(e, PauseDetected)]
        assert paused.speech_end >= end and paused.at >= end + 9600
        assert paused.at - end <= 9600 + W + 2 * SUB
        assert det.background.count == 0  # nothing learned from the zeros


def test_talkers_in_the_background_do_not_hold_the_turn() -> None:
    # After the speaker stops, other voices 15 dB quieter keep fooling the model every other window:
    # they are the room, not the speaker, so the pause comes on time.
    rng = np.random.default_rng(3)
    lead, talk, after = 40, 40, 40
    probs = [0.0] * lead + [0.95] * talk + [0.9 if i % 2 else 0.2 for i in range(after)]
    flat = -40.0 + 2.5 * rng.standard_normal((lead + talk + after) * 4)
    flat[lead * 4:(lead + talk) * 4] = -20.0 + 3 * rng.standard_normal(talk * 4)
    end = (lead + talk) * W
    paused = first_pause(probs, flat.reshape(-1, 4))
    assert end + 9600 <= paused.at <= end + 9600 + 3 * W
    plain = [e for e in run(probs, None)[1] if isinstance(e, PauseDetected)]
    assert plain == []  # the model alone never lets the turn end


def test_backdated_push_is_chunking_invariant() -> None:
    rng = np.random.default_rng(7)
    probs = np.repeat(rng.random(80) > 0.5, 6).astype(np.float32) * 0.9
    levels = np.where(np.repeat(probs, 4).reshape(-1, 4) > 0, -20.0, -60.0) + rng.standard_normal((probs.size, 4))
    _, whole = run(list(probs), levels)
    det = PauseDetector(DetectorOptions(), 16000, W)
    pieces = []
    for chunk in np.array_split(np.arange(probs.size), 41):
        pieces += det.push(probs[chunk], levels[chunk])
    assert pieces == whole and sum(isinstance(e, PauseDetected) for e in whole) >= 2


# ---- in noise (issue 11, item 2) ------------------------------------------------------------------------


def noisy_room(n: int, room_db: float, seed: int = 5) -> np.ndarray:
    """Sub-window levels of a steady noise (white-like: 0.5 dB of spread per 8 ms) for n windows."""
    return room_db + 0.5 * np.random.default_rng(seed).standard_normal(n * 4)


def test_quiet_last_syllable_after_a_stop_continues_the_turn() -> None:
    # A noise 24 dB under the speaker. The turn's last syllable comes after a stop's closure (one window
    # at room level) 14 dB under the speaker's level: below the midpoint the speaker's windows must
    # reach, but 10 dB out of the room, and the model is sure throughout. It is the turn's end.
    lead, talk, quiet = 32, 20, 4
    probs = [0.0] * lead + [0.99] * (talk + 1 + quiet + 2) + [0.05] * 30
    flat = noisy_room(len(probs), -42.0)
    flat[lead * 4:(lead + talk) * 4] = -18.0
    syllable = lead + talk + 1
    flat[syllable * 4:(syllable + quiet) * 4] = -32.0
    flat[(lead + talk) * 4:syllable * 4] = -42.0  # (the closure: no sub-window of it over the room's bar)
    det, events = run(probs, flat.reshape(-1, 4))
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    end = (syllable + quiet) * W
    assert end <= paused.speech_end <= end + 2 * SUB
    assert paused.at >= end + 9600
    assert det.speaker_db is not None and det.speaker_db > -20.0  # the quiet syllable is not the speaker's level


def test_quiet_sound_after_a_real_gap_is_not_the_turns_tail() -> None:
    # The same quiet sound 130 ms after the speaker stopped (longer than a stop's closure): not this turn's.
    lead, talk, gap, quiet = 32, 20, 4, 4
    probs = [0.0] * lead + [0.99] * (talk + gap + quiet) + [0.05] * 30
    flat = noisy_room(len(probs), -42.0)
    flat[lead * 4:(lead + talk) * 4] = -18.0
    flat[(lead + talk + gap) * 4:(lead + talk + gap + quiet) * 4] = -32.0
    paused = first_pause(probs, flat.reshape(-1, 4))
    assert paused.speech_end <= (lead + talk + gap) * W  # (the model's floor: its last window less lookback)
    assert paused.speech_end >= (lead + talk) * W


def test_a_lone_burst_after_a_gap_does_not_resume_the_turn() -> None:
    # Babble: 320 ms after the speaker stopped, one window of another voice just over the voice gate,
    # which the model calls speech. It neither cancels the tentative pause nor moves the end.
    rng = np.random.default_rng(3)
    lead, talk, gap = 40, 30, 10
    probs = [0.0] * lead + [0.95] * talk + [0.1] * gap + [0.9] + [0.1] * 30
    flat = -40.0 + 1.0 * rng.standard_normal(len(probs) * 4)
    flat[lead * 4:(lead + talk) * 4] = -20.0
    burst = lead + talk + gap
    flat[burst * 4:(burst + 1) * 4] = -29.0  # the gate is about -30 (midway between room and speaker)
    _, events = run(probs, flat.reshape(-1, 4))
    assert not any(isinstance(e, PauseCancelled) for e in events)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert (lead + talk) * W <= paused.speech_end <= (lead + talk) * W + 2 * SUB
    # two such windows in a row are the speaker resuming: the pause is cancelled, the end moves past them
    probs[burst + 1] = 0.9
    flat[(burst + 1) * 4:(burst + 2) * 4] = -29.0
    _, events = run(probs, flat.reshape(-1, 4))
    assert any(isinstance(e, PauseCancelled) for e in events)
    (paused,) = [e for e in events if isinstance(e, PauseDetected)]
    assert paused.speech_end >= (burst + 2) * W
    # and one window well over the gate resumes at once
    probs[burst + 1], flat[(burst + 1) * 4:(burst + 2) * 4] = 0.1, -40.0
    flat[burst * 4:(burst + 1) * 4] = -20.0
    _, events = run(probs, flat.reshape(-1, 4))
    assert any(isinstance(e, PauseCancelled) for e in events)


def test_in_a_loud_room_the_end_stays_nearer_the_models_last_window() -> None:
    # As test_end_never_before_the_models_last_speech_window_minus_lookback, with the room 10 dB under the
    # speaker instead of 42: a word's tail can hide under such a room, so the model's trailing windows are
    # trusted more (the end is put at most 65 % of lookback_ms before the last of them, not all of it).
    lead = 32
    probs = [0.0] * lead + [0.9] * 26 + [0.05] * 40
    for room, back in ((ROOM_DB, 100), (-30.0, 65)):
        flat = np.full(len(probs) * 4, room)
        flat[lead * 4:(lead + 20) * 4] = -20.0
        paused = first_pause(probs, flat.reshape(-1, 4))
        assert paused.speech_end == (lead + 26) * W - back * 16


def test_in_babble_the_models_trailing_windows_count_only_while_the_level_stands_out() -> None:
    # Babble: a room whose level varies by 3 dB (sub-window spread), 20 dB under the speaker. After the
    # speaker stops the model goes on scoring the babble as speech for 192 ms (6 windows) at room level.
    # Its trailing windows count only 64 ms past the speaker's last (none of them stands out of the room),
    # so the end is the speaker's, not the model's last window less lookback_ms; the old rule put the
    # decision 100 ms later. In a steady room the same probabilities keep the model's floor (a tail may
    # be under that noise).
    rng = np.random.default_rng(11)
    lead, talk, trail = 40, 30, 6
    probs = [0.0] * lead + [0.95] * talk + [0.9] * trail + [0.05] * 40
    end = (lead + talk) * W
    found = {}
    for spread in (3.0, 0.5):
        flat = -40.0 + spread * rng.standard_normal(len(probs) * 4)
        flat[lead * 4:(lead + talk) * 4] = -20.0
        flat[(lead + talk) * 4:] = np.minimum(flat[(lead + talk) * 4:], -40.0)  # (never over the room's mean)
        paused = first_pause(probs, flat.reshape(-1, 4))
        assert paused.at >= end + 9600
        found[spread] = paused.speech_end
    assert end <= found[3.0] <= end + 2 * SUB
    assert found[0.5] >= end + trail * W - 100 * 16  # (the model's last window less at most lookback_ms)


def test_a_stops_closure_inside_the_tail_does_not_end_it() -> None:
    # In a steady noise 24 dB under the speaker, the word ends on a quiet coda (2 dB over the room: under
    # the voice gate, over the room's bar) after 32 ms of closure at the room's level, and the model stops
    # with the coda. The change point bridges the closure (under 40 ms): the end is the coda's, not the
    # closure's start (the old rule, a lull of 24 ms, put it there, 94 ms early).
    lead, talk, coda = 32, 20, 3
    probs = [0.0] * lead + [0.99] * talk + [0.7] * (1 + coda) + [0.05] * 30
    flat = noisy_room(len(probs), -42.0)
    flat[lead * 4:(lead + talk) * 4] = -18.0
    flat[(lead + talk) * 4:(lead + talk + 1) * 4] = -42.5  # the closure: under the room's bar
    flat[(lead + talk + 1) * 4:(lead + talk + 1 + coda) * 4] = -40.0
    paused = first_pause(probs, flat.reshape(-1, 4))
    end = (lead + talk + 1 + coda) * W
    assert end <= paused.speech_end <= end + 2 * SUB


def test_in_babble_a_short_turn_keeps_the_models_trailing_windows_that_stand_out() -> None:
    # A turn no longer than min_speech (its speaker windows all in the onset), then six windows the model
    # calls speech that stand 3 dB out of a babble room: they count as for a longer turn.
    rng = np.random.default_rng(12)
    offsets = []
    for talk in (8, 12):
        lead, trail = 40, 6
        probs = [0.0] * lead + [0.95] * talk + [0.9] * trail + [0.05] * 40
        flat = -40.0 + 3.0 * rng.standard_normal(len(probs) * 4)
        flat[lead * 4:(lead + talk) * 4] = -20.0
        flat[(lead + talk) * 4:(lead + talk + trail) * 4] = -37.0
        paused = first_pause(probs, flat.reshape(-1, 4))
        offsets.append(paused.speech_end - (lead + talk) * W)
    assert offsets[0] >= 64 * 16 and abs(offsets[0] - offsets[1]) <= SUB, offsets


# ---- deciding inside a window, and before the model has scored the audio ---------------------------


def _settled_turn() -> tuple[list[float], np.ndarray, int]:
    lead, talk = 32, 40
    end = (lead + talk) * W - 3 * SUB
    probs = [0.0] * lead + [0.9] * (talk + 2) + [0.05] * 40
    return probs, speech_levels(len(probs), end, room_from=lead), end


def test_the_pause_is_decided_at_the_sub_window_it_falls_due() -> None:
    probs, levels, end = _settled_turn()
    ours = first_pause(probs, levels)
    due = ours.speech_end + 9600 + SUB  # pause_ms and a sub-window's margin
    assert ours.at == -(-due // SUB) * SUB  # the sub-window, not the end of its window
    assert ours.at % W != 0 or due % W == 0
    assert ours.at >= end + 9600  # still never before the truth


def test_peek_decides_on_levels_the_model_has_not_scored() -> None:
    probs, levels, _ = _settled_turn()
    det = PauseDetector(DetectorOptions(), 16000, W)
    whole = first_pause(probs, levels)
    cut = whole.at // W  # stop pushing before the window in which it falls due
    assert not [e for e in det.push(np.array(probs[:cut], dtype=np.float32), levels[:cut])
                if isinstance(e, PauseDetected)]
    due = det.due()
    assert due is not None and due > det.position
    ahead = levels[cut:cut + 3].reshape(-1)
    assert det.peek(ahead[:(due - det.position) // SUB - 1]) is None  # not yet due: nothing changes
    assert det.due() == due
    early = det.peek(ahead)
    assert early is not None and early.at == whole.at and early.speech_end == whole.speech_end
    assert det.due() is None  # the turn has ended; the windows pushed later start afresh
    assert not [e for e in det.push(np.array(probs[cut:], dtype=np.float32), levels[cut:])
                if isinstance(e, PauseDetected)]


def test_peek_is_held_off_by_the_speakers_voice() -> None:
    probs, levels, _ = _settled_turn()
    det = PauseDetector(DetectorOptions(), 16000, W)
    whole = first_pause(probs, levels)
    cut = whole.at // W
    det.push(np.array(probs[:cut], dtype=np.float32), levels[:cut])
    ahead = levels[cut:cut + 3].reshape(-1).copy()
    ahead[1] = -20.0  # the speaker again, before it falls due
    assert det.peek(ahead) is None and det.due() is not None
    assert det.peek(np.full(12, -120.0)) is not None  # digital silence holds nothing off
