"""Soak: many real-time streams for a long time, misbehaving clients mixed in, the server watched for leaks.

    uv run python benchmarks/soak.py [--streams 100] [--duration 600] [--bad-fraction 0.1] [--driver native]

Starts ``wsstream serve`` (its CLI, a separate process, the embedded echo reply, log at INFO into a
file) and a load generator process. Of ``--streams`` connections, ``--bad-fraction`` misbehave and
the rest are good: each good stream sends a corpus file (looped, whole 20 ms frames) in real time as
binary pcm16 16 kHz, reads everything and counts ``pause_detected`` and the reply audio after it.
The misbehaving slots cycle through four kinds, and each is re-created as soon as it ends, so that
many misbehave all along:

* slow reader: a tiny receive buffer, never reads, keeps sending audio (the server must drop it
  after its write stall, whatever it sends);
* flood: audio as fast as the server takes it, in 2-byte frames or in whole frames, for 15 s;
* garbage: random bytes before or after the handshake, unmasked or oversized frames, invalid
  UTF-8, deeply nested JSON, unknown events, bad formats, wrong paths;
* abrupt disconnect: streams real audio for 2-12 s, then a TCP reset or a FIN with no close frame.

Every 10 s the server's RSS and open file descriptors are sampled. At the end it prints their start,
end and slope (MB and fds per minute, a least-squares fit after the first 20 s), the turns lost on
the good streams (a turn the detector alone finds offline in the same audio, with no pause_detected
within 3 s of it: must be 0), good streams the server closed (must be 0), and the ERROR lines of the
server log, split into those of the misbehaving clients and the rest (must be 0). Then it keeps
sampling for ``--linger`` seconds after every client has gone: what the server still holds then
(fds, open streams) is what it would keep. ``--kinds flood_tiny`` (or any list of kinds) runs one
kind alone, to tell which one does the harm. Writes benchmarks/results/soak.json and keeps the
server log in benchmarks/results/soak_server.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
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

from load import _client_frame, _RawClient, pace_realtime, proc_rss_mb, taskset  # noqa: E402

FRAME = 320  # samples: 20 ms at 16 kHz
TICK = 0.02
SAMPLE_S = 10.0  # RSS and fd sampling interval
KINDS = ("slow_reader", "flood", "garbage", "abrupt")
# 2-byte binary frames, 8192 in one write (issue 13's amplification attack): 64 KB on the wire
TINY_FRAMES = b"".join(_client_frame(2, bytes((i & 0xFF, i >> 8 & 0xFF))) for i in range(8192))
MATCH_BEFORE_S, MATCH_AFTER_S = 0.3, 3.0  # an online pause within this of the offline one is the same turn
SLOW_LIFE_S = 300.0  # a slow reader the server has not dropped by then gives up (counted as "not dropped")
UPGRADE = ("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: d3NzdHJlYW0tc29hay0wMQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


# ---------------------------------------------------------------- audio and offline truth

def corpus_pcm(files: list[str]) -> dict[str, np.ndarray]:
    """Each file as int16 16 kHz, cut to whole 20 ms frames, so that looping frames tiles the audio exactly."""
    from _corpus import load

    out = {}
    for name in files:
        pcm = (np.clip(load(name), -1, 1) * 32767).astype("<i2")
        out[name] = pcm[:pcm.size - pcm.size % FRAME]
    return out


def offline_pauses(pcm: dict[str, np.ndarray], seconds: float, pause_ms: float = 600.0) -> dict[str, list[float]]:
    """Per file: when the detector alone (same model, same options) says pause_detected, in seconds from the
    stream's first sample, on the file tiled over ``seconds``; rounded up to the 20 ms frame that decides it."""
    from vad.detector import DetectorOptions, PauseDetected, PauseDetector, levels_db
    from vad.engine import VadEngine
    from vad.model import SileroModel

    engine = VadEngine(SileroModel(), max_pending_s=30.0)
    out: dict[str, list[float]] = {}
    for name, audio in pcm.items():
        stream = engine.open_stream(16000)
        det = PauseDetector(DetectorOptions(pause_ms=pause_ms), 16000, 512)
        looped = np.tile(audio, int(np.ceil(seconds * 16000 / audio.size)) + 1).astype(np.float32) / 32768.0
        pauses: list[float] = []
        for i in range(0, looped.size, 16000):
            stream.push(looped[i:i + 16000])
            windows = stream.take_windows()
            if len(windows):
                probs = engine.process([(stream, windows)])[0]
                pauses += [float(np.ceil(e.at / FRAME - 1e-9) * TICK) for e in det.push(probs, levels_db(windows))
                           if isinstance(e, PauseDetected)]
        stream.close()
        out[name] = pauses
    return out


