"""The Plivo Audio Streams dialect (``/telephone/plivo``).

Plivo opens the WebSocket when its XML says
``<Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000">wss://HOST/telephone/plivo</Stream>``.

Inbound, what Plivo sends (JSON text only): ``start`` (once, first: ``start.streamId``,
``start.callId``, ``start.accountId``, ``start.tracks``, ``start.mediaFormat`` =
``{"encoding": "audio/x-mulaw" | "audio/x-l16", "sampleRate": 8000 | 16000}``, and the
``<Stream extraHeaders>`` as a string in ``extra_headers``); ``media`` (``media.payload``
base64, ``media.track``, ``media.chunk``, ``media.timestamp``); ``dtmf`` (``dtmf.digit``);
``playedStream`` (``name``: a checkpoint of ours has played); ``clearedAudio`` (our
``clearAudio`` was done). Plivo sends no stop message: it closes the socket when the call ends.

Outbound, nothing but what Plivo accepts: ``playAudio`` (one 20 ms frame per message,
``media.contentType`` / ``media.sampleRate`` / ``media.payload``), ``checkpoint``
(``streamId``, ``name``) after each reply and ``clearAudio`` (``streamId``) on barge-in.
Everything ``/ws`` would send as ``log``, ``error`` and so on stays off the wire (the
driver logs it), as on Twilio's path. Unknown or malformed messages are noted
(``Notice``) or refused (``ProtocolError``), never fatal: a call must not drop over them.

Read: https://www.plivo.com/docs/voice/audio-streaming/audio-streaming (message reference),
https://www.plivo.com/docs/voice-agents/audio-streaming/concepts/audio-streaming-reference,
https://docs.plivo.com/docs/voice/xml/audiostream (``<Stream>`` attributes, contentType values),
https://docs.plivo.com/docs/voice/xml/audiostream/stream-events-to-plivo/play-audio-event,
https://plivo.com/docs/voice/xml/the-stream-element/checkpoint-event,
https://docs.plivo.com/docs/voice/xml/audiostream/stream-events-to-plivo/clear-audio-stream,
https://plivo.com/docs/voice/audio-streaming/best-practices (Plivo closes the socket itself),
https://support.plivo.com/hc/en-us/articles/32800564168345 (an older name, ``played``, for playedStream),
and Plivo's own SDKs' message models (github.com/plivo/plivo-stream-sdk-python, plivo-stream-sdk-node).

Decisions where the docs are silent or disagree:

* ``audio/x-l16`` is signed 16-bit little-endian (``pcm16``): Plivo's own demo feeds it to, and
  fills it from, little-endian PCM services unchanged. The docs never name a byte order.
* Before ``start``, or when it has no ``mediaFormat``, the format is Plivo's documented default
  contentType, ``audio/x-l16`` at 8000 Hz. A bad encoding falls back to that, a bad
  ``sampleRate`` (not a number, inf, nan, huge) to 8000 in the named encoding: with a Notice, never fatal.
* The reply goes back in the call's own encoding and rate (``playAudio`` takes all three).
* ``extra_headers`` is documented as ``"k=v;k=v"``, the ``<Stream>`` attribute as ``k=v,k=v``,
  Plivo's SDK calls it a JSON string, and a third-party capture shows ``{X-PH-k: v}``: all four are
  read into ``customParameters`` (keys kept as sent); the raw string stays in ``extra_headers``.
* ``playAudio`` carries no ``streamId`` (neither the docs nor Plivo's SDKs put one there).
* A checkpoint cleared by ``clearAudio`` is never reported (``playedStream`` is sent only for audio
  that played), so a mark of an interrupted reply stays unplayed.
* A second ``start`` is noted and ignored (Plivo sends one; the formats are fixed by the first).
  An undocumented ``stop`` message is taken as the hang-up it would mean.
"""

from __future__ import annotations

import json
import logging
import re
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
    finite_int,
    provider_message,
    telephony_setup,
    text_only,
    unknown_event,
)
from wsstream.events import AudioIn, AudioOut, Clear, InEvent, Mark, MarkPlayed, Notice, OutEvent, Start, Stop
from wsstream.reply import ReplyOnPause

