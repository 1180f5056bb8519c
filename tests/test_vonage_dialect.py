"""The Vonage Voice API WebSocket dialect, sans I/O: Vonage's messages in, events out; events in, messages out.

The socket side (real calls, pacing, barge-in, hang-up) is tests/test_providers.py's, with the same wire
(tests/peers/vonage.py) that is checked against the dialect here.
"""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import random
from typing import Any

import peers
import pytest
from peers.twilio import TwilioWire
from peers.vonage import VonageWire

import wsstream.dialects
from wsstream.codecs import AudioFormat
from wsstream.config import StreamConfig
from wsstream.dialects.base import MAX_LEAD_MS, MIN_LEAD_MS, ProtocolError
from wsstream.dialects.twilio import TwilioDialect
from wsstream.dialects.vonage import VonageDialect
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


def connected(content_type: Any = "audio/l16;rate=16000", **headers: Any) -> str:
    msg: dict[str, Any] = {"event": "websocket:connected"}
    if content_type is not None:
        msg["content-type"] = content_type
    return json.dumps({**msg, **headers})


def start_of(events: list[Any]) -> Start:
    (start,) = [e for e in events if isinstance(e, Start)]
    return start


def notices(events: list[Any]) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice)]


def metrics(events: list[Any]) -> set[str]:
    return {n.metric for n in notices(events) if n.metric}


# ---- setup ---------------------------------------------------------------------------


@pytest.mark.parametrize("lead", [20.0, 160.0, 5000.0])
def test_setup_is_l16_16k_with_padded_20_ms_frames_and_a_bounded_lead(lead: float) -> None:
    async def reply(audio: Any):
        yield audio

    setup = VonageDialect().setup("", ReplyOnPause(fn=reply), StreamConfig(lead_ms=lead))
    assert setup.input_format == AudioFormat("pcm16", 16000) and setup.output_format is None
    assert setup.config.frame_ms == 20.0 and setup.config.pad_last_frame
    assert MIN_LEAD_MS <= setup.config.lead_ms <= MAX_LEAD_MS
    assert VonageDialect.binary_audio and VonageDialect.path == "/telephone/vonage" and VonageDialect.name == "vonage"


# ---- websocket:connected: the Start --------------------------------------------------


def test_connected_starts_the_stream_with_the_headers_as_custom_parameters() -> None:
    # the docs' example headers: strings, a number, an object, a list, a boolean, all at the top level
    headers = {"uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "name": "J Doe", "age": 40,
               "address": {"line_1": "Apartment 14", "city": "New York City"},
               "system_roles": [183493, 1038492, 22], "enable_auditing": False}
    dialect = VonageDialect()
    events = dialect.parse(connected("audio/l16;rate=16000", **headers))
    start = start_of(events)
    fmt = AudioFormat("pcm16", 16000)
    assert start.format == fmt and start.output_format == fmt  # the reply goes back as the call's own audio
    assert start.client_id == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
    assert start.context == {"uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "contentType": "audio/l16;rate=16000",
                             "sampleRate": 16000, "customParameters": headers}
    assert [n.level for n in notices(events)] == [logging.INFO] and not metrics(events)
    assert events[0] is start  # the format is set before anything else is read


@pytest.mark.parametrize(("content_type", "rate"), [
    ("audio/l16;rate=16000", 16000),
    ("audio/l16;rate=8000", 8000),
    ("audio/l16;rate=24000", 24000),  # not in the guide, used by some integrations
    ("Audio/L16; rate=8000", 8000),
    ("audio/l16;rate=8000;channels=1", 8000),
    ("audio/l16", 16000),  # no rate: Vonage's usual
])
def test_each_rate_vonage_offers(content_type: str, rate: int) -> None:
    events = VonageDialect().parse(connected(content_type))
    start = start_of(events)
    assert start.format == start.output_format == AudioFormat("pcm16", rate)
    assert start.context["sampleRate"] == rate and not metrics(events)


def test_a_rate_vonage_does_not_document_is_used_with_a_warning() -> None:
    events = VonageDialect().parse(connected("audio/l16;rate=44100"))
    assert start_of(events).format == AudioFormat("pcm16", 44100)
    assert metrics(events) == {"vonage_unusual_rate"}


