"""The Exotel Voicebot dialect (``/telephone/exotel``): Exotel's bidirectional AgentStream.

A call reaches us through a Voicebot applet (or Connect Voice AI with
``StreamType=bidirectional``) whose URL is ``wss://HOST/telephone/exotel``,
optionally with ``?sample-rate=16000`` (or 24000; 8000 is the default). Exotel
is the WebSocket client. Inbound, what Exotel sends, all JSON text:
``connected`` (bare); ``start`` with ``stream_sid`` and ``start.{stream_sid,
call_sid, account_sid, from, to, custom_parameters, media_format}``
(``media_format``: ``encoding`` "audio/x-raw", ``sample_rate`` "8000",
``bit_rate``); ``media`` (``media.payload``: base64 of raw 16-bit
little-endian mono PCM at the stream's rate, with ``chunk``, ``timestamp``);
``dtmf`` (``digit``, ``duration``); ``mark`` (our marker, once the audio before
it has played); ``stop`` (``reason`` "callended" or "stopped"). Every message
but ``connected`` carries ``sequence_number`` and ``stream_sid``.

Outbound, nothing but what Exotel takes: ``media`` (``{"event": "media",
"stream_sid": ..., "media": {"payload": ...}}``, PCM in the call's format),
``mark`` with our marker's name after each reply, ``clear`` on barge-in (Exotel
drops the audio it holds that has not started playing). Everything ``/ws`` would
send as ``log``, ``error``, ``warning`` and so on is left to the driver's log.

Unknown or malformed messages are noted (``Notice`` events, logged and counted
by the core) or raised as non-fatal ``ProtocolError``: a phone call must not
drop because the bridge sent something odd.

Read: https://developer.exotel.com/docs/agentstream/websocket-protocol (every
event, both directions, the audio table: PCM16 LE mono, 8000/16000/24000 Hz,
chunks of 3200 to 100000 bytes in multiples of 320),
https://developer.exotel.com/docs/agentstream/stream-voicebot-applet (the
applet's URL, ``?sample-rate=``, custom parameters, the chunk rules, the field
reference: ``stream_sid`` is snake_case and optional),
https://support.exotel.com/support/solutions/articles/3000108630-working-with-the-stream-and-voicebot-applet
(why the chunk rules: Exotel plays what it is sent in 320-byte packets, one
per 20 ms, and small chunks suffer from network jitter),
https://docs.exotel.com/exotel-agentstream/more ("100ms pcm chunks with 3200
bytes of raw audio"),
https://support.exotel.com/support/solutions/articles/3000132302-updated-extension-guide-working-with-the-stream-and-voicebot-applet-beta-
(beta options: ``audio/L16;rate=...`` and ``audio/x-mulaw;rate=8000`` media
formats, a ``track`` field when both tracks are streamed, custom parameters in
``connected``) and https://developer.exotel.com/docs/exoml/verbs/stream
(StartStream's ``content_type``, μ-law 8 kHz by default).

Decisions where the docs are silent or loose:

* Frame size. Exotel wants each audio message to be at least 3200 bytes and a
  multiple of 320. The docs call 3200 bytes "100 ms", which holds at 16 kHz
  only; we keep to the bytes: each reply frame is the shortest multiple of 20 ms
  holding 3200 bytes of PCM16 at the rate the URL asks for: 200 ms at 8 kHz
  (3200 bytes), 100 ms at 16 kHz (3200), 80 ms at 24 kHz (3840), the last frame
  padded. 20 ms steps are whole multiples of 320 bytes at all three rates.
  The pacing lead (100-200 ms) is kept as for every bridge, so Exotel holds at
  most the lead plus one frame; ``clear`` drops it all at once anyway.
* The rate. The URL's ``sample-rate`` (also read as ``sample_rate``) sets the
  stream's format and frame size before anything arrives; ``start``'s
  ``media_format.sample_rate`` (a string in the docs) then wins, with a warning
  when the two disagree. A rate our codecs take but Exotel does not document
  is used, with a warning; no number, inf, nan, huge or out of range falls back
  to the URL's rate (else 8000) with an error notice, never ending the call.
* The encoding. ``audio/x-raw``, ``raw`` and the other PCM spellings (and a
  missing one) are PCM16; ``audio/x-mulaw`` and ``audio/x-alaw`` (with a
  ``;rate=`` as content types have it) are taken too, replying in kind; an
  unknown one falls back to PCM16 with an error notice.
* Field names. The docs are snake_case and so is everything we send; Exotel's
  own samples also read ``streamSid``, ``callSid`` and ``customParameters`` in
  ``start``, so on this path those are accepted as well (``recognises`` looks
  for snake_case only: camelCase is Twilio's and Plivo's).
* ``media`` whose ``track`` is not the caller's (both tracks streamed) is
  ignored with a notice. ``clear`` and ``silence`` from Exotel, which the docs
  name but do not describe, are noted and ignored.
* ``stop`` hangs up whatever its reason: after "stopped" the flow has moved on
  to its next applet and nobody hears the reply.
* Nothing is sent before ``start`` names the stream: the docs always show a
  ``stream_sid`` in what we send.
"""

