"""Property-based tests: whatever a client sends, the frame parser and every dialect give a defined outcome.

The server meets scanners, fuzzers and broken bridges. Hand-written cases cover the faults we
thought of; these cover the ones we did not: arbitrary bytes through the RFC 6455 frame parser,
arbitrary text, bytes and JSON values (nested, huge or non-finite numbers, lone surrogates, deep
nesting) through each dialect's ``setup``/``parse``, then on through a real ``StreamCore`` and back
out through ``serialize``. The outcome must always be one of the defined ones: events, or a
``ProtocolError`` / ``Violation`` whose close code is valid and whose reason fits a close frame;
never another exception escaping into the driver (which would drop the connection with no close).

Hypothesis runs derandomized (the same examples every run, so CI is deterministic) with modest
example counts, so the file runs in seconds.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import math
import struct
import types
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.speedups import apply_mask

from vad.engine import VadStream
from wsstream.config import StreamConfig
from wsstream.core import StreamCore
from wsstream.dialects import DIALECTS, ProtocolError
from wsstream.dialects.base import Dialect, StreamSetup, load_json_object
from wsstream.echo import echo
from wsstream.events import (
    AudioIn,
    AudioOut,
    Clear,
    Close,
    Dtmf,
    Error,
    FetchOutput,
    Log,
    Mark,
    MarkPlayed,
    Notice,
    Ping,
    Pong,
    Refused,
    SetInputs,
    Start,
    Stop,
    StopWord,
    Trigger,
    VadTrace,
    Warning,
)
from wsstream.reply import ReplyOnPause
from wsstream.runner import write_message
from wsstream.wsframes import (
    _VALID_CLOSE,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseFrame,
    FrameParser,
    Message,
    Violation,
    close_payload,
    close_reason,
    encode,
)
from wsstream.wsframes import Ping as PingFrame
from wsstream.wsframes import Pong as PongFrame

# deterministic (derandomize), no per-example deadline (a shared CI machine stalls now and then), modest counts
PROFILE = settings(derandomize=True, deadline=None, max_examples=150, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(PROFILE, max_examples=70)  # (the dialect tests run once per dialect: eight times)

IN_EVENTS = (AudioIn, Start, SetInputs, Trigger, MarkPlayed, Ping, Stop, Dtmf, Notice)
FRAME_EVENTS = (Message, PingFrame, PongFrame, CloseFrame, Violation)
MAX_REASON = 120  # what the drivers cut a ProtocolError's text to for the close reason


def valid_close_code(code: int) -> bool:
    return code in _VALID_CLOSE or 3000 <= code <= 4999


def assert_closable(code: int, reason: str) -> None:
    """A close the drivers can send: a code a close frame may carry, and a reason that fits one."""
    assert valid_close_code(code), code
    payload = close_payload(code, reason[:MAX_REASON])
    assert len(payload) <= 125
    payload[2:].decode("utf-8")  # strict: what the peer receives is valid UTF-8


# ---- the frame parser --------------------------------------------------------------------------------


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A masked client-to-server frame, the shortest length encoding."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    return head + mask + apply_mask(payload, mask)


def feed_in_pieces(parser: FrameParser, data: bytes, cuts: list[int]) -> list[Any]:
    events: list[Any] = []
    start = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        events += parser.feed(data[start:cut])
        start = cut
    return events


def check_frame_events(events: list[Any], max_size: int) -> None:
    for i, event in enumerate(events):
        assert isinstance(event, FRAME_EVENTS), event
        if isinstance(event, Violation):
            assert event.code in (1002, 1007, 1009), event
            assert_closable(event.code, event.reason)
        if isinstance(event, CloseFrame):
            assert event.code == 1005 or valid_close_code(event.code)
        if isinstance(event, Violation | CloseFrame):
            assert i == len(events) - 1, "nothing may follow a violation or the peer's close"
        if isinstance(event, Message):
            assert isinstance(event.data, str | bytes)
            data = event.data if isinstance(event.data, bytes) else event.data.encode()
            assert len(data) <= max_size
        if isinstance(event, PingFrame | PongFrame):
            assert len(event.payload) <= 125


@PROFILE
@given(data=st.binary(max_size=2048), cuts=st.lists(st.integers(0, 2048), max_size=8),
       max_size=st.sampled_from([0, 1, 125, 126, 1000, 1 << 16, 1 << 20]))
def test_any_bytes_give_defined_frame_events_however_they_are_split(data: bytes, cuts: list[int],
                                                                   max_size: int) -> None:
    """Any bytes, in any number of reads: only defined events, nothing after a close or violation, the
    same events whatever the split (TCP gives no message boundaries), and the shortcut agrees."""
    whole = FrameParser(max_size).feed(data)
    check_frame_events(whole, max_size)
    assert feed_in_pieces(FrameParser(max_size), data, cuts) == whole
    parser = FrameParser(max_size)
    payload = parser.whole_binary(data)
    if payload is not None:
        assert whole == [Message(payload)]
    if whole and isinstance(whole[-1], Violation | CloseFrame):
        parser.feed(data)
        assert parser.feed(b"\x82\x80abcd") == []  # a failed parser stays silent


def frame_noise() -> st.SearchStrategy[bytes]:
    """Mostly well-formed masked frames, some broken in one field: to get past the first header."""
    opcodes = st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 0x3, 0x7, 0xB, 0xF])
    good = st.builds(lambda op, payload, fin, mask: client_frame(op, payload, fin=fin, mask=mask),
                     opcodes, st.binary(max_size=300), st.booleans(), st.binary(min_size=4, max_size=4))
    text = st.builds(lambda s, fin: client_frame(OP_TEXT, s.encode("utf-8", "surrogatepass"), fin=fin),
                     st.text(st.characters(exclude_categories=()), max_size=60), st.booleans())
    close = st.builds(lambda code, reason: client_frame(OP_CLOSE, struct.pack("!H", code) + reason),
                      st.integers(0, 65535), st.binary(max_size=40))
    flipped = st.builds(lambda frame, i, bit: frame[:i] + bytes((frame[i % len(frame)] ^ (1 << bit),))
                        + frame[i + 1:] if frame else frame, good, st.integers(0, 12), st.integers(0, 7))
    return st.one_of(good, text, close, flipped, st.binary(max_size=16))


@PROFILE
@given(frames=st.lists(frame_noise(), max_size=12), cuts=st.lists(st.integers(0, 4096), max_size=6),
       max_size=st.sampled_from([64, 1000, 1 << 20]))
def test_frame_sequences_give_defined_events(frames: list[bytes], cuts: list[int], max_size: int) -> None:
    """Sequences of plausible frames (fragments, control frames in between, bad opcodes, bad close
    codes, invalid UTF-8, flipped bits) reach the parser's deeper states; still only defined events."""
    data = b"".join(frames)
    whole = FrameParser(max_size).feed(data)
    check_frame_events(whole, max_size)
    assert feed_in_pieces(FrameParser(max_size), data, cuts) == whole


