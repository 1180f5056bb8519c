"""Pause-detection latency after each labelled turn end, over the whole corpus.

    uv run python benchmarks/pause_latency.py [--pause-ms 600]

Streams every corpus file through the engine and detector in 20 ms frames at
16 kHz and at 8 kHz (telephony; resampled here), and reports the delay from
each turn's last labelled speech sample to pause_detected, with missed turns
(no pause) and false pauses (inside a turn or extra). Two baselines are run on
the same Silero probabilities in the same run:

* "plain": our detector without the signal-level tail refinement (pure Silero
  probabilities, silence measured from the last window above threshold);
* "fastrtc-style": an emulation of fastrtc's ReplyOnPause decision, which looks
  at 0.6 s chunks and ends the turn when a chunk holds < 0.1 s of speech
  (started-talking threshold 0.2 s). It is not fastrtc itself, only its rule.
"""

from __future__ import annotations

import argparse

import numpy as np
from _corpus import load, manifest, percentile_row

from vad.detector import DetectorOptions, PauseDetected, PauseDetector, levels_db
from vad.engine import VadEngine
from vad.model import SileroModel


def probabilities(engine: VadEngine, audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray, int]:
    stream = engine.open_stream(rate)
    probs, levels = [], []
    for i in range(0, audio.size, rate // 50):
        stream.push(audio[i:i + rate // 50])
        windows = stream.take_windows()
        if len(windows):
            probs.append(engine.process([(stream, windows)])[0])
            levels.append(levels_db(windows))
    stream.close()
    return np.concatenate(probs), np.concatenate(levels), stream.window


def ours(probs: np.ndarray, levels: np.ndarray | None, rate: int, window: int, pause_ms: float) -> list[float]:
    det = PauseDetector(DetectorOptions(pause_ms=pause_ms), rate, window)
    events = det.push(probs, levels)
    return [e.at / rate for e in events if isinstance(e, PauseDetected)]


def fastrtc_style(probs: np.ndarray, rate: int, window: int) -> list[float]:
    per_chunk = int(round(0.6 * rate / window))
    talking, out = False, []
    for c in range(len(probs) // per_chunk):
        speech_s = float((probs[c * per_chunk:(c + 1) * per_chunk] >= 0.5).sum()) * window / rate
        if not talking and speech_s > 0.2:
            talking = True
        elif talking and speech_s < 0.1:
            talking = False
            out.append((c + 1) * per_chunk * window / rate)
    return out


def score(pauses: list[float], turns: list[dict], rate_in: int) -> tuple[list[float], int, int]:
    latencies, missed, false = [], 0, 0
    pending = sorted(pauses)
    for i, turn in enumerate(turns):
        end = turn["end"] / rate_in
        nxt = turns[i + 1]["start"] / rate_in if i + 1 < len(turns) else float("inf")
        inside = [p for p in pending if turn["start"] / rate_in <= p < end]
        after = [p for p in pending if end <= p < nxt]
        false += len(inside) + max(len(after) - 1, 0)
        if after:
            latencies.append((after[0] - end) * 1000)
        else:
            missed += 1
    return latencies, missed, false


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pause-ms", type=float, default=600.0)
    args = ap.parse_args()
    man = manifest()
    engine = VadEngine(SileroModel(), max_pending_s=60.0)
    n_turns = sum(len(f["turns"]) for f in man["files"].values())
    print(f"corpus: {len(man['files'])} files, {n_turns} turns; pause_ms {args.pause_ms:.0f}; "
          "latency = ms from the turn's last speech sample to pause_detected")
    for rate in (16000, 8000):
        rows: dict[str, tuple[list[float], int, int]] = {"wsstream": ([], 0, 0), "plain": ([], 0, 0),
                                                          "fastrtc-style": ([], 0, 0)}
        for name, info in man["files"].items():
            audio = load(name, rate)
            probs, levels, window = probabilities(engine, audio, rate)
            det_rate = 8000 if rate == 8000 else 16000
            for key, pauses in (("wsstream", ours(probs, levels, det_rate, window, args.pause_ms)),
                                ("plain", ours(probs, None, det_rate, window, args.pause_ms)),
                                ("fastrtc-style", fastrtc_style(probs, det_rate, window))):
                lat, missed, false = score(pauses, info["turns"], man["sample_rate"])
                acc = rows[key]
                rows[key] = (acc[0] + lat, acc[1] + missed, acc[2] + false)
        print(f"\n{rate} Hz")
        for key, (lat, missed, false) in rows.items():
            within = sum(args.pause_ms <= x <= args.pause_ms + 200 for x in lat)
            print(f"  {key:14} {percentile_row(lat)}  missed {missed}  false {false}  "
                  f"in [pause, pause+200ms]: {within}/{n_turns}")


if __name__ == "__main__":
    main()
