"""Faults an attacker finds (issue 13), each over a real socket on both drivers: the stream that
sends them gets a clear error (or, on a call, nothing fatal), and the server and a concurrent good
stream go on."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest
from conftest import ServerProcess, load_corpus
from twilio_peer import TwilioPeer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsclient import Conversation

from wsstream.codecs import AudioFormat, encode
from wsstream.echo import echo
from wsstream.reply import ReplyOnPause

BOTH_DRIVERS = True
NESTED = "[" * 1100 + "]" * 1100


@pytest.fixture
async def server(make_server: Any) -> Any:
    return await make_server(ReplyOnPause(fn=echo))


async def messages_until_close(ws: Any) -> list[dict[str, Any]]:
    out = []
    try:
        async for message in ws:
            out.append(json.loads(message))
    except ConnectionClosed:
        pass
    return out


@pytest.mark.parametrize("message", [NESTED, json.dumps({"event": "input"})[:-1] + ', "data": ' + NESTED + "}"],
                         ids=["alone", "as-input-data"])
async def test_deeply_nested_json_is_an_error_not_a_dropped_connection(server: Any, message: str) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send(message)
        reply = json.loads(await ws.recv())
        assert reply == {"type": "error", "data": "invalid JSON: nested too deeply"}
        await ws.send(json.dumps({"event": "ping"}))
        assert json.loads(await ws.recv()) == {"event": "pong"}  # the stream goes on


async def test_deeply_nested_json_on_a_call_is_not_fatal(server: Any) -> None:
    wire = encode(load_corpus("dialog_06.flac", 8000), "mulaw")
    async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler") as peer:
        await peer.send_raw(NESTED)
        await peer.send_audio(wire[:int(4.4 * 8000)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.stop()
        assert await peer.wait_closed() == 1000
    assert server.metrics.counters["protocol_errors"] == 1


@pytest.mark.parametrize("rate", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
async def test_twilio_start_with_an_infinite_rate_falls_back_and_the_call_goes_on(server: Any, rate: float) -> None:
    """json.dumps writes these as Infinity / NaN, which Python's json (and so the server) accepts."""
    wire = encode(load_corpus("dialog_06.flac", 8000), "mulaw")
    async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler", sample_rate=rate) as peer:  # type: ignore[arg-type]
        peer.sample_rate = 8000  # (what the server falls back to; the peer's own framing needs a number)
        await peer.send_audio(wire[:int(4.4 * 8000)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.stop()
        assert await peer.wait_closed() == 1000
    assert server.metrics.counters["twilio_bad_media_format"] == 1


async def test_a_lone_surrogate_in_a_field_name_closes_1003_with_a_reason(server: Any) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send('{"event": "start", "format": {"\\ud800": 1}}')
        error = await messages_until_close(ws)
        assert ws.close_code == 1003
        assert error and error[0]["type"] == "error" and "unknown field" in error[0]["data"]
        assert "unknown field" in (ws.close_reason or "")
    # and the server still serves a good stream
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", AudioFormat()) as conv:
        await conv.send_json({"event": "ping"})
        await conv.wait_for(lambda c: c.of("event", "pong"))


async def test_a_hung_sync_reply_does_not_keep_sigterm_from_finishing(driver: str, manifest: dict) -> None:
    server = await asyncio.to_thread(ServerProcess, "--handler", "tests.handlers:hung", driver=driver)
    try:
        turn = manifest["files"]["dialog_00.flac"]["turns"][0]
        async with Conversation(server.url + "/ws", AudioFormat()) as conv:
            await conv.send_audio(load_corpus("dialog_00.flac")[:turn["end"] + 16000])
            await conv.wait_for(lambda c: c.logs("pause_detected"))  # the reply is now stuck in its thread
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            server.proc.terminate()
            code = await asyncio.to_thread(server.proc.wait, 15)
        assert time.monotonic() - t0 < 8, "SIGTERM waited for the hung reply thread"
        assert code in (0, -signal.SIGTERM)
    finally:
        server.close()