# ---------------------------------------------------------------- the generator (its own process)

class GoodClient(_RawClient):
    """load.py's client (counts pause_detected and the reply audio after it), noting when it was closed."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.c.setdefault("lost_at", time.monotonic())


class Bare(asyncio.Protocol):
    """A misbehaving client's connection: keeps what it reads (unless paused), notes the server's close."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.read_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.read_bytes += len(data)
        if len(self.buf) < 65536:
            self.buf += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def open_bare(host: str, port: int, rcvbuf: int | None = None) -> tuple[asyncio.Transport, Bare]:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if rcvbuf is not None:  # (before connecting: it sets the window the server may fill)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    transport, proto = await loop.create_connection(Bare, sock=sock)
    return transport, proto  # type: ignore[return-value]


async def upgrade(transport: asyncio.Transport, proto: Bare, host: str, port: int, path: str = "/ws") -> bool:
    """The opening handshake by hand; False when refused or not answered in 10 s."""
    transport.write(UPGRADE.format(path=path, host=host, port=port).encode())
    deadline = time.monotonic() + 10.0
    while b"\r\n\r\n" not in proto.buf:
        if proto.lost.done() or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    ok = proto.buf.startswith(b"HTTP/1.1 101")
    del proto.buf[:proto.buf.find(b"\r\n\r\n") + 4]
    return ok


def server_close(buf: bytes | bytearray) -> int | None:
    """The code of the server's close frame among the (unmasked) frames in ``buf``, if one came."""
    pos = 0
    while len(buf) - pos >= 2:
        op, n, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        if len(buf) - pos < head + n:
            return None
        if op == 8:
            return int.from_bytes(buf[pos + head:pos + head + 2], "big") if n >= 2 else 1005
        pos += head + n
    return None


def start_frame(client_id: str) -> bytes:
    return _client_frame(1, json.dumps({"event": "start", "id": client_id,
                                        "format": {"encoding": "pcm16", "sample_rate": 16000}}).encode())


def close_frame(code: int = 1000) -> bytes:
    return _client_frame(8, code.to_bytes(2, "big"))


