"""Reply latency on /telephone/handler: a turn's last sample to the first reply media frame.

    uv run python benchmarks/telephony_latency.py [--pause-ms 600] [--lead-ms 160] [--filler room|zero]

Starts ``wsstream serve`` (its CLI, a separate process, the embedded echo reply)
and plays every corpus file into it at once as a Twilio call: ``connected``,
``start``, then μ-law 8 kHz ``media`` every 20 ms of wall time (the corpus
resampled to 8 kHz), half duplex: after each turn the line carries silence
until the reply has played and its ``mark`` has been echoed back, as a caller
who listens would. That silence is the file's own room tone (its first 0.3 s,
looped; ``--filler room``, the default) or digital silence (μ-law 0xFF, as a
muted or VoIP leg sends; ``--filler zero``). For every labelled turn, latency = wall time at which the
first reply ``media`` frame arrived minus wall time at which the frame holding
the turn's last speech sample was sent. It includes the pause itself
(``pause_ms``): the detector has to hear that much silence. Also reported: the
same latency minus the pause, and how far ahead of real time the reply audio
ran (the lead).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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

from _corpus import load, manifest, percentile_row  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from wsstream.codecs import encode, float_to_int16  # noqa: E402

RATE = 8000
FRAME = 160  # bytes: 20 ms of μ-law at 8 kHz
TICK = 0.02


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


async def call(url: str, name: str, turns: list[tuple[float, float]], n: int,
               filler: str = "room") -> dict[str, list[float]]:
    wire = encode(float_to_int16(load(name, RATE)), "mulaw")
    room = wire[:int(0.3 * RATE) // FRAME * FRAME] if filler == "room" else b"\xff" * FRAME
    fill = 0
    sid = f"MZ{n:032x}"
    out: dict[str, list[float]] = {"latency": [], "ahead": []}
    async with connect(url + "/telephone/handler", compression=None) as ws:
        seq = 0

        async def send(msg: dict) -> None:
            nonlocal seq
            seq += 1
            await ws.send(json.dumps({**msg, "sequenceNumber": str(seq)}))

        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await send({"event": "start", "streamSid": sid, "start": {
            "streamSid": sid, "callSid": f"CA{n:032x}", "accountSid": "AC" + "0" * 32, "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
            "customParameters": {}}})
        first_media: list[float] = []  # wall time of each reply's first frame
        frames: list[float] = []  # wall times of the current reply's frames
        marks: list[str] = []
        in_reply = False

        async def receive() -> None:
            nonlocal in_reply, frames
            async for message in ws:
                t = time.monotonic()
                msg = json.loads(message)
                if msg["event"] == "media":
                    if not in_reply:
                        in_reply, frames = True, []
                        first_media.append(t)
                    frames.append(t)
                    got = len(frames) * TICK
                    out["ahead"].append(got - (t - frames[0]))
                elif msg["event"] == "mark":
                    in_reply = False
                    name_ = msg["mark"]["name"]
                    # Twilio echoes the mark once the audio before it has played
                    done_at = frames[0] + len(frames) * TICK if frames else t
                    asyncio.get_running_loop().call_later(max(done_at - t, 0), marks.append, name_)
                elif msg["event"] == "clear":
                    in_reply = False

        rx = asyncio.create_task(receive())
        chunk = 0
        t_next = time.monotonic()

        async def send_frame(payload: bytes) -> float:
            nonlocal chunk, t_next
            t_next += TICK
            delay = t_next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk += 1
            await send({"event": "media", "streamSid": sid, "media": {
                "track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode()}})
            return time.monotonic()

        all_turns = turns
        pos = 0
        for k, (_, end) in enumerate(all_turns):
            cut = int((all_turns[k + 1][0] - 0.35) * RATE) if k + 1 < len(all_turns) else len(wire)
            end_at = int(end * RATE)
            end_sent = None
            for off in range(pos, cut, FRAME):
                t = await send_frame(wire[off:off + FRAME])
                if end_sent is None and off + FRAME >= end_at:
                    end_sent = t
            pos = cut
            while len(marks) <= k:  # silence on the line until the reply has played
                await send_frame(room[fill:fill + FRAME])
                fill = (fill + FRAME) % len(room)
                if time.monotonic() - (end_sent or 0) > 60:
                    raise RuntimeError(f"{name}: no reply to turn {k}")
            assert end_sent is not None and len(first_media) == k + 1, (name, k, len(first_media))
            out["latency"].append((first_media[k] - end_sent) * 1000)
        await send({"event": "stop", "streamSid": sid, "stop": {}})
        await asyncio.wait_for(rx, 5)
    return out


async def run(url: str, filler: str) -> dict[str, list[float]]:
    man = manifest()
    sr = man["sample_rate"]
    jobs = [call(url, name, [(t["start"] / sr, t["end"] / sr) for t in info["turns"]], i, filler)
            for i, (name, info) in enumerate(sorted(man["files"].items()))]
    results = await asyncio.gather(*jobs)
    return {key: [v for r in results for v in r[key]] for key in ("latency", "ahead")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pause-ms", type=float, default=600.0)
    ap.add_argument("--lead-ms", type=float, default=160.0)
    ap.add_argument("--filler", choices=("room", "zero"), default="room",
                    help="what the caller's line carries while the reply plays")
    args = ap.parse_args()
    proc, port = start_server("--pause-ms", str(args.pause_ms), "--lead-ms", str(args.lead_ms),
                              "--log-level", "WARNING")
    try:
        t0 = time.monotonic()
        res = asyncio.run(run(f"ws://127.0.0.1:{port}", args.filler))
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    lat = np.asarray(res["latency"])
    print(f"/telephone/handler, {len(lat)} turns from {len(manifest()['files'])} calls at once, "
          f"μ-law 8 kHz in real time, echo reply; pause_ms {args.pause_ms:.0f}, lead_ms {args.lead_ms:.0f}; "
          f"line between turns: {args.filler}; {wall:.0f} s wall")
    print(f"  last sample -> first reply frame (ms): {percentile_row(list(lat))}")
    print(f"  the same minus the pause (ms):         {percentile_row(list(lat - args.pause_ms))}")
    ahead = np.asarray(res["ahead"]) * 1000
    print(f"  reply audio ahead of real time (ms):   max {ahead.max():.0f} (lead {args.lead_ms:.0f} + one 20 ms frame)")


if __name__ == "__main__":
    main()
