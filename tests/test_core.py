"""StreamCore alone: turns, replies, pacing, barge-in, marks, stop, trigger and limits, on a fake clock.

The core is sans-I/O: it is called with the time (``now``, here a plain float that
advances 32 ms per VAD window), fed speech probabilities chosen by the test, and
answers with events and a deadline. So none of this needs a socket, a model, an
event loop or a sleep: a ``VadStream`` without a model only cuts windows (its
engine is touched on close alone), and the test plays the inference worker
(``take_windows`` -> ``on_vad``) and the reply runner (``StartReply`` ->
``reply_item`` / ``reply_done``, ``poll`` at ``deadline``) itself.
"""

from __future__ import annotations

import types
from collections import deque
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from vad.detector import DetectorOptions
from vad.engine import VadStream
from wsstream.codecs import AudioFormat
from wsstream.config import StreamConfig
from wsstream.core import FINISH_TIMEOUT_S, CancelReply, ReplyEnded, ReplyState, StartReply, StreamCore, StreamState
from wsstream.events import (
    AudioIn,
    AudioOut,
    Close,
    Dtmf,
    Error,
    FetchOutput,
    Log,
    Mark,
    MarkPlayed,
    Ping,
    SetInputs,
    Start,
    Stop,
    Trigger,
)
from wsstream.reply import AdditionalOutputs, CloseStream, ReplyOnPause

RATE = 16000
WIN = 512  # one VAD window: 32 ms at 16 kHz
WIN_S = WIN / RATE
FRAME = 320  # one 20 ms reply frame at 16 kHz (frame_ms default)
SP, SIL = 0.9, 0.05  # a speech and a silence probability (threshold 0.5, neg_threshold 0.35)
ONSET = 8  # windows of speech until started_talking (min_speech 250 ms: 8 * 32 = 256)
PAUSE = 19  # windows of silence until pause_detected (pause 600 ms: 19 * 32 = 608)
TENTATIVE = 7  # windows of silence until pause_tentative (200 ms: 7 * 32 = 224)
PREFIX = 4800  # prefix padding, 300 ms


def answer(audio: Any, *args: Any, **kwargs: Any) -> None:
    """The app's reply function (never called: the test plays the runner)."""


def greet() -> None:
    """The app's startup function (never called either)."""


def tone(n: int, start: int = 0) -> np.ndarray:
    """``n`` samples of a 440 Hz tone, phase-continuous from sample ``start``."""
    t = np.arange(start, start + n)
    return (np.sin(t * (2 * np.pi * 440 / RATE)) * 10000).astype(np.int16)


def label(event: Any) -> str:
    if isinstance(event, Log):
        return f"log:{event.name}"
    if isinstance(event, AudioOut):
        return "audio"
    if isinstance(event, Mark):
        return f"mark:{event.name}"
    if isinstance(event, ReplyEnded):
        return f"ended:{event.seq}:{event.how}"
    if isinstance(event, StartReply):
        return f"start:{event.seq}"
    if isinstance(event, CancelReply):
        return f"cancel:{event.seq}"
    if isinstance(event, Close):
        return f"close:{event.code}:{event.reason}"
    return type(event).__name__.lower()


