"""Load benchmark: N real-time streams against a real server process, swept until it breaks.

    uv run python benchmarks/load.py [--sweep 50,100,200,300,400] [--duration 30]

For each N: starts ``wsstream serve`` (its CLI, a separate process) pinned to
core 0, and a load generator process pinned to core 1 that opens N /ws
connections on loopback, each streaming a corpus file (looped) in real time as
20 ms binary pcm16 16 kHz frames, starts staggered over 2 s, for --duration
seconds, then stops. Like real clients, the streams are not synchronised: each
sends frame k when its audio is captured, 20 ms after the previous one, at its
own phase (a 2 ms ticker serves the streams whose phase is due). Each frame is
pre-masked and written straight to its socket (no per-frame library work); the
generator reports by when each step's last frame was written (p99), so you can
see it is not the bottleneck.

Reports per N: server CPU (cores, from /proc), CPU ms per stream-second, frames
sent vs samples the server took in (nothing may be lost), pause_detected latency
after each turn's last sample (wall clock) and its excess over what the
detector alone gives on the same audio (computed offline in this run),
first-reply-audio latency, server RSS and RSS per connection. Names the largest
N that held: no lost audio, server CPU below one core, p99 excess <= 20 ms.
Writes benchmarks/results/load.json and, with matplotlib installed
(``uv run --group bench ...``), load.png.

``--drivers native,asgi`` runs every N under each driver in turn (ours, and the
ASGI driver under uvicorn: ``wsstream serve --driver asgi``) and prints the ASGI
driver's CPU per stream-second as a ratio to ours, measured in the same run:

    uv run python benchmarks/load.py --sweep 200 --duration 60 --drivers native,asgi
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

FRAME = 320  # samples: 20 ms at 16 kHz
TICK = 0.02  # one frame
STEP = 0.002  # the generator's ticker


# ---------------------------------------------------------------- offline truth

def loops_for(samples: int, seconds: float) -> int:
    """How many copies of a file cover ``seconds`` of streaming. The generator streams exactly that
    tiled audio, never wrapping mid-run: a wrap at a frame boundary would drop the file's last
    partial frame, and everything after it would be offset from the offline truth by a fraction of
    a VAD window, turning a few turns' excess into noise of tens of milliseconds."""
    return int(np.ceil(seconds * 16000 / samples)) + 1


def offline_latencies(files: list[str], pause_ms: float, seconds: float) -> dict[str, list[tuple[float, float]]]:
    """Per file: (turn end s, detector-alone pause_detected s) for each turn, on the same tiled copy
    the generator streams (``loops_for``)."""
    from _corpus import load, manifest

    from vad.detector import DetectorOptions, PauseDetected, PauseDetector, levels_db
    from vad.engine import VadEngine
    from vad.model import SileroModel

    man = manifest()
    engine = VadEngine(SileroModel(), max_pending_s=30.0)
    out = {}
    frame_s = FRAME / 16000
    for name in files:
        audio = load(name)
        stream = engine.open_stream(16000)
        det = PauseDetector(DetectorOptions(pause_ms=pause_ms), 16000, 512)
        pauses = []
        loops = loops_for(audio.size, seconds)
        looped = np.tile(audio, loops)
        for i in range(0, looped.size, 16000):
            stream.push(looped[i:i + 16000])
            w = stream.take_windows()
            if len(w):
                pauses += [e.at / 16000 for e in det.push(engine.process([(stream, w)])[0], levels_db(w))
                           if isinstance(e, PauseDetected)]
        stream.close()
        ends = [t["end"] / 16000 + k * audio.size / 16000 for k in range(loops) for t in man["files"][name]["turns"]]
        pairs = []
        for end in ends:
            after = [p for p in pauses if p >= end]
            if after:
                # the server can know only once the 20 ms frame holding the deciding window's end arrives
                pairs.append((end, float(np.ceil(after[0] / frame_s - 1e-9) * frame_s)))
        out[name] = pairs
    return out


# ---------------------------------------------------------------- load generator (own process)

