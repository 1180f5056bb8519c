"""Twilio Media Streams on ``/telephone/handler``, with a scripted Twilio peer (tests/twilio_peer.py).

The main scenario runs once per module against a real ``wsstream serve``
process (default echo handler, default 160 ms lead), with several calls at
once so that the real-time audio costs ~30 s of wall time in total:

* half-duplex calls (μ-law, and one A-law bridge): the caller says a turn,
  then the line carries silence until the reply has played and Twilio has
  echoed its mark, then the next turn;
* a full-duplex call whose caller talks over each reply (barge-in).

Smaller in-process tests cover the reply context (call, DTMF, played marks),
``stop`` (hang-up), and malformed input.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
from conftest import ServerProcess, load_corpus
from twilio_peer import FRAME_S, TwilioPeer, ahead_of_realtime

from wsstream.codecs import encode
from wsstream.dialects.twilio import TwilioDialect
from wsstream.events import (
    AudioOut,
    Clear,
    Close,
    Error,
    FetchOutput,
    Log,
    Mark,
    Pong,
    Refused,
    VadTrace,
    Warning,
)
from wsstream.reply import ReplyOnPause, current_context

# every socket test here runs over both drivers: our transport and the ASGI one under uvicorn
BOTH_DRIVERS = True

RATE = 8000
FRAME = 160
LEAD = 0.16
JITTER = 0.05  # scheduling jitter allowed on top of the lead and one frame (client and server loops)
# The ASGI driver runs the same pacing rules (tests/test_core.py checks them exactly), but every frame goes
# through uvicorn and Starlette on a coroutine of its own: on a loaded 2-core CI machine its delivery was
# seen 64 ms late once (ours: never past 50). Its bound is wider by that much, and named here, not hidden.
JITTER_BY_DRIVER = {"native": JITTER, "asgi": 0.1}
PREFIX = 0.3  # prefix_padding_ms: the echo starts this much before the turn
ONSET_TOL = 0.25  # the detected onset vs the labelled turn start (half duplex: only early, see echo_starts_ok)
HALF_DUPLEX = {"dialog_00.flac": 2, "dialog_01.flac": 2, "dialog_02.flac": 1, "dialog_03.flac": 1,
               "dialog_04.flac": 2, "dialog_07.flac": 2}
ALAW = ("dialog_05.flac", 2)
BARGE_IN = ("dialog_06.flac", 3)


def turns_s(manifest: dict[str, Any], name: str) -> list[tuple[float, float]]:
    sr = manifest["sample_rate"]
    return [(t["start"] / sr, t["end"] / sr) for t in manifest["files"][name]["turns"]]


def sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:032x}"


class Call:
    """One scripted call and what the test needs to judge it."""

    def __init__(self, name: str, n_turns: int, mode: str, encoding: str, peer: TwilioPeer,
                 turns: list[tuple[float, float]]) -> None:
        self.name, self.n_turns, self.mode, self.encoding, self.peer = name, n_turns, mode, encoding, peer
        self.turns = turns[:n_turns]
        self.turn_wall: list[tuple[float, float]] = []  # wall times at which each turn's start / end was sent
        self.segments: list[tuple[int, int, int]] = []  # corpus audio sent: (offset sent, offset in file, bytes)
        self.close_code: int | None = None


async def run_call(url: str, name: str, n_turns: int, mode: str, encoding: str, manifest: dict, n: int) -> Call:
    law = "alaw" if encoding == "audio/x-alaw" else "mulaw"
    wire = encode(load_corpus(name, RATE), law)
    all_turns = turns_s(manifest, name)
    peer = TwilioPeer(url + "/telephone/handler", stream_sid=sid("MZ", n), call_sid=sid("CA", n),
                      encoding=encoding, custom={"file": name})
    call = Call(name, n_turns, mode, encoding, peer, all_turns)
    cut_end = all_turns[n_turns][0] - 0.35 if n_turns < len(all_turns) else len(wire) / RATE
    # between turns the line carries the call's own room tone (the file's first 0.3 s), as a real line does
    peer.filler = wire[:int(0.3 * RATE) // FRAME * FRAME]
    async with peer:
        if mode == "half":
            pos = 0
            for i, (_start, _end) in enumerate(call.turns):
                cut = all_turns[i + 1][0] - 0.35 if i + 1 < len(all_turns) else len(wire) / RATE
                t_send = peer.now() - pos / RATE  # wall time of sample 0 of this segment's timeline
                call.segments.append((len(peer.sent), pos, int(cut * RATE) - pos))
                await peer.send_audio(wire[pos:int(cut * RATE)])
                call.turn_wall.append((t_send + _start, t_send + _end))
                pos = int(cut * RATE)
                await peer.send_silence_until(lambda p, k=i + 1: len(p.marks_echoed) >= k)
        else:
            # full duplex: the caller goes on talking whatever the server plays
            t_send = peer.now()
            call.segments.append((0, 0, int(cut_end * RATE)))
            await peer.send_audio(wire[:int(cut_end * RATE)])
            call.turn_wall = [(t_send + s, t_send + e) for s, e in call.turns]
            await peer.send_silence_until(lambda p: len(p.replies) >= n_turns and p.replies[-1].ended_by == "mark")
            await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1)
        await peer.stop()
        call.close_code = await peer.wait_closed(5.0)
    return call


@pytest.fixture(scope="module")
def calls(manifest: dict[str, Any], driver: str) -> dict[str, Any]:
    server = ServerProcess("--log-level", "DEBUG", driver=driver)  # turn events are logged at DEBUG
    try:
        async def all_calls() -> list[Call]:
            jobs = [run_call(server.url, name, k, "half", "audio/x-mulaw", manifest, i)
                    for i, (name, k) in enumerate(HALF_DUPLEX.items())]
            jobs.append(run_call(server.url, ALAW[0], ALAW[1], "half", "audio/x-alaw", manifest, 100))
            jobs.append(run_call(server.url, BARGE_IN[0], BARGE_IN[1], "full", "audio/x-mulaw", manifest, 200))
            return list(await asyncio.gather(*jobs))

        t0 = time.monotonic()
        result = asyncio.run(all_calls())
        wall = time.monotonic() - t0
        with urllib.request.urlopen(server.url.replace("ws://", "http://") + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        server.close()
    return {"calls": result, "wall": wall, "metrics": metrics, "log": "".join(server.output),
            "jitter": JITTER_BY_DRIVER[driver]}


def half_calls(calls: dict[str, Any]) -> list[Call]:
    return [c for c in calls["calls"] if c.mode == "half"]


def normalise(data: bytes, encoding: str) -> bytes:
    # μ-law has two codes for zero (0x7F, 0xFF); decoding and re-encoding maps -0 to +0
    return data.replace(b"\x7f", b"\xff") if encoding == "audio/x-mulaw" else data


def echo_offset_s(call: Call, reply_audio: bytes) -> float:
    """Where in the corpus file this reply's audio starts (s); fails unless it is the caller's audio, exactly."""
    body = normalise(reply_audio[:-FRAME], call.encoding)  # the last frame is padded
    sent = normalise(bytes(call.peer.sent), call.encoding)
    assert len(body) >= 20 * FRAME, f"{call.name}: reply too short to identify ({len(body)} bytes)"
    at = sent.find(body)
    assert at >= 0, f"{call.name}: reply audio is not the caller's own audio, byte for byte"
    # from the byte stream sent (corpus segments with line silence between them) back to corpus time
    for sent_off, file_off, n in call.segments:
        if sent_off <= at < sent_off + n:
            return (file_off + at - sent_off) / RATE
    raise AssertionError(f"{call.name}: reply starts in the line silence between turns")


def echo_starts_ok(at: float, start: float) -> bool:
    """A half-duplex echo starts at the detected onset minus the prefix: about ``start - PREFIX``, never
    after the labelled turn start, so the caller's first word is always in it.

    The onset may be detected up to about min_speech (250 ms) late: speech whose first windows are broken
    by one below neg_threshold is dropped and counted again from after it (test_detector's
    test_onset_dropped_below_neg_threshold). Whether that happens depends on where the 32 ms VAD windows
    fall in the turn, which in a half-duplex call depends on how many filler frames were sent before it,
    i.e. on timing: dialog_04's second turn starts 0.26 s late for one window alignment in eight, 0.01 s
    for most. The prefix padding covers such a late onset; that, not a symmetric tolerance, is the bound.
    """
    return start - PREFIX - ONSET_TOL <= at <= start


# ---- every message, every call ------------------------------------------------


def test_scenario_wall_time(calls: dict[str, Any]) -> None:
    assert calls["wall"] < 45, f"real-time calls took {calls['wall']:.1f} s"


def test_only_media_mark_clear_with_the_stream_sid(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        out = call.peer.outbound()
        assert out, call.name
        for msg in out:
            event = msg.get("event")
            assert event in ("media", "mark", "clear"), (call.name, msg)
            assert msg["streamSid"] == call.peer.stream_sid, (call.name, msg)
            if event == "media":
                assert set(msg) == {"event", "streamSid", "media"} and set(msg["media"]) == {"payload"}, msg
            elif event == "mark":
                assert set(msg) == {"event", "streamSid", "mark"} and isinstance(msg["mark"]["name"], str), msg
            else:
                assert set(msg) == {"event", "streamSid"}, msg


def test_every_payload_is_one_160_byte_frame(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        sizes = [len(base64.b64decode(m["media"]["payload"])) for m in call.peer.outbound() if m["event"] == "media"]
        assert sizes and set(sizes) == {FRAME}, (call.name, sorted(set(sizes)))


def test_never_more_than_the_lead_ahead_of_real_time(calls: dict[str, Any]) -> None:
    bound = LEAD + FRAME_S + calls["jitter"]
    for call in calls["calls"]:
        for reply in call.peer.replies:
            ahead = ahead_of_realtime(reply)
            assert ahead <= bound, f"{call.name}: a reply ran {ahead:.3f} s ahead of real time"
            # and it did use the lead: a paced stream, not one frame per frame-time with no cushion
            if len(reply.frames) > 20:
                assert ahead >= LEAD - 0.03, f"{call.name}: only {ahead:.3f} s ahead; lead not used"
        # the same from Twilio's side: its playback buffer never held more than the lead (+ the newest frame)
        assert call.peer.max_buffered <= bound, (call.name, call.peer.max_buffered)


def test_replies_are_paced_not_burst(calls: dict[str, Any]) -> None:
    """Over a long reply, frames arrive at real time: duration of arrival ~ duration of audio - lead."""
    for call in half_calls(calls):
        for reply in call.peer.replies:
            audio_s = len(reply.frames) * FRAME_S
            spread = reply.frames[-1][0] - reply.first
            jitter = calls["jitter"]
            assert audio_s - LEAD - FRAME_S - jitter <= spread <= audio_s - LEAD + jitter, \
                (call.name, audio_s, spread)


def test_stop_closes_each_call(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        assert call.close_code == 1000, (call.name, call.close_code)


# ---- half duplex: every turn answered, with a mark ---------------------------


def test_each_turn_answered_with_its_echo_then_a_mark(calls: dict[str, Any]) -> None:
    for call in half_calls(calls):
        peer = call.peer
        assert len(peer.replies) == call.n_turns, (call.name, len(peer.replies))
        assert not [m for m in peer.outbound() if m["event"] == "clear"], call.name
        for reply, (start, end) in zip(peer.replies, call.turns, strict=True):
            assert reply.ended_by == "mark" and reply.mark, (call.name, reply.ended_by)
            # the echo is the caller's own utterance, from the prefix padding before the turn ...
            at = echo_offset_s(call, reply.audio)
            assert echo_starts_ok(at, start), (call.name, at, start)
            # ... through the end of the turn and the pause that ended it (judged at the echo's end, in the
            # file's time, so that a late onset does not count against the end)
            dur = len(reply.audio) / RATE
            assert end + 0.4 <= at + dur <= end + 1.0, (call.name, at + dur, end)
            assert dur <= end - start + PREFIX + 1.0, (call.name, dur, end - start)


def test_marks_follow_replies_and_are_distinct(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        events = [m["event"] for m in call.peer.outbound()]
        marks = [m["mark"]["name"] for m in call.peer.outbound() if m["event"] == "mark"]
        assert len(marks) == len(set(marks)) == sum(r.ended_by == "mark" for r in call.peer.replies)
        assert events[0] == "media", (call.name, events[:3])  # nothing marked before any audio
        for prev, cur in itertools.pairwise(events):
            assert not (prev == "mark" and cur in ("mark", "clear")), (call.name, "mark without audio before it")
        # each mark came straight after its reply's last frame
        for reply in call.peer.replies:
            if reply.ended_by == "mark":
                assert reply.end_wall is not None and reply.end_wall - reply.frames[-1][0] < 0.05
        assert call.peer.marks_echoed == marks, call.name


def test_reply_latency_after_the_turn(calls: dict[str, Any]) -> None:
    """First reply frame after the turn's last sample: the 600 ms pause plus a little."""
    latencies = []
    for call in half_calls(calls):
        for reply, (_, end_wall) in zip(call.peer.replies, call.turn_wall, strict=True):
            latency = reply.first - end_wall
            assert 0.5 <= latency <= 0.9, (call.name, round(latency, 3))
            latencies.append(latency)
    assert np.median(latencies) <= 0.78, latencies


