"""WebSocket framing (RFC 6455) for the server side, sans I/O: bytes in, events out.

The handshake is websockets' (``wsstream.transport``); once a connection is
open, every 20 ms audio frame of every stream goes through here, so this is
the per-message hot path. It is a plain state machine over one buffer, testable
without sockets, and costs a few microseconds per frame: one header parse and
one C unmask (websockets' ``apply_mask``), no coroutines and no futures.
No extensions are negotiated (PCM does not compress), so the RSV bits must be 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
_PLAIN = frozenset({OP_TEXT, OP_BINARY})  # opcodes that need no check beyond the size
FRAME_COST = 16  # bytes each fragment counts against max_size beyond its payload

# Close codes an endpoint may send (RFC 6455 7.4, and the 3000-4999 ranges for applications).
_VALID_CLOSE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


@dataclass(slots=True)
class Message:
    """A whole data message: ``str`` for a text message, ``bytes`` for binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseFrame:
    """The peer's close frame; code 1005 when it carried no status."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol; the connection must be closed with ``code``. Parsing stops."""

    code: int
    reason: str


Event = Message | Ping | Pong | CloseFrame | Violation


class FrameParser:
    """Client-to-server frames to events; messages larger than ``max_size`` bytes are a 1009 violation."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._fragments: bytearray | None = None  # the message being reassembled, if any
        self._fragment_op = 0
        self._fragment_size = 0  # payload plus FRAME_COST per fragment, against max_size
        self.failed = False
        self.frames = 0  # frames the last ``feed`` parsed (what a budget of messages is charged)

    def whole_binary(self, data: bytes) -> bytes | None:
        """The unmasked payload when ``data`` is exactly one whole, final, masked binary frame (no
        RSV bits, a 7- or 16-bit length, within ``max_size``) and nothing is buffered; else None, and
        ``feed`` takes ``data``. One read per 20 ms audio frame is the usual case, and this is its
        shortcut: the same checks as ``feed``, without the event list and the loop."""
        if self._buf or self._fragments is not None or self.failed or len(data) < 6 or data[0] != 0x82:
            return None
        length = data[1] ^ 0x80  # the mask bit must be set: unset, this is >= 128 and fails below
        head = 2
        if length == 126:
            length = data[2] << 8 | data[3]
            head = 4
        elif length > 126:
            return None
        if len(data) != head + 4 + length or length > self.max_size:
            return None
        return apply_mask(data[head + 4:], data[head:head + 4])

    @property
    def buffered(self) -> int:
        """Bytes held for a later ``feed`` (a partial frame, or whole frames past a ``limit``)."""
        return len(self._buf)

    def feed(self, data: bytes, limit: int | None = None) -> list[Event]:
        """The events of the frames in what was buffered plus ``data``; with ``limit``, at most that many
        frames are parsed and the rest stay buffered (``feed(b"", n)`` goes on): a connection's budget
        of messages is enforced here, before any of the cost of a frame is paid."""
        if self.failed:
            self.frames = 0
            return []
        if limit is None:
            limit = 1 << 62
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the usual case: whole frames in one read, parsed without copying them first
        events: list[Event] = []
        pos, end = 0, len(buf)
        frames = 0
        while end - pos >= 2 and frames < limit:
            b0, b1 = buf[pos], buf[pos + 1]
            opcode, length = b0 & 0x0F, b1 & 0x7F
            head = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = buf[pos + 2] << 8 | buf[pos + 3]
                head = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = pos + 10
            if b0 & 0x70 or not b1 & 0x80 or opcode not in _PLAIN or self._fragment_size + length > self.max_size:
                problem = self._check(b0, b1, opcode, length)
                if problem is not None:
                    events.append(problem)
                    self.failed = True
                    break
            start = head + 4
            if end < start + length:
                break
            payload = apply_mask(buf[start:start + length], buf[head:start])
            pos = start + length
            frames += 1
            if opcode == OP_BINARY and b0 & 0x80 and self._fragments is None:
                events.append(Message(payload))  # the hot path: a whole binary message
                continue
            event = self._frame(b0 & 0x80, opcode, payload)
            if event is not None:
                events.append(event)
                if isinstance(event, Violation | CloseFrame):  # nothing may follow either
                    self.failed = True
                    break
        self.frames = frames
        if pos == end:
            self._buf = bytearray()
        elif pos or buf is not self._buf:
            self._buf = bytearray(buf[pos:])
        return events

    def _check(self, b0: int, b1: int, opcode: int, length: int) -> Violation | None:
        if length >> 63:
            return Violation(1002, "frame length has its most significant bit set")
        if b0 & 0x70:
            return Violation(1002, "reserved bits must be 0 (no extension was negotiated)")
        if not b1 & 0x80:
            return Violation(1002, "client frames must be masked")
        if opcode in _CONTROL:
            if length > 125 or not b0 & 0x80:
                return Violation(1002, "control frames must be unfragmented and at most 125 bytes")
        elif opcode not in _DATA:
            return Violation(1002, f"unknown opcode {opcode}")
        elif self._fragment_size + length > self.max_size:
            return Violation(1009, f"message over the {self.max_size}-byte limit")
        return None

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _close(payload)
        if opcode == OP_CONT:
            if self._fragments is None:
                return Violation(1002, "continuation frame without a message to continue")
        elif self._fragments is not None:
            return Violation(1002, "a new message began before the fragmented one ended")
        else:
            if fin:
                return _message(opcode, payload)
            self._fragment_op = opcode
            self._fragments = bytearray()
        self._fragments += payload
        self._fragment_size += len(payload) + FRAME_COST  # so that empty fragments cannot pile up for free
        if not fin:
            return None
        whole = bytes(self._fragments)
        self._fragments, self._fragment_size = None, 0
        return _message(self._fragment_op, whole)


def _message(opcode: int, payload: bytes) -> Message | Violation:
    if opcode == OP_BINARY:
        return Message(payload)
    try:
        return Message(payload.decode())
    except UnicodeDecodeError:
        return Violation(1007, "text message is not valid UTF-8")


def _close(payload: bytes) -> CloseFrame | Violation:
    if not payload:
        return CloseFrame(1005, "")
    if len(payload) == 1:
        return Violation(1002, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        return Violation(1002, f"invalid close code {code}")
    try:
        return CloseFrame(code, payload[2:].decode())
    except UnicodeDecodeError:
        return Violation(1007, "close reason is not valid UTF-8")


def encode(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server-to-client frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload; the reason is cut to fit the 125-byte control frame limit."""
    return struct.pack("!H", code) + _reason_bytes(reason)


def close_reason(reason: str) -> str:
    """``reason`` as a close frame can carry it: at most 123 bytes of UTF-8, cut between characters,
    lone surrogates (from a client's JSON) replaced. For drivers whose library sends the close frame
    (a reason cut by characters can still be too long in bytes, and the library then fails the close)."""
    return _reason_bytes(reason).decode()


def _reason_bytes(reason: str) -> bytes:
    data = reason.encode("utf-8", "replace")[:123]  # (a lone surrogate from a client's JSON becomes "?")
    while True:  # do not cut inside a UTF-8 sequence
        try:
            data.decode()
            return data
        except UnicodeDecodeError:
            data = data[:-1]
