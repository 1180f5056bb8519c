"""ReplyOnStopWords' rules on the core, with a fake clock and a spotter played by the test.

The test plays the runner for the spotter too: it takes each ``Spot`` command the
core emits and answers it with ``spot_done``, with what a spotter would have heard
in that stretch. So the rules (when to spot, what a result means, which audio is
answered) are checked exactly, without a model; tests/test_stopwords_socket.py
runs the real spotter over real sockets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_core import PAUSE, SIL, SP, WIN, Harness, answer, log, of, trace

from wsstream.core import StartReply
from wsstream.events import StopWord
from wsstream.spotter import Heard
from wsstream.stopwords import Activation, ReplyOnStopWords, Spot

RATE = 16000


def never(audio: Any) -> None:
    """A spotter that is never called (the test answers every Spot itself)."""
    raise AssertionError("the test plays the spotter")


def app(**kw: Any) -> ReplyOnStopWords:
    return ReplyOnStopWords(answer, stop_words=("computer",), spotter=never, **kw)


class Spotting(Harness):
    """The harness, with every Spot answered by ``hear(spot)`` right away (or kept for later)."""

    def __init__(self, hear: Any = None, **kw: Any) -> None:
        super().__init__(app(**kw))
        self.hear = hear
        self.spots: list[Spot] = []
        self.held: list[Spot] = []

    def _feed(self) -> None:
        # the inference worker, window by window, with each Spot answered as soon as it is asked for
        for _ in range(len(self.core.vad.take_windows())):
            self.now += WIN / RATE
            self.core.on_vad(np.array([self.probs.popleft()], dtype=np.float32), None, self.now)
            self._answer(self.core.take_events())

    def _answer(self, events: list[Any]) -> None:
        self._events.extend(events)
        for spot in of(events, Spot):
            self.spots.append(spot)
            if self.hear is None:
                self.held.append(spot)
            else:
                self.core.spot_done(spot.seq, self.hear(spot), self.now)
                self._answer(self.core.take_events())

    def answer_held(self, result: Any) -> list[Any]:
        spot = self.held.pop(0)
        self.core.spot_done(spot.seq, result, self.now)
        self._answer(self.core.take_events())
        return self.take()


def replies(events: list[Any]) -> list[StartReply]:
    return of(events, StartReply)


def test_a_turn_without_the_stop_word_is_not_answered() -> None:
    h = Spotting(hear=lambda spot: None)
    events = h.run([SIL] * 5 + [SP] * 60 + [SIL] * PAUSE)
    assert replies(events) == [] and of(events, StopWord) == []
    assert "log:pause_detected" in trace(events) and log(events, "turn_ignored") == {
        "t": log(events, "pause_detected")["t"], "reason": "no stop word"}
    assert h.core.metrics.counters["turns_without_stop_word"] == 1
    assert h.core._gate.state is Activation.LISTENING


def test_spots_only_speech_on_a_rolling_window_every_half_second() -> None:
    h = Spotting(hear=lambda spot: None)
    h.run([SIL] * 40 + [SP] * 125 + [SIL] * PAUSE)  # 4 s of speech after 1.3 s of silence
    sizes = [s.audio[1].size for s in h.spots]
    rates = {s.audio[0] for s in h.spots}
    assert rates == {RATE}
    assert 6 <= len(h.spots) <= 9, len(h.spots)  # every ~0.5 s of the 4 s, and none in the silence before
    assert max(sizes) <= int(2.5 * RATE) and max(sizes) >= int(2.0 * RATE), sizes
    lead = int(0.3 * RATE)  # prefix_padding_ms: the silence just before the word, which a spotter needs
    for spot in h.spots:  # what the spotter hears is the speaker (the tone) and at most the lead before it
        assert np.abs(spot.audio[1][lead:lead + WIN]).max() > 1000
    onset = 40 * WIN
    first = h.spots[0].audio[1]
    assert np.array_equal(first, h.signal[onset - lead:onset - lead + first.size])


def test_heard_mid_turn_the_rest_of_the_turn_is_the_request() -> None:
    h = Spotting(hear=lambda spot: Heard("computer", end_s=0.2) if len(h.spots) == 2 else None)
    events = h.run([SIL] * 5 + [SP] * 80 + [SIL] * PAUSE)  # speech from window 5 (sample 2560)
    (heard,) = of(events, StopWord)
    assert heard.word == "computer"
    # the second spot heard it: its window runs from the stream's start (the onset less the 0.3 s lead,
    # clipped at 0; the turn is shorter than a window yet) to the second half second of speech after
    # started_talking; the word ended 0.2 s into it
    second = h.spots[1].audio[1]
    assert np.array_equal(second, h.signal[:second.size])
    (cmd,) = replies(events)
    rate, audio = cmd.args[0]
    full = round(log(events, "pause_detected")["speech_s"] * RATE)  # the turn from 0 (the prefix is clipped)
    assert rate == RATE and audio.size == full - int(0.2 * RATE)  # from just after the word
    assert trace(events).index("stopword") < trace(events).index("start:1")
    assert h.core._gate.state is Activation.LISTENING  # one request per stop word


def test_the_word_alone_arms_and_the_next_turn_is_answered_whole() -> None:
    h = Spotting(hear=lambda spot: Heard("computer") if len(h.spots) == 1 else None)
    first = h.run([SIL] * 5 + [SP] * 20 + [SIL] * PAUSE)  # "computer." (0.64 s), then a pause
    assert len(of(first, StopWord)) == 1 and replies(first) == []
    assert h.core._gate.state is Activation.ARMED
    second = h.run([SP] * 40 + [SIL] * PAUSE)  # "what time is it"
    (cmd,) = replies(second)
    assert abs(cmd.args[0][1].size - log(second, "pause_detected")["speech_s"] * RATE) < 1
    assert of(second, Spot) == []  # armed: nothing to spot
    third = h.run([SP] * 40 + [SIL] * PAUSE)
    assert replies(third) == []  # activation was for one request


def test_conversation_activation_lasts_until_a_quiet_period() -> None:
    h = Spotting(hear=lambda spot: Heard("computer") if len(h.spots) == 1 else None,
                 activation="conversation", quiet_s=3.0)
    first = h.run([SIL] * 5 + [SP] * 60 + [SIL] * PAUSE)
    assert len(replies(first)) == 1
    h.core.reply_done(1, h.now)
    h.play()
    assert h.core._gate.state is Activation.ACTIVE
    second = h.run([SIL] * 20 + [SP] * 40 + [SIL] * PAUSE)  # 0.6 s later: still in the conversation
    assert len(replies(second)) == 1
    h.core.reply_done(2, h.now)
    h.play()
    third = h.run([SIL] * 100 + [SP] * 40 + [SIL] * PAUSE)  # 3.2 s of quiet: back to listening
    assert replies(third) == [] and h.core._gate.state is Activation.LISTENING


def test_a_word_heard_only_at_the_turn_end_is_decided_then() -> None:
    h = Spotting(hear=None)  # every spot held: the test answers them when it likes
    events = h.run([SIL] * 5 + [SP] * 12 + [SIL] * PAUSE)  # "computer." (0.38 s): too short for a spot
    assert len(h.held) == 1 and replies(events) == []  # the turn's end: the whole of it spotted, then decided
    assert h.held[0].audio[1].size == 5 * WIN + 12 * WIN  # (its audio from 0: the prefix reaches the start)
    last = h.answer_held(Heard("computer"))  # it stood alone: the next turn is the request
    assert len(of(last, StopWord)) == 1 and replies(last) == []
    assert h.core._gate.state is Activation.ARMED
    assert len(replies(h.run([SP] * 40 + [SIL] * PAUSE))) == 1


def test_a_spot_in_flight_at_the_turn_end_then_the_rest_of_the_turn() -> None:
    h = Spotting(hear=None)
    events = h.run([SIL] * 5 + [SP] * 30 + [SIL] * PAUSE)  # one spot during the turn, still in flight at its end
    assert len(h.held) == 1 and replies(events) == []
    assert "log:turn_ignored" not in trace(events)  # (undecided: the spot in flight decides it)
    first = h.held[0].audio[1].size
    h.answer_held(None)
    assert len(h.held) == 1  # not heard: what that spot did not hear is spotted now (with some overlap)
    assert h.held[0].audio[1].size > 30 * WIN - first
    out = h.answer_held(None)
    assert replies(out) == [] and h.held == [] and log(out, "turn_ignored")["reason"] == "no stop word"


def test_the_next_turn_may_begin_before_the_last_spot_of_one_returns() -> None:
    """A slow spotter (workers starting, a loaded machine) and a quick speaker: the waiting turn still gets
    its last window spotted, and is decided by it, while the next turn is spotted as it goes."""
    h = Spotting(hear=None)
    first = h.run([SIL] * 5 + [SP] * 30 + [SIL] * PAUSE)  # its first spot still in flight at its end
    assert len(h.held) == 1 and "log:turn_ignored" not in trace(first)
    second = h.run([SP] * 10)  # the next turn has begun (too short for a spot of its own yet)
    assert "log:started_talking" in trace(second) and len(h.held) == 1
    out = h.answer_held(None)
    (rest,) = h.held  # the rest of the first turn, not of the second
    assert rest.audio[1].size > 30 * WIN - first_size(h) and "log:turn_ignored" not in trace(out)
    out = h.answer_held(Heard("computer", end_s=0.05))
    assert len(of(out, StopWord)) == 1 and len(replies(out)) == 1  # the first turn, answered after the word


def first_size(h: Spotting) -> int:
    return h.spots[0].audio[1].size


def test_a_late_result_with_a_request_after_the_word_answers_the_waiting_turn() -> None:
    h = Spotting(hear=None)
    events = h.run([SIL] * 5 + [SP] * 60 + [SIL] * PAUSE)
    while len(h.held) > 1:
        h.answer_held(None)
    assert replies(events) == []
    out = h.answer_held(Heard("computer", end_s=0.1))
    assert len(of(out, StopWord)) == 1
    # the last window started at most 2.5 s before the end of speech: the word 0.1 s into it, the rest asked
    (cmd,) = replies(out)
    assert cmd.args[0][1].size >= 0.4 * RATE


def test_a_failing_spotter_is_counted_and_heard_as_nothing() -> None:
    h = Spotting(hear=lambda spot: RuntimeError("model crashed"))
    events = h.run([SIL] * 5 + [SP] * 40 + [SIL] * PAUSE)
    assert replies(events) == [] and of(events, StopWord) == []
    assert h.core.metrics.counters["spotter_errors"] >= 1


@pytest.mark.parametrize("result", [True, "Computer, what time is it?", "computer"])
def test_a_spotter_may_answer_true_or_a_transcript(result: Any) -> None:
    h = Spotting(hear=lambda spot: result if len(h.spots) == 1 else None)
    events = h.run([SIL] * 5 + [SP] * 60 + [SIL] * PAUSE)
    assert [e.word for e in of(events, StopWord)] == ["computer"]
    assert len(replies(events)) == 1


@pytest.mark.parametrize("result", [False, "", "commuter what time is it", "computers"])
def test_a_spotter_saying_no_or_a_transcript_without_the_word(result: Any) -> None:
    h = Spotting(hear=lambda spot: result)
    events = h.run([SIL] * 5 + [SP] * 60 + [SIL] * PAUSE)
    assert of(events, StopWord) == [] and replies(events) == []


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="stop word"):
        ReplyOnStopWords(answer, stop_words=(), spotter=never)
    with pytest.raises(ValueError, match="activation"):
        ReplyOnStopWords(answer, stop_words=("computer",), spotter=never, activation="forever")  # type: ignore
    with pytest.raises(TypeError, match="callable"):
        ReplyOnStopWords(answer, stop_words=("computer",), spotter="pocketsphinx")  # type: ignore[arg-type]
    assert ReplyOnStopWords(answer, stop_words="computer", spotter=never).stop_words == ("computer",)  # type: ignore


def test_the_stopword_message_on_the_wire() -> None:
    import json

    from wsstream.dialects.fastrtc import FastrtcDialect
    from wsstream.dialects.native import NativeDialect
    from wsstream.dialects.twilio import TwilioDialect

    for dialect in (NativeDialect(), FastrtcDialect()):
        assert json.loads(dialect.serialize(StopWord("computer"))) == {"type": "stopword", "data": "computer"}
    assert TwilioDialect().serialize(StopWord("computer")) is None  # Twilio takes no such message: logged