def test_alaw_bridge_end_to_end(calls: dict[str, Any]) -> None:
    """``audio/x-alaw`` in the start: A-law in, A-law out (the echo matches the A-law bytes sent)."""
    call = next(c for c in calls["calls"] if c.encoding == "audio/x-alaw")
    assert len(call.peer.replies) == call.n_turns
    for reply, (start, _) in zip(call.peer.replies, call.turns, strict=True):
        assert echo_starts_ok(echo_offset_s(call, reply.audio), start), start
        # the last frame: the rest of the utterance, then padding with A-law silence (0xD5), not μ-law's 0xFF
        body, last = reply.audio[:-FRAME], reply.audio[-FRAME:]
        at = bytes(call.peer.sent).find(body) + len(body)
        rest = bytes(call.peer.sent)[at:at + FRAME]
        k = next((i for i in range(FRAME) if last[i] != rest[i]), FRAME)
        assert set(last[k:]) <= {0xD5}, last[k:]
    # and μ-law bytes would not have matched: the two laws disagree on almost every code
    sample = load_corpus(ALAW[0], RATE)[8000:16000]
    assert np.mean(np.frombuffer(encode(sample, "alaw"), np.uint8)
                   == np.frombuffer(encode(sample, "mulaw"), np.uint8)) < 0.1