# mediaFormat.encoding and playAudio's contentType, as Plivo names them
MEDIA_ENCODINGS = {"audio/x-mulaw": "mulaw", "audio/x-l16": "pcm16"}
CONTENT_TYPES = {"mulaw": "audio/x-mulaw", "pcm16": "audio/x-l16"}
PLIVO_FORMATS = {("mulaw", 8000), ("pcm16", 8000), ("pcm16", 16000)}  # what <Stream contentType> offers
DEFAULT_FORMAT = AudioFormat("pcm16", 8000)  # contentType's default: audio/x-l16;rate=8000
_PAIR_SEPARATORS = re.compile(r"[;,]")
PROVIDER = "Plivo Audio Streams"  # (in the error a binary frame gets)


class PlivoDialect:
    name = "plivo"
    path = "/telephone/plivo"
    binary_audio = False

    def __init__(self) -> None:
        self.stream_id: str | None = None
        self.call_id: str | None = None
        self.format = DEFAULT_FORMAT
        self._media: dict[str, Any] = {}  # playAudio's media, but the payload: set by start

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """Plivo's default format until ``start`` says which; full 20 ms frames, paced."""
        return telephony_setup(DEFAULT_FORMAT, config)

    @staticmethod
    def recognises(msg: dict[str, Any]) -> bool:
        """Plivo's ``start``: camelCase ``streamId`` and ``callId`` inside ``start``, and no Twilio ``streamSid``
        (Telnyx and Exotel spell their ids in snake_case)."""
        if not isinstance(msg, dict) or msg.get("event") != "start":
            return False
        start = msg.get("start")
        return (isinstance(start, dict) and isinstance(start.get("streamId"), str)
                and isinstance(start.get("callId"), str) and "streamSid" not in msg and "streamSid" not in start)

    def audio(self, message: bytes) -> bytes:
        raise text_only(PROVIDER)

    # ---- inbound -------------------------------------------------------------

    def parse(self, message: str | bytes) -> list[InEvent]:
        msg = provider_message(message, PROVIDER)
        event = msg.get("event")
        if event == "media":
            return self._media_in(msg)
        if event in ("playedStream", "played"):  # "played": the name an older Plivo page gives it
            name = msg.get("name")
            if not isinstance(name, str):
                raise ProtocolError('playedStream message needs {"name": "..."}')
            return [MarkPlayed(name)]
        if event == "start":
            return self._start(msg)
        if event == "dtmf":
            return dtmf_events(msg, "plivo_dtmf")
        if event == "clearedAudio":
            return [Notice("clearedAudio: Plivo flushed its playback buffer", "plivo_cleared_audio", logging.DEBUG)]
        if event == "stop":
            # not in Plivo's protocol (it closes the socket instead); from a bridge, it can only mean this
            return [Notice(f"stopped (call {self.call_id})", level=logging.INFO), Stop(finish=False)]
        return unknown_event(event, "plivo_unknown_events")

    def _media_in(self, msg: dict[str, Any]) -> list[InEvent]:
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ProtocolError('media message without {"media": {"payload": "<base64>"}}')
        track = media.get("track", "inbound")
        if track != "inbound":
            # audioTrack="both" (one-way streams only) also carries what the caller hears: not input
            return [Notice(f"ignored media of track {str(track)[:40]!r}", "plivo_media_other_track", logging.DEBUG)]
        data = decode_payload(media)
        return [AudioIn(data)] if data else []

    def _start(self, msg: dict[str, Any]) -> list[InEvent]:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError('start message without a "start" object')
        sid = start.get("streamId") or msg.get("streamId")
        if not isinstance(sid, str) or not sid:
            raise ProtocolError("start message without a streamId")
        if self.stream_id is not None:
            return [Notice(f"ignored a second start (stream {sid[:40]!r}); the first one stands",
                           "plivo_repeated_start")]
        call_id = start.get("callId")
        self.stream_id, self.call_id = sid, call_id if isinstance(call_id, str) else None
        fmt, notes = self._media_format(start.get("mediaFormat"))
        self.format = fmt
        self._media = {"contentType": CONTENT_TYPES[fmt.encoding], "sampleRate": fmt.sample_rate}
        raw_headers = msg.get("extra_headers", start.get("extra_headers"))
        params, problem = extra_headers(raw_headers)
        if problem is not None:
            notes.append(problem)
        context = {
            "streamId": sid,
            "callId": self.call_id,
            "accountId": start.get("accountId"),
            "tracks": start.get("tracks"),
            "mediaFormat": start.get("mediaFormat"),
            "extra_headers": raw_headers,
            "customParameters": params,
        }
        notes.insert(0, Notice(f"started: call {self.call_id}, {fmt.encoding} {fmt.sample_rate} Hz",
                               level=logging.INFO))
        # The reply goes back in the caller's encoding and rate (L16 16 kHz in, L16 16 kHz out).
        return [Start(format=fmt, output_format=fmt, client_id=sid, context=context), *notes]

    def _media_format(self, value: Any) -> tuple[AudioFormat, list[Notice]]:
        if value is None:
            return DEFAULT_FORMAT, [Notice("start without mediaFormat; assuming audio/x-l16 8000 Hz "
                                           "(the <Stream> default)", "plivo_bad_media_format")]
        if not isinstance(value, dict):
            return DEFAULT_FORMAT, [self._bad_format(f"mediaFormat must be an object, got {type(value).__name__}")]
        name = value.get("encoding", "audio/x-l16")
        base, _, params = str(name).partition(";")  # tolerate "audio/x-l16;rate=16000", as <Stream> spells it
        encoding = MEDIA_ENCODINGS.get(base.strip().lower())
        if encoding is None:
            return DEFAULT_FORMAT, [self._bad_format(f"unsupported mediaFormat.encoding {str(name)[:40]!r}")]
        rate: Any = value.get("sampleRate")
        if rate is None:
            rate = next((p.split("=", 1)[1] for p in params.split(";") if p.strip().startswith("rate=")), 8000)
        notes: list[Notice] = []
        try:
            fmt = AudioFormat(encoding, finite_int(rate, "mediaFormat.sampleRate"))
        except FormatError as exc:
            fmt = AudioFormat(encoding, 8000)
            notes.append(self._bad_format(str(exc), encoding))
        if (fmt.encoding, fmt.sample_rate) not in PLIVO_FORMATS:
            notes.append(Notice(f"{CONTENT_TYPES[encoding]} at {fmt.sample_rate} Hz is not a format Plivo offers; "
                                "replying in it anyway", "plivo_unusual_media_format"))
        return fmt, notes

    @staticmethod
    def _bad_format(problem: str, encoding: str = DEFAULT_FORMAT.encoding) -> Notice:
        # Never fatal: carry on in a format Plivo offers, but say so loudly.
        return Notice(f"{problem}; assuming {CONTENT_TYPES[encoding]} 8000 Hz", "plivo_bad_media_format",
                      logging.ERROR)

    # ---- outbound ------------------------------------------------------------

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if self.stream_id is None:
            return None  # before start there is no call to play to, nor a format to label audio with
        if isinstance(event, AudioOut):
            return dumps({"event": "playAudio", "media": {**self._media, "payload": encode_payload(event.data)}})
        if isinstance(event, Mark):
            return dumps({"event": "checkpoint", "streamId": self.stream_id, "name": event.name})
        if isinstance(event, Clear):
            return dumps({"event": "clearAudio", "streamId": self.stream_id})
        return None  # not for Plivo's ears: the driver logs it


