"""Barge-in that tells an interruption from a backchannel, and idle prompts: the core's rules, fake clock.

``interrupt_ms`` (ReplyOnPause, default 500): speech over a reply interrupts it
once it has lasted that long; a turn over a reply that ends sooner ("yeah",
"okay") is a backchannel: logged, counted, not answered, the reply goes on.
``idle_prompt_s``: the reply function is called (reason ``idle``, no audio)
once the user has said nothing that long after a reply finished playing.
tests/test_turn_taking_socket.py does both over real sockets with real speech.
"""

from __future__ import annotations

from typing import Any

from test_core import PAUSE, RATE, SIL, SP, WIN, Harness, answer, log, of, tone, trace

from wsstream.core import ReplyState, StartReply
from wsstream.events import Clear
from wsstream.reply import ReplyOnPause

WIN_S = WIN / RATE


def talking(h: Harness, seconds: float = 3.0) -> None:
    """A turn answered, its reply yielding ``seconds`` of audio, still playing."""
    h.turn()
    h.reply(1, (RATE, tone(int(seconds * RATE))), done=True)
    assert h.core.reply_state is ReplyState.DRAINING


def test_short_speech_over_a_reply_is_a_backchannel() -> None:
    h = Harness(ReplyOnPause(answer))  # interrupt_ms 500
    talking(h)
    events = h.run([SP] * 10 + [SIL] * PAUSE)  # 0.32 s: "yeah"
    assert of(events, Clear) == [] and of(events, StartReply) == []
    assert "log:started_talking" in trace(events) and "log:backchannel" in trace(events)
    assert "log:pause_detected" not in trace(events)  # not a turn: nothing is answered
    assert abs(log(events, "backchannel")["speech_s"] - (0.32 + 0.3)) < 0.05  # (prefix padding included)
    assert h.core.reply_state is ReplyState.DRAINING and h.core.metrics.counters["backchannels"] == 1
    assert "interruptions" not in h.core.metrics.counters


def test_speech_over_a_reply_interrupts_once_it_has_lasted_interrupt_ms() -> None:
    h = Harness(ReplyOnPause(answer, interrupt_ms=500))
    talking(h)
    events: list[Any] = []
    for i in range(40):  # noqa: B007 - its value after the loop is the point
        events += h.run([SP])
        if of(events, Clear):
            break
    # 500 ms of speech = 15.6 windows: the clear comes with the 16th window of speech, not before
    assert i + 1 == 16, i + 1
    assert trace(events)[-3:] == ["cancel:1", "ended:1:interrupted", "clear"] or "clear" in trace(events)
    rest = h.run([SP] * 20 + [SIL] * PAUSE)
    (cmd,) = of(rest, StartReply)  # the interruption is a turn: answered when it ends
    assert cmd.seq == 2


def test_interrupt_ms_zero_interrupts_at_started_talking() -> None:
    h = Harness(ReplyOnPause(answer, interrupt_ms=0))
    talking(h)
    events = h.run([SP] * 8)
    assert "clear" in trace(events)


