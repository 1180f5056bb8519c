"""Faults an attacker finds (issue 13), each over a real socket on both drivers: the stream that
sends them gets a clear error (or, on a call, nothing fatal), and the server and a concurrent good
stream go on."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ServerProcess, load_corpus
from twilio_peer import TwilioPeer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsclient import Conversation

from wsstream.codecs import AudioFormat, encode
from wsstream.config import StreamConfig
from wsstream.echo import echo
from wsstream.reply import ReplyOnPause, ReplyPool, ReplyThreadsBusy

BOTH_DRIVERS = True
NESTED = "[" * 1100 + "]" * 1100


@pytest.fixture
async def server(make_server: Any) -> Any:
    return await make_server(ReplyOnPause(fn=echo))


async def messages_until_close(ws: Any) -> list[dict[str, Any]]:
    out = []
    try:
        async for message in ws:
            out.append(json.loads(message))
    except ConnectionClosed:
        pass
    return out


@pytest.mark.parametrize("message", [NESTED, json.dumps({"event": "input"})[:-1] + ', "data": ' + NESTED + "}"],
                         ids=["alone", "as-input-data"])
async def test_deeply_nested_json_is_an_error_not_a_dropped_connection(server: Any, message: str) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send(message)
        reply = json.loads(await ws.recv())
        assert reply == {"type": "error", "data": "invalid JSON: nested too deeply"}
        await ws.send(json.dumps({"event": "ping"}))
        assert json.loads(await ws.recv()) == {"event": "pong"}  # the stream goes on


async def test_deeply_nested_json_on_the_fastrtc_path_is_an_error_and_the_stream_goes_on(server: Any,
                                                                                        manifest: dict) -> None:
    good = asyncio.create_task(good_turn(server.port, manifest))
    async with connect(f"ws://127.0.0.1:{server.port}/websocket/offer") as ws:
        await ws.send(json.dumps({"event": "start", "websocket_id": "nested"}))
        await ws.send(NESTED)
        assert json.loads(await ws.recv()) == {"type": "error", "data": "invalid JSON: nested too deeply"}
        await ws.send(json.dumps({"event": "ping"}))
        assert json.loads(await ws.recv()) == {"event": "pong"}
    await good


async def test_deeply_nested_json_on_a_call_is_not_fatal(server: Any) -> None:
    wire = encode(load_corpus("dialog_06.flac", 8000), "mulaw")
    async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler") as peer:
        await peer.send_raw(NESTED)
        await peer.send_audio(wire[:int(4.4 * 8000)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.stop()
        assert await peer.wait_closed() == 1000
    assert server.metrics.count("protocol_errors", kind="json") == 1


@pytest.mark.parametrize("rate", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
async def test_twilio_start_with_an_infinite_rate_falls_back_and_the_call_goes_on(server: Any, rate: float) -> None:
    """json.dumps writes these as Infinity / NaN, which Python's json (and so the server) accepts."""
    wire = encode(load_corpus("dialog_06.flac", 8000), "mulaw")
    async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler", sample_rate=rate) as peer:  # type: ignore[arg-type]
        peer.sample_rate = 8000  # (what the server falls back to; the peer's own framing needs a number)
        await peer.send_audio(wire[:int(4.4 * 8000)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.stop()
        assert await peer.wait_closed() == 1000
    assert server.metrics.counters["twilio_bad_media_format"] == 1


class InfiniteChannelsPeer(TwilioPeer):
    """A Twilio peer whose start says ``"channels": Infinity`` (and its rate as ``1e999``, read as inf)."""

    async def send(self, msg: dict[str, Any], seq: bool = True) -> None:
        if msg.get("event") == "start":
            msg["start"]["mediaFormat"]["channels"] = float("inf")
            text = json.dumps(msg).replace('"sampleRate": 8000', '"sampleRate": 1e999')
            assert "Infinity" in text and "1e999" in text
            assert self.ws is not None
            await self.ws.send(text)
            return
        await super().send(msg, seq)


async def test_twilio_start_with_infinite_channels_falls_back_and_the_call_goes_on(server: Any,
                                                                                  manifest: dict) -> None:
    good = asyncio.create_task(good_turn(server.port, manifest))
    wire = encode(load_corpus("dialog_06.flac", 8000), "mulaw")
    async with InfiniteChannelsPeer(f"ws://127.0.0.1:{server.port}/telephone/handler") as peer:
        await peer.send_audio(wire[:int(4.4 * 8000)], realtime=False)
        await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
        await peer.stop()
        assert await peer.wait_closed() == 1000
    assert server.metrics.counters["twilio_bad_media_format"] == 1
    await good


async def test_a_lone_surrogate_in_a_field_name_closes_1003_with_a_reason(server: Any) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send('{"event": "start", "format": {"\\ud800": 1}}')
        error = await messages_until_close(ws)
        assert ws.close_code == 1003
        assert error and error[0]["type"] == "error" and "unknown field" in error[0]["data"]
        assert "unknown field" in (ws.close_reason or "")
    # and the server still serves a good stream
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", AudioFormat()) as conv:
        await conv.send_json({"event": "ping"})
        await conv.wait_for(lambda c: c.of("event", "pong"))


async def test_a_hung_sync_reply_does_not_keep_sigterm_from_finishing(driver: str, manifest: dict) -> None:
    """A plain reply function stuck for good in a blocking call holds one thread of the pool: a good stream
    is still answered alongside, and SIGTERM ends the process within seconds (its threads are daemons)."""
    server = await asyncio.to_thread(ServerProcess, "--handler", "tests.reply_attacks:reply", driver=driver)
    try:
        async with Conversation(server.url + "/ws", AudioFormat()) as conv:
            await attacker_turn(conv, manifest, "hang")  # the reply is now stuck in its thread
            await good_turn(server.port, manifest)
            t0 = time.monotonic()
            server.proc.terminate()
            code = await asyncio.to_thread(server.proc.wait, 15)
        took = time.monotonic() - t0
        print(f"{driver}: SIGTERM to exit with a hung reply thread: {took:.2f} s")
        assert took < 5, "SIGTERM waited for the hung reply thread"
        assert code in (0, -signal.SIGTERM)
    finally:
        server.close()


# ---- helpers for faults 4, 5 and 9: a bare-socket client, a good stream, raw HTTP -------------------

PAUSE_S = 0.6  # the detector's default pause
LATE_S = 0.5  # how late a good stream's pause_detected may come, beyond the pause (0.08 s on an idle machine)


class RawClient:
    """A WebSocket client on a bare socket, for what a library will not do: never read (with a tiny
    receive buffer), or send a third of a million frames in one write."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._mask = np.frombuffer(os.urandom(4), np.uint8)

    @classmethod
    async def connect(cls, port: int, path: str = "/ws", rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket()
        if rcvbuf is not None:  # (before connecting: it sets the window the server may fill)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        client = cls(sock)
        await client._loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await client.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          .encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # a byte at a time: nothing after the response is read
            byte = await client._loop.sock_recv(sock, 1)
            assert byte, f"closed during the handshake: {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    def frames(self, payloads: np.ndarray, opcode: int = 0x2) -> bytes:
        """One masked frame per row of ``payloads`` (uint8 [n, k], k < 65536), built at once with numpy."""
        n, k = payloads.shape
        head = 2 if k < 126 else 4
        out = np.empty((n, head + 4 + k), np.uint8)
        out[:, 0] = 0x80 | opcode
        if k < 126:
            out[:, 1] = 0x80 | k
        else:
            out[:, 1:4] = (0x80 | 126, k >> 8, k & 0xFF)
        out[:, head:head + 4] = self._mask
        out[:, head + 4:] = payloads ^ self._mask[np.arange(k) % 4]
        return out.tobytes()

    def text(self, message: str) -> bytes:
        return self.frames(np.frombuffer(message.encode(), np.uint8)[None, :], 0x1)

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)

    async def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = await self._loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("closed")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def recv(self) -> tuple[int, bytes]:
        """The next server frame (unmasked, unfragmented) as (opcode, payload)."""
        b0, b1 = await self._read(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read(8))
        return b0 & 0x0F, await self._read(length)

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a killed process's socket may."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def speech(manifest: dict[str, Any], name: str, seconds: float) -> np.ndarray:
    """``seconds`` of one corpus file's speech with the gaps between its turns cut out: one long turn."""
    audio = load_corpus(name)
    turns = manifest["files"][name]["turns"]
    return np.concatenate([audio[t["start"]:t["end"]] for t in turns])[:int(seconds * 16000)]


async def good_turn(port: int, manifest: dict[str, Any], realtime: bool = True) -> None:
    """A well-behaved client's turn (1.6 s of speech), sent in real time: its pause is detected in time
    and its echo plays whole. Runs alongside each attack."""
    name = "dialog_01.flac"
    turn = manifest["files"][name]["turns"][0]
    first = turn["start"] - 4800  # from 0.3 s before the speech to 0.9 s after it (the pause is 0.6 s)
    audio = load_corpus(name)[first:turn["end"] + 14400]
    async with Conversation(f"ws://127.0.0.1:{port}/ws", AudioFormat()) as conv:
        await conv.send_audio(audio, speed=1.0 if realtime else 0.0)
        await conv.wait_for(lambda c: c.replies and c.replies[-1].ended_by == "mark", 15)
    (pause,) = conv.logs("pause_detected")
    late = pause["wall"] - (turn["end"] - first) / 16000 - PAUSE_S
    assert late < LATE_S or not realtime, f"the good stream's pause came {late:.3f} s after the pause had passed"
    assert abs(len(conv.replies[-1].audio) / 2 - pause["speech_s"] * 16000) <= 320
    assert pause["speech_s"] > 1.0


async def http(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request, exactly as written; the whole answer, up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# ---- fault 4: a client that never reads ------------------------------------------------------------

def tcp_send_buffer_max() -> int:
    """The most a server socket's send buffer may autotune to (what a client that never reads makes the
    server hold in the kernel before anything waits in the server itself)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


async def test_a_client_that_never_reads_is_closed_then_dropped(make_server: Any, manifest: dict) -> None:
    """It keeps sending audio (so keepalive never finds it silent) and asks for warnings it never reads:
    after the write stall deadline the server closes it 1008 and, the close frame stuck behind what
    it did not read, aborts the TCP connection. A good stream alongside is answered in time."""
    stall_s = 1.0
    # (no budget of messages: its ~40,000 triggers a second fill the kernel's buffers, whatever their size)
    server = await make_server(ReplyOnPause(fn=echo), write_stall_s=stall_s, max_messages_per_s=0)
    good = asyncio.create_task(good_turn(server.port, manifest))
    attacker = await RawClient.connect(server.port, rcvbuf=4096)
    try:
        # a trigger before any speech is answered with a warning of about 90 bytes
        trigger = attacker.text(json.dumps({"event": "trigger"}))
        per_frame = (tcp_send_buffer_max() + (1 << 21)) // 80 // 100  # enough to fill every buffer in 2 s
        audio = load_corpus("dialog_02.flac")
        frames = audio[:audio.size // 320 * 320].view(np.uint8).reshape(-1, 640)  # 20 ms each
        t0 = time.monotonic()
        dropped = False
        try:
            for frame in frames:  # audio in real time, each frame with its triggers, until it is dropped
                await attacker.send(trigger * per_frame + attacker.frames(frame[None, :]))
                await asyncio.sleep(0.02)
                if time.monotonic() - t0 > 12:
                    break
        except OSError:  # reset by the server
            dropped = True
        took = time.monotonic() - t0
        assert dropped, "the server kept a client that reads nothing"
        assert took < 2 + 2 * stall_s + 1.5, f"dropped, but after {took:.1f} s"
        assert server.metrics.counters["write_stall_closes"] == 1
    finally:
        attacker.close()
        await good
    await asyncio.wait_for(server.wait_idle(), 5)


# ---- fault 9: HTTP methods -------------------------------------------------------------------------

async def test_http_methods_other_than_get_and_head_are_405_and_head_has_no_body(server: Any, manifest: dict) -> None:
    """Our pages are read-only: a POST (or PUT, DELETE, TRACE, ...) is not answered as if it were a GET,
    but 405 with Allow; HEAD is GET's answer without its body (its Content-Length kept)."""
    good = asyncio.create_task(good_turn(server.port, manifest))
    for method, path in [("POST", "/healthz"), ("DELETE", "/"), ("PUT", "/static/demo.js"), ("PATCH", "/metrics"),
                         ("TRACE", "/"), ("OPTIONS", "/healthz"), ("POST", "/ws")]:
        status, headers, _ = await http(server.port, method, path)
        assert status == 405, (method, path, status)
        assert {m.strip() for m in headers["allow"].split(",")} == {"GET", "HEAD"}, (method, path)
        assert (await http(server.port, method, "/no/such/page"))[0] == 404  # what is not there is 404
    for path in ("/", "/static/demo.js", "/healthz", "/ws", "/no/such/page"):
        get_status, get_headers, get_body = await http(server.port, "GET", path)
        status, headers, body = await http(server.port, "HEAD", path)
        assert get_status in (200, 404, 426) and (status, body) == (get_status, b""), path
        assert headers["content-length"] == get_headers["content-length"] == str(len(get_body)), path
        assert headers["content-type"] == get_headers["content-type"], path
    await good
    await server.wait_idle()  # (then the metrics hold still between the two requests)
    get_status, get_headers, get_body = await http(server.port, "GET", "/metrics")
    status, headers, body = await http(server.port, "HEAD", "/metrics")
    assert (get_status, status, body) == (200, 200, b"")
    assert headers["content-length"] == str(len(get_body))


# ---- fault 5: tiny frames ----------------------------------------------------------------------------

async def test_tiny_frames_cost_memory_in_proportion_to_the_audio(driver: str, manifest: dict) -> None:
    """15 s of speech (one turn) and 1 s of silence as 2-byte frames, 256,000 of them, as fast as they go:
    the server's memory grows with the audio (512 kB of it), not with the number of messages; the turn
    is answered with its whole echo, and a good stream alongside is answered in time. (The echo comes
    at once, --lead-ms; 15 s of it is 780 frames, within the ASGI driver's outbox of 1024.)"""
    # (no budget of messages: at its default the 256,000 frames would take minutes; the budget is tested below)
    server = await asyncio.to_thread(ServerProcess, "--lead-ms", "600000", "--max-messages-per-s", "0",
                                     driver=driver)
    try:
        await good_turn(server.port, manifest, realtime=False)  # (a first turn allocates what later ones reuse)
        before = peak_rss(server.proc.pid)
        pcm = np.concatenate([speech(manifest, "dialog_03.flac", 15.0), np.zeros(16000, np.int16)])
        attacker = await RawClient.connect(server.port)
        try:
            good = asyncio.create_task(good_turn(server.port, manifest))
            t0 = time.monotonic()
            await attacker.send(attacker.frames(pcm.view(np.uint8).reshape(-1, 2)))  # a frame per sample
            events: list[dict[str, Any]] = []
            echo_bytes = 0
            while not any(e.get("event") == "mark" for e in events):
                opcode, payload = await asyncio.wait_for(attacker.recv(), 20)
                if opcode == 0x2:
                    echo_bytes += len(payload)
                elif opcode == 0x1:
                    events.append(json.loads(payload))
            took = time.monotonic() - t0
            await good
        finally:
            attacker.close()
        grown = peak_rss(server.proc.pid) - before
    finally:
        server.close()
    print(f"{driver}: 256,000 frames answered in {took:.1f} s; peak RSS grew {grown / 1e6:.1f} MB")
    (pause,) = [e for e in events if e.get("data") == "pause_detected"]
    assert pause["speech_s"] > 14.5
    assert abs(echo_bytes / 2 - pause["speech_s"] * 16000) <= 320  # the echo is the whole utterance
    assert grown < 24e6, f"peak RSS grew {grown / 1e6:.1f} MB for 0.5 MB of audio"


# ---- fault 7: reply threads --------------------------------------------------------------------------

def slow_echo(audio: tuple[int, np.ndarray], *args: Any) -> tuple[int, np.ndarray]:
    """A plain (sync) reply function in a 2 s blocking call (a model that takes its time), then the echo."""
    time.sleep(2)
    return audio


def reply_threads() -> int:
    return sum(t.name == "reply" for t in threading.enumerate())


async def test_sync_replies_share_a_bounded_pool_of_threads(make_server: Any, manifest: dict,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A client forcing a reply every 20 ms from a 2 s sync function: each interrupted reply's call runs
    on (it cannot be stopped), but in one of at most ``reply_threads`` threads, not a thread each, and
    the log says the pool is full; the good stream's reply still gets a thread."""
    server = await make_server(ReplyOnPause(fn=slow_echo))
    limit = server.hub.config.reply_threads
    base = reply_threads()
    good = asyncio.create_task(good_turn(server.port, manifest))
    most = 0
    audio = load_corpus("dialog_02.flac")[:int(2.5 * 16000)]
    async with Conversation(f"ws://127.0.0.1:{server.port}/ws", AudioFormat()) as attacker:
        for i in range(0, audio.size, 320):  # speech in real time, a trigger with every 20 ms of it
            await attacker.send_audio(audio[i:i + 320])
            await attacker.send_json({"event": "trigger"})
            await asyncio.sleep(0.02)
            most = max(most, reply_threads() - base)
        triggered = len(attacker.logs("pause_detected"))
    await good
    assert triggered > 1.5 * limit  # (more replies than threads, so the bound is what held)
    assert most <= limit, f"{most} reply threads for a limit of {limit}"
    assert any("reply threads are busy" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert server.hub.metrics.counters["reply_pool_saturations"] >= 1  # (once per time it ran full)


async def test_a_full_reply_pool_hands_threads_on_in_order_and_bounds_the_wait() -> None:
    """The pool's contract, without sockets: a thread comes back only once its call has returned, goes
    to the first reply still waiting (not to one cancelled meanwhile), and a reply waits at most
    ``wait_s`` for one, then fails."""
    pool = ReplyPool(1, wait_s=0.3)
    lane = await pool.acquire()
    busy = lane.submit(time.sleep, 0.5)  # an interrupted reply's call, running on
    lane.release()
    t0 = time.monotonic()
    with pytest.raises(ReplyThreadsBusy):
        await pool.acquire()
    assert 0.25 < time.monotonic() - t0 < 0.45 and not busy.done()
    pool.wait_s = 10.0  # (what follows is about order, not time: no failure from a loaded machine's delays)
    gone = asyncio.create_task(pool.acquire())
    first = asyncio.create_task(pool.acquire())
    second = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    gone.cancel()  # (barge-in while it waited)
    again = await first
    assert again is lane and busy.done() and pool.threads == 1
    again.release()
    assert await second is lane
    lane.release()
    pool.close()
    await asyncio.sleep(0.05)
    assert pool.threads == 0 and gone.cancelled()


# ---- fault 8: reply audio that would stall the loop ----------------------------------------------

STALL_S = 0.15  # the longest a ping may wait for its pong: 10-40 ms on a shared 2-core machine, 0.56 s before


class PingProbe:
    """The server's event loop seen over a socket: a /ws client sending a ping every 20 ms once the last
    pong came. Its longest round trip bounds the longest stall of the loop while it ran."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.rtts: list[float] = []

    async def __aenter__(self) -> PingProbe:
        self._ws = await connect(self.url, open_timeout=20)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._ws.close()

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await self._ws.send(json.dumps({"event": "ping"}))
            while json.loads(await self._ws.recv()) != {"event": "pong"}:
                pass
            self.rtts.append(time.monotonic() - t0)
            await asyncio.sleep(0.02)

    @property
    def worst(self) -> float:
        assert len(self.rtts) > 20, "the probe hardly ran"
        return max(self.rtts)


@pytest.fixture(scope="module")
def attack_server(driver: str) -> Any:
    """A server process whose reply function does to each stream what it asks for (tests/reply_attacks.py)."""
    server = ServerProcess("--handler", "tests.reply_attacks:reply", driver=driver)
    yield server
    server.close()


async def attacker_turn(conv: Conversation, manifest: dict[str, Any], kind: str) -> None:
    """Ask for ``kind`` of reply, then speak a turn (as fast as it goes) and wait for its pause."""
    await conv.send_json({"event": "input", "data": {"kind": kind}})
    name = "dialog_00.flac"
    turn = manifest["files"][name]["turns"][0]
    await conv.send_audio(load_corpus(name)[:turn["end"] + 16000])
    await conv.wait_for(lambda c: c.logs("pause_detected"), 15)


async def test_a_ten_minute_reply_chunk_plays_without_stalling_the_loop(attack_server: Any,
                                                                         manifest: dict) -> None:
    """Ten minutes of audio yielded in one chunk: it plays at once and at real time, converted a slice at
    a time as it plays (no ping waits on the conversion, the server's memory does not grow by the
    chunk's conversion), and a good stream alongside is answered in time."""
    server = attack_server
    await good_turn(server.port, manifest, realtime=False)  # (a first turn allocates what later ones reuse)
    before = peak_rss(server.proc.pid)
    async with PingProbe(server.port) as probe:
        good = asyncio.create_task(good_turn(server.port, manifest))
        async with Conversation(server.url + "/ws", AudioFormat()) as attacker:
            await attacker_turn(attacker, manifest, "huge")
            t0 = time.monotonic()
            await attacker.wait_for(lambda c: c.replies and len(c.replies[-1].audio) >= 2 * 16000 * 2, 15)
            took = time.monotonic() - t0
            await good
            played = attacker.replies[-1]
        worst = probe.worst
    grown = peak_rss(server.proc.pid) - before
    print(f"ten-minute chunk: worst ping {worst * 1000:.1f} ms over {len(probe.rtts)}; peak RSS grew "
          f"{grown / 1e6:.1f} MB; 2 s of it came in {took:.2f} s")
    assert worst < STALL_S, f"a ping waited {worst * 1000:.0f} ms for the loop"
    assert took < 2.0 + 1.0, "the reply did not play at real time"
    pcm = np.frombuffer(bytes(played.audio[:64000]), np.int16).astype(np.float32)
    assert abs(np.sqrt(np.mean(pcm[3200:] ** 2)) - 8000 / np.sqrt(2)) < 300  # the tone, resampled to 16 kHz
    assert grown < 25e6, f"peak RSS grew {grown / 1e6:.1f} MB while the chunk played"


async def test_reply_audio_at_1_hz_is_refused_with_an_error_and_the_stream_goes_on(attack_server: Any,
                                                                                  manifest: dict) -> None:
    """2000 samples "at 1 Hz" (33 minutes once resampled to 16 kHz) are not resampled: the reply ends
    with an error saying which rates are supported, the stream goes on, nothing stalls and memory
    holds still; a good stream alongside is answered in time."""
    server = attack_server
    await good_turn(server.port, manifest, realtime=False)
    before = peak_rss(server.proc.pid)
    async with PingProbe(server.port) as probe:
        good = asyncio.create_task(good_turn(server.port, manifest))
        async with Conversation(server.url + "/ws", AudioFormat()) as attacker:
            await attacker_turn(attacker, manifest, "1hz")
            await attacker.wait_for(lambda c: c.of("event", "mark"), 10)
            (error,) = attacker.of("type", "error")
            assert error["data"] == ("reply audio refused: reply audio at 1 Hz: sample rates from 8000 to 48000 Hz "
                                     "are supported; the reply was stopped")
            assert not any(r.audio for r in attacker.replies)
            await attacker.send_json({"event": "ping"})
            await attacker.wait_for(lambda c: c.of("event", "pong"))
            await attacker_turn(attacker, manifest, "echo")  # and its next turn is answered
            await attacker.wait_for(lambda c: len(c.of("event", "mark")) == 2, 15)
        await good
        worst = probe.worst
    grown = peak_rss(server.proc.pid) - before
    status, _, body = await http(server.port, "GET", "/metrics")
    assert status == 200 and b"wsstream_reply_audio_refused_total 1.0\n" in body
    print(f"1 Hz chunk: worst ping {worst * 1000:.1f} ms; peak RSS grew {grown / 1e6:.1f} MB")
    assert worst < STALL_S, f"a ping waited {worst * 1000:.0f} ms for the loop"
    assert grown < 10e6, f"peak RSS grew {grown / 1e6:.1f} MB"


# ---- issue 13: floods of tiny frames, slow readers on loopback ---------------------------------------

BUDGET = 500.0  # frames per second per connection (half the default of max_messages_per_s: shorter tests)


async def pong_after(client: RawClient, wait_s: float) -> float:
    """Seconds until the server answers the client's {"event": "ping"} (sent now), skipping other frames."""
    t0 = time.monotonic()
    await client.send(client.text(json.dumps({"event": "ping"})))
    while True:
        opcode, payload = await asyncio.wait_for(client.recv(), wait_s)
        if opcode == 0x1 and json.loads(payload).get("event") == "pong":
            return time.monotonic() - t0


async def test_a_flood_of_tiny_frames_goes_at_the_budget_and_good_streams_are_answered_in_time(
        make_server: Any, manifest: dict) -> None:
    """Eight clients each send 200,000 2-byte frames at once (what starved every stream before the budget):
    a good stream alongside is answered in time, and each flooder is served at its budget, no faster:
    a ping behind 2,000 of its frames is answered only once the bucket (500/s, as deep) has let them by."""
    server = await make_server(ReplyOnPause(fn=echo), max_messages_per_s=BUDGET)
    tiny = np.zeros((200_000, 2), np.uint8)
    flooders = [await RawClient.connect(server.port) for _ in range(8)]
    probe = await RawClient.connect(server.port)
    floods = [asyncio.create_task(client.send(client.frames(tiny))) for client in flooders]
    try:
        await asyncio.sleep(0.5)
        good = asyncio.create_task(good_turn(server.port, manifest))
        await probe.send(probe.frames(np.zeros((2000, 2), np.uint8)))
        took = await pong_after(probe, 15)
        await good
    finally:
        for task in floods:
            task.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
        for client in [*flooders, probe]:
            client.reset()  # (a FIN would wait behind what the server has yet to read)
    assert (2000 - BUDGET) / BUDGET - 0.2 < took < 8, f"2,000 frames and a ping took {took:.2f} s"
    assert server.metrics.counters["reads_throttled"] >= 9  # once for each flooder, once for the probe
    await asyncio.wait_for(server.wait_idle(), 5)


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_a_flooder_that_leaves_is_dropped_and_what_it_left_unread_is_not_run(make_server: Any,
                                                                                  how: str) -> None:
    """A client sends 20,000 tiny frames (40 s of work at its budget) and leaves, with a FIN or a reset:
    its stream ends within seconds, not once the server has run all it left unread."""
    server = await make_server(ReplyOnPause(fn=echo), max_messages_per_s=BUDGET)
    client = await RawClient.connect(server.port)
    await client.send(client.frames(np.zeros((20_000, 2), np.uint8)))
    await asyncio.sleep(1.0)
    assert server.active == 1
    assert server.metrics.counters["reads_throttled"] == 1
    t0 = time.monotonic()
    if how == "fin":
        client.sock.shutdown(socket.SHUT_WR)
    else:
        client.reset()
    await asyncio.wait_for(server.wait_idle(), 5)
    client.close()
    assert time.monotonic() - t0 < 3


async def test_a_client_that_never_reads_its_replies_is_closed_within_the_write_stall(
        make_server: Any, manifest: dict) -> None:
    """A client with a 4 KB receive buffer sends a 15 s turn and reads nothing of its echo (480 kB, sent at
    once): without a cap on the server socket's send buffer the kernel took it all (4 MB on loopback) and
    the write stall never began. It is closed 1008 and dropped within write_stall_s and a few seconds;
    a good stream alongside is answered in time."""
    stall_s = 1.0
    server = await make_server(ReplyOnPause(fn=echo), write_stall_s=stall_s,
                               stream=StreamConfig(lead_ms=600000))
    client = await RawClient.connect(server.port, rcvbuf=4096)
    pcm = np.concatenate([speech(manifest, "dialog_03.flac", 15.0), np.zeros(16000, np.int16)])
    good = asyncio.create_task(good_turn(server.port, manifest))
    try:
        frames = pcm[:pcm.size // 320 * 320].view(np.uint8).reshape(-1, 640)
        for i in range(0, len(frames), 100):  # 2 s of audio every 0.25 s (400 frames/s, within the budget)
            await client.send(client.frames(frames[i:i + 100]))
            await asyncio.sleep(0.25)
        t0 = time.monotonic()
        silence = client.frames(np.zeros((1, 640), np.uint8))
        dropped = False
        try:
            while time.monotonic() - t0 < 15:  # silence in real time (keepalive would not drop it)
                await client.send(silence)
                await asyncio.sleep(0.02)
        except OSError:
            dropped = True
        took = time.monotonic() - t0
    finally:
        client.close()
        await good
    assert dropped, "the server kept a client that reads nothing"
    assert took < 2 * stall_s + 4, f"dropped {took:.1f} s after its turn ended"
    assert server.metrics.counters["write_stall_closes"] == 1
    await asyncio.wait_for(server.wait_idle(), 5)
