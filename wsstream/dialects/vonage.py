"""The Vonage Voice API WebSocket dialect (``/telephone/vonage``).

A Vonage call reaches us through an NCCO ``connect`` action whose endpoint has
``"type": "websocket"``, a ``content-type`` of ``audio/l16;rate=16000`` (or
8000) and optional ``headers``. Vonage is the WebSocket client. Inbound, exactly
what Vonage sends:

* first, one text message ``{"event": "websocket:connected", "content-type":
  "audio/l16;rate=16000", ...}`` with the NCCO's ``headers`` spread out at the
  top level (not under a ``headers`` key);
* binary messages: 20 ms of raw 16-bit little-endian linear PCM each (320 bytes
  at 8 kHz, 640 at 16 kHz), the mix of the call's audio;
* text events in between: ``websocket:dtmf`` (``digit``, ``duration`` in ms),
  ``websocket:cleared`` (the answer to our ``clear``) and ``websocket:notify``
  (the answer to our ``notify``, with our ``payload`` echoed, once the audio
  queued before it has played).

Outbound, nothing but what Vonage takes: binary frames of exactly 20 ms of L16
at the call's rate (Vonage wants 320 or 640 bytes a message: the core sends full
20 ms frames, the last one padded); ``{"action": "notify", "payload": {"mark":
name}}`` after each reply (our marker: Vonage's ``websocket:notify`` with the
same payload says it has played); ``{"action": "clear"}`` on barge-in (Vonage
drops the audio it has buffered). Everything ``/ws`` would send as ``log``,
``error`` and so on is left to the driver's log.

Unknown or malformed messages are noted (``Notice`` events, logged and counted
by the core) or raised as non-fatal ``ProtocolError``: a phone call must not drop
because the bridge sent something odd.

Read: https://developer.vonage.com/en/voice/voice-api/concepts/websockets (the
guide: the NCCO endpoint's fields, the first message, binary audio sizes, DTMF
events, writing audio back, the ``disconnected`` event-webhook status),
https://developer.vonage.com/en/voice/voice-api/guides/websockets (its earlier
home, same protocol), and the AsyncAPI description drawn from the guide and
https://developer.vonage.com/en/voice/voice-api/ncco-reference,
https://asyncapi.apis.io/asyncapis/vonage/vonage-asyncapi/ (``clear``,
``notify``, ``websocket:cleared``, ``websocket:notify``, the 3072-packet buffer).

Decisions where the docs are silent or loose:

* Hang-up: Vonage sends no stop message over the socket; the call ending closes
  it (and posts to the event webhook). The socket's close ends the stream.
* The caller's id: Vonage puts none in ``websocket:connected``. The usual NCCO
  carries the call's ``uuid`` (from the answer webhook) in ``headers``; the first
  of ``uuid``, ``call_uuid``, ``conversation_uuid`` found is the stream's client
  id, else there is none. All headers go to the reply context as
  ``customParameters``, values as sent (the docs show numbers, lists, objects).
* The rate is the ``content-type``'s ``rate`` (16000 if absent). The docs name
  8000 and 16000; 24000 is used by some integrations and taken as well; any
  other rate our codecs take is used, with a warning; anything else (not L16, no
  number, inf, out of range) falls back to 16 kHz with an error notice, never
  ending the call.
* ``audio`` hands binary frames through as they are: a frame with an odd number
  of bytes is refused by the core's decoder (counted as ``bad_audio``, logged),
  non-fatally, because the drivers call ``audio`` on their hot path outside
  their ``ProtocolError`` handling. ``parse`` given bytes checks the length itself.
* Our marker payload is ``{"mark": name}``; a ``websocket:notify`` without it is
  someone else's notify, noted and ignored.
"""

from __future__ import annotations

import logging
from typing import Any

from wsstream.codecs import AudioFormat, FormatError
from wsstream.config import StreamConfig
from wsstream.dialects.base import (
    ProtocolError,
    StreamSetup,
    dumps,
    finite_int,
    load_json_object,
    telephony_setup,
    unknown_event,
)
from wsstream.events import AudioIn, AudioOut, Clear, Dtmf, InEvent, Mark, MarkPlayed, Notice, OutEvent, Start
from wsstream.reply import ReplyOnPause

DEFAULT_FORMAT = AudioFormat("pcm16", 16000)
KNOWN_RATES = (8000, 16000, 24000)  # 8000 and 16000 documented; 24000 seen in use
ID_HEADERS = ("uuid", "call_uuid", "conversation_uuid")  # where an NCCO's headers usually carry the call's id
DTMF_DIGITS = frozenset("0123456789*#ABCD")
MARK_KEY = "mark"  # our key in the notify payload
_OWN_FIELDS = ("event", "content-type")  # Vonage's own fields of websocket:connected; the rest are headers


