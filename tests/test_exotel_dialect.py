"""The Exotel Voicebot dialect without sockets: wire messages in, core events out, and back.

Exotel's side is the scripted wire of tests/peers/exotel.py (what the socket
tests run against the server); here every message kind goes through the
dialect alone, with the formats Exotel offers, the odd and malformed messages a
bridge may send, and the other providers' first messages, which must never be
taken for Exotel's.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from typing import Any

import numpy as np
import peers
import pytest
from peers.base import Received
from peers.exotel import ExotelWire
from peers.twilio import TwilioWire

from wsstream.codecs import AudioFormat, encode
from wsstream.config import StreamConfig
from wsstream.dialects.base import ProtocolError
from wsstream.dialects.exotel import ExotelDialect, reply_frame_ms
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
from wsstream.playout import FrameEncoder
from wsstream.reply import ReplyOnPause

APP = ReplyOnPause(fn=lambda audio: None)
SID = "MZ000000000000000000000007"


def opened(query: str = "", wire: ExotelWire | None = None) -> tuple[ExotelDialect, list[Any]]:
    """A dialect set up as the driver sets it up, fed the wire's opening; the events of the opening."""
    dialect = ExotelDialect()
    dialect.setup(query, APP, StreamConfig())
    events: list[Any] = []
    for message in (wire or ExotelWire(7)).opening():
        events += dialect.parse(message)
    return dialect, events


def start_msg(media_format: Any = None, **start: Any) -> str:
    body: dict[str, Any] = {"stream_sid": SID, "call_sid": "CA1", "account_sid": "AC1", **start}
    if media_format is not None:
        body["media_format"] = media_format
    return json.dumps({"event": "start", "sequence_number": "1", "stream_sid": SID, "start": body})


def started(media_format: Any = None, query: str = "") -> tuple[Start, list[Notice]]:
    dialect = ExotelDialect()
    dialect.setup(query, APP, StreamConfig())
    events = dialect.parse(start_msg(media_format))
    starts = [e for e in events if isinstance(e, Start)]
    assert len(starts) == 1, events
    return starts[0], [e for e in events if isinstance(e, Notice)]


def notices(events: list[Any], metric: str) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice) and e.metric == metric]


# ---- setup: the URL's rate, and frames of Exotel's minimum size ------------------------


@pytest.mark.parametrize(("query", "rate", "frame_ms"), [
    ("", 8000, 200.0), ("sample-rate=8000", 8000, 200.0), ("sample-rate=16000", 16000, 100.0),
    ("sample-rate=24000", 24000, 80.0), ("sample_rate=16000", 16000, 100.0),
    ("file=x&sample-rate=24000&lang=hi", 24000, 80.0),
])
def test_setup_takes_the_urls_rate_and_sizes_frames_for_exotel(query: str, rate: int, frame_ms: float) -> None:
    dialect = ExotelDialect()
    setup = dialect.setup(query, APP, StreamConfig(lead_ms=500))
    assert setup.input_format == AudioFormat("pcm16", rate) and setup.output_format is None
    assert setup.config.frame_ms == frame_ms and setup.config.pad_last_frame
    assert setup.config.lead_ms == 200.0  # the telephony lead: at most 200 ms ahead
    assert dialect.parse(json.dumps({"event": "connected"})) == [Notice("connected", level=logging.DEBUG)]


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_reply_frames_are_at_least_3200_bytes_in_multiples_of_320(rate: int) -> None:
    frame_ms = reply_frame_ms(rate)
    encoder = FrameEncoder(AudioFormat("pcm16", rate), frame_ms)
    frames = encoder.push(rate, np.arange(rate, dtype=np.int16)) + encoder.flush(pad=True)  # one second
    sizes = {len(f) for f in frames}
    assert len(sizes) == 1, sizes
    size = sizes.pop()
    assert size >= 3200 and size % 320 == 0 and size <= 100_000, (rate, size)
    assert frame_ms - 20 < 3200 / (rate * 2) * 1000  # and no longer than it needs to be
    assert ExotelWire(sample_rate=rate).reply_frame_ms == frame_ms


@pytest.mark.parametrize("value", ["abc", "inf", "nan", "-inf", "1e400", "99999999999", "0", "-8000", "5000",
                                   "", "8000abc"])
