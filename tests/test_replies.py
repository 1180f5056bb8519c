"""The ReplyOnPause API over real sockets to an in-process server: barge-in, inputs, outputs."""

from __future__ import annotations

import asyncio

import handlers
import numpy as np
import pytest
from conftest import load_corpus
from wsclient import Conversation

from vad.detector import DetectorOptions
from wsstream.codecs import AudioFormat
from wsstream.echo import echo
from wsstream.reply import ReplyOnPause

FMT = AudioFormat("pcm16", 16000)


def turn_audio(manifest: dict, name: str, index: int, after_s: float = 1.0) -> np.ndarray:
    """A turn of a corpus file with 0.4 s before it and ``after_s`` of the following gap."""
    turn = manifest["files"][name]["turns"][index]
    audio = load_corpus(name)
    return audio[max(turn["start"] - 6400, 0):turn["end"] + int(after_s * 16000)]


@pytest.mark.parametrize("fn", [handlers.long_sync, handlers.long_async], ids=["sync", "async"])
async def test_barge_in_stops_reply_runs_finally_and_next_turn_is_answered(
        make_server, manifest: dict, fn) -> None:
    server = await make_server(ReplyOnPause(fn=fn))
    kind = "sync" if fn is handlers.long_sync else "async"
    tag = f"barge-in-{kind}"  # an input the handler records in its finally: no mix-up with other tests
    first = turn_audio(manifest, "dialog_00.flac", 0)
    second = turn_audio(manifest, "dialog_00.flac", 2)
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT, extra_start={"inputs": [tag]}) as conv:
        await conv.send_audio(first)
        await conv.wait_for(lambda c: c.replies and len(c.replies[0].audio) > 24000)  # reply is playing
        assert (kind, tag) not in handlers.FINALLY
        # the user speaks again, in real time, over the 10 s reply
        await conv.send_audio(second, speed=1.0)
        await conv.wait_for(lambda c: c.of("event", "clear"))
        clear_t = conv.of("event", "clear")[0]["wall"]
        await conv.wait_for(lambda c: len(c.logs("response_starting")) == 2)
        # barge-in happened at the second started_talking, before the reply could finish
        seen = [(e.get("data") or e.get("event"), round(e["wall"], 3)) for e in conv.events]
        starts = conv.logs("started_talking")
        assert len(starts) == 2 and starts[1]["wall"] <= clear_t, seen
        assert conv.replies[0].ended_by == "clear", seen
        assert len(conv.replies[0].audio) < 10 * 16000 * 2, seen  # cut short
        # no audio of the old reply after clear: every later frame belongs to the new reply
        assert all(t <= clear_t for t, _ in conv.replies[0].chunks), seen
        assert len(conv.replies) == 2 and conv.replies[1].started > clear_t, (seen, len(conv.replies))
        # the interrupted generator's finally ran, once (the second reply is still playing)
        for _ in range(50):
            if (kind, tag) in handlers.FINALLY:
                break
            await asyncio.sleep(0.02)
        assert handlers.FINALLY.count((kind, tag)) == 1, handlers.FINALLY
    assert len(conv.logs("pause_detected")) == 2


async def test_no_interrupt_ignores_speech_during_reply(make_server, manifest: dict) -> None:
    app = ReplyOnPause(fn=handlers.long_async, options=DetectorOptions(can_interrupt=False))
    server = await make_server(app, )
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT) as conv:
        await conv.send_audio(turn_audio(manifest, "dialog_00.flac", 0))
        await conv.wait_for(lambda c: c.replies and c.replies[0].audio)
        await conv.send_audio(turn_audio(manifest, "dialog_00.flac", 2), speed=1.0)
        assert not conv.of("event", "clear")
        assert len(conv.logs("started_talking")) == 1


