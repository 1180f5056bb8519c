"""Bad input on /ws: a clear error for each, the connection kept when it can, others unaffected."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import load_corpus
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsclient import Conversation

from wsstream.codecs import AudioFormat
from wsstream.echo import echo
from wsstream.reply import ReplyOnPause

# every socket test here runs over both drivers: our transport and the ASGI one under uvicorn
BOTH_DRIVERS = True


@pytest.fixture
async def server(make_server):
    return await make_server(ReplyOnPause(fn=echo), concurrency_limit=3)


async def exchange(ws, message: str | bytes) -> dict:
    await ws.send(message)
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def still_alive(ws) -> None:
    assert await exchange(ws, json.dumps({"event": "ping"})) == {"event": "pong"}


NON_FATAL = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({"hello": 1}), 'no "event" field'),
    (json.dumps({"event": "dance"}), "unknown event 'dance'"),
    (json.dumps({"event": "media"}), "media message needs"),
    (json.dumps({"event": "media", "media": {"payload": 5}}), "media message needs"),
    (json.dumps({"event": "media", "media": {"payload": "***"}}), "not valid base64"),
    (json.dumps({"event": "media", "media": {"payload": base64.b64encode(b"abc").decode()}}),
     "whole number of 2-byte samples"),
    (b"\x01\x02\x03", "whole number of 2-byte samples"),
    (json.dumps({"event": "mark"}), "mark message needs"),
    (json.dumps({"event": "input"}), 'needs a "data" field'),
    (b"\x00\x00" * 16000 * 3, "at most 2 s of audio"),
]


async def test_each_malformed_message_gets_a_clear_error_and_the_session_goes_on(server, manifest) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        for message, reason in NON_FATAL:
            reply = await exchange(ws, message)
            assert reply["type"] == "error", (message[:40], reply)
            assert reason in reply["data"], (reason, reply["data"])
            await still_alive(ws)
        # and the stream still works: a real turn is answered after all that
        turn = manifest["files"]["dialog_02.flac"]["turns"][0]
        audio = load_corpus("dialog_02.flac")[: turn["end"] + 16000]
        for i in range(0, audio.size, 1600):
            await ws.send(audio[i:i + 1600].tobytes())
        seen = []
        while "response_starting" not in seen:
            msg = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(msg, str):
                seen.append(json.loads(msg).get("data"))
        assert "pause_detected" in seen


async def test_start_after_audio_is_refused(server) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send(np.zeros(320, dtype=np.int16).tobytes())
        reply = await exchange(ws, json.dumps({"event": "start", "format": {"encoding": "mulaw",
                                                                             "sample_rate": 8000}}))
        assert reply["type"] == "error" and "start must come before any audio" in reply["data"]
        await still_alive(ws)


FATAL = [
    ({"encoding": "pcm16", "sample_rate": 16000, "channels": 2}, "only mono"),
    ({"encoding": "opus", "sample_rate": 16000}, "unsupported encoding 'opus'"),
    ({"encoding": "pcm16", "sample_rate": 96000}, "sample_rate must be an integer from 8000 to 48000"),
    ({"encoding": "pcm16", "sample_rate": "fast"}, "sample_rate must be"),
    ({"encoding": "pcm16", "bits": 24}, "unknown field(s): bits"),
    ("pcm16", "format must be an object"),
]


@pytest.mark.parametrize(("fmt", "reason"), FATAL)
async def test_unsupported_format_closes_with_1003(server, fmt, reason) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        reply = await exchange(ws, json.dumps({"event": "start", "format": fmt}))
        assert reply["type"] == "error" and reason in reply["data"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1003


async def test_bad_query_format_is_refused(server) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws?encoding=pcm16&sample_rate=abc") as ws:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "error" and "sample_rate must be an integer" in reply["data"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1003


async def test_query_format_without_start(server, manifest) -> None:
    """μ-law 8 kHz given on the URL, audio sent straight away, μ-law 8 kHz comes back."""
    turn = manifest["files"]["dialog_03.flac"]["turns"][0]
    audio = load_corpus("dialog_03.flac", 8000)[: turn["end"] // 2 + 8000]
    from wsstream.codecs import encode

    conv = Conversation(f"ws://127.0.0.1:{server.port}/ws?encoding=mulaw&sample_rate=8000",
                        AudioFormat("mulaw", 8000), start=False)
    async with conv:
        data = encode(audio, "mulaw")
        for i in range(0, len(data), 800):
            await conv.ws.send(data[i:i + 800])
        await conv.wait_for(lambda c: c.of("event", "mark"))
    pause = conv.logs("pause_detected")[0]
    assert abs(len(conv.replies[0].audio) - pause["speech_s"] * 8000) <= 160  # 1 byte a sample


async def test_oversized_message_closes_1009_and_others_are_unaffected(server, manifest) -> None:
    turn = manifest["files"]["dialog_04.flac"]["turns"][0]
    audio = load_corpus("dialog_04.flac")[: turn["end"] + 16000]
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws") as good:
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as bad:
            await bad.send(b"\x00" * (2 << 20))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(bad.recv(), 5)
            assert bad.close_code == 1009
        await good.send_audio(audio)
        await good.wait_for(lambda c: c.of("event", "mark"))
        assert not good.of("type", "error")


async def test_garbage_on_one_stream_does_not_disturb_another(server, manifest) -> None:
    name = "dialog_05.flac"
    turns = manifest["files"][name]["turns"]
    audio = load_corpus(name)[: turns[1]["end"] + 16000]

    async def spam() -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            for i in range(300):
                await ws.send(b"\x07" * 3 if i % 2 else "{bad json")
                if i % 20 == 0:
                    await asyncio.sleep(0.01)

    async with Conversation(f"ws://127.0.0.1:{server.port}/ws") as good:
        await asyncio.gather(spam(), good.send_audio(audio, speed=4.0))
        await good.wait_for(lambda c: len(c.logs("pause_detected")) == 2)
    assert not good.of("type", "error")
    assert len(good.logs("started_talking")) == 2


async def test_concurrency_limit(server) -> None:
    conns = [await connect(f"ws://127.0.0.1:{server.port}/ws") for _ in range(3)]
    try:
        for ws in conns:
            await still_alive(ws)
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as extra:
            msg = json.loads(await asyncio.wait_for(extra.recv(), 5))
            assert msg == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 3}}
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(extra.recv(), 5)
            assert extra.close_code == 1013
    finally:
        for ws in conns:
            await ws.close()
    # capacity comes back once they have gone
    await asyncio.sleep(0.1)
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await still_alive(ws)


async def test_http_paths(server) -> None:
    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await asyncio.to_thread(status, "/healthz") == 200
    assert await asyncio.to_thread(status, "/no-such-thing") == 404
    assert await asyncio.to_thread(status, "/ws") == 426
    server.draining = True
    assert await asyncio.to_thread(status, "/healthz") == 503


async def test_longest_allowed_message_does_not_stall_the_stream(server) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send(np.zeros(16000 * 2, dtype=np.int16).tobytes())  # exactly the 2 s limit
        await still_alive(ws)
        await ws.send(np.zeros(16000 * 2, dtype=np.int16).tobytes())
        await still_alive(ws)


async def test_refused_start_does_not_switch_media_to_json(server, manifest) -> None:
    turn = manifest["files"]["dialog_02.flac"]["turns"][0]
    audio = load_corpus("dialog_02.flac")[: turn["end"] + 16000]
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send(audio[:1600].tobytes())
        reply = await exchange(ws, json.dumps({"event": "start", "media_as": "json"}))
        assert reply["type"] == "error"
        for i in range(1600, audio.size, 1600):
            await ws.send(audio[i:i + 1600].tobytes())
        while True:
            msg = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(msg, bytes):
                break  # reply audio still comes as binary frames
            assert json.loads(msg).get("event") != "media"


async def test_unencodable_output_is_an_error_not_a_dead_stream(make_server, manifest) -> None:
    from wsstream.reply import AdditionalOutputs

    async def odd(audio):
        yield AdditionalOutputs({1: "non-string key"}, float("nan"))
        yield AdditionalOutputs("fine")

    server = await make_server(ReplyOnPause(fn=odd))
    turn = manifest["files"]["dialog_02.flac"]["turns"][0]
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws") as conv:
        await conv.send_audio(load_corpus("dialog_02.flac")[: turn["end"] + 16000])
        await conv.wait_for(lambda c: c.of("event", "mark"))
        assert any("could not encode" in e["data"] for e in conv.of("type", "error"))
        assert conv.of("type", "fetch_output")[0]["data"] == ["fine"]
        await conv.send_json({"event": "ping"})
        await conv.wait_for(lambda c: c.of("event", "pong"))
