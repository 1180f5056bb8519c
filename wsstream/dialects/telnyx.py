"""The Telnyx media streaming dialect (``/telephone/telnyx``), bidirectional RTP mode.

Telnyx opens the socket when a call is told to stream: Call Control's
``streaming_start`` (or ``stream_url`` on ``dial`` / ``answer``) with
``stream_bidirectional_mode: "rtp"``, or TeXML's ``<Stream bidirectionalMode="rtp">``.

Inbound, what Telnyx sends (JSON text messages):

* ``connected`` (``version``; with ``connected.x-telnyx-streaming-auth-token`` when
  the stream has an auth token);
* ``start``: ``stream_id`` at the top level, and in ``start``: ``call_control_id``,
  ``call_session_id``, ``user_id``, ``from``, ``to``, ``tags``, ``client_state``,
  ``custom_parameters`` and ``media_format`` (``encoding`` PCMU, PCMA, G722, OPUS,
  AMR-WB or L16, ``sample_rate``, ``channels``);
* ``media``: ``media.track`` (inbound / outbound), ``media.chunk``,
  ``media.timestamp``, ``media.payload`` (base64 RTP payload, no RTP header);
* ``mark``: a marker we sent, once the audio before it has played (at once when
  nothing is queued; all queued ones on ``clear``);
* ``dtmf`` (``dtmf.digit``, ``occurred_at``); ``error`` (``payload.code``,
  ``.title``, ``.detail``: 100002 unknown_error, 100003 malformed_frame,
  100004 invalid_media, 100005 rate_limit_reached); ``stop``.

Outbound, nothing but what Telnyx takes: ``{"event": "media", "media":
{"payload": ...}}`` (one 20 ms frame each; Telnyx takes 20 ms to 30 s),
``{"event": "mark", "mark": {"name": ...}}`` after each reply and
``{"event": "clear"}`` on barge-in. The docs' outbound messages carry no
``stream_id`` (the socket is the stream), so neither do ours. Everything else
(``log``, ``error`` ...) is left to the driver's log, as on Twilio.

Read:

* https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming
* https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket
* https://developers.telnyx.com/api/call-control/start-call-streaming
* https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/stream

Decisions where the docs are silent or leave room:

* What we send is played in the *bidirectional* codec (``stream_bidirectional_codec``,
  default PCMU, at ``stream_bidirectional_sampling_rate``, default 8000), and
  ``start`` does not say which one was asked for. So the reply format comes from
  the stream URL's query, spelt as the Call Control or the TeXML parameter
  (``?stream_bidirectional_codec=L16&stream_bidirectional_sampling_rate=16000``, or
  ``?bidirectionalCodec=PCMA``), and is PCMU 8 kHz without one, whatever the
  caller's codec (Telnyx transcodes to the call's codec). L16 without a rate is
  16 kHz, the one rate the docs list for it. A codec we cannot encode (G722, OPUS,
  AMR-WB) refuses the connection: nothing we sent could be heard.
* L16 payloads are big-endian, as RTP defines L16 (RFC 3551): they are swapped to
  and from wsstream's little-endian pcm16 here.
* An inbound codec we cannot decode (G722, OPUS, AMR-WB), a bad rate or channel
  count, is an ERROR notice and a fallback (PCMU, the codec's own rate, mono),
  never a dropped call.
* Telnyx does not guarantee frame order: audio goes on in arrival order (a
  reordering buffer would delay every call for a rare case); chunks that arrive
  out of order are counted (``telnyx_media_out_of_order``).
* Only the inbound track is the caller's voice; outbound-track frames
  (``both_tracks``) are ignored.
* ``client_state`` is passed as sent and, when it is base64 UTF-8 text, decoded;
  ``custom_parameters`` as an object (a list of ``{name, value}``, the shape the
  request takes, is turned into one). The auth token is never logged nor passed on.
* A ``start`` without ``stream_id`` still starts the stream (nothing we send needs
  it); the call control id stands in as its id.
* ``error`` messages are Telnyx telling us what it did not like: ERROR notices
  (``telnyx_errors``), and the call goes on.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from wsstream.codecs import AudioFormat, FormatError
from wsstream.config import StreamConfig
from wsstream.dialects.base import (
    ProtocolError,
    StreamSetup,
    decode_payload,
    dtmf_events,
    dumps,
    encode_payload,
    finite_int,
    parse_mark,
    provider_message,
    telephony_setup,
    text_only,
    unknown_event,
)
from wsstream.events import AudioIn, AudioOut, Clear, InEvent, Mark, Notice, OutEvent, Start, Stop
from wsstream.reply import ReplyOnPause

# Telnyx's codec names: wsstream's encoding and the codec's own rate
CODECS = {"PCMU": ("mulaw", 8000), "PCMA": ("alaw", 8000), "L16": ("pcm16", 16000)}
UNSUPPORTED = ("G722", "OPUS", "AMR-WB")  # Telnyx offers them; wsstream.codecs has no codec for them
DEFAULT_FORMAT = AudioFormat("mulaw", 8000)
# the reply format's query parameters: Call Control's names, then TeXML's
CODEC_PARAMS = ("stream_bidirectional_codec", "bidirectionalCodec")
RATE_PARAMS = ("stream_bidirectional_sampling_rate", "bidirectionalSamplingRate")
AUTH_TOKEN = "x-telnyx-streaming-auth-token"
PROVIDER = "Telnyx media streaming"  # (in the error a binary frame gets)
_U16 = np.dtype(np.uint16)


def swap16(data: bytes) -> bytes:
    """L16 (big-endian) to pcm16 (little-endian) and back: the same swap."""
    return np.frombuffer(data, _U16).byteswap().tobytes()


def reply_format(query: str) -> AudioFormat:
    """The bidirectional codec and rate the stream URL's query names; PCMU 8 kHz, Telnyx's default."""
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    codec = next((params[k] for k in CODEC_PARAMS if k in params), "PCMU")
    name = codec.strip().upper()
    if name not in CODECS:
        hint = "wsstream cannot encode it; " if name in UNSUPPORTED else ""
        raise ProtocolError(f"bidirectional codec {codec[:40]!r}: {hint}use PCMU, PCMA or L16", fatal=True)
    encoding, rate = CODECS[name]
    text = next((params[k] for k in RATE_PARAMS if k in params), None)
    try:
        if text is not None:
            rate = finite_int(text, "bidirectional sampling rate")
        return AudioFormat(encoding, rate)
    except FormatError as exc:
        raise ProtocolError(f"stream URL query: {exc}", fatal=True) from None


class TelnyxDialect:
    name = "telnyx"
    path = "/telephone/telnyx"
    binary_audio = False

    def __init__(self) -> None:
        self.stream_id: str | None = None
        self.call_control_id: str | None = None
        self.output_format = DEFAULT_FORMAT
        self._l16_in = False
        self._l16_out = False
        self._last_chunk = 0

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """PCMU 8 kHz in until ``start`` says otherwise; out in the bidirectional codec the query names."""
        self.output_format = reply_format(query)
        self._l16_out = self.output_format.encoding == "pcm16"
        return replace(telephony_setup(DEFAULT_FORMAT, config), output_format=self.output_format)

    def audio(self, message: bytes) -> bytes:
        raise text_only(PROVIDER)

    @staticmethod
    def recognises(msg: dict[str, Any]) -> bool:
        """Telnyx's ``start`` (a top-level ``stream_id``, ``start.call_control_id``), or a ``connected``
        carrying Telnyx's auth token; a bare ``connected`` is Twilio's too."""
        if not isinstance(msg, dict):
            return False
        event = msg.get("event")
        if event == "start":
            start = msg.get("start")
            return (isinstance(msg.get("stream_id"), str) and isinstance(start, dict)
                    and isinstance(start.get("call_control_id"), str))
        if event == "connected":
            connected = msg.get("connected")
            return isinstance(connected, dict) and AUTH_TOKEN in connected
        return False

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
            return dtmf_events(msg, "telnyx_dtmf")
        if event == "stop":
            # the stream is over (call hung up, or streaming_stop): nothing left to play to anyone
            return [Notice(f"stopped (call {str(self.call_control_id)[:80]})", level=logging.INFO), Stop(finish=False)]
        if event == "error":
            return [self._error(msg)]
        if event == "connected":
            # (never the auth token it may carry: it is a credential)
            return [Notice(f"connected: version {str(msg.get('version'))[:20]!r}", level=logging.DEBUG)]
        return unknown_event(event, "telnyx_unknown_events")

    def _media(self, msg: dict[str, Any]) -> list[InEvent]:
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ProtocolError('media message without {"media": {"payload": "<base64>"}}')
        track = media.get("track", "inbound")
        if track != "inbound" and track != "inbound_track":
            # a both_tracks stream also carries what the caller hears; only the caller's voice is input
            return [Notice(f"ignored media of track {str(track)[:40]!r}", "telnyx_media_other_track",
                           logging.DEBUG)]
        data = decode_payload(media)
        if self._l16_in and data:
            if len(data) & 1:
                raise ProtocolError(f"L16 media payload of {len(data)} bytes: not a whole number of samples")
            data = swap16(data)
        events: list[InEvent] = [AudioIn(data)] if data else []
        chunk = media.get("chunk")
        if chunk is not None:
            number = _chunk_number(chunk)
            if number is None:
                events.append(Notice(f"media.chunk {str(chunk)[:40]!r} is not a chunk number",
                                     "telnyx_bad_chunks", logging.DEBUG))
            elif number <= self._last_chunk:
                events.append(Notice(f"media chunk {number} after {self._last_chunk}: passed on as it came",
                                     "telnyx_media_out_of_order", logging.DEBUG))
            else:
                self._last_chunk = number
        return events

    def _start(self, msg: dict[str, Any]) -> list[InEvent]:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError('start message without a "start" object')
        notes: list[InEvent] = []
        ccid = start.get("call_control_id")
        self.call_control_id = ccid if isinstance(ccid, str) else None
        sid = msg.get("stream_id")
        if not isinstance(sid, str) or not sid:
            notes.append(Notice("start message without a stream_id", "telnyx_start_without_stream_id"))
            sid = None
        self.stream_id = sid
        fmt, problems = self._media_format(start.get("media_format"))
        self._l16_in = fmt.encoding == "pcm16"
        state = start.get("client_state")
        context = {
            "stream_id": sid,
            "call_control_id": self.call_control_id,
            "call_session_id": start.get("call_session_id"),
            "user_id": start.get("user_id"),
            "from": start.get("from"),
            "to": start.get("to"),
            "tags": start.get("tags"),
            "client_state": state,
            "client_state_decoded": _decoded(state),
            "custom_parameters": _custom(start.get("custom_parameters")),
            "media_format": start.get("media_format"),
        }
        out, call = self.output_format, str(self.call_control_id)[:80]
        notes.insert(0, Notice(f"started: call {call}, {fmt.encoding} {fmt.sample_rate} Hz in, "
                               f"{out.encoding} {out.sample_rate} Hz out", level=logging.INFO))
        return [Start(format=fmt, output_format=out, client_id=sid or self.call_control_id, context=context),
                *notes, *problems]

    def _media_format(self, value: Any) -> tuple[AudioFormat, list[InEvent]]:
        """The caller's audio as ``start`` describes it; whatever is wrong falls back, loudly, never fatally."""
        def problem(text: str) -> Notice:
            return Notice(text, "telnyx_bad_media_format", logging.ERROR)

        if not isinstance(value, dict):
            return DEFAULT_FORMAT, [problem(f"start.media_format is {type(value).__name__}, not an object; "
                                            "assuming PCMU 8000 Hz")]
        problems: list[InEvent] = []
        raw = value.get("encoding", "PCMU")
        name = raw.strip().upper() if isinstance(raw, str) else ""
        if name not in CODECS:
            hint = " (wsstream cannot decode it: stream PCMU, PCMA or L16)" if name in UNSUPPORTED else ""
            problems.append(problem(f"unsupported media_format.encoding {str(raw)[:40]!r}{hint}; assuming PCMU"))
            name = "PCMU"
        encoding, rate = CODECS[name]
        try:
            if value.get("sample_rate") is not None:
                rate = AudioFormat(encoding, finite_int(value["sample_rate"], "media_format.sample_rate")).sample_rate
        except FormatError as exc:
            problems.append(problem(f"{exc}; assuming {rate} Hz"))
        channels = value.get("channels")
        if channels is not None and (isinstance(channels, bool) or channels not in (1, "1")):
            problems.append(problem(f"media_format.channels {str(channels)[:40]!r}: Telnyx streams are mono; "
                                    "taking it as 1"))
        return AudioFormat(encoding, rate), problems

    def _error(self, msg: dict[str, Any]) -> Notice:
        payload = msg.get("payload")
        if not isinstance(payload, dict):
            payload = {"detail": payload}
        code, title, detail = (str(payload.get(k, ""))[:200] for k in ("code", "title", "detail"))
        return Notice(f"Telnyx reported error {code} {title}: {detail}", "telnyx_errors", logging.ERROR)

    # ---- outbound ------------------------------------------------------------

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if isinstance(event, AudioOut):
            data = swap16(event.data) if self._l16_out else event.data
            # (base64 needs no JSON escaping: the hot path builds the message itself)
            return '{"event":"media","media":{"payload":"' + encode_payload(data) + '"}}'
        if isinstance(event, Mark):
            return dumps({"event": "mark", "mark": {"name": event.name}})
        if isinstance(event, Clear):
            return '{"event":"clear"}'
        return None  # not for Telnyx's ears: the driver logs it


def _chunk_number(chunk: Any) -> int | None:
    """``media.chunk`` ("2" in the docs) as an int, or None when it is no count at all."""
    if type(chunk) is str:
        return int(chunk) if chunk.isascii() and chunk.isdecimal() and len(chunk) <= 15 else None
    if type(chunk) is int:
        return chunk if 0 <= chunk < 10**15 else None
    return None


def _decoded(state: Any) -> str | None:
    """``client_state`` is base64 (Telnyx requires it); the text in it, when it is text."""
    if not isinstance(state, str) or not state:
        return None
    try:
        return base64.b64decode(state, validate=True).decode("utf-8")
    except ValueError:  # (binascii.Error and UnicodeDecodeError both are)
        return None


def _custom(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return {str(p["name"]): p.get("value") for p in value if isinstance(p, dict) and "name" in p}
    return {}
