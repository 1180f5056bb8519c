"""Over real sockets to a real ``wsstream serve`` process, with corpus audio.

Most conversations stream faster than real time (detection depends on audio
time, not wall time) and wait for each reply's mark before the next turn, as a
half-duplex client would; the latency test streams in real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import ServerProcess, corpus_files, load_corpus, turn_ends_s
from wsclient import Conversation

from wsstream.codecs import AudioFormat

# every socket test here runs over both drivers: our transport and the ASGI one under uvicorn
BOTH_DRIVERS = True

PAUSE = 0.6


@pytest.fixture(scope="module")
def fast_server(driver: str) -> Iterator[ServerProcess]:
    """The CLI server with reply pacing lifted (--lead-ms), so tests need not wait for playback."""
    server = ServerProcess("--lead-ms", "600000", driver=driver)
    yield server
    server.close()


async def half_duplex(url: str, name: str, fmt: AudioFormat, media_as: str, manifest: dict) -> Conversation:
    """Send each turn (and most of the gap after it), wait for its reply, go on; then stop."""
    rate = fmt.sample_rate
    audio = load_corpus(name, rate)
    turns = manifest["files"][name]["turns"]
    cuts = [int((t["start"] / 16000 - 0.35) * rate) for t in turns[1:]] + [audio.size]
    async with Conversation(url + "/ws", fmt, media_as) as conv:
        pos = 0
        for i, cut in enumerate(cuts):
            await conv.send_audio(audio[pos:cut])
            pos = cut
            await conv.wait_for(lambda c, n=i + 1: sum(r.ended_by is not None for r in c.replies) >= n, 60)
        await conv.send_json({"event": "stop"})
        await conv.wait_closed()
    return conv


def check_half_duplex(conv: Conversation, name: str, manifest: dict, fmt: AudioFormat) -> None:
    ends = turn_ends_s(manifest, name)
    n = len(ends)
    assert conv.close_code == 1000
    assert len(conv.logs("started_talking")) == n
    pauses = conv.logs("pause_detected")
    assert len(pauses) == n
    for pause, end in zip(pauses, ends, strict=True):
        assert PAUSE <= pause["t"] - end <= PAUSE + 0.2, (pause, end)
    assert len(conv.logs("response_starting")) == n
    assert not conv.of("event", "clear")
    assert not conv.of("type", "error"), conv.of("type", "error")
    assert len(conv.replies) == n
    frame = fmt.sample_rate // 50
    for reply, pause in zip(conv.replies, pauses, strict=True):
        assert reply.ended_by == "mark"
        samples = len(reply.audio) // fmt.sample_width
        expected = pause["speech_s"] * fmt.sample_rate
        assert abs(samples - expected) <= frame, (samples, expected)
        # the echo really is the utterance: same length, and loud (speech, not silence)
        assert expected > 0.5 * fmt.sample_rate


async def test_binary_pcm16_16k_all_files(fast_server: ServerProcess, manifest: dict) -> None:
    fmt = AudioFormat("pcm16", 16000)
    names = corpus_files()
    convs = await asyncio.gather(*(half_duplex(fast_server.url, n, fmt, "binary", manifest) for n in names))
    for conv, name in zip(convs, names, strict=True):
        check_half_duplex(conv, name, manifest, fmt)


@pytest.mark.parametrize(("encoding", "rate", "media_as"), [
    ("pcm16", 16000, "json"),
    ("float32", 16000, "binary"),
    ("mulaw", 8000, "binary"),
    ("pcm16", 48000, "binary"),
])
async def test_formats(fast_server: ServerProcess, manifest: dict, encoding: str, rate: int, media_as: str) -> None:
    fmt = AudioFormat(encoding, rate)
    names = ["dialog_01.flac", "dialog_05.flac"]
    convs = await asyncio.gather(*(half_duplex(fast_server.url, n, fmt, media_as, manifest) for n in names))
    for conv, name in zip(convs, names, strict=True):
        check_half_duplex(conv, name, manifest, fmt)


async def realtime(url: str, name: str, manifest: dict) -> tuple[Conversation, float]:
    fmt = AudioFormat("pcm16", 16000)
    audio = load_corpus(name)
    async with Conversation(url + "/ws", fmt) as conv:
        t_send = conv.now()
        await conv.send_audio(audio, speed=1.0)
        await conv.wait_for(lambda c: c.replies and c.replies[-1].ended_by is not None, 30)
    return conv, t_send


async def test_realtime_latency_and_barge_in(cli_server: ServerProcess, manifest: dict) -> None:
    """Two files in real time: pause_detected arrives 600-800 ms (+ transport) after each turn's last
    sample was sent; a reply cut short by the next turn ends with clear; reply audio is paced."""
    names = ["dialog_04.flac", "dialog_06.flac"]
    results = await asyncio.gather(*(realtime(cli_server.url, n, manifest) for n in names))
    lead = 0.16
    for (conv, t_send), name in zip(results, names, strict=True):
        ends = turn_ends_s(manifest, name)
        pauses = conv.logs("pause_detected")
        assert len(pauses) == len(ends)
        for pause, end in zip(pauses, ends, strict=True):
            latency = pause["wall"] - (t_send + end)
            assert PAUSE <= latency <= PAUSE + 0.2 + 0.1, f"{name}: pause_detected {latency:.3f} s after turn end"
        starts = conv.logs("started_talking")
        assert len(starts) == len(ends)
        # the reply follows its pause_detected at once (the echo answers at once): a socket that held small
        # writes back (Nagle's algorithm, no TCP_NODELAY) made that 18-20 ms on every turn under uvicorn
        gaps = [reply.started - pause["wall"] for reply, pause in zip(conv.replies, pauses, strict=True)]
        assert min(gaps) < 0.01, f"{name}: response_starting {min(gaps) * 1000:.1f} ms after pause_detected at best"
        for reply, pause, nxt in zip(conv.replies, pauses, [*starts[1:], None], strict=True):
            assert reply.started >= pause["wall"]
            if reply.ended_by == "clear":
                assert nxt is not None and reply.started < nxt["wall"]  # cut by the next turn
            # paced: at any moment, no more than the lead (+ one frame, + jitter) ahead of real time
            first = reply.chunks[0][0]
            received = 0
            for t, nbytes in reply.chunks:
                received += nbytes
                ahead = received / 2 / 16000 - (t - first)
                assert ahead <= lead + 0.02 + 0.05, f"{ahead:.3f} s ahead of real time"
        # the last reply is not interrupted: it plays to its mark and is the full utterance
        last = conv.replies[-1]
        assert last.ended_by == "mark"
        assert abs(len(last.audio) / 2 - pauses[-1]["speech_s"] * 16000) <= 320
        # the corpus turns are closer together than the echoes are long: some replies were cut
        assert conv.of("event", "clear")


async def test_healthz_and_metrics(cli_server: ServerProcess) -> None:
    import urllib.request

    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{cli_server.port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()

    status, body = await asyncio.to_thread(get, "/healthz")
    assert (status, body) == (200, "ok\n")
    status, body = await asyncio.to_thread(get, "/metrics")
    assert status == 200 and "wsstream_sessions_active" in body


def test_cli_client_streams_a_file_and_saves_the_reply(cli_server: ServerProcess, tmp_path: Any) -> None:
    import subprocess
    import sys

    import soundfile as sf
    from conftest import DATA, ROOT

    out = tmp_path / "reply.wav"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "wsstream.cli", "client", str(DATA / "dialog_04.flac"),
                           "--url", cli_server.url + "/ws", "--speed", "4", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("pause_detected") == 3
    assert "closed with code 1000" in proc.stdout
    audio, rate = sf.read(out)
    assert rate == 16000 and audio.size > 16000 and np.abs(audio).max() > 0.05
    assert time.monotonic() - t0 < 100