@st.composite
def fragmented_messages(draw: st.DrawFn) -> tuple[list[str | bytes], bytes]:
    """Valid messages, each cut into fragments, with pings and pongs between them: the wire bytes."""
    messages: list[str | bytes] = draw(st.lists(st.one_of(st.binary(max_size=700), st.text(max_size=200)),
                                                max_size=6))
    wire = bytearray()
    for message in messages:
        payload = message.encode() if isinstance(message, str) else message
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            op = (OP_TEXT if isinstance(message, str) else OP_BINARY) if i == 0 else OP_CONT
            mask = draw(st.binary(min_size=4, max_size=4))
            wire += client_frame(op, piece, fin=i == len(pieces) - 1, mask=mask)
            if draw(st.booleans()):
                wire += client_frame(draw(st.sampled_from([OP_PING, OP_PONG])), draw(st.binary(max_size=125)))
    return messages, bytes(wire)


@PROFILE
@given(case=fragmented_messages(), cuts=st.lists(st.integers(0, 6000), max_size=8))
def test_valid_fragmented_messages_come_out_whole(case: tuple[list[str | bytes], bytes], cuts: list[int]) -> None:
    """Any split of any valid fragmentation gives back exactly the messages sent, in order."""
    messages, wire = case
    events = feed_in_pieces(FrameParser(1 << 20), wire, cuts)
    assert [e.data for e in events if isinstance(e, Message)] == messages
    assert not any(isinstance(e, Violation | CloseFrame) for e in events)


