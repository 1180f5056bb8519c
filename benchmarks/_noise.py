"""Background noise mixed into corpus speech in code, deterministically (seeded), for the noise
benchmarks and tests: white, pink, mains hum with harmonics, and babble made of other corpus speech.

Shared by ``benchmarks/pause_latency.py`` and ``tests/test_noise.py`` so that both measure the
same conditions. Only numpy: callers bring the audio (float32 in -1..1 at the rate they mix at).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KINDS = ("white", "pink", "hum", "babble")
MAINS_HZ = 50.0


def white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n)


def fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: an FFT of a recording's own length (often with a large prime
    factor) is many times slower."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def pink(n: int, rate: int, rng: np.random.Generator, low_hz: float = 20.0) -> np.ndarray:
    """1/f power over the audible band (from ``low_hz`` up): white noise shaped in the frequency
    domain, one FFT (of a fast length, cut to n). Below 20 Hz it is cut, as audio test signals are:
    unbounded 1/f would put half its power into a sub-audio rumble that nobody hears but that swings
    the level of every 8 ms."""
    m = fast_length(n)
    spectrum = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1.0 / rate)
    gain = np.zeros_like(f)
    audible = f >= low_hz
    gain[audible] = 1.0 / np.sqrt(f[audible])
    return np.fft.irfft(spectrum * gain, m)[:n]


def hum(n: int, rate: int, rng: np.random.Generator, mains_hz: float = MAINS_HZ) -> np.ndarray:
    """Mains hum: the fundamental and its harmonics up to 1 kHz (odd ones stronger, as from a
    transformer or a ground loop), at fixed random phases."""
    period = rate / mains_hz  # every harmonic repeats with the fundamental: one period, tiled, when whole
    span = int(period) if period.is_integer() else n
    t = np.arange(span) / rate
    out = np.zeros(span)
    for h in range(1, int(min(1000.0, rate / 2 - 1) // mains_hz) + 1):
        amp = (1.0 if h % 2 else 0.4) / h
        out += amp * np.sin(2 * np.pi * mains_hz * h * t + rng.uniform(0, 2 * np.pi))
    return np.resize(out, n)


def babble(n: int, others: Sequence[np.ndarray], rng: np.random.Generator, layers: int = 2) -> np.ndarray:
    """Several talkers at once: each other corpus file, tiled to ``n`` and circularly shifted at
    random, ``layers`` times over, summed. Non-stationary like a room full of people, and made only
    of speech that is not the target's."""
    out = np.zeros(n)
    for audio in others:
        tiled = np.resize(audio.astype(np.float64), n)
        for _ in range(layers):
            out += np.roll(tiled, int(rng.integers(audio.size)))
    return out