class Misbehaving:
    """One misbehaving slot: lives of its kind one after another until the end of the run."""

    def __init__(self, kind: str, slot: int, host: str, port: int, frames: list[bytes], end: float) -> None:
        self.kind, self.slot, self.host, self.port, self.frames, self.end = kind, slot, host, port, frames, end
        self.rng = random.Random(slot)
        self.lives: list[dict[str, Any]] = []
        # whole 20 ms frames of speech, 2 s of them per write, for the flood (built once: the generator's
        # loop also paces the good streams)
        self.speech_batch = b"".join(frames[i % len(frames)] for i in range(100))

    async def run(self) -> None:
        while time.monotonic() < self.end - 1.0:
            life: dict[str, Any] = {"id": f"bad-{self.kind}-{self.slot}-{len(self.lives)}", "t": time.monotonic()}
            try:
                await asyncio.wait_for(getattr(self, self.kind)(life), max(self.end - time.monotonic(), 0.1))
            except TimeoutError:  # (before OSError, of which it is one)
                life["outcome"] = "run ended"
            except (ConnectionError, OSError) as exc:
                life["error"] = type(exc).__name__
            life["s"] = round(time.monotonic() - life["t"], 2)
            self.lives.append(life)
            await asyncio.sleep(0.2)

    async def _stream(self, transport: asyncio.Transport, proto: Bare, seconds: float) -> bool:
        """Real-time audio for ``seconds``; True if the server ended the connection meanwhile."""
        k, t0 = self.rng.randrange(len(self.frames)), time.monotonic()
        while time.monotonic() - t0 < seconds:
            if proto.lost.done():
                return True
            transport.write(self.frames[k % len(self.frames)])
            k += 1
            await asyncio.sleep(TICK)
        return proto.lost.done()

    async def _open(self, life: dict[str, Any], rcvbuf: int | None = None) -> tuple[Any, Any] | None:
        """A connection upgraded on /ws (None, the life's outcome "refused", if the server would not)."""
        transport, proto = await open_bare(self.host, self.port, rcvbuf=rcvbuf)
        if not await upgrade(transport, proto, self.host, self.port):
            life["outcome"] = "refused"
            transport.abort()
            return None
        return transport, proto

    async def slow_reader(self, life: dict[str, Any]) -> None:
        if (opened := await self._open(life, rcvbuf=4096)) is None:
            return
        transport, proto = opened
        transport.pause_reading()  # from now on nothing is read: the window closes, the server's output backs up
        transport.write(start_frame(life["id"]))
        dropped = await self._stream(transport, proto, SLOW_LIFE_S)
        life["outcome"] = "dropped by the server" if dropped else "not dropped"
        transport.abort()

    async def flood_tiny(self, life: dict[str, Any]) -> None:
        await self.flood(life, tiny=True)

    async def flood_speech(self, life: dict[str, Any]) -> None:
        await self.flood(life, tiny=False)

    async def flood(self, life: dict[str, Any], tiny: bool | None = None) -> None:
        """Lives alternate 2-byte frames and whole speech frames (``tiny`` chooses one)."""
        if (opened := await self._open(life)) is None:
            return
        transport, proto = opened
        transport.write(start_frame(life["id"]))
        if tiny is None:
            tiny = len(self.lives) % 2 == 0
        batch = TINY_FRAMES if tiny else self.speech_batch
        t0, sent = time.monotonic(), 0
        while time.monotonic() - t0 < 15.0 and not proto.lost.done():
            if transport.get_write_buffer_size() < 1 << 18:
                transport.write(batch)
                sent += len(batch)
            await asyncio.sleep(0.005)
        life["outcome"] = "closed by the server" if proto.lost.done() else "ended"
        life["mb_sent"] = round(sent / 1e6, 1)
        life["tiny"] = tiny
        if not proto.lost.done():
            transport.write(close_frame())
            await asyncio.sleep(0.2)
        transport.abort()

    async def garbage(self, life: dict[str, Any]) -> None:
        rng = self.rng
        variant = len(self.lives) % 11
        life["variant"] = variant
        transport, proto = await open_bare(self.host, self.port)
        if variant == 0:  # noise instead of an HTTP request
            transport.write(rng.randbytes(rng.randrange(1, 4000)))
        else:
            path = "/telephone/handler" if variant == 9 else "/websocket/offer" if variant == 10 else "/ws"
            if not await upgrade(transport, proto, self.host, self.port, path):
                life["outcome"] = "refused"
                transport.abort()
                return
            payloads = {
                1: rng.randbytes(rng.randrange(1, 4000)),  # noise as frames
                2: bytes((0x82, 10)) + rng.randbytes(10),  # unmasked
                3: bytes((0x82, 0xFF)) + (1 << 40).to_bytes(8, "big") + rng.randbytes(4),  # a terabyte frame
                4: _client_frame(1, b"\xff\xfe\xfd"),  # invalid UTF-8
                5: _client_frame(1, b"[" * 1100 + b"]" * 1100),  # nested past the parser's recursion
                6: _client_frame(1, json.dumps({"event": "start", "id": life["id"],
                                                "format": {"encoding": "opus", "sample_rate": 1e999}})
                                 .encode()),
                7: _client_frame(1, b'{"event":"nonsense","\\ud800":[NaN,Infinity]}') + _client_frame(2, b"\x01"),
                8: start_frame(life["id"]) + b"".join(_client_frame(rng.randrange(16), rng.randbytes(20))
                                                      for _ in range(20)),  # random opcodes, some fragments
                9: _client_frame(1, b'{"event":"start","streamSid":"%s","start":{"mediaFormat":'  # Twilio
                                 b'{"sampleRate":Infinity}}}' % life["id"].encode()) + _client_frame(1, b"{" * 5000),
                10: _client_frame(2, rng.randbytes(640)) + _client_frame(1, b'{"event":"media","media":7}'),
            }
            transport.write(payloads[variant])
        for _ in range(200):  # 2 s for the server to answer
            if proto.lost.done() or server_close(proto.buf) is not None:
                break
            await asyncio.sleep(0.01)
        code = server_close(proto.buf)
        if code is not None:
            life["outcome"] = f"closed {code}"
            transport.write(close_frame(code if code != 1005 else 1000))  # the closing handshake, as a client would
            await asyncio.sleep(0.05)
        else:
            life["outcome"] = "TCP closed" if proto.lost.done() else "left open"
        transport.abort()

    async def abrupt(self, life: dict[str, Any]) -> None:
        if (opened := await self._open(life)) is None:
            return
        transport, proto = opened
        transport.write(start_frame(life["id"]))
        await self._stream(transport, proto, self.rng.uniform(2.0, 12.0))
        if len(self.lives) % 2:
            life["outcome"] = "reset"
            transport.abort()  # RST
        else:
            life["outcome"] = "fin"
            transport.close()  # FIN, no close frame


