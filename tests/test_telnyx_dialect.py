"""The Telnyx media streaming dialect, sans I/O: Telnyx's messages in, events out; events in, messages out.

The socket side (real calls, pacing, barge-in, hang-up) is tests/test_providers.py's, with the same wire
(tests/peers/telnyx.py) that is checked against the dialect here.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import pkgutil
from typing import Any

import numpy as np
import peers
import pytest
from peers.telnyx import TelnyxWire
from peers.twilio import TwilioWire

from wsstream.codecs import AudioFormat
from wsstream.config import StreamConfig
from wsstream.dialects.base import MAX_LEAD_MS, MIN_LEAD_MS, ProtocolError
from wsstream.dialects.telnyx import TelnyxDialect
from wsstream.dialects.twilio import TwilioDialect
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
    Pong,
    Refused,
    Start,
    Stop,
    VadTrace,
    Warning,
)
from wsstream.reply import ReplyOnPause

APP = ReplyOnPause(fn=echo)
ENCODINGS = ("mulaw", "alaw", "pcm16")
FORMATS = {"mulaw": AudioFormat("mulaw", 8000), "alaw": AudioFormat("alaw", 8000),
           "pcm16": AudioFormat("pcm16", 16000)}


def started(wire: TelnyxWire) -> TelnyxDialect:
    """A dialect set up for ``wire``'s URL that has read its opening messages."""
    dialect = TelnyxDialect()
    dialect.setup(wire.path.partition("?")[2], APP, StreamConfig())
    for message in wire.opening():
        dialect.parse(message)
    return dialect


def start_with(media_format: Any = None, **start: Any) -> str:
    """A Telnyx start message, with ``media_format`` (and other start fields) replaced."""
    msg = json.loads(TelnyxWire().opening()[1])
    if media_format is not None:
        msg["start"]["media_format"] = media_format
    msg["start"].update(start)
    return json.dumps(msg)


def notices(events: list[Any], metric: str | None = None) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice) and (metric is None or e.metric == metric)]


def tone(rate: int, ms: int = 20) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * 440 * t) * 9000).astype(np.int16)


# ---- setup: telephony frames; the reply format from the stream URL ---------------------


def test_setup_is_telephony_with_pcmu_out_by_default() -> None:
    setup = TelnyxDialect().setup("", APP, StreamConfig(lead_ms=500))
    assert setup.input_format == AudioFormat("mulaw", 8000)
    assert setup.output_format == AudioFormat("mulaw", 8000)  # Telnyx's default bidirectional codec
    assert setup.config.frame_ms == 20 and setup.config.pad_last_frame
    assert MIN_LEAD_MS <= setup.config.lead_ms <= MAX_LEAD_MS


@pytest.mark.parametrize(("query", "fmt"), [
    ("stream_bidirectional_codec=PCMA", AudioFormat("alaw", 8000)),
    ("stream_bidirectional_codec=pcmu", AudioFormat("mulaw", 8000)),
    ("stream_bidirectional_codec=L16", AudioFormat("pcm16", 16000)),  # the docs' one L16 rate
    ("stream_bidirectional_codec=L16&stream_bidirectional_sampling_rate=8000", AudioFormat("pcm16", 8000)),
    ("stream_bidirectional_codec=L16&stream_bidirectional_sampling_rate=24000", AudioFormat("pcm16", 24000)),
    ("bidirectionalCodec=PCMA", AudioFormat("alaw", 8000)),  # TeXML's spelling
    ("bidirectionalCodec=L16&bidirectionalSamplingRate=16000", AudioFormat("pcm16", 16000)),
    ("tenant=acme&ref=42", AudioFormat("mulaw", 8000)),  # the operator's own parameters are left alone
])
def test_setup_reply_format_from_the_query(query: str, fmt: AudioFormat) -> None:
    dialect = TelnyxDialect()
    setup = dialect.setup(query, APP, StreamConfig())
    assert setup.output_format == fmt and dialect.output_format == fmt
    assert setup.input_format == AudioFormat("mulaw", 8000)


