"""examples/fastapi_app.py under a real uvicorn: the voice socket, the host app's routes and the hub's
control API over HTTP (a live call's outputs as Server-Sent Events, trigger, inputs), on loopback sockets."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import uvicorn
from conftest import ROOT, load_corpus
from wsclient import Conversation

from wsstream.codecs import AudioFormat

FMT = AudioFormat("pcm16", 16000)
RATE = 16000


def load_example() -> ModuleType:
    """A fresh copy of the example (its own Hub), whatever sys.path holds."""
    spec = importlib.util.spec_from_file_location("fastapi_app_under_test", Path(ROOT, "examples", "fastapi_app.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Running:
    def __init__(self, module: ModuleType, port: int) -> None:
        self.module = module
        self.port = port
        self.ws_url = f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
async def example() -> AsyncIterator[Running]:
    module = load_example()
    server = uvicorn.Server(uvicorn.Config(module.app, host="127.0.0.1", port=0, lifespan="on",
                                           log_level="warning"))
    before = asyncio.all_tasks()
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):  # (the model loads at startup)
        while not server.started:
            assert not task.done(), "uvicorn stopped before it started"
            await asyncio.sleep(0.02)
    assert module.hub.ready
    try:
        yield Running(module, server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        assert not module.hub.ready and module.hub.active == 0
        leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
        assert not leaked, leaked


async def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP/1.1 request on a fresh connection: (status, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(payload) if payload else None


class SSE:
    """A Server-Sent Events client on a raw socket: the ``data:`` of each event, parsed as JSON."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.status = 0
        self.headers: dict[str, str] = {}
        self.events: list[Any] = []
        self.ended = False  # the server finished the response (the call closed)
        self._changed = asyncio.Event()

    async def __aenter__(self) -> SSE:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Send the request and read the response's head; then follow the events, if it is a stream."""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
                          .encode())
        async with asyncio.timeout(15):
            status_line = await self.reader.readline()
            self.status = int(status_line.split(b" ", 2)[1])
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self._task: asyncio.Task[None] | None = None
        if self.status == 200:
            self._task = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.writer.close()
        await self.writer.wait_closed()

    async def _read(self) -> None:
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        text = ""
        try:
            while True:
                size = int((await self.reader.readline()).strip() or b"0", 16)
                if size == 0:
                    self.ended = True
                    return
                text += (await self.reader.readexactly(size + 2))[:-2].decode()
                while "\n\n" in text:
                    event, text = text.split("\n\n", 1)
                    data = [line[5:].strip() for line in event.splitlines() if line.startswith("data:")]
                    if data:
                        self.events.append(json.loads("\n".join(data)))
                        self._changed.set()
        finally:
            self._changed.set()

    async def wait_for(self, n: int, within: float = 10.0) -> list[Any]:
        """Until ``n`` events have come; fails with what came."""
        try:
            async with asyncio.timeout(within):
                while len(self.events) < n and self._task is not None and not self._task.done():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        assert len(self.events) >= n, f"{len(self.events)} events of {n}: {self.events}"
        return self.events

    async def wait_ended(self, within: float = 10.0) -> None:
        assert self._task is not None
        async with asyncio.timeout(within):
            await asyncio.shield(self._task)
        assert self.ended


def turn_audio(manifest: dict, name: str, index: int, after_s: float = 1.0) -> np.ndarray:
    """A turn of a corpus file with 0.4 s before it and ``after_s`` of the following gap."""
    turn = manifest["files"][name]["turns"][index]
    return load_corpus(name)[max(turn["start"] - 6400, 0):turn["end"] + int(after_s * RATE)]


async def test_host_routes_and_unknown_calls(example: Running) -> None:
    port = example.port
    assert await http(port, "GET", "/hello") == (200, {"hello": "world", "open_calls": 0})
    assert await http(port, "GET", "/calls") == (200, [])
    status, body = await http(port, "POST", "/calls/nobody/trigger")
    assert status == 404 and "nobody" in body["detail"]
    assert (await http(port, "POST", "/calls/nobody/inputs", {"tail_s": 1.0}))[0] == 404
    async with SSE(port, "/calls/nobody/outputs?wait=0.3") as sse:
        assert sse.status == 404
    assert (await http(port, "GET", "/nope"))[0] == 404