def trace(events: list[Any]) -> list[str]:
    """The events as labels, a run of AudioOut as one "audio" (frame counts are checked apart);
    host-only StreamStarted observations left out."""
    out: list[str] = []
    for event in events:
        name = label(event)
        if name != "streamstarted" and not (name == "audio" and out and out[-1] == "audio"):
            out.append(name)
    return out


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def log(events: list[Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in events if isinstance(e, Log) and e.name == name]
    return entry.fields


def audio_bytes(events: list[Any]) -> bytes:
    return b"".join(e.data for e in of(events, AudioOut))


class Harness:
    """A core, a fake clock, and the inference worker and reply runner played by hand."""

    def __init__(self, app: ReplyOnPause | None = None, **config: Any) -> None:
        self.engine = types.SimpleNamespace(_closing=[])
        # (barge-in at once, as before interrupt_ms, and no echo gate: the test's input and replies are both
        # tones, which the gate would rightly take for echo; tests/test_turn_taking.py has both rules)
        app = app or ReplyOnPause(answer, interrupt_ms=0)
        self.core = StreamCore(app, lambda rate: VadStream(self.engine, rate, 4.0),
                               stream_id="t1", config=StreamConfig(**{"echo_gate": False, **config}))
        self.now = 0.0
        self.chunks: list[np.ndarray] = []  # every audio message the core took
        self.probs: deque[float] = deque()  # the probabilities of the windows not yet fed
        self._events: list[Any] = []

    @property
    def signal(self) -> np.ndarray:
        return np.concatenate(self.chunks)

    def take(self) -> list[Any]:
        """What the core output since the last take."""
        out, self._events = self._events + self.core.take_events(), []
        return out

    def push(self, probs: list[float]) -> bool:
        """Offer the audio of these windows (a tone where p >= 0.5, silence elsewhere); no VAD yet."""
        p = np.asarray(probs, dtype=np.float32)
        start = sum(c.size for c in self.chunks)
        pcm = tone(p.size * WIN, start) * np.repeat(p >= 0.5, WIN).astype(np.int16)
        ok = self.core.offer_audio(pcm.tobytes())
        if ok and self.core.state is not StreamState.CLOSED:
            self.chunks.append(pcm)
            self.probs.extend(p.tolist())
        return ok

    def feed(self) -> list[Any]:
        """The inference worker: take the whole windows, one ``on_vad`` per window, 32 ms apart."""
        self._feed()
        return self.take()

    def _feed(self) -> None:
        for _ in range(len(self.core.vad.take_windows())):
            self.now += WIN_S
            self.core.on_vad(np.array([self.probs.popleft()], dtype=np.float32), None, self.now)
        self._events.extend(self.core.take_events())

    def run(self, probs: list[float]) -> list[Any]:
        """Real time: each window offered, taken and fed as it ends."""
        for p in probs:
            assert self.push([p])
            self._feed()
        return self.take()

    def receive(self, event: Any) -> list[Any]:
        assert self.core.receive(event, self.now)
        return self.take()

    def reply(self, seq: int, *items: Any, done: bool = True, error: BaseException | None = None) -> list[Any]:
        """The runner: feed what reply ``seq`` yielded, and (``done``) its end, at ``now``."""
        for item in items:
            self.core.reply_item(seq, item, self.now)
        if done:
            self.core.reply_done(seq, self.now, error)
        return self.take()

    def play(self) -> list[Any]:
        """Poll at each deadline (the clock jumps there) until the reply has gone out in full."""
        for _ in range(10_000):
            if self.core.reply_state is ReplyState.IDLE or self.core.deadline is None:
                break
            self.now = max(self.now, self.core.deadline)
            self.core.poll(self.now)
            self._events.extend(self.core.take_events())
        return self.take()

    def turn(self, speech: int = 10, before: int = 5) -> StartReply:
        """Silence, speech, a pause: the StartReply it caused."""
        (cmd,) = of(self.run([SIL] * before + [SP] * speech + [SIL] * PAUSE), StartReply)
        return cmd


# ---- a turn ---------------------------------------------------------------------------------


def test_a_turn_logs_replies_with_the_utterance_and_plays_the_reply() -> None:
    h = Harness()
    events = h.run([SIL] * 10 + [SP] * 20 + [SIL] * PAUSE)
    assert trace(events) == ["log:started_talking", "log:pause_tentative", "log:pause_detected", "start:1"]
    assert log(events, "started_talking") == {"t": round(18 * WIN / RATE, 3), "onset": 0.32}  # t 0.576
    assert log(events, "pause_tentative") == {"t": round((30 + TENTATIVE) * WIN / RATE, 3)}
    speech_end = 30 * WIN
    end = speech_end + PAUSE * WIN  # 25088: the end of the window where the 600 ms were reached
    start = 10 * WIN - PREFIX
    assert log(events, "pause_detected") == {"t": end / RATE, "speech_s": round((end - start) / RATE, 3),
                                             "speech_end": speech_end / RATE, "reason": "pause"}
    assert h.now == pytest.approx(end / RATE)  # decided at the window that completed the pause
    (cmd,) = of(events, StartReply)
    assert cmd.fn is answer and cmd.kwargs == {} and cmd.context is h.core.context
    rate, utterance = cmd.args[0]
    assert rate == RATE and utterance.dtype == np.int16
    assert utterance.size == PREFIX + 20 * WIN + PAUSE * WIN  # prefix padding + speech + pause
    np.testing.assert_array_equal(utterance, h.signal[start:end])
    assert h.core.metrics.counters["turns"] == 1

    reply = tone(3200)  # 200 ms: ten 20 ms frames
    events = h.reply(1, AdditionalOutputs("hi"), (RATE, reply), done=False)
    assert trace(events) == ["fetchoutput", "log:response_starting", "audio"]
    assert of(events, FetchOutput)[0].data == ["hi"]
    assert log(events, "response_starting") == {"t": end / RATE}
    events += h.reply(1) + h.play()
    assert trace(events) == ["fetchoutput", "log:response_starting", "audio", "mark:reply-1", "ended:1:played"]
    frames = of(events, AudioOut)
    assert [len(f.data) for f in frames] == [2 * FRAME] * 10
    assert audio_bytes(events) == reply.tobytes()
    assert h.core.reply_state is ReplyState.IDLE and h.core.deadline is None
    assert h.core.context.marks_sent == ("reply-1",)


def test_reply_items_the_core_cannot_use_are_warned_about() -> None:
    h = Harness()
    h.turn()
    events = h.reply(1, {"not": "audio"}, (RATE, np.zeros((2, 2, 2), dtype=np.int16)), done=False)
    assert trace(events) == ["warning", "warning"]
    assert "unsupported dict" in events[0].message and "reply audio ignored" in events[1].message


def test_inputs_set_by_the_client_follow_the_utterance() -> None:
    h = Harness()
    h.receive(SetInputs(["voice", 2]))
    cmd = h.turn()
    assert cmd.args[1:] == ("voice", 2) and cmd.kwargs == {}
    h.reply(1)
    h.receive(SetInputs({"voice": "b"}))
    cmd = h.turn()
    assert len(cmd.args) == 1 and cmd.kwargs == {"voice": "b"}


def test_send_input_holds_the_reply_until_the_inputs_come_or_the_wait_ends() -> None:
    """fastrtc's send_input: the reply is asked for at pause_detected, called once the client's inputs
    come (with them), or after input_wait_s with those set before."""
    h = Harness(ReplyOnPause(answer, interrupt_ms=0, input_wait_s=2.0), asks_inputs=True)
    h.receive(SetInputs({"voice": "a"}))
    events = h.run([SIL] * 5 + [SP] * 10 + [SIL] * PAUSE)
    assert trace(events)[-2:] == ["log:pause_detected", "sendinput"]
    assert h.core.reply_state is ReplyState.WAITING and h.core.deadline == pytest.approx(h.now + 2.0)
    h.now += 0.3
    (cmd,) = of(h.receive(SetInputs({"voice": "b"})), StartReply)
    assert cmd.seq == 1 and cmd.kwargs == {"voice": "b"} and cmd.args[0][0] == RATE
    assert h.core.deadline is None  # (no timer left for the wait that is over)
    assert cmd.args[0][1].size == (5 + 10 + PAUSE) * WIN  # the turn's audio (from 0: less than the prefix before it)
    h.reply(1, (RATE, tone(FRAME)))
    h.play()
    # a client that does not answer: the reply is called at the end of the wait, with the inputs it had
    events = h.run([SIL] * 5 + [SP] * 10 + [SIL] * PAUSE)
    asked_at = h.now
    assert trace(events)[-1] == "sendinput" and not of(events, StartReply)
    h.now = h.core.deadline
    assert h.now == pytest.approx(asked_at + 2.0)
    h.core.poll(h.now)
    (cmd,) = of(h.take(), StartReply)
    assert cmd.seq == 2 and cmd.kwargs == {"voice": "b"}
    counters = h.core.metrics.counters
    assert (counters["inputs_asked"], counters["inputs_received"], counters["inputs_timeouts"]) == (2, 1, 1)


@pytest.mark.parametrize("rules", [{"interrupt_ms": 0}, {}, {"options": DetectorOptions(can_interrupt=False)}],
                         ids=["any-speech-interrupts", "backchannels", "no-interrupt"])
def test_speech_while_a_reply_waits_for_its_inputs_is_a_turn_of_its_own(rules: dict[str, Any]) -> None:
    """The user has heard nothing of a reply still waiting for its inputs: speech then is no barge-in
    nor a backchannel, whatever the barge-in rules; it drops that reply (no function ran: nothing to
    cancel, nothing to clear) and is answered in turn."""
    h = Harness(ReplyOnPause(answer, input_wait_s=2.0, **rules), asks_inputs=True)
    h.run([SIL] * 5 + [SP] * 10 + [SIL] * PAUSE)
    events = h.run([SP] * ONSET)  # a short "yes" before the inputs came
    assert trace(events) == ["log:started_talking", "ended:1:cancelled"]
    assert not of(h.receive(SetInputs({"voice": "late"})), StartReply)  # (they are the next reply's)
    events = h.run([SIL] * PAUSE)
    assert trace(events) == ["log:pause_tentative", "log:pause_detected", "sendinput"]
    (cmd,) = of(h.receive(SetInputs({"voice": "c"})), StartReply)
    assert cmd.seq == 2 and cmd.kwargs == {"voice": "c"}
    assert h.core.metrics.counters["inputs_dropped"] == 1 and not h.core.metrics.counters["interruptions"]


def test_inputs_in_a_later_start_release_a_waiting_reply() -> None:
    """Before any audio a client may start again (new formats, new inputs): inputs there answer send_input
    too. Here the greeting plays, then the idle prompt's reply asks for its inputs."""
    h = Harness(ReplyOnPause(answer, startup_fn=greet, idle_prompt_s=1.0, input_wait_s=2.0), asks_inputs=True)
    (greeting,) = of(h.receive(Start()), StartReply)
    h.reply(greeting.seq, (RATE, tone(FRAME)))
    h.play()
    h.now = h.core.deadline
    h.core.poll(h.now)
    assert trace(h.take()) == ["log:idle_prompt", "sendinput"]
    (cmd,) = of(h.receive(Start(inputs=["v"])), StartReply)
    assert cmd.seq == greeting.seq + 1 and cmd.args[1:] == ("v",)


def test_the_first_chunk_timeout_counts_from_when_the_waiting_reply_is_called() -> None:
    h = Harness(ReplyOnPause(answer, interrupt_ms=0, input_wait_s=2.0), asks_inputs=True, first_chunk_timeout_s=1.0)
    h.run([SIL] * 5 + [SP] * 10 + [SIL] * PAUSE)
    h.now += 1.5  # the inputs come later than the first-chunk timeout would have allowed from the ask
    of(h.receive(SetInputs({"voice": "b"})), StartReply)
    assert h.core.deadline == pytest.approx(h.now + 1.0)
    h.now += 0.9
    h.core.poll(h.now)
    assert not h.take()  # not timed out: 0.9 s since it was called


def test_send_input_is_not_asked_where_the_dialect_cannot_carry_it() -> None:
    h = Harness(ReplyOnPause(answer, interrupt_ms=0, input_wait_s=2.0))  # (a telephone bridge's setup)
    events = h.run([SIL] * 5 + [SP] * 10 + [SIL] * PAUSE)
    assert "sendinput" not in trace(events) and len(of(events, StartReply)) == 1


# ---- pacing ---------------------------------------------------------------------------------


def test_reply_audio_is_paced_to_real_time_plus_the_lead() -> None:
    lead, refill, frame = 100.0, 40.0, 20.0
    h = Harness(lead_ms=lead, refill_ms=refill, playout_queue_frames=20)
    h.turn()
    reply = tone(RATE)  # one second: 50 frames, produced at once
    t_first = h.now
    events = h.reply(1, (RATE, reply), done=False)
    burst = len(of(events, AudioOut))
    assert burst * frame <= lead + frame and burst * frame >= lead  # the lead (+1 frame), at once
    assert not h.core.playout_room  # 50 - burst > 20 frames produced ahead of playout
    sent_ms = burst * frame
    # due when the client holds lead - refill: then topped up in one go
    assert h.core.deadline == pytest.approx(t_first + sent_ms / 1000 - (lead - refill) / 1000)
    polls = 0
    while h.core.deadline is not None:
        t = h.core.deadline
        assert t > h.now
        held = sent_ms - (t - t_first) * 1000  # what the client still holds when the deadline comes
        assert held == pytest.approx(lead - refill)  # never runs dry, never woken for nothing
        h.now = t
        h.core.poll(t)
        released = of(h.take(), AudioOut)
        assert released  # every deadline releases audio
        sent_ms += len(released) * frame
        assert sent_ms <= (t - t_first) * 1000 + lead + frame + 1e-6
        polls += 1
    assert sent_ms == 1000.0  # all of it, and only then no deadline
    assert polls == pytest.approx((1000 - burst * frame) / (refill + frame), abs=2)  # tops up, not per frame
    assert h.core.playout_room
    events = h.reply(1)  # nothing was left: the mark goes at once
    assert trace(events) == ["mark:reply-1", "ended:1:played"]


def test_a_reply_slower_than_real_time_restarts_the_clock() -> None:
    h = Harness(lead_ms=100.0)
    h.turn()
    assert len(of(h.reply(1, (RATE, tone(FRAME)), done=False), AudioOut)) == 1
    h.now += 5.0  # the function took 5 s for its next chunk: the client has long run dry
    events = h.reply(1, (RATE, tone(50 * FRAME)), done=False)
    assert len(of(events, AudioOut)) * 20 <= 100 + 20  # a fresh lead from now, not 5 s of backlog
    assert h.core.deadline is not None and h.core.deadline > h.now


# ---- barge-in -------------------------------------------------------------------------------


def test_speech_during_a_running_reply_cancels_and_clears_it() -> None:
    h = Harness()
    h.turn()
    assert "audio" in trace(h.reply(1, (RATE, tone(RATE)), done=False))
    events = h.run([SP] * ONSET)
    assert trace(events) == ["log:started_talking", "cancel:1", "ended:1:interrupted", "clear"]
    assert h.core.metrics.counters["interruptions"] == 1
    assert h.core.reply_state is ReplyState.IDLE and h.core.deadline is None
    h.now += 1.0
    h.core.poll(h.now)
    assert h.reply(1, (RATE, tone(RATE))) == []  # the old function's late items and end: ignored
    (cmd,) = of(h.run([SIL] * PAUSE), StartReply)  # the barge-in was a turn of its own
    assert cmd.seq == 2
    assert h.reply(1, (RATE, tone(RATE)), done=False) == []  # seq 1 stays ignored under reply 2
    assert trace(h.reply(2, (RATE, tone(FRAME)))) == ["log:response_starting", "audio", "mark:reply-2",
                                                     "ended:2:played"]


def test_speech_while_a_finished_reply_still_drains_clears_it_without_cancel() -> None:
    h = Harness()
    h.turn()
    h.reply(1, (RATE, tone(RATE)))  # the function is done; most of its second is still due
    assert h.core.reply_state is ReplyState.DRAINING
    assert trace(h.run([SP] * ONSET)) == ["log:started_talking", "ended:1:interrupted", "clear"]
    assert h.play() == [] and h.core.context.marks_sent == ()


def test_client_that_does_not_echo_marks_is_not_cleared_after_the_reply_went_out() -> None:
    h = Harness(lead_ms=10_000.0)
    h.turn()
    assert trace(h.reply(1, (RATE, tone(3200))))[-2:] == ["mark:reply-1", "ended:1:played"]
    assert trace(h.run([SP] * ONSET)) == ["log:started_talking"]


def test_client_that_echoes_marks_is_cleared_until_the_last_mark_comes_back() -> None:
    h = Harness(lead_ms=10_000.0)  # every reply goes out in full at once
    h.turn()
    h.reply(1, (RATE, tone(3200)))
    h.receive(MarkPlayed("reply-1"))  # this client echoes marks
    assert trace(h.run([SP] * 10 + [SIL] * PAUSE)) == ["log:started_talking", "log:pause_tentative",
                                                      "log:pause_detected", "start:2"]
    assert trace(h.reply(2, (RATE, tone(3200))))[-2:] == ["mark:reply-2", "ended:2:played"]
    # reply 2 went out in full but its mark has not come back: the client is still playing it
    assert trace(h.run([SP] * ONSET)) == ["log:started_talking", "clear"]
    assert h.core.metrics.counters["interruptions"] == 1
    (cmd,) = of(h.run([SIL] * PAUSE), StartReply)
    h.reply(cmd.seq, (RATE, tone(3200)))
    h.receive(MarkPlayed("reply-3"))
    assert trace(h.run([SP] * ONSET)) == ["log:started_talking"]  # all heard: nothing to clear


def test_speech_during_a_reply_is_ignored_when_it_cannot_interrupt() -> None:
    h = Harness(ReplyOnPause(answer, options=DetectorOptions(can_interrupt=False)))
    h.turn()
    reply = tone(RATE)
    events = h.reply(1, (RATE, reply), done=False)
    assert h.run([SP] * 12 + [SIL] * PAUSE) == []  # no started_talking, no Clear, no new turn
    events += h.reply(1) + h.play()
    assert trace(events) == ["log:response_starting", "audio", "mark:reply-1", "ended:1:played"]
    assert audio_bytes(events) == reply.tobytes()  # played to its end
    # once it has played, speech is heard again, and the utterance holds none of the ignored speech
    events = h.run([SIL] * 2 + [SP] * 10 + [SIL] * PAUSE)
    assert trace(events) == ["log:started_talking", "log:pause_tentative", "log:pause_detected", "start:2"]
    assert of(events, StartReply)[0].args[0][1].size == PREFIX + (10 + PAUSE) * WIN



def test_cannot_interrupt_holds_within_one_batch_of_windows() -> None:
    h = Harness(ReplyOnPause(answer, options=DetectorOptions(can_interrupt=False)))
    probs = [SP] * 10 + [SIL] * PAUSE + [SP] * 12
    h.push(probs)
    h.core.vad.take_windows()  # one batch, as a lagging inference worker hands it over
    h.core.on_vad(np.array(probs, dtype=np.float32), None, len(probs) * WIN_S)
    assert trace(h.take()) == ["log:started_talking", "log:pause_tentative", "log:pause_detected", "start:1"]

# ---- stop and hang-up -----------------------------------------------------------------------


def test_stop_mid_turn_ends_the_turn_plays_the_reply_then_closes() -> None:
    h = Harness()
    assert trace(h.run([SIL] * 5 + [SP] * 12)) == ["log:started_talking"]
    events = h.receive(Stop(finish=True))
    assert trace(events) == ["log:pause_detected", "start:1"]
    assert log(events, "pause_detected")["reason"] == "forced"
    assert log(events, "pause_detected")["t"] == round(17 * WIN / RATE, 3)
    assert of(events, StartReply)[0].args[0][1].size == 17 * WIN  # from 0 (prefix clipped) to the stop
    assert h.core.state is StreamState.LAST_REPLY
    samples_in = h.core.samples_in
    assert h.core.offer_audio(tone(WIN).tobytes()) and h.core.samples_in == samples_in  # not heard
    events = h.reply(1, (RATE, tone(3200))) + h.play()
    assert trace(events) == ["log:response_starting", "audio", "mark:reply-1", "ended:1:played", "close:1000:stop"]
    assert h.core.closed and h.core.deadline is None


def test_stop_waits_for_vad_to_catch_up() -> None:
    h = Harness()
    h.run([SP] * 10)
    h.push([SP] * 5)  # offered, not yet through inference
    assert h.receive(Stop()) == []
    assert h.core.state is StreamState.STOPPING
    assert h.core.deadline == pytest.approx(h.now + FINISH_TIMEOUT_S)
    events = h.feed()
    assert trace(events) == ["log:pause_detected", "start:1"]
    assert log(events, "pause_detected") == {"t": 15 * WIN / RATE, "speech_s": 15 * WIN / RATE,
                                             "speech_end": 15 * WIN / RATE, "reason": "forced"}
    np.testing.assert_array_equal(of(events, StartReply)[0].args[0][1], h.signal)  # all of it, after VAD
    assert trace(h.reply(1) + h.play()) == ["mark:reply-1", "ended:1:played", "close:1000:stop"]


def test_stop_cuts_the_last_turn_when_vad_never_catches_up() -> None:
    h = Harness()
    h.run([SP] * 10)
    h.push([SP] * 5)
    stopped = h.now
    h.receive(Stop())
    h.core.poll(stopped + FINISH_TIMEOUT_S - 0.01)
    assert h.take() == []
    assert h.core.deadline == pytest.approx(stopped + FINISH_TIMEOUT_S)
    h.now = h.core.deadline
    h.core.poll(h.now)
    events = h.take()
    assert trace(events) == ["log:pause_detected", "start:1"]
    assert log(events, "pause_detected")["reason"] == "forced"
    assert log(events, "pause_detected")["t"] == 10 * WIN / RATE  # only what VAD had seen
    assert of(events, StartReply)[0].args[0][1].size == 10 * WIN
    assert trace(h.reply(1, (RATE, tone(FRAME))) + h.play()) == [
        "log:response_starting", "audio", "mark:reply-1", "ended:1:played", "close:1000:stop"]


def test_stop_with_nothing_heard_closes_at_the_deadline() -> None:
    h = Harness()
    h.run([SIL] * 3)
    h.push([SIL] * 2)
    h.receive(Stop())
    h.now = h.core.deadline
    h.core.poll(h.now)
    assert trace(h.take()) == ["close:1000:stop"]


def test_late_vad_after_the_stop_deadline_does_not_barge_in_on_the_last_reply() -> None:
    h = Harness()
    h.run([SP] * 10)
    h.push([SP] * 10)  # the rest of the utterance, still waiting for inference
    h.receive(Stop())
    h.now = h.core.deadline
    h.core.poll(h.now)
    assert trace(h.take()) == ["log:pause_detected", "start:1"]
    assert h.feed() == []  # the late windows: the turn was already cut
    assert trace(h.reply(1, (RATE, tone(FRAME))) + h.play())[-1] == "close:1000:stop"


def test_hang_up_mid_reply_cancels_and_closes_at_once() -> None:
    h = Harness()
    h.turn()
    h.reply(1, (RATE, tone(RATE)), done=False)
    assert trace(h.receive(Stop(finish=False))) == ["cancel:1", "ended:1:cancelled", "close:1000:stop"]
    assert h.core.closed and h.core.deadline is None and h.core.playout_room and h.core.vad_room
    # nothing more comes out, whatever happens next
    h.reply(1, (RATE, tone(RATE)))
    h.now += 1.0
    h.core.poll(h.now)
    h.run([SP] * 10 + [SIL] * PAUSE)
    for event in (Trigger(), Ping(), Stop(), MarkPlayed("reply-1"), AudioIn(tone(WIN).tobytes())):
        h.receive(event)
    h.core.close(1011, "again")
    assert h.take() == []


def test_host_trigger_after_close_starts_nothing() -> None:
    h = Harness()
    h.run([SP] * 10)  # talking when the call ends
    h.receive(Stop(finish=False))
    assert h.core.trigger(h.now, tell_client=False) is False
    assert h.take() == []


# ---- trigger --------------------------------------------------------------------------------


def test_trigger_replies_to_what_was_heard() -> None:
    h = Harness()
    h.run([SIL] * 5 + [SP] * 10)
    events = h.receive(Trigger())
    assert trace(events) == ["log:pause_detected", "start:1"]
    assert log(events, "pause_detected")["reason"] == "forced"
    assert log(events, "pause_detected")["t"] == 15 * WIN / RATE
    np.testing.assert_array_equal(of(events, StartReply)[0].args[0][1], h.signal)
    # nothing heard since that reply: a warning, no reply
    h.run([SIL] * 10)
    events = h.receive(Trigger())
    assert trace(events) == ["warning"] and "no speech heard" in events[0].message
    assert h.core.trigger(h.now, tell_client=False) is False and h.take() == []  # the host's own trigger


def test_trigger_takes_speech_shorter_than_min_speech() -> None:
    h = Harness()
    h.run([SIL] * 20 + [SP] * 3)  # 96 ms: an onset, not yet started_talking
    assert h.core.trigger(h.now) is True
    (cmd,) = of(h.take(), StartReply)
    assert cmd.args[0][1].size == PREFIX + 3 * WIN


def test_trigger_with_nothing_heard_warns() -> None:
    h = Harness()
    h.run([SIL] * 10)
    events = h.receive(Trigger())
    assert trace(events) == ["warning"]
    assert of(events, StartReply) == []


# ---- CloseStream ----------------------------------------------------------------------------


def test_close_stream_closes_once_the_reply_has_played() -> None:
    h = Harness()
    h.turn()
    reply = tone(6400)  # 400 ms: more than the lead
    events = h.reply(1, (RATE, reply), CloseStream("bye"))
    assert "close:1000:bye" not in trace(events)
    events += h.play()
    assert trace(events) == ["log:response_starting", "audio", "mark:reply-1", "ended:1:played", "close:1000:bye"]
    assert audio_bytes(events) == reply.tobytes()


def test_close_stream_closes_at_an_interruption() -> None:
    h = Harness()
    h.turn()
    h.reply(1, (RATE, tone(RATE)), CloseStream("bye"), done=False)
    assert trace(h.run([SP] * ONSET)) == ["log:started_talking", "cancel:1", "ended:1:interrupted", "clear",
                                          "close:1000:bye"]
    assert h.core.closed


def test_nothing_starts_after_a_close_stream_reply_is_interrupted_by_a_trigger() -> None:
    """A reply that asked to close, cut short by a new turn (here the host's trigger): the stream ends
    there; no second reply starts for a closed stream, and no deadline is left behind."""
    h = Harness()
    h.turn()
    h.reply(1, (RATE, tone(RATE)), CloseStream("bye"), done=False)
    h.run([SP] * 3)  # too short to count as barge-in, but heard
    events = h.receive(Trigger())
    assert trace(events) == ["log:pause_detected", "cancel:1", "ended:1:interrupted", "clear", "close:1000:bye"]
    assert h.core.closed and h.core.deadline is None
    assert h.run([SP] * ONSET + [SIL] * 30) == []  # and the closed stream hears nothing more


# ---- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("setup", [{"app": ReplyOnPause(answer, options=DetectorOptions(max_speech_s=1.0))},
                                   {"max_utterance_s": 1.0}], ids=["max_speech_s", "max_utterance_s"])