@PROFILE
@given(code=st.sampled_from(sorted(_VALID_CLOSE)), reason=st.text(st.characters(exclude_categories=()),
                                                                   max_size=200))
def test_close_payload_always_fits_and_is_utf8(code: int, reason: str) -> None:
    """Any reason, lone surrogates and 4-byte characters included, makes a close frame a client
    accepts: at most 125 bytes, valid UTF-8, and our own parser reads it back."""
    payload = close_payload(code, reason)
    assert len(payload) <= 125
    assert payload[:2] == struct.pack("!H", code)
    text = payload[2:].decode("utf-8")
    (event,) = FrameParser(1000).feed(client_frame(OP_CLOSE, payload))
    assert event == CloseFrame(code, text)


@PROFILE
@given(reason=st.text(st.characters(exclude_categories=()), max_size=300))
def test_close_reason_fits_in_bytes_not_only_in_characters(reason: str) -> None:
    """120 characters can be 480 bytes: the reason a driver hands its library must be cut in bytes, on a
    character boundary, and be the start of what was meant (surrogates replaced)."""
    text = close_reason(reason)
    assert len(text.encode("utf-8")) <= 123
    assert reason.encode("utf-8", "replace").decode().startswith(text)
    assert close_payload(1003, reason)[2:] == text.encode()


@PROFILE
@given(payload=st.binary(max_size=70_000), op=st.sampled_from([OP_TEXT, OP_BINARY, OP_PING]))
def test_server_frames_round_trip(payload: bytes, op: int) -> None:
    """What ``encode`` writes is a frame of the right length (read back by masking it as a client would)."""
    frame = encode(op, payload)
    n = len(payload)
    head = 2 if n < 126 else 4 if n < 1 << 16 else 10
    assert len(frame) == head + n and frame[0] == 0x80 | op
    masked = bytes((frame[0], frame[1] | 0x80)) + frame[2:head] + b"\0\0\0\0" + frame[head:]
    events = FrameParser(1 << 17).feed(masked)
    if op == OP_PING:  # (a ping over 125 bytes is no frame a peer may send: ours never are)
        assert events == [PingFrame(payload) if n <= 125 else
                          Violation(1002, "control frames must be unfragmented and at most 125 bytes")]
    elif op == OP_TEXT:
        try:
            assert events == [Message(payload.decode())]
        except UnicodeDecodeError:
            assert events == [Violation(1007, "text message is not valid UTF-8")]
    else:
        assert events == [Message(payload)]


# ---- JSON values and messages -------------------------------------------------------------------------


class Raw(str):
    """A token put into the JSON text as it is (numbers Python's json reads but cannot write)."""


RAW_NUMBERS = ["1e999", "-1e999", "Infinity", "-Infinity", "NaN", "1" * 5000, "-0", "1E400", "0.0",
               "123456789012345678901234567890", "4294967296", "-1", "1e-400", "8000.0", "16000", "1e9"]
# the field names the dialects read, so that generated objects reach their code and not only the fallbacks
FIELDS = ["event", "media", "payload", "track", "chunk", "timestamp", "start", "stop", "streamSid", "callSid",
          "accountSid", "tracks", "mediaFormat", "encoding", "sampleRate", "channels", "customParameters", "mark",
          "name", "dtmf", "digit", "duration", "protocol", "version", "stream_id", "call_control_id",
          "call_session_id", "client_state", "custom_parameters", "media_format", "sample_rate", "connected",
          "x-telnyx-streaming-auth-token", "streamId", "callId", "accountId", "extra_headers", "stream_sid",
          "call_sid", "account_sid", "reason", "content-type", "uuid", "headers", "format", "output_format",
          "media_as", "inputs", "debug", "id", "data", "websocket_id", "type", "sequence_number", "bit_rate",
          "from", "to", "tags", "user_id", "code", "title", "detail"]
EVENTS = ["media", "start", "stop", "mark", "dtmf", "connected", "input", "trigger", "ping", "error",
          "playedStream", "played", "clearedAudio", "clear", "silence", "websocket:connected", "websocket:dtmf",
          "websocket:notify", "websocket:cleared", "pong", "", "MEDIA"]