def test_a_bad_sample_rate_on_the_url_falls_back_to_8000_with_a_notice(value: str) -> None:
    dialect = ExotelDialect()
    setup = dialect.setup(f"sample-rate={value}", APP, StreamConfig())
    assert setup.input_format == AudioFormat("pcm16", 8000) and setup.config.frame_ms == 200.0
    events = dialect.parse(json.dumps({"event": "connected"}))  # said with the first message
    bad = notices(events, "exotel_bad_sample_rate")
    assert len(bad) == 1 and bad[0].level == logging.ERROR, events
    assert dialect.parse(json.dumps({"event": "connected"})) == [Notice("connected", level=logging.DEBUG)]


def test_an_undocumented_rate_on_the_url_is_used_with_a_warning() -> None:
    dialect = ExotelDialect()
    setup = dialect.setup("sample-rate=44100", APP, StreamConfig())
    assert setup.input_format == AudioFormat("pcm16", 44100)
    events = dialect.parse(json.dumps({"event": "connected"}))
    assert len(notices(events, "exotel_undocumented_rate")) == 1


# ---- start: the stream, its format, its metadata ----------------------------------------


def test_start_gives_the_stream_its_format_id_and_call_metadata() -> None:
    wire = ExotelWire(7, custom={"caller": "+15550100", "lang": "hi"})
    dialect, events = opened(wire=wire)
    assert isinstance(events[0], Notice) and events[0].message == "connected"
    start = events[1]
    assert isinstance(start, Start)
    assert start.format == start.output_format == AudioFormat("pcm16", 8000)
    assert start.client_id == wire.stream_sid == dialect.stream_sid
    assert start.context == {
        "stream_sid": wire.stream_sid, "call_sid": wire.call_sid, "account_sid": "AC" + "0" * 23 + "1",
        "from": wire.caller, "to": "+918047000100", "custom_parameters": {"caller": "+15550100", "lang": "hi"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
    }
    assert isinstance(events[2], Notice) and wire.call_sid in events[2].message and events[2].level == logging.INFO
    assert len(events) == 3, events  # nothing else to say


@pytest.mark.parametrize(("media_format", "expected"), [
    ({"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}, AudioFormat("pcm16", 8000)),
    ({"encoding": "audio/x-raw", "sample_rate": "16000", "bit_rate": "16"}, AudioFormat("pcm16", 16000)),
    ({"encoding": "audio/x-raw", "sample_rate": "24000", "bit_rate": "16"}, AudioFormat("pcm16", 24000)),
    ({"encoding": "raw", "sample_rate": "8000", "bit_rate": "128"}, AudioFormat("pcm16", 8000)),  # the older page
    ({"encoding": "base64", "sample_rate": 16000}, AudioFormat("pcm16", 16000)),
    ({"encoding": "audio/L16;rate=16000"}, AudioFormat("pcm16", 16000)),  # a content type's own rate
    ({"encoding": "audio/L16; rate=24000", "sample_rate": "24000"}, AudioFormat("pcm16", 24000)),
    ({"encoding": "slin", "sample_rate": 8000.0}, AudioFormat("pcm16", 8000)),
    ({"sample_rate": "16000"}, AudioFormat("pcm16", 16000)),  # no encoding: the applet's PCM
    ({"encoding": "audio/x-mulaw;rate=8000"}, AudioFormat("mulaw", 8000)),
    ({"encoding": "audio/x-mulaw", "sample_rate": "8000"}, AudioFormat("mulaw", 8000)),
    ({"encoding": "audio/x-alaw", "sample_rate": "8000"}, AudioFormat("alaw", 8000)),
    ({"encoding": "PCMU", "sample_rate": "8000"}, AudioFormat("mulaw", 8000)),
])
def test_start_formats(media_format: dict[str, Any], expected: AudioFormat) -> None:
    query = f"sample-rate={expected.sample_rate}"  # (the URL asks for the same rate: no mismatch to note)
    start, notes = started(media_format, query)
    assert start.format == start.output_format == expected
    assert [n for n in notes if n.level > logging.INFO] == [], notes


def test_each_wire_format_round_trips() -> None:
    for encoding in ("pcm16", "mulaw", "alaw"):
        for rate in ((8000, 16000, 24000) if encoding == "pcm16" else (8000,)):
            wire = ExotelWire(1, encoding=encoding, sample_rate=rate)
            _, events = opened(wire.path.partition("?")[2], wire)
            start = next(e for e in events if isinstance(e, Start))
            assert start.format == AudioFormat(encoding, rate), (encoding, rate)
            assert not [e for e in events if isinstance(e, Notice) and e.level > logging.INFO], events


def test_no_media_format_means_pcm16_at_the_urls_rate() -> None:
    start, notes = started(None, "sample-rate=16000")
    assert start.format == AudioFormat("pcm16", 16000) and start.context["media_format"] is None
    assert [n.level for n in notes] == [logging.INFO]


@pytest.mark.parametrize("media_format", [
    "audio/x-raw", ["audio/x-raw"], 8000, True,
    {"encoding": "audio/opus", "sample_rate": "8000"},
    {"encoding": 16, "sample_rate": "8000"},
    {"encoding": "", "sample_rate": "8000"},
    {"encoding": "audio/x-raw", "sample_rate": "inf"},
    {"encoding": "audio/x-raw", "sample_rate": "nan"},
    {"encoding": "audio/x-raw", "sample_rate": "-inf"},
    {"encoding": "audio/x-raw", "sample_rate": "1e400"},
    {"encoding": "audio/x-raw", "sample_rate": 1e308},
    {"encoding": "audio/x-raw", "sample_rate": 10**400},
    {"encoding": "audio/x-raw", "sample_rate": "99999999999"},
    {"encoding": "audio/x-raw", "sample_rate": "eight thousand"},
    {"encoding": "audio/x-raw", "sample_rate": ""},
    {"encoding": "audio/x-raw", "sample_rate": True},
    {"encoding": "audio/x-raw", "sample_rate": [8000]},
    {"encoding": "audio/x-raw", "sample_rate": {"hz": 8000}},
    {"encoding": "audio/x-raw", "sample_rate": "0"},
    {"encoding": "audio/x-raw", "sample_rate": "-16000"},
    {"encoding": "audio/x-raw", "sample_rate": "4000"},
    {"encoding": "audio/x-raw", "sample_rate": "96000"},
    {"encoding": "audio/L16;rate=fast"},
])
def test_a_bad_media_format_falls_back_to_the_urls_format_never_fatal(media_format: Any) -> None:
    for query, rate in (("", 8000), ("sample-rate=16000", 16000)):
        dialect = ExotelDialect()
        dialect.setup(query, APP, StreamConfig())
        msg = start_msg() if media_format is None else json.dumps(
            {"event": "start", "stream_sid": SID, "start": {"stream_sid": SID, "call_sid": "CA1",
                                                            "media_format": media_format}})
        events = dialect.parse(msg)
        start = next(e for e in events if isinstance(e, Start))
        assert start.format == start.output_format == AudioFormat("pcm16", rate), media_format
        bad = notices(events, "exotel_bad_media_format")
        assert len(bad) == 1 and bad[0].level == logging.ERROR, events
        assert dialect.stream_sid == SID  # the call goes on


def test_start_rate_wins_over_the_urls_with_a_warning() -> None:
    start, notes = started({"encoding": "audio/x-raw", "sample_rate": "16000"}, "sample-rate=8000")
    assert start.format == AudioFormat("pcm16", 16000)
    mismatch = [n for n in notes if n.metric == "exotel_rate_mismatch"]
    assert len(mismatch) == 1 and "16000" in mismatch[0].message and mismatch[0].level == logging.WARNING, notes


def test_an_undocumented_rate_in_start_is_used_with_a_warning() -> None:
    start, notes = started({"encoding": "audio/x-raw", "sample_rate": "32000"}, "sample-rate=32000")
    assert start.format == AudioFormat("pcm16", 32000)
    assert [n.metric for n in notes if n.level >= logging.WARNING] == ["exotel_undocumented_rate"]


def test_camel_case_ids_are_taken_on_exotels_own_path() -> None:
    dialect = ExotelDialect()
    dialect.setup("", APP, StreamConfig())
    events = dialect.parse(json.dumps({"event": "start", "streamSid": "MZ9", "start": {
        "streamSid": "MZ9", "callSid": "CA9", "accountSid": "AC9", "customParameters": {"k": "v"},
        "mediaFormat": {"encoding": "audio/x-raw", "sampleRate": 16000}}}))
    start = events[0]
    assert isinstance(start, Start) and start.client_id == "MZ9" and start.format == AudioFormat("pcm16", 16000)
    assert start.context["call_sid"] == "CA9" and start.context["custom_parameters"] == {"k": "v"}


def test_custom_parameters_from_connected_join_starts() -> None:
    dialect = ExotelDialect()
    dialect.setup("", APP, StreamConfig())
    dialect.parse(json.dumps({"event": "connected", "custom_parameters": {"tenant": "t1", "lang": "en"}}))
    start = dialect.parse(start_msg(None, custom_parameters={"lang": "hi"}))[0]
    assert isinstance(start, Start) and start.context["custom_parameters"] == {"tenant": "t1", "lang": "hi"}


@pytest.mark.parametrize("custom", [None, "a=1,b=2", ["a"], 5])
def test_custom_parameters_that_are_not_an_object_are_empty(custom: Any) -> None:
    dialect = ExotelDialect()
    start = dialect.parse(start_msg(None, custom_parameters=custom))[0]
    assert isinstance(start, Start) and start.context["custom_parameters"] == {}


@pytest.mark.parametrize("message", [
    {"event": "start"},
    {"event": "start", "start": "MZ1"},
    {"event": "start", "start": ["MZ1"]},
    {"event": "start", "start": {"call_sid": "CA1"}},
    {"event": "start", "stream_sid": "", "start": {"stream_sid": ""}},
    {"event": "start", "stream_sid": 5, "start": {"call_sid": "CA1"}},
    {"event": "start", "start": {"stream_sid": ["MZ1"]}},
])
def test_a_start_without_a_stream_is_a_protocol_error(message: dict[str, Any]) -> None:
    dialect = ExotelDialect()
    with pytest.raises(ProtocolError) as info:
        dialect.parse(json.dumps(message))
    assert not info.value.fatal
    assert dialect.serialize(AudioOut(b"\x00" * 3200)) is None  # still nobody to address


# ---- media, marks, DTMF, stop, the rest -------------------------------------------------


def test_media_is_the_callers_audio_byte_for_byte() -> None:
    wire = ExotelWire(3)
    dialect, _ = opened(wire=wire)
    audio = encode(np.linspace(-20000, 20000, 8000).astype(np.int16), "pcm16")
    got = b""
    for off in range(0, len(audio), 320):
        events = dialect.parse(wire.media(audio[off:off + 320]))
        assert len(events) == 1 and isinstance(events[0], AudioIn), events
        got += events[0].data
    assert got == audio


def test_media_of_another_track_is_ignored_and_an_empty_payload_is_nothing() -> None:
    dialect, _ = opened()
    frame = base64.b64encode(b"\x01\x00" * 160).decode()
    for track in ("inbound", "inbound_track"):
        events = dialect.parse(json.dumps({"event": "media", "media": {"track": track, "payload": frame}}))
        assert events == [AudioIn(b"\x01\x00" * 160)]
    events = dialect.parse(json.dumps({"event": "media", "media": {"track": "outbound", "payload": frame}}))
    assert len(events) == 1 and events[0].metric == "exotel_media_other_track"
    assert dialect.parse(json.dumps({"event": "media", "media": {"payload": ""}})) == []


@pytest.mark.parametrize("message", [
    {"event": "media"},
    {"event": "media", "media": "AAAA"},
    {"event": "media", "media": {}},
    {"event": "media", "media": {"payload": None}},
    {"event": "media", "media": {"payload": 1234}},
    {"event": "media", "media": {"payload": "%%% not base64"}},
    {"event": "media", "media": {"payload": "AAA"}},
])
def test_bad_media_is_a_protocol_error(message: dict[str, Any]) -> None:
    dialect, _ = opened()
    with pytest.raises(ProtocolError) as info:
        dialect.parse(json.dumps(message))
    assert not info.value.fatal


def test_mark_reports_our_marker_played() -> None:
    wire = ExotelWire(2)
    dialect, _ = opened(wire=wire)
    assert dialect.parse(wire.played("reply-1")) == [MarkPlayed("reply-1")]
    for bad in ({"event": "mark"}, {"event": "mark", "mark": {}}, {"event": "mark", "mark": {"name": 3}},
                {"event": "mark", "mark": "reply-1"}):
        with pytest.raises(ProtocolError):
            dialect.parse(json.dumps(bad))


def test_dtmf_gives_the_digit() -> None:
    wire = ExotelWire(2)
    dialect, _ = opened(wire=wire)
    for digit in "0123456789*#":
        events = dialect.parse(wire.dtmf(digit))
        assert events[-1] == Dtmf(digit) and isinstance(events[0], Notice), events
        assert events[0].metric == "exotel_dtmf" and "100 ms" in events[0].message
    assert dialect.parse(json.dumps({"event": "dtmf", "dtmf": {"digit": 5}}))[-1] == Dtmf("5")
    assert dialect.parse(json.dumps({"event": "dtmf", "dtmf": {"digit": "a"}}))[-1] == Dtmf("A")
    # a duration that is no number is only left out of the log line
    for duration in ("inf", "nan", "1e400", "long", None, [1], True):
        events = dialect.parse(json.dumps({"event": "dtmf", "dtmf": {"digit": "7", "duration": duration}}))
        assert events[-1] == Dtmf("7") and events[0].message == "dtmf 7", events


@pytest.mark.parametrize("dtmf", [None, "5", {}, {"digit": ""}, {"digit": "55"}, {"digit": "x"}, {"digit": 12},
                                  {"digit": True}, {"digit": None}, {"digit": ["5"]}, {"digit": 5.0}])
def test_bad_dtmf_is_a_protocol_error(dtmf: Any) -> None:
    dialect, _ = opened()
    with pytest.raises(ProtocolError):
        dialect.parse(json.dumps({"event": "dtmf", "dtmf": dtmf}))


@pytest.mark.parametrize("stop", [{"call_sid": "CA1", "account_sid": "AC1", "reason": "callended"},
                                  {"call_sid": "CA1", "account_sid": "AC1", "reason": "stopped"},
                                  {}, None, "over"])
def test_stop_hangs_up_whatever_its_reason(stop: Any) -> None:
    dialect, _ = opened()
    events = dialect.parse(json.dumps({"event": "stop", "stream_sid": SID, "stop": stop}))
    assert events[-1] == Stop(finish=False) and isinstance(events[0], Notice) and events[0].level == logging.INFO
    if isinstance(stop, dict) and stop:
        assert stop["reason"] in events[0].message


def test_unknown_and_ignored_events_are_noted_not_errors() -> None:
    dialect, _ = opened()
    events = dialect.parse(json.dumps({"event": "something_new", "stream_sid": SID}))
    assert len(events) == 1 and events[0].metric == "exotel_unknown_events" and "something_new" in events[0].message
    for odd in ({"stream_sid": SID}, {"event": None}, {"event": 5}, {"event": ["media"]}, {"event": {"a": 1}},
                {"event": "x" * 10_000}):
        events = dialect.parse(json.dumps(odd))
        assert len(events) == 1 and events[0].metric == "exotel_unknown_events", odd
        assert len(events[0].message) < 80
    for known in ("clear", "silence"):
        events = dialect.parse(json.dumps({"event": known, "stream_sid": SID}))
        assert len(events) == 1 and isinstance(events[0], Notice) and events[0].level == logging.DEBUG


@pytest.mark.parametrize("message", [
    "not json", "", "{", "[1, 2]", "null", "42", '"start"', "[" * 5000, '{"event": "media", "media": ' * 3000,
    b"\x00\x01binary", b'{"event": "connected"}', "\ud800",
])
def test_malformed_messages_are_protocol_errors(message: str | bytes) -> None:
    dialect, _ = opened()
    with pytest.raises(ProtocolError) as info:
        dialect.parse(message)
    assert not info.value.fatal
    with pytest.raises(ProtocolError):
        dialect.audio(b"\x00\x00")


def test_whatever_exotel_sends_only_protocol_error_ever_escapes() -> None:
    """Exotel's own messages with every field swapped for odd JSON values, many times over."""
    rng = random.Random(7)
    odd: list[Any] = [None, True, 0, -1, 1e308, "", "x", "inf", "nan", "1e400", [], [1], {}, {"a": None},
                      "AAAA", "%%%", 8000, "16000", 10**30]
    wire = ExotelWire(5)
    originals = [json.loads(m) for m in (*wire.opening(), wire.media(b"\x00" * 320), wire.dtmf("1"),
                                         wire.played("reply-1"), wire.stop())]

    def mutate(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (rng.choice(odd) if rng.random() < 0.3 else mutate(v)) for k, v in value.items()}
        return value

    for _ in range(3000):
        dialect = ExotelDialect()
        dialect.setup(rng.choice(["", "sample-rate=inf", "sample-rate=16000", "sample-rate=&&"]), APP,
                      StreamConfig())
        for original in rng.sample(originals, 3):
            try:
                events = dialect.parse(json.dumps(mutate(original)))
            except ProtocolError:
                continue
            assert all(isinstance(e, AudioIn | Start | MarkPlayed | Dtmf | Stop | Notice) for e in events)
            for e in events:
                if isinstance(e, Start):
                    assert e.format == e.output_format and e.format is not None and e.client_id
                    json.dumps(e.context)  # plain JSON values, as the reply context shows them


# ---- outbound: media, mark, clear and nothing else ---------------------------------------


def test_nothing_is_sent_before_start() -> None:
    dialect = ExotelDialect()
    dialect.setup("", APP, StreamConfig())
    for event in (AudioOut(b"\x00" * 3200), Mark("reply-1"), Clear()):
        assert dialect.serialize(event) is None


def test_dialect_sends_nothing_but_media_mark_clear() -> None:
    dialect, _ = opened()
    for event in (Log("pause_detected", {"t": 1.0}), VadTrace([0.1], 0.0), FetchOutput(["x"]),
                  Refused("concurrency_limit_reached", 1), Error("bad"), Warning("careful"), Pong(), Close(1000)):
        assert dialect.serialize(event) is None, event
    frame = bytes(range(256)) * 12 + b"\x00" * 128  # 3200 bytes
    assert json.loads(dialect.serialize(AudioOut(frame))) == {  # type: ignore[arg-type]
        "event": "media", "stream_sid": SID, "media": {"payload": base64.b64encode(frame).decode()}}
    assert json.loads(dialect.serialize(Mark("reply-1"))) == {  # type: ignore[arg-type]
        "event": "mark", "stream_sid": SID, "mark": {"name": "reply-1"}}
    assert json.loads(dialect.serialize(Clear())) == {"event": "clear", "stream_sid": SID}  # type: ignore[arg-type]


# ---- recognises: Exotel's start, and nobody else's ---------------------------------------


def other_providers_openings() -> dict[str, list[str | bytes]]:
    """The first messages of every other provider: Twilio's wire (and any other wire in tests/peers), and,
    as their docs show them, Telnyx's, Plivo's and Vonage's."""
    openings: dict[str, list[str | bytes]] = {
        "twilio": TwilioWire(3, custom={"a": "b"}).opening() + TwilioWire(4, encoding="alaw").opening(),
        "telnyx": [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps({
            "event": "start", "sequence_number": "1", "stream_id": "32de0dea-53cb-4b21-89a4-9e2a6e8b0f1a",
            "start": {"user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": "v3:abc",
                      "call_session_id": "s1", "from": "+15550100", "to": "+15550101", "client_state": "aGk=",
                      "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}})],
        "plivo": [json.dumps({"event": "start", "sequenceNumber": 0, "start": {
            "callId": "c1", "streamId": "s1", "accountId": "a1", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}, "extra_headers": "{}"})],
        "vonage": [json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                               "uuid": "u1"}), b"\x00" * 640],
    }
    for name, wire in getattr(peers, "WIRES", {}).items():
        if name != "exotel":
            openings[f"wire:{name}"] = wire(9, custom={"k": "v"}).opening()
    return openings


def test_recognises_exotels_start_as_the_wire_sends_it() -> None:
    for wire in (ExotelWire(1), ExotelWire(2, custom={"a": "b"}), ExotelWire(3, sample_rate=16000),
                 ExotelWire(4, encoding="mulaw")):
        connected, start = (json.loads(m) for m in wire.opening())
        assert not ExotelDialect.recognises(connected)  # a bare connected is everybody's
        assert ExotelDialect.recognises(start)
        for later in (wire.media(b"\x00" * 320), wire.dtmf("1"), wire.played("x"), wire.stop()):
            assert not ExotelDialect.recognises(json.loads(later))


def test_recognises_no_other_providers_first_messages() -> None:
    for provider, messages in other_providers_openings().items():
        for message in messages:
            try:
                msg = json.loads(message)
            except (ValueError, UnicodeDecodeError):
                msg = message
            assert ExotelDialect.recognises(msg) is False, (provider, message)


@pytest.mark.parametrize("msg", [None, "start", b"start", 5, 1.5, True, [], ["start"], {}, {"event": "start"},
                                 {"event": "start", "start": None}, {"event": "start", "start": ["stream_sid"]},
                                 {"event": "start", "start": {"stream_sid": "MZ1"}},
                                 {"event": "start", "start": {"stream_sid": 1, "call_sid": 2}},
                                 {"event": "media", "start": {"stream_sid": "MZ1", "call_sid": "CA1"}},
                                 {"event": ["start"], "start": {}}, {"start": {"stream_sid": "MZ1", "call_sid": "C"}}])
def test_recognises_says_false_never_raises(msg: Any) -> None:
    assert ExotelDialect.recognises(msg) is False


# ---- a round trip through the wire --------------------------------------------------------


def test_round_trip_through_the_wire() -> None:
    """The wire's messages parse to the right events; what the dialect sends, the wire reads as meant."""
    wire = ExotelWire(11, custom={"file": "dialog_00.flac"})
    dialect = ExotelDialect()
    dialect.setup(wire.path.partition("?")[2], APP, StreamConfig())
    kinds = []
    for message in wire.opening():
        kinds += [type(e).__name__ for e in dialect.parse(message) if not isinstance(e, Notice)]
    assert kinds == ["Start"]
    frame = b"\x10\x00" * 160
    assert dialect.parse(wire.media(frame)) == [AudioIn(frame)]
    assert dialect.parse(wire.dtmf("#"))[-1] == Dtmf("#")

    reply = encode(np.full(1600, 1234, dtype=np.int16), "pcm16")  # one 200 ms frame
    got = wire.read(dialect.serialize(AudioOut(reply)))  # type: ignore[arg-type]
    assert got.kind == "media" and got.payload == reply and got.message["stream_sid"] == wire.stream_sid
    got = wire.read(dialect.serialize(Mark("reply-1")))  # type: ignore[arg-type]
    assert got.kind == "mark" and got.name == "reply-1"
    assert dialect.parse(wire.played(got.name)) == [MarkPlayed("reply-1")]
    got = wire.read(dialect.serialize(Clear()))  # type: ignore[arg-type]
    assert got.kind == "clear" and wire.cleared() is None
    assert dialect.parse(wire.stop())[-1] == Stop(finish=False)


def test_the_wire_reads_every_serialized_kind() -> None:
    dialect, _ = opened()
    wire = ExotelWire(7)
    for event, kind in ((AudioOut(b"\x01\x02" * 1600), "media"), (Mark("m"), "mark"), (Clear(), "clear")):
        message = dialect.serialize(event)
        assert message is not None
        got = wire.read(message)
        assert isinstance(got, Received) and got.kind == kind, (event, got)
        assert got.message["stream_sid"] == wire.stream_sid
    assert wire.read(b"\x00\x01").kind == "other"
    assert wire.read(json.dumps({"event": "something"})).kind == "other"


def test_the_wire_counts_as_exotel_does() -> None:
    wire = ExotelWire(1, sample_rate=16000)
    assert wire.path == "/telephone/exotel?sample-rate=16000" and ExotelWire(1).path == "/telephone/exotel"
    connected, start = (json.loads(m) for m in wire.opening())
    assert connected == {"event": "connected"}
    assert start["sequence_number"] == "1" and start["stream_sid"] == start["start"]["stream_sid"]
    assert start["start"]["media_format"] == {"encoding": "audio/x-raw", "sample_rate": "16000", "bit_rate": "16"}
    media = [json.loads(wire.media(b"\x00" * 640)) for _ in range(5)]  # 20 ms each at 16 kHz
    assert [m["sequence_number"] for m in media] == ["2", "3", "4", "5", "6"]
    assert [m["media"]["chunk"] for m in media] == ["1", "2", "3", "4", "5"]
    assert [m["media"]["timestamp"] for m in media] == ["20", "40", "60", "80", "100"]
    assert json.loads(wire.stop())["stop"]["reason"] == "callended"
    assert ExotelWire(1).stream_sid != ExotelWire(2).stream_sid and len(ExotelWire(1).stream_sid) == 26