@pytest.mark.parametrize("query", [
    "stream_bidirectional_codec=G722", "stream_bidirectional_codec=OPUS", "stream_bidirectional_codec=AMR-WB",
    "stream_bidirectional_codec=MP3", "stream_bidirectional_codec=",
    "stream_bidirectional_sampling_rate=inf", "stream_bidirectional_sampling_rate=nan",
    "stream_bidirectional_sampling_rate=1e300", "stream_bidirectional_sampling_rate=abc",
    "stream_bidirectional_sampling_rate=4000", "stream_bidirectional_sampling_rate=96000",
    "stream_bidirectional_sampling_rate=-8000",
])
def test_setup_refuses_a_reply_format_nobody_could_hear(query: str) -> None:
    with pytest.raises(ProtocolError) as info:
        TelnyxDialect().setup(query, APP, StreamConfig())
    assert info.value.fatal


# ---- inbound: every message type --------------------------------------------------------


def test_connected_is_noted_and_never_shows_the_auth_token() -> None:
    dialect = TelnyxDialect()
    [note] = dialect.parse(json.dumps({"event": "connected", "version": "1.0.0"}))
    assert isinstance(note, Notice) and note.level == logging.DEBUG and "1.0.0" in note.message
    secret = "s3cr3t-token-value"
    events = dialect.parse(json.dumps({"event": "connected", "version": "1.0.0",
                                       "connected": {"x-telnyx-streaming-auth-token": secret}}))
    assert secret not in repr(events)
    events = dialect.parse(TelnyxWire().opening()[1])
    assert secret not in repr(events)