STRINGS = ["audio/x-mulaw", "audio/x-alaw", "audio/x-l16", "audio/x-l16;rate=16000", "audio/x-raw", "raw",
           "audio/l16;rate=16000", "audio/l16;rate=8000", "audio/l16;rate=1e999", "audio/l16;rate=",
           "audio/L16;rate=24000;foo", "PCMU", "PCMA", "L16", "G722", "OPUS", "inbound", "outbound",
           "inbound_track", "both_tracks", "pcm16", "mulaw", "alaw", "float32", "binary", "json", "8000",
           "16000", "24000", "48000", "1e999", "nan", "inf", "-1", "0", "1", "#", "*", "A", "12", "MZ123",
           "k=v;k2=v2", "{\"a\": 1}", "{X-PH-k: v}", "{", "\ud800", "\udfff", "\x00", "é" * 50, "𝄞" * 40]


def json_leaves() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(st.characters(exclude_categories=()), max_size=30),
        st.sampled_from(STRINGS),
        st.sampled_from(RAW_NUMBERS).map(Raw),
        st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    )


def json_values(keys: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    keys = keys if keys is not None else st.one_of(st.sampled_from(FIELDS),
                                                   st.text(st.characters(exclude_categories=()), max_size=12))
    return st.recursive(json_leaves(), lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=6)), max_leaves=25)


def to_json(value: Any) -> str:
    """JSON text of ``value``, with ``Raw`` tokens as they are and lone surrogates as ``\\ud800`` escapes."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


# built once: making strategies is most of hypothesis's cost here
LEAVES = json_leaves()
JSON = json_values()
SMALL_OBJECTS = st.dictionaries(st.sampled_from(FIELDS), st.one_of(LEAVES, st.lists(LEAVES, max_size=2)),
                                max_size=4)


@st.composite
def shaped_messages(draw: st.DrawFn) -> str:
    """A JSON object with a known ``event`` and known field names, nested, with odd values: the messages
    that get furthest into a dialect's parsing."""
    msg = draw(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4))
    if draw(st.integers(0, 9)):
        msg["event"] = draw(st.sampled_from(EVENTS))
    for key in ("media", "start", "mark", "dtmf", "mediaFormat", "media_format", "stop", "connected",
                "payload", "format"):
        if draw(st.integers(0, 3)) == 0:
            msg[key] = draw(SMALL_OBJECTS)
    return to_json(msg)


def deep(n: int, kind: str) -> str:
    if kind == "list":
        return "[" * n + "]" * n
    if kind == "dict":
        return '{"a":' * n + "1" + "}" * n
    return '{"event":"input","data":' + "[" * n + "]" * n + "}"


def _wire_messages() -> st.SearchStrategy[str | bytes]:
    """What a client may send in one WebSocket message: text (JSON or not) or binary."""
    return st.one_of(
        shaped_messages(),
        JSON.map(to_json),
        st.text(st.characters(exclude_categories=()), max_size=80),
        st.binary(max_size=400),
        st.builds(deep, st.sampled_from([10, 500, 1100, 5000, 100_000]), st.sampled_from(["list", "dict", "input"])),
    )