async def generate(host: str, port: int, n_good: int, n_bad: int, duration: float, stagger: float,
                   files: list[str], kinds: list[str]) -> dict[str, Any]:
    pcm = corpus_pcm(files)
    frames = {name: [_client_frame(2, a[i:i + FRAME].tobytes()) for i in range(0, a.size, FRAME)]
              for name, a in pcm.items()}
    loop = asyncio.get_running_loop()
    request = UPGRADE.format(path="/ws", host=host, port=port).encode()
    goods: list[dict[str, Any]] = []
    for i in range(n_good):
        name = files[i % len(files)]
        c = {"id": f"good-{i}", "name": name, "frames": frames[name], "sent": 0, "pauses": [], "reply_lat": [],
             "waiting_audio": None, "rx_frames": 0, "t0": None}
        transport, proto = await loop.create_connection(lambda c=c: GoodClient(c), host, port)
        transport.write(request)
        await proto.open
        transport.write(start_frame(c["id"]))
        c["transport"] = transport
        goods.append(c)

    t_begin = time.monotonic()
    end = t_begin + stagger + duration
    bad = [Misbehaving(kinds[i % len(kinds)], i, host, port, frames[files[i % len(files)]], end)
           for i in range(n_bad)]
    bad_tasks = [asyncio.create_task(b.run()) for b in bad]

    lateness, _ = await pace_realtime(goods, t_begin, stagger, end, skip="lost_at")
    await asyncio.gather(*bad_tasks)
    await asyncio.sleep(MATCH_AFTER_S)  # the last turns' pauses and replies
    for c in goods:
        if "lost_at" not in c:
            c["transport"].write(close_frame())
            c["transport"].close()
    return {
        "tick_late_ms_p99": float(np.percentile(lateness, 99) * 1000),
        "good": [{k: c.get(k) for k in ("id", "name", "t0", "sent", "pauses", "reply_lat", "rx_frames", "lost_at")}
                 for c in goods],
        "bad": [{"kind": b.kind, "slot": b.slot, "lives": b.lives} for b in bad],
    }


def generator_main(args: argparse.Namespace) -> None:
    result = asyncio.run(generate("127.0.0.1", args.port, args.good, args.bad, args.duration, args.stagger,
                                  args.files.split(","), args.kinds.split(",")))
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------- orchestration and report

