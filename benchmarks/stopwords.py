"""Stop-word spotting on the espeak-ng set (tests/data/stopwords), run the way the server runs it.

    uv run python benchmarks/stopwords.py [--thresholds 1e-24,1e-28,...] [--no-dtw]

Each utterance is one turn. The spotter sees rolling windows, as the server
calls it: the last ``--window`` seconds (2.5) every ``--hop`` seconds (0.5) of
the turn, and once more at its end; an utterance counts as heard if any window
hears the stop word. Hit rate is over the 60 utterances with "computer", false
activations over the 50 without it (among them the near-misses "commuter",
"compute the total", "come here please", "the committee").

Printed, in one run:

1. PocketSphinxSpotter's hit and false-activation rates over a threshold sweep
   (pruned: an utterance heard at a stricter threshold is counted as heard at the
   looser ones, and one not heard at a loose threshold as not heard at stricter
   ones; PocketSphinx's decision is a likelihood ratio against the threshold,
   so this is exact up to its search's beam pruning).
2. The default spotter per voice and overall at 16 kHz and at 8 kHz (telephony,
   upsampled inside the spotter), plus one call per whole utterance.
3. Its cost: CPU per second of audio spotted, the real-time factor, CPU per
   2.5 s window, CPU per second of a speaking stream in the rolling-window
   schedule, the longest stall it causes other Python threads (the GIL is held
   while PocketSphinx decodes), and memory per decoder.
4. A second spotter built only on the public interface, as a user would plug one
   in: a template matcher that enrolls two recordings of the stop word and
   slides a subsequence DTW over MFCCs computed with numpy. Enrollment is
   leave-one-voice-out (the voice tested is never enrolled), so it measures a
   speaker it has not heard, the hard case for templates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from wsstream.spotter import Heard, PocketSphinxSpotter, SpotResult, default_spotter, resolve

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "stopwords"
STOP_WORDS = ["computer"]


def load_set(rate: int = 16000) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(manifest entry, int16 samples at ``rate``) for every utterance."""
    manifest = json.loads((DATA / "manifest.json").read_text())
    out = []
    for entry in manifest["files"]:
        audio, sr = sf.read(DATA / entry["file"], dtype="int16")
        if sr != rate:
            audio = soxr.resample(audio, sr, rate)
        out.append((entry, audio))
    return out


def windows(n: int, rate: int, window_s: float, hop_s: float) -> list[tuple[int, int]]:
    """The (start, end) sample spans the server hands the spotter over a turn of ``n`` samples."""
    hop, win = round(hop_s * rate), round(window_s * rate)
    ends = [*range(hop, n, hop), n]
    return [(max(0, e - win), e) for e in ends]


def heard_in_turn(spotter: Callable[[tuple[int, np.ndarray]], SpotResult], rate: int, audio: np.ndarray,
                  window_s: float, hop_s: float) -> tuple[Heard | None, float]:
    """The first window's Heard (its end_s made relative to the turn) and the seconds of audio spotted."""
    spotted = 0.0
    for start, end in windows(audio.size, rate, window_s, hop_s):
        spotted += (end - start) / rate
        heard = resolve(spotter((rate, audio[start:end])), STOP_WORDS)
        if heard is not None:
            end_s = None if heard.end_s is None else heard.end_s + start / rate
            return Heard(heard.word, end_s), spotted
    return None, spotted


def rates(results: dict[str, bool], items: Sequence[tuple[dict[str, Any], np.ndarray]]) -> tuple[float, float]:
    pos = [results[e["file"]] for e, _ in items if e["has_stop_word"]]
    neg = [results[e["file"]] for e, _ in items if not e["has_stop_word"]]
    return float(np.mean(pos)), float(np.mean(neg))