PAYLOAD = base64.b64encode(bytes(range(160))).decode()
# every message each dialect takes, with its optional fields filled in: the seeds mutated below
TWILIO = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
     "start": {"streamSid": "MZ1", "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
               "customParameters": {"tenant": "t1"}}},
    {"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": "2", "timestamp": "5",
                                                     "payload": PAYLOAD}},
    {"event": "mark", "streamSid": "MZ1", "mark": {"name": "r1"}},
    {"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": "1"}},
    {"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}},
]
TEMPLATES: dict[str, list[dict[str, Any]]] = {
    "/ws": [
        {"event": "start", "id": "c1", "format": {"encoding": "pcm16", "sample_rate": 16000, "channels": 1},
         "output_format": {"encoding": "mulaw", "sample_rate": 8000}, "media_as": "json",
         "inputs": {"voice": "a"}, "debug": True},
        {"event": "media", "media": {"payload": PAYLOAD}},
        {"event": "input", "data": {"k": [1, 2]}},
        {"event": "trigger"}, {"event": "mark", "mark": {"name": "r1"}}, {"event": "ping"}, {"event": "stop"},
    ],
    "/websocket/offer": [
        {"event": "start", "websocket_id": "w1"}, {"event": "media", "media": {"payload": PAYLOAD}},
        {"event": "ping"}, {"event": "stop"},
    ],
    "/telephone/handler": TWILIO,
    "/telephone/telnyx": [
        {"event": "connected", "version": "1.0.0", "connected": {"x-telnyx-streaming-auth-token": "tok"}},
        {"event": "start", "sequence_number": "1", "stream_id": "s1",
         "start": {"user_id": "u1", "call_control_id": "v3:c1", "call_session_id": "cs1", "from": "+1",
                   "to": "+2", "tags": ["a"], "client_state": base64.b64encode(b"state").decode(),
                   "custom_parameters": [{"name": "k", "value": "v"}],
                   "media_format": {"encoding": "L16", "sample_rate": 16000, "channels": 1}}},
        {"event": "media", "stream_id": "s1", "media": {"track": "inbound", "chunk": "2", "timestamp": "5",
                                                        "payload": PAYLOAD}},
        {"event": "mark", "mark": {"name": "r1"}},
        {"event": "dtmf", "dtmf": {"digit": "1"}, "occurred_at": "now"},
        {"event": "error", "payload": {"code": 100003, "title": "malformed_frame", "detail": "x"}},
        {"event": "stop", "stop": {"call_control_id": "v3:c1"}},
    ],
    "/telephone/plivo": [
        {"event": "start", "sequenceNumber": 1, "extra_headers": "k=v;k2=v2",
         "start": {"callId": "c1", "streamId": "s1", "accountId": "MA1", "tracks": ["inbound"],
                   "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}}},
        {"event": "media", "media": {"track": "inbound", "chunk": 2, "timestamp": "5", "payload": PAYLOAD}},
        {"event": "playedStream", "name": "r1"}, {"event": "dtmf", "dtmf": {"digit": "5"}},
        {"event": "clearedAudio"}, {"event": "stop"},
    ],
    "/telephone/exotel": [
        {"event": "connected", "custom_parameters": {"tenant": "t1"}},
        {"event": "start", "sequence_number": "1", "stream_sid": "s1",
         "start": {"stream_sid": "s1", "call_sid": "c1", "account_sid": "a1", "from": "1", "to": "2",
                   "custom_parameters": {"k": "v"},
                   "media_format": {"encoding": "audio/x-raw", "sample_rate": "16000", "bit_rate": "128kbps"}}},
        {"event": "media", "sequence_number": "2", "stream_sid": "s1",
         "media": {"chunk": "1", "timestamp": "5", "payload": PAYLOAD}},
        {"event": "dtmf", "stream_sid": "s1", "dtmf": {"digit": "1", "duration": "100"}},
        {"event": "mark", "stream_sid": "s1", "mark": {"name": "r1"}},
        {"event": "stop", "stream_sid": "s1", "stop": {"call_sid": "c1", "reason": "callended"}},
    ],
    "/telephone/vonage": [
        {"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "uuid": "u1",
         "headers": {"a": 1}},
        {"event": "websocket:dtmf", "digit": "1", "duration": 100},
        {"event": "websocket:notify", "payload": {"mark": "r1"}}, {"event": "websocket:cleared"},
    ],
}
TEMPLATES["/telephony"] = [m for path in ("/telephone/handler", "/telephone/telnyx", "/telephone/plivo",
                                          "/telephone/exotel", "/telephone/vonage") for m in TEMPLATES[path]]


WIRE_MESSAGES = _wire_messages()


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: keys of objects and indexes of lists, depth first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*prefix, i))
    return found


def _odd_values() -> st.SearchStrategy[Any]:
    """What replaces a field: mostly the values that break code (non-finite, huge, wrong type, surrogates),
    alone or one level down in a list or an object."""
    leaf = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, None, True, False, 0, -1, 10**30, 1e300,
                                      "", "\ud800", [], {}]),
                     st.sampled_from(RAW_NUMBERS).map(Raw), LEAVES)
    return st.one_of(leaf, st.lists(leaf, max_size=3), st.dictionaries(st.sampled_from(FIELDS), leaf, max_size=3),
                     st.builds(lambda n: Raw("[" * n + "]" * n), st.sampled_from([50, 900, 3000])))


