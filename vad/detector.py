"""The pause (turn) detector: a plain state machine over per-window speech probabilities.

It knows nothing of models or sockets, so it is tested by feeding it numbers.
Positions are sample indices at the detector's rate, counted from the stream's
first sample, so every event is exact to the window that caused it.

States::

    IDLE --p>=threshold--> ONSET --speech lasted min_speech--> TALKING --silence lasted pause--> IDLE
                             |  p<neg_threshold                   ^ p>=threshold (pause_cancelled)
                             v                                    |
                            IDLE                         TALKING+silence (pause_tentative)

Silence is measured from the end of the speech: the end of the last window at or
above ``threshold``, pushed later by the signal itself when the caller passes
per-sub-window levels. Silero's probability often drops while a quiet tail of
the word (a fading vowel, a final consonant) is still sounding; a sub-window
louder than the tracked noise floor within ``tail_ms`` after the last speech
window extends the speech to its end, so the pause is counted from when the
speaker really stopped, never from before. The silence is only taken as a pause
candidate once a window falls below ``neg_threshold`` (hysteresis).
"""

from __future__ import annotations

import enum
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
    tail_ms: float = 200.0
    onset_gap_ms: float = 100.0  # silence within an onset (before min_speech) that cancels it
    tail_margin_db: float = 12.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must be in [0, threshold], got {self.neg_threshold}")
        for name in ("min_speech_ms", "pause_ms", "prefix_padding_ms"):
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
    speech_end: int  # end of the last window at or above threshold
    start: int  # utterance start: onset minus prefix padding (>= 0)
    end: int  # utterance end: the end of the pause (== at)
    at: int
    reason: str = "pause"  # "pause", "max_speech", or "forced"


NOISE_FLOOR_MIN_DB = -72.0


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
        self._onset_gap = int(round(options.onset_gap_ms * ms))
        self.position = 0  # samples consumed so far
        self.noise_floor_db = -60.0
        self.reset()

    def reset(self) -> None:
        """Forget any speech in progress (the position keeps counting)."""
        self.state = State.IDLE
        self.onset = 0
        self.speech_end = 0
        self._vad_speech_end = 0
        self.in_silence = False
        self._tentative_sent = False

    def push(self, probs: np.ndarray, levels: np.ndarray | None = None) -> list[DetectorEvent]:
        """Consume one probability per window, in order; return the events they caused.

        ``levels`` (optional, [n_windows, k] in dBFS) are the RMS levels of k equal
        sub-windows of each window; see the module docstring for what they refine.
        """
        events: list[DetectorEvent] = []
        opts = self.options
        thr, neg = opts.threshold, opts.negative
        level_rows = None if levels is None else np.asarray(levels).tolist()  # plain floats (exact from float32):
        # a handful of sub-window levels per window is cheaper in Python than in per-window numpy calls
        for k, p in enumerate(np.asarray(probs, dtype=np.float32).tolist()):
            start = self.position
            end = start + self.window
            self.position = end
            if self.state is State.IDLE:
                if p >= thr:
                    self.state = State.ONSET
                    self.onset = start
                    self.speech_end = self._vad_speech_end = end
                    self._check_onset(end, events)
            elif self.state is State.ONSET:
                if p < neg:
                    # A dip as short as a stop consonant does not cancel the onset; a longer one does.
                    if end - self._vad_speech_end >= self._onset_gap:
                        self.state = State.IDLE
                else:
                    if p >= thr:
                        self.speech_end = self._vad_speech_end = end
                    self._check_onset(end, events)
            else:
                if p >= thr:
                    self.speech_end = end
                    self._vad_speech_end = end
                    if self.in_silence and self._tentative_sent:
                        events.append(PauseCancelled(at=end))
                    self.in_silence = False
                    self._tentative_sent = False
                else:
                    if p < neg:
                        self.in_silence = True
                    if level_rows is not None:
                        self._extend_tail(start, level_rows[k])
                if self.in_silence:
                    silence = end - self.speech_end
                    if silence >= self._pause:
                        events.append(self._finish(end, "pause"))
                    elif not self._tentative_sent and silence >= self._tentative:
                        self._tentative_sent = True
                        events.append(PauseTentative(speech_end=self.speech_end, at=end))
                if self._max_speech is not None and self.state is State.TALKING \
                        and end - self.onset >= self._max_speech:
                    events.append(self._finish(end, "max_speech"))
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

    def _check_onset(self, end: int, events: list[DetectorEvent]) -> None:
        if end - self.onset >= self._min_speech:
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