def test_continuous_speech_ends_the_turn_at_max_speech(setup: dict[str, Any]) -> None:
    h = Harness(**setup)
    events = h.run([SP] * 32)  # 1.024 s: the first window end at least 1 s after the onset
    assert trace(events) == ["log:started_talking", "log:pause_detected", "start:1"]
    assert log(events, "pause_detected") == {"t": 1.024, "speech_s": 1.024, "speech_end": 1.024,
                                             "reason": "max_speech"}


def test_vad_flow_control_holds_input_back_until_inference_catches_up() -> None:
    h = Harness()
    second = np.zeros(RATE, dtype=np.int16).tobytes()
    assert h.core.offer_audio(second)
    assert h.core.vad_room is False  # 16000 pending: half the high water mark (32000) or more
    assert h.core.offer_audio(second) is False  # 32000 would pass the room left below high water
    assert h.core.receive(AudioIn(second), h.now) is False
    assert h.core.metrics.counters["input_waits"] == 2
    assert h.core.vad.pending_samples == RATE and h.core.samples_in == RATE  # nothing consumed
    assert h.core.history.total == RATE and h.take() == []
    h.probs.extend([SIL] * (RATE // WIN))
    h.feed()  # the worker takes the 31 whole windows and feeds them
    assert h.core.vad.pending_samples == RATE % WIN
    assert h.core.vad_room is True
    assert h.core.offer_audio(second)
    # less than a window pending: a message as long as allowed is always taken (waiting would never end)
    h.probs.extend([SIL] * (RATE // WIN))
    h.feed()
    assert h.core.offer_audio(np.zeros(2 * RATE, dtype=np.int16).tobytes())


def test_bad_audio_is_an_error_and_the_stream_goes_on() -> None:
    h = Harness()
    assert h.core.offer_audio(b"\x01\x02\x03")  # consumed (and dropped): not waiting for room
    events = h.take()
    assert trace(events) == ["error"]
    assert events[0].message == "pcm16 audio must be a whole number of 2-byte samples, got 3 bytes"
    assert h.core.metrics.counters["bad_audio"] == 1 and h.core.samples_in == 0
    assert h.core.state is StreamState.NEW  # bad audio does not fix the formats
    assert h.core.offer_audio(np.zeros(2 * RATE + 1, dtype=np.int16).tobytes())  # longer than max_message_s
    assert trace(h.take()) == ["error"]
    assert h.core.state is StreamState.NEW
    assert h.turn(before=10).args[0][1].size == PREFIX + (10 + PAUSE) * WIN  # and then a turn as usual


def test_start_after_audio_is_refused() -> None:
    h = Harness()
    h.run([SIL])
    events = h.receive(Start(format=AudioFormat(sample_rate=8000), client_id="late"))
    assert trace(events) == ["error"] and "start must come before any audio" in events[0].message
    assert h.core.input_format.sample_rate == RATE and h.core.vad.rate == RATE
    assert h.core.context.client_id is None


def test_start_before_audio_sets_the_format() -> None:
    h = Harness()
    h.receive(Start(format=AudioFormat(encoding="mulaw", sample_rate=8000)))
    assert h.core.vad.rate == 8000 and h.core.vad.window == 256
    assert h.engine._closing != []  # the first VadStream was given back
    assert h.core.state is StreamState.STARTED



def test_reply_frames_are_in_the_output_format_and_paced_by_it() -> None:
    h = Harness(lead_ms=100.0)
    h.receive(Start(output_format=AudioFormat(encoding="mulaw", sample_rate=8000)))
    h.turn()
    events = h.reply(1, (RATE, tone(RATE)), done=False)  # 16 kHz audio: resampled to 8 kHz, then mu-law
    frames = of(events, AudioOut)
    assert {len(f.data) for f in frames} == {160}  # 20 ms of 8 kHz mu-law
    assert 100 <= len(frames) * 20 <= 120  # the lead, counted in the output format's bytes
    assert h.core.deadline is not None


def test_greeting_follows_a_format_set_by_a_second_start() -> None:
    h = Harness(ReplyOnPause(answer, startup_fn=greet))
    assert trace(h.receive(Start())) == ["start:1"]
    # the greeting in flight (old format) is dropped, and starts over in the format asked for now
    assert trace(h.receive(Start(format=AudioFormat(encoding="mulaw", sample_rate=8000)))) == [
        "cancel:1", "ended:1:cancelled", "start:2"]
    assert of(h.reply(1, (RATE, tone(RATE)), done=False), AudioOut) == []  # the old one's items: ignored
    frames = of(h.reply(2, (RATE, tone(RATE)), done=False), AudioOut)
    assert frames and {len(f.data) for f in frames} == {160}

# ---- greeting -------------------------------------------------------------------------------


def test_greeting_starts_on_the_first_audio_exactly_once() -> None:
    h = Harness(ReplyOnPause(answer, startup_fn=greet))
    assert h.push([SIL])
    events = h.take()
    assert trace(events) == ["start:1"]
    assert events[0].fn is greet and events[0].args == () and events[0].kwargs == {}
    h.feed()
    h.run([SIL] * 5)
    h.receive(Start())  # refused: audio came
    assert [e for e in h.take() if isinstance(e, StartReply)] == []


def test_greeting_starts_on_start_exactly_once() -> None:
    h = Harness(ReplyOnPause(answer, startup_fn=greet))
    events = h.receive(Start(client_id="c1"))
    assert trace(events) == ["start:1"] and of(events, StartReply)[0].fn is greet
    assert of(h.receive(Start(client_id="c2")), StartReply) == []  # a second start before audio
    assert of(h.run([SIL] * 5), StartReply) == []
    assert trace(h.reply(1, (RATE, tone(FRAME)))) == ["log:response_starting", "audio", "mark:reply-1",
                                                     "ended:1:played"]


# ---- reply errors ---------------------------------------------------------------------------


def test_a_failed_reply_still_plays_what_it_produced() -> None:
    h = Harness()
    h.turn()
    reply = tone(1760)  # 110 ms: five frames and a half
    events = h.reply(1, (RATE, reply), error=RuntimeError("x")) + h.play()
    assert trace(events) == ["log:response_starting", "audio", "error", "audio", "mark:reply-1", "ended:1:played"]
    assert of(events, Error)[0].message == "reply function failed: RuntimeError: x"
    assert [len(f.data) for f in of(events, AudioOut)] == [2 * FRAME] * 5 + [2 * 160]
    assert audio_bytes(events) == reply.tobytes()
    assert h.core.metrics.counters["reply_errors"] == 1


# ---- the reply context ----------------------------------------------------------------------


def test_reply_context_is_a_live_read_only_view() -> None:
    h = Harness()
    h.receive(Start(client_id="c1", context={"callSid": "CA1"}))
    ctx = h.turn().context
    assert ctx is h.core.context
    assert (ctx.session_id, ctx.client_id, ctx.dialect) == ("t1", "c1", "ws")
    assert isinstance(ctx.call, MappingProxyType) and ctx.call == {"callSid": "CA1"}
    with pytest.raises(TypeError):
        ctx.call["callSid"] = "other"  # type: ignore[index]
    with pytest.raises(AttributeError):
        ctx.marks_sent = ("forged",)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ctx.anything = 1  # type: ignore[attr-defined]
    h.reply(1, (RATE, tone(FRAME)))
    assert ctx.marks_sent == ("reply-1",) and ctx.marks_played == ()
    ctx2 = h.turn().context  # reply 2 is running
    h.receive(MarkPlayed("reply-1"))
    h.receive(Dtmf("5"))
    assert ctx2.marks_played == ("reply-1",) and ctx2.dtmf == ("5",)  # current when read
    assert h.core.context.call == {"callSid": "CA1"}


def test_ping_is_answered() -> None:
    h = Harness()
    assert trace(h.receive(Ping())) == ["pong"]
