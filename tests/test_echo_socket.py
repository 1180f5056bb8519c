"""Our own reply coming back into the microphone does not interrupt it; a real talker over it does.

Each client plays what it receives as a speakerphone without echo cancellation
would: the reply, in real time from its first frame, comes back into the
microphone delayed (50–250 ms), attenuated (6–20 dB) and band-limited to the
telephone band (300–3400 Hz), on top of the caller's own line (the recording's
room tone). Over the whole corpus, with the embedded echo reply (so the "reply"
is real speech), no reply may be interrupted and no echo may become a turn.
Then a corpus sentence from another speaker is spoken over the echoing reply:
it must still interrupt (``clear``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np
import pytest
from conftest import load_corpus
from wsclient import Conversation

from wsstream.codecs import AudioFormat
from wsstream.config import StreamConfig
from wsstream.echo import echo
from wsstream.reply import ReplyOnPause

BOTH_DRIVERS = True

RATE = 16000
FRAME = RATE // 50  # 20 ms
GRID = list(itertools.product((0.05, 0.15, 0.25), (6.0, 12.0, 20.0)))  # (delay s, attenuation dB)


def band_pass(taps: int = 129) -> np.ndarray:
    """A windowed-sinc FIR for 300–3400 Hz: what a telephone line leaves of the reply."""
    n = np.arange(taps) - (taps - 1) / 2
    def low(fc: float) -> np.ndarray:
        return 2 * fc / RATE * np.sinc(2 * fc / RATE * n)
    return ((low(3400) - low(300)) * np.hamming(taps)).astype(np.float64)


class Speakerphone:
    """The client's device: one audio clock for its loudspeaker and its microphone, as in any phone.

    The loudspeaker plays the reply audio in the order it arrives, each message as soon as it has arrived
    and the one before it has played (a late message leaves a gap, as in a browser's or a phone's
    playout buffer), and drops what it holds at a ``clear``. The microphone hears that delayed, quieter
    and band-limited. A capture sample is taken at its own time on the device clock, whenever the loop
    gets round to sending it: a client that falls behind (this test's loop is shared by sixteen calls and
    the server) sends late, in a burst, but what it captured is what played at that moment.
    """

    def __init__(self, conv: Conversation, delay_s: float, atten_db: float) -> None:
        self.conv, self.delay, self.gain = conv, delay_s, 10 ** (-atten_db / 20)
        self.fir = band_pass()
        self.tail = np.zeros(self.fir.size - 1)
        self.emitted = 0  # microphone samples captured so far
        self.t0: float | None = None  # device time (the conversation's clock) of microphone sample 0
        self._taken: list[list[int]] = []  # per reply: messages and bytes placed on the loudspeaker so far
        self._clears = 0  # clears acted on so far
        self._played: list[list[Any]] = []  # [start time, samples]: runs of reply audio played back to back

    def capture_end(self, n: int) -> float:
        """The device time by which the next ``n`` microphone samples have been captured."""
        if self.t0 is None:
            self.t0 = self.conv.now()
        return self.t0 + (self.emitted + n) / RATE

    def _loudspeaker(self) -> list[list[Any]]:
        """What the loudspeaker plays: each message from max(its arrival, the end of the one before)."""
        for i, reply in enumerate(self.conv.replies):
            if i == len(self._taken):
                self._taken.append([0, 0])  # (messages, bytes) of this reply placed so far
            taken = self._taken[i]
            for t, size in reply.chunks[taken[0]:]:
                samples = np.frombuffer(bytes(reply.audio[taken[1]:taken[1] + size]), np.int16).astype(np.float64)
                taken[0] += 1
                taken[1] += size
                last = self._played[-1] if self._played else None
                if last is not None and last[0] + last[1].size / RATE >= t:
                    last[1] = np.concatenate([last[1], samples])  # (it arrived before the last one ended)
                else:
                    self._played.append([t, samples])
        clears = [e["wall"] for e in self.conv.events if e.get("event") == "clear"]
        for wall in clears[self._clears:]:
            for run in self._played:  # what had not played by the clear is dropped
                run[1] = run[1][:max(min(int((wall - run[0]) * RATE), run[1].size), 0)]
        self._clears = len(clears)
        return self._played

    def echo(self, n: int) -> np.ndarray:
        """The echo in the next ``n`` microphone samples."""
        assert self.t0 is not None
        t_first = self.t0 + self.emitted / RATE  # when the first of them is captured
        buf = np.zeros(n)
        for t, audio in self._loudspeaker():
            # sample k of this run plays at t + k / RATE and reaches the microphone ``delay`` later
            start = int(round((t + self.delay - t_first) * RATE))
            lo, hi = max(start, 0), min(start + audio.size, n)
            if hi > lo:
                buf[lo:hi] += audio[lo - start:hi - start]
        self.emitted += n
        full = np.concatenate([self.tail, buf * self.gain])
        self.tail = full[-(self.fir.size - 1):]
        return np.convolve(full, self.fir, mode="valid")


async def speak(conv: Conversation, phone: Speakerphone, own: np.ndarray) -> None:
    """Send ``own`` (the caller's line) plus the echo, each 20 ms frame once the device has captured it."""
    for i in range(0, own.size - FRAME + 1, FRAME):
        delay = phone.capture_end(FRAME) - conv.now()
        if delay > 0:
            await asyncio.sleep(delay)
        mic = own[i:i + FRAME].astype(np.float64) + phone.echo(FRAME)
        await conv.ws.send(np.clip(mic, -32768, 32767).astype(np.int16).tobytes())  # type: ignore[union-attr]


def room_tone(name: str, seconds: float) -> np.ndarray:
    room = load_corpus(name)[:int(0.3 * RATE)]
    return np.resize(room, int(seconds * RATE))


async def echo_call(url: str, manifest: dict[str, Any], name: str, delay: float, atten: float,
                    talker: np.ndarray | None = None) -> dict[str, Any]:
    turn = manifest["files"][name]["turns"][0]
    speech = load_corpus(name)[max(turn["start"] - 4800, 0):turn["end"]]
    async with Conversation(url + "/ws", AudioFormat("pcm16", RATE)) as conv:
        phone = Speakerphone(conv, delay, atten)
        await speak(conv, phone, speech)
        # the caller listens (the line's room tone, and the echo of the reply), or talks over the reply
        t_end = conv.now() + 12.0
        line = room_tone(name, 0.1)
        talker_line = talker.astype(np.float64) + room_tone(name, talker.size / RATE) if talker is not None else None
        spoke = False
        while conv.now() < t_end:
            replies = conv.replies
            if replies and replies[0].ended_by is not None and conv.now() > replies[0].first_audio + 1.5 + \
                    len(replies[0].audio) / 2 / RATE:
                break  # the reply has played, and its echo died away, with time for a turn to form
            if talker is not None and not spoke and replies and replies[0].first_audio is not None \
                    and conv.now() > replies[0].first_audio + 0.8:
                spoke = True
                t_talk = phone.capture_end(0)  # (device time of the talker's first sample)
                await speak(conv, phone, talker_line)
                continue
            await speak(conv, phone, line)
        clears = [e for e in conv.events if e.get("event") == "clear"]
        return {"name": name, "delay": delay, "atten": atten, "replies": [r.ended_by for r in conv.replies],
                "pauses": len(conv.logs("pause_detected")), "clears": len(clears),
                "clear_after": clears[0]["wall"] - t_talk if clears and talker is not None else None,
                "echo_logs": len(conv.logs("echo"))}


@pytest.fixture
async def server(make_server: Any) -> Any:
    return await make_server(ReplyOnPause(echo), stream=StreamConfig(echo_gate=True))


@pytest.mark.native_only  # (the gate is the core's; the talker test runs both drivers)
async def test_the_reply_echoed_back_never_interrupts_it(server: Any, manifest: dict[str, Any]) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    names = sorted(manifest["files"])
    jobs = [echo_call(url, manifest, n, *GRID[(i * 4) % len(GRID)]) for i, n in enumerate(names)]
    jobs += [echo_call(url, manifest, n, *GRID[(i * 4 + 2) % len(GRID)]) for i, n in enumerate(names)]
    results = await asyncio.gather(*jobs)
    assert {(r["delay"], r["atten"]) for r in results} == set(GRID)  # every delay and attenuation tried
    bad = [r for r in results if r["clears"] or r["replies"] != ["mark"] or r["pauses"] != 1]
    print(f"{len(bad)} of {len(results)} failed:", [(r["name"], r["delay"], r["atten"], r["replies"]) for r in bad])
    for r in results:
        assert r["clears"] == 0, r  # never cut off by its own echo
        assert r["replies"] == ["mark"], r  # played to its end, and the echo was not answered
        assert r["pauses"] == 1, r
    assert "interruptions" not in server.metrics.counters


async def test_a_talker_over_the_echo_still_interrupts(server: Any, manifest: dict[str, Any]) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    names = sorted(manifest["files"])
    jobs = []
    for i, name in enumerate(names[:6]):
        other = names[(i + 3) % len(names)]
        turn = manifest["files"][other]["turns"][1]
        talker = load_corpus(other)[turn["start"]:turn["end"]]
        jobs.append(echo_call(url, manifest, name, *GRID[(i * 5) % len(GRID)], talker=talker))
    for r in await asyncio.gather(*jobs):
        assert r["clears"] >= 1 and r["replies"][0] == "clear", r
        assert r["clear_after"] is not None and r["clear_after"] <= 0.5 + 0.1 + 0.1, r
