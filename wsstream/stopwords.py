"""Stop-word activation: ``ReplyOnStopWords`` and the per-stream rules that gate its turns (sans-I/O).

The agent stays quiet until it hears a stop word ("computer"), tells the client
(``{"type": "stopword"}``), then answers what follows the word, as fastrtc's
``ReplyOnStopWords`` does: the rest of that turn when the speaker goes on, or
the next turn when the word stood alone. The spotter (``wsstream.spotter``)
only ever hears speech: while the VAD says someone is talking, a rolling window
of the turn every ``spot_every_s`` of new speech, and once more at the turn's
end for what it has not heard yet. It runs off the loop (the runner's job);
``StopWordGate`` only decides when, on what, and what a result means, so its
rules are tested with fed positions and a fake clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vad.detector import PauseDetected
from wsstream.reply import ReplyOnPause
from wsstream.spotter import Heard, SpotResult, Spotter, resolve

ACTIVATIONS = ("turn", "conversation")


@dataclass(frozen=True)
class ReplyOnStopWords(ReplyOnPause):
    """``ReplyOnPause`` that answers only once a stop word has been heard.

    ``activation``: ``"turn"`` (the default, as fastrtc) answers one request per
    stop word; ``"conversation"`` answers every turn after the word until nobody
    has spoken for ``quiet_s`` since the last reply or turn. ``spotter`` is any
    callable from ``(rate, samples)`` to a ``Heard``, a bool or a transcript (see
    ``wsstream.spotter``); by default CMU PocketSphinx's keyword search over
    ``stop_words``, with the English model its package ships (no download).
    """

    stop_words: tuple[str, ...] = ()
    spotter: Spotter | None = None
    activation: Literal["turn", "conversation"] = "turn"
    quiet_s: float = 10.0
    spot_window_s: float = 2.5  # the stretch of the turn a spotter hears at once (a stop word fits)
    spot_every_s: float = 0.5  # new speech between two spots of a turn
    min_request_s: float = 0.4  # speech after the word, in its turn, that is the request

    def __post_init__(self) -> None:
        super().__post_init__()
        words = tuple(w.strip() for w in ([self.stop_words] if isinstance(self.stop_words, str)
                                          else self.stop_words))
        if not words or not all(words):
            raise ValueError("ReplyOnStopWords needs at least one non-empty stop word")
        object.__setattr__(self, "stop_words", words)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("quiet_s", "spot_window_s", "spot_every_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.min_request_s < 0:
            raise ValueError(f"min_request_s must be >= 0, got {self.min_request_s!r}")
        if self.spotter is None:
            from wsstream.spotter import default_spotter  # (its package is an extra: only when used)

            object.__setattr__(self, "spotter", default_spotter(words))
        elif not callable(self.spotter):
            raise TypeError(f"spotter must be callable, got {type(self.spotter).__name__}")


class Activation(enum.Enum):
    LISTENING = "listening"  # turns go unanswered until a stop word is heard
    ARMED = "armed"  # heard: what follows the word (this turn's rest, else the next turn) is answered
    ACTIVE = "active"  # conversation activation: every turn is answered until a quiet period


@dataclass(frozen=True, slots=True)
class Spot:
    """Command to the runner: call the spotter on ``audio`` (off the loop) and hand back ``spot_done``."""

    seq: int
    spotter: Spotter
    audio: tuple[int, np.ndarray]


@dataclass(frozen=True, slots=True)
class Answer:
    """The gate's decision for a finished turn: reply to its audio from ``start`` (detector position)."""

    start: int