# ---- barge-in ------------------------------------------------------------------


def test_barge_in_clears_and_the_old_reply_stops(calls: dict[str, Any]) -> None:
    call = next(c for c in calls["calls"] if c.mode == "full")
    peer = call.peer
    replies = peer.replies
    assert [r.ended_by for r in replies] == ["clear"] * (call.n_turns - 1) + ["mark"], \
        [r.ended_by for r in replies]
    for k, reply in enumerate(replies[:-1]):
        next_start, next_end = call.turn_wall[k + 1]
        # cut off soon after the caller starts talking again (min speech 250 ms + detection)
        assert reply.end_wall is not None
        assert 0.2 <= reply.end_wall - next_start <= 0.8, (k, reply.end_wall - next_start)
        # it really was cut: less audio than the whole echo would have been
        full = call.turns[k][1] - call.turns[k][0] + PREFIX + 0.5
        assert len(reply.audio) / RATE < full
        # nothing of the old reply after the clear: the next audio is the next reply, only after its turn ended
        nxt = replies[k + 1]
        assert nxt.first >= next_end + 0.5, (k, nxt.first - next_end)
        assert abs(echo_offset_s(call, nxt.audio) - (call.turns[k + 1][0] - PREFIX)) <= ONSET_TOL
    for reply, (start, _) in zip(replies, call.turns, strict=True):
        assert abs(echo_offset_s(call, reply.audio) - (start - PREFIX)) <= ONSET_TOL


