"""Every telephone bridge over real sockets, at once: corpus calls from each provider, on its own path
and through the recognising ``/telephony`` endpoint.

One CLI server (its embedded echo reply) takes, per provider, three half-duplex
calls (the caller waits for each reply to play), one full-duplex call (the
caller talks over the replies: barge-in) and one call through ``/telephony``,
all in real time and all concurrently. Each provider's wire (tests/peers) plays
the provider's part: its messages, its playback buffer, its marker reports.
tests/test_telephony.py holds Twilio to more (it came first); what is checked
here holds for every provider.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import numpy as np
import pytest
from conftest import ServerProcess, load_corpus
from peers import WIRES
from peers.base import TelephonyPeer, ahead_of_realtime, bytes_per_sample
from websockets.asyncio.client import connect

from wsstream.codecs import encode
from wsstream.echo import echo
from wsstream.reply import ReplyOnPause, current_context

BOTH_DRIVERS = True

LEAD = 0.16
# delivery jitter allowed: wider than tests/test_telephony.py's on our driver, since here one client process runs
# some 25 real-time calls at once next to the other test worker (seen over 50 ms late under -n 2)
JITTER_BY_DRIVER = {"native": 0.08, "asgi": 0.1}
PREFIX = 0.3
HALF = [("dialog_00.flac", 2), ("dialog_02.flac", 1), ("dialog_04.flac", 2)]
ROUTED = ("dialog_03.flac", 1)
BARGE_IN = ("dialog_06.flac", 3)


class Call:
    def __init__(self, provider: str, name: str, n_turns: int, mode: str, peer: TelephonyPeer,
                 turns: list[tuple[float, float]]) -> None:
        self.provider, self.name, self.n_turns, self.mode, self.peer = provider, name, n_turns, mode, peer
        self.turns = turns[:n_turns]
        self.turn_wall: list[tuple[float, float]] = []
        self.segments: list[tuple[int, int, int]] = []  # (offset sent, offset in file, bytes), in wire bytes
        self.close_code: int | None = None

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.mode}:{self.name}"


def turns_s(manifest: dict[str, Any], name: str) -> list[tuple[float, float]]:
    sr = manifest["sample_rate"]
    return [(t["start"] / sr, t["end"] / sr) for t in manifest["files"][name]["turns"]]


async def run_call(url: str, provider: str, n: int, name: str, n_turns: int, mode: str,
                   manifest: dict[str, Any]) -> Call:
    wire = WIRES[provider](n, custom={"file": name})
    if mode == "routed":
        wire.path = "/telephony" + "".join(wire.path.partition("?")[1:])  # keep its query
    rate, bps = wire.sample_rate, bytes_per_sample(wire.encoding)
    audio = encode(load_corpus(name, rate), wire.encoding)
    peer = TelephonyPeer(url, wire)
    all_turns = turns_s(manifest, name)
    call = Call(provider, name, n_turns, mode, peer, all_turns)
    frame = peer.frame_bytes
    peer.filler = audio[:int(0.3 * rate) * bps // frame * frame]  # the call's own room tone between turns

    def at(seconds: float) -> int:
        return int(seconds * rate) * bps

    async with peer:
        if mode in ("half", "routed"):
            pos = 0
            for i, (start, end) in enumerate(call.turns):
                cut = at(all_turns[i + 1][0] - 0.35) if i + 1 < len(all_turns) else len(audio)
                t_send = peer.now() - pos / (rate * bps)
                call.segments.append((len(peer.sent), pos, cut - pos))
                await peer.send_audio(audio[pos:cut])
                call.turn_wall.append((t_send + start, t_send + end))
                pos = cut
                await peer.send_silence_until(lambda p, k=i + 1: len(p.marks_echoed) >= k)
        else:
            cut = at(all_turns[n_turns][0] - 0.35) if n_turns < len(all_turns) else len(audio)
            t_send = peer.now()
            call.segments.append((0, 0, cut))
            await peer.send_audio(audio[:cut])
            call.turn_wall = [(t_send + s, t_send + e) for s, e in call.turns]
            await peer.send_silence_until(lambda p: len(p.replies) >= n_turns and p.replies[-1].ended_by == "mark")
            await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1)
        stop = wire.stop()
        if stop is None:  # the provider hangs up by closing the socket
            await peer.ws.close()  # type: ignore[union-attr]
        else:
            await peer.send_raw(stop)
        call.close_code = await peer.wait_closed(5.0)
    return call


@pytest.fixture(scope="module")
def calls(manifest: dict[str, Any], driver: str) -> dict[str, Any]:
    server = ServerProcess("--log-level", "DEBUG", driver=driver)
    try:
        async def all_calls() -> list[Call]:
            jobs = []
            for p, provider in enumerate(WIRES):
                base = 1000 * (p + 1)
                for i, (name, k) in enumerate(HALF):
                    jobs.append(run_call(server.url, provider, base + i, name, k, "half", manifest))
                jobs.append(run_call(server.url, provider, base + 10, *BARGE_IN, "full", manifest))
                jobs.append(run_call(server.url, provider, base + 20, *ROUTED, "routed", manifest))
            return list(await asyncio.gather(*jobs))

        t0 = time.monotonic()
        result = asyncio.run(all_calls())
        wall = time.monotonic() - t0
    finally:
        server.close()
    return {"calls": result, "wall": wall, "log": "".join(server.output), "jitter": JITTER_BY_DRIVER[driver]}


def of_mode(calls: dict[str, Any], *modes: str) -> list[Call]:
    return [c for c in calls["calls"] if c.mode in modes]


def normalise(data: bytes, encoding: str) -> bytes:
    return data.replace(b"\x7f", b"\xff") if encoding == "mulaw" else data  # μ-law's two zeros


def reply_frame_bytes(call: Call) -> int:
    """The server's frames: 20 ms, or as long as the provider wants them (its wire's ``reply_frame_ms``:
    Exotel takes messages of at least 3200 bytes), on its own path and through /telephony alike."""
    wire = call.peer.wire
    ms = getattr(wire, "reply_frame_ms", 20.0)
    return int(wire.sample_rate * ms / 1000) * bytes_per_sample(wire.encoding)


def reply_frame_s(call: Call) -> float:
    return reply_frame_bytes(call) / call.peer.byte_rate


def echo_offset_s(call: Call, reply_audio: bytes) -> float:
    """Where in the corpus file this reply starts (s); fails unless it is the caller's own audio, exactly."""
    peer = call.peer
    body = normalise(reply_audio[:-reply_frame_bytes(call)], peer.wire.encoding)  # the last frame is padded
    sent = normalise(bytes(peer.sent), peer.wire.encoding)
    assert len(body) >= 20 * peer.frame_bytes, f"{call.label}: reply too short ({len(body)} bytes)"
    at = sent.find(body)
    assert at >= 0, f"{call.label}: reply audio is not the caller's own audio, byte for byte"
    for sent_off, file_off, n in call.segments:
        if sent_off <= at < sent_off + n:
            return (file_off + at - sent_off) / peer.byte_rate
    raise AssertionError(f"{call.label}: reply starts in the line silence between turns")


