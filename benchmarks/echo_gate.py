"""The echo gate over the whole corpus: echo that must not interrupt, talkers who must, and what it costs.

    uv run python benchmarks/echo_gate.py [--quick]

Each call runs the real core (``StreamCore`` with the embedded echo reply, so the
reply is real speech) and the real Silero engine on a fake clock, no sockets. The
client is a speakerphone without echo cancellation: its loudspeaker plays each
reply frame from when it arrives, and its microphone hears that delayed (50, 150,
250 ms), attenuated (6, 12, 20 dB) and band-limited (300-3400 Hz), on top of the
caller's line (the recording's room tone). Its microphone runs on its own clock,
which falls behind the server's by a random 0-3 ms every 100 ms, with a 20 ms
jump one time in fifty (a loaded client, lost packets): the echo's delay drifts
within a call, as it does on a real line. Both 16 kHz PCM16 and 8 kHz μ-law.

* echo: the caller says turn 0 of a file and then only listens; the reply must
  play to its end (no ``clear``) and its echo must not become a turn.
* talker: 0.8 s into the reply, a sentence of another file's speaker is spoken
  over the echo; it must interrupt within interrupt_ms + 200 ms of its start.

The cost is CPU time per second of stream audio, next to the VAD's
(``process_with_levels``) in the same run: the gate's own (feeding it, every
question asked) and the core's part of the echo handling (placing each reply frame
on the input timeline, the echo clock), each timed exclusively.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _corpus import load, manifest

from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream.codecs import AudioFormat, decode, encode, float_to_int16
from wsstream.config import StreamConfig
from wsstream.core import StartReply, StreamCore
from wsstream.echo import echo
from wsstream.echogate import EchoGate
from wsstream.events import AudioOut, Clear, Log, Mark
from wsstream.reply import ReplyOnPause

DELAYS = (0.05, 0.15, 0.25)
ATTENS = (6.0, 12.0, 20.0)
FORMATS = (("pcm16", 16000), ("mulaw", 8000))


class Clock:
    """CPU seconds of this thread (a loaded machine does not inflate them) in the wrapped callables, each
    field exclusive: a wrapped call inside another is counted in its own field and taken off the outer's."""

    FIELDS = ("feed", "place", "ask", "vad")

    def __init__(self) -> None:
        self.feed = 0.0  # the gate's own feeding: EchoGate.microphone and .reference
        self.place = 0.0  # the core's part: placing the reference on the input timeline, the echo clock
        self.ask = 0.0  # the questions (EchoGate.analyse)
        self.vad = 0.0
        self.questions = 0
        self.calls = dict.fromkeys(self.FIELDS, 0)  # timed calls, to take the timer's own cost off
        self._inner: list[float] = []  # per open timed call: the time of the timed calls inside it

    def wrap(self, fn: Callable[..., Any], field: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - t
                inner = self._inner.pop()
                setattr(self, field, getattr(self, field) + spent - inner)
                self.calls[field] += 1
                if self._inner:
                    self._inner[-1] += spent
        return timed

    def add(self, other: Clock) -> None:
        for key in self.FIELDS:
            setattr(self, key, getattr(self, key) + getattr(other, key))
            self.calls[key] += other.calls[key]
        self.questions += other.questions

    @staticmethod
    def overhead() -> float:
        """What timing a call that does nothing measures (s): taken off every timed call."""
        clock = Clock()
        noop = clock.wrap(lambda: None, "feed")
        for _ in range(100_000):
            noop()
        return clock.feed / 100_000


def band_pass(rate: int, taps: int = 129) -> np.ndarray:
    n = np.arange(taps) - (taps - 1) / 2

    def low(fc: float) -> np.ndarray:
        return 2 * fc / rate * np.sinc(2 * fc / rate * n)
    return (low(min(3400.0, rate / 2 - 100)) - low(300.0)) * np.hamming(taps)


def replies(fn: Any, audio: Any) -> list[Any]:
    async def run() -> list[Any]:
        return [item async for item in fn(audio)]
    return asyncio.run(run())


def call(engine: VadEngine, clock: Clock, name: str, delay: float, atten: float, encoding: str, rate: int,
         talker: np.ndarray | None, seed: int) -> dict[str, Any]:
    """One call; what the client saw."""
    rng = np.random.default_rng(seed)
    frame = rate // 50
    fir = band_pass(rate)
    core = StreamCore(ReplyOnPause(echo), lambda r: engine.open_stream(r), stream_id=name,
                      input_format=AudioFormat(encoding, rate), config=StreamConfig(echo_gate=True))
    gate = core._echo
    assert isinstance(gate, EchoGate)
    for attr in ("microphone", "reference"):
        setattr(gate, attr, clock.wrap(getattr(gate, attr), "feed"))
    analyse = clock.wrap(gate.analyse, "ask")

    def counted(*args: Any) -> Any:
        clock.questions += 1
        return analyse(*args)
    gate.analyse = counted  # type: ignore[method-assign]
    core._echo_reference = clock.wrap(core._echo_reference, "place")  # type: ignore[method-assign]
    core._echo_clock = clock.wrap(core._echo_clock, "place")  # type: ignore[method-assign]
    process = clock.wrap(engine.process_with_levels, "vad")

    turn = manifest()["files"][name]["turns"][0]
    audio = load(name, rate)
    scale = rate / 16000
    speech = float_to_int16(audio[int(max(turn["start"] - 4800, 0) * scale):int(turn["end"] * scale)])
    room = np.resize(float_to_int16(audio[:int(0.3 * rate)]), speech.size + 12 * rate).astype(np.float64)
    own = room.copy()
    own[:speech.size] = speech
    total = own.size
    gain = 10 ** (-atten / 20)
    played = np.zeros(total + 30 * rate)  # the loudspeaker, on the server's clock (samples)
    play_pos = -1
    out: dict[str, Any] = {"clears": 0, "marks": 0, "pauses": 0, "first": None, "clear_at": None, "talk_at": None}
    lag = 0.0  # how far the microphone's clock has fallen behind the server's (s)
    taps = fir.size - 1
    for k in range(total // frame):
        i = k * frame
        if k % 5 == 0:
            lag += rng.uniform(0, 0.003) + (0.02 if rng.random() < 0.02 else 0.0)
        now = (i + frame) / rate + lag
        hi = int(round((now - delay) * rate))
        seg = np.zeros(frame + taps)
        a = max(hi - frame - taps, 0)
        if hi > a:
            seg[a - (hi - frame - taps):] = played[a:hi]
        mic = own[i:i + frame] + np.convolve(seg, fir, mode="valid") * gain
        core.offer_audio(encode(np.clip(mic, -32768, 32767).astype(np.int16), encoding))
        windows = core.vad.take_windows()
        if len(windows):
            ((probs, levels),) = process([(core.vad, windows)])
            core.on_vad(probs, levels, now)
        if core.deadline is not None and core.deadline <= now:
            core.poll(now)
        events = core.take_events()
        while events:
            ev = events.pop(0)
            if isinstance(ev, StartReply):
                for item in replies(ev.fn, ev.args[0]):
                    core.reply_item(ev.seq, item, now)
                core.reply_done(ev.seq, now)
                events.extend(core.take_events())
            elif isinstance(ev, AudioOut):
                x = decode(ev.data, encoding).astype(np.float64)
                play_pos = max(play_pos, int(round(now * rate)))
                out["first"] = now if out["first"] is None else out["first"]
                played[play_pos:play_pos + x.size] = x
                play_pos += x.size
            elif isinstance(ev, Clear):
                out["clears"] += 1
                out["clear_at"] = now if out["clear_at"] is None else out["clear_at"]
                stop = int(round(now * rate))
                if play_pos > stop:
                    played[stop:play_pos] = 0
                    play_pos = stop
            elif isinstance(ev, Mark):
                out["marks"] += 1
            elif isinstance(ev, Log) and ev.name == "pause_detected":
                out["pauses"] += 1
        if talker is not None and out["talk_at"] is None and out["first"] is not None and now > out["first"] + 0.8:
            m = min(talker.size, total - i - frame)
            own[i + frame:i + frame + m] += talker[:m]
            out["talk_at"] = now
    core.release()
    out["seconds"] = total / rate
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one delay and attenuation per file")
    parser.add_argument("--case", choices=("echo", "talker"), help="only this case")
    args = parser.parse_args()
    engine = VadEngine(SileroModel())
    info = manifest()
    names = sorted(info["files"])
    grid = list(itertools.product(DELAYS, ATTENS))
    call(engine, Clock(), names[0], 0.05, 6.0, "pcm16", 16000, None, seed=0)  # (warm-up: numpy's first calls)
    print(f"{'format':12} {'case':7} {'calls':>5} {'failed':>6}   detail")
    totals = Clock()
    seconds = 0.0
    for encoding, rate in FORMATS:
        for case in ("echo", "talker") if args.case is None else (args.case,):
            clock = Clock()
            calls = failed = 0
            latencies: list[float] = []
            failures: list[str] = []
            stream_s = 0.0
            for i, name in enumerate(names):
                talker = None
                if case == "talker":
                    other = names[(i + 3) % len(names)]
                    turn = info["files"][other]["turns"][1]
                    s = rate / 16000
                    talker = float_to_int16(load(other, rate)[int(turn["start"] * s):int(turn["end"] * s)])
                    talker = talker.astype(np.float64)
                cases = grid[i % 3::3] if case == "talker" else grid
                if args.quick:
                    cases = cases[:1]
                for delay, atten in cases:
                    r = call(engine, clock, name, delay, atten, encoding, rate, talker, seed=i)
                    calls += 1
                    stream_s += r["seconds"]
                    if case == "echo":
                        bad = r["clears"] > 0 or r["marks"] != 1 or r["pauses"] != 1
                        what = f"{r['clears']} clears, {r['pauses']} turns"
                    else:
                        after = None if r["clear_at"] is None else r["clear_at"] - r["talk_at"]
                        bad = after is None or after > 0.7
                        what = "never cleared" if after is None else f"cleared after {after * 1000:.0f} ms"
                        if after is not None:
                            latencies.append(after * 1000)
                    failed += bad
                    if bad:
                        failures.append(f"{name} {delay * 1000:.0f} ms {atten:.0f} dB: {what}")
            detail = ""
            if latencies:
                detail = (f"clear after the talker's start: median {np.median(latencies):.0f} ms, "
                          f"max {max(latencies):.0f}")
            print(f"{encoding + ' ' + str(rate // 1000) + 'k':12} {case:7} {calls:5d} {failed:6d}   {detail}")
            for line in failures:
                print(f"{'':34}{line}")
            totals.add(clock)
            seconds += stream_s
    print()
    cost = Clock.overhead()
    for key in Clock.FIELDS:
        setattr(totals, key, getattr(totals, key) - cost * totals.calls[key])
    feed, place, ask, vad = (getattr(totals, key) / seconds * 1000 for key in Clock.FIELDS)
    gate = feed + ask
    print(f"stream audio: {seconds:.0f} s (half of it replies, most of them echoing back); the timer's own "
          f"{cost * 1e6:.2f} us per timed call taken off")
    print(f"VAD:  {vad:.3f} ms CPU per stream-second")
    print(f"gate: {gate:.3f} ms CPU per stream-second = {100 * gate / vad:.1f}% of VAD ({feed:.3f} feeding it, "
          f"{ask:.3f} in {totals.questions} questions, {totals.ask / max(totals.questions, 1) * 1e6:.0f} us each)")
    print(f"core's part (the reference placed on the input timeline, the echo clock): {place:.3f}; "
          f"echo handling in all {gate + place:.3f} ms = {100 * (gate + place) / vad:.1f}% of VAD")
    print(f"a stream whose replies never echo pays the feeding alone: {feed + place:.3f} ms per stream-second "
          f"({feed:.3f} of it the gate's)")

if __name__ == "__main__":
    main()
