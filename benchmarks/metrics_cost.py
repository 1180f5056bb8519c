"""What the metrics cost: per call on the hot path, per scrape, and on the whole VAD path.

    uv run python benchmarks/metrics_cost.py [--streams 200] [--seconds 10] [--rounds 2]

1. Per call: ``Metrics.inc``, our ``Histogram.observe`` and ``observe_many`` (a batch's queue delays), against
   prometheus-client's own ``Histogram.observe`` (which takes a lock per call) as the baseline.
2. Per scrape: ``Metrics.render`` with every known series and a few labelled ones, as /metrics answers it.
3. The VAD path of ``benchmarks/vad_path.py`` (N real-time streams, the real runner, core, worker and detector)
   with the worker's histograms on and off, alternated ``--rounds`` times: CPU per stream-second.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import timeit
from pathlib import Path

import numpy as np
import prometheus_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vad_path

from vad.model import SileroModel
from wsstream.inference import InferenceWorker
from wsstream.metrics import CATALOGUE, LATENCY_BUCKETS, Histogram, Metrics


def per_call_ns(stmt: str, ns: dict[str, object], number: int = 200_000) -> float:
    return min(timeit.repeat(stmt, globals=ns, number=number, repeat=5)) / number * 1e9


def calls() -> None:
    metrics = Metrics()
    ours = Histogram(LATENCY_BUCKETS)
    theirs = prometheus_client.Histogram("bench_seconds", "bench", buckets=LATENCY_BUCKETS,
                                         registry=prometheus_client.CollectorRegistry())
    delays = np.random.default_rng(1).uniform(0, 0.05, 200)
    ns = {"metrics": metrics, "ours": ours, "theirs": theirs, "delays": delays}
    print("per call:")
    inc = per_call_ns("metrics.inc('turns')", ns)
    print(f"  Metrics.inc                          {inc:7.0f} ns")
    print(f"  our Histogram.observe                {per_call_ns('ours.observe(0.042)', ns):7.0f} ns")
    print(f"  prometheus_client Histogram.observe  {per_call_ns('theirs.observe(0.042)', ns):7.0f} ns (baseline)")
    bulk = per_call_ns("ours.observe_many(delays)", ns, number=20_000)
    print(f"  our observe_many, 200 values         {bulk:7.0f} ns ({bulk / 200:.0f} ns a value)")


def scrape() -> None:
    metrics = Metrics()
    for name, spec in CATALOGUE.items():
        if spec.kind == "counter" and not spec.labels:
            metrics.inc(name, 12345)
        elif spec.kind == "histogram":
            metrics.observe_many(name, np.random.default_rng(2).uniform(0, 2, 1000))
    metrics.declare("handshakes_refused", "reason", ("auth_missing", "auth_bad", "origin", "ip_rate"))
    for dialect in ("ws", "twilio", "fastrtc"):
        for kind in ("json", "message", "setup"):
            metrics.inc_labelled("protocol_errors", dialect, kind)
    live = {"audio_samples_in": 1_000_000}
    gauges = {"sessions_active": 200, "concurrency_limit": 500}
    seconds = min(timeit.repeat(lambda: metrics.render(gauges, live), number=200, repeat=5)) / 200
    size = len(metrics.render(gauges, live))
    print(f"per scrape: {seconds * 1000:.2f} ms for {size / 1000:.1f} kB ({len(CATALOGUE)} catalogued names)")


def vad_path_cost(streams: int, seconds: float, rounds: int) -> None:
    model = SileroModel()
    plain = vad_path.InferenceWorker
    results: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for observed in (False, True):
            vad_path.InferenceWorker = (functools.partial(InferenceWorker, metrics=Metrics()) if observed
                                        else plain)  # type: ignore[misc]
            ms, _, _ = asyncio.run(vad_path.run(model, streams, seconds, True, 0.004))
            results[observed].append(ms)
    vad_path.InferenceWorker = plain  # type: ignore[misc]
    off, on = np.median(results[False]), np.median(results[True])
    print(f"VAD path, {streams} real-time streams for {seconds:.0f} s, {rounds} rounds each (median):")
    print(f"  worker histograms off  {off:6.3f} ms CPU per stream-second   {results[False]}")
    print(f"  worker histograms on   {on:6.3f} ms CPU per stream-second   {results[True]}")
    print(f"  difference             {on - off:+6.3f} ms ({(on - off) / off * 100:+.1f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    calls()
    scrape()
    vad_path_cost(args.streams, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
