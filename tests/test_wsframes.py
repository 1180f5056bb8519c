"""The server's WebSocket framing, sans I/O (no sockets), and the transport's protocol duties over real ones."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

import pytest
from conftest import load_corpus
from websockets.asyncio.client import connect
from websockets.speedups import apply_mask

from wsstream.echo import echo
from wsstream.reply import ReplyOnPause
from wsstream.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    CloseFrame,
    FrameParser,
    Message,
    Ping,
    Violation,
    close_payload,
    encode,
)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client-to-server frame as a browser would send it (masked), or deliberately broken."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes((b0, (0x80 if masked else 0) | n))
    elif n < 1 << 16:
        head = bytes((b0, (0x80 if masked else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, (0x80 if masked else 0) | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


def test_whole_binary_shortcut_agrees_with_feed() -> None:
    """The transport's one-read shortcut takes exactly the frames ``feed`` would turn into one binary
    message, and leaves everything else (partial, fragmented, unmasked, RSV, text, control, too
    large, or with bytes already buffered) to ``feed``."""
    for size in (0, 2, 125, 126, 640, 65535):
        payload = os.urandom(size)
        frame = client_frame(OP_BINARY, payload)
        assert FrameParser(1 << 20).whole_binary(frame) == payload
        assert FrameParser(1 << 20).feed(frame) == [Message(payload)]
    audio = os.urandom(640)
    declined = [
        client_frame(OP_BINARY, audio)[:-1],  # partial
        client_frame(OP_BINARY, audio) + client_frame(OP_PING, b""),  # two frames in one read
        client_frame(OP_BINARY, audio, fin=False),  # first fragment
        client_frame(OP_BINARY, audio, masked=False),
        client_frame(OP_BINARY, audio, rsv=0x40),
        client_frame(OP_TEXT, b"{}"),
        client_frame(OP_PING, b"x"),
        client_frame(OP_BINARY, os.urandom(70000)),  # 64-bit length
    ]
    for data in declined:
        assert FrameParser(1 << 20).whole_binary(data) is None
    assert FrameParser(639).whole_binary(client_frame(OP_BINARY, audio)) is None  # over max_size: feed says 1009
    parser = FrameParser(1 << 20)
    assert parser.feed(client_frame(OP_BINARY, audio)[:5]) == []
    assert parser.whole_binary(client_frame(OP_BINARY, audio)) is None  # a frame is half read


def test_binary_text_and_control_frames_in_any_split() -> None:
    audio = os.urandom(640)
    stream = (client_frame(OP_BINARY, audio) + client_frame(OP_TEXT, "héllo".encode())
              + client_frame(OP_PING, b"p") + client_frame(OP_CLOSE, close_payload(1000, "bye")))
    expected = [Message(audio), Message("héllo"), Ping(b"p"), CloseFrame(1000, "bye")]
    for cut in (1, 2, 3, 7, 100, 645, 646, 647, len(stream)):  # byte-by-byte up to all at once
        parser = FrameParser(1 << 20)
        events = []
        for i in range(0, len(stream), cut):
            events += parser.feed(stream[i:i + cut])
        assert events == expected, cut


def test_fragmented_message_is_reassembled_with_control_frames_between() -> None:
    parser = FrameParser(1 << 20)
    data = (client_frame(OP_TEXT, b'{"event":', fin=False) + client_frame(OP_PING, b"")
            + client_frame(OP_CONT, b' "ping"}', fin=True))
    assert parser.feed(data) == [Ping(b""), Message('{"event": "ping"}')]


def test_long_frames_use_extended_lengths() -> None:
    big = os.urandom(70000)  # 64-bit length
    mid = os.urandom(300)  # 16-bit length
    assert FrameParser(1 << 20).feed(client_frame(OP_BINARY, big) + client_frame(OP_BINARY, mid)) == \
        [Message(big), Message(mid)]
    assert encode(OP_BINARY, big)[:10] == bytes((0x82, 127)) + struct.pack("!Q", 70000)
    assert encode(OP_TEXT, mid)[:4] == bytes((0x81, 126)) + struct.pack("!H", 300)


@pytest.mark.parametrize(("frame", "code"), [
    (client_frame(OP_BINARY, b"x", masked=False), 1002),  # clients must mask
    (client_frame(OP_BINARY, b"x", rsv=0x40), 1002),  # no extension was negotiated
    (client_frame(0x3, b"x"), 1002),  # reserved opcode
    (client_frame(OP_PING, b"x" * 126), 1002),  # control frame too long
    (client_frame(OP_PING, b"x", fin=False), 1002),  # fragmented control frame
    (client_frame(OP_CONT, b"x"), 1002),  # nothing to continue
    (client_frame(OP_TEXT, b"\xff\xfe"), 1007),  # not UTF-8
    (client_frame(OP_CLOSE, b"\x03"), 1002),  # 1-byte close payload
    (client_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),  # a code no one may send
    (client_frame(OP_BINARY, b"x" * 2000), 1009),  # over max_size (1000 here)
], ids=["unmasked", "rsv", "reserved-opcode", "long-control", "fragmented-control", "lone-continuation",
        "bad-utf8", "short-close", "close-1005", "too-big"])  # (fixed ids: the frames' masks are random)
def test_violations_stop_the_parser_with_the_right_close_code(frame: bytes, code: int) -> None:
    parser = FrameParser(1000)
    events = parser.feed(frame + client_frame(OP_BINARY, b"after"))
    assert len(events) == 1 and isinstance(events[0], Violation) and events[0].code == code, events
    assert parser.feed(client_frame(OP_BINARY, b"more")) == []  # a failed connection parses nothing more


def test_oversized_fragmented_message_is_refused_before_it_is_buffered() -> None:
    parser = FrameParser(1000)
    events = parser.feed(client_frame(OP_BINARY, b"x" * 600, fin=False) + client_frame(OP_CONT, b"x" * 600)[:20])
    assert events == [Violation(1009, "message over the 1000-byte limit")]


def test_close_payload_fits_a_control_frame_and_keeps_utf8_whole() -> None:
    payload = close_payload(1008, "é" * 100)
    assert len(payload) <= 125 and struct.unpack("!H", payload[:2])[0] == 1008
    payload[2:].decode()  # cut between characters, never inside one


# ---- over real sockets -----------------------------------------------------------

async def raw_open(port: int, path: str = "/ws") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    assert not b1 & 0x80, "server frames are never masked"
    return b0 & 0x0F, await reader.readexactly(n)


async def test_ping_is_answered_and_a_peer_close_is_echoed(make_server: Any) -> None:
    server = await make_server(ReplyOnPause(fn=echo))
    reader, writer = await raw_open(server.port)
    writer.write(client_frame(OP_PING, b"are you there"))
    assert await read_frame(reader) == (0xA, b"are you there")
    writer.write(client_frame(OP_TEXT, b'{"event": "ping"}', fin=False) + client_frame(OP_CONT, b""))
    op, data = await read_frame(reader)
    assert op == OP_TEXT and json.loads(data) == {"event": "pong"}
    writer.write(client_frame(OP_CLOSE, close_payload(1000, "done")))
    op, data = await read_frame(reader)
    assert op == OP_CLOSE and struct.unpack("!H", data[:2])[0] == 1000
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server ends the TCP connection
    writer.close()
    await asyncio.wait_for(server.wait_idle(), 3)


async def test_protocol_violation_fails_only_that_connection(make_server: Any, manifest: dict) -> None:
    server = await make_server(ReplyOnPause(fn=echo))
    turn = manifest["files"]["dialog_04.flac"]["turns"][0]
    audio = load_corpus("dialog_04.flac")[: turn["end"] + 16000].tobytes()
    async with connect(f"ws://127.0.0.1:{server.port}/ws", compression=None) as good:
        reader, writer = await raw_open(server.port)
        writer.write(client_frame(OP_BINARY, b"\x00" * 640, masked=False))
        op, data = await read_frame(reader)
        assert op == OP_CLOSE and struct.unpack("!H", data[:2])[0] == 1002
        assert b"masked" in data
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        for i in range(0, len(audio), 640):
            await good.send(audio[i:i + 640])
        logs = []
        while "pause_detected" not in logs:
            msg = await asyncio.wait_for(good.recv(), 10)
            if isinstance(msg, str):
                logs.append(json.loads(msg).get("data"))
        assert "error" not in logs


async def test_silent_peer_is_dropped_by_keepalive(make_server: Any) -> None:
    server = await make_server(ReplyOnPause(fn=echo), ping_interval_s=0.2)
    reader, writer = await raw_open(server.port)
    pings = 0
    while True:  # we never answer: after three silent intervals the server gives up on us
        try:
            op, _ = await asyncio.wait_for(read_frame(reader), 3)
        except asyncio.IncompleteReadError:
            break
        pings += op == OP_PING
    assert pings >= 2
    writer.close()
    await asyncio.wait_for(server.wait_idle(), 3)


async def test_a_client_faster_than_inference_is_paused_and_loses_nothing(make_server: Any, manifest: dict) -> None:
    """25 s of audio sent at once: the transport stops reading while the VAD buffer is full (TCP
    pushes back on the client), resumes as inference catches up, and every sample and turn arrives."""
    server = await make_server(ReplyOnPause(fn=echo))
    name = "dialog_02.flac"
    audio = load_corpus(name).tobytes()
    async with connect(f"ws://127.0.0.1:{server.port}/ws", compression=None, max_queue=None) as ws:
        for i in range(0, len(audio), 640):
            await ws.send(audio[i:i + 640])
        await ws.send(json.dumps({"event": "stop"}))  # end the last turn, then close
        pauses = 0
        try:
            while True:
                msg = await asyncio.wait_for(ws.recv(), 30)
                pauses += isinstance(msg, str) and json.loads(msg).get("data") == "pause_detected"
        except Exception:  # the server closes after the stop
            pass
    await asyncio.wait_for(server.wait_idle(), 5)
    assert server.metrics.counters["input_waits"] > 0  # backpressure really engaged
    assert server.metrics.counters["audio_samples_in"] == len(audio) // 2
    assert pauses == len(manifest["files"][name]["turns"])


def test_fragment_flood_is_bounded_and_nothing_follows_a_close() -> None:
    parser = FrameParser(1000)
    events = parser.feed(client_frame(OP_BINARY, b"", fin=False) + client_frame(OP_CONT, b"", fin=False) * 200)
    assert events == [Violation(1009, "message over the 1000-byte limit")]  # empty fragments are not free
    parser = FrameParser(1000)
    huge = bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 63) + b"mask"
    assert parser.feed(huge)[0].code == 1002
    parser = FrameParser(1000)
    events = parser.feed(client_frame(OP_CLOSE, close_payload(1000)) + client_frame(OP_BINARY, b"late"))
    assert events == [CloseFrame(1000, "")]


async def test_server_close_while_a_stream_is_paused_completes_promptly(make_server: Any) -> None:
    """aclose (1001) reaches a connection whose reading is paused for backpressure, and its
    close frame is read: the closing handshake does not wait out the 5 s timeout."""
    server = await make_server(ReplyOnPause(fn=echo))
    reader, writer = await raw_open(server.port)
    noise = load_corpus("dialog_01.flac")[:16000 * 20].tobytes()
    writer.write(b"".join(client_frame(OP_BINARY, noise[i:i + 640]) for i in range(0, len(noise), 640)))
    for _ in range(100):  # until the transport has paused this stream
        if any(c.paused for c in server.connections):
            break
        await asyncio.sleep(0.02)
    assert any(c.paused for c in server.connections)

    async def answer_close() -> None:
        while True:
            op, _ = await read_frame(reader)
            if op == OP_CLOSE:
                writer.write(client_frame(OP_CLOSE, close_payload(1001)))
                return

    answering = asyncio.create_task(answer_close())
    started = asyncio.get_running_loop().time()
    await server.aclose()
    assert asyncio.get_running_loop().time() - started < 3.0
    await asyncio.wait_for(answering, 1)
    writer.close()
