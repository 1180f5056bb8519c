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
    server = await asyncio.to_thread(ServerProcess, "--handler", "tests.handlers:hung", driver=driver)
    try:
        turn = manifest["files"]["dialog_00.flac"]["turns"][0]
        async with Conversation(server.url + "/ws", AudioFormat()) as conv:
            await conv.send_audio(load_corpus("dialog_00.flac")[:turn["end"] + 16000])
            await conv.wait_for(lambda c: c.logs("pause_detected"))  # the reply is now stuck in its thread
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            server.proc.terminate()
            code = await asyncio.to_thread(server.proc.wait, 15)
        assert time.monotonic() - t0 < 8, "SIGTERM waited for the hung reply thread"
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
    server = await make_server(ReplyOnPause(fn=echo), write_stall_s=stall_s)
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
    server = await asyncio.to_thread(ServerProcess, "--lead-ms", "600000", driver=driver)
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
