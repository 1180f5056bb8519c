"""The Twilio Media Streams dialect (``/telephone/handler``).

Inbound, exactly what Twilio sends: ``connected``, ``start``, ``media``,
``mark``, ``dtmf``, ``stop``. Outbound, nothing but what Twilio accepts:
``media`` (one 20 ms frame per message), ``mark`` and ``clear``, each with the
stream's ``streamSid``. Everything ``/ws`` would send as ``log``, ``error``,
``warning`` and so on is not serialized: the driver logs it instead, because
Twilio does not take unknown messages.

Unknown or malformed messages are logged and counted (``Notice`` events to the
core), never fatal: a phone call must not drop because a bridge sent something odd.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from wsstream.codecs import AudioFormat, FormatError
from wsstream.config import StreamConfig
from wsstream.dialects.base import (
    ProtocolError,
    StreamSetup,
    decode_payload,
    dtmf_events,
    dumps,
    encode_payload,
    parse_mark,
    provider_message,
    telephony_setup,
    text_only,
    unknown_event,
)
from wsstream.events import AudioIn, AudioOut, Clear, InEvent, Mark, Notice, OutEvent, Start, Stop
from wsstream.reply import ReplyOnPause

# mediaFormat.encoding as Twilio (and bridges that speak its protocol) name them
MEDIA_ENCODINGS = {"audio/x-mulaw": "mulaw", "audio/x-alaw": "alaw", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
DEFAULT_FORMAT = AudioFormat("mulaw", 8000)
PROVIDER = "Twilio Media Streams"  # (in the error a binary frame gets)


class TwilioDialect:
    name = "twilio"
    path = "/telephone/handler"
    binary_audio = False

    def __init__(self) -> None:
        self.stream_sid: str | None = None
        self.call_sid: str | None = None

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """μ-law 8 kHz until ``start`` says otherwise; full 20 ms frames, paced."""
        return telephony_setup(DEFAULT_FORMAT, config)

    @staticmethod
    def recognises(msg: dict[str, Any]) -> bool:
        """Twilio's ``start``: camelCase ids, a ``streamSid`` beside it (``connected`` is shared with Telnyx)."""
        start = msg.get("start")
        return (msg.get("event") == "start" and isinstance(start, dict) and isinstance(msg.get("streamSid"), str)
                and ("callSid" in start or "accountSid" in start))

    def audio(self, message: bytes) -> bytes:
        raise text_only(PROVIDER)

    # ---- inbound -------------------------------------------------------------

    def parse(self, message: str | bytes) -> list[InEvent]:
        msg = provider_message(message, PROVIDER)
        event = msg.get("event")
        if event == "media":
            return self._media(msg)
        if event == "start":
            return self._start(msg)
        if event == "mark":
            return [parse_mark(msg)]
        if event == "dtmf":
            return dtmf_events(msg, "twilio_dtmf")
        if event == "stop":
            # the call is over: nothing left to play to anyone
            return [Notice(f"stopped (call {self.call_sid})", level=logging.INFO), Stop(finish=False)]
        if event == "connected":
            return [Notice(f"connected: protocol {msg.get('protocol')!r} version {msg.get('version')!r}",
                           level=logging.DEBUG)]
        return unknown_event(event, "twilio_unknown_events")

    def _media(self, msg: dict[str, Any]) -> list[InEvent]:
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ProtocolError('media message without {"media": {"payload": "<base64>"}}')
        track = media.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            # a both_tracks stream also carries what the caller hears; only the caller's voice is input
            return [Notice(f"ignored media of track {str(track)[:40]!r}", "twilio_media_other_track",
                           logging.DEBUG)]
        data = decode_payload(media)
        return [AudioIn(data)] if data else []

    def _start(self, msg: dict[str, Any]) -> list[InEvent]:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError('start message without a "start" object')
        sid = msg.get("streamSid") or start.get("streamSid")
        if not isinstance(sid, str) or not sid:
            raise ProtocolError("start message without a streamSid")
        self.stream_sid = sid
        self.call_sid = start.get("callSid")
        fmt, problem = self._media_format(start.get("mediaFormat"))
        params = start.get("customParameters")
        context = {
            "streamSid": sid,
            "callSid": self.call_sid,
            "accountSid": start.get("accountSid"),
            "tracks": start.get("tracks"),
            "mediaFormat": start.get("mediaFormat"),
            "customParameters": dict(params) if isinstance(params, dict) else {},
        }
        notes = [Notice(f"started: call {self.call_sid}, {fmt.encoding} {fmt.sample_rate} Hz", level=logging.INFO)]
        if problem is not None:
            notes.append(problem)
        # The reply goes back in the caller's encoding and rate (A-law in, A-law out).
        return [Start(format=fmt, output_format=fmt, client_id=sid, context=context), *notes]

    def _media_format(self, value: Any) -> tuple[AudioFormat, Notice | None]:
        if value is None:
            return DEFAULT_FORMAT, None
        try:
            if not isinstance(value, dict):
                raise FormatError(f"mediaFormat must be an object, got {type(value).__name__}")
            name = str(value.get("encoding", "audio/x-mulaw")).lower()
            if name not in MEDIA_ENCODINGS:
                raise FormatError(f"unsupported mediaFormat.encoding {value.get('encoding')!r}")
            rate, channels = value.get("sampleRate", 8000), value.get("channels", 1)
            for key, number in (("sampleRate", rate), ("channels", channels)):
                if isinstance(number, float) and not math.isfinite(number):
                    raise FormatError(f"mediaFormat.{key} must be finite, got {number}")
            return AudioFormat(MEDIA_ENCODINGS[name], int(rate), int(channels)), None
        except (FormatError, TypeError, ValueError, OverflowError) as exc:
            # Never fatal: carry on with Twilio's own format, but say so loudly.
            return DEFAULT_FORMAT, Notice(f"{exc}; assuming audio/x-mulaw 8000 Hz", "twilio_bad_media_format",
                                          logging.ERROR)

    # ---- outbound ------------------------------------------------------------

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if isinstance(event, AudioOut):
            if self.stream_sid is None:
                return None  # Twilio drops media without a streamSid; there is nobody to send it to yet
            return dumps({"event": "media", "streamSid": self.stream_sid,
                          "media": {"payload": encode_payload(event.data)}})
        if isinstance(event, Mark):
            if self.stream_sid is None:
                return None
            return dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": event.name}})
        if isinstance(event, Clear):
            if self.stream_sid is None:
                return None
            return dumps({"event": "clear", "streamSid": self.stream_sid})
        return None  # not for Twilio's ears: the driver logs it