async def test_inputs_outputs_context_and_trigger(make_server, manifest: dict) -> None:
    server = await make_server(ReplyOnPause(fn=handlers.recording))
    handlers.CALLS.clear()
    url = f"ws://127.0.0.1:{server.port}/ws"
    async with Conversation(url, FMT, extra_start={"id": "client-7", "inputs": ["en", 3]}) as conv:
        await conv.send_audio(turn_audio(manifest, "dialog_01.flac", 1))
        await conv.wait_for(lambda c: c.of("type", "fetch_output"))
        out = conv.of("type", "fetch_output")[0]
        pause = conv.logs("pause_detected")[0]
        assert out["data"] == ["heard", round(pause["speech_s"], 2)]
        await conv.wait_for(lambda c: c.of("event", "mark"))
        # new inputs apply from the next reply on
        await conv.send_json({"event": "input", "data": {"voice": "alto"}})
        audio = turn_audio(manifest, "dialog_01.flac", 2, after_s=0.0)
        await conv.send_audio(audio[: audio.size // 2])  # mid-turn: no pause yet
        await conv.wait_for(lambda c: len(c.logs("started_talking")) == 2)
        await asyncio.sleep(0.3)
        await conv.send_json({"event": "trigger"})
        await conv.wait_for(lambda c: len(c.of("event", "mark")) == 2)
        assert conv.logs("pause_detected")[1]["reason"] == "forced"
        await conv.send_json({"event": "trigger"})
        await conv.wait_for(lambda c: c.of("type", "warning"))
    first, second = handlers.CALLS
    assert first["args"] == ("en", 3) and first["kwargs"] == {} and first["client_id"] == "client-7"
    assert first["rate"] == 16000 and first["dtype"] == "int16"
    assert abs(first["samples"] - pause["speech_s"] * 16000) <= 1
    assert second["args"] == () and second["kwargs"] == {"voice": "alto"}
    assert second["session"] == first["session"]


async def test_send_input_is_answered_in_band_on_ws(make_server, manifest: dict) -> None:
    """/ws with input_wait_s: each reply asks (send_input) and is called with what the client then sends."""
    server = await make_server(ReplyOnPause(fn=handlers.recording, input_wait_s=5.0))
    handlers.CALLS.clear()
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT) as conv:
        for k, voice in enumerate(("alto", "bass")):
            await conv.send_audio(turn_audio(manifest, "dialog_01.flac", k + 1))
            await conv.wait_for(lambda c, k=k: len(c.of("type", "send_input")) == k + 1)
            assert len(handlers.CALLS) == k  # asked: the function waits for the answer
            await conv.send_json({"event": "input", "data": {"voice": voice}})
            await conv.wait_for(lambda c, k=k: len(c.of("event", "mark")) == k + 1)
    assert [call["kwargs"] for call in handlers.CALLS] == [{"voice": "alto"}, {"voice": "bass"}]
    assert server.metrics.count("inputs_received") == 2 and server.metrics.count("inputs_timeouts") == 0


async def test_reply_error_is_reported_and_session_goes_on(make_server, manifest: dict) -> None:
    server = await make_server(ReplyOnPause(fn=handlers.failing))
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT) as conv:
        await conv.send_audio(turn_audio(manifest, "dialog_02.flac", 0))
        await conv.wait_for(lambda c: c.of("type", "error"))
        assert "the model fell over" in conv.of("type", "error")[0]["data"]
        await conv.wait_for(lambda c: c.of("event", "mark"))  # the reply still ends cleanly
        await conv.send_audio(turn_audio(manifest, "dialog_02.flac", 1))
        await conv.wait_for(lambda c: len(c.logs("pause_detected")) == 2)


async def test_close_stream_and_greeting(make_server, manifest: dict) -> None:
    server = await make_server(ReplyOnPause(fn=handlers.closing, startup_fn=handlers.greeting))
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT) as conv:
        await conv.send_audio(np.zeros(1600, dtype=np.int16))
        await conv.wait_for(lambda c: c.of("event", "mark"))
        assert len(conv.replies[0].audio) == 8000 * 2  # the greeting, before any speech
        await conv.send_audio(turn_audio(manifest, "dialog_03.flac", 0))
        assert await conv.wait_closed() == 1000
    assert len(conv.of("event", "mark")) == 2


async def test_stop_finishes_the_reply_then_closes(make_server, manifest: dict) -> None:
    server = await make_server(ReplyOnPause(fn=echo))
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT) as conv:
        # speech then stop, with no pause: stop ends the turn and the reply is still sent in full
        await conv.send_audio(turn_audio(manifest, "dialog_03.flac", 1, after_s=0.05))
        await conv.send_json({"event": "stop"})
        assert await conv.wait_closed() == 1000
    pause = conv.logs("pause_detected")[0]
    assert pause["reason"] == "forced"
    assert conv.replies[0].ended_by == "mark"
    assert abs(len(conv.replies[0].audio) / 2 - pause["speech_s"] * 16000) <= 320


async def test_sessions_are_cleaned_up(make_server, manifest: dict) -> None:
    server = await make_server(ReplyOnPause(fn=handlers.long_async))
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT) as conv:
        await conv.send_audio(turn_audio(manifest, "dialog_00.flac", 0))
        await conv.wait_for(lambda c: c.replies)
        assert server.active == 1
    # the client vanished mid-reply: the session, its reply and its VAD slot are released
    for _ in range(100):
        if server.active == 0:
            break
        await asyncio.sleep(0.02)
    assert server.active == 0
    await asyncio.sleep(0.1)
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    names = [t.get_coro().__qualname__ for t in tasks]
    assert not [n for n in names if n.startswith("StreamRunner.")], names