class StopWordGate:
    """One stream's activation state. Positions are the detector's sample indices (at ``rate``)."""

    def __init__(self, app: ReplyOnStopWords, rate: int, lead: int = 0) -> None:
        self.app = app
        self.rate = rate
        # Audio before the onset that a window includes: a spotter needs the silence before a word
        # (PocketSphinx misses a stop word that starts its window, measured on tests/data/stopwords).
        self.lead = lead
        self.state = Activation.LISTENING
        self.heard: Heard | None = None  # the last stop word heard
        self._window = int(app.spot_window_s * rate)
        self._every = int(app.spot_every_s * rate)
        self._min_request = int(app.min_request_s * rate)
        self._seq = 0
        self._in_flight: tuple[int, int, int] | None = None  # (seq, window start, window end)
        self._spotted_to = 0  # how far into the current turn the spotter has heard
        self._heard_at: int | None = None  # where the word ended, when heard in the current turn
        self._pending: tuple[PauseDetected, np.ndarray] | None = None  # a turn waiting on its last spot
        self._pending_to = 0  # how far into the pending turn the spotter has heard (a next turn may have begun)
        self._last_activity = 0.0

    @property
    def pending_turn(self) -> PauseDetected | None:
        """The finished turn waiting on a spot, if any."""
        return None if self._pending is None else self._pending[0]

    # ---- while someone talks ----------------------------------------------------------

    def turn_started(self, onset: int, now: float) -> None:
        if self.state is Activation.ACTIVE and now - self._last_activity >= self.app.quiet_s:
            self.state = Activation.LISTENING
        self._spotted_to = onset
        if self.state is Activation.ARMED and self._heard_at is not None and self._heard_at < onset:
            self._heard_at = None  # (the word was in an earlier turn: this whole turn is the request)

    def window(self, speech_end: int, onset: int) -> tuple[int, int] | None:
        """The stretch to spot now (start, end) while a turn is in progress, once it has ``spot_every_s``
        of speech the spotter has not heard; or None."""
        if self.state is not Activation.LISTENING or self._in_flight is not None:
            return None
        if speech_end - self._spotted_to < self._every:
            return None
        return max(onset - self.lead, 0, speech_end - self._window), speech_end

    def spot(self, start: int, end: int, audio: tuple[int, np.ndarray]) -> Spot:
        self._seq += 1
        self._in_flight = (self._seq, start, end)
        pending = self._pending
        if pending is not None and end <= pending[0].speech_end and start >= pending[0].start:
            self._pending_to = max(self._pending_to, end)  # (the pending turn's own last window)
        else:
            self._spotted_to = end
        assert self.app.spotter is not None
        return Spot(self._seq, self.app.spotter, audio)

    # ---- a turn ends ------------------------------------------------------------------

    def turn_ended(self, ev: PauseDetected, audio: np.ndarray, now: float) -> Answer | tuple[int, int] | None:
        """An ``Answer``; a window (start, end) that must be spotted before the turn is decided (the
        caller sends ``spot`` for it and keeps nothing: the gate holds the turn's audio); or None: the
        turn goes unanswered."""
        self._last_activity = now
        if self.state is Activation.ACTIVE:
            return Answer(ev.start)
        if self.state is Activation.ARMED:
            return self._armed(ev)
        if self._in_flight is not None or self._spotted_to < ev.speech_end:
            self._pending = (ev, audio)
            self._pending_to = self._spotted_to
            if self._in_flight is not None:
                return None  # (the spot in flight decides it; what it did not hear is spotted then)
            return self._final_window(ev)
        return None

    def _final_window(self, ev: PauseDetected) -> tuple[int, int]:
        start = max(ev.start, min(self._pending_to, ev.speech_end) - self._window // 2, ev.speech_end - self._window)
        return start, ev.speech_end

    def _armed(self, ev: PauseDetected) -> Answer | None:
        at = self._heard_at
        self._heard_at = None
        if at is None or at <= ev.start:
            return self._answered(Answer(ev.start))
        if ev.speech_end - at >= self._min_request:
            return self._answered(Answer(at))
        return None  # the word stood alone: the next turn is the request (still armed)

    def _answered(self, answer: Answer) -> Answer:
        self.state = Activation.ACTIVE if self.app.activation == "conversation" else Activation.LISTENING
        return answer

    # ---- the spotter's answer ----------------------------------------------------------

    def spot_done(self, seq: int, result: SpotResult | BaseException) -> tuple[Heard | None, object]:
        """(the stop word if this spot heard one, what to do with a turn that was waiting on it: an
        ``(Answer, PauseDetected, audio)``, a window to spot next, or None)."""
        if self._in_flight is None or self._in_flight[0] != seq:
            return None, None
        _, start, end = self._in_flight
        self._in_flight = None
        heard = None if isinstance(result, BaseException) else resolve(result, self.app.stop_words)
        if heard is not None and self.state is Activation.LISTENING:
            self.heard = heard
            self.state = Activation.ARMED
            at = end if heard.end_s is None else min(end, start + int(heard.end_s * self.rate))
            self._heard_at = at
        else:
            heard = None
        pending = self._pending
        if pending is None:
            return heard, None
        ev, audio = pending
        if self.state is Activation.ARMED:
            self._pending = None
            answer = self._armed(ev)
            return heard, None if answer is None else (answer, ev, audio)
        if self._pending_to < ev.speech_end:
            return heard, self._final_window(ev)  # (the caller spots it; the turn stays pending)
        self._pending = None
        return heard, None

    def pending_audio(self, start: int, end: int) -> np.ndarray | None:
        """A window of the turn the gate holds (its history may be gone by now), at the input rate."""
        if self._pending is None:
            return None
        ev, audio = self._pending
        return clip(audio, ev, start, end)


def clip(audio: np.ndarray, ev: PauseDetected, start: int, end: int | None = None) -> np.ndarray:
    """The part of a turn's audio (input rate) between detector positions ``start`` and ``end``."""
    ratio = audio.size / max(ev.end - ev.start, 1)
    a = max(int((start - ev.start) * ratio), 0)
    return audio[a:] if end is None else audio[a:max(int((end - ev.start) * ratio), a)]
