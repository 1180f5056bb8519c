"""The Plivo Audio Streams dialect, sans I/O: Plivo's messages in, core events out; core events in, Plivo's
messages out; and the scripted Plivo bridge (tests/peers/plivo.py) read against both. No sockets here:
tests/test_providers.py runs the same wire against a real server.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import pkgutil
from typing import Any

import peers
import pytest
from peers.base import Received, bytes_per_sample
from peers.plivo import PlivoWire
from peers.twilio import TwilioWire

from wsstream.codecs import AudioFormat
from wsstream.config import StreamConfig
from wsstream.dialects.base import MAX_LEAD_MS, MIN_LEAD_MS, ProtocolError, telephony_setup
from wsstream.dialects.plivo import PlivoDialect, extra_headers
from wsstream.echo import echo
from wsstream.events import (
    AudioIn,
    AudioOut,
    Clear,
    Close,
    Dtmf,
    Error,
    FetchOutput,
    InEvent,
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

FORMATS = [("mulaw", 8000), ("pcm16", 8000), ("pcm16", 16000)]  # every format Plivo streams
STREAM = "87654321-4321-4321-4321-cba987654321"
CALL = "12345678-1234-1234-1234-123456789abc"


def start_msg(media_format: Any = None, **extra: Any) -> str:
    start: dict[str, Any] = {"callId": CALL, "streamId": STREAM, "accountId": "MAXXXXXXXXXXXXXXXXXX",
                             "tracks": ["inbound"]}
    if media_format is not None:
        start["mediaFormat"] = media_format
    return json.dumps({"event": "start", "sequenceNumber": 1, "start": start, **extra})


def started(media_format: Any = None) -> PlivoDialect:
    dialect = PlivoDialect()
    dialect.parse(start_msg(media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000}))
    return dialect


def only(events: list[InEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def the_start(events: list[InEvent]) -> Start:
    (start,) = only(events, Start)
    return start


def notices(events: list[InEvent], metric: str) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice) and e.metric == metric]


def sent(dialect: PlivoDialect, event: Any) -> str:
    """What the dialect puts on the wire for ``event`` (which must be something)."""
    out = dialect.serialize(event)
    assert isinstance(out, str), (event, out)
    return out


# ---- setup ------------------------------------------------------------------------


def test_setup_is_every_bridges_20_ms_padded_paced_frames() -> None:
    for lead in (20.0, 160.0, 900.0):
        config = StreamConfig(lead_ms=lead)
        setup = PlivoDialect().setup("", ReplyOnPause(fn=echo), config)
        assert setup.config.frame_ms == 20.0 and setup.config.pad_last_frame
        assert MIN_LEAD_MS <= setup.config.lead_ms <= MAX_LEAD_MS
        # the same frames /telephony sends, so a call routed there is paced alike
        assert setup.config == telephony_setup(AudioFormat("mulaw", 8000), config).config
        assert setup.input_format == AudioFormat("pcm16", 8000)  # <Stream contentType>'s default
        assert setup.output_format is None
    assert PlivoDialect.name == "plivo" and PlivoDialect.path == "/telephone/plivo"
    assert PlivoDialect.binary_audio is False


# ---- start: metadata and formats -------------------------------------------------


def test_start_carries_the_call_into_the_context() -> None:
    events = PlivoDialect().parse(start_msg({"encoding": "audio/x-mulaw", "sampleRate": 8000},
                                            extra_headers="userId=12345;sessionId=abc-xyz"))
    start = the_start(events)
    assert events[0] is start  # the formats are set before anything else is heard
    assert start.format == start.output_format == AudioFormat("mulaw", 8000)
    assert start.client_id == STREAM
    assert start.context == {
        "streamId": STREAM, "callId": CALL, "accountId": "MAXXXXXXXXXXXXXXXXXX", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        "extra_headers": "userId=12345;sessionId=abc-xyz",
        "customParameters": {"userId": "12345", "sessionId": "abc-xyz"}}
    (note,) = only(events, Notice)
    assert note.level == logging.INFO and note.message == f"started: call {CALL}, mulaw 8000 Hz"


@pytest.mark.parametrize(("media_format", "expected"), [
    ({"encoding": "audio/x-mulaw", "sampleRate": 8000}, AudioFormat("mulaw", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": 8000}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": 16000}, AudioFormat("pcm16", 16000)),
    ({"encoding": "AUDIO/X-L16", "sampleRate": "16000"}, AudioFormat("pcm16", 16000)),  # case, a string rate
    ({"encoding": "audio/x-l16;rate=16000"}, AudioFormat("pcm16", 16000)),  # as <Stream contentType> spells it
    ({"encoding": "audio/x-mulaw;rate=8000"}, AudioFormat("mulaw", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": 16000.0}, AudioFormat("pcm16", 16000)),
])
def test_every_plivo_format_in_and_out(media_format: dict[str, Any], expected: AudioFormat) -> None:
    events = PlivoDialect().parse(start_msg(media_format))
    start = the_start(events)
    assert start.format == start.output_format == expected
    assert not [e for e in events if isinstance(e, Notice) and e.level >= logging.WARNING], events


@pytest.mark.parametrize(("media_format", "fallback"), [
    ({"encoding": "audio/x-opus", "sampleRate": 48000}, AudioFormat("pcm16", 8000)),
    ({"encoding": ["audio/x-mulaw"], "sampleRate": 8000}, AudioFormat("pcm16", 8000)),
    ("audio/x-mulaw", AudioFormat("pcm16", 8000)),
    ([8000], AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-mulaw", "sampleRate": "fast"}, AudioFormat("mulaw", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": True}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": -16000}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": 4000}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": 96000}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": 10**30}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": None, "x": 1}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16;rate=lots"}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-l16", "sampleRate": {"hz": 16000}}, AudioFormat("pcm16", 8000)),
])
def test_a_bad_media_format_falls_back_with_a_notice(media_format: Any, fallback: AudioFormat) -> None:
    events = PlivoDialect().parse(start_msg(media_format))
    start = the_start(events)
    assert start.format == start.output_format == fallback
    if media_format == {"encoding": "audio/x-l16", "sampleRate": None, "x": 1}:
        return  # (a null rate is an absent one: Plivo's default 8000, nothing wrong)
    (bad,) = notices(events, "plivo_bad_media_format")
    assert bad.level == logging.ERROR and "assuming" in bad.message


@pytest.mark.parametrize("rate", ["Infinity", "-Infinity", "NaN", "1e400", "1e9", '"inf"', '"nan"', '"1e400"'])
def test_non_finite_and_huge_sample_rates_fall_back_with_a_notice(rate: str) -> None:
    # Python's json reads Infinity, NaN and 1e400 (inf) as floats: what a sloppy bridge may send
    message = ('{"event": "start", "start": {"streamId": "s", "callId": "c", '
               f'"mediaFormat": {{"encoding": "audio/x-l16", "sampleRate": {rate}}}}}}}')
    events = PlivoDialect().parse(message)
    assert the_start(events).format == AudioFormat("pcm16", 8000)
    (bad,) = notices(events, "plivo_bad_media_format")
    assert "sampleRate" in bad.message


def test_no_media_format_means_plivos_default_with_a_notice() -> None:
    events = PlivoDialect().parse(start_msg())
    assert the_start(events).format == AudioFormat("pcm16", 8000)
    assert notices(events, "plivo_bad_media_format")


def test_a_format_plivo_does_not_offer_is_used_but_noted() -> None:
    events = PlivoDialect().parse(start_msg({"encoding": "audio/x-mulaw", "sampleRate": 16000}))
    assert the_start(events).format == AudioFormat("mulaw", 16000)
    assert notices(events, "plivo_unusual_media_format")


def test_start_needs_a_stream_id_and_comes_once() -> None:
    for message in ({"event": "start"}, {"event": "start", "start": "x"},
                    {"event": "start", "start": {"callId": CALL}}, {"event": "start", "start": {"streamId": 7}},
                    {"event": "start", "start": {"streamId": ""}}):
        with pytest.raises(ProtocolError) as info:
            PlivoDialect().parse(json.dumps(message))
        assert not info.value.fatal
    dialect = started({"encoding": "audio/x-l16", "sampleRate": 16000})
    again = dialect.parse(start_msg({"encoding": "audio/x-mulaw", "sampleRate": 8000}))
    assert not only(again, Start) and notices(again, "plivo_repeated_start")
    assert dialect.format == AudioFormat("pcm16", 16000)  # what the core keeps too: audio stays labelled right
    # a stream id at the top level only (as media carries it) is taken too
    start = the_start(PlivoDialect().parse(json.dumps({"event": "start", "streamId": "s1", "start": {}})))
    assert start.client_id == "s1"


def test_start_keeps_odd_metadata_as_given_without_failing() -> None:
    events = PlivoDialect().parse(json.dumps({"event": "start", "start": {
        "streamId": STREAM, "callId": 42, "accountId": None, "tracks": "inbound",
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}, "extra_headers": 5}))
    start = the_start(events)
    assert start.context["callId"] is None and start.context["tracks"] == "inbound"
    assert start.context["customParameters"] == {}
    assert notices(events, "plivo_bad_extra_headers")


# ---- extra headers: the custom parameters ----------------------------------------


@pytest.mark.parametrize(("raw", "params"), [
    ("userId=12345;sessionId=abc-xyz", {"userId": "12345", "sessionId": "abc-xyz"}),  # the reference's example
    ("test1=12,test2=123", {"test1": "12", "test2": "123"}),  # as <Stream extraHeaders> is written
    ('{"X-PH-lang": "en", "n": 3}', {"X-PH-lang": "en", "n": "3"}),  # the SDK's "JSON string"
    ("{X-PH-key1: value1, X-PH-key2: v2}", {"X-PH-key1": "value1", "X-PH-key2": "v2"}),  # seen from bridges
    ("{X-PH-url: http://x}", {"X-PH-url": "http://x"}),
    ("{}", {}),
    ("", {}),
    (None, {}),
    ({"caller": "+15550100"}, {"caller": "+15550100"}),
    (" a = 1 ; ; =2; b ", {"a": "1"}),
    ("{unterminated", {}),
    ("{" * 5000, {}),
    ("[1, 2]", {}),
])
def test_extra_headers_in_every_spelling(raw: Any, params: dict[str, str]) -> None:
    assert extra_headers(raw) == (params, None)


def test_extra_headers_from_the_start_become_custom_parameters() -> None:
    wire = PlivoWire(custom={"caller": "+15550100", "lang": "en"})
    start = the_start(PlivoDialect().parse(wire.opening()[0]))
    assert start.context["customParameters"] == {"caller": "+15550100", "lang": "en"}


# ---- media, DTMF, checkpoints, cleared, stop -------------------------------------


def media_msg(media: Any) -> str:
    return json.dumps({"event": "media", "sequenceNumber": 42, "streamId": STREAM, "media": media})


def test_media_is_the_callers_audio() -> None:
    dialect = started()
    payload = bytes(range(160))
    events = dialect.parse(media_msg({"track": "inbound", "timestamp": "1705312200000", "chunk": 41,
                                      "payload": base64.b64encode(payload).decode()}))
    assert events == [AudioIn(payload)]
    # no track named: the caller's
    assert dialect.parse(media_msg({"payload": base64.b64encode(b"\xff" * 8).decode()})) == [AudioIn(b"\xff" * 8)]
    assert dialect.parse(media_msg({"track": "inbound", "payload": ""})) == []  # nothing to hear


def test_media_of_another_track_is_not_input() -> None:
    events = started().parse(media_msg({"track": "outbound", "payload": base64.b64encode(b"\0" * 160).decode()}))
    (note,) = events
    assert isinstance(note, Notice) and note.metric == "plivo_media_other_track" and note.level == logging.DEBUG


@pytest.mark.parametrize("media", [None, "abc", [], {}, {"track": "inbound"}, {"payload": 5},
                                   {"payload": "%%% not base64"}, {"payload": "AAA"}])
def test_malformed_media_is_a_protocol_error_never_fatal(media: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        started().parse(media_msg(media))
    assert not info.value.fatal


def test_dtmf_goes_to_the_reply_context() -> None:
    events = started().parse(json.dumps({"event": "dtmf", "sequenceNumber": 7, "streamId": STREAM,
                                         "dtmf": {"track": "inbound", "digit": "#", "timestamp": "1705312201000"},
                                         "extra_headers": ""}))
    assert only(events, Dtmf) == [Dtmf("#")]
    assert notices(events, "plivo_dtmf")[0].level == logging.DEBUG


@pytest.mark.parametrize("dtmf", [None, "5", {}, {"digit": ""}, {"digit": 5}, {"track": "inbound"},
                                  {"digit": "1" * 9000}])
def test_malformed_dtmf_is_a_protocol_error(dtmf: Any) -> None:
    with pytest.raises(ProtocolError):
        started().parse(json.dumps({"event": "dtmf", "dtmf": dtmf}))


def test_played_stream_is_our_marker_played() -> None:
    dialect = started()
    assert dialect.parse(json.dumps({"event": "playedStream", "sequenceNumber": 9, "streamId": STREAM,
                                     "name": "reply-1"})) == [MarkPlayed("reply-1")]
    # "played": the name a Plivo support page gives the same report
    assert dialect.parse(json.dumps({"event": "played", "streamId": STREAM, "name": "r2"})) == [MarkPlayed("r2")]
    for bad in ({"event": "playedStream"}, {"event": "playedStream", "name": 3},
                {"event": "playedStream", "mark": {"name": "reply-1"}}):
        with pytest.raises(ProtocolError):
            dialect.parse(json.dumps(bad))


def test_cleared_audio_is_only_noted() -> None:
    events = started().parse(json.dumps({"event": "clearedAudio", "sequenceNumber": 12, "streamId": STREAM}))
    (note,) = events
    assert isinstance(note, Notice) and note.metric == "plivo_cleared_audio" and note.level == logging.DEBUG


def test_a_stop_message_hangs_up() -> None:
    events = started().parse(json.dumps({"event": "stop", "streamId": STREAM}))
    assert only(events, Stop) == [Stop(finish=False)]


@pytest.mark.parametrize("message", [
    {"event": "somethingNew", "streamId": STREAM},
    {"event": "connected"},  # Twilio's and Telnyx's opening: not Plivo's
    {"streamId": STREAM},
    {"event": ["start"]},
    {"event": None},
    {"event": 3},
    {"event": "x" * 10000},
])
def test_unknown_messages_are_noted_not_errors(message: dict[str, Any]) -> None:
    events = started().parse(json.dumps(message))
    (note,) = events
    assert isinstance(note, Notice) and note.metric == "plivo_unknown_events"
    assert len(note.message) < 100


@pytest.mark.parametrize("message", [
    "not json", "", "{", "[1, 2]", "null", "3", '"start"', "[" * 1100, "{" * 1100, b"\x00\x01binary",
    b'{"event": "media"}', "\ud800",
])
def test_malformed_messages_raise_protocol_error_only(message: str | bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        started().parse(message)
    assert not info.value.fatal
    with pytest.raises(ProtocolError):
        PlivoDialect().audio(b"\x00" * 160)


ODD_VALUES: list[Any] = [None, True, 0, -1, 10**40, 1e300, float("inf"), float("nan"), "", "x", "1e400",
                         [], [1], {}, {"a": {}}]


def every_field(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path] if path else []
    if isinstance(value, dict):
        for key, sub in value.items():
            paths += every_field(sub, (*path, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            paths += every_field(sub, (*path, i))
    return paths


def replaced(msg: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(msg) if isinstance(msg, dict) else list(msg)
    copy[path[0]] = replaced(copy[path[0]], path[1:], value)
    return copy


@pytest.mark.parametrize(("encoding", "rate"), FORMATS)
def test_any_field_of_any_plivo_message_gone_wrong_never_raises_but_protocol_error(encoding: str,
                                                                                 rate: int) -> None:
    """Every field of every message Plivo sends, replaced by each odd value in turn (or dropped): the
    dialect returns events or raises ProtocolError, nothing else, before and after its start."""
    wire = PlivoWire(5, encoding=encoding, sample_rate=rate, custom={"a": "1"})
    messages = [*wire.opening(), wire.media(b"\x01" * 320), wire.dtmf("5"), wire.played("m"), wire.cleared()]
    tried = 0
    for text in messages:
        msg = json.loads(text)
        for path in every_field(msg):
            variants = [replaced(msg, path, v) for v in ODD_VALUES]
            dropped = json.loads(text)
            target = dropped
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
            variants.append(dropped)
            for variant in variants:
                for dialect in (PlivoDialect(), started()):
                    try:
                        events = dialect.parse(json.dumps(variant))
                    except ProtocolError:
                        continue
                    assert all(isinstance(e, InEvent) for e in events), (path, variant, events)
                    # what went in still goes out as Plivo's messages
                    for event in (AudioOut(b"\xff" * 160), Mark("m1"), Clear()):
                        out = dialect.serialize(event)
                        assert out is None or isinstance(json.loads(out), dict)
                    tried += 1
    assert tried > 500


# ---- outbound: playAudio, checkpoint, clearAudio, nothing else -------------------


def test_nothing_is_sent_before_start() -> None:
    dialect = PlivoDialect()
    for event in (AudioOut(b"\x00" * 320), Mark("reply-1"), Clear()):
        assert dialect.serialize(event) is None


@pytest.mark.parametrize(("encoding", "rate"), FORMATS)
def test_audio_out_is_play_audio_labelled_in_the_calls_format(encoding: str, rate: int) -> None:
    content_type = {"mulaw": "audio/x-mulaw", "pcm16": "audio/x-l16"}[encoding]
    dialect = started({"encoding": content_type, "sampleRate": rate})
    frame = AudioFormat(encoding, rate).frame_bytes(20)
    data = bytes(range(256)) * (frame // 256) + bytes(frame % 256)
    assert json.loads(sent(dialect, AudioOut(data))) == {"event": "playAudio", "media": {
        "contentType": content_type, "sampleRate": rate, "payload": base64.b64encode(data).decode()}}


def test_marker_and_flush_spellings() -> None:
    dialect = started()
    assert json.loads(sent(dialect, Mark("reply-1"))) == {"event": "checkpoint", "streamId": STREAM, "name": "reply-1"}
    assert json.loads(sent(dialect, Clear())) == {"event": "clearAudio", "streamId": STREAM}


def test_dialect_sends_nothing_but_play_audio_checkpoint_clear_audio() -> None:
    dialect = started()
    for event in (Log("pause_detected", {"t": 1.0}), VadTrace([0.1], 0.0), FetchOutput(["x"]),
                  Refused("concurrency_limit_reached", 1), Error("bad"), Warning("careful"), Pong(), Close(1000)):
        assert dialect.serialize(event) is None, event


# ---- recognises: this provider's opening, and nobody else's -----------------------


TELNYX_OPENING = [
    {"event": "connected", "version": "1.0.0"},
    {"event": "start", "sequence_number": "1", "stream_id": "32de0dea-53cb-4b21-89a4-9de3d2b8b8d1",
     "start": {"user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": "v3:abc",
               "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d", "from": "+13122010094", "to": "+13122123456",
               "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}},
]
EXOTEL_OPENING = [
    {"event": "connected"},
    {"event": "start", "sequence_number": "1", "stream_sid": "MZ00000000000000000000000001", "start": {
        "stream_sid": "MZ00000000000000000000000001", "call_sid": "CA00000000000000000000000001",
        "account_sid": "AC00000000000000000000000001", "from": "+919876543210", "to": "+918047491899",
        "custom_parameters": {"key1": "value1"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}}},
]
VONAGE_OPENING = [{"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "caller": "x"}]


def other_wires() -> list[Any]:
    """Every other provider's scripted bridge in tests/peers (as many as there are when this runs)."""
    found = []
    for info in pkgutil.iter_modules(peers.__path__):
        if info.name in ("base", "plivo"):
            continue
        module = importlib.import_module(f"peers.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__ and hasattr(value, "opening") \
                    and hasattr(value, "provider"):
                found.append(value)
    return found


@pytest.mark.parametrize(("encoding", "rate"), FORMATS)
def test_recognises_plivos_start_as_the_wire_sends_it(encoding: str, rate: int) -> None:
    for n in (1, 2, 4000):
        (first,) = PlivoWire(n, encoding=encoding, sample_rate=rate, custom={"k": "v"}).opening()
        assert PlivoDialect.recognises(json.loads(first))
    # the reference's own example
    assert PlivoDialect.recognises(json.loads(start_msg({"encoding": "audio/x-mulaw", "sampleRate": 8000},
                                                        extra_headers="userId=12345")))


def test_recognises_no_other_providers_opening() -> None:
    openings: list[Any] = [*TELNYX_OPENING, *EXOTEL_OPENING, *VONAGE_OPENING]
    for encoding in ("mulaw", "alaw"):
        openings += [json.loads(m) for m in TwilioWire(3, encoding=encoding, custom={"a": "b"}).opening()]
    wires = other_wires()
    assert TwilioWire in wires
    for wire_class in wires:
        openings += [json.loads(m) for m in wire_class(9).opening() if isinstance(m, str)]
    for msg in openings:
        assert not PlivoDialect.recognises(msg), msg


@pytest.mark.parametrize("msg", [
    {"event": "connected"},  # shared: decides nothing
    {"event": "start"},
    {"event": "start", "start": None},
    {"event": "start", "start": []},
    {"event": "start", "start": {"streamId": STREAM}},  # no callId
    {"event": "start", "start": {"streamId": 1, "callId": 2}},
    {"event": "start", "streamSid": "MZ1", "start": {"streamId": STREAM, "callId": CALL}},  # Twilio's Sid
    {"event": "Start", "start": {"streamId": STREAM, "callId": CALL}},
    {"event": "media", "streamId": STREAM, "media": {"payload": ""}},  # Plivo's, but not an opening
    {},
    [], "start", None, 3, b"{}",
])
def test_recognises_says_false_and_never_raises(msg: Any) -> None:
    assert PlivoDialect.recognises(msg) is False


def test_recognises_nothing_else_plivo_sends() -> None:
    wire = PlivoWire()
    for message in (wire.media(b"\xff" * 160), wire.dtmf("1"), wire.played("m"), wire.cleared()):
        assert not PlivoDialect.recognises(json.loads(message))


# ---- the scripted Plivo bridge against the dialect ----------------------------------


@pytest.mark.parametrize(("encoding", "rate"), FORMATS)
def test_round_trip_through_the_wire(encoding: str, rate: int) -> None:
    wire = PlivoWire(12, encoding=encoding, sample_rate=rate, custom={"file": "dialog_00.flac"})
    dialect = PlivoDialect()
    (opening,) = wire.opening()
    start = the_start(dialect.parse(opening))
    assert start.format == start.output_format == AudioFormat(encoding, rate)
    assert start.client_id == wire.stream_id and start.context["callId"] == wire.call_id
    assert start.context["customParameters"] == {"file": "dialog_00.flac"}
    frame = int(rate * 0.02) * bytes_per_sample(encoding)
    assert frame == AudioFormat(encoding, rate).frame_bytes(20)  # the bridge's frames are the server's
    payload = bytes(range(256)) * 3
    payload = payload[:frame]
    assert dialect.parse(wire.media(payload)) == [AudioIn(payload)]
    assert only(dialect.parse(wire.dtmf("7")), Dtmf) == [Dtmf("7")]
    assert dialect.parse(wire.played("reply-1")) == [MarkPlayed("reply-1")]
    assert notices(dialect.parse(wire.cleared()), "plivo_cleared_audio")
    assert wire.stop() is None  # type: ignore[func-returns-value]  # Plivo closes the socket instead
    # what the dialect sends, as Plivo's side reads it
    out = wire.read(sent(dialect, AudioOut(payload)))
    assert (out.kind, out.payload) == ("media", payload)
    mark = wire.read(sent(dialect, Mark("reply-2")))
    assert (mark.kind, mark.name) == ("mark", "reply-2")
    assert wire.read(sent(dialect, Clear())).kind == "clear"


def test_wire_reads_every_serialized_kind_and_nothing_else() -> None:
    wire = PlivoWire(3)
    dialect = PlivoDialect()
    dialect.parse(wire.opening()[0])
    frame = b"\x7f" * 160
    kinds = {}
    for event in (AudioOut(frame), Mark("reply-9"), Clear()):
        got = wire.read(sent(dialect, event))
        assert isinstance(got, Received) and isinstance(got.message, dict)
        kinds[type(event).__name__] = (got.kind, got.payload, got.name)
    assert kinds == {"AudioOut": ("media", frame, None), "Mark": ("mark", b"", "reply-9"),
                     "Clear": ("clear", b"", None)}
    # audio labelled in another format, or markers for another stream, are not this call's
    other = PlivoDialect()
    other.parse(PlivoWire(4, encoding="pcm16").opening()[0])
    for event in (AudioOut(b"\0" * 320), Mark("x"), Clear()):
        assert wire.read(sent(other, event)).kind == "other", event
    assert wire.read(json.dumps({"event": "sendDTMF", "dtmf": "1"})).kind == "other"


def test_wire_speaks_as_plivo_does() -> None:
    wire = PlivoWire(2, custom={"caller": "+15550100"})
    assert (wire.provider, wire.path, wire.encoding, wire.sample_rate, wire.marks_on_clear) == \
        ("plivo", "/telephone/plivo", "mulaw", 8000, False)
    start, = (json.loads(m) for m in wire.opening())
    assert start["sequenceNumber"] == 1 and start["extra_headers"] == "caller=+15550100"
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000}
    m1, m2 = json.loads(wire.media(b"\xff" * 160)), json.loads(wire.media(b"\xff" * 160))
    assert (m1["sequenceNumber"], m2["sequenceNumber"]) == (2, 3)
    assert (m1["media"]["chunk"], m2["media"]["chunk"]) == (1, 2)
    assert int(m2["media"]["timestamp"]) - int(m1["media"]["timestamp"]) == 20  # Unix ms, as strings
    assert m1["streamId"] == wire.stream_id and m1["media"]["track"] == "inbound"
    assert json.loads(wire.played("r"))["name"] == "r"
    assert json.loads(wire.cleared()) == {"event": "clearedAudio", "sequenceNumber": 5, "streamId": wire.stream_id}
    # distinct calls, distinct ids
    assert len({PlivoWire(n).stream_id for n in range(50)} | {PlivoWire(n).call_id for n in range(50)}) == 100
    for encoding, rate in (("alaw", 8000), ("mulaw", 16000), ("pcm16", 24000)):
        with pytest.raises(ValueError):
            PlivoWire(encoding=encoding, sample_rate=rate)