async def test_barge_in_clears_a_reply_sent_in_full_but_not_yet_played(make_server, manifest: dict) -> None:
    """A client that echoes marks has not heard a reply until it echoes its mark: speech before
    that still clears it. Speech after the echo does not."""
    from wsstream.config import StreamConfig

    # a 10 s lead: every reply goes out at once, as to a client with a deep playback buffer
    server = await make_server(ReplyOnPause(fn=echo), stream=StreamConfig(lead_ms=10000))
    name = "dialog_01.flac"
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", FMT) as conv:
        await conv.send_audio(turn_audio(manifest, name, 0))
        await conv.wait_for(lambda c: c.of("event", "mark"))
        await conv.send_json({"event": "mark", "mark": {"name": "reply-1"}})  # played it all
        await conv.send_audio(turn_audio(manifest, name, 1))
        await conv.wait_for(lambda c: len(c.of("event", "mark")) == 2)
        assert not conv.of("event", "clear")  # reply 1 had been heard: nothing to clear
        # reply 2 is sent in full, its mark not echoed yet (still playing): the user talks over it
        await conv.send_audio(turn_audio(manifest, name, 2))
        await conv.wait_for(lambda c: c.of("event", "clear"))
        clear = conv.of("event", "clear")[0]
        third_start = conv.logs("started_talking")[2]
        assert clear["wall"] >= third_start["wall"]
        await conv.wait_for(lambda c: len(c.logs("pause_detected")) == 3)


# ---- timeouts (issue 13) ------------------------------------------------------------------------------

TIMEOUT_FINALLY: list[str] = []


def slow_sync(audio: tuple[int, np.ndarray], kind: str = "echo"):  # type: ignore[no-untyped-def]
    """A sync generator, so in a pool thread that nothing can interrupt: ``silent`` blocks 3 s before its
    first chunk; ``endless`` never ends (0.2 s of tone every 0.1 s, paced by playout); else the echo."""
    import time

    try:
        if kind == "silent":
            time.sleep(3)
            yield audio
        elif kind == "endless":
            t = np.arange(3200) / 16000
            chunk = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
            while True:
                time.sleep(0.1)
                yield 16000, chunk
        else:
            yield audio
    finally:
        TIMEOUT_FINALLY.append(kind)


async def test_reply_timeouts_end_a_reply_with_an_error_and_the_stream_goes_on(make_server, manifest: dict) -> None:
    """first_chunk_timeout_s: no audio 0.5 s after the call, the reply ends with an error (its mark follows);
    reply_timeout_s: a function still running after 1.5 s is stopped (its finally runs), what it produced
    plays out. Both counted; both streams go on; a good stream alongside is answered in time."""
    from test_attacks import good_turn

    from wsstream.config import StreamConfig

    TIMEOUT_FINALLY.clear()
    server = await make_server(ReplyOnPause(fn=slow_sync),
                               stream=StreamConfig(first_chunk_timeout_s=0.5, reply_timeout_s=1.5))
    url = f"ws://127.0.0.1:{server.port}/ws"

    async def attack(kind: str) -> Conversation:
        async with Conversation(url, FMT) as conv:
            await conv.send_json({"event": "input", "data": {"kind": kind}})
            await conv.send_audio(turn_audio(manifest, "dialog_02.flac", 0))
            await conv.wait_for(lambda c: c.of("type", "error") and c.of("event", "mark"), 10)
            await conv.send_json({"event": "ping"})
            await conv.wait_for(lambda c: c.of("event", "pong"))
        return conv

    silent, endless, _ = await asyncio.gather(attack("silent"), attack("endless"), good_turn(server.port, manifest))
    for conv, after, message in [
            (silent, 0.5, "reply timed out: no audio within 0.5 s (first_chunk_timeout_s); the reply was stopped"),
            (endless, 1.5, "reply timed out: its function was still running after 1.5 s (reply_timeout_s); it was "
                           "stopped, what it produced plays out")]:
        (pause,), (error,) = conv.logs("pause_detected"), conv.of("type", "error")
        assert error["data"] == message
        assert after - 0.05 < error["wall"] - pause["wall"] < after + 0.5, error["wall"] - pause["wall"]
    assert not any(r.audio for r in silent.replies)
    heard = len(endless.replies[-1].audio) / 2 / 16000
    assert 1.3 < heard < 1.5 + 2.5, heard  # what it produced until stopped (up to the playout queue's 2 s)
    assert server.metrics.counters["reply_timeouts"] == 2
    for _ in range(100):  # the endless one is closed in its thread after the step in flight
        if "endless" in TIMEOUT_FINALLY:
            break
        await asyncio.sleep(0.05)
    assert "endless" in TIMEOUT_FINALLY