def noise(kind: str, n: int, rate: int, seed: int, others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """``n`` samples of noise of ``kind`` (unscaled); ``others`` is the babble's source speech."""
    rng = np.random.default_rng(seed)
    if kind == "white":
        return white(n, rng)
    if kind == "pink":
        return pink(n, rate, rng)
    if kind == "hum":
        return hum(n, rate, rng)
    if kind == "babble":
        if not others:
            raise ValueError("babble needs other speech to be made of")
        return babble(n, others, rng)
    raise ValueError(f"unknown noise kind {kind!r}; one of {KINDS}")


def speech_power(audio: np.ndarray, turns: Sequence[tuple[int, int]]) -> float:
    """Mean power over the labelled turns (start..end sample indices at the audio's rate): the level
    an SNR is stated against, so pauses between turns do not dilute it."""
    x = audio.astype(np.float64)
    total = sum(float(np.dot(x[a:b], x[a:b])) for a, b in turns)
    return total / sum(b - a for a, b in turns)


def mix(speech: np.ndarray, background: np.ndarray, snr_db: float, turns: Sequence[tuple[int, int]]) -> np.ndarray:
    """``speech`` plus ``background`` scaled to ``snr_db`` below the speech's power over its turns,
    as float32 clipped to -1..1."""
    bg = background[:speech.size].astype(np.float64)
    gain = np.sqrt(speech_power(speech, turns) / (np.mean(bg * bg) * 10 ** (snr_db / 10)))
    return np.clip(speech + gain * bg, -1.0, 1.0).astype(np.float32)


def digital_silence(speech: np.ndarray, turns: Sequence[tuple[int, int]]) -> np.ndarray:
    """Exact zeros outside the turns, as a muted VoIP leg sends between them (μ-law 0xFF)."""
    out = np.zeros_like(speech)
    for a, b in turns:
        out[a:b] = speech[a:b]
    return out


# ---- the benchmark's and the tests' conditions: one place, so both measure the same audio ----------------

SNRS = (20, 10)
RATES = (16000, 8000)  # 8 kHz is the telephone path: resampled, then μ-law encoded and decoded
SEED = 11


def conditions() -> list[tuple[str, int | None]]:
    """(kind, SNR dB) in table order: clean, each noise at each SNR, then digital silence between turns."""
    return [("clean", None)] + [(kind, snr) for kind in KINDS for snr in SNRS] + [("digital", None)]


def condition_audio(kind: str, snr: int | None, speech: dict[str, np.ndarray],
                    turns: dict[str, list[tuple[int, int]]], name: str, rate: int) -> np.ndarray:
    """One corpus file (float32 at ``rate``) under one condition; babble is made of the other files.
    The seed depends on the file and the kind only, so a run is reproducible and the two SNRs of a kind
    share their noise."""
    audio = speech[name]
    if kind == "clean":
        return audio
    if kind == "digital":
        return digital_silence(audio, turns[name])
    names = sorted(speech)
    others = [speech[n] for n in names if n != name]
    seed = SEED * 1000 + 100 * KINDS.index(kind) + names.index(name)
    assert snr is not None
    return mix(audio, noise(kind, audio.size, rate, seed, others), snr, turns[name])


def model_outputs(engine: object, streams: Sequence[np.ndarray], rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Silero probabilities and sub-window levels for whole int16 recordings at a model rate, all in one
    batch (each stream alone in its state, as the server runs them; windows are cut the same whatever
    the chunking at 8 and 16 kHz)."""
    opened = [engine.open_stream(rate) for _ in streams]  # type: ignore[attr-defined]
    batch = []
    for stream, audio in zip(opened, streams, strict=True):
        stream.push(audio)
        batch.append((stream, stream.take_windows()))
    out = [(probs.copy(), levels.copy()) for probs, levels in engine.process_with_levels(batch)]  # type: ignore[attr-defined]
    for stream in opened:
        stream.close()
    return out


def score(pauses: Sequence[int], turns: Sequence[tuple[int, int]], rate: int) -> tuple[list[float], int, int]:
    """Latency (ms) of the first pause after each turn's end and before the next turn, turns missed, and
    false pauses (inside a turn, or a second one in a gap). Positions are samples at ``rate``."""
    latencies, missed, false = [], 0, 0
    for i, (start, end) in enumerate(turns):
        nxt = turns[i + 1][0] if i + 1 < len(turns) else float("inf")
        inside = [p for p in pauses if start <= p < end]
        after = [p for p in pauses if end <= p < nxt]
        false += len(inside) + max(len(after) - 1, 0)
        if after:
            latencies.append((after[0] - end) * 1000 / rate)
        else:
            missed += 1
    return latencies, missed, false


def masked_ms(clean: np.ndarray, mixed: np.ndarray, turns: list[tuple[int, int]], rate: int) -> list[float]:
    """Per turn, how long before its labelled end the clean speech last stood as loud as the noise (8 ms
    sub-windows against the noise's power over the 0.5 s after the end): the part of the label that lies
    under the noise, which no detector hears. The corpus labels an end at its last sample over -50 dBFS."""
    sub = rate // 125
    out = []
    for _start, end in turns:
        m = min(int(0.3 * rate), end) // sub
        tail = clean[end - m * sub:end].astype(np.float64).reshape(m, sub)
        after = (mixed - clean)[end:end + rate // 2].astype(np.float64)
        noise_power = (after ** 2).mean() if after.size else 0.0
        loud = np.nonzero((tail ** 2).mean(axis=1) >= noise_power)[0]
        out.append((m - 1 - loud[-1]) * sub * 1000 / rate if loud.size else 300.0)
    return out


def found(pauses: list[int], turns: list[tuple[int, int]]) -> list[int]:
    """Indices of the turns that got a pause before the next one (the order of ``_noise.score``'s latencies)."""
    return [i for i, (_s, e) in enumerate(turns)
            if any(e <= p < (turns[i + 1][0] if i + 1 < len(turns) else float("inf")) for p in pauses)]