def test_start_sets_formats_and_carries_the_call_metadata() -> None:
    wire = TelnyxWire(3, custom={"caller": "+15550100", "lang": "en"})
    dialect = TelnyxDialect()
    dialect.setup("", APP, StreamConfig())
    events = dialect.parse(wire.opening()[1])
    start = events[0]
    assert isinstance(start, Start)
    assert start.format == start.output_format == AudioFormat("mulaw", 8000)
    assert start.client_id == wire.stream_id == dialect.stream_id
    assert start.context == {
        "stream_id": wire.stream_id,
        "call_control_id": wire.call_control_id,
        "call_session_id": wire.call_session_id,
        "user_id": json.loads(wire.opening()[1])["start"]["user_id"],
        "from": wire.caller,
        "to": "+13125550199",
        "tags": [],
        "client_state": base64.b64encode(b"wsstream test call").decode(),
        "client_state_decoded": "wsstream test call",
        "custom_parameters": {"caller": "+15550100", "lang": "en"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    }
    [note] = notices(events)
    assert note.level == logging.INFO and wire.call_control_id in note.message
    assert "mulaw 8000 Hz in, mulaw 8000 Hz out" in note.message


def test_start_oddities_are_noted_not_fatal() -> None:
    # custom parameters as the streaming_start request spells them (a list of name/value pairs)
    [start, *_] = TelnyxDialect().parse(start_with(custom_parameters=[{"name": "a", "value": "1"}, {"x": 2}, 3]))
    assert isinstance(start, Start) and start.context["custom_parameters"] == {"a": "1"}
    for state in ("%%% not base64", base64.b64encode(b"\xff\xfe").decode(), 12, None):
        [start, *_] = TelnyxDialect().parse(start_with(client_state=state))
        assert isinstance(start, Start) and start.context["client_state_decoded"] is None
    # no stream_id: the stream starts anyway, under its call control id
    msg = json.loads(TelnyxWire().opening()[1])
    del msg["stream_id"]
    events = TelnyxDialect().parse(json.dumps(msg))
    assert isinstance(events[0], Start) and events[0].client_id == msg["start"]["call_control_id"]
    assert notices(events, "telnyx_start_without_stream_id")
    # no media_format at all
    msg = json.loads(TelnyxWire().opening()[1])
    del msg["start"]["media_format"]
    events = TelnyxDialect().parse(json.dumps(msg))
    assert isinstance(events[0], Start) and events[0].format == AudioFormat("mulaw", 8000)
    assert notices(events, "telnyx_bad_media_format")


def test_media_is_the_callers_audio() -> None:
    wire = TelnyxWire()
    dialect = started(wire)
    frame = bytes(range(160))
    assert dialect.parse(wire.media(frame)) == [AudioIn(frame)]
    assert dialect.parse(json.dumps({"event": "media", "media": {"payload": ""}})) == []
    # no track: the inbound one (Telnyx always names it, but nothing else makes sense)
    payload = base64.b64encode(frame).decode()
    assert dialect.parse(json.dumps({"event": "media", "media": {"payload": payload}})) == [AudioIn(frame)]


def test_outbound_track_is_not_the_caller() -> None:
    dialect = started(TelnyxWire())
    msg = json.loads(TelnyxWire().media(b"\xff" * 160))
    msg["media"]["track"] = "outbound"
    [note] = dialect.parse(json.dumps(msg))
    assert isinstance(note, Notice) and note.metric == "telnyx_media_other_track"


def test_frames_out_of_order_are_passed_on_and_counted() -> None:
    wire = TelnyxWire()
    dialect = started(wire)
    frames = [wire.media(bytes([k]) * 160) for k in range(1, 5)]
    events = [e for i in (0, 1, 3, 2) for e in dialect.parse(frames[i])]
    assert [e.data[0] for e in events if isinstance(e, AudioIn)] == [1, 2, 4, 3]  # as they came
    [late] = notices(events, "telnyx_media_out_of_order")
    assert "chunk 3 after 4" in late.message
    for chunk in ("x", "Infinity", "1e99", "-1", "²", -1, 1e99, True, None, [1], {"a": 1}):
        msg = json.loads(wire.media(b"\xff" * 160))
        msg["media"]["chunk"] = chunk
        events = dialect.parse(json.dumps(msg))
        assert AudioIn(b"\xff" * 160) in events, chunk
        if chunk is not None:
            assert notices(events, "telnyx_bad_chunks"), chunk


def test_mark_dtmf_stop_error() -> None:
    wire = TelnyxWire()
    dialect = started(wire)
    assert dialect.parse(wire.played("reply-1")) == [MarkPlayed("reply-1")]
    events = dialect.parse(wire.dtmf("#"))
    assert events[-1] == Dtmf("#") and notices(events, "telnyx_dtmf")
    events = dialect.parse(wire.stop())
    assert events[-1] == Stop(finish=False)
    assert wire.call_control_id in notices(events)[0].message
    [err] = dialect.parse(wire.error(100005, "rate_limit_reached", "Too many requests"))
    assert isinstance(err, Notice) and err.metric == "telnyx_errors" and err.level == logging.ERROR
    assert "100005 rate_limit_reached: Too many requests" in err.message
    # an error frame of another shape is still reported, never a crash
    for payload in ("just text", None, [1, 2], {"code": float("inf")}, {"detail": "x" * 10000}):
        [err] = dialect.parse(json.dumps({"event": "error", "payload": payload}))
        assert err.metric == "telnyx_errors" and len(err.message) < 1000


def test_unknown_events_are_noticed_not_errors() -> None:
    dialect = started(TelnyxWire())
    for msg in ({"event": "transcription", "data": 1}, {"no_event": True}, {"event": 5}, {"event": [1, 2]},
                {"event": None}, {"event": "x" * 5000}):
        [note] = dialect.parse(json.dumps(msg))
        assert isinstance(note, Notice) and note.metric == "telnyx_unknown_events" and len(note.message) < 100


# ---- formats --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_codec_in_and_out(encoding: str) -> None:
    wire = TelnyxWire(encoding=encoding)
    dialect = TelnyxDialect()
    setup = dialect.setup(wire.path.partition("?")[2], APP, StreamConfig())
    assert setup.output_format == FORMATS[encoding]
    [start, *_] = [e for m in wire.opening() for e in dialect.parse(m) if isinstance(e, Start)]
    assert start.format == start.output_format == FORMATS[encoding]
    # what the caller says arrives in wsstream's encoding (L16 little-endian); what we say goes back so
    frame = tone(wire.sample_rate).tobytes() if encoding == "pcm16" else bytes(range(160))
    assert dialect.parse(wire.media(frame)) == [AudioIn(frame)]
    got = wire.read(dialect.serialize(AudioOut(frame)))  # type: ignore[arg-type]
    assert got.kind == "media" and got.payload == frame


def test_l16_is_big_endian_on_the_wire() -> None:
    wire = TelnyxWire(encoding="pcm16")
    dialect = started(wire)
    samples = np.array([1, -2, 0x1234, -32768], np.int16)
    on_wire = json.loads(dialect.serialize(AudioOut(samples.tobytes())))  # type: ignore[arg-type]
    assert base64.b64decode(on_wire["media"]["payload"]) == samples.astype(">i2").tobytes()
    payload = base64.b64encode(samples.astype(">i2").tobytes()).decode()
    assert dialect.parse(json.dumps({"event": "media", "media": {"track": "inbound", "payload": payload}})) \
        == [AudioIn(samples.astype("<i2").tobytes())]
    with pytest.raises(ProtocolError):  # half a sample
        dialect.parse(json.dumps({"event": "media", "media": {"payload": base64.b64encode(b"abc").decode()}}))


def test_alaw_caller_with_the_default_bidirectional_codec_hears_pcmu() -> None:
    """Telnyx plays what it is sent in the bidirectional codec (PCMU unless asked) and transcodes."""
    dialect = TelnyxDialect()
    dialect.setup("", APP, StreamConfig())
    [start, *_] = dialect.parse(start_with({"encoding": "PCMA", "sample_rate": 8000, "channels": 1}))
    assert isinstance(start, Start)
    assert start.format == AudioFormat("alaw", 8000) and start.output_format == AudioFormat("mulaw", 8000)


@pytest.mark.parametrize("codec", ["G722", "OPUS", "AMR-WB", "audio/x-mulaw", "", 7, None, ["PCMU"]])
def test_inbound_codec_we_cannot_decode_falls_back_loudly(codec: Any) -> None:
    [start, *rest] = TelnyxDialect().parse(start_with({"encoding": codec, "sample_rate": 16000, "channels": 1}))
    assert isinstance(start, Start) and start.format is not None and start.format.encoding == "mulaw"
    [bad] = notices(rest, "telnyx_bad_media_format")
    assert bad.level == logging.ERROR and str(codec)[:10] in bad.message


@pytest.mark.parametrize("rate", ["Infinity", "-Infinity", "NaN", "1e300", '"abc"', "true", "[8000]", "{}",
                                  "4000", "96000", "-8000", "0"])
def test_bad_sample_rate_falls_back_to_the_codecs_own(rate: str) -> None:
    for codec, fmt in (("PCMU", AudioFormat("mulaw", 8000)), ("L16", AudioFormat("pcm16", 16000))):
        text = start_with({"encoding": codec, "sample_rate": 1, "channels": 1}).replace('"sample_rate": 1',
                                                                                         f'"sample_rate": {rate}')
        [start, *rest] = TelnyxDialect().parse(text)
        assert isinstance(start, Start) and start.format == fmt, (codec, rate)
        assert notices(rest, "telnyx_bad_media_format"), (codec, rate)


def test_sample_rate_as_a_string_is_taken() -> None:
    [start, *rest] = TelnyxDialect().parse(start_with({"encoding": "L16", "sample_rate": "8000", "channels": "1"}))
    assert isinstance(start, Start) and start.format == AudioFormat("pcm16", 8000)
    assert not notices(rest, "telnyx_bad_media_format")


@pytest.mark.parametrize("channels", ["Infinity", "NaN", "2", '"two"', "1e300", "true", "[1]"])
def test_bad_channels_are_taken_as_mono(channels: str) -> None:
    text = start_with({"encoding": "PCMU", "sample_rate": 8000, "channels": 9}).replace('"channels": 9',
                                                                                       f'"channels": {channels}')
    [start, *rest] = TelnyxDialect().parse(text)
    assert isinstance(start, Start) and start.format == AudioFormat("mulaw", 8000)
    assert notices(rest, "telnyx_bad_media_format")


# ---- malformed input: ProtocolError, never anything else ------------------------------


@pytest.mark.parametrize("message", [
    "not json",
    b"\x00\x01binary",
    b'{"event": "media"}',  # JSON, but in a binary frame: Telnyx sends text
    "[1, 2]", '"a string"', "null", "42",
    "[" * 100_000,
    json.dumps({"event": "media"}),
    json.dumps({"event": "media", "media": "payload"}),
    json.dumps({"event": "media", "media": {"track": "inbound"}}),
    json.dumps({"event": "media", "media": {"payload": 12}}),
    json.dumps({"event": "media", "media": {"payload": "%%% not base64"}}),
    json.dumps({"event": "mark"}),
    json.dumps({"event": "mark", "mark": {}}),
    json.dumps({"event": "mark", "mark": {"name": 5}}),
    json.dumps({"event": "dtmf"}),
    json.dumps({"event": "dtmf", "dtmf": {}}),
    json.dumps({"event": "dtmf", "dtmf": {"digit": ""}}),
    json.dumps({"event": "dtmf", "dtmf": {"digit": 1}}),
    json.dumps({"event": "dtmf", "dtmf": {"digit": "1" * 100}}),
    json.dumps({"event": "start"}),
    json.dumps({"event": "start", "start": "x", "stream_id": "S"}),
])
def test_malformed_messages_raise_protocol_error_only(message: str | bytes) -> None:
    dialect = started(TelnyxWire())
    with pytest.raises(ProtocolError) as info:
        dialect.parse(message)
    assert not info.value.fatal  # a phone call does not drop over one bad message


JUNK: list[Any] = [None, True, 0, -1, 1e308, float("inf"), float("nan"), "", "x" * 3000, "Infinity",
                   [], [1, "a"], {}, {"a": {"b": [None]}}, "%%%"]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a parsed message."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, sub in value.items():
            out += paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out += paths(sub, (*prefix, i))
    return out


def mutated(msg: Any, path: tuple[Any, ...], junk: Any) -> list[Any]:
    """``msg`` with the value at ``path`` replaced by ``junk``, and with it deleted."""
    out = []
    for delete in (False, True):
        copy = json.loads(json.dumps(msg))
        node = copy
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = junk
        out.append(copy)
    return out


def wire_messages(wire: TelnyxWire) -> list[str]:
    return [*wire.opening(), wire.media(b"\x00" * (wire.sample_rate // 25)), wire.dtmf("5"), wire.played("m1"),
            wire.error(), wire.stop(), json.dumps({"event": "connected", "version": "1.0.0",
                                                   "connected": {"x-telnyx-streaming-auth-token": "t"}})]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_any_field_of_any_message_spoilt_never_raises_anything_but_protocol_error(encoding: str) -> None:
    wire = TelnyxWire(encoding=encoding)
    for message in wire_messages(wire):
        msg = json.loads(message)
        for path in paths(msg):
            for junk in JUNK:
                for bad in mutated(msg, path, junk):
                    dialect = started(wire)
                    text = json.dumps(bad)
                    try:
                        events = dialect.parse(text)
                    except ProtocolError as exc:
                        assert not exc.fatal, (text[:200], exc)
                        continue
                    assert isinstance(events, list), text[:200]
                    for event in events:
                        assert isinstance(event, Notice | Start | AudioIn | MarkPlayed | Dtmf | Stop), event
                        if isinstance(event, Notice):
                            assert len(event.message) < 1000, event.message[:200]
                    # and recognising it never raises either
                    assert TelnyxDialect.recognises(bad) in (True, False)


# ---- outbound: media, mark, clear, and nothing else ------------------------------------


def test_dialect_sends_nothing_but_media_mark_clear() -> None:
    dialect = TelnyxDialect()
    dialect.setup("", APP, StreamConfig())
    # no stream_id needed: Telnyx's outbound frames carry none, so audio may go before start
    assert json.loads(dialect.serialize(AudioOut(b"\xff" * 160))) == {  # type: ignore[arg-type]
        "event": "media", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
    started_dialect = started(TelnyxWire())
    for d in (dialect, started_dialect):
        for event in (Log("pause_detected", {"t": 1.0}), VadTrace([0.1], 0.0), FetchOutput(["x"]),
                      Refused("concurrency_limit_reached", 1), Error("bad"), Warning("careful"), Pong(),
                      Close(1000)):
            assert d.serialize(event) is None, event
        assert json.loads(d.serialize(AudioOut(b"\xd5" * 160))) == {  # type: ignore[arg-type]
            "event": "media", "media": {"payload": base64.b64encode(b"\xd5" * 160).decode()}}
        assert json.loads(d.serialize(Mark("reply-1"))) == {  # type: ignore[arg-type]
            "event": "mark", "mark": {"name": "reply-1"}}
        assert json.loads(d.serialize(Clear())) == {"event": "clear"}  # type: ignore[arg-type]
    odd = 'a "quoted" \\ name\n☎'
    assert json.loads(dialect.serialize(Mark(odd)))["mark"]["name"] == odd  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_wire_reads_every_serialized_kind(encoding: str) -> None:
    wire = TelnyxWire(encoding=encoding)
    dialect = started(wire)
    frame = tone(wire.sample_rate).tobytes() if encoding == "pcm16" else bytes(range(256))[:160]
    media = wire.read(dialect.serialize(AudioOut(frame)))  # type: ignore[arg-type]
    assert (media.kind, media.payload) == ("media", frame)
    mark = wire.read(dialect.serialize(Mark("reply-7")))  # type: ignore[arg-type]
    assert (mark.kind, mark.name) == ("mark", "reply-7")
    assert wire.read(dialect.serialize(Clear())).kind == "clear"  # type: ignore[arg-type]
    assert wire.read(json.dumps({"event": "something"})).kind == "other"
    assert wire.cleared() is None and wire.marks_on_clear


# ---- the wire, parsed: a whole call -----------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_whole_call_through_the_wire(encoding: str) -> None:
    wire = TelnyxWire(12, encoding=encoding, custom={"file": "dialog_00.flac"})
    dialect = TelnyxDialect()
    dialect.setup(wire.path.partition("?")[2], APP, StreamConfig())
    connected, start = wire.opening()
    assert [type(e) for e in dialect.parse(connected)] == [Notice]
    events = dialect.parse(start)
    assert isinstance(events[0], Start) and events[0].context["custom_parameters"] == {"file": "dialog_00.flac"}
    assert not notices(events, "telnyx_bad_media_format")
    audio = tone(wire.sample_rate, 200)
    frames = [audio[i:i + wire.sample_rate // 50].tobytes() for i in range(0, len(audio), wire.sample_rate // 50)]
    if encoding != "pcm16":
        frames = [bytes([k]) * 160 for k in range(10)]
    got = [e for f in frames for e in dialect.parse(wire.media(f))]
    assert got == [AudioIn(f) for f in frames]  # in order, no notices
    assert dialect.parse(wire.dtmf("9"))[-1] == Dtmf("9")
    assert dialect.parse(wire.played("reply-1")) == [MarkPlayed("reply-1")]
    assert dialect.parse(wire.stop())[-1] == Stop(finish=False)
    # sequence numbers count every message after connected, as Telnyx's do
    assert [json.loads(m)["sequence_number"] for m in (wire.played("x"), wire.played("y"))] == ["15", "16"]


def test_wires_have_distinct_ids_per_call() -> None:
    wires = [TelnyxWire(n) for n in (1, 2, 1000, 2010, 7)]
    for attr in ("stream_id", "call_control_id", "call_session_id"):
        assert len({getattr(w, attr) for w in wires}) == len(wires), attr
    start = json.loads(wires[0].opening()[1])
    assert start["stream_id"] == start["stream_id"].upper() and len(start["stream_id"]) == 36
    assert start["start"]["call_control_id"].startswith("v3:")
    assert set(start) == {"event", "sequence_number", "start", "stream_id"} and start["sequence_number"] == "1"


# ---- recognises: Telnyx's first messages, and nobody else's ------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_recognises_telnyx_start(encoding: str) -> None:
    connected, start = TelnyxWire(5, encoding=encoding, custom={"a": "b"}).opening()
    assert TelnyxDialect.recognises(json.loads(start))
    assert not TelnyxDialect.recognises(json.loads(connected))  # a bare connected: Twilio opens so too
    # a connected that carries Telnyx's auth token is Telnyx's alone
    assert TelnyxDialect.recognises({"event": "connected", "version": "1.0.0",
                                     "connected": {"x-telnyx-streaming-auth-token": "t"}})


# Other providers' openings as their docs show them (recollected and checked), for when their wires are
# not in tests/peers: Exotel's, Plivo's and Vonage's first messages.
OTHERS: list[Any] = [
    {"event": "connected"},
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "start", "sequence_number": "1", "stream_sid": "b8c7e5f4", "start": {
        "stream_sid": "b8c7e5f4", "call_sid": "c1a2", "account_sid": "acme1", "from": "+91", "to": "+91",
        "custom_parameters": {}, "media_format": {"encoding": "raw/slin", "sample_rate": "8000",
                                                  "bit_rate": "128kbps"}}},
    {"event": "start", "sequenceNumber": 0, "start": {
        "callId": "2a1e", "streamId": "9f3b", "accountId": "MA01", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}, "extra_headers": "{}"},
    {"event": "websocket:connected", "content-type": "audio/l16;rate=16000"},
    {"event": "start", "stream_id": "x"},  # half a Telnyx start is not one
    {"event": "start", "start": {"call_control_id": "v3:x"}},
    {"event": "start", "stream_id": 5, "start": {"call_control_id": "v3:x"}},
    {"event": "start", "stream_id": "x", "start": {"call_control_id": 5}},
    {"event": "media", "stream_id": "x", "media": {"payload": ""}},
    {"event": "connected", "connected": {"other": "t"}},
    {"event": "connected", "connected": "x-telnyx-streaming-auth-token"},
    {},
]


@pytest.mark.parametrize("msg", OTHERS)
def test_does_not_recognise_other_first_messages(msg: Any) -> None:
    assert TelnyxDialect.recognises(msg) is False


@pytest.mark.parametrize("value", [None, [], [{"event": "start"}], "start", 5, 1.5, b"{}"])
def test_recognises_non_dicts_as_nothing(value: Any) -> None:
    assert TelnyxDialect.recognises(value) is False


@pytest.mark.parametrize("kwargs", [{}, {"encoding": "alaw"}, {"custom": {"stream_id": "S", "call_control_id": "C"}}])
def test_does_not_recognise_twilio(kwargs: dict[str, Any]) -> None:
    for message in TwilioWire(4, **kwargs).opening():
        assert not TelnyxDialect.recognises(json.loads(message))


def test_twilio_does_not_recognise_telnyx() -> None:
    """The other side of the same contract, for the recognising /telephony endpoint."""
    recognises = getattr(TwilioDialect, "recognises", None)
    if recognises is None:
        pytest.skip("TwilioDialect has no recognises yet")
    for encoding in ENCODINGS:
        for message in TelnyxWire(encoding=encoding).opening():
            assert not recognises(json.loads(message))


OTHER_WIRES = sorted(m.name for m in pkgutil.iter_modules(peers.__path__) if m.name not in ("base", "telnyx"))


@pytest.mark.parametrize("module", OTHER_WIRES)
def test_does_not_recognise_any_other_wire_in_peers(module: str) -> None:
    try:
        mod = importlib.import_module(f"peers.{module}")
    except ImportError as exc:  # another provider's wire still being written
        pytest.skip(f"peers.{module}: {exc}")
    wires = [cls for name, cls in vars(mod).items()
             if name.endswith("Wire") and isinstance(cls, type) and cls.__module__ == mod.__name__]
    assert wires, f"peers.{module} has no wire"
    for cls in wires:
        for kwargs in ({}, {"custom": {"k": "v"}}):
            for message in cls(3, **kwargs).opening():
                try:
                    msg = json.loads(message)
                except (ValueError, UnicodeDecodeError):
                    continue  # not JSON (a binary opening): never a parsed first message
                assert TelnyxDialect.recognises(msg) is False, (cls.__name__, message)
