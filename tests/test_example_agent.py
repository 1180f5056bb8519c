"""examples/speaking_agent.py under a real ``wsstream serve`` process, over real sockets, with corpus speech.

The agent answers out loud with espeak-ng. These tests show that its audio streams while espeak-ng is
still synthesizing (held back by the server's real-time pacing), that it is speech, and that barge-in
really stops the synthesis: the espeak-ng process is killed and reaped, and never reports finishing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ServerProcess, load_corpus, require_program
from wsclient import Conversation

from vad.engine import VadEngine
from wsstream.codecs import AudioFormat, int16_to_float

FMT = AudioFormat("pcm16", 16000)
NAME = "dialog_00.flac"
SENTENCE = ("The agent streams its answer while espeak is still speaking. "
            "Every word you hear now left the synthesizer a moment ago, paced by the server. ")
MEDIUM = SENTENCE      # about 8 s of speech
LONG = SENTENCE * 5    # about 40 s of speech: far more than the server and the pipe buffer
WORDS_PER_S = 175 / 60  # espeak-ng's default speed, which the agent keeps


@pytest.fixture(scope="module")
def agent() -> Iterator[ServerProcess]:
    require_program("espeak-ng")
    # asyncio's loop: uvloop (the speed extra, --loop auto) reads a subprocess's pipe ahead of the
    # StreamReader's limit, so espeak-ng is not held back by the pipe there (seen: it exits 1 s in).
    server = ServerProcess("--handler", "examples.speaking_agent:app", "--loop", "asyncio")
    try:
        yield server
        assert espeak_children(server.proc.pid) == [], "espeak-ng outlived its replies"
    finally:
        server.close()


def proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(command name, state, parent pid) of a process, or None once it is gone (a zombie is not gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], fields[0], int(fields[1])


def espeak_children(server_pid: int) -> list[int]:
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [pid for pid in pids if (s := proc_stat(pid)) is not None and s[0] == "espeak-ng" and s[2] == server_pid]


def synthesizing(pid: int, server_pid: int) -> bool:
    """Is ``pid`` a live (not zombie) espeak-ng started by the server?"""
    stat = proc_stat(pid)
    return stat is not None and stat[0] == "espeak-ng" and stat[1] != "Z" and stat[2] == server_pid


async def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while proc_stat(pid) is not None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def outputs(conv: Conversation, synthesis: str) -> list[dict[str, Any]]:
    """The agent's ``synthesis`` outputs, each with the wall time it arrived."""
    return [{**e["data"][0], "wall": e["wall"]} for e in conv.of("type", "fetch_output")
            if e["data"][0].get("synthesis") == synthesis]


def turns(manifest: dict[str, Any]) -> list[np.ndarray]:
    """The corpus file cut into turns, each with most of the silence after it (enough for a pause)."""
    audio = load_corpus(NAME)
    starts = [t["start"] for t in manifest["files"][NAME]["turns"]]
    cuts = [0] + [s - int(0.35 * FMT.sample_rate) for s in starts[1:]] + [audio.size]
    return [audio[a:b] for a, b in itertools.pairwise(cuts)]


def speech_fraction(engine: VadEngine, pcm: np.ndarray) -> float:
    """Share of 32 ms windows Silero calls speech."""
    stream = engine.open_stream(FMT.sample_rate)
    probs = []
    for i in range(0, pcm.size, 8000):
        stream.push(int16_to_float(pcm[i:i + 8000]))
        windows = stream.take_windows()
        if len(windows):
            probs.append(engine.process([(stream, windows)])[0])
    stream.close()
    return float(np.mean(np.concatenate(probs) >= 0.5))


async def test_reply_streams_while_espeak_synthesizes(agent: ServerProcess, manifest: dict,
                                                      engine: VadEngine) -> None:
    server_pid = agent.proc.pid
    async with Conversation(agent.url + "/ws", FMT, extra_start={"inputs": {"text": MEDIUM}}) as conv:
        await conv.send_audio(turns(manifest)[0])
        await conv.wait_for(lambda c: c.replies and c.replies[0].first_audio is not None, 15)
        first_audio = conv.replies[0].first_audio
        assert first_audio is not None
        [started] = outputs(conv, "started")
        assert started["wall"] <= first_audio and started["text"] == MEDIUM
        pid = started["pid"]
        # Half a second into the reply espeak-ng is still running, blocked on its pipe: the audio
        # heard so far was streamed out of it, not read after it finished.
        await asyncio.sleep(0.5)
        assert synthesizing(pid, server_pid), f"espeak-ng {pid} not synthesizing: {proc_stat(pid)}"
        assert not outputs(conv, "finished")
        await conv.wait_for(lambda c: c.replies[0].ended_by is not None, 20)

    reply = conv.replies[0]
    assert reply.ended_by == "mark"
    assert not conv.of("type", "error") and not conv.of("type", "warning"), conv.events
    [finished] = outputs(conv, "finished")
    assert finished["pid"] == pid
    assert await gone(pid, 1.0), proc_stat(pid)  # exited and reaped

    pcm = np.frombuffer(bytes(reply.audio), dtype="<i2")
    seconds = pcm.size / FMT.sample_rate
    # finished comes only once most of the audio has gone out at real time (the server holds about 2 s)
    assert finished["wall"] - first_audio > 0.5 * seconds, (finished, first_audio, seconds)
    synthesized = finished["samples"] / finished["sample_rate"]
    assert abs(seconds - synthesized) < 0.05, (seconds, synthesized)  # all of it, resampled to 16 kHz
    expected = len(MEDIUM.split()) / WORDS_PER_S
    assert 0.6 * expected < seconds < 1.6 * expected, (seconds, expected)
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    assert rms > 1000, rms
    assert speech_fraction(engine, pcm) > 0.5  # Silero hears speech in it, not tones or noise


async def test_barge_in_kills_espeak(agent: ServerProcess, manifest: dict) -> None:
    server_pid = agent.proc.pid
    first, second = turns(manifest)[:2]
    async with Conversation(agent.url + "/ws", FMT, extra_start={"inputs": {"text": LONG}}) as conv:
        await conv.send_audio(first)
        await conv.wait_for(lambda c: c.replies and c.replies[0].first_audio is not None, 15)
        [started] = outputs(conv, "started")
        pid = started["pid"]
        await asyncio.sleep(0.5)
        # mid-synthesis, held back by the pacing
        assert synthesizing(pid, server_pid), f"espeak-ng {pid} not synthesizing: {proc_stat(pid)}"

        await conv.send_audio(second)  # the user speaks over the agent
        await conv.wait_for(lambda c: c.of("event", "clear"), 5)
        clear = conv.of("event", "clear")[0]["wall"]
        assert conv.replies[0].ended_by == "clear"
        assert await gone(pid, 1.0), f"espeak-ng {pid} still there after the clear: {proc_stat(pid)}"
        heard = len(conv.replies[0].audio) / FMT.sample_width / FMT.sample_rate
        assert heard < clear - conv.replies[0].first_audio + 0.5  # paced at real time, not flushed

        # the interrupting turn gets a reply of its own, from a new espeak-ng
        await conv.wait_for(lambda c: len(outputs(c, "started")) == 2, 15)
        second_pid = outputs(conv, "started")[1]["pid"]
        assert second_pid != pid
        await asyncio.sleep(0.3)
    # closing the connection in mid-reply stops that synthesis too
    assert await gone(second_pid, 2.0), proc_stat(second_pid)
    assert espeak_children(server_pid) == []
    assert not outputs(conv, "finished"), outputs(conv, "finished")
    assert not conv.of("type", "error"), conv.of("type", "error")