def _sweep_one(args: tuple[float, list[str], float, float]) -> dict[str, bool]:
    threshold, names, window_s, hop_s = args
    spotter = PocketSphinxSpotter(STOP_WORDS, threshold=threshold, max_decoders=1)
    items = {e["file"]: (e, a) for e, a in load_set()}
    return {name: heard_in_turn(spotter, 16000, items[name][1], window_s, hop_s)[0] is not None for name in names}


def sweep(thresholds: list[float], items: list, window_s: float, hop_s: float) -> dict[float, dict[str, bool]]:
    """Heard-or-not per utterance per threshold, pruned by monotonicity (see the module docstring)."""
    names = [e["file"] for e, _ in items]
    loose_to_strict = sorted(thresholds)
    out: dict[float, dict[str, bool]] = {}
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        first = loose_to_strict[0]
        # the loosest threshold over everything, split in two halves for the two cores
        halves = [names[0::2], names[1::2]]
        merged: dict[str, bool] = {}
        for part in pool.map(_sweep_one, [(first, h, window_s, hop_s) for h in halves]):
            merged.update(part)
        out[first] = merged
        for prev, th in itertools.pairwise(loose_to_strict):
            todo = [n for n in names if out[prev][n]]
            got = dict.fromkeys(names, False)
            for part in pool.map(_sweep_one, [(th, todo[0::2], window_s, hop_s), (th, todo[1::2], window_s, hop_s)]):
                got.update(part)
            out[th] = got
    return out


def by_voice(spotter: Callable[[tuple[int, np.ndarray]], SpotResult], items: list, rate: int,
             window_s: float, hop_s: float, whole: bool = False) -> tuple[dict[str, bool], dict[str, Any]]:
    """Heard-or-not per utterance, plus the CPU seconds and seconds of audio it took."""
    results: dict[str, bool] = {}
    ends: list[float] = []
    spotted = 0.0
    cpu0 = time.process_time()
    for entry, audio in items:
        if whole:
            heard = resolve(spotter((rate, audio)), STOP_WORDS)
            spotted += audio.size / rate
        else:
            heard, secs = heard_in_turn(spotter, rate, audio, window_s, hop_s)
            spotted += secs
        results[entry["file"]] = heard is not None
        if heard is not None and heard.end_s is not None and entry["has_stop_word"]:
            ends.append(heard.end_s - entry["word_end_s"])
    cost = {"cpu": time.process_time() - cpu0, "spotted": spotted,
            "turn_s": sum(a.size / rate for _, a in items), "end_err": ends}
    return results, cost


def print_table(title: str, results: dict[str, bool], items: list) -> None:
    print(f"\n{title}")
    print(f"  {'voice':<10} {'speed':>5} {'hit':>9} {'false':>8}  false activations")
    groups: dict[tuple[str, int], list] = defaultdict(list)
    for entry, audio in items:
        groups[(entry["voice"], entry["speed"])].append((entry, audio))
    for (voice, speed), group in groups.items():
        hit, false = rates(results, group)
        fired = [e["text"] for e, _ in group if not e["has_stop_word"] and results[e["file"]]]
        n_pos = sum(e["has_stop_word"] for e, _ in group)
        print(f"  {voice:<10} {speed:>5} {hit * n_pos:>4.0f}/{n_pos:<4} {hit:>4.0%}  {false:>6.0%}  "
              + "; ".join(fired))
    hit, false = rates(results, items)
    print(f"  {'overall':<10} {'':>5} {'':>9} {hit:>4.0%}  {false:>6.0%}   (hit over 60, false over 50)")
    missed = [e["file"] for e, _ in items if e["has_stop_word"] and not results[e["file"]]]
    if missed:
        print(f"  missed: {', '.join(missed)}")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gil_stall_ms(spotter: Callable[[tuple[int, np.ndarray]], SpotResult], audio: np.ndarray, calls: int = 10) -> float:
    """Longest gap a Python thread ticking every 1 ms sees while the spotter runs in another thread."""
    gaps: list[float] = []
    done = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    for _ in range(calls):
        spotter((16000, audio))
    done.set()
    ticker.join()
    return max(gaps) * 1000