def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(samples: list[dict[str, float]], key: str, after_s: float) -> float | None:
    pts = [(s["t"] / 60.0, s[key]) for s in samples if s["t"] >= after_s]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def lost_turns(good: list[dict[str, Any]], truth: dict[str, list[float]]) -> dict[str, Any]:
    """Match each offline pause of each good stream with an online pause_detected near it (in order)."""
    expected = matched = extra = answered = 0
    lost: list[tuple[str, float]] = []
    late: list[float] = []  # ms from the offline pause to the online one, for the matched turns
    for c in good:
        if c["t0"] is None:
            continue
        sent_s = c["sent"] * TICK
        online = sorted(c["pauses"])
        used = 0
        for p in truth[c["name"]]:
            if p > sent_s - MATCH_AFTER_S:
                break
            expected += 1
            want = c["t0"] + p
            while used < len(online) and online[used] < want - MATCH_BEFORE_S:
                used += 1
                extra += 1
            if used < len(online) and online[used] <= want + MATCH_AFTER_S:
                late.append((online[used] - want) * 1000)
                matched += 1
                used += 1
            else:
                lost.append((c["id"], round(p, 2)))
        answered += len(c["reply_lat"])
    return {"expected": expected, "matched": matched, "lost": len(lost), "lost_examples": lost[:10],
            "online_pauses": sum(len(c["pauses"]) for c in good),
            "pause_after_offline_ms_p50": _pct(late, 50), "pause_after_offline_ms_p99": _pct(late, 99),
            "unmatched_online": extra, "replies_heard": answered,
            "reply_ms_p50": _pct([x * 1000 for c in good for x in c["reply_lat"]], 50),
            "reply_ms_p99": _pct([x * 1000 for c in good for x in c["reply_lat"]], 99)}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def error_lines(log_text: str) -> dict[str, Any]:
    """The server log's ERROR (and CRITICAL) lines with what follows them (tracebacks), split by whose they are:
    a line naming a misbehaving client (``bad-...``), one naming a good one, and the rest."""
    entries: list[str] = []
    for line in log_text.splitlines():
        if re.match(r"^\d{4}-\d\d-\d\d ", line):
            entries.append(line)
        elif entries:
            entries[-1] += "\n" + line
    errors = [e for e in entries if re.match(r"^\S+ \S+ (ERROR|CRITICAL) ", e)]
    bad = [e for e in errors if "bad-" in e.splitlines()[0]]
    good = [e for e in errors if "good-" in e.splitlines()[0]]
    other = [e for e in errors if e not in bad and e not in good]
    return {"total": len(errors), "misbehaving": len(bad), "good": len(good), "other": len(other),
            "examples_misbehaving": [e.splitlines()[0][:300] for e in bad[:5]],
            "examples_good": [e[:600] for e in good[:5]], "examples_other": [e[:600] for e in other[:5]],
            "warnings": sum(1 for e in entries if " WARNING " in e.splitlines()[0][:60])}