def test_what_the_caller_still_hears_after_clear_is_within_the_lead(calls: dict[str, Any]) -> None:
    call = next(c for c in calls["calls"] if c.mode == "full")
    assert len(call.peer.cleared) == call.n_turns - 1
    for left in call.peer.cleared:
        assert left <= LEAD + FRAME_S + calls["jitter"], left


# ---- logs and metrics stay off the wire ----------------------------------------


def test_log_events_go_to_the_server_log_and_metrics(calls: dict[str, Any]) -> None:
    n_turns = sum(c.n_turns for c in calls["calls"])
    metrics = dict(line.split() for line in calls["metrics"].splitlines() if not line.startswith("#"))
    assert float(metrics["wsstream_events_pause_detected_total"]) == n_turns, metrics
    assert float(metrics["wsstream_events_response_starting_total"]) == n_turns
    assert float(metrics["wsstream_interruptions_total"]) == BARGE_IN[1] - 1
    assert not any(name.startswith("wsstream_protocol_errors") for name in metrics)
    log = calls["log"]
    for call in calls["calls"]:
        assert f"twilio stream {call.peer.stream_sid}: pause_detected" in log
        assert f"twilio stream {call.peer.stream_sid}: started: call {call.peer.call_sid}" in log
    assert "alaw 8000 Hz" in log


