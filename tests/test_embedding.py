"""The embedding API over real sockets: ``serve()`` in the test's loop, the hub's control and
observation of live streams, hooks, and several ASGI apps sharing one hub.

Every stream here carries real corpus speech; the hub is steered from outside the socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from conftest import AsgiServer, load_corpus
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsclient import Conversation

import wsstream
from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream import AdditionalOutputs, Hub, ReplyOnPause, current_context

FMT = wsstream.AudioFormat("pcm16", 16000)


def turn_audio(manifest: dict, name: str, index: int, after_s: float = 1.0) -> np.ndarray:
    turn = manifest["files"][name]["turns"][index]
    audio = load_corpus(name)
    return audio[max(turn["start"] - 6400, 0):turn["end"] + int(after_s * 16000)]


async def until(predicate: Any, within: float = 10.0) -> None:
    """Poll host-side state (the client's wait_for wakes only on messages)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (host-side state has no event to wait on)
            await asyncio.sleep(0.01)


async def reply(audio: tuple[int, np.ndarray], *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """Says what it was called with (as an additional output), then a short tone."""
    rate, samples = audio
    yield AdditionalOutputs({"heard_s": round(samples.size / rate, 2), "args": list(args), "kwargs": kwargs,
                             "stream": current_context().session_id})
    yield rate, np.full(rate // 10, 1000, dtype=np.int16)


async def test_serve_hooks_control_and_events(model: SileroModel, manifest: dict) -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []
    async_seen: list[str] = []
    async with wsstream.serve(ReplyOnPause(fn=reply), port=0, engine=VadEngine(model)) as server:
        hub = server.hub
        for name in wsstream.HOOKS:
            hub.on(name)(lambda sid, fields, name=name: seen.append((name, sid, fields)))

        @hub.on("pause_detected")
        async def later(sid: str, fields: dict[str, Any]) -> None:
            await asyncio.sleep(0)
            async_seen.append(sid)

        with pytest.raises(ValueError, match="unknown hook"):
            hub.on("no_such_event")
        url = f"{server.url}/ws"
        async with Conversation(url, FMT, extra_start={"id": "caller-7"}) as conv:
            await until(lambda: [s for s in hub.streams() if s.client_id])  # (its start has come)
            [info] = hub.streams()
            assert (info.dialect, info.client_id) == ("ws", "caller-7")
            events: list[dict[str, Any]] = []

            async def follow() -> None:
                async for event in hub.events("caller-7"):
                    events.append(event)
            follower = asyncio.get_running_loop().create_task(follow())
            await asyncio.sleep(0)
            hub.set_input("caller-7", language="fr")  # by client id
            await conv.send_audio(turn_audio(manifest, "dialog_00.flac", 0))
            await conv.wait_for(lambda c: c.of("type", "fetch_output") and c.of("event", "mark"))
            out = conv.of("type", "fetch_output")[0]["data"][0]
            assert out["kwargs"] == {"language": "fr"} and out["stream"] == info.id
            # trigger from outside: some speech, no pause, then the host app asks for the reply
            speech = turn_audio(manifest, "dialog_00.flac", 1, after_s=0.0)
            await conv.send_audio(speech[: speech.size // 2])
            await conv.wait_for(lambda c: len(c.logs("started_talking")) == 2)
            vad = hub.stream(info.id).core.vad
            await until(lambda: vad.pending_samples < vad.window)  # VAD has heard all that was sent
            await asyncio.sleep(0.1)
            assert hub.trigger(info.id) is True
            await conv.wait_for(lambda c: len(c.logs("pause_detected")) == 2)
            assert conv.logs("pause_detected")[1]["reason"] == "forced"
            await conv.wait_for(lambda c: len(c.of("event", "mark")) == 2)
            assert hub.trigger(info.id) is False  # nothing heard since: no reply (and no warning to the client,
            await asyncio.sleep(0.1)             # which did not ask)
            assert not conv.of("type", "warning") and len(conv.logs("pause_detected")) == 2
            hub.close_stream("caller-7", 1000, "host app says bye")
            assert await conv.wait_closed() == 1000
        await asyncio.wait_for(follower, 5)  # the iterator ends when its stream closes
        await server.wait_idle()
        assert hub.streams() == []
        with pytest.raises(wsstream.UnknownStream):
            hub.trigger("caller-7")
    names = [name for name, _, _ in seen]
    assert names[0] == "stream_opened" and names[-1] == "stream_closed"
    assert names.count("pause_detected") == 2 and names.count("started_talking") == 2
    assert names.count("response_starting") == 2
    assert [f["how"] for n, _, f in seen if n == "reply_finished"] == ["played", "played"]
    assert {sid for _, sid, _ in seen} == {info.id} and async_seen == [info.id, info.id]
    kinds = [e["type"] for e in events]
    assert kinds.count("fetch_output") == 2 and kinds.count("reply_finished") == 2 and kinds[-1] == "close"
    assert events[-1]["reason"] == "host app says bye"


async def test_leaving_serve_closes_streams_with_1001(model: SileroModel, manifest: dict) -> None:
    async with wsstream.serve(ReplyOnPause(fn=reply), port=0, engine=VadEngine(model)) as server:
        conv = Conversation(f"{server.url}/ws", FMT)
        await conv.__aenter__()
        await conv.send_audio(turn_audio(manifest, "dialog_01.flac", 0, after_s=0.0))
        await conv.wait_for(lambda c: c.logs("started_talking"))
    assert await conv.wait_closed() == 1001
    await conv.__aexit__(None, None, None)


async def test_two_asgi_apps_share_one_hub(model: SileroModel, manifest: dict) -> None:
    """Endpoints mounted in two apps from one hub: one model, one worker, one count of streams."""
    hub = Hub(ReplyOnPause(fn=reply), wsstream.ServerConfig(concurrency_limit=3), engine=VadEngine(model))
    first, second = AsgiServer(hub), AsgiServer(hub)
    await first.start()
    await second.start()  # (the second lifespan finds the hub started: it is idempotent)
    try:
        worker = hub.worker
        async with Conversation(f"ws://127.0.0.1:{first.port}/ws", FMT) as a, \
                Conversation(f"ws://127.0.0.1:{second.port}/ws", FMT) as b:
            assert hub.active == 2 and hub.worker is worker
            await asyncio.gather(a.send_audio(turn_audio(manifest, "dialog_02.flac", 0)),
                                 b.send_audio(turn_audio(manifest, "dialog_03.flac", 0)))
            await a.wait_for(lambda c: c.of("event", "mark"))
            await b.wait_for(lambda c: c.of("event", "mark"))
            assert worker is not None and worker.stats.largest_batch == 2  # both streams in one model call
            async with Conversation(f"ws://127.0.0.1:{second.port}/ws", FMT) as c3, \
                    connect(f"ws://127.0.0.1:{first.port}/ws") as c4:
                refusal = json.loads(await c4.recv())
                with pytest.raises(ConnectionClosed):
                    await c4.recv()
                assert c4.close_code == 1013  # the limit is the hub's, across both apps
                assert refusal["meta"] == {"error": "concurrency_limit_reached", "limit": 3}
                assert c3.close_code is None and hub.active == 3
    finally:
        await second.aclose()
        await first.aclose()


async def test_stream_id_prefix_names_every_stream(model: SileroModel) -> None:
    """An embedder running several servers (or --workers) gives each a prefix; the hub's ids carry it."""
    seen: list[str] = []
    async with wsstream.serve(ReplyOnPause(fn=reply), port=0, engine=VadEngine(model),
                              stream_id_prefix="eu1-") as server:
        server.hub.on("stream_opened")(lambda sid, fields: seen.append(sid))
        for _ in range(2):
            async with Conversation(f"{server.url}/ws", FMT) as conv:
                await until(lambda: server.hub.streams())
                await conv.send_audio(np.zeros(1600, dtype=np.int16))
        await server.wait_idle()
    assert seen == ["eu1-s1", "eu1-s2"]
    with pytest.raises(ValueError, match="stream_id_prefix"):
        wsstream.ServerConfig(stream_id_prefix="a b")


async def test_a_host_app_answers_send_input_from_the_events_it_follows(model: SileroModel,
                                                                        manifest: dict) -> None:
    """An agent backend that holds each call's state itself: it follows the stream's events, and on
    ``send_input`` sets the inputs of the reply about to be called (the client says nothing)."""
    calls: list[int] = []

    async def answer(audio: tuple[int, np.ndarray], turn: int = 0):
        calls.append(turn)
        yield audio[0], audio[1][:audio[0] // 5]  # (a short reply: it plays in real time)

    app = ReplyOnPause(fn=answer, input_wait_s=10.0)
    async with wsstream.serve(app, port=0, engine=VadEngine(model)) as server:
        hub = server.hub
        async with Conversation(f"{server.url}/ws", FMT, extra_start={"id": "agent-1"}) as conv:
            await until(lambda: [s for s in hub.streams() if s.client_id])

            async def backend() -> None:
                asked = 0
                async for event in hub.events("agent-1"):
                    if event["type"] == "send_input":
                        asked += 1
                        hub.set_input("agent-1", turn=asked)
            follower = asyncio.get_running_loop().create_task(backend())
            await asyncio.sleep(0)
            for k in range(2):
                await conv.send_audio(turn_audio(manifest, "dialog_02.flac", k))
                await conv.wait_for(lambda c, k=k: len(c.of("event", "mark")) == k + 1, 20)
            assert len(conv.of("type", "send_input")) == 2  # (the client was asked too)
        await asyncio.wait_for(follower, 5)
    assert calls == [1, 2]
    assert server.metrics.count("inputs_received") == 2