def extra_headers(value: Any) -> tuple[dict[str, str], Notice | None]:
    """``extra_headers`` in any of the spellings seen (``k=v;k=v``, ``k=v,k=v``, JSON, ``{k: v}``) as a dict."""
    if value is None or value == "":
        return {}, None
    if isinstance(value, dict):
        return {str(k): v if isinstance(v, str) else _header_text(v) for k, v in value.items()}, None
    if not isinstance(value, str):
        return {}, Notice(f"ignored extra_headers of type {type(value).__name__}", "plivo_bad_extra_headers")
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            text = text[1:-1] if text.endswith("}") else text[1:]  # "{X-PH-k: v}": braces, not JSON
        else:
            if isinstance(parsed, dict):
                return extra_headers(parsed)
    params: dict[str, str] = {}
    for item in _PAIR_SEPARATORS.split(text):
        sep = "=" if "=" in item else ":"
        key, found, val = item.partition(sep)
        key = key.strip().strip("'\"")
        if found and key:
            params[key] = val.strip().strip("'\"")
    return params, None


def _header_text(value: Any) -> str:
    """A header value that is not a string, as text: its JSON, where JSON can spell it (a client's
    ``NaN`` or ``Infinity`` cannot be, nor nesting past the encoder's limit), else its repr, cut short."""
    try:
        return dumps(value)
    except (ValueError, RecursionError):
        return repr(value)[:200]