ODD_VALUES = _odd_values()


def mutated(template: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """A copy of ``template`` with one to three places replaced by odd values, removed, or given new keys."""
    msg = copy.deepcopy(template)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(msg)[1:] or [()]))
        if not where:
            break
        parent = msg
        for step in where[:-1]:
            parent = parent[step]
        key, action = where[-1], data.draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "remove" and isinstance(parent, dict):
            del parent[key]
        elif action == "add" and isinstance(parent.get(key) if isinstance(parent, dict) else None, dict):
            parent[key][data.draw(st.sampled_from(FIELDS))] = data.draw(ODD_VALUES)
        else:
            parent[key] = data.draw(ODD_VALUES)
    return msg


QUERIES = st.one_of(
    st.just(""),
    st.text(max_size=60),
    st.lists(st.tuples(st.sampled_from(["encoding", "sample_rate", "channels", "sample-rate",
                                        "stream_bidirectional_codec", "bidirectionalCodec",
                                        "stream_bidirectional_sampling_rate", "bidirectionalSamplingRate",
                                        "token", "x"]),
                       st.one_of(st.sampled_from(STRINGS + RAW_NUMBERS[:8]), st.text(max_size=10))),
             max_size=4).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
    st.sampled_from(["sample_rate=%ED%A0%80", "encoding=%FF%FE", "sample-rate=16000", "sample_rate=" + "9" * 5000]),
)


# ---- each dialect, alone and with a core behind it ---------------------------------------------------


def answer(audio: Any, *args: Any) -> None:
    """The app's reply function (never called: no reply runs in these tests)."""


APP = ReplyOnPause(answer)
ENGINE = types.SimpleNamespace(_closing=[])  # a VadStream without a model only cuts windows


def check_parse(dialect: Dialect, message: str | bytes) -> list[Any] | None:
    """One message as the drivers read it (``read_message``): the events, or None for a ProtocolError
    (which must make a sendable close)."""
    try:
        if dialect.binary_audio and type(message) is bytes:
            data = dialect.audio(message)  # (outside the drivers' ProtocolError handling: must not raise)
            assert isinstance(data, bytes)
            return [AudioIn(data)]
        events = dialect.parse(message)
    except ProtocolError as exc:
        assert isinstance(exc.fatal, bool)
        assert_closable(exc.code, str(exc))
        return None
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, IN_EVENTS), event
        if isinstance(event, AudioIn):
            assert isinstance(event.data, bytes)
        if isinstance(event, MarkPlayed):
            assert isinstance(event.name, str)
        if isinstance(event, Dtmf):
            assert isinstance(event.digit, str) and event.digit
        if isinstance(event, Notice):
            assert isinstance(event.message, str) and isinstance(event.level, int)
        if isinstance(event, Start):
            assert event.client_id is None or isinstance(event.client_id, str)
            assert isinstance(event.context, dict)
            assert event.frame_ms is None or (isinstance(event.frame_ms, float | int) and event.frame_ms > 0)
    return events


def open_dialect(cls: type[Dialect], query: str) -> tuple[Dialect, StreamSetup] | None:
    dialect = cls()
    try:
        setup = dialect.setup(query, APP, StreamConfig(echo_gate=False))
    except ProtocolError as exc:  # a bad query refuses the upgrade with a close the driver can send
        assert_closable(exc.code, str(exc))
        return None
    assert isinstance(setup, StreamSetup)
    return dialect, setup


def wire_out(dialect: Dialect, event: Any) -> None:
    """What a driver would send for ``event``: None (logged instead), bytes, or text it can encode."""
    message = write_message(None, dialect, event)
    assert message is None or isinstance(message, str | bytes)
    if isinstance(message, str):
        message.encode("utf-8")  # strict, as the transport encodes it


DIALECT_CLASSES = sorted(DIALECTS.values(), key=lambda c: c.path)
IDS = [c.path for c in DIALECT_CLASSES]
OUT_EVENT_TYPES = (Log, VadTrace, AudioOut, Mark, Clear, FetchOutput, Error, Warning, Pong, Close, Refused,
                   StopWord)

