"""The native ``/ws`` dialect: binary audio frames or JSON ``media``, JSON control messages."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs

from wsstream.codecs import AudioFormat, FormatError
from wsstream.config import StreamConfig
from wsstream.dialects.base import (
    ProtocolError,
    StreamSetup,
    decode_payload,
    dumps,
    encode_payload,
    fastrtc_message,
    load_json_object,
    parse_mark,
)
from wsstream.events import (
    AudioIn,
    AudioOut,
    Clear,
    InEvent,
    Mark,
    OutEvent,
    Ping,
    SetInputs,
    Start,
    Stop,
    Trigger,
    VadTrace,
)
from wsstream.reply import ReplyOnPause


def parse_format(value: Any, what: str) -> AudioFormat:
    """A client's ``{"encoding", "sample_rate", "channels"}`` object; errors say which field is wrong."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be an object like {{\"encoding\": \"pcm16\", \"sample_rate\": 16000}}",
                            fatal=True)
    unknown = set(value) - {"encoding", "sample_rate", "channels"}
    if unknown:
        raise ProtocolError(f"{what} has unknown field(s): {', '.join(sorted(unknown))}", fatal=True)
    try:
        return AudioFormat(encoding=value.get("encoding", "pcm16"),
                           sample_rate=value.get("sample_rate", 16000),
                           channels=value.get("channels", 1))
    except FormatError as exc:
        raise ProtocolError(f"{what}: {exc}", fatal=True) from None


def format_from_query(query: str) -> AudioFormat | None:
    """``?encoding=pcm16&sample_rate=16000`` on the URL, for clients that send binary at once."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    if not params.keys() & {"encoding", "sample_rate", "channels"}:
        return None
    fields: dict[str, Any] = {}
    for key in ("sample_rate", "channels"):
        if key in params:
            try:
                fields[key] = int(params[key])
            except ValueError:
                raise ProtocolError(f"query parameter {key} must be an integer, got {params[key]!r}",
                                    fatal=True) from None
    if "encoding" in params:
        fields["encoding"] = params["encoding"]
    return parse_format(fields, "query format")


class NativeDialect:
    """One instance per connection: it remembers whether audio goes out as binary or JSON."""

    name = "ws"
    path = "/ws"
    binary_audio = True

    def __init__(self) -> None:
        self.media_as = "binary"
        self._audio_seen = False  # a start after audio is refused by the core: it must not change media_as

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        fmt = format_from_query(query) or AudioFormat()
        return StreamSetup(fmt, None, dataclasses.replace(config, asks_inputs=True))

    def audio(self, message: bytes) -> bytes:
        """A binary message is raw audio in the stream's format: drivers hand it to the core directly."""
        self._audio_seen = True
        return message

    def parse(self, message: str | bytes) -> list[InEvent]:
        if isinstance(message, bytes):
            return [AudioIn(self.audio(message))]
        msg = load_json_object(message)
        event = msg.get("event")
        if event == "media":
            self._audio_seen = True
            return [AudioIn(decode_payload(msg.get("media")))]
        if event == "start":
            return [self._start(msg)]
        if event == "input":
            if "data" not in msg:
                raise ProtocolError('input message needs a "data" field')
            return [SetInputs(msg["data"])]
        if event == "trigger":
            return [Trigger()]
        if event == "mark":
            return [parse_mark(msg)]
        if event == "ping":
            return [Ping()]
        if event == "stop":
            return [Stop()]
        if event is None:
            raise ProtocolError('message has no "event" field')
        raise ProtocolError(f"unknown event {event!r}; expected start, media, input, trigger, mark, ping or stop")

    def _start(self, msg: dict[str, Any]) -> Start:
        fmt = parse_format(msg["format"], "format") if msg.get("format") is not None else None
        out = parse_format(msg["output_format"], "output_format") if msg.get("output_format") is not None \
            else None
        media_as = msg.get("media_as", "binary")
        if media_as not in ("binary", "json"):
            raise ProtocolError(f'media_as must be "binary" or "json", got {media_as!r}', fatal=True)
        if not self._audio_seen:
            self.media_as = media_as
        client_id = msg.get("id")
        return Start(format=fmt, output_format=out, inputs=msg.get("inputs"), debug=bool(msg.get("debug")),
                     client_id=str(client_id) if client_id is not None else None)

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if isinstance(event, AudioOut):
            if self.media_as == "binary":
                return event.data
            return dumps({"event": "media", "media": {"payload": encode_payload(event.data)}})
        if isinstance(event, VadTrace):
            return dumps({"type": "vad", "p": event.probs, "t": event.t})
        if isinstance(event, Mark):
            return dumps({"event": "mark", "mark": {"name": event.name}})
        if isinstance(event, Clear):
            return dumps({"event": "clear"})
        return fastrtc_message(event)