def decoder_memory() -> tuple[float, float, float]:
    """MB of RSS: the first spotter (model pages, dictionary cache), each further decoder, a full-dictionary one."""
    import pocketsphinx

    base = rss_mb()
    keep = [PocketSphinxSpotter(STOP_WORDS)]
    first = rss_mb() - base
    base = rss_mb()
    keep += [PocketSphinxSpotter(STOP_WORDS) for _ in range(10)]
    each = (rss_mb() - base) / 10
    base = rss_mb()
    full = [pocketsphinx.Decoder(keyphrase="computer", loglevel="ERROR") for _ in range(3)]
    full_each = (rss_mb() - base) / 3
    del keep, full
    return first, each, full_each


# --- a spotter of one's own: templates + subsequence DTW over numpy MFCCs ----------------------------------------

def _mel_matrix(rate: int, n_fft: int, bands: int, lo: float = 80.0, hi: float = 7600.0) -> np.ndarray:
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(lo), mel(min(hi, rate / 2 - 100)), bands + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    left, mid, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - left) / (mid - left)
    down = (right - freqs) / (right - mid)
    return np.maximum(0.0, np.minimum(up, down))


class TemplateSpotter:
    """Enroll a few recordings of the stop word; hear it where a window's MFCCs align closely with one.

    Subsequence DTW: the template must be matched whole, starting and ending
    anywhere in the window; each template frame advances the window by 0, 1 or
    2 frames (so the spoken word may be up to twice as long as the template or
    compressed), and the cost is the mean frame distance along the path.
    """

    RATE, WIN, HOP, N_FFT, BANDS, CEPS = 16000, 400, 160, 512, 40, 13

    def __init__(self, word: str, recordings: Sequence[tuple[int, np.ndarray]], threshold: float) -> None:
        self.word = word
        self.threshold = threshold
        self._mel = _mel_matrix(self.RATE, self.N_FFT, self.BANDS)
        n = np.arange(self.BANDS)
        self._dct = np.cos(np.pi / self.BANDS * (n[None, :] + 0.5) * np.arange(1, self.CEPS)[:, None])
        self._window = np.hamming(self.WIN)
        self.templates = [self.features(r) for r in recordings]

    def features(self, audio: tuple[int, np.ndarray]) -> np.ndarray:
        """Mean-normalized MFCCs (c1..c12), one row per 10 ms frame."""
        rate, x = audio
        x = np.asarray(x)
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        if rate != self.RATE:
            x = soxr.resample(x, rate, self.RATE)
        if x.size < self.WIN:
            x = np.pad(x, (0, self.WIN - x.size))
        x = np.append(x[0], x[1:] - 0.97 * x[:-1])
        frames = np.lib.stride_tricks.sliding_window_view(x, self.WIN)[:: self.HOP] * self._window
        power = np.abs(np.fft.rfft(frames, self.N_FFT)) ** 2
        logmel = np.log(power @ self._mel.T + 1e-8)
        ceps = logmel @ self._dct.T
        return ceps - ceps.mean(axis=0)

    def score(self, feats: np.ndarray, template: np.ndarray) -> tuple[float, int]:
        """Best mean path cost of ``template`` inside ``feats``, and the frame where that path ends."""
        cost = np.sqrt(((template[:, None, :] - feats[None, :, :]) ** 2).mean(axis=2))
        inf = np.full(2, np.inf)
        acc = cost[0].copy()
        for row in cost[1:]:
            stay = acc + 0.3  # the window does not move: allowed, but dearer
            one = np.concatenate([inf[:1], acc[:-1]])
            two = np.concatenate([inf, acc[:-2]]) + 0.1
            acc = row + np.minimum(np.minimum(stay, one), two)
        end = int(np.argmin(acc))
        return float(acc[end] / len(template)), end

    def best(self, audio: tuple[int, np.ndarray]) -> tuple[float, int]:
        feats = self.features(audio)
        return min(self.score(feats, t) for t in self.templates)

    def __call__(self, audio: tuple[int, np.ndarray]) -> SpotResult:
        dist, end = self.best(audio)
        if dist > self.threshold:
            return None
        return Heard(self.word, (end * self.HOP + self.WIN) / self.RATE)