from __future__ import annotations

import logging
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
    finite_int,
    parse_mark,
    provider_message,
    telephony_setup,
    text_only,
    unknown_event,
)
from wsstream.events import AudioIn, AudioOut, Clear, Dtmf, InEvent, Mark, Notice, OutEvent, Start, Stop
from wsstream.reply import ReplyOnPause

DEFAULT_RATE = 8000
DOCUMENTED_RATES = (8000, 16000, 24000)
# media_format.encoding as Exotel's pages spell it ("audio/x-raw", "raw"), and the content types of its
# extended applet options and StartStream (the part before any ";rate=")
MEDIA_ENCODINGS = {
    **dict.fromkeys(("audio/x-raw", "raw", "base64", "slin", "audio/l16", "l16", "linear16", "pcm", "pcm16",
                     "audio/pcm", "s16le"), "pcm16"),
    **dict.fromkeys(("audio/x-mulaw", "audio/mulaw", "mulaw", "ulaw", "pcmu", "audio/pcmu"), "mulaw"),
    **dict.fromkeys(("audio/x-alaw", "audio/alaw", "alaw", "pcma", "audio/pcma"), "alaw"),
}
MIN_CHUNK_BYTES = 3200  # the smallest audio message Exotel wants ...
CHUNK_STEP_MS = 20  # ... in multiples of 320 bytes: 20 ms of PCM16 at 8 kHz (and whole multiples at 16, 24)
MAX_FRAME_MS = 200.0  # the longest frame the core cuts
DTMF_DIGITS = frozenset("0123456789*#ABCD")
PROVIDER = "Exotel"  # (in the error a binary frame gets)
CALLER_TRACKS = ("inbound", "inbound_track")
IGNORED_EVENTS = ("clear", "silence")  # named by Exotel's docs, nothing for us to do