async def test_live_call_outputs_trigger_and_inputs(example: Running, manifest: dict) -> None:
    port, name = example.port, "dialog_01.flac"
    turns = manifest["files"][name]["turns"]
    async with Conversation(example.ws_url, FMT, extra_start={"id": "call-42"}) as conv:
        for _ in range(250):  # until the server has read the start message: the call is known by its id
            listed = (await http(port, "GET", "/calls"))[1]
            if listed and listed[0]["client_id"] is not None:
                break
            await asyncio.sleep(0.02)
        assert listed == [{"id": "s1", "dialect": "ws", "client_id": "call-42", "state": "started", "reply": "idle"}]
        assert (await http(port, "GET", "/hello"))[1]["open_calls"] == 1
        status, body = await http(port, "POST", "/calls/call-42/trigger")
        assert status == 409 and "nothing to reply to" in body["detail"]  # nothing heard yet

        async with SSE(port, "/calls/call-42/outputs") as sse:
            assert sse.status == 200 and sse.headers["content-type"].startswith("text/event-stream")
            # two turns, each ended by the speaker's pause
            for i in range(2):
                await conv.send_audio(turn_audio(manifest, name, i))
                await conv.wait_for(lambda c, n=i + 1: len(c.of("event", "mark")) == n)
            outputs = await sse.wait_for(2)
            pauses = conv.logs("pause_detected")
            assert [p["reason"] for p in pauses] == ["pause", "pause"], pauses
            for i, (out, pause, turn) in enumerate(zip(outputs, pauses, turns, strict=False)):
                (item,) = out  # AdditionalOutputs' values, as a list
                assert item["turn"] == i + 1 and item["tail_s"] == 0.5
                assert abs(item["heard_s"] - pause["speech_s"]) <= 0.002, (item, pause)
                spoken = (turn["end"] - turn["start"]) / RATE
                # this turn (dialog_01's turns last 1.6, 4.0, 6.6 s), with the 0.3 s of prefix padding
                # before it and the pause of about 0.7 s that ended it
                assert spoken + 0.8 < item["heard_s"] < spoken + 1.2, (item, spoken)
            # the echo: the last 0.5 s of each turn heard
            assert [len(r.audio) for r in conv.replies] == [RATE, RATE]

            # new inputs over HTTP, then half a turn (no pause) and a trigger over HTTP
            assert await http(port, "POST", "/calls/call-42/inputs", {"tail_s": 0.25}) == \
                (200, {"inputs": {"tail_s": 0.25}})
            assert (await http(port, "POST", "/calls/call-42/inputs", {"tail_s": -1}))[0] == 422
            audio = turn_audio(manifest, name, 2, after_s=0.0)
            await conv.send_audio(audio[: audio.size // 2])
            await conv.wait_for(lambda c: len(c.logs("started_talking")) == 3)
            await asyncio.sleep(0.3)
            assert len(conv.logs("pause_detected")) == 2  # still talking, as far as the server knows
            assert await http(port, "POST", "/calls/s1/trigger") == (200, {"triggered": True})
            await conv.wait_for(lambda c: len(c.of("event", "mark")) == 3)
            forced = conv.logs("pause_detected")[2]
            assert forced["reason"] == "forced"
            (third,) = (await sse.wait_for(3))[2]
            assert third["turn"] == 3 and third["tail_s"] == 0.25
            assert abs(third["heard_s"] - forced["speech_s"]) <= 0.002
            assert len(conv.replies[2].audio) == RATE // 2
            assert (await http(port, "POST", "/calls/call-42/trigger"))[0] == 409  # heard nothing since
            assert len(sse.events) == 3

            # the caller hangs up: the event stream ends, the call is gone
            await conv.ws.close()
            await sse.wait_ended()
    assert await http(port, "GET", "/calls") == (200, [])
    assert example.module.TURNS == {}  # the stream_closed hook ran


async def test_subscribe_before_the_call_opens(example: Running) -> None:
    sse = SSE(example.port, "/calls/call-43/outputs?wait=2")
    subscribing = asyncio.create_task(sse.open())
    await asyncio.sleep(0.2)  # a dashboard subscribes, then the call comes in
    async with Conversation(example.ws_url, FMT, extra_start={"id": "call-43"}):
        try:
            await subscribing
        finally:
            await sse.close()
        assert sse.status == 200
