"""fastrtc WebSocket clients on ``/websocket/offer``, unchanged.

A client written the way fastrtc's WebSocket clients are: ``start`` with a
``websocket_id``, base64 μ-law ``media`` at the handler's input rate (48 kHz by
default), ``ping``, ``stop``; it expects ``{"event": "media", ...}`` μ-law at the
output rate (24 kHz by default) and fastrtc's ``{"type": ..., "data": ...}``
messages. The whole corpus goes through a real server process with reply pacing
lifted (``--lead-ms``), so it runs faster than real time; pacing itself is
tested on ``/telephone/handler``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soxr
from conftest import ServerProcess, corpus_files, load_corpus, turn_ends_s
from websockets.asyncio.client import ClientConnection, connect

from wsstream.codecs import decode, encode
from wsstream.reply import AdditionalOutputs, ReplyOnPause, current_context

# every socket test here runs over both drivers: our transport and the ASGI one under uvicorn
BOTH_DRIVERS = True

PAUSE = 0.6
PREFIX = 0.3


class FastrtcClient:
    def __init__(self, url: str, websocket_id: str, in_rate: int = 48000, out_rate: int = 24000) -> None:
        self.url = url + "/websocket/offer"
        self.websocket_id = websocket_id
        self.in_rate, self.out_rate = in_rate, out_rate
        self.raw: list[str | bytes] = []
        self.msgs: list[dict[str, Any]] = []
        self.audio: list[bytearray] = []  # reply audio, split at each response_starting
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> FastrtcClient:
        self.ws = await connect(self.url, compression=None, max_size=1 << 22, open_timeout=20)
        await self.ws.send(json.dumps({"event": "start", "websocket_id": self.websocket_id}))
        self._rx = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        await self.ws.close()
        self._rx.cancel()
        await asyncio.gather(self._rx, return_exceptions=True)

    async def _receive(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self.raw.append(message)
                msg = json.loads(message)
                self.msgs.append(msg)
                if msg.get("type") == "log" and msg.get("data") == "response_starting":
                    self.audio.append(bytearray())
                elif msg.get("event") == "media":
                    if not self.audio:
                        self.audio.append(bytearray())  # audio with no response_starting: caught below
                    self.audio[-1] += base64.b64decode(msg["media"]["payload"])
                self._changed.set()
        finally:
            self.close_code = self.ws.close_code
            self._changed.set()

    def logs(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.msgs if m.get("type") == "log" and m.get("data") == name]

    async def send_mulaw(self, pcm: np.ndarray, chunk_ms: int = 20) -> None:
        assert self.ws is not None
        data = encode(pcm, "mulaw")
        step = self.in_rate * chunk_ms // 1000
        for i, off in enumerate(range(0, len(data), step)):
            await self.ws.send(json.dumps({"event": "media", "media": {
                "payload": base64.b64encode(data[off:off + step]).decode()}}))
            if i % 50 == 49:
                await asyncio.sleep(0)

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(msg))

    async def wait_for(self, predicate: Any, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not predicate(self):
            self._changed.clear()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last messages: {[str(m)[:120] for m in self.msgs[-6:]]}")
            try:
                await asyncio.wait_for(self._changed.wait(), max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                pass

    def reply_done(self, k: int) -> bool:
        """Reply k has arrived whole: as many samples as the utterance pause_detected announced."""
        pauses = self.logs("pause_detected")
        if len(pauses) <= k or len(self.audio) <= k:
            return False
        return len(self.audio[k]) >= pauses[k]["speech_s"] * self.out_rate - self.out_rate // 50


@pytest.fixture(scope="module")
def fast_server(driver: str) -> Iterator[ServerProcess]:
    server = ServerProcess("--lead-ms", "600000", driver=driver)
    yield server
    server.close()


async def converse(url: str, name: str, manifest: dict[str, Any], n: int) -> FastrtcClient:
    rate = 48000
    audio = load_corpus(name, rate)
    turns = manifest["files"][name]["turns"]
    cuts = [int((t["start"] / 16000 - 0.35) * rate) for t in turns[1:]] + [audio.size]
    async with FastrtcClient(url, f"ws-{n}") as client:
        pos = 0
        for k, cut in enumerate(cuts):
            await client.send_mulaw(audio[pos:cut])
            pos = cut
            await client.wait_for(lambda c, k=k: c.reply_done(k), 60)
        await client.send({"event": "ping"})
        await client.wait_for(lambda c: c.msgs and c.msgs[-1] == {"event": "pong"})
        t_stop = time.monotonic()
        await client.send({"event": "stop"})
        await asyncio.wait_for(asyncio.shield(client._rx), 5)
        assert time.monotonic() - t_stop < 1.0
    return client


def envelope(pcm: np.ndarray, rate: int) -> np.ndarray:
    hop = rate // 50
    n = pcm.size // hop
    return np.sqrt((pcm[:n * hop].astype(np.float64).reshape(n, hop) ** 2).mean(axis=1))


async def test_corpus_at_48k_mulaw_with_logs_and_replies(fast_server: ServerProcess, manifest: dict) -> None:
    names = corpus_files()
    t0 = time.monotonic()
    clients = await asyncio.gather(*(converse(fast_server.url, n, manifest, i) for i, n in enumerate(names)))
    assert time.monotonic() - t0 < 60
    for client, name in zip(clients, names, strict=True):
        ends = turn_ends_s(manifest, name)
        starts = [t["start"] / 16000 for t in manifest["files"][name]["turns"]]
        n = len(ends)
        assert client.close_code == 1000, name
        # only what fastrtc itself sends on this transport
        for raw, msg in zip(client.raw, client.msgs, strict=True):
            if "event" in msg:
                assert msg["event"] in ("media", "pong"), msg
                if msg["event"] == "media":
                    assert list(msg) == ["event", "media"] and list(msg["media"]) == ["payload"]
                    assert isinstance(raw, str) and raw.startswith('{"event":"media","media":{"payload":"')
            else:
                assert msg["type"] == "log" and isinstance(msg["data"], str), msg
        assert len(client.logs("started_talking")) == n, name
        pauses = client.logs("pause_detected")
        assert len(pauses) == n, name
        for pause, end in zip(pauses, ends, strict=True):
            assert PAUSE <= pause["t"] - end <= PAUSE + 0.2, (name, pause, end)
        assert len(client.logs("response_starting")) == n
        assert len(client.audio) == n, name
        corpus16 = load_corpus(name, 16000)
        for reply, pause, start in zip(client.audio, pauses, starts, strict=True):
            # μ-law at the output rate (24 kHz): exactly the utterance's length ...
            samples = len(reply)
            assert abs(samples - pause["speech_s"] * 24000) <= 480, (name, samples, pause["speech_s"])
            # ... and the utterance itself, the speech_s seconds of input that ended at pause_detected:
            # its loudness contour follows the corpus there (and not elsewhere)
            pcm16 = soxr.resample(decode(bytes(reply), "mulaw").astype(np.float32), 24000, 16000)
            lo = int((pause["t"] - pause["speech_s"]) * 16000)
            assert abs(lo / 16000 - (start - PREFIX)) < 0.5, (name, lo / 16000, start)
            best = max(np.corrcoef(envelope(pcm16, 16000),
                                   envelope(corpus16[lo + shift:lo + shift + pcm16.size], 16000))[0, 1]
                       for shift in range(-800, 801, 160) if lo + shift >= 0)
            assert best > 0.95, (name, best)


@pytest.fixture
async def rates_server(make_server: Any) -> Any:
    seen: list[dict[str, Any]] = []

    async def reply(audio: tuple[int, np.ndarray], *args: Any):  # fastrtc-style: (rate, samples)
        ctx = current_context()
        seen.append({"rate": audio[0], "n": audio[1].size, "client_id": ctx.client_id, "call": dict(ctx.call),
                     "dialect": ctx.dialect})
        yield AdditionalOutputs("transcript", len(seen))
        if len(seen) == 2:
            raise RuntimeError("handler broke")
        yield audio  # the utterance back, at the input rate; the server resamples to the output rate

    server = await make_server(ReplyOnPause(fn=reply, input_sample_rate=16000, output_sample_rate=8000))
    return server, seen


async def test_configured_rates_outputs_errors_and_context(rates_server: Any) -> None:
    server, seen = rates_server
    audio = load_corpus("dialog_06.flac", 16000)
    async with FastrtcClient(f"ws://127.0.0.1:{server.port}", "abc-123", 16000, 8000) as client:
        await client.send({"event": "no_such_event"})
        await client.wait_for(lambda c: any(m.get("type") == "error" for m in c.msgs))
        await client.send_mulaw(audio[:int(4.4 * 16000)])
        await client.wait_for(lambda c: c.reply_done(0))
        await client.send_mulaw(audio[int(4.4 * 16000):int(8.8 * 16000)])
        await client.wait_for(lambda c: any("handler broke" in str(m.get("data")) for m in c.msgs))
        await client.send({"event": "stop"})
        await asyncio.wait_for(asyncio.shield(client._rx), 5)
    assert client.close_code == 1000
    errors = [m for m in client.msgs if m.get("type") == "error"]
    assert "no_such_event" in errors[0]["data"]
    assert errors[1]["data"].startswith("reply function failed: RuntimeError: handler broke")
    outputs = [m for m in client.msgs if m.get("type") == "fetch_output"]
    assert outputs == [{"type": "fetch_output", "data": ["transcript", 1]},
                       {"type": "fetch_output", "data": ["transcript", 2]}]
    assert [s["rate"] for s in seen] == [16000, 16000]
    assert seen[0]["client_id"] == "abc-123" and seen[0]["call"] == {"websocket_id": "abc-123"}
    assert seen[0]["dialect"] == "fastrtc"
    # replies at the output rate (8 kHz): half the utterance's 16 kHz sample count
    assert len(client.audio) == 1  # the second reply failed before it had any audio
    assert abs(len(client.audio[0]) - seen[0]["n"] / 2) <= 160, (len(client.audio[0]), seen[0]["n"])
    assert not [m for m in client.msgs if m.get("event") in ("mark", "clear")]


async def test_binary_frames_are_an_error_not_a_crash(rates_server: Any) -> None:
    server, _ = rates_server
    async with FastrtcClient(f"ws://127.0.0.1:{server.port}", "x") as client:
        assert client.ws is not None
        await client.ws.send(b"\x00" * 10)
        await client.send({"event": "ping"})
        await client.wait_for(lambda c: {"event": "pong"} in c.msgs)
        assert client.msgs[0]["type"] == "error" and "binary" in client.msgs[0]["data"]
    assert server.metrics.count("protocol_errors", dialect="fastrtc") == 1


async def test_send_input_asks_the_front_end_for_each_replys_inputs(make_server: Any, manifest: dict) -> None:
    """fastrtc's additional inputs (``input_wait_s``): at each pause the server sends ``send_input`` and
    calls the reply once the front end's inputs have come (a fastrtc app's ``/input_hook`` route calls
    ``stream.set_input``; here the app's ``hub.set_input`` is called the same way), or after the wait
    with the inputs it had."""
    calls: list[tuple[str, float]] = []

    async def reply(audio: tuple[int, np.ndarray], language: str = "en"):
        calls.append((language, time.monotonic()))
        yield AdditionalOutputs(language)
        yield audio[0], audio[1][:audio[0] // 5]  # 200 ms of it (replies play in real time)

    def replied(c: FastrtcClient, k: int) -> bool:
        return len(c.audio) > k and len(c.audio[k]) >= 16000 // 5  # (μ-law: a byte a sample)

    server = await make_server(ReplyOnPause(fn=reply, input_sample_rate=16000, output_sample_rate=16000,
                                            input_wait_s=1.0))
    name = "dialog_06.flac"
    audio = load_corpus(name, 16000)
    starts = [int((t["start"] / 16000 - 0.35) * 16000) for t in manifest["files"][name]["turns"]]

    def asked(c: FastrtcClient) -> int:
        return sum(m.get("type") == "send_input" for m in c.msgs)

    async with FastrtcClient(f"ws://127.0.0.1:{server.port}", "front-1", 16000, 16000) as client:
        await client.send_mulaw(audio[:starts[1]])
        await client.wait_for(lambda c: asked(c) == 1)
        await asyncio.sleep(0.3)  # the front end takes its time to post them
        answered = time.monotonic()
        server.hub.set_input("front-1", language="fr")
        await client.wait_for(lambda c: replied(c, 0))
        await client.send_mulaw(audio[starts[1]:starts[2]])  # this time it does not answer
        await client.wait_for(lambda c: asked(c) == 2)
        seen = time.monotonic()
        await client.wait_for(lambda c: replied(c, 1))
    assert [m for m in client.msgs if m.get("type") == "send_input"] == [{"type": "send_input", "data": []}] * 2
    assert [language for language, _ in calls] == ["fr", "fr"]  # (the second: those set before)
    assert calls[0][1] >= answered  # the reply waited for the inputs ...
    assert calls[1][1] - seen > 0.9  # ... or for input_wait_s
    order = [m.get("type") if m.get("type") != "log" else m["data"] for m in client.msgs]
    order = [k for k in order if k in ("pause_detected", "send_input", "fetch_output", "response_starting")]
    assert order == ["pause_detected", "send_input", "fetch_output", "response_starting"] * 2
    outputs = [m["data"] for m in client.msgs if m.get("type") == "fetch_output"]
    assert outputs == [["fr"], ["fr"]]
    counts = [server.metrics.count(f"inputs_{k}") for k in ("asked", "received", "timeouts")]
    assert counts == [2, 1, 1]
