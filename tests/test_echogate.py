"""The echo gate's rules: the gate on corpus speech, and the core's barge-in with it, on a fake clock.

A speakerphone is modelled in code: the reply (corpus speech) comes back delayed,
attenuated and band-limited to the telephone band, on the caller's room tone. The
gate must find nobody but the echo in that, and find a talker (another corpus
speaker) over it, from where they start. The core-level tests feed the VAD's
probabilities by hand (tests/test_core.py's Harness) with real audio under them.
tests/test_echo_socket.py does the whole corpus over real sockets, with the VAD.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import load_corpus
from test_core import PAUSE, SIL, SP, WIN, Harness, of, trace

from wsstream.codecs import decode, encode
from wsstream.core import ReplyState
from wsstream.echogate import EchoGate
from wsstream.events import AudioOut, Clear
from wsstream.reply import ReplyOnPause


def band_pass(rate: int, taps: int = 129) -> np.ndarray:
    n = np.arange(taps) - (taps - 1) / 2

    def low(fc: float) -> np.ndarray:
        return 2 * fc / rate * np.sinc(2 * fc / rate * n)
    return (low(min(3400.0, rate / 2 - 100)) - low(300.0)) * np.hamming(taps)


def speakerphone(reply: np.ndarray, rate: int, delay_s: float, atten_db: float) -> np.ndarray:
    """What the microphone hears of ``reply`` played from sample 0: delayed, quieter, telephone band."""
    echo = np.zeros(reply.size + int(delay_s * rate))
    echo[int(delay_s * rate):] = reply * 10 ** (-atten_db / 20)
    return np.convolve(echo, band_pass(rate))[:echo.size]


def room(rate: int, n: int) -> np.ndarray:
    return np.resize(load_corpus("dialog_03.flac", rate)[:int(0.3 * rate)], n).astype(np.float64)


def corpus_turn(manifest: dict[str, Any], name: str, turn: int, rate: int) -> np.ndarray:
    t = manifest["files"][name]["turns"][turn]
    s = rate / 16000
    return load_corpus(name, rate)[int(t["start"] * s):int(t["end"] * s)].astype(np.float64)


def ask_as_the_core(gate: EchoGate, reply: np.ndarray, mic: np.ndarray, rate: int, onset: int,
                    encoding: str = "pcm16", until: int | None = None) -> list[tuple[int, int | None]]:
    """Feed as the core does (the reply as the reference, played from position 0 and given 160 ms ahead;
    the microphone in 20 ms messages, through the codec) and ask every 60 ms from ``onset`` + 0.5 s on,
    as a barge from ``onset`` would: [(input position, the talker's run start or None)]."""
    step, lead = rate // 50, int(0.16 * rate)
    ref = np.clip(reply, -32768, 32767).astype(np.int16)
    pcm = decode(encode(np.clip(mic, -32768, 32767).astype(np.int16), encoding), encoding)
    until = pcm.size if until is None else until
    answers = []
    next_ask = onset + rate // 2
    for i in range(0, until - step + 1, step):
        gate.reference(ref[i + lead:i + lead + step], i + lead) if i else gate.reference(ref[:lead + step], 0)
        gate.microphone(pcm[i:i + step], i)
        if i + step >= next_ask:
            verdict = gate.analyse(onset, i + step)
            answers.append((i + step, None if verdict is None else verdict.run_start()))
            next_ask += rate * 3 // 50
    return answers


@pytest.mark.parametrize(("encoding", "rate"), [("pcm16", 16000), ("mulaw", 8000)])
@pytest.mark.parametrize(("delay", "atten"), [(0.05, 6.0), (0.25, 6.0), (0.15, 20.0)])
def test_the_echo_alone_holds_no_talker(manifest: dict[str, Any], encoding: str, rate: int, delay: float,
                                        atten: float) -> None:
    reply = corpus_turn(manifest, "dialog_01.flac", 1, rate)  # 4 s of speech
    echo = speakerphone(reply, rate, delay, atten)
    # the barge begins where the echo does: the reply's start, with no reference before it
    answers = ask_as_the_core(EchoGate(rate), reply, echo + room(rate, echo.size), rate, int(delay * rate), encoding)
    assert len(answers) > 40
    assert [a for a in answers if a[1] is not None] == []


@pytest.mark.parametrize(("encoding", "rate"), [("pcm16", 16000), ("mulaw", 8000)])
@pytest.mark.parametrize("atten", [6.0, 20.0])
def test_a_talker_over_the_echo_is_found_from_where_they_start(manifest: dict[str, Any], encoding: str,
                                                                rate: int, atten: float) -> None:
    reply = corpus_turn(manifest, "dialog_01.flac", 1, rate)
    talker = corpus_turn(manifest, "dialog_04.flac", 1, rate)  # another voice
    echo = speakerphone(reply, rate, 0.15, atten)
    mic = echo + room(rate, echo.size)
    at = int(1.5 * rate)
    mic[at:at + talker.size] += talker[:mic.size - at]
    answers = ask_as_the_core(EchoGate(rate), reply, mic, rate, int(0.15 * rate), encoding, until=at + rate)
    before = [a for a in answers if a[0] < at]
    assert before and all(run is None for _, run in before)  # the echo alone, until the talker starts
    # the core interrupts at the first answer whose run has lasted 0.5 s: promptly, and measured from them
    due = [(pos, run) for pos, run in answers if run is not None and pos - run >= rate // 2]
    assert due, "the talker never ran for 0.5 s"
    pos, run = due[0]
    assert run is not None and abs(run - at) < rate // 10, (run - at) / rate
    assert pos - at <= 0.5 * rate + 0.1 * rate, (pos - at) / rate


def test_the_delay_drifting_within_a_call_is_followed(manifest: dict[str, Any]) -> None:
    """A microphone that loses 20 ms every half second (lost packets): the echo comes 40 ms sooner each
    second, 0.16 s sooner by the end of the reply."""
    rate = 16000
    reply = corpus_turn(manifest, "dialog_01.flac", 1, rate)
    echo = speakerphone(reply, rate, 0.3, 6.0)
    lost = np.zeros(echo.size, dtype=bool)
    for k in range(rate // 2, echo.size, rate // 2):
        lost[k:k + rate // 50] = True
    mic = (echo + room(rate, echo.size))[~lost]
    gate = EchoGate(rate)
    answers = ask_as_the_core(gate, reply, mic, rate, int(0.3 * rate))
    assert [a for a in answers if a[1] is not None] == []
    assert gate.delay is not None and 0.1 * rate < gate.delay < 0.2 * rate  # (0.3 s at first, 0.14 s at the end)


def test_no_reference_no_verdict_and_the_rings_are_bounded() -> None:
    rate = 16000
    gate = EchoGate(rate, history_s=1.0)
    noise = (np.random.default_rng(1).standard_normal(rate * 5) * 1000).astype(np.int16)
    for i in range(0, noise.size, 320):
        gate.microphone(noise[i:i + 320], i)
    assert not gate.active
    assert gate.analyse(rate, 5 * rate) is None  # nothing played: every sound is the user's
    gate.reference(noise[:rate], 5 * rate - 1000)
    assert gate.active  # (its echo may be coming)
    assert gate._mic.capacity == rate and gate._mic.buf.size == rate
    for i in range(5 * rate, 10 * rate, 320):
        gate.microphone(noise[:320], i)
        gate.analyse(i - rate // 2, i + 320)
    assert len(gate._mic_bands.rows) <= gate._keep_frames and len(gate._ref_bands.rows) <= gate._keep_frames



def test_a_delay_that_jumps_100_ms_mid_call_is_followed(manifest: dict[str, Any]) -> None:
    """A client that ran dry and plays the rest of the reply 100 ms later: the echo stays the echo (no talker
    the core would interrupt for), and the gate's delay follows within 2 s of the change reaching the
    microphone (a full fit at least every ``refit_ms``: a gate that never fits again stays at the old one)."""
    rate = 16000
    reply = np.concatenate([corpus_turn(manifest, "dialog_01.flac", 1, rate),
                            corpus_turn(manifest, "dialog_01.flac", 3, rate)])  # ~10 s of speech
    cut, before, after = 2 * rate, int(0.15 * rate), int(0.25 * rate)  # the reply from 2 s on plays 100 ms late
    echo = np.zeros(reply.size + after)
    echo[before:before + cut] = reply[:cut]
    echo[cut + after:] = reply[cut:]
    echo = np.convolve(echo * 10 ** (-6 / 20), band_pass(rate))[:echo.size] + room(rate, echo.size)
    gate = EchoGate(rate)
    delays: list[tuple[int, int | None]] = []
    ask = gate.analyse

    def analyse(start: int, end: int) -> Any:
        verdict = ask(start, end)
        delays.append((end, gate.delay))
        return verdict
    gate.analyse = analyse  # type: ignore[method-assign]
    answers = ask_as_the_core(gate, reply, echo, rate, before)
    assert [(pos, run) for pos, run in answers if run is not None and pos - run >= rate // 2] == []
    changed = cut + after  # where the later echo reaches the microphone
    assert all(d is not None and abs(d - before) <= 0.04 * rate for end, d in delays if end < changed)
    late = [(end, d) for end, d in delays if end >= changed + 2 * rate]
    assert late and all(d is not None and abs(d - after) <= 0.04 * rate for _, d in late), late[:3]


def test_a_long_call_keeps_every_ring_and_buffer_bounded() -> None:
    """Ten minutes of replies (1 s on, 0.5 s off) over noise, asked every 60 ms throughout: what the gate
    holds is the same at the end as after the first minute."""
    rate = 8000
    gate = EchoGate(rate)
    rng = np.random.default_rng(2)
    noise = (rng.standard_normal(rate) * 300).astype(np.int16)
    voice = (rng.standard_normal(rate) * 3000).astype(np.int16)
    step = rate // 50
    sizes: list[tuple[int, ...]] = []

    def held() -> tuple[int, ...]:
        return (gate._mic.buf.size, gate._ref.buf.size, len(gate._played), len(gate._mic_bands.rows),
                len(gate._ref_bands.rows), gate._flags.size)
    for i in range(0, 600 * rate, step):
        if i % (3 * rate // 2) < rate:  # a reply playing: 160 ms ahead, as the core sends it
            gate.reference(voice[:step], i + int(0.16 * rate) + (i // step) % 3)  # (slewed a sample or two)
        gate.microphone(noise[(i % rate) // step * step:][:step], i)
        if i % (3 * step) == 0 and i:
            gate.analyse(i - rate, i + step)
        if i % (60 * rate) == 0:
            sizes.append(held())
    limits = (gate._mic.capacity, gate._ref.capacity, gate._ref.capacity // rate + 2, gate._keep_frames,
              gate._keep_frames, gate._window_frames)
    assert all(all(x <= cap for x, cap in zip(s, limits, strict=True)) for s in sizes), (sizes, limits)
    assert held()[0:2] == sizes[1][0:2] and all(x <= cap for x, cap in zip(held(), limits, strict=True))

# ---- the core's rules -----------------------------------------------------------------------


class EchoHarness(Harness):
    """The core with the echo gate; the microphone hears ``mic(position, n)`` under the fed probabilities."""

    def __init__(self, **options: Any) -> None:
        super().__init__(ReplyOnPause(lambda audio: None, **options), echo_gate=True)
        self.played = np.zeros(0)  # what the client has played, from input position 0 (the echo's source)
        self.extra = np.zeros(0)  # a talker of the caller's own, from input position 0
        self.delay = int(0.1 * 16000)

    def push(self, probs: list[float]) -> bool:
        start = sum(c.size for c in self.chunks)
        n = len(probs) * WIN
        if not self.chunks:  # the caller's own turn before the reply: a tone, as in test_core
            return super().push(probs)
        mic = room(16000, n) + self._span(self.played, start - self.delay, n) * 0.5 + self._span(self.extra, start, n)
        pcm = np.clip(mic, -32768, 32767).astype(np.int16)
        ok = self.core.offer_audio(pcm.tobytes())
        if ok:
            self.chunks.append(pcm)
            self.probs.extend(probs)
        return ok

    @staticmethod
    def _span(x: np.ndarray, start: int, n: int) -> np.ndarray:
        out = np.zeros(n)
        lo, hi = max(start, 0), min(start + n, x.size)
        if hi > lo:
            out[lo - start:hi - start] = x[lo:hi]
        return out

    def take(self) -> list[Any]:
        events = super().take()
        pos = sum(c.size for c in self.chunks)
        for ev in events:  # the client plays each frame from where the input is when it arrives
            if isinstance(ev, AudioOut):
                x = np.frombuffer(ev.data, np.int16).astype(np.float64)
                at = max(pos, getattr(self, "_play_at", 0))
                grown = np.zeros(max(self.played.size, at + x.size))
                grown[:self.played.size] = self.played
                grown[at:at + x.size] = x
                self.played, self._play_at = grown, at + x.size
        return events


def echoing(h: EchoHarness, manifest: dict[str, Any]) -> None:
    """A turn answered with real speech (4 s), playing."""
    h.turn()
    h.reply(1, (16000, corpus_turn(manifest, "dialog_01.flac", 1, 16000)[:4 * 16000].astype(np.int16)), done=True)


def speech_probs(h: EchoHarness, windows: int) -> list[Any]:
    events: list[Any] = []
    for _ in range(windows):
        events += h.run([SP])
        h.core.poll(h.now)
    return events


def test_the_echo_of_a_reply_does_not_interrupt_it_nor_become_a_turn(manifest: dict[str, Any]) -> None:
    h = EchoHarness()
    echoing(h, manifest)
    events = speech_probs(h, 100)  # 3.2 s of "speech" (the VAD hears the echo)
    assert of(events, Clear) == [] and h.core.reply_state is ReplyState.DRAINING
    events += h.run([SIL] * PAUSE)
    assert "log:echo" in trace(events) and "log:pause_detected" not in trace(events)
    assert h.core.metrics.counters["echo_turns"] == 1 and "interruptions" not in h.core.metrics.counters


def test_a_talker_over_the_echo_interrupts_once_they_have_spoken_interrupt_ms(manifest: dict[str, Any]) -> None:
    h = EchoHarness(interrupt_ms=500)
    echoing(h, manifest)
    speech_probs(h, 30)  # ~1 s of echo alone
    talk_at = sum(c.size for c in h.chunks)
    talker = corpus_turn(manifest, "dialog_04.flac", 1, 16000)
    h.extra = np.zeros(talk_at + talker.size)
    h.extra[talk_at:] = talker
    events: list[Any] = []
    for i in range(40):  # noqa: B007 - its value after the loop is the point
        events += speech_probs(h, 1)
        if of(events, Clear):
            break
    waited = (i + 1) * WIN / 16000
    assert of(events, Clear), "the talker never interrupted"
    assert 0.45 <= waited <= 0.5 + 0.2, waited  # interrupt_ms of their own speech, not of the echo's


def test_without_the_gate_the_echo_interrupts(manifest: dict[str, Any]) -> None:
    """The reason for the gate: the same echo, gate off, cuts the reply off at interrupt_ms."""
    h = EchoHarness()
    h.core.config = h.core.config.__class__(echo_gate=False)
    h.core._echo = None
    echoing(h, manifest)
    assert of(speech_probs(h, 30), Clear)
