"""The pause (turn) detector: a plain state machine over per-window speech probabilities.

It knows nothing of models or sockets, so it is tested by feeding it numbers.
Positions are sample indices at the detector's rate, counted from the stream's
first sample, so every event is exact to the window that caused it.

States::

    IDLE --p>=threshold--> ONSET --speech lasted min_speech--> TALKING --silence lasted pause--> IDLE
                             |  p<neg_threshold                   ^ speech again (pause_cancelled)
                             v                                    |
                            IDLE                         TALKING+silence (pause_tentative)

With probabilities alone, silence is measured from the end of the last window at
or above ``threshold``. Silero's probability trails the end of speech by 60-120
ms (more in noise) and sometimes falls while a quiet tail of the word still
sounds. So when the caller passes per-sub-window levels (8 ms at either rate),
the pause is counted from where the signal says the speech ended (back-dating,
``backdate=True``, the default):

* The room is learned (``_Background``: mean and spread of the sub-window level
  and power) from windows the model calls silence, 128 ms after and 192 ms
  before any it calls speech; digital silence is skipped; and, once the room
  and the speaker are known, from windows quieter than both the room's bar and
  the speaker's level (background talkers the model takes for speech).
* A window is the speaker's when the model says speech (p >= threshold) and its
  loudest sub-window stands out: above the room by three of its spreads, and
  above the midpoint between the room and the speaker's loud level (the 90th
  percentile of the speaker's sub-windows). Only the speaker's windows start,
  continue or resume a turn; any other window is silence, even if the model
  still says speech (its trailing probability, or babble that fools it).
  Two exceptions, both for noise. A word's quiet last syllable (under the
  midpoint, over the room's three spreads, the model sure without a break)
  continues the turn if it follows within a stop's closure (64 ms) and within
  250 ms of the speaker's last loud window. And after 160 ms without the
  speaker, a window less than 3 dB over the gate resumes the turn only if the
  window before it did too: a babble burst is that short, a speaker resuming
  is not.
* The end of speech is a change point on the sub-window powers from
  ``lookback_ms`` before the speaker's last window to ``tail_ms`` after it: the
  argmax of their cumulative excess over a bar (the room as heard after the
  speech, its 90th percentile; before that is known, the learned room's mean plus
  its spread), a tail past the last window ending at five sub-windows under the
  bar, plus one sub-window (the speech may go on under the bar for part of it),
  or two when that last sub-window stood less than 6 dB over the bar (a tail
  fading into the room goes on under it longer).
  (So the tail may hold a lull of up to 32 ms: the closure of a stop before a
  quiet coda, whose window the speaker's gate does not reach.)
* It is never taken earlier than ``lookback_ms`` before the model's last speech
  window, as long as that window follows the speaker's without a break and
  within ``tail_ms``: the model may hear a tail the level cannot see under
  noise, but it cannot hold a pause off for ever (babble). The louder the room
  against the speaker, the more of a tail can hide under it, so the more the
  model is trusted: from 26 dB between the speaker's loud level and the room
  down to 16 dB, that distance shrinks to 65 % of ``lookback_ms``. In a room of
  talkers (its sub-window level spreads 2 dB or more: babble), which the model
  takes for speech for up to 200 ms after the speaker stops, its windows count
  only up to 64 ms past the last one whose power stood out of the room (by half
  a window's spread over the room's mean).

So a quiet gap inside a turn that the model holds at speech counts as silence
from at most ``tail_ms - lookback_ms`` after the speaker's last window; a gap
shorter than ``pause_ms`` minus that is never a pause. A word's tail under the
noise cannot be seen by the level, and the model does not always hear it
either: at low SNR the end may be found early by that tail (issue 11 has the
figures: ``benchmarks/pause_latency.py``).
``backdate=False`` (or no levels) keeps the older rule: silence from the last
window at or above threshold, pushed later by a sub-window ``tail_margin_db``
over a tracked noise floor within ``tail_ms``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectorOptions:
    """The knobs of PROTOCOL.md's pause detector, with its defaults."""

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_ms: float = 250.0
    pause_ms: float = 600.0
    prefix_padding_ms: float = 300.0
    max_speech_s: float | None = None
    can_interrupt: bool = True
    tentative_ms: float | None = None
    tail_ms: float = 200.0  # how long after the speaker's last window the speech may still be going on
    onset_gap_ms: float = 100.0  # silence within an onset (before min_speech) that cancels it
    tail_margin_db: float = 12.0  # (backdate=False only) a tail is this much above the noise floor
    backdate: bool = True  # with levels: count the pause from where the signal says the speech ended
    lookback_ms: float = 100.0  # the earliest end of speech, before the speaker's last window

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must be in [0, threshold], got {self.neg_threshold}")
        for name in ("min_speech_ms", "pause_ms", "prefix_padding_ms", "tail_ms", "lookback_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_speech_s is not None and self.max_speech_s <= 0:
            raise ValueError("max_speech_s must be > 0")

    @property
    def negative(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)

    @property
    def tentative(self) -> float:
        """Silence (ms) after which ``pause_tentative`` is said: a third of the pause, at most 200 ms."""
        return self.tentative_ms if self.tentative_ms is not None else min(200.0, self.pause_ms / 3)


@dataclass(frozen=True)
class StartedTalking:
    onset: int  # first sample of the speech
    at: int  # sample position when the event was decided


@dataclass(frozen=True)
class PauseTentative:
    speech_end: int
    at: int


@dataclass(frozen=True)
class PauseCancelled:
    at: int


@dataclass(frozen=True)
class PauseDetected:
    onset: int
    speech_end: int  # where the speech ended: the signal's end (back-dated), else the last speech window's
    start: int  # utterance start: onset minus prefix padding (>= 0)
    end: int  # utterance end: the end of the pause (== at)
    at: int
    reason: str = "pause"  # "pause", "max_speech", or "forced"


NOISE_FLOOR_MIN_DB = -72.0  # the background is never taken as quieter than this (μ-law's smallest step)
DIGITAL_SILENCE_DB = -100.0  # a sub-window below this holds (near-)exact zeros: no signal, no background
_MIN_POWER = 10.0 ** (NOISE_FLOOR_MIN_DB / 10)
# The room (_Background) is learned only this far from any window the model calls (nearly) speech, and from
# digital silence: after it (a word's tail can outlast the model's probability) and before it (the model's
# onset lags the signal, most after digital silence, where its state has heard nothing).
_GUARD_AFTER_MS = 128.0
_GUARD_BEFORE_MS = 192.0
_BACKGROUND_SUBWINDOWS = 128  # the room's memory: about 1 s of 8 ms sub-windows
_SETTLED_SUBWINDOWS = 32  # until it has learned this many, every sub-window counts in full; then ...
_CLIP_SIGMAS = 3.0  # ... one moves the estimate by at most this many spreads (a missed word cannot drag it)
_PRIOR_SUBWINDOWS = 16  # the spread starts as that of a room varying by _PRIOR_SPREAD_DB, worth this many
_PRIOR_SPREAD_DB = 3.0
_VOICE_SIGMAS = 3.0  # the speaker's window: its loudest sub-window this many spreads over the room's level
_VOICE_MIN_DB = 3.0  # ... and at least this many dB
_MIDPOINT = 0.5  # ... and this far from the room's level up to the speaker's
_SPEAKER_QUANTILE = 0.9  # the speaker's loud level: this quantile of their sub-windows ...
_SPEAKER_STEP_DB = 1.0  # ... followed by steps of this size
_SPEAKER_RANGE_DB = 8.0  # before the room is known, the speaker's windows are within this of that level
_EXCESS_SIGMAS = 1.0  # before the room after the speech is heard, the bar is the room's mean plus its spread
_EXCESS_MIN = 0.12  # ... or at least this fraction of the mean (0.5 dB), however steady the room
_LOCAL_MS = 192.0  # the room as heard after the speech's latest end, once this long, sets the bar ...
_LOCAL_QUANTILE = 0.9  # ... at this quantile of its power: passed as rarely in a steady noise as in babble
_TAIL_BREAK = 5  # sub-windows under the bar in a row that end a tail (a stop's closure before a coda is shorter)
_SNR_A = 16.0  # the speaker's loud level this far over the room or less: the model's end is trusted most ...
_SNR_B = 26.0  # ... this far or more: as in a quiet room (linear between)
_LB_MIN = 0.65  # most trusted: the end at most this fraction of lookback_ms before the model's last window
_QUIET_MS = 250.0  # a quiet syllable continues the turn up to this long after the speaker's last loud window ...
_QUIET_GAP_MS = 64.0  # ... if no longer than this after the turn's last window (a stop's closure, not a pause)
_RESUME_GAP_MS = 160.0  # after this long without the speaker, a window within ...
_RESUME_MARGIN_DB = 3.0  # ... this of the gate resumes the turn only if the window before it was one too
_BUSY_ROOM_DB = 2.0  # a room whose sub-window level varies this much (its spread, dB) is talkers: babble ...
_EVIDENT_SIGMAS = 0.5  # ... where the model's speech windows count only while their power stands this many
_EVIDENT_MS = 64.0  # window spreads over the room's, or within this of one that did
_DUE_MARGIN_MS = 8.0  # a pause decided inside a window waits a sub-window past pause_ms (see ``due``)
_FADE_RATIO = 10.0 ** (6.0 / 10)  # an end whose last sub-window is less than 6 dB over the bar: one more after it

def levels_db(windows: np.ndarray, parts: int = 4) -> np.ndarray:
    """RMS level in dBFS of ``parts`` equal sub-windows of each window: [n, window] -> [n, parts].
    Windows are float in -1..1, or int16 (scaled here)."""
    if windows.dtype == np.int16:
        windows = windows.astype(np.float32) * np.float32(1 / 32768)
    n, size = windows.shape
    sub = windows.reshape(n, parts, size // parts)
    power = np.einsum("ijk,ijk->ij", sub, sub) / (size // parts)
    return 10.0 * np.log10(power + 1e-12)


DetectorEvent = StartedTalking | PauseTentative | PauseCancelled | PauseDetected


class State(enum.Enum):
    IDLE = "idle"
    ONSET = "onset"
    TALKING = "talking"


class _Background:
    """What the room sounds like without the speaker: running mean and spread of the sub-window power
    (for the end-of-speech change point) and of the level in dB (for telling the speaker from the
    background). Exponential with about 1 s of memory, a plain running mean until then."""

    __slots__ = ("_bar", "_gate", "count", "level", "level_var", "power", "power_var")

    def __init__(self, initial_db: float = -60.0) -> None:
        self.count = 0
        self.level = initial_db
        self.level_var = 1.0
        self.power = 10.0 ** (initial_db / 10)
        self.power_var = (0.3 * self.power) ** 2
        self._gate: float | None = None
        self._bar: float | None = None

    def learn(self, row: list[float]) -> None:
        self._gate = self._bar = None
        level, level_var, power, power_var, count = self.level, self.level_var, self.power, self.power_var, self.count
        for x in row:
            if x < DIGITAL_SILENCE_DB:
                continue  # a muted line says nothing about the room
            x = max(x, NOISE_FLOOR_MIN_DB)
            count += 1
            if count == 1:  # the first sub-window replaces the guess outright (and has no spread)
                level, level_var, power, power_var = x, 0.0, 10.0 ** (x / 10), 0.0
                continue
            a = 1.0 / count if count < _BACKGROUND_SUBWINDOWS else 1.0 / _BACKGROUND_SUBWINDOWS
            d = x - level
            if count > _SETTLED_SUBWINDOWS:  # Huber-clipped: a lasting change widens the spread until followed
                clip = max(_CLIP_SIGMAS * level_var ** 0.5, _VOICE_MIN_DB)
                d = min(max(d, -clip), clip)
            dp = 10.0 ** ((level + d) / 10) - power  # (the clipped level, as power)
            level += a * d
            level_var += a * (d * d - level_var)
            power += a * dp
            power_var += a * (dp * dp - power_var)
        self.level, self.level_var, self.power, self.power_var, self.count = level, level_var, power, power_var, count

    def voice_gate(self) -> float:
        """The dB level the speaker's loudest sub-window must reach in a window to be told from the room.
        The spread starts from a prior (a room that varies by 3 dB) that a few sub-windows cannot undo."""
        if self._gate is None:
            n = self.count
            var = (n * self.level_var + _PRIOR_SUBWINDOWS * _PRIOR_SPREAD_DB ** 2) / (n + _PRIOR_SUBWINDOWS)
            self._gate = self.level + max(_VOICE_SIGMAS * var ** 0.5, _VOICE_MIN_DB)
        return self._gate

    def bar(self) -> float:
        """The power a sub-window must beat to look like speech: the mean, plus its spread (at least 0.5 dB)."""
        if self._bar is None:
            mean = max(self.power, _MIN_POWER)
            self._bar = mean + max(_EXCESS_SIGMAS * self.power_var ** 0.5, _EXCESS_MIN * mean)
        return self._bar


class PauseDetector:
    """Turns per-window speech probabilities into turn events with sample-exact positions."""

    def __init__(self, options: DetectorOptions, sample_rate: int, window: int) -> None:
        self.options = options
        self.rate = sample_rate
        self.window = window
        ms = sample_rate / 1000.0
        self._min_speech = int(round(options.min_speech_ms * ms))
        self._pause = int(round(options.pause_ms * ms))
        self._tentative = int(round(options.tentative * ms))
        self._prefix = int(round(options.prefix_padding_ms * ms))
        self._max_speech = None if options.max_speech_s is None else int(options.max_speech_s * sample_rate)
        self._tail = int(round(options.tail_ms * ms))
        self._lookback = int(round(options.lookback_ms * ms))
        self._onset_gap = int(round(options.onset_gap_ms * ms))
        self._quiet = int(round(_QUIET_MS * ms))
        self._quiet_gap = int(round(_QUIET_GAP_MS * ms))
        self._resume_gap = int(round(_RESUME_GAP_MS * ms))
        self._evident_gap = int(round(_EVIDENT_MS * ms))
        self._due_margin = int(round(_DUE_MARGIN_MS * ms))
        self.position = 0  # samples consumed so far
        self.noise_floor_db = -60.0  # (backdate=False) the floor the level tail is measured against
        self.background = _Background()
        self.speaker_db: float | None = None  # the speaker's loud level (see _track_speaker)
        self._guard_after = max(1, int(np.ceil(_GUARD_AFTER_MS * ms / window)))
        self._guard_before = max(1, int(np.ceil(_GUARD_BEFORE_MS * ms / window)))
        self._quiet_run = 0  # consecutive windows the model calls silence
        self._pending: deque[list[float]] = deque()  # their levels, learned once far enough from speech
        # the last sub-windows' (end position, power), enough to search for the end of speech
        self._history: deque[tuple[int, float]] = deque()
        self._local: list[float] = []  # powers after the latest end the speech can have (see _local_bar)
        self._sub = window // 4  # (the sub-window, set again from the levels' shape)
        self._min_local = max(1, int(round(_LOCAL_MS * ms)) // self._sub)
        self.reset()

    def reset(self) -> None:
        """Forget any speech in progress (the position keeps counting)."""
        self.state = State.IDLE
        self.onset = 0
        self.speech_end = 0
        self._vad_speech_end = 0
        self._model_end = 0  # end of the model's last speech window in the run from the speaker's last
        self._evident_end = 0  # ... and of the last in that run whose power stood out of the room
        self._run_open = False
        self.in_silence = False
        self._tentative_sent = False
        self._end_final = False  # the back-dated end has seen all the signal it depends on
        self._settled = False  # ... and the model can no longer move it (see ``due``)
        self._local.clear()
        self._loud_end = 0  # end of the speaker's last window over the voice gate
        self._weak_end = -1  # end of the last window that, after a gap, was only just over it

    def push(self, probs: np.ndarray, levels: np.ndarray | None = None) -> list[DetectorEvent]:
        """Consume one probability per window, in order; return the events they caused.

        ``levels`` (optional, [n_windows, k] in dBFS) are the RMS levels of k equal
        sub-windows of each window; see the module docstring for what they refine.
        """
        probs = np.asarray(probs, dtype=np.float32)
        if levels is not None and self.options.backdate:
            return self._push_backdated(probs, np.asarray(levels))
        return self._push_plain(probs, levels)

    # ---- probabilities only (or backdate=False: the level tail of old) ----------------------

    def _push_plain(self, probs: np.ndarray, levels: np.ndarray | None) -> list[DetectorEvent]:
        events: list[DetectorEvent] = []
        opts = self.options
        thr, neg = opts.threshold, opts.negative
        level_rows = None if levels is None else np.asarray(levels).tolist()  # plain floats (exact from float32):
        # a handful of sub-window levels per window is cheaper in Python than in per-window numpy calls
        for k, p in enumerate(probs.tolist()):
            start = self.position
            end = start + self.window
            self.position = end
            if self.state is State.IDLE:
                if p >= thr:
                    self._begin_onset(start, end, events)
            elif self.state is State.ONSET:
                self._continue_onset(p >= thr, p < neg, end, events)
            else:
                if p >= thr:
                    self.speech_end = end
                    self._vad_speech_end = end
                    self._resume(end, events)
                else:
                    if p < neg:
                        self.in_silence = True
                    if level_rows is not None:
                        self._extend_tail(start, level_rows[k])
                if self.in_silence:
                    self._check_silence(end, end - self.speech_end, events)
                self._check_max_speech(end, events)
            if level_rows is not None and p < neg:
                # Follow the noise floor on windows the model calls silence: instant fall, 1 dB/window rise,
                # never below NOISE_FLOOR_MIN_DB, so digital silence (a muted leg) does not leave a floor so
                # low that ordinary room tone afterwards would pass for the tail of a word.
                self.noise_floor_db = max(min(self.noise_floor_db + 1.0, *level_rows[k]), NOISE_FLOOR_MIN_DB)
        return events

    def _extend_tail(self, start: int, levels: list[float]) -> None:
        gate = self.noise_floor_db + self.options.tail_margin_db
        last = next((i for i in range(len(levels) - 1, -1, -1) if levels[i] > gate), -1)
        if last >= 0:
            sub = self.window // len(levels)
            tail_end = min(start + (last + 1) * sub, self._vad_speech_end + self._tail)
            self.speech_end = max(self.speech_end, tail_end)

    # ---- back-dated: the signal says where the speech ended ------------------------------------

    def _push_backdated(self, probs: np.ndarray, levels: np.ndarray) -> list[DetectorEvent]:
        events: list[DetectorEvent] = []
        opts = self.options
        thr, neg = opts.threshold, opts.negative
        background = self.background
        history = self._history
        rows = levels.tolist()
        parts = len(rows[0]) if rows else 4
        sub = self._sub = self.window // parts
        for p, row in zip(probs.tolist(), rows, strict=True):
            if self._settled:
                early = self.peek(row)
                if early is not None:
                    events.append(early)
            start = self.position
            end = start + self.window
            self.position = end
            local_from = self._vad_speech_end + self._tail if self.state is State.TALKING else end
            window_power = 0.0
            for i, x in enumerate(row):
                power = 10.0 ** (x / 10) if x >= DIGITAL_SILENCE_DB else 0.0
                window_power += power
                pos = start + (i + 1) * sub
                history.append((pos, power))
                if pos > local_from:
                    self._local.append(power)
            keep = (end if self.state is State.IDLE else self._vad_speech_end) - self._lookback
            while history and history[0][0] <= keep:
                history.popleft()
            loudest = max(row)
            gate = self._voice_gate()
            speaker = p >= thr and loudest >= gate
            if speaker and self.state is State.TALKING and start - self._vad_speech_end >= self._resume_gap:
                if loudest < gate + _RESUME_MARGIN_DB:  # a babble burst just over the gate is one window long
                    speaker = self._weak_end == start
                    self._weak_end = end
            if speaker:
                self._track_speaker(row)
                self._loud_end = end
            elif (self.state is State.TALKING and self._run_open and p >= thr and background.count
                  and loudest >= background.voice_gate() and end - self._loud_end <= self._quiet
                  and start - self._vad_speech_end <= self._quiet_gap):
                speaker = True  # a word's quiet last syllable: out of the room, the model sure, the turn unbroken
            if self.state is State.IDLE:
                if speaker:
                    self._begin_onset(start, end, events)
            elif self.state is State.ONSET:
                self._continue_onset(speaker, p < neg, end, events)
            else:
                if speaker:
                    self._vad_speech_end = self._model_end = self.speech_end = self._evident_end = end
                    self._run_open = True
                    self._end_final = self._settled = False
                    self._local.clear()
                    self._resume(end, events)
                else:
                    self.in_silence = True  # (the model may still say speech: the signal is the room's)
                    if self._run_open:  # the model's probability, unbroken since the speaker's last window
                        if p < neg:
                            self._run_open = False
                        elif p >= thr and end <= self._vad_speech_end + self._tail:
                            self._model_end = end
                            self._end_final = False
                            if start - self._evident_end <= self._evident_gap and self._stands_out(window_power, parts):
                                self._evident_end = end
                # (the end is searched for only once the earliest it can be is far enough back to matter)
                need = self._pause if self._tentative_sent else min(self._tentative, self._pause)
                if self.in_silence and end - self._model_floor() >= need:
                    if len(self._local) >= self._min_local:
                        self.speech_end = self._backdated_end(end, self._local_bar())
                        self._settled = end >= self._vad_speech_end + self._tail
                    elif not self._end_final:
                        self.speech_end = self._backdated_end(end, background.bar())
                        self._end_final = end >= self._vad_speech_end + self._tail
                    self._check_silence(end, end - self.speech_end, events)
                self._check_max_speech(end, events)
            # What may be learned as the room: what the model calls silence; before anyone has spoken, what it
            # does not call speech; once the room is known, also what stays below both the room's bar and the
            # speaker's level (talkers in the background that the model takes for speech); before the room
            # is known, that only between turns (inside one, speech that soft is still the speaker's).
            if self.speaker_db is None:
                quiet = p < thr or self.state is State.IDLE
            elif p < neg:
                quiet = True
            elif background.count:
                quiet = loudest < min(background.voice_gate(), self.speaker_db - _SPEAKER_RANGE_DB)
            else:
                quiet = self.state is State.IDLE and loudest < self.speaker_db - _SPEAKER_RANGE_DB
            self._learn_background(quiet, row)
        return events

    def due(self) -> int | None:
        """Where the pause falls due unless the speaker's voice comes first, once the end of speech can
        no longer move (past ``tail_ms`` after the speaker's last window and with the room heard after
        it); else None. From there only a sub-window at the speaker's gate can hold it off, which the
        levels alone tell: so it can be decided inside a window, at 8 ms, and before the model has
        scored the audio (``peek``). ``_DUE_MARGIN_MS`` more than pause_ms: the end is known to about a
        sub-window, and at a window's end the wait past pause_ms averaged half a window."""
        if self._settled and self.state is State.TALKING and self.in_silence:
            return self.speech_end + self._pause + self._due_margin
        return None

    def peek(self, levels: Sequence[float] | np.ndarray) -> PauseDetected | None:
        """The pause, if it falls due within the sub-windows after ``position`` whose levels (dBFS, in
        order, at the sub-window size of ``push``'s levels) are given, none of them at the speaker's gate:
        audio the model has not scored yet. Nothing changes unless it fires (then the turn has ended, at
        the sub-window where it fell due); ``push`` still takes the same windows later."""
        due = self.due()
        if due is None:
            return None
        need = -(-(due - self.position) // self._sub)
        if need <= 0 or len(levels) < need:
            return None
        gate = self._voice_gate()
        if any(x >= gate for x in list(levels[:need])):
            return None
        return self._finish(self.position + need * self._sub, "pause")

    @property
    def sub_window(self) -> int:
        """Samples per sub-window of the levels ``peek`` takes (that of the levels pushed last)."""
        return self._sub

    def _local_bar(self) -> float:
        """The excess bar from the signal after the speech's latest possible end (the room as it sounds
        now, not as it was learned before the turn): a high quantile of its power, which a steady noise
        passes as rarely as a bursty one (babble), and which the start of a next phrase the model has
        not yet scored barely moves."""
        local = sorted(self._local)
        return max(local[int(_LOCAL_QUANTILE * len(local))], _MIN_POWER)

    def _track_speaker(self, row: list[float]) -> None:
        """Follow the speaker's loud level: the 90th percentile of the sub-windows the model calls speech
        (a stochastic quantile step: up 0.9 dB when above, down 0.1 dB when below)."""
        level = self.speaker_db
        for x in row:
            if x < DIGITAL_SILENCE_DB:
                continue
            if level is None:
                level = x
            elif x > level:
                level += _SPEAKER_STEP_DB * _SPEAKER_QUANTILE
            else:
                level -= _SPEAKER_STEP_DB * (1.0 - _SPEAKER_QUANTILE)
        self.speaker_db = level

    def _voice_gate(self) -> float:
        """The level a window's loudest sub-window must reach to be the speaker's: out of the room (three of
        its spreads) and past the midpoint between the room and the speaker's loud level, so that voices
        in the background, however speech-like, are not taken for the speaker's; before the room is
        known, within ``_SPEAKER_RANGE_DB`` of the speaker's level."""
        background, speaker = self.background, self.speaker_db
        if not background.count:
            return -np.inf if speaker is None else speaker - _SPEAKER_RANGE_DB
        gate = background.voice_gate()
        if speaker is None:
            return gate
        return max(gate, speaker - max(_MIDPOINT * (speaker - background.level), _SPEAKER_RANGE_DB))

    def _learn_background(self, quiet: bool, row: list[float]) -> None:
        """Learn a window's levels once it is far enough from speech and digital silence, on both sides."""
        if not quiet or max(row) < DIGITAL_SILENCE_DB:
            self._quiet_run = 0
            self._pending.clear()
            return
        self._quiet_run += 1
        self._pending.append(row)
        if len(self._pending) > self._guard_before:
            oldest = self._pending.popleft()
            if self._quiet_run - self._guard_before > self._guard_after:
                self.background.learn(oldest)

    def _backdated_end(self, now: int, bar: float) -> int:
        """Where the speech ended: after the last sub-window past which the power never again beats
        ``bar`` on balance (the argmax of the cumulative excess), searched from ``lookback_ms`` before the
        speaker's last window to ``tail_ms`` after it; plus one sub-window, since the speech may go on
        below the bar for part of the next one; two when the last stood less than 6 dB over the bar, since a
        tail fading into the room goes on under it for longer (at 20 dB SNR a word's decay was found 2-16 ms
        before its labelled end, and the rule moves no decision in a quiet room)."""
        first = self._vad_speech_end - self._lookback
        last = min(now, self._vad_speech_end + self._tail)
        after = self._vad_speech_end
        best_end, total, best, below, best_power = first, 0.0, 0.0, 0, 0.0
        for pos, power in self._history:
            if pos <= first:
                continue
            if pos > last:
                break
            total += power - bar
            if total > best:
                best, best_end, best_power = total, pos, power
            if pos > after:  # past the speaker's last window the tail must be unbroken: a lull ends it
                below = below + 1 if power < bar else 0
                if below >= _TAIL_BREAK:
                    break
        if best > 0.0:
            best_end += self._sub
            if best_power < bar * _FADE_RATIO:  # (its last sub-window barely over the bar: fading into the room)
                best_end += self._sub
        return max(best_end, self._model_floor())

    def _model_floor(self) -> int:
        """The earliest the end may be put by the model's trailing probability: ``_trust_lookback`` before its
        last speech window. In a room of talkers (babble) the model hears the room as speech for up to 200
        ms after the speaker stops, so there it counts only as far as ``_EVIDENT_MS`` past the last of those
        windows whose power stood out of the room."""
        b = self.background
        last = self._model_end
        if b.count >= _SETTLED_SUBWINDOWS and b.level_var >= _BUSY_ROOM_DB ** 2:
            last = min(last, self._evident_end + self._evident_gap)
        return last - self._trust_lookback()

    def _stands_out(self, window_power: float, parts: int) -> bool:
        """Is a window's mean power over the room's by ``_EVIDENT_SIGMAS`` of a window's spread?"""
        b = self.background
        if not b.count:
            return True
        return window_power / parts > max(b.power, _MIN_POWER) + _EVIDENT_SIGMAS * (b.power_var / parts) ** 0.5

    def _trust_lookback(self) -> int:
        """How far (samples) before the model's last speech window the end may be put: ``lookback_ms`` in a
        quiet room, less as the room nears the speaker's level (a tail can hide under it, the model hears it)."""
        b, speaker = self.background, self.speaker_db
        if speaker is None or not b.count:
            return self._lookback
        t = min(max((speaker - b.level - _SNR_A) / (_SNR_B - _SNR_A), 0.0), 1.0)
        return int(round(self._lookback * (_LB_MIN + (1.0 - _LB_MIN) * t)))

    # ---- shared steps -------------------------------------------------------------------------

    def _begin_onset(self, start: int, end: int, events: list[DetectorEvent]) -> None:
        self.state = State.ONSET
        self.onset = start
        self.speech_end = self._vad_speech_end = end
        self._check_onset(end, events)

    def _continue_onset(self, speech: bool, quiet: bool, end: int, events: list[DetectorEvent]) -> None:
        if quiet:
            # A dip as short as a stop consonant does not cancel the onset; a longer one does.
            if end - self._vad_speech_end >= self._onset_gap:
                self.state = State.IDLE
            return
        if speech:
            self.speech_end = self._vad_speech_end = end
        self._check_onset(end, events)

    def _resume(self, end: int, events: list[DetectorEvent]) -> None:
        if self.in_silence and self._tentative_sent:
            events.append(PauseCancelled(at=end))
        self.in_silence = False
        self._tentative_sent = False

    def _check_silence(self, end: int, silence: int, events: list[DetectorEvent]) -> None:
        if silence >= self._pause:
            events.append(self._finish(end, "pause"))
        elif not self._tentative_sent and silence >= self._tentative:
            self._tentative_sent = True
            events.append(PauseTentative(speech_end=self.speech_end, at=end))

    def _check_max_speech(self, end: int, events: list[DetectorEvent]) -> None:
        if self._max_speech is not None and self.state is State.TALKING and end - self.onset >= self._max_speech:
            events.append(self._finish(end, "max_speech"))

    def _check_onset(self, end: int, events: list[DetectorEvent]) -> None:
        if end - self.onset >= self._min_speech:
            self._model_end = self._evident_end = self._vad_speech_end
            self._run_open = True
            self.state = State.TALKING
            self.in_silence = False
            self._tentative_sent = False
            events.append(StartedTalking(onset=self.onset, at=end))

    def _finish(self, end: int, reason: str) -> PauseDetected:
        event = PauseDetected(onset=self.onset, speech_end=self.speech_end,
                              start=max(0, self.onset - self._prefix), end=end, at=end, reason=reason)
        self.reset()
        return event

    def force_end(self) -> PauseDetected | None:
        """End the turn now (``trigger``, ``stop``) if any speech has begun, even shorter than min_speech."""
        if self.state is State.IDLE:
            return None
        return self._finish(self.position, "forced")