def test_every_provider_is_here(calls: dict[str, Any]) -> None:
    assert {c.provider for c in calls["calls"]} == set(WIRES)
    assert calls["wall"] < 60, f"real-time calls took {calls['wall']:.1f} s"


def test_every_turn_answered_with_its_echo_then_a_marker(calls: dict[str, Any]) -> None:
    for call in of_mode(calls, "half", "routed"):
        peer = call.peer
        assert len(peer.replies) == call.n_turns, (call.label, len(peer.replies), peer.last(5))
        assert not peer.cleared, call.label
        for reply, (start, end) in zip(peer.replies, call.turns, strict=True):
            assert reply.ended_by == "mark" and reply.mark, (call.label, reply.ended_by)
            at = echo_offset_s(call, reply.audio)
            assert start - PREFIX - 0.25 <= at <= start, (call.label, at, start)
            dur = len(reply.audio) / peer.byte_rate
            assert end + 0.4 <= at + dur <= end + 1.0, (call.label, at + dur, end)


def test_every_frame_is_as_long_as_the_provider_wants(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        sizes = {len(p) for r in call.peer.replies for _, p in r.frames}
        assert sizes == {reply_frame_bytes(call)}, (call.label, sorted(sizes))


def test_paced_never_more_than_the_lead_ahead(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        bound = LEAD + reply_frame_s(call) + calls["jitter"]
        for reply in call.peer.replies:
            ahead = ahead_of_realtime(reply, call.peer.byte_rate)
            assert ahead <= bound, f"{call.label}: a reply ran {ahead:.3f} s ahead of real time"
            if len(reply.frames) > 20:
                assert ahead >= LEAD - 0.03, f"{call.label}: only {ahead:.3f} s ahead; lead not used"
        assert call.peer.max_buffered <= bound, (call.label, call.peer.max_buffered)


def test_markers_reported_back_are_the_ones_sent(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        peer = call.peer
        assert peer.marks_sent and len(peer.marks_sent) == len(set(peer.marks_sent)), call.label
        assert peer.marks_echoed == peer.marks_sent, call.label
        kinds = [r.kind for _, r in peer.received if r.kind != "other"]
        assert kinds[0] == "media", (call.label, kinds[:3])
        for prev, cur in itertools.pairwise(kinds):
            assert not (prev == "mark" and cur in ("mark", "clear")), (call.label, "marker without audio")


def test_barge_in_flushes_and_the_old_reply_stops(calls: dict[str, Any]) -> None:
    for call in of_mode(calls, "full"):
        peer, replies = call.peer, call.peer.replies
        assert [r.ended_by for r in replies] == ["clear"] * (call.n_turns - 1) + ["mark"], \
            (call.label, [r.ended_by for r in replies])
        assert len(peer.cleared) == call.n_turns - 1, call.label
        for left in peer.cleared:  # what the caller still heard after the flush: within the lead
            assert left <= LEAD + reply_frame_s(call) + calls["jitter"], (call.label, left)
        for k, reply in enumerate(replies[:-1]):
            next_start, next_end = call.turn_wall[k + 1]
            assert reply.end_wall is not None
            assert 0.2 <= reply.end_wall - next_start <= 0.8, (call.label, k, reply.end_wall - next_start)
            nxt = replies[k + 1]  # nothing of the old reply after the flush: the next reply, after its turn
            assert nxt.first >= next_end + 0.5, (call.label, k, nxt.first - next_end)
            assert abs(echo_offset_s(call, nxt.audio) - (call.turns[k + 1][0] - PREFIX)) <= 0.25


def test_the_call_ends_when_the_provider_hangs_up(calls: dict[str, Any]) -> None:
    for call in calls["calls"]:
        assert call.close_code == 1000, (call.label, call.close_code)


def test_telephony_recognised_each_provider(calls: dict[str, Any]) -> None:
    log = calls["log"]
    for call in of_mode(calls, "routed"):
        assert f"recognised as a {call.provider} call" in log, call.label


# ---- context: start metadata, DTMF, markers played -------------------------------


@pytest.mark.parametrize("provider", list(WIRES))
@pytest.mark.parametrize("path", ["own", "/telephony"])
async def test_reply_context_has_the_call_dtmf_and_markers(make_server: Any, provider: str, path: str) -> None:
    seen: list[dict[str, Any]] = []

    async def reply(audio: tuple[int, np.ndarray]):
        ctx = current_context()
        seen.append({"call": dict(ctx.call), "dtmf": list(ctx.dtmf), "played": list(ctx.marks_played),
                     "client": ctx.client_id, "dialect": ctx.dialect, "rate": audio[0]})
        async for chunk in echo(audio):
            yield chunk

    server = await make_server(ReplyOnPause(fn=reply))
    wire = WIRES[provider](7, custom={"caller": "+15550100"})
    if path != "own":
        wire.path = path + "".join(wire.path.partition("?")[1:])
    audio = encode(load_corpus("dialog_06.flac", wire.sample_rate), wire.encoding)
    peer = TelephonyPeer(f"ws://127.0.0.1:{server.port}", wire)
    half = int(4.4 * wire.sample_rate) * bytes_per_sample(wire.encoding)
    async with peer:
        await peer.send_audio(audio[:half], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.dtmf("1")
        await peer.dtmf("#")
        await peer.send_audio(audio[half:2 * half], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 2, within=15)
        await peer.stop()
        if wire.stop() is None:
            await peer.ws.close()  # type: ignore[union-attr]
        assert await peer.wait_closed() == 1000
    assert len(seen) == 2, seen
    first, second = seen
    assert first["dialect"] == (provider if path == "own" else "telephony")
    assert first["rate"] == wire.sample_rate
    assert "+15550100" in json.dumps(first["call"]), first["call"]  # the provider's custom parameters
    if path != "own":
        assert first["call"]["provider"] == provider
    assert first["dtmf"] == [] and first["played"] == []
    assert second["dtmf"] == ["1", "#"]
    assert second["played"] == [peer.marks_echoed[0]]
    for _ in range(100):
        if server.active == 0:
            break
        await asyncio.sleep(0.02)
    assert server.active == 0


# ---- the recognising endpoint refuses what it does not know ------------------------


@pytest.mark.parametrize("first", [
    json.dumps({"event": "hello", "protocol": "mine"}),
    json.dumps({"type": "start", "data": {}}),  # a /ws client at the wrong door
    "not json at all",
    b"\x00\x01\x02\x03",
    json.dumps([1, 2, 3]),
])
async def test_telephony_refuses_an_unknown_first_message(make_server: Any, first: str | bytes) -> None:
    server = await make_server(ReplyOnPause(fn=echo))
    async with connect(f"ws://127.0.0.1:{server.port}/telephony", open_timeout=10) as ws:
        await ws.send(first)
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed of either kind
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1003
        assert "telephony takes calls from" in (ws.close_reason or ""), ws.close_reason


async def test_telephony_gives_up_after_a_few_shared_openings(make_server: Any) -> None:
    server = await make_server(ReplyOnPause(fn=echo))
    async with connect(f"ws://127.0.0.1:{server.port}/telephony", open_timeout=10) as ws:
        for _ in range(3):
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        with pytest.raises(Exception):  # noqa: B017
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1003