@pytest.mark.parametrize("content_type", [
    "audio/l16;rate=inf", "audio/l16;rate=nan", "audio/l16;rate=-inf", "audio/l16;rate=1e12",
    "audio/l16;rate=99999999999999999999999", "audio/l16;rate=abc", "audio/l16;rate=", "audio/l16;rate=0",
    "audio/l16;rate=96000", "audio/l16;rate=4000", "audio/pcmu;rate=8000", "audio/x-mulaw", "", 16000, 1e308,
    ["audio/l16"], {"rate": 8000}, True,
])
def test_a_bad_content_type_falls_back_to_16k_with_an_error_notice(content_type: Any) -> None:
    events = VonageDialect().parse(connected(content_type))
    start = start_of(events)
    assert start.format == start.output_format == AudioFormat("pcm16", 16000)
    (bad,) = [n for n in notices(events) if n.metric == "vonage_bad_content_type"]
    assert bad.level == logging.ERROR and "assuming audio/l16;rate=16000" in bad.message


def test_no_content_type_at_all_is_noted_and_assumed_16k() -> None:
    events = VonageDialect().parse(connected(None))
    assert start_of(events).format == AudioFormat("pcm16", 16000)
    assert metrics(events) == {"vonage_bad_content_type"}


@pytest.mark.parametrize(("headers", "client_id"), [
    ({}, None),
    ({"language": "en-GB", "caller-id": "447700900123"}, None),  # the docs' example: no call id in it
    ({"call_uuid": "c-1"}, "c-1"),
    ({"conversation_uuid": "CON-1", "call_uuid": "c-1"}, "c-1"),
    ({"uuid": "u-1", "call_uuid": "c-1"}, "u-1"),
    ({"uuid": 7, "conversation_uuid": "CON-1"}, "CON-1"),  # a non-string is not an id
    ({"uuid": ""}, None),
    ({"uuid": "x" * 1000}, None),
    ({"uuid": None}, None),
])
def test_the_client_id_is_a_call_id_header_if_there_is_one(headers: dict[str, Any], client_id: str | None) -> None:
    dialect = VonageDialect()
    start = start_of(dialect.parse(connected(**headers)))
    assert start.client_id == client_id == dialect.call_uuid == start.context["uuid"]
    assert start.context["customParameters"] == headers


# ---- audio -----------------------------------------------------------------------------


def test_binary_frames_are_the_audio_as_is() -> None:
    dialect = VonageDialect()
    frame = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms at 16 kHz
    assert dialect.audio(frame) is frame  # the hot path: no copy, no wrapping
    assert dialect.parse(frame) == [AudioIn(frame)]
    assert dialect.parse(bytearray(320)) == [AudioIn(bytes(320))]
    assert dialect.parse(b"") == []


def test_an_odd_binary_frame_is_a_non_fatal_protocol_error_in_parse() -> None:
    with pytest.raises(ProtocolError) as exc:
        VonageDialect().parse(b"\x00" * 641)
    assert not exc.value.fatal and "641" in str(exc.value)


# ---- DTMF, notify, cleared, unknown ------------------------------------------------------


@pytest.mark.parametrize("digit", list("0123456789*#"))
def test_dtmf_each_digit(digit: str) -> None:
    events = VonageDialect().parse(json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260}))
    assert events[-1] == Dtmf(digit)
    (note,) = notices(events)
    assert note.metric == "vonage_dtmf" and note.level == logging.DEBUG and "260 ms" in note.message


def test_dtmf_without_a_duration_is_fine() -> None:
    events = VonageDialect().parse(json.dumps({"event": "websocket:dtmf", "digit": "5"}))
    assert events[-1] == Dtmf("5") and metrics(events) == {"vonage_dtmf"}


@pytest.mark.parametrize("duration", ["Infinity", "-Infinity", "NaN", "1e300", "1e9", "-5", "0", '"abc"', "true",
                                      "[260]", '{"ms": 260}'])
def test_a_bad_dtmf_duration_is_noted_and_the_digit_still_counts(duration: str) -> None:
    message = '{"event": "websocket:dtmf", "digit": "7", "duration": ' + duration + "}"
    events = VonageDialect().parse(message)
    assert events[-1] == Dtmf("7")
    assert metrics(events) == {"vonage_dtmf", "vonage_bad_dtmf_duration"}


def test_a_numeric_string_duration_is_read_as_a_number() -> None:
    events = VonageDialect().parse(json.dumps({"event": "websocket:dtmf", "digit": "9", "duration": "260"}))
    assert events[-1] == Dtmf("9") and metrics(events) == {"vonage_dtmf"}


