"""Reply latency per telephone provider: a turn's last sample to the first reply audio frame.

    uv run python benchmarks/telephony_latency.py [--pause-ms 600] [--lead-ms 160] [--filler room|zero]
                                                  [--providers twilio,telnyx,...] [--via-telephony]

Starts ``wsstream serve`` (its CLI, a separate process, the embedded echo reply)
and plays every corpus file into it at once as a call from each provider (the
scripted bridges of tests/peers: each provider's own messages, μ-law or linear
PCM at its rate, one 20 ms frame per 20 ms of wall time), all providers in the
same run. Half duplex: after each turn the line carries silence until the
reply has played and its marker has been reported back, as a caller who
listens would. That silence is the file's own room tone (its first 0.3 s,
looped; ``--filler room``, the default) or digital silence (``--filler zero``).
For every labelled turn, latency = wall time at which the first reply frame
arrived minus wall time at which the frame holding the turn's last speech
sample was sent. It includes the pause itself (``pause_ms``): the detector has
to hear that much silence. Also reported: the same minus the pause, and how far
ahead of real time the reply audio ran (the lead). ``--via-telephony`` sends
every call to the recognising ``/telephony`` endpoint instead of each
provider's own path.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the scripted bridges

from _corpus import load, manifest, percentile_row  # noqa: E402
from peers import WIRES  # noqa: E402
from peers.base import TelephonyPeer, ahead_of_realtime, bytes_per_sample  # noqa: E402

from wsstream.codecs import encode, float_to_int16  # noqa: E402


def start_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "wsstream.cli", "serve", "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on ws://[\d.]+:(\d+)/ws", line)
        if match and line.startswith("wsstream:"):
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, int(match.group(1))
    raise RuntimeError("server exited before listening")


async def call(url: str, provider: str, name: str, turns: list[tuple[float, float]], n: int,
               filler: str, via_telephony: bool) -> dict[str, list[float]]:
    wire = WIRES[provider](n)
    if via_telephony:
        wire.path = "/telephony" + "".join(wire.path.partition("?")[1:])  # keep its query
    rate, bps = wire.sample_rate, bytes_per_sample(wire.encoding)
    audio = encode(float_to_int16(load(name, rate)), wire.encoding)
    peer = TelephonyPeer(url, wire)
    frame = peer.frame_bytes
    if filler == "room":
        peer.filler = audio[:int(0.3 * rate) * bps // frame * frame]
    out: dict[str, list[float]] = {"latency": [], "ahead": []}
    async with peer:
        pos = 0
        for k, (_, end) in enumerate(turns):
            cut = int((turns[k + 1][0] - 0.35) * rate) * bps if k + 1 < len(turns) else len(audio)
            cut -= cut % frame
            end_frame = (len(peer.sent) + int(end * rate) * bps - pos) // frame  # the frame holding the end
            await peer.send_audio(audio[pos:cut])
            pos = cut
            await peer.send_silence_until(lambda p, k=k: len(p.marks_echoed) > k, within=60)
            assert len(peer.replies) == k + 1, (provider, name, k, len(peer.replies))
            out["latency"].append((peer.replies[k].first - peer.sent_wall[end_frame]) * 1000)
        out["ahead"] += [ahead_of_realtime(r, peer.byte_rate) for r in peer.replies]
        stop = wire.stop()
        if stop is None:
            await peer.ws.close()  # type: ignore[union-attr]
        else:
            await peer.send_raw(stop)
        await peer.wait_closed(5.0)
    return out


async def run(url: str, providers: list[str], filler: str, via: bool) -> dict[str, dict[str, list[float]]]:
    man = manifest()
    sr = man["sample_rate"]
    files = sorted(man["files"].items())
    jobs = [call(url, provider, name, [(t["start"] / sr, t["end"] / sr) for t in info["turns"]],
                 100 * p + i, filler, via)
            for p, provider in enumerate(providers) for i, (name, info) in enumerate(files)]
    results = await asyncio.gather(*jobs)
    by: dict[str, dict[str, list[float]]] = {p: {"latency": [], "ahead": []} for p in providers}
    for (provider, _), r in zip([(p, f) for p in providers for f in files], results, strict=True):
        for key in ("latency", "ahead"):
            by[provider][key] += r[key]
    return by


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pause-ms", type=float, default=600.0)
    ap.add_argument("--lead-ms", type=float, default=160.0)
    ap.add_argument("--filler", choices=("room", "zero"), default="room",
                    help="what the caller's line carries while the reply plays")
    ap.add_argument("--providers", default=",".join(WIRES), help="comma-separated, of " + ", ".join(WIRES))
    ap.add_argument("--via-telephony", action="store_true", help="every call to /telephony, not its own path")
    args = ap.parse_args()
    providers = [p for p in args.providers.split(",") if p]
    proc, port = start_server("--pause-ms", str(args.pause_ms), "--lead-ms", str(args.lead_ms),
                              "--log-level", "WARNING")
    try:
        t0 = time.monotonic()
        res = asyncio.run(run(f"ws://127.0.0.1:{port}", providers, args.filler, args.via_telephony))
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    n_files = len(manifest()["files"])
    print(f"{n_files} calls per provider, {n_files * len(providers)} at once, in real time, echo reply; "
          f"pause_ms {args.pause_ms:.0f}, lead_ms {args.lead_ms:.0f}; line between turns: {args.filler}; "
          f"{'all to /telephony' if args.via_telephony else 'each on its own path'}; {wall:.0f} s wall")
    print("last sample -> first reply frame (ms); the same minus the pause; reply audio ahead of real time")
    for provider in providers:
        wire = WIRES[provider]()
        lat = np.asarray(res[provider]["latency"])
        ahead = max(res[provider]["ahead"]) * 1000
        audio = f"{wire.encoding} {wire.sample_rate // 1000} kHz"
        print(f"  {provider:8} {audio:11} {len(lat):3} turns  {percentile_row(list(lat))}  | "
              f"minus pause: median {np.median(lat) - args.pause_ms:4.0f} max {lat.max() - args.pause_ms:4.0f}  | "
              f"ahead max {ahead:3.0f}")
    print(f"(a reply may run at most lead {args.lead_ms:.0f} ms + one 20 ms frame ahead)")

if __name__ == "__main__":
    main()