class VonageDialect:
    name = "vonage"
    path = "/telephone/vonage"
    binary_audio = True

    def __init__(self) -> None:
        self.call_uuid: str | None = None
        self.format = DEFAULT_FORMAT

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """L16 16 kHz until ``websocket:connected`` says otherwise; full 20 ms frames, paced."""
        return telephony_setup(DEFAULT_FORMAT, config)

    def audio(self, message: bytes) -> bytes:
        """A binary message is the call's audio as it is: the drivers' hot path, nothing to unwrap."""
        return message

    @staticmethod
    def recognises(msg: dict[str, Any]) -> bool:
        """Vonage's first message and nobody else's: ``websocket:connected`` with an L16 content-type."""
        if not isinstance(msg, dict) or msg.get("event") != "websocket:connected":
            return False
        content_type = msg.get("content-type")
        return isinstance(content_type, str) and content_type.strip().lower().startswith("audio/l16")

    # ---- inbound -------------------------------------------------------------

    def parse(self, message: str | bytes) -> list[InEvent]:
        if isinstance(message, bytes | bytearray | memoryview):
            # (the drivers send binary frames to ``audio``; this is for callers that do not split them)
            if len(message) % 2:
                raise ProtocolError(f"binary frame of {len(message)} bytes: L16 audio is 2 bytes a sample")
            return [AudioIn(bytes(message))] if message else []
        msg = load_json_object(message)
        event = msg.get("event")
        if event == "websocket:connected":
            return self._connected(msg)
        if event == "websocket:dtmf":
            return self._dtmf(msg)
        if event == "websocket:notify":
            return self._notify(msg)
        if event == "websocket:cleared":
            return [Notice("playback buffer cleared", "vonage_cleared", logging.DEBUG)]
        # Vonage says more text events may come at any point; an unknown one is noted, not an error.
        return unknown_event(event, "vonage_unknown_events")

    def _connected(self, msg: dict[str, Any]) -> list[InEvent]:
        fmt, problem = self._content_type(msg.get("content-type"))
        headers = {key: value for key, value in msg.items() if key not in _OWN_FIELDS}
        self.call_uuid = next((v for k in ID_HEADERS if isinstance(v := headers.get(k), str) and 0 < len(v) <= 256),
                              None)
        self.format = fmt
        context = {
            "uuid": self.call_uuid,
            "contentType": msg.get("content-type"),
            "sampleRate": fmt.sample_rate,
            "customParameters": headers,
        }
        notes = [Notice(f"connected: call {self.call_uuid}, L16 {fmt.sample_rate} Hz", level=logging.INFO)]
        if problem is not None:
            notes.append(problem)
        # The reply goes back as the call's own audio: L16 at the rate Vonage sends.
        return [Start(format=fmt, output_format=fmt, client_id=self.call_uuid, context=context), *notes]

    def _content_type(self, value: Any) -> tuple[AudioFormat, Notice | None]:
        if value is None:
            return DEFAULT_FORMAT, Notice("websocket:connected without a content-type; assuming audio/l16;rate=16000",
                                          "vonage_bad_content_type")
        try:
            if not isinstance(value, str):
                raise FormatError(f"content-type must be a string, got {type(value).__name__}")
            kind, *params = (part.strip() for part in value.lower().split(";"))
            if kind != "audio/l16":
                raise FormatError(f"unsupported content-type {value[:60]!r}")
            fields = dict(p.partition("=")[::2] for p in params if p)
            rate = finite_int(fields["rate"].strip(), "content-type rate") if "rate" in fields else 16000
            fmt = AudioFormat("pcm16", rate)
        except FormatError as exc:
            # Never fatal: carry on with Vonage's usual format, but say so loudly.
            return DEFAULT_FORMAT, Notice(f"{exc}; assuming audio/l16;rate=16000", "vonage_bad_content_type",
                                          logging.ERROR)
        if rate not in KNOWN_RATES:
            return fmt, Notice(f"content-type rate {rate} is not one Vonage documents; using it",
                               "vonage_unusual_rate")
        return fmt, None

    def _dtmf(self, msg: dict[str, Any]) -> list[InEvent]:
        digit = msg.get("digit")
        if not isinstance(digit, str) or digit.upper() not in DTMF_DIGITS:
            raise ProtocolError('websocket:dtmf without a "digit" of 0-9, *, #')
        digit = digit.upper()
        notes: list[InEvent] = []
        duration = msg.get("duration")
        held = ""
        if duration is not None:
            try:
                held = f" ({finite_int(duration, 'duration')} ms)"
            except FormatError as exc:
                notes.append(Notice(f"dtmf {digit}: {exc}; ignored", "vonage_bad_dtmf_duration"))
        return [Notice(f"dtmf {digit}{held}", "vonage_dtmf", logging.DEBUG), *notes, Dtmf(digit)]

    def _notify(self, msg: dict[str, Any]) -> list[InEvent]:
        payload = msg.get("payload")
        if not isinstance(payload, dict):
            raise ProtocolError('websocket:notify needs a "payload" object')
        if MARK_KEY not in payload:
            return [Notice("ignored a notify that is not one of our markers", "vonage_foreign_notify",
                           logging.DEBUG)]
        name = payload[MARK_KEY]
        if not isinstance(name, str):
            raise ProtocolError('websocket:notify payload needs {"mark": "<name>"}')
        return [MarkPlayed(name)]

    # ---- outbound ------------------------------------------------------------

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if isinstance(event, AudioOut):
            return event.data  # one 20 ms frame of L16, as Vonage plays it
        if isinstance(event, Mark):
            return dumps({"action": "notify", "payload": {MARK_KEY: event.name}})
        if isinstance(event, Clear):
            return dumps({"action": "clear"})
        return None  # not for Vonage's ears: the driver logs it