@pytest.mark.parametrize("msg", [
    {"event": "websocket:dtmf"},
    {"event": "websocket:dtmf", "digit": 5},
    {"event": "websocket:dtmf", "digit": ""},
    {"event": "websocket:dtmf", "digit": "55"},
    {"event": "websocket:dtmf", "digit": "x"},
    {"event": "websocket:dtmf", "digit": None},
    {"event": "websocket:dtmf", "dtmf": {"digit": "5"}},  # Twilio's shape, not Vonage's
])
def test_a_dtmf_without_a_digit_is_a_non_fatal_protocol_error(msg: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as exc:
        VonageDialect().parse(json.dumps(msg))
    assert not exc.value.fatal


def test_notify_with_our_payload_is_the_marker_played() -> None:
    dialect = VonageDialect()
    assert dialect.parse(json.dumps({"event": "websocket:notify", "payload": {"mark": "reply-1"}})) == [
        MarkPlayed("reply-1")]


def test_someone_elses_notify_is_noted_not_a_marker() -> None:
    events = VonageDialect().parse(json.dumps({"event": "websocket:notify", "payload": {"customKey": "customValue"}}))
    assert metrics(events) == {"vonage_foreign_notify"} and len(events) == 1


@pytest.mark.parametrize("msg", [
    {"event": "websocket:notify"},
    {"event": "websocket:notify", "payload": "reply-1"},
    {"event": "websocket:notify", "payload": ["reply-1"]},
    {"event": "websocket:notify", "payload": {"mark": 1}},
    {"event": "websocket:notify", "payload": {"mark": None}},
    {"event": "websocket:notify", "payload": {"mark": {"name": "reply-1"}}},
])
def test_a_malformed_notify_is_a_non_fatal_protocol_error(msg: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as exc:
        VonageDialect().parse(json.dumps(msg))
    assert not exc.value.fatal


def test_cleared_is_noted() -> None:
    events = VonageDialect().parse(json.dumps({"event": "websocket:cleared"}))
    (note,) = events
    assert isinstance(note, Notice) and note.metric == "vonage_cleared" and note.level == logging.DEBUG


@pytest.mark.parametrize("msg", [
    {"event": "websocket:something_new", "x": 1},
    {"event": "websocket:disconnected"},  # a webhook status, not a socket message; noted if it ever comes
    {"no_event": True},
    {"event": ["websocket:connected"]},
    {"event": "x" * 10_000},
    {"action": "notify", "payload": {}},  # our own command, echoed: not Vonage's
])
def test_an_unknown_message_is_a_notice(msg: dict[str, Any]) -> None:
    events = VonageDialect().parse(json.dumps(msg))
    (note,) = events
    assert isinstance(note, Notice) and note.metric == "vonage_unknown_events" and len(note.message) < 100


@pytest.mark.parametrize("message", ["not json", "", "{", "[1, 2]", '"websocket:connected"', "null", "42",
                                     "[" * 5000, "{" * 5000, '{"event": "websocket:dtmf", "digit": "1"'])
def test_malformed_text_is_a_non_fatal_protocol_error(message: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        VonageDialect().parse(message)
    assert not exc.value.fatal


def test_no_message_raises_anything_but_a_protocol_error() -> None:
    """Every event type with every kind of value in every field Vonage's messages have."""
    values: list[Any] = [None, True, 0, -1, 1e308, float("inf"), float("nan"), "", "x", "5", "#", "reply-1",
                         "audio/l16;rate=8000", "audio/l16;rate=nan", [], [1], {}, {"mark": "m"}, {"mark": 5},
                         "\udcff", "\x00", "9" * 400]
    events = ["websocket:connected", "websocket:dtmf", "websocket:notify", "websocket:cleared", "other", None]
    fields = ["content-type", "digit", "duration", "payload", "uuid", "call_uuid", "conversation_uuid"]
    rng = random.Random(20)
    for _ in range(3000):
        msg: dict[str, Any] = {"event": rng.choice(events)}
        for field in rng.sample(fields, rng.randint(0, len(fields))):
            msg[field] = rng.choice(values)
        dialect = VonageDialect()
        try:
            out = dialect.parse(json.dumps(msg))
        except ProtocolError as exc:
            assert not exc.fatal, msg
            continue
        assert isinstance(out, list), msg
        for event in out:
            if isinstance(event, Start):
                assert event.format is not None and event.format.encoding == "pcm16", msg
                json.dumps(event.context)  # what the reply context gets is plain JSON


# ---- outbound ----------------------------------------------------------------------------


def test_dialect_sends_nothing_but_audio_notify_clear() -> None:
    dialect = VonageDialect()
    frame = b"\x01\x02" * 160  # 20 ms at 8 kHz
    assert dialect.serialize(AudioOut(frame)) == frame  # binary, as it is
    dialect.parse(connected("audio/l16;rate=8000", uuid="u-1"))
    assert dialect.serialize(AudioOut(frame)) == frame
    for event in (Log("pause_detected", {"t": 1.0}), VadTrace([0.1], 0.0), FetchOutput(["x"]),
                  Refused("concurrency_limit_reached", 1), Error("bad"), Warning("careful"), Pong(), Close(1000)):
        assert dialect.serialize(event) is None, event
    assert json.loads(dialect.serialize(Mark("reply-1"))) == {  # type: ignore[arg-type]
        "action": "notify", "payload": {"mark": "reply-1"}}
    assert json.loads(dialect.serialize(Clear())) == {"action": "clear"}  # type: ignore[arg-type]
    assert isinstance(dialect.serialize(Mark("m")), str) and isinstance(dialect.serialize(Clear()), str)


def test_a_marker_name_round_trips_through_notify_whatever_it_holds() -> None:
    dialect = VonageDialect()
    for name in ("reply-1", "", "ünïcode ✓", '"quoted"', "x" * 500):
        sent = json.loads(dialect.serialize(Mark(name)))  # type: ignore[arg-type]
        echoed = json.dumps({"event": "websocket:notify", "payload": sent["payload"]})
        assert dialect.parse(echoed) == [MarkPlayed(name)]


# ---- recognises ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
def test_recognises_vonages_first_message_as_the_wire_sends_it(rate: int) -> None:
    for wire in (VonageWire(sample_rate=rate), VonageWire(4, custom={"lang": "en", "file": "dialog_00.flac"},
                                                          sample_rate=rate)):
        (first,) = wire.opening()
        assert VonageDialect.recognises(json.loads(first))
    assert VonageDialect.recognises(json.loads(connected("Audio/L16;rate=16000", language="en-GB")))


def siblings(package: Any) -> list[Any]:
    """The modules of a package (other providers' wires and dialects are written beside ours)."""
    return [importlib.import_module(f"{package.__name__}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]


def is_protocol(cls: type) -> bool:
    return bool(getattr(cls, "_is_protocol", False))  # peers.base.Wire, telephony.Provider: not providers


def other_wires() -> list[type]:
    found = {*getattr(peers, "WIRES", {}).values()}
    for module in siblings(peers):
        found |= {v for k, v in vars(module).items() if k.endswith("Wire") and isinstance(v, type)
                  and hasattr(v, "opening") and v.__module__ == module.__name__ and not is_protocol(v)}
    return sorted(found - {VonageWire}, key=lambda c: c.__name__)


def other_providers() -> list[type]:
    found = set(getattr(wsstream.dialects, "PROVIDERS", ()))
    for module in siblings(wsstream.dialects):
        found |= {v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
                  and isinstance(vars(v).get("recognises"), staticmethod) and not is_protocol(v)}
    return sorted(found - {VonageDialect}, key=lambda c: c.__name__)


# First messages of the other providers, as their docs show them (ids made up).
OTHERS: list[dict[str, Any]] = [
    {"event": "connected"},
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},  # Twilio, and Telnyx's
    {"event": "start", "sequence_number": "1", "stream_id": "32de0dea-53cb-4b21-89a4-9324396b4d7f",
     "start": {"user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY",
               "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d", "call_session_id": "ff55a038",
               "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}},  # Telnyx
    {"event": "start", "sequence_number": 1, "stream_sid": "b5d4f4e0c0e14a5f", "start": {
        "stream_sid": "b5d4f4e0c0e14a5f", "call_sid": "0f5a2c1d", "account_sid": "exotel1", "from": "0987654321",
        "to": "0123456789", "custom_parameters": {}, "media_format": {
            "encoding": "base64", "sample_rate": "8000", "bit_rate": "128kbps"}}},  # Exotel
    {"event": "start", "sequenceNumber": 0, "start": {
        "callId": "a6a5cd4e-b4f6-11ee-9f16-0242ac110002", "streamId": "20170ada-f610-433b-8758-c02a2aab3662",
        "accountId": "MA0000000000000001", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}, "extra_headers": "{}"},  # Plivo
    {"event": "websocket:connected"},  # Vonage's name without its content-type: not unmistakable
    {"event": "websocket:connected", "content-type": "audio/pcmu;rate=8000"},
    {"event": "websocket:connected", "content-type": 16000},
    {"event": "websocket:dtmf", "digit": "5", "duration": 260},  # Vonage's, but never a first message
    {"event": "media", "media": {"payload": ""}},
    {"type": "start", "data": {}},
    {},
]


def test_recognises_no_other_providers_first_messages() -> None:
    for n, encoding in ((1, "mulaw"), (2, "alaw")):
        for message in TwilioWire(n, encoding=encoding, custom={"caller": "+15550100"}).opening():
            assert not VonageDialect.recognises(json.loads(message)), message
    for wire_class in other_wires():  # every other provider's wire there is
        for message in wire_class(3, custom={"x": "y"}).opening():
            if isinstance(message, str):
                msg = json.loads(message)
                assert not isinstance(msg, dict) or not VonageDialect.recognises(msg), (wire_class, message)
    for msg in OTHERS:
        assert not VonageDialect.recognises(msg), msg


@pytest.mark.parametrize("value", [None, "websocket:connected", b"{}", 5, ["websocket:connected"],
                                   ("event", "websocket:connected"), {"event": None}, {1: 2}])
def test_recognises_says_false_for_anything_not_a_vonage_dict_and_never_raises(value: Any) -> None:
    assert VonageDialect.recognises(value) is False


def test_no_other_provider_recognises_vonages_first_message() -> None:
    (first,) = VonageWire(5, custom={"caller": "+15550100"}).opening()
    msg = json.loads(first)
    others = other_providers()
    assert TwilioDialect in others
    for dialect in others:
        assert not dialect.recognises(msg), dialect


# ---- round trip through the wire -----------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
def test_round_trip_through_the_wire(rate: int) -> None:
    wire = VonageWire(3, custom={"caller": "+15550100", "lang": "en"}, sample_rate=rate)
    assert wire.path == VonageDialect.path and wire.encoding == "pcm16" and wire.sample_rate == rate
    assert wire.frame_bytes == rate // 50 * 2 and not wire.marks_on_clear
    dialect = VonageDialect()
    (first,) = wire.opening()
    assert isinstance(first, str)
    events = dialect.parse(first)
    start = start_of(events)
    assert start.format == start.output_format == AudioFormat("pcm16", rate)
    assert start.client_id == wire.call_uuid
    assert start.context["customParameters"] == wire.headers == {"uuid": wire.call_uuid, **wire.custom}
    # the caller's audio: binary, through ``audio`` as the drivers hand it over
    frame = bytes(range(256)) * (wire.frame_bytes // 256) + bytes(wire.frame_bytes % 256)
    message = wire.media(frame)
    assert isinstance(message, bytes) and dialect.audio(message) == frame
    assert dialect.parse(wire.dtmf("#"))[-1] == Dtmf("#")
    # what the server sends, as the wire reads it
    got = wire.read(dialect.serialize(AudioOut(frame)))  # type: ignore[arg-type]
    assert got.kind == "media" and got.payload == frame
    got = wire.read(dialect.serialize(Mark("reply-1")))  # type: ignore[arg-type]
    assert got.kind == "mark" and got.name == "reply-1"
    assert dialect.parse(wire.played("reply-1")) == [MarkPlayed("reply-1")]  # Vonage echoes our payload
    got = wire.read(dialect.serialize(Clear()))  # type: ignore[arg-type]
    assert got.kind == "clear"
    assert metrics(dialect.parse(wire.cleared())) == {"vonage_cleared"}
    assert wire.stop() is None  # Vonage hangs up by closing the socket: no Stop event to send
    assert not any(isinstance(e, Stop) for e in events)


def test_distinct_calls_have_distinct_ids() -> None:
    ids = {VonageWire(n).call_uuid for n in range(1, 200)}
    assert len(ids) == 199
    assert VonageWire(1).call_uuid == "aaaaaaaa-bbbb-cccc-dddd-000000000001"


def test_the_wire_reads_every_kind_of_serialized_event() -> None:
    from tests.peers.vonage import VonageWire as WireByPackagePath

    dialect = VonageDialect()
    dialect.parse(VonageWire().opening()[0])
    wire = WireByPackagePath()
    kinds = {}
    for event in (AudioOut(b"\x00" * 640), Mark("reply-2"), Clear(), Log("pause_detected"), VadTrace([0.5], 0.1),
                  FetchOutput([1]), Error("e"), Warning("w"), Pong(), Close(1000), Refused("full", 1)):
        message = dialect.serialize(event)
        if message is not None:
            kinds[type(event).__name__] = wire.read(message).kind
    assert kinds == {"AudioOut": "media", "Mark": "mark", "Clear": "clear"}
    assert wire.read(json.dumps({"action": "notify", "payload": {"other": 1}})).kind == "other"
    assert wire.read("not json").kind == "other" and wire.read("[1]").kind == "other"
    assert wire.read(json.dumps({"action": "something"})).kind == "other"


def test_the_wire_speaks_only_l16() -> None:
    with pytest.raises(ValueError):
        VonageWire(encoding="mulaw")