def metrics_text(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError as exc:
        return f"# metrics unavailable: {exc}"


def open_streams(port: int) -> float:
    """Streams the server still counts as open (its active sessions gauge), or -1 when it says none."""
    for line in metrics_text(port).splitlines():
        match = re.match(r"^wsstream_(?:active_sessions|sessions_active|streams_open)\S* ([\d.e+]+)$", line)
        if match:
            return float(match.group(1))
    return -1.0


def counters(text: str) -> dict[str, float]:
    """The counters worth quoting from the server's /metrics (summed over their labels)."""
    want = ("sessions", "protocol_errors", "write_stall_closes", "outbox_overflows", "sessions_rejected",
            "input_waits", "bad_audio", "reads_throttled")
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^wsstream_(\w+?)(?:_total)?(?:\{[^}]*\})? ([\d.e+]+)$", line)
        if match and match.group(1) in want:
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--bad-fraction", type=float, default=0.1)
    ap.add_argument("--driver", choices=("native", "asgi"), default="native")
    ap.add_argument("--stagger", type=float, default=5.0)
    ap.add_argument("--linger", type=float, default=30.0, help="seconds to keep sampling after every client left")
    ap.add_argument("--kinds", default=",".join(KINDS), help="the misbehaving kinds the slots cycle through "
                    "(also flood_tiny, flood_speech: one of the two floods only)")
    ap.add_argument("--server-core", default="", help="pin the server to this core (taskset), e.g. 0")
    ap.add_argument("--client-core", default="", help="pin the generator to this core, e.g. 1")
    ap.add_argument("--server-args", default="", help="extra flags for wsstream serve")
    ap.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--good", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bad", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator:
        generator_main(args)
        return
    from _corpus import manifest

    n_bad = int(round(args.streams * args.bad_fraction))
    n_good = args.streams - n_bad
    files = sorted(manifest()["files"])
    t = time.monotonic()
    truth = offline_pauses(corpus_pcm(files), args.duration + args.stagger + 5)
    print(f"offline truth: {sum(len(v) for v in truth.values())} pauses over {len(files)} files "
          f"({time.monotonic() - t:.0f} s)", flush=True)

    results = HERE / "results"
    results.mkdir(exist_ok=True)
    log_path = results / "soak_server.log"
    gen_out = results / "soak_gen.json"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [*taskset(args.server_core), sys.executable, "-m", "wsstream.cli", "serve", "--port", "0",
             "--concurrency-limit", "100000", "--log-level", "INFO", "--driver", args.driver,
             *args.server_args.split()], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None:
            match = re.search(r"listening on ws://[\d.]+:(\d+)/ws", log_path.read_text())
            if match:
                port = int(match.group(1))
            elif server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start:\n" + log_path.read_text())
            else:
                time.sleep(0.2)
        print(f"server pid {server.pid} on port {port}, driver {args.driver}: {n_good} good streams, {n_bad} "
              f"misbehaving, {args.duration:.0f} s", flush=True)
        gen = subprocess.Popen([*taskset(args.client_core), sys.executable, __file__, "--generator",
                                "--port", str(port), "--good", str(n_good), "--bad", str(n_bad),
                                "--duration", str(args.duration), "--stagger", str(args.stagger),
                                "--files", ",".join(files), "--kinds", args.kinds, "--out", str(gen_out)], cwd=ROOT)
        samples: list[dict[str, float]] = []
        t0 = time.monotonic()
        while gen.poll() is None:
            samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": round(proc_rss_mb(server.pid), 1),
                            "fds": open_fds(server.pid)})
            print(f"  t={samples[-1]['t']:6.0f} s  RSS {samples[-1]['rss_mb']:7.1f} MB  fds {samples[-1]['fds']}",
                  flush=True)
            next_at = t0 + len(samples) * SAMPLE_S
            while gen.poll() is None and time.monotonic() < next_at:
                time.sleep(0.2)
        if gen.returncode != 0:
            raise SystemExit(f"the generator failed ({gen.returncode})")
        final_metrics = counters(metrics_text(port))
        # every client has gone: what the server still holds after --linger seconds is kept for good
        linger_end = time.monotonic() + max(args.linger, 2.0)
        while time.monotonic() < linger_end:
            time.sleep(min(SAMPLE_S, max(linger_end - time.monotonic(), 0.0)))
            samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": round(proc_rss_mb(server.pid), 1),
                            "fds": open_fds(server.pid), "after_clients": True})
            print(f"  t={samples[-1]['t']:6.0f} s  RSS {samples[-1]['rss_mb']:7.1f} MB  fds {samples[-1]['fds']}"
                  "  (clients gone)", flush=True)
        final_metrics["open_streams_after_linger"] = open_streams(port)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    gen_result = json.loads(gen_out.read_text())
    gen_out.unlink()
    report(args, samples, gen_result, truth, error_lines(log_path.read_text()), final_metrics, results)