def reply_frame_ms(rate: int) -> float:
    """The shortest 20 ms multiple holding Exotel's minimum message (3200 bytes of PCM16), at most 200 ms."""
    step_bytes = max(rate * 2 * CHUNK_STEP_MS // 1000, 1)
    steps = -(-MIN_CHUNK_BYTES // step_bytes)
    return min(float(steps * CHUNK_STEP_MS), MAX_FRAME_MS)


def parse_rate(value: Any, name: str) -> int:
    """A sample rate Exotel gave (a string in its docs) as an int our codecs take; FormatError otherwise."""
    rate = finite_int(value, name)
    AudioFormat("pcm16", rate)  # in range, or FormatError
    return rate


def _field(obj: dict[str, Any], snake: str, camel: str) -> Any:
    value = obj.get(snake)
    return obj.get(camel) if value is None else value


class ExotelDialect:
    name = "exotel"
    path = "/telephone/exotel"
    binary_audio = False

    def __init__(self) -> None:
        self.stream_sid: str | None = None
        self.call_sid: Any = None
        self.rate = DEFAULT_RATE  # the URL's sample-rate (8000 when it names none); start's may differ
        self._notes: list[Notice] = []  # what setup noticed, said with the first message (setup has no events)
        self._connected_params: dict[str, Any] = {}

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """PCM16 at the URL's ``sample-rate`` until ``start`` says otherwise; frames Exotel's minimum size."""
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        raw = params.get("sample-rate", params.get("sample_rate"))
        if raw is not None:
            try:
                self.rate = parse_rate(raw, "the URL's sample-rate")
            except FormatError as exc:
                self._notes.append(Notice(f"{exc}; assuming {DEFAULT_RATE} Hz", "exotel_bad_sample_rate",
                                          logging.ERROR))
            else:
                if self.rate not in DOCUMENTED_RATES:
                    self._notes.append(self._undocumented(self.rate))
        return telephony_setup(AudioFormat("pcm16", self.rate), config, frame_ms=reply_frame_ms(self.rate))

    @staticmethod
    def recognises(msg: dict[str, Any]) -> bool:
        """Exotel's ``start``: snake_case ``stream_sid`` and ``call_sid`` in it (Twilio's and Plivo's are
        camelCase, Telnyx has ``stream_id`` and ``call_control_id``; ``connected`` is everybody's)."""
        if not isinstance(msg, dict) or msg.get("event") != "start":
            return False
        start = msg.get("start")
        return (isinstance(start, dict) and isinstance(start.get("stream_sid"), str)
                and isinstance(start.get("call_sid"), str))

    def audio(self, message: bytes) -> bytes:
        raise text_only(PROVIDER)

    # ---- inbound -------------------------------------------------------------

    def parse(self, message: str | bytes) -> list[InEvent]:
        events = self._event(provider_message(message, PROVIDER))
        if self._notes:
            events = [*self._notes, *events]
            self._notes = []
        return events

    def _event(self, msg: dict[str, Any]) -> list[InEvent]:
        event = msg.get("event")
        if event == "media":
            return self._media(msg)
        if event == "start":
            return self._start(msg)
        if event == "mark":
            return [parse_mark(msg)]
        if event == "dtmf":
            return self._dtmf(msg)
        if event == "stop":
            stop = msg.get("stop")
            reason = stop.get("reason") if isinstance(stop, dict) else None
            # the caller hung up, or the flow went on to its next applet: nobody is left to hear a reply
            return [Notice(f"stopped ({str(reason)[:40]}; call {str(self.call_sid)[:64]})", level=logging.INFO),
                    Stop(finish=False)]
        if event == "connected":
            params = msg.get("custom_parameters")
            if isinstance(params, dict):  # (the beta applet options may put them here rather than in start)
                self._connected_params = dict(params)
            return [Notice("connected", level=logging.DEBUG)]
        if event in IGNORED_EVENTS:
            return [Notice(f"ignored {event!r} from Exotel", level=logging.DEBUG)]
        # Exotel may add message types; an unknown one is noted, not an error for the call.
        return unknown_event(event, "exotel_unknown_events")

    def _media(self, msg: dict[str, Any]) -> list[InEvent]:
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ProtocolError('media message without {"media": {"payload": "<base64>"}}')
        track = media.get("track")
        if track is not None and track not in CALLER_TRACKS:
            # both tracks streamed: the other one is what the caller hears, not the caller's voice
            return [Notice(f"ignored media of track {str(track)[:40]!r}", "exotel_media_other_track",
                           logging.DEBUG)]
        data = decode_payload(media)
        return [AudioIn(data)] if data else []

    def _dtmf(self, msg: dict[str, Any]) -> list[InEvent]:
        dtmf = msg.get("dtmf")
        if not isinstance(dtmf, dict):
            dtmf = {}
        digit = dtmf.get("digit")
        if type(digit) is int and 0 <= digit <= 9:
            digit = str(digit)
        if not isinstance(digit, str) or digit.upper() not in DTMF_DIGITS:
            raise ProtocolError(f'dtmf message needs {{"dtmf": {{"digit": "0-9, *, # or A-D"}}}}, '
                                f"got {str(digit)[:40]!r}")
        digit = digit.upper()
        try:
            held = f" for {finite_int(dtmf.get('duration'), 'duration')} ms"
        except FormatError:
            held = ""  # (only for the log)
        return [Notice(f"dtmf {digit}{held}", "exotel_dtmf", logging.DEBUG), Dtmf(digit)]

    def _start(self, msg: dict[str, Any]) -> list[InEvent]:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError('start message without a "start" object')
        sid = _field(msg, "stream_sid", "streamSid") or _field(start, "stream_sid", "streamSid")
        if not isinstance(sid, str) or not sid:
            raise ProtocolError("start message without a stream_sid")
        self.stream_sid = sid
        self.call_sid = _field(start, "call_sid", "callSid")
        media_format = _field(start, "media_format", "mediaFormat")
        fmt, notes = self._media_format(media_format)
        params = _field(start, "custom_parameters", "customParameters")
        context = {
            "stream_sid": sid,
            "call_sid": self.call_sid,
            "account_sid": _field(start, "account_sid", "accountSid"),
            "from": start.get("from"),
            "to": start.get("to"),
            "custom_parameters": {**self._connected_params, **(params if isinstance(params, dict) else {})},
            "media_format": media_format,
        }
        notes.insert(0, Notice(f"started: call {str(self.call_sid)[:64]}, {fmt.encoding} {fmt.sample_rate} Hz",
                               level=logging.INFO))
        # The reply goes back in the caller's format: Exotel plays what it is sent as it streams.
        return [Start(format=fmt, output_format=fmt, client_id=sid, context=context,
                      frame_ms=reply_frame_ms(fmt.sample_rate)), *notes]

    def _media_format(self, value: Any) -> tuple[AudioFormat, list[Notice]]:
        fallback = AudioFormat("pcm16", self.rate)
        if value is None:
            return fallback, []
        try:
            if not isinstance(value, dict):
                raise FormatError(f"media_format must be an object, got {type(value).__name__}")
            encoding = value.get("encoding")
            if encoding is None:
                encoding = "audio/x-raw"  # the applet's only documented format
            if not isinstance(encoding, str):
                raise FormatError(f"media_format.encoding must be a string, got {str(encoding)[:40]!r}")
            base, *options = (part.strip() for part in encoding.lower().split(";"))
            if base not in MEDIA_ENCODINGS:
                raise FormatError(f"unsupported media_format.encoding {encoding[:40]!r}")
            rate = _field(value, "sample_rate", "sampleRate")
            if rate is None:  # a content type's own ";rate=16000", else what the URL asked for
                rate = next((o[5:] for o in options if o.startswith("rate=")), self.rate)
            fmt = AudioFormat(MEDIA_ENCODINGS[base], parse_rate(rate, "media_format.sample_rate"))
        except (FormatError, TypeError, ValueError, OverflowError) as exc:
            # Never fatal: carry on with the format the URL asked for, but say so loudly.
            return fallback, [Notice(f"{exc}; assuming 16-bit PCM at {self.rate} Hz", "exotel_bad_media_format",
                                     logging.ERROR)]
        notes = []
        if fmt.sample_rate != self.rate:  # (the URL's own rate was judged in setup)
            if fmt.sample_rate not in DOCUMENTED_RATES:
                notes.append(self._undocumented(fmt.sample_rate))
            notes.append(Notice(f"start says {fmt.sample_rate} Hz, the URL's sample-rate {self.rate} Hz (8000 when "
                                f"absent): using {fmt.sample_rate} Hz", "exotel_rate_mismatch"))
        return fmt, notes

    @staticmethod
    def _undocumented(rate: int) -> Notice:
        return Notice(f"sample rate {rate} Hz is not one Exotel documents ({', '.join(map(str, DOCUMENTED_RATES))});"
                      " using it", "exotel_undocumented_rate")

    # ---- outbound ------------------------------------------------------------

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if self.stream_sid is None:
            return None  # no start yet: there is no stream to address
        if isinstance(event, AudioOut):
            return dumps({"event": "media", "stream_sid": self.stream_sid,
                          "media": {"payload": encode_payload(event.data)}})
        if isinstance(event, Mark):
            return dumps({"event": "mark", "stream_sid": self.stream_sid, "mark": {"name": event.name}})
        if isinstance(event, Clear):
            return dumps({"event": "clear", "stream_sid": self.stream_sid})
        return None  # not for Exotel's ears: the driver logs it