OUT_EVENTS = st.one_of(
    st.builds(Log, st.sampled_from(["started_talking", "pause_detected"]),
              st.dictionaries(st.text(max_size=8), JSON, max_size=3)),
    st.builds(VadTrace, st.lists(st.floats(0, 1), max_size=4), st.floats(0, 1e6)),
    st.builds(AudioOut, st.binary(max_size=320)),
    st.builds(Mark, st.text(st.characters(exclude_categories=()), max_size=20)),
    st.just(Clear()),
    st.builds(FetchOutput, st.lists(JSON, max_size=3)),
    st.builds(Error, st.text(st.characters(exclude_categories=()), max_size=200)),
    st.builds(Warning, st.text(st.characters(exclude_categories=()), max_size=50)),
    st.just(Pong()),
    st.builds(Close, st.sampled_from([1000, 1003, 1008]), st.text(max_size=20)),
    st.builds(Refused, st.just("concurrency_limit_reached"), st.integers(0, 10_000)),
    st.builds(StopWord, st.text(max_size=20)),
)


def opening(cls: type[Dialect]) -> str:
    """A valid first message of the dialect, so that what follows meets a started stream."""
    if cls.path == "/telephony":
        return json.dumps(TWILIO[1])
    return json.dumps(next(m for m in TEMPLATES[cls.path] if m["event"] in ("start", "websocket:connected")))


def through_core(cls: type[Dialect], messages: list[str | bytes], query: str = "",
                 extra: tuple[Any, ...] = ()) -> None:
    """As a driver would: the dialect set up from ``query``, each message parsed, its events given to a
    real StreamCore, what the core says back (and ``extra``, anything it could say) serialized. Every step
    must give a defined outcome."""
    opened = open_dialect(cls, query)
    if opened is None:
        return
    dialect, setup = opened
    core = StreamCore(APP, lambda rate: VadStream(ENGINE, rate, 4.0), stream_id="p1", dialect=dialect.name,
                      input_format=setup.input_format, output_format=setup.output_format, config=setup.config)
    now = 0.0
    for message in messages:
        events = check_parse(dialect, message)
        if events is None:
            wire_out(dialect, Error("protocol error"))
            continue
        for event in events:
            now += 0.02
            core.receive(event, now)
        core.vad.take_windows()  # (the inference worker's part, so the VAD buffer never fills)
        core.poll(now)
        for out in core.take_events():
            if isinstance(out, OUT_EVENT_TYPES):
                wire_out(dialect, out)
                if isinstance(out, Close):
                    assert_closable(out.code, out.reason)
    for event in extra:
        wire_out(dialect, event)
    core.close(1000, "done")
    core.release()


@pytest.mark.parametrize("cls", DIALECT_CLASSES, ids=IDS)
@FEW
@given(query=QUERIES, started=st.booleans(), messages=st.lists(WIRE_MESSAGES, min_size=1, max_size=5))
def test_any_message_gives_events_or_a_protocol_error(cls: type[Dialect], query: str, started: bool,
                                                      messages: list[str | bytes]) -> None:
    """Any query, then any sequence of messages (text, bytes, JSON of any shape): each one is events of
    the defined kinds or a ProtocolError with a sendable close, whatever state the earlier ones left."""
    through_core(cls, ([opening(cls)] if started else []) + messages, query)


@pytest.mark.parametrize("cls", DIALECT_CLASSES, ids=IDS)
@FEW
@given(data=st.data(), extra=st.lists(OUT_EVENTS, max_size=3))
def test_mutated_valid_messages_give_events_or_a_protocol_error(cls: type[Dialect], data: st.DataObject,
                                                                extra: list[Any]) -> None:
    """The dialect's own messages, a few fields each replaced by odd values (inf, nan, huge numbers,
    lone surrogates, wrong types, nesting) or removed, in any order: the deep paths random text seldom
    reaches. Then any event the core could send, with odd contents, serialized."""
    templates = TEMPLATES[cls.path]
    messages: list[str | bytes] = []
    for _ in range(data.draw(st.integers(1, 5))):
        template = data.draw(st.sampled_from(templates))
        messages.append(to_json(mutated(template, data)) if data.draw(st.integers(0, 4)) else json.dumps(template))
    through_core(cls, messages, extra=tuple(extra))