class _RawClient(asyncio.Protocol):
    """One generator connection on a bare transport: the handshake by hand, then pre-masked frames.

    The generator must not be what limits the run, so it does no per-frame work beyond one
    ``transport.write`` of bytes built before the run, and reads server frames with a minimal parser.
    """

    def __init__(self, c: dict[str, Any]) -> None:
        self.c = c
        self.buf = bytearray()
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        if not self.open.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            ok = self.buf.startswith(b"HTTP/1.1 101")
            del self.buf[:end + 4]
            if not ok:
                self.open.set_exception(RuntimeError("handshake refused"))
                return
            self.open.set_result(None)
        buf, pos, c = self.buf, 0, self.c
        while len(buf) - pos >= 2:
            op, n, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if len(buf) - pos < head + n:
                break
            if op == 2:
                c["rx_frames"] += 1
                if c["waiting_audio"] is not None:
                    c["reply_lat"].append(now - c["waiting_audio"])
                    c["waiting_audio"] = None
            elif op == 1 and b'"pause_detected"' in buf[pos + head:pos + head + n]:
                c["pauses"].append(now)
                c["waiting_audio"] = now
            pos += head + n
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed during the handshake"))


def _client_frame(opcode: int, payload: bytes) -> bytes:
    from websockets.speedups import apply_mask

    mask = os.urandom(4)
    n = len(payload)
    head = bytes((0x80 | opcode, 0x80 | n)) if n < 126 else bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + mask + apply_mask(payload, mask)



async def pace_realtime(conns: list[dict[str, Any]], t_begin: float, stagger: float, end: float,
                        skip: str | None = None) -> tuple[list[float], list[float]]:
    """Send each connection's ``frames`` (looped) in real time until ``end``: stream i starts at its own
    moment, staggered over ``stagger`` seconds, and sends frame k when its audio is captured, at
    t0_i + (k + 1) * 20 ms. The ticker runs every STEP and serves only the streams whose phase falls in
    that step's slot; a connection holding the key ``skip`` is left alone. Returns how late each step
    woke and when its last frame was written (s after it was due)."""
    slots = int(round(TICK / STEP))
    by_slot: list[list[dict[str, Any]]] = [[] for _ in range(slots)]
    for i, c in enumerate(conns):
        c["t0"] = t_begin + round(stagger * i / max(len(conns), 1) / STEP) * STEP
        by_slot[int(round((c["t0"] - t_begin) / STEP)) % slots].append(c)
    lateness: list[float] = []
    spread: list[float] = []
    step = 0
    while True:
        due = t_begin + step * STEP
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
            now = time.monotonic()
        lateness.append(now - due)
        if now >= end:
            break
        for c in by_slot[step % slots]:
            if c["t0"] > due + 1e-9 or (skip is not None and skip in c):
                continue  # not started yet (or left alone)
            want = int(round((due - c["t0"]) / TICK))  # frames captured by now
            fr = c["frames"]
            while c["sent"] < want:
                c["transport"].write(fr[c["sent"] % len(fr)])
                c["sent"] += 1
        spread.append(time.monotonic() - due)
        step += 1
    return lateness, spread