def test_a_turn_that_begins_after_the_reply_is_a_turn_whatever_its_length() -> None:
    h = Harness(ReplyOnPause(answer))
    h.turn()
    h.reply(1, (RATE, tone(RATE // 10)))
    h.play()
    assert h.core.reply_state is ReplyState.IDLE
    events = h.run([SIL] * 20 + [SP] * 10 + [SIL] * PAUSE)  # "yes" after the reply has played: an answer
    assert len(of(events, StartReply)) == 1 and "log:backchannel" not in trace(events)


def test_idle_prompt_once_after_playback() -> None:
    h = Harness(ReplyOnPause(answer, idle_prompt_s=2.0))
    h.turn()
    h.reply(1, (RATE, tone(RATE // 2)))
    h.play()
    played_at = h.core._play_until
    assert h.core.deadline == played_at + 2.0
    events = h.run([SIL] * int(1.9 / WIN_S))
    assert of(events, StartReply) == []
    h.now = h.core.deadline  # (the runner's timer)
    h.core.poll(h.now)
    events = h.take()
    (cmd,) = of(events, StartReply)
    assert cmd.args[0][1].size == 0 and cmd.context.reason == "idle"
    assert "log:idle_prompt" in trace(events)
    h.reply(cmd.seq, (RATE, tone(RATE // 2)))
    h.play()
    assert h.core.deadline is None  # once: no second prompt for the same silence
    h.run([SIL] * int(5 / WIN_S))
    assert h.core.metrics.counters["idle_prompts"] == 1


def test_no_idle_prompt_while_the_user_talks_or_during_a_reply() -> None:
    h = Harness(ReplyOnPause(answer, idle_prompt_s=1.0))
    h.turn()
    h.reply(1, (RATE, tone(RATE // 2)))
    h.play()
    events = h.run([SIL] * 10 + [SP] * 60)  # talking when the prompt would have been due
    assert of(events, StartReply) == [] and h.core.deadline is None
    events = h.run([SIL] * PAUSE)
    (cmd,) = of(events, StartReply)
    assert cmd.context.reason == "turn"
    h.reply(cmd.seq, (RATE, tone(3 * RATE)), done=False)  # a long reply: never an idle prompt during it
    for _ in range(int(2.5 / WIN_S)):
        h.run([SIL])
        h.now = max(h.now, h.core.deadline or h.now)
        h.core.poll(h.now)
    assert of(h.take(), StartReply) == [] and "idle_prompts" not in h.core.metrics.counters


def test_idle_prompt_off_by_default() -> None:
    h = Harness(ReplyOnPause(answer))
    h.turn()
    h.reply(1, (RATE, tone(RATE // 2)))
    h.play()
    assert h.core.deadline is None


# ---- speculative replies ---------------------------------------------------------------------

TENTATIVE = 5  # windows of silence until pause_tentative: 150 ms with speculative replies


def test_a_speculative_reply_starts_at_pause_tentative_and_is_held_until_the_pause() -> None:
    h = Harness(ReplyOnPause(answer, speculative=True))
    events = h.run([SIL] * 5 + [SP] * 30 + [SIL] * (TENTATIVE + 1))
    assert trace(events)[-2:] == ["log:pause_tentative", "start:1"]
    (cmd,) = of(events, StartReply)
    assert cmd.args[0][1].size > 0  # the turn so far
    out = h.reply(1, (RATE, tone(RATE)), done=False)  # it answers at once: nothing goes out yet
    assert "audio" not in trace(out) and h.core.deadline is None
    rest = h.run([SIL] * (PAUSE - TENTATIVE - 1))
    labels = trace(rest)
    assert labels[0] == "log:pause_detected" and "start:2" not in labels  # the same call, now confirmed
    assert labels[1:3] == ["log:response_starting", "audio"]
    assert h.core.metrics.counters["speculative_started"] == 1
    assert h.core.metrics.counters["speculative_used"] == 1


def test_a_speculative_reply_is_cancelled_when_speech_resumes() -> None:
    h = Harness(ReplyOnPause(answer, speculative=True))
    h.run([SIL] * 5 + [SP] * 30 + [SIL] * (TENTATIVE + 1))
    h.reply(1, (RATE, tone(RATE)), done=True)  # (even a reply already complete is only held)
    events = h.run([SP] * 10)  # the speaker goes on
    assert trace(events)[:2] == ["log:pause_cancelled", "ended:1:cancelled"]
    assert "clear" not in trace(events) and "audio" not in trace(events)  # nothing of it had been sent
    assert h.core.metrics.counters["speculative_wasted"] == 1
    more = h.run([SP] * 20 + [SIL] * PAUSE)
    starts = of(more, StartReply)
    assert [c.seq for c in starts] == [2]  # speculated again at the next tentative pause, then confirmed
    assert h.core.metrics.counters["speculative_used"] == 1