def report(args: argparse.Namespace, samples: list[dict[str, float]], gen: dict[str, Any],
           truth: dict[str, list[float]], errors: dict[str, Any], final_metrics: dict[str, float],
           results: Path) -> None:
    settle = args.stagger + 15.0  # (after the streams are all up)
    linger = [s for s in samples if s.get("after_clients")]
    samples = [s for s in samples if not s.get("after_clients")]
    steady = [s for s in samples if s["t"] >= settle] or samples
    turns = lost_turns(gen["good"], truth)
    closed_good = [c["id"] for c in gen["good"] if c.get("lost_at") is not None]
    lives: dict[str, dict[str, int]] = {}
    for b in gen["bad"]:
        for life in b["lives"]:
            outcome = life.get("outcome", life.get("error", "?"))
            if "variant" in life:
                outcome = f"{life['variant']}: {outcome}"
            lives.setdefault(b["kind"], {}).setdefault(outcome, 0)
            lives[b["kind"]][outcome] += 1
    slow = [life["s"] for b in gen["bad"] if b["kind"] == "slow_reader" for life in b["lives"]
            if life.get("outcome") == "dropped by the server"]
    summary = {
        "streams": args.streams, "good": len(gen["good"]), "misbehaving_slots": len(gen["bad"]),
        "duration_s": args.duration, "driver": args.driver,
        "rss_mb": {"start": steady[0]["rss_mb"], "end": samples[-1]["rss_mb"],
                   "peak": max(s["rss_mb"] for s in samples),
                   "slope_mb_per_min": _round(slope_per_minute(samples, "rss_mb", settle))},
        "fds": {"start": steady[0]["fds"], "end": samples[-1]["fds"], "peak": max(s["fds"] for s in samples),
                "slope_per_min": _round(slope_per_minute(samples, "fds", settle))},
        "turns": turns, "good_streams_closed": len(closed_good), "good_streams_closed_ids": closed_good[:10],
        "misbehaving_lives": lives, "slow_reader_dropped_after_s_median": _pct(slow, 50),
        "server_errors": errors, "server_counters": final_metrics,
        "after_clients_left": {"seconds": args.linger, "rss_mb": linger[-1]["rss_mb"] if linger else None,
                               "fds": linger[-1]["fds"] if linger else None},
        "generator_tick_late_ms_p99": round(gen["tick_late_ms_p99"], 1), "samples": samples + linger,
    }
    (results / "soak.json").write_text(json.dumps(summary, indent=1))
    r, f = summary["rss_mb"], summary["fds"]
    print(f"\nsoak: {args.streams} streams ({len(gen['good'])} good, {len(gen['bad'])} misbehaving slots), "
          f"{args.duration:.0f} s, driver {args.driver}")
    print(f"RSS: start {r['start']} MB (t={steady[0]['t']:.0f} s), end {r['end']} MB, peak {r['peak']} MB, "
          f"slope {r['slope_mb_per_min']} MB/min")
    print(f"open fds: start {f['start']}, end {f['end']}, peak {f['peak']}, slope {f['slope_per_min']} per min")
    gone = summary["after_clients_left"]
    print(f"{args.linger:.0f} s after every client left: RSS {gone['rss_mb']} MB, fds {gone['fds']}, streams still "
          f"open {final_metrics.get('open_streams_after_linger')}")
    print(f"good streams: turns expected {turns['expected']}, matched {turns['matched']}, LOST {turns['lost']} "
          f"{turns['lost_examples'] or ''}; pause_detected {turns['online_pauses']} in all, matched ones "
          f"{turns['pause_after_offline_ms_p50']} / {turns['pause_after_offline_ms_p99']} ms (p50 / p99) after the "
          f"detector alone; replies heard {turns['replies_heard']} (first audio p50 "
          f"{turns['reply_ms_p50']} / p99 {turns['reply_ms_p99']} ms); extra pauses {turns['unmatched_online']}; "
          f"closed by the server {len(closed_good)}")
    print(f"misbehaving lives: {json.dumps(lives)}; slow readers dropped after a median "
          f"{summary['slow_reader_dropped_after_s_median']} s")
    print(f"server ERROR lines: {errors['total']} ({errors['misbehaving']} of misbehaving clients, "
          f"{errors['good']} of good streams, {errors['other']} other); WARNING lines {errors['warnings']}")
    for line in errors["examples_good"] + errors["examples_other"]:
        print("   ", line.replace("\n", "\n    "))
    print(f"server counters: {json.dumps(final_metrics)}")
    print(f"generator ticker p99 late: {summary['generator_tick_late_ms_p99']} ms")
    ok = turns["lost"] == 0 and not closed_good and errors["good"] == 0 and errors["other"] == 0
    print("PASS" if ok else "FAIL")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


if __name__ == "__main__":
    main()
