"""The dialect interface: what a driver needs of a wire protocol, and the pieces dialects share.

A dialect is one module with one class: its ``path``, how a stream on it is set
up (``setup``), ``parse`` (wire message to core events), ``audio`` (a binary
message that is raw audio, the hot path) and ``serialize`` (core event to wire
message, or None). Dialects have no side effects: what they notice goes to the
core as a ``Notice`` event, and what they do not send is the driver's to log.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from wsstream.codecs import AudioFormat, FormatError
from wsstream.config import StreamConfig
from wsstream.events import (
    Dtmf,
    Error,
    FetchOutput,
    InEvent,
    Log,
    MarkPlayed,
    Notice,
    OutEvent,
    Pong,
    Refused,
    SendInput,
    StopWord,
    Warning,
)
from wsstream.reply import ReplyOnPause


class ProtocolError(ValueError):
    """A message the dialect cannot understand. ``fatal`` ones end the connection with ``code``. ``kind``
    labels it in wsstream_protocol_errors: "json", "message", or "setup" (the default for fatal ones: a start,
    format or query the stream cannot go on with)."""

    def __init__(self, message: str, *, fatal: bool = False, code: int = 1003, kind: str | None = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.code = code
        self.kind = kind or ("setup" if fatal else "message")


@dataclass(frozen=True)
class StreamSetup:
    """How a new stream on this dialect starts, before any message of its own."""

    input_format: AudioFormat
    output_format: AudioFormat | None
    config: StreamConfig


class Dialect(Protocol):
    name: ClassVar[str]  # in metrics, logs and ReplyContext.dialect
    path: ClassVar[str]  # the WebSocket path it is served on
    binary_audio: ClassVar[bool]  # binary messages are raw audio in the input format (through ``audio``)

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """The stream's formats and rules from the request's query string; raises ProtocolError."""
        ...

    def audio(self, message: bytes) -> bytes:
        """A binary message's audio (only called when ``binary_audio``)."""
        ...

    def parse(self, message: str | bytes) -> list[InEvent]:
        """One wire message to core events; raises ProtocolError."""
        ...

    def serialize(self, event: OutEvent) -> str | bytes | None:
        """One core event to a wire message, or None when this dialect does not send it."""
        ...


# A telephone bridge plays what it is sent into its own buffer: the server keeps that much ahead of real
# time, enough to ride out network jitter, little enough that a flush on barge-in cuts the old reply off
# within it.
MIN_LEAD_MS, MAX_LEAD_MS = 100.0, 200.0


def telephony_setup(fmt: AudioFormat, config: StreamConfig, *, frame_ms: float = 20.0) -> StreamSetup:
    """The setup every telephone bridge needs: full frames of the size it expects (``frame_ms``, the last
    one padded), paced, with the lead kept within 100–200 ms. Input and output in ``fmt`` until the
    provider's own start message says otherwise."""
    config = dataclasses.replace(config, frame_ms=frame_ms, pad_last_frame=True,
                                 lead_ms=min(max(config.lead_ms, MIN_LEAD_MS), MAX_LEAD_MS))
    return StreamSetup(fmt, None, config)


def finite_int(value: Any, name: str) -> int:
    """A numeric field of a provider's message as an int; FormatError for inf, nan, huge, non-numbers."""
    if isinstance(value, bool):
        raise FormatError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FormatError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or not 0 < number < 1e9:
        raise FormatError(f"{name} out of range: {str(value)[:40]}")
    return int(number)


def fastrtc_message(event: OutEvent) -> str | None:
    """The JSON messages ``/ws`` and ``/websocket/offer`` both spell as fastrtc does, or None."""
    if isinstance(event, Log):
        return dumps({"type": "log", "data": event.name, **event.fields})
    if isinstance(event, FetchOutput):
        return dumps({"type": "fetch_output", "data": event.data})
    if isinstance(event, Error):
        return dumps({"type": "error", "data": event.message})
    if isinstance(event, Warning):
        return dumps({"type": "warning", "data": event.message})
    if isinstance(event, Pong):
        return dumps({"event": "pong"})
    if isinstance(event, StopWord):
        return dumps({"type": "stopword", "data": event.word})
    if isinstance(event, SendInput):
        return dumps({"type": "send_input", "data": []})
    if isinstance(event, Refused):
        return dumps({"status": "failed", "meta": {"error": event.error, "limit": event.limit}})
    return None


def parse_mark(msg: dict[str, Any]) -> MarkPlayed:
    """``{"event": "mark", "mark": {"name": ...}}``, as /ws clients and Twilio both send it."""
    mark = msg.get("mark")
    if not isinstance(mark, dict) or not isinstance(mark.get("name"), str):
        raise ProtocolError('mark message needs {"mark": {"name": "..."}}')
    return MarkPlayed(mark["name"])


def decode_payload(media: Any) -> bytes:
    """``{"payload": "<base64>"}`` of a JSON ``media`` message, as every JSON dialect carries audio."""
    if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
        raise ProtocolError('media message needs {"media": {"payload": "<base64 audio>"}}')
    try:
        return base64.b64decode(media["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media payload is not valid base64") from None


def encode_payload(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def load_json_object(message: str | bytes) -> dict[str, Any]:
    """Parse a text message that must be a JSON object, with errors a client can act on."""
    try:
        value = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid JSON: {exc}", kind="json") from None
    except RecursionError:  # '[' * 1100: Python's parser recurses per level
        raise ProtocolError("invalid JSON: nested too deeply", kind="json") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected a JSON object, got {type(value).__name__}", kind="json")
    return value


def text_only(provider: str) -> ProtocolError:
    """What a provider that sends JSON text only gets for a binary frame."""
    return ProtocolError(f"binary frame: {provider} sends JSON text messages only")


def provider_message(message: str | bytes, provider: str) -> dict[str, Any]:
    """A telephone provider's message: a JSON object in a text frame (none of them sends binary JSON)."""
    if isinstance(message, bytes):
        raise text_only(provider)
    return load_json_object(message)


def dtmf_events(msg: dict[str, Any], metric: str) -> list[InEvent]:
    """``{"dtmf": {"digit": "5"}}``, as Twilio, Telnyx and Plivo send a key press (a digit string of at
    most 8, so that a forged one cannot flood the log)."""
    dtmf = msg.get("dtmf")
    digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
    if not isinstance(digit, str) or not 0 < len(digit) <= 8:
        raise ProtocolError('dtmf message without {"dtmf": {"digit": "..."}}')
    return [Notice(f"dtmf {digit}", metric, logging.DEBUG), Dtmf(digit)]


def unknown_event(event: Any, metric: str) -> list[InEvent]:
    """A message type the provider may add one day: noted and counted, never an error for the call."""
    return [Notice(f"ignored unknown event {str(event)[:40]!r}", metric)]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_jsonable, allow_nan=False)


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    return str(value)