async def generate(url: str, n: int, duration: float, stagger: float, files: list[str]) -> dict[str, Any]:
    from _corpus import load

    host, _, rest = url.removeprefix("ws://").partition(":")
    port, _, path = rest.partition("/")
    pcm = {name: (np.clip(load(name), -1, 1) * 32767).astype("<i2") for name in files}
    tiled = {name: np.tile(a, loops_for(a.size, duration + stagger + 1)) for name, a in pcm.items()}
    frames = {name: [_client_frame(2, a[i:i + FRAME].tobytes()) for i in range(0, a.size - FRAME + 1, FRAME)]
              for name, a in tiled.items()}
    start = _client_frame(1, json.dumps({"event": "start",
                                         "format": {"encoding": "pcm16", "sample_rate": 16000}}).encode())
    request = (f"GET /{path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: d3NzdHJlYW0tbG9hZGdlbg==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    conns: list[dict[str, Any]] = []
    for i in range(n):
        name = files[i % len(files)]
        c = {"name": name, "frames": frames[name], "sent": 0, "pauses": [], "reply_lat": [],
             "waiting_audio": None, "rx_frames": 0, "t0": None}
        transport, proto = await loop.create_connection(lambda c=c: _RawClient(c), host, int(port))
        transport.write(request)
        await proto.open
        transport.write(start)
        c["transport"] = transport
        conns.append(c)

    t_begin = time.monotonic()
    lateness, spread = await pace_realtime(conns, t_begin, stagger, t_begin + stagger + duration)
    await asyncio.sleep(2.0)  # let the last pauses and replies arrive
    for c in conns:
        c["transport"].write(_client_frame(8, (1000).to_bytes(2, "big")))
        c["transport"].close()
    return {
        "tick_late_ms_p99": float(np.percentile(lateness, 99) * 1000),
        "tick_late_ms_max": float(np.max(lateness) * 1000),
        "tick_done_ms_p99": float(np.percentile(spread, 99) * 1000),
        "samples_sent": int(sum(c["sent"] for c in conns) * FRAME),
        "conns": [{"name": c["name"], "t0": c["t0"], "pauses": c["pauses"], "reply_lat": c["reply_lat"],
                   "rx_frames": c["rx_frames"], "sent": c["sent"]} for c in conns],
    }


def generator_main(args: argparse.Namespace) -> None:
    result = asyncio.run(generate(args.url, args.n, args.duration, args.stagger, args.files.split(",")))
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------- orchestration

def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    match = re.search(rf"^wsstream_{name} ([\d.e+]+)$", body, re.M)
    return float(match.group(1)) if match else 0.0


def taskset(core: str) -> list[str]:
    found = subprocess.run(["which", "taskset"], capture_output=True).returncode == 0
    return ["taskset", "-c", core] if core and found else []


def run_one(n: int, args: argparse.Namespace, truth: dict[str, list[tuple[float, float]]],
            driver: str = "native") -> dict[str, Any]:
    server = subprocess.Popen(
        [*taskset(args.server_core), sys.executable, "-m", "wsstream.cli", "serve", "--port", "0",
         "--concurrency-limit", "100000", "--log-level", "WARNING", "--driver", driver, *args.server_args.split()],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        port = None
        for line in server.stdout:
            match = re.search(r"listening on ws://[\d.]+:(\d+)/ws", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "server did not start"
        rss_idle = proc_rss_mb(server.pid)
        out = HERE / "results" / f"gen_{n}.json"
        out.parent.mkdir(exist_ok=True)
        t0 = time.monotonic()
        gen = subprocess.Popen([*taskset(args.client_core), sys.executable, __file__, "--generator",
                                "--url", f"ws://127.0.0.1:{port}/ws", "--n", str(n), "--duration",
                                str(args.duration), "--stagger", str(args.stagger), "--files", ",".join(truth),
                                "--out", str(out)], cwd=ROOT)
        # sample CPU and RSS over the steady part of the run
        time.sleep(args.stagger + 1.0)
        cpu1, w1 = proc_cpu_seconds(server.pid), time.monotonic()
        rss_peak = 0.0
        while gen.poll() is None and time.monotonic() - w1 < args.duration - 1.5:
            rss_peak = max(rss_peak, proc_rss_mb(server.pid))
            time.sleep(0.5)
        cpu2, w2 = proc_cpu_seconds(server.pid), time.monotonic()
        gen.wait()
        wall = time.monotonic() - t0
        samples_in = metric(port, "audio_samples_in_total")
        result = json.loads(out.read_text())
        out.unlink()
    finally:
        server.terminate()
        server.wait(10)

    excess, pause_lat, reply_lat = [], [], []
    for c in result["conns"]:
        pairs = truth[c["name"]]
        for end, offline in pairs:
            sent_at = c["t0"] + end  # the turn's last sample was captured (and sent) then
            if sent_at + 1.5 > c["t0"] + c["sent"] * TICK:
                continue  # the run ended before this turn could finish
            seen = [p for p in c["pauses"] if p >= sent_at - 0.05]
            if not seen:
                excess.append(float("inf"))
                continue
            lat = seen[0] - sent_at
            pause_lat.append(lat * 1000)
            excess.append((lat - (offline - end)) * 1000)
        reply_lat += [x * 1000 for x in c["reply_lat"]]
    ex = np.array(excess)
    cpu_cores = (cpu2 - cpu1) / (w2 - w1)
    lost = result["samples_sent"] - samples_in
    row = {
        "driver": driver, "n": n, "server_cpu_cores": round(cpu_cores, 3),
        "cpu_ms_per_stream_s": round(cpu_cores / n * 1000, 3),
        "samples_sent": result["samples_sent"], "samples_server_took": int(samples_in), "lost_samples": int(lost),
        "turns_measured": int(ex.size), "turns_missed": int(np.isinf(ex).sum()),
        "pause_ms_p50": _pct(pause_lat, 50), "pause_ms_p95": _pct(pause_lat, 95), "pause_ms_p99": _pct(pause_lat, 99),
        "excess_ms_p50": _pct(ex[np.isfinite(ex)], 50), "excess_ms_p99": _pct(ex[np.isfinite(ex)], 99),
        "reply_ms_p50": _pct(reply_lat, 50), "reply_ms_p99": _pct(reply_lat, 99),
        "rss_idle_mb": round(rss_idle, 1), "rss_peak_mb": round(rss_peak, 1),
        "rss_kb_per_conn": round((rss_peak - rss_idle) * 1024 / n, 1),
        "gen_tick_late_ms_p99": round(result["tick_late_ms_p99"], 1),
        "gen_tick_done_ms_p99": round(result["tick_done_ms_p99"], 1), "wall_s": round(wall, 1),
    }
    row["held"] = bool(lost == 0 and row["turns_missed"] == 0 and cpu_cores < 0.97
                       and row["excess_ms_p99"] is not None and row["excess_ms_p99"] <= 20.0)
    return row


def _pct(values: Any, q: float) -> float | None:
    v = np.asarray(values, dtype=float)
    return round(float(np.percentile(v, q)), 1) if v.size else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default="50,100,200,300,400")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--stagger", type=float, default=2.0)
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--client-core", default="1")
    ap.add_argument("--server-args", default="", help="extra flags for wsstream serve")
    ap.add_argument("--drivers", default="native", help="comma-separated: native, asgi (each N under each)")
    ap.add_argument("--stop-after-fail", type=int, default=1, help="stop the sweep after this many failed N")
    ap.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator:
        generator_main(args)
        return
    from _corpus import manifest

    files = sorted(manifest()["files"])
    truth = offline_latencies(files, 600.0, args.duration + args.stagger + 1)
    rows, fails = [], 0
    cols = ["driver", "n", "server_cpu_cores", "cpu_ms_per_stream_s", "lost_samples", "turns_measured", "turns_missed",
            "pause_ms_p50", "pause_ms_p95", "pause_ms_p99", "excess_ms_p99", "reply_ms_p50", "reply_ms_p99",
            "rss_kb_per_conn", "gen_tick_done_ms_p99", "held"]
    print(" ".join(f"{c:>12}" for c in cols), flush=True)
    drivers = args.drivers.split(",")
    for n in (int(x) for x in args.sweep.split(",")):
        for driver in drivers:
            row = run_one(n, args, truth, driver)
            rows.append(row)
            print(" ".join(f"{row[c]!s:>12}" for c in cols), flush=True)
        if len(drivers) > 1:
            by = {r["driver"]: r for r in rows if r["n"] == n}
            base = by[drivers[0]]["cpu_ms_per_stream_s"]
            for driver in drivers[1:]:
                ratio = by[driver]["cpu_ms_per_stream_s"] / base
                note = " (saturated: at least this)" if by[driver]["server_cpu_cores"] > 0.95 else ""
                print(f"  N={n}: {driver} costs {ratio:.2f}x {drivers[0]}'s CPU per stream-second{note}", flush=True)
        fails += not all(r["held"] for r in rows if r["n"] == n and r["driver"] == drivers[0])
        if fails >= args.stop_after_fail:
            break
    held = [r["n"] for r in rows if r["held"] and r["driver"] == drivers[0]]
    best = max(held) if held else 0
    print(f"\nlargest N that held (no lost audio, < 1 core, p99 excess over detector alone <= 20 ms): {best} "
          f"streams on one core")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    if drivers != ["native"]:
        (out / "load_drivers.json").write_text(json.dumps({"rows": rows, "duration_s": args.duration}, indent=1))
        return
    (out / "load.json").write_text(json.dumps({"rows": rows, "streams_per_core": best,
                                               "duration_s": args.duration}, indent=1))
    plot(rows, out / "load.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Latency percentiles and the p99 excess (left) and server CPU (right) against N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (uv run --group bench python benchmarks/load.py)")
        return
    fig, (ax1, ax3) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    ns = [r["n"] for r in rows]
    for key, label in (("pause_ms_p50", "pause p50"), ("pause_ms_p95", "pause p95"), ("pause_ms_p99", "pause p99")):
        ax1.plot(ns, [r[key] for r in rows], marker="o", label=label)
    ax1.set_ylabel("pause_detected after turn end (ms)")
    ax2 = ax1.twinx()
    ax2.plot(ns, [r["server_cpu_cores"] for r in rows], color="k", linestyle="--", marker="s", label="server CPU")
    ax2.set_ylabel("server CPU (cores)")
    ax1.legend(loc="upper left")
    ax2.legend(loc="lower right")
    ax3.plot(ns, [r["excess_ms_p99"] for r in rows], marker="o", color="tab:red",
             label="p99 excess over detector alone")
    ax3.axhline(20.0, color="gray", linestyle=":", label="limit (20 ms)")
    ax3.set_ylabel("ms")
    ax3.set_xlabel("concurrent real-time streams (server on one core)")
    ax3.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