ODD = [math.nan, math.inf, -math.inf, None, True, 0, -1, 10**30, 1e300, "", "\ud800", "x" * 5000, [], {},
       [math.nan], {"a": math.inf}, {"\ud800": 1}, {"k": {"k": [math.inf, None]}}, Raw("1" * 5000),
       Raw("1e999"), Raw("[" * 900 + "]" * 900), {"a": Raw("[" * 900 + "]" * 900)},
       Raw("[" * 5000 + "]" * 5000), ["inbound", 1], "audio/x-l16;rate=inf"]
REMOVE = object()
OPENINGS = ("start", "connected", "websocket:connected")


def set_at(msg: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of ``msg`` with the value at ``where`` replaced (``REMOVE``: deleted)."""
    msg = copy.deepcopy(msg)
    parent = msg
    for step in where[:-1]:
        parent = parent[step]
    if value is REMOVE:
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    return msg


@pytest.mark.parametrize("cls", DIALECT_CLASSES, ids=IDS)
def test_every_field_of_every_message_replaced_by_every_odd_value(cls: type[Dialect]) -> None:
    """Not random: each field of each of the dialect's messages, in turn, removed or replaced by each odd
    value, before and after a valid start, through a core. Thousands of cases, a defined outcome each."""
    templates, prefixes = TEMPLATES[cls.path], ([], [opening(cls)])
    if cls.path == "/telephony":  # after its opening every provider's own path is tested already: the openings
        templates, prefixes = [m for m in templates if m["event"] in OPENINGS], ([],)
    for prefix in prefixes:
        for template in templates:
            for where in paths(template)[1:]:
                for value in ODD if isinstance(where[-1], int) else [*ODD, REMOVE]:
                    through_core(cls, [*prefix, to_json(set_at(template, where, value))])




@pytest.mark.parametrize("text", [deep(100_000, "list"), deep(5000, "dict"), deep(1100, "input"),
                                  '{"a":' + "1" * 5000 + "}"])
def test_deep_or_huge_json_is_a_protocol_error(text: str) -> None:
    """Nesting past the parser's recursion limit and integers past Python's digit limit are refused
    as bad JSON, not raised as RecursionError or an unhandled ValueError."""
    with pytest.raises(ProtocolError, match="invalid JSON"):
        load_json_object(text)


def test_random_bytes_soak_the_parser_cheaply() -> None:
    """Not hypothesis: a few hundred kilobytes of plain noise in small reads, for the buffer paths."""
    rng = np.random.default_rng(13)
    for _ in range(20):
        noise = rng.integers(0, 256, 16_000, dtype=np.uint8).tobytes()
        parser = FrameParser(1 << 20)
        events: list[Any] = []
        for i in range(0, len(noise), 97):
            events += parser.feed(noise[i:i + 97])
        check_frame_events(events, 1 << 20)


def test_plivo_extra_headers_with_non_finite_numbers_start_the_call() -> None:
    """Found by the tests above: ``extra_headers`` given as an object with a NaN or Infinity value (Python's
    json reads them) made ``dumps`` raise ValueError out of ``parse``, dropping the call."""
    dialect = DIALECTS["/telephone/plivo"]()
    events = dialect.parse('{"event":"start","start":{"streamId":"s1","callId":"c1"},'
                           '"extra_headers":{"a":NaN,"b":Infinity,"c":[1,-Infinity],"d":"x","e":2}}')
    (start,) = [e for e in events if isinstance(e, Start)]
    assert start.context["customParameters"] == {"a": "nan", "b": "inf", "c": "[1, -inf]", "d": "x", "e": "2"}


@pytest.mark.parametrize("driver", ["native", "asgi"], indirect=True)
async def test_a_fatal_error_quoting_wide_characters_still_closes_1003(make_server, driver: str) -> None:
    """Found by the close-reason property: a fatal ProtocolError whose text quotes the client (here an
    unknown field name of 100 two-byte characters) must still close with 1003, over a real socket."""
    server = await make_server(ReplyOnPause(fn=echo))
    async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        await ws.send(json.dumps({"event": "start", "format": {"é" * 100: 1}}, ensure_ascii=False))
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["type"] == "error" and "unknown field" in error["data"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1003
    assert ws.close_reason.startswith("format has unknown field(s): éé")
