"""The Twilio Media Streams dialect (``/telephone/handler``).

Inbound, exactly what Twilio sends: ``connected``, ``start``, ``media``,
``mark``, ``dtmf``, ``stop``. Outbound, nothing but what Twilio accepts:
``media`` (one 20 ms frame per message), ``mark`` and ``clear``, each with the
stream's ``streamSid``. Everything ``/ws`` would send as ``log``, ``error``,
``warning`` and so on goes to the Python logger (and the server's metrics)
instead, because Twilio does not take unknown messages.

Unknown or malformed messages are logged and counted, never fatal: a phone
call must not drop because a bridge sent something odd.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from wsstream.codecs import AudioFormat, FormatError
from wsstream.dialects.base import ProtocolError, dumps, load_json_object, parse_mark
from wsstream.events import (
    AudioIn,
    AudioOut,
    Clear,
    Dtmf,
    Error,
    FetchOutput,
    InEvent,
    Log,
    Mark,
    OutEvent,
    Start,
    Stop,
    Warning,
)
from wsstream.metrics import Metrics

if TYPE_CHECKING:
    from wsstream.server import WsServer

log = logging.getLogger("wsstream.twilio")

# mediaFormat.encoding as Twilio (and bridges that speak its protocol) name them
MEDIA_ENCODINGS = {"audio/x-mulaw": "mulaw", "audio/x-alaw": "alaw", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
DEFAULT_FORMAT = AudioFormat("mulaw", 8000)
MIN_LEAD_MS, MAX_LEAD_MS = 100.0, 200.0


class TwilioDialect:
    name = "twilio"

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.stream_sid: str | None = None
        self.call_sid: str | None = None

    # ---- inbound -------------------------------------------------------------

    def parse(self, message: str | bytes) -> list[InEvent]:
        if isinstance(message, bytes):
            raise ProtocolError("binary frame: Twilio Media Streams sends JSON text messages only")
        msg = load_json_object(message)
        event = msg.get("event")
        if event == "media":
            return self._media(msg)
        if event == "start":
            return [self._start(msg)]
        if event == "mark":
            return [parse_mark(msg)]
        if event == "dtmf":
            dtmf = msg.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
            if not isinstance(digit, str) or not digit:
                raise ProtocolError('dtmf message without {"dtmf": {"digit": "..."}}')
            self.metrics.inc("twilio_dtmf")
            return [Dtmf(digit)]
        if event == "stop":
            log.info("twilio stream %s stopped (call %s)", self.stream_sid, self.call_sid)
            return [Stop(finish=False)]  # the call is over: nothing left to play to anyone
        if event == "connected":
            log.debug("twilio connected: protocol %s version %s", msg.get("protocol"), msg.get("version"))
            return []
        # Twilio may add message types; an unknown one is noted, not an error for the call.
        self.metrics.inc("twilio_unknown_events")
        log.warning("twilio stream %s: ignored unknown event %r", self.stream_sid, event)
        return []

    def _media(self, msg: dict[str, Any]) -> list[InEvent]:
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ProtocolError('media message without {"media": {"payload": "<base64>"}}')
        track = media.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            # a both_tracks stream also carries what the caller hears; only the caller's voice is input
            self.metrics.inc("twilio_media_other_track")
            return []
        try:
            data = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("media payload is not valid base64") from None
        return [AudioIn(data)] if data else []

    def _start(self, msg: dict[str, Any]) -> Start:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError('start message without a "start" object')
        sid = msg.get("streamSid") or start.get("streamSid")
        if not isinstance(sid, str) or not sid:
            raise ProtocolError("start message without a streamSid")
        self.stream_sid = sid
        self.call_sid = start.get("callSid")
        fmt = self._media_format(start.get("mediaFormat"))
        params = start.get("customParameters")
        context = {
            "streamSid": sid,
            "callSid": self.call_sid,
            "accountSid": start.get("accountSid"),
            "tracks": start.get("tracks"),
            "mediaFormat": start.get("mediaFormat"),
            "customParameters": dict(params) if isinstance(params, dict) else {},
        }
        log.info("twilio stream %s started: call %s, %s %d Hz", sid, self.call_sid, fmt.encoding, fmt.sample_rate)
        # The reply goes back in the caller's encoding and rate (A-law in, A-law out).
        return Start(format=fmt, output_format=fmt, client_id=sid, context=context)

    def _media_format(self, value: Any) -> AudioFormat:
        if value is None:
            return DEFAULT_FORMAT
        try:
            if not isinstance(value, dict):
                raise FormatError(f"mediaFormat must be an object, got {type(value).__name__}")
            name = str(value.get("encoding", "audio/x-mulaw")).lower()
            if name not in MEDIA_ENCODINGS:
                raise FormatError(f"unsupported mediaFormat.encoding {value.get('encoding')!r}")
            return AudioFormat(MEDIA_ENCODINGS[name], int(value.get("sampleRate", 8000)),
                               int(value.get("channels", 1)))
        except (FormatError, TypeError, ValueError) as exc:
            # Never fatal: carry on with Twilio's own format, but say so loudly.
            self.metrics.inc("twilio_bad_media_format")
            log.error("twilio stream %s: %s; assuming audio/x-mulaw 8000 Hz", self.stream_sid, exc)
            return DEFAULT_FORMAT

    # ---- outbound ------------------------------------------------------------

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if isinstance(event, AudioOut):
            if self.stream_sid is None:
                self.metrics.inc("twilio_media_before_start")
                return None  # Twilio drops media without a streamSid; there is nobody to send it to yet
            return dumps({"event": "media", "streamSid": self.stream_sid,
                          "media": {"payload": base64.b64encode(event.data).decode()}})
        if isinstance(event, Mark):
            if self.stream_sid is None:
                return None
            return dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": event.name}})
        if isinstance(event, Clear):
            if self.stream_sid is None:
                return None
            return dumps({"event": "clear", "streamSid": self.stream_sid})
        # Not for Twilio's ears: to the server log (session events are already counted in metrics).
        if isinstance(event, Log):
            # every turn of every call: DEBUG, so a busy server's INFO log stays readable
            log.debug("twilio stream %s: %s %s", self.stream_sid, event.name, dumps(event.fields))
        elif isinstance(event, Error):
            log.warning("twilio stream %s: error: %s", self.stream_sid, event.message)
        elif isinstance(event, Warning):
            log.warning("twilio stream %s: warning: %s", self.stream_sid, event.message)
        elif isinstance(event, FetchOutput):
            log.info("twilio stream %s: additional output %s", self.stream_sid, dumps(event.data)[:500])
        return None


def route(server: WsServer, query: str) -> tuple[TwilioDialect, dict[str, Any]]:
    """``/telephone/handler``: μ-law 8 kHz until ``start`` says otherwise; full 20 ms frames, paced.

    The lead (audio sent ahead of real time) is the server's, kept within
    100–200 ms: enough to ride out network jitter, small enough that ``clear``
    on barge-in cuts the old reply off within it.
    """
    base = server.config.session
    config = dataclasses.replace(base, frame_ms=20.0, pad_last_frame=True,
                                 lead_ms=min(max(base.lead_ms, MIN_LEAD_MS), MAX_LEAD_MS))
    return TwilioDialect(server.metrics), {"input_format": DEFAULT_FORMAT, "config": config}