def dtw_spotters(items: list, threshold: float) -> dict[str, TemplateSpotter]:
    """Per test voice, a TemplateSpotter enrolled on "computer" cut from two *other* voices' first utterance."""
    voices = list(dict.fromkeys(e["voice"] for e, _ in items))
    first = {e["voice"]: (e, a) for e, a in reversed(items)}
    out = {}
    for i, voice in enumerate(voices):
        others = [voices[(i + k) % len(voices)] for k in (1, 2)]
        recordings = []
        for other in others:
            e, a = first[other]
            recordings.append((16000, a[int(e["word_start_s"] * 16000): int(e["word_end_s"] * 16000)]))
        out[voice] = TemplateSpotter("computer", recordings, threshold)
    return out


def dtw_min_distance(items: list, window_s: float, hop_s: float) -> dict[str, float]:
    """Per utterance, the smallest template distance over its rolling windows (for a threshold sweep)."""
    spotters = dtw_spotters(items, threshold=np.inf)
    out = {}
    for entry, audio in items:
        spotter = spotters[entry["voice"]]
        out[entry["file"]] = min(spotter.best((16000, audio[s:e]))[0]
                                 for s, e in windows(audio.size, 16000, window_s, hop_s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", default="1e-20,1e-24,1e-28,1e-32,1e-36,1e-40",
                    help="PocketSphinx kws thresholds to sweep")
    ap.add_argument("--window", type=float, default=2.5, help="seconds of the turn per spotter call")
    ap.add_argument("--hop", type=float, default=0.5, help="seconds of new speech between calls")
    ap.add_argument("--no-dtw", action="store_true", help="skip the template-matching spotter")
    args = ap.parse_args()
    items = load_set()
    default = PocketSphinxSpotter(STOP_WORDS)
    n_turn_s = sum(a.size for _, a in items) / 16000
    print(f"{len(items)} utterances, {n_turn_s:.0f} s; rolling windows of {args.window} s every {args.hop} s; "
          f"default threshold for 'computer': {default.thresholds['computer']:g}")

    thresholds = [float(t) for t in args.thresholds.split(",")]
    t0 = time.perf_counter()
    swept = sweep(thresholds, items, args.window, args.hop)
    print(f"\n1. PocketSphinxSpotter threshold sweep, rolling windows ({time.perf_counter() - t0:.0f} s)")
    print(f"  {'threshold':>10} {'hit':>6} {'false':>6}  {'false on near-misses':>21} {'false on others':>16}")
    near = {"the commuter train was late again", "please compute the total for me", "come here please",
            "the committee will meet at noon"}
    for th in sorted(thresholds, reverse=True):
        hit, false = rates(swept[th], items)
        n_near = sum(swept[th][e["file"]] for e, _ in items if e["text"] in near)
        n_other = sum(swept[th][e["file"]] for e, _ in items if not e["has_stop_word"] and e["text"] not in near)
        print(f"  {th:>10g} {hit:>6.0%} {false:>6.0%}  {n_near:>14}/20 {n_other:>13}/30")

    results, cost16 = by_voice(default, items, 16000, args.window, args.hop)
    print_table("2a. default PocketSphinxSpotter, 16 kHz, rolling windows", results, items)
    errs = np.array(cost16["end_err"])
    print(f"  end_s minus the word's end (espeak-ng's timing): median {np.median(errs) * 1000:+.0f} ms, "
          f"range {errs.min() * 1000:+.0f} to {errs.max() * 1000:+.0f} ms")
    items8 = load_set(8000)
    results8, _ = by_voice(default, items8, 8000, args.window, args.hop)
    print_table("2b. default PocketSphinxSpotter, 8 kHz input, rolling windows", results8, items8)
    whole, cost_whole = by_voice(default, items, 16000, args.window, args.hop, whole=True)
    hit, false = rates(whole, items)
    print(f"\n2c. default PocketSphinxSpotter, one call per whole utterance: hit {hit:.0%}, false {false:.0%}")

    print("\n3. cost of the default spotter (one thread; this machine)")
    per_s = cost_whole["cpu"] / cost_whole["spotted"]
    print(f"  CPU per second of audio spotted: {per_s * 1000:.1f} ms (real-time factor {per_s:.3f})")
    win = items[3][1][: int(args.window * 16000)]
    win = np.pad(win, (0, max(0, int(args.window * 16000) - win.size)))
    c0 = time.process_time()
    for _ in range(20):
        default((16000, win))
    print(f"  CPU per {args.window} s window: {(time.process_time() - c0) / 20 * 1000:.0f} ms")
    print(f"  rolling windows: {cost16['spotted'] / cost16['turn_s']:.1f} s spotted per second of speech, "
          f"CPU {cost16['cpu'] / cost16['turn_s'] * 1000:.0f} ms per stream-second of speech "
          "(a positive turn stops at its first hit)")
    stall = gil_stall_ms(default, win)
    print(f"  longest stall of another Python thread during a {args.window} s call: {stall:.0f} ms "
          "(PocketSphinx holds the GIL while it decodes)")
    with default_spotter(["computer"]) as pooled:  # what ReplyOnStopWords uses: decoding in worker processes
        pooled.start()
        pooled((16000, win))  # (the workers are up)
        c0, t0 = time.process_time(), time.perf_counter()
        pooled_stall = gil_stall_ms(pooled, win, calls=20)
        wall = (time.perf_counter() - t0) / 20
        here = (time.process_time() - c0) / 20
    print(f"  the server's default (ProcessPoolSpotter, {pooled.processes} worker processes): longest stall "
          f"{pooled_stall:.0f} ms ({stall / max(pooled_stall, 1e-3):.0f}x less); per window {wall * 1000:.0f} ms "
          f"wall, {here * 1000:.1f} ms CPU in the server's process")
    first, each, full = decoder_memory()
    print(f"  memory: first spotter {first:.0f} MB (acoustic model pages + dictionary cache), each further decoder "
          f"{each:.1f} MB; a decoder with the whole CMUdict would take {full:.0f} MB each")

    if args.no_dtw:
        return
    print("\n4. TemplateSpotter (public Spotter interface): 2 enrolled recordings from other voices, "
          "subsequence DTW on numpy MFCCs")
    c0 = time.process_time()
    dist = dtw_min_distance(items, args.window, args.hop)
    dtw_cpu = time.process_time() - c0
    pos = np.array([dist[e["file"]] for e, _ in items if e["has_stop_word"]])
    neg = np.array([dist[e["file"]] for e, _ in items if not e["has_stop_word"]])
    print(f"  {'threshold':>10} {'hit':>6} {'false':>6}")
    grid = np.round(np.quantile(np.concatenate([pos, neg]), np.linspace(0.1, 0.7, 7)), 3)
    for th in grid:
        print(f"  {th:>10.3f} {np.mean(pos <= th):>6.0%} {np.mean(neg <= th):>6.0%}")
    ok = [th for th in np.unique(np.concatenate([pos, neg])) if np.mean(neg <= th) <= 0.1]
    if ok:
        th = max(ok)
        results_dtw = {e["file"]: dist[e["file"]] <= th for e, _ in items}
        print_table(f"  per voice at the loosest threshold with false <= 10% ({th:.3f}; tuned on this set)",
                    results_dtw, items)
    print(f"  CPU per stream-second of speech (every window, no early stop): {dtw_cpu / n_turn_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
