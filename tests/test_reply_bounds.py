"""Bounds on reply functions (issue 13): reply audio converted a slice at a time as it plays, its
sample rate and length bounded, optional timeouts, and the sync pool's saturation warning. The core's
rules on its fake clock (tests/test_core.py's harness); the socket tests are in tests/test_attacks.py
and tests/test_replies.py."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
from test_core import RATE, Harness, audio_bytes, of, tone, trace

from wsstream.codecs import AudioFormat, encode, to_int16
from wsstream.core import CancelReply
from wsstream.events import AudioOut, Error
from wsstream.metrics import Metrics
from wsstream.playout import SLICE_S, FrameEncoder
from wsstream.reply import ReplyPool

FRAMES = 100  # StreamConfig.playout_queue_frames


def test_a_long_chunk_is_converted_as_it_plays_not_at_once() -> None:
    """A minute in one chunk: what is converted ahead of playout stays within the playout queue (plus a
    slice), the function is asked for nothing more until all of it is converted, and all of it plays."""
    h = Harness()
    h.turn()
    reply = tone(60 * RATE)
    events = h.reply(1, (RATE, reply), done=False)
    assert len(h.core._frames) <= FRAMES + 1
    assert not h.core.playout_room  # (the rest of the chunk is still to convert)
    most = 0
    for _ in range(20_000):
        if h.core.playout_room:
            break
        h.now = h.core.deadline
        h.core.poll(h.now)
        events += h.take()
        most = max(most, len(h.core._frames))
    assert h.core.playout_room and most <= FRAMES + 1
    events += h.reply(1) + h.play()
    assert trace(events)[-2:] == ["mark:reply-1", "ended:1:played"]
    assert audio_bytes(events) == reply.tobytes()  # every sample, in order


@pytest.mark.parametrize("shape", ["channels-first", "channels-last", "row", "column"])
def test_sliced_conversion_is_the_conversion_of_the_whole(shape: str) -> None:
    """Slice by slice, a chunk of any accepted shape and type becomes what converting it at once made."""
    mono = tone(3 * RATE + 77).astype(np.float32) / 32768
    arrays = {"channels-first": np.stack([mono, mono / 2]), "channels-last": np.stack([mono, mono / 2], axis=1),
              "row": mono[None, :], "column": mono[:, None]}
    audio = arrays[shape]
    enc = FrameEncoder(AudioFormat())
    frames = enc.take(None) + enc.push(RATE, audio) + enc.flush()
    assert b"".join(frames) == encode(to_int16(audio), "pcm16")


def test_resampling_in_slices_keeps_the_length_and_the_sound() -> None:
    """24 kHz in, 8 kHz mu-law out, in slices of SLICE_S: as many frames as the audio lasts, and the same
    samples (within a rounding) as one resampling of the whole."""
    audio = tone(int(24000 * 5 * SLICE_S) + 123)
    sliced = FrameEncoder(AudioFormat("pcm16", 8000))
    sliced.feed(24000, audio)
    frames = []
    while sliced.queued:
        frames += sliced.take(3)
    frames += sliced.flush()
    whole = FrameEncoder(AudioFormat("pcm16", 8000))
    once = b"".join(whole.push(24000, audio) + whole.flush())
    got = np.frombuffer(b"".join(frames), np.int16).astype(int)
    want = np.frombuffer(once, np.int16).astype(int)
    assert abs(got.size - audio.size / 3) <= 1 and got.size == want.size
    assert np.abs(got - want).max() <= 2


class CountingList(list):
    """A Python list that records the longest slice taken of it (what conversion asked for at once)."""

    longest = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self))
            self.longest = max(self.longest, stop - start)
        return super().__getitem__(index)


def test_a_long_python_list_is_converted_a_slice_at_a_time() -> None:
    """Two minutes given as a Python list (not an ndarray): never converted whole (that would hold the loop
    and the GIL), only slices of at most SLICE_S as it plays, and it plays as the array would, resampled."""
    audio = tone(120 * 24000)
    samples = CountingList(audio.tolist())
    lazy, eager = FrameEncoder(AudioFormat("mulaw", 8000)), FrameEncoder(AudioFormat("mulaw", 8000))
    lazy.feed(24000, samples)
    assert samples.longest <= 1  # (only its first sample, checked on feed)
    frames = []
    while lazy.queued:
        frames += lazy.take(FRAMES)
    frames += lazy.flush()
    assert 0 < samples.longest <= SLICE_S * 24000
    assert b"".join(frames) == b"".join(eager.push(24000, audio) + eager.flush())


def test_a_long_list_bad_part_way_plays_what_came_before_then_warns() -> None:
    """A list whose sample 30,000 is not a number: the slices before the one holding it play (up to
    SLICE_S before it may go with that slice); then a warning, the rest of that chunk dropped, and the
    reply goes on (its next chunk plays, then its mark)."""
    h = Harness()
    h.turn()
    bad: list[object] = tone(4 * RATE).tolist()
    bad[30_000] = "x"
    events = h.reply(1, (RATE, bad), (RATE, tone(320)))
    events += h.play()
    (warning,) = [e for e in events if type(e).__name__ == "Warning"]
    assert warning.message.startswith("reply audio ignored: reply audio samples ")
    played = audio_bytes(events)
    assert played[:16000 * 2] == tone(4 * RATE)[:16000].tobytes()  # (the first slice, before the bad one)
    assert played.endswith(tone(320).tobytes())
    assert trace(events)[-2:] == ["mark:reply-1", "ended:1:played"]


def test_what_a_bad_list_dropped_does_not_count_against_max_reply_s() -> None:
    """4 s as a list, bad at sample 30,000 (found on the first fill: 2.5 s of it dropped), then 2 s more:
    within a 5 s max_reply_s, since only 1.5 s of the list played."""
    h = Harness(max_reply_s=5.0)
    h.turn()
    bad: list[object] = tone(4 * RATE).tolist()
    bad[30_000] = "x"
    events = h.reply(1, (RATE, bad), done=False)
    events += h.reply(1, (RATE, tone(2 * RATE))) + h.play()
    assert not of(events, Error), of(events, Error)
    assert audio_bytes(events) == tone(4 * RATE)[:24000].tobytes() + tone(2 * RATE).tobytes()


def test_a_long_list_shortened_after_it_was_yielded_does_not_hang_playout() -> None:
    """The list is the caller's, read as it plays: emptied after the function was stopped (a timeout; a
    generator's cleanup), what was converted plays, the rest is refused with a warning, and playout ends
    (an empty slice must never loop)."""
    h = Harness(reply_timeout_s=0.5)
    h.turn()
    samples = tone(4 * RATE).tolist()
    events = h.reply(1, (RATE, samples), done=False)
    h.now = h.core.deadline
    h.core.poll(h.now)
    samples.clear()
    events += h.take() + h.play()
    assert any(type(e).__name__ == "Warning" and "shortened after it was yielded" in e.message for e in events)
    assert trace(events)[-2:] == ["mark:reply-1", "ended:1:played"]


@pytest.mark.parametrize("kind", ["nested", "zeros-then-floats", "ints-then-floats"])
def test_long_lists_read_as_the_whole_list_would_be(kind: str) -> None:
    """Lists of rows ((n, 1), (n, 2)) are converted whole, as before; a list of floats that begins with
    integer silence is read as floats throughout; integers (int16's scale) then floats are refused where
    the floats begin, after what came before played."""
    n = 4 * RATE
    mono = tone(n).astype(np.float64) / 32768
    if kind == "nested":
        samples: list = np.stack([mono, mono], axis=1).tolist()
        want = encode(to_int16(np.stack([mono, mono], axis=1)), "pcm16")
    elif kind == "zeros-then-floats":
        samples = [0] * 1000 + mono[1000:].tolist()
        want = encode(to_int16(np.concatenate([np.zeros(1000), mono[1000:]])), "pcm16")
    else:
        samples = tone(RATE).tolist() + mono[RATE:].tolist()
        want = tone(RATE).tobytes()
    enc = FrameEncoder(AudioFormat())
    enc.feed(RATE, samples)
    frames = []
    while enc.queued:
        frames += enc.take(10)
    got = b"".join(frames + enc.flush())
    assert got == want
    assert bool(enc.problems) == (kind == "ints-then-floats")


def test_a_long_list_that_is_not_numbers_is_refused_when_fed() -> None:
    h = Harness()
    h.turn()
    events = h.reply(1, (RATE, ["x"] * (4 * RATE)), (RATE, tone(320))) + h.play()
    (warning,) = [e for e in events if type(e).__name__ == "Warning"]
    assert warning.message == "reply audio ignored: reply audio samples 0..1: reply audio has unsupported dtype <U1"
    assert audio_bytes(events) == tone(320).tobytes()


@pytest.mark.parametrize("rate", [1, 7999, 48001, 10**12, float("inf"), float("nan"), 22050.5, "24000", None, True])
def test_a_reply_rate_out_of_bounds_ends_the_reply_with_an_error(rate: object) -> None:
    h = Harness()
    h.turn()
    events = h.reply(1, (RATE, tone(FRAME := 320)), (rate, np.zeros(2000, np.int16)), done=False)
    errors = of(events, Error)
    assert len(errors) == 1 and errors[0].message.startswith("reply audio refused: ")
    assert errors[0].message.endswith("the reply was stopped")
    assert of(events, CancelReply) == [CancelReply(1)]
    assert not h.core.reply_running(1)
    events += h.play()
    assert audio_bytes(events) == tone(FRAME).tobytes()  # what came before still plays, then its mark
    assert trace(events)[-2:] == ["mark:reply-1", "ended:1:played"]
    assert h.core.metrics.counters["reply_audio_refused"] == 1


@pytest.mark.parametrize("rate", [8000, 48000, np.int64(24000), 22050.0, np.float32(44100)])
def test_reply_rates_within_bounds_play(rate: object) -> None:
    h = Harness()
    h.turn()
    events = h.reply(1, (rate, np.zeros(int(rate) // 10, np.int16))) + h.play()  # type: ignore[call-overload]
    assert not of(events, Error)
    assert abs(len(audio_bytes(events)) - 3200) <= 2 * 32  # 100 ms at 16 kHz (the resampler's edges aside)


def test_a_reply_longer_than_max_reply_s_is_cut_there() -> None:
    h = Harness(max_reply_s=1.0)
    h.turn()
    first, second = tone(int(0.6 * RATE)), tone(int(0.6 * RATE), int(0.6 * RATE))
    events = h.reply(1, (RATE, first), (RATE, second), done=False)
    (error,) = of(events, Error)
    assert error.message == "reply audio refused: a reply may last at most 1 s (max_reply_s); it was cut there"
    assert CancelReply(1) in events
    events += h.play()
    assert audio_bytes(events) == np.concatenate([first, second])[:RATE].tobytes()
    assert trace(events)[-2:] == ["mark:reply-1", "ended:1:played"]


def test_no_audio_within_the_first_chunk_timeout_stops_the_reply() -> None:
    h = Harness(first_chunk_timeout_s=0.5)
    h.turn()
    started = h.now
    assert h.core.deadline == pytest.approx(started + 0.5)
    events = h.reply(1, (RATE, np.zeros(0, np.int16)), done=False)  # (no samples: not yet audio)
    h.now = h.core.deadline
    h.core.poll(h.now)
    events = h.take()
    assert trace(events) == ["error", "cancel:1", "mark:reply-1", "ended:1:played"]
    assert of(events, Error)[0].message == ("reply timed out: no audio within 0.5 s (first_chunk_timeout_s); "
                                            "the reply was stopped")
    assert h.core.metrics.counters["reply_timeouts"] == 1
    assert h.core.deadline is None
    # a reply whose audio comes in time is not stopped
    h.turn()
    h.now += 0.4
    h.reply(2, (RATE, tone(320)), done=False)
    h.now += 5
    h.core.poll(h.now)
    assert not of(h.take(), Error) and h.core.reply_running(2)


def test_a_timeout_is_logged_once_for_a_dialect_that_sends_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The core logs a reply it ends (timeout, refusal) as it happens; the runner's log of what a dialect
    cannot send (Twilio takes no error messages) does not log that error a second time, but still logs
    the errors the core did not."""
    from types import SimpleNamespace

    from wsstream.runner import log_unsent

    caplog.set_level(logging.WARNING, logger="wsstream")
    h = Harness(first_chunk_timeout_s=0.5)
    h.turn()
    h.reply(1, (RATE, np.zeros(0, np.int16)), done=False)
    h.now = h.core.deadline
    h.core.poll(h.now)
    runner = SimpleNamespace(core=h.core, id="s1")
    for event in [*h.take(), Error("reply function failed: ValueError: x")]:
        log_unsent(runner, event)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("reply timed out" in line for line in lines) == 1, lines
    assert sum("reply function failed" in line for line in lines) == 1, lines
    # a function that raised: the runner logged it (with its traceback), so the error says so
    h.turn()
    h.reply(2, (RATE, tone(320)), done=False)
    h.core.reply_done(2, h.now, ValueError("bad"), logged=True)
    (error,) = of(h.take(), Error)
    assert error.message == "reply function failed: ValueError: bad" and error.logged


def test_a_function_still_running_after_the_reply_timeout_is_stopped_and_its_audio_plays_out() -> None:
    h = Harness(reply_timeout_s=2.0)
    h.turn()
    started = h.now
    reply = tone(int(1.5 * RATE))
    events = h.reply(1, (RATE, reply), done=False)
    while h.core.deadline is not None and h.core.deadline < started + 2.0 - 1e-9:  # pacing its audio
        h.now = h.core.deadline
        h.core.poll(h.now)
        events += h.take()
    assert h.core.reply_running(1)
    h.now = started + 2.0
    h.core.poll(h.now)
    events += h.take() + h.play()
    (error,) = of(events, Error)
    assert error.message.startswith("reply timed out: its function was still running after 2 s (reply_timeout_s)")
    assert CancelReply(1) in events and audio_bytes(events) == reply.tobytes()
    assert trace(events)[-2:] == ["mark:reply-1", "ended:1:played"]
    h.reply(1)  # (the runner's late word of its end changes nothing)
    assert h.core.metrics.counters["reply_timeouts"] == 1


async def test_the_pool_warns_once_each_time_it_runs_full(caplog: pytest.LogCaptureFixture) -> None:
    """Saturated, then many replies waiting: one warning and one count; once a thread has gone idle and
    the pool runs full again, one more."""
    metrics = Metrics()
    pool = ReplyPool(1, wait_s=5.0, metrics=metrics)
    caplog.set_level(logging.WARNING, "wsstream.reply")

    async def episode() -> None:
        lane = await pool.acquire()
        lane.submit(time.sleep, 0.2)
        lane.release()
        waiters = [asyncio.create_task(pool.acquire()) for _ in range(5)]
        for waiter in waiters:  # each one in turn, handed on as the one before gives it back
            (await waiter).release()
        await asyncio.sleep(0.05)  # (the last release has come back: the thread is idle)

    await episode()
    warnings = [r for r in caplog.records if "reply threads are busy" in r.getMessage()]
    assert len(warnings) == 1 and metrics.counters["reply_pool_saturations"] == 1
    assert "--reply-threads" in warnings[0].getMessage()
    await episode()
    warnings = [r for r in caplog.records if "reply threads are busy" in r.getMessage()]
    assert len(warnings) == 2 and metrics.counters["reply_pool_saturations"] == 2
    pool.close()


def test_audio_frames_keep_their_length() -> None:
    """(The frames made a slice at a time are whole frames, but for the last.)"""
    h = Harness()
    h.turn()
    events = h.reply(1, (24000, tone(24000 * 3 + 5))) + h.play()
    sizes = [len(e.data) for e in of(events, AudioOut)]
    assert set(sizes[:-1]) == {640} and 0 < sizes[-1] <= 640


def test_a_greeting_started_by_the_first_audio_times_out_from_then() -> None:
    """(The first audio message starts the greeting: its first-chunk timeout counts from that message.)"""
    from test_core import answer, greet

    from wsstream.core import StartReply
    from wsstream.reply import ReplyOnPause

    h = Harness(ReplyOnPause(answer, startup_fn=greet), first_chunk_timeout_s=0.5)
    h.now = 1000.0
    assert h.core.offer_audio(np.zeros(320, np.int16).tobytes(), h.now)
    assert of(h.take(), StartReply)[0].fn is greet
    assert h.core.deadline == pytest.approx(1000.5)
    h.core.poll(1000.4)
    assert not of(h.take(), Error)
    h.core.poll(1000.5)
    assert of(h.take(), Error)[0].message.startswith("reply timed out: no audio within 0.5 s")