# ---- in-process: context, DTMF, marks, stop, bad input -------------------------


def tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


async def test_reply_context_call_dtmf_and_marks_played(make_server: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def reply(audio: tuple[int, np.ndarray]):
        ctx = current_context()
        seen.append({"call": dict(ctx.call), "dtmf": list(ctx.dtmf), "played": list(ctx.marks_played),
                     "sent": list(ctx.marks_sent), "dialect": ctx.dialect, "rate": audio[0]})
        yield 16000, tone(16000, 0.31)  # 16 kHz reply: resampled to 8 kHz, 15.5 frames -> 16, padded

    server = await make_server(ReplyOnPause(fn=reply))
    wire = encode(load_corpus("dialog_06.flac", RATE), "mulaw")
    async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler",
                          custom={"caller": "+15550100", "lang": "en"}) as peer:
        await peer.send_audio(wire[:int(4.4 * RATE)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.dtmf("1")
        await peer.dtmf("#")
        await peer.send_audio(wire[int(4.4 * RATE):int(8.8 * RATE)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 2, within=15)
        await peer.stop()
        assert await peer.wait_closed() == 1000
    assert len(seen) == 2
    first, second = seen
    assert first["dialect"] == "twilio" and first["rate"] == RATE
    assert first["call"]["streamSid"] == peer.stream_sid and first["call"]["callSid"] == peer.call_sid
    assert first["call"]["customParameters"] == {"caller": "+15550100", "lang": "en"}
    assert first["call"]["mediaFormat"]["encoding"] == "audio/x-mulaw"
    assert first["dtmf"] == [] and first["played"] == []
    assert second["dtmf"] == ["1", "#"]
    assert second["played"] == [peer.marks_echoed[0]] == second["sent"]
    for r in peer.replies:
        assert [len(p) for _, p in r.frames] == [FRAME] * 16
        assert r.audio[-40:] == b"\xff" * 40  # zero padding at the end of the last frame
    assert server.metrics.counters["twilio_dtmf"] == 2


async def test_stop_hangs_up_cancels_the_reply_and_leaves_nothing_running(make_server: Any) -> None:
    state: dict[str, Any] = {"cancelled": False, "finished": False}

    async def slow(audio: tuple[int, np.ndarray]):
        try:
            yield RATE, tone(RATE, 0.2)
            await asyncio.sleep(30)  # a reply that takes its time (an LLM, a TTS ...)
            yield RATE, tone(RATE, 0.2)
            state["finished"] = True
        except (asyncio.CancelledError, GeneratorExit):
            state["cancelled"] = True
            raise

    server = await make_server(ReplyOnPause(fn=slow))
    wire = encode(load_corpus("dialog_06.flac", RATE), "mulaw")
    async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler") as peer:
        await peer.send_audio(wire[:int(4.4 * RATE)], realtime=False)
        await peer.wait_for(lambda p: len(p.replies) == 1 and len(p.replies[0].frames) >= 10, within=10)
        t_stop = time.monotonic()
        await peer.stop()
        assert await peer.wait_closed(2.0) == 1000
        assert time.monotonic() - t_stop < 0.5
    n_after = sum(1 for t, _ in peer.messages if t > t_stop - peer.t0 + 0.05)
    assert n_after == 0, "server kept sending after stop"
    for _ in range(100):
        if server.active == 0:
            break
        await asyncio.sleep(0.02)
    assert server.active == 0
    assert state == {"cancelled": True, "finished": False}
    leftovers = [t for t in asyncio.all_tasks()
                 if getattr(t.get_coro(), "__qualname__", "").startswith("StreamRunner.")]
    assert leftovers == [], leftovers


async def test_bad_messages_are_logged_and_counted_never_fatal(make_server: Any, caplog: Any) -> None:
    from wsstream.echo import echo

    server = await make_server(ReplyOnPause(fn=echo))
    wire = encode(load_corpus("dialog_06.flac", RATE), "mulaw")
    bad: list[str | bytes] = [
        "not json",
        b"\x00\x01binary",
        json.dumps([1, 2]),
        json.dumps({"event": "media", "streamSid": "x", "media": {"track": "inbound"}}),
        json.dumps({"event": "media", "streamSid": "x", "media": {"payload": "%%% not base64"}}),
        json.dumps({"event": "mark", "mark": {}}),
        json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track"}}),
    ]
    caplog.set_level(logging.INFO, logger="wsstream")
    async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler") as peer:
        for message in bad:
            await peer.send_raw(message)
        await peer.send_raw(json.dumps({"event": "something_new", "streamSid": peer.stream_sid}))
        # an outbound-track frame (both_tracks streams) is not the caller's voice: ignored
        await peer.send({"event": "media", "streamSid": peer.stream_sid, "media": {
            "track": "outbound", "chunk": "1", "timestamp": "0", "payload": base64.b64encode(b"\x00" * 160).decode()}})
        await peer.send_audio(wire[:int(4.4 * RATE)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.stop()
        assert await peer.wait_closed() == 1000
    assert len(peer.replies) == 1 and peer.replies[0].ended_by == "mark"
    assert {m["event"] for m in peer.outbound()} == {"media", "mark"}  # no error text reached "Twilio"
    counters = server.metrics.counters
    assert counters["protocol_errors"] == len(bad)
    assert counters["twilio_unknown_events"] == 1
    assert counters["twilio_media_other_track"] == 1
    warnings = [r.getMessage() for r in caplog.records
                if r.name.startswith("wsstream.") and "twilio stream" in r.getMessage()
                and r.levelno >= logging.WARNING]
    assert len(warnings) == len(bad) + 1, warnings
    assert any("invalid JSON" in w for w in warnings) and any("something_new" in w for w in warnings)


async def test_unsupported_media_format_is_not_fatal(make_server: Any, caplog: Any) -> None:
    from wsstream.echo import echo

    server = await make_server(ReplyOnPause(fn=echo))
    wire = encode(load_corpus("dialog_06.flac", RATE), "mulaw")
    peer = TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler", encoding="audio/x-opus")
    async with peer:
        await peer.send_audio(wire[:int(4.4 * RATE)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
    assert server.metrics.counters["twilio_bad_media_format"] == 1
    assert any("audio/x-opus" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_dialect_sends_nothing_but_media_mark_clear() -> None:
    dialect = TwilioDialect()
    assert dialect.serialize(AudioOut(b"\xff" * 160)) is None  # no streamSid yet: nothing to address
    dialect.parse(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000,
                                                             "channels": 1}}}))
    for event in (Log("pause_detected", {"t": 1.0}), VadTrace([0.1], 0.0), FetchOutput(["x"]),
                  Refused("concurrency_limit_reached", 1),
                  Error("bad"), Warning("careful"), Pong(), Close(1000)):
        assert dialect.serialize(event) is None, event
    assert json.loads(dialect.serialize(AudioOut(b"\xd5" * 160))) == {  # type: ignore[arg-type]
        "event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(b"\xd5" * 160).decode()}}
    assert json.loads(dialect.serialize(Mark("reply-1"))) == {  # type: ignore[arg-type]
        "event": "mark", "streamSid": "MZ1", "mark": {"name": "reply-1"}}
    assert json.loads(dialect.serialize(Clear())) == {"event": "clear", "streamSid": "MZ1"}  # type: ignore[arg-type]
