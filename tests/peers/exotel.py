"""Exotel's Voicebot applet (bidirectional AgentStream), as Exotel's side of ``/telephone/exotel`` spells it.

As https://developer.exotel.com/docs/agentstream/websocket-protocol shows it: a
bare ``connected``, then ``start``, ``media``, ``dtmf``, ``mark`` and ``stop``,
each but ``connected`` with a ``sequence_number`` (a string, from 1 at
``start``) and the ``stream_sid``; media ``chunk`` counts from 1 and
``timestamp`` is the milliseconds of audio streamed so far. Exotel sends nothing
back for a ``clear``, and its docs promise a ``mark`` only once the audio before
it has played, so a flush reports no markers.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from peers.base import Received

ACCOUNT = f"AC{1:024x}"
EXOPHONE = "+918047000100"  # the number the caller dialled (an Exophone)
MEDIA_FORMATS = {"pcm16": ("audio/x-raw", "16"), "mulaw": ("audio/x-mulaw", "8"), "alaw": ("audio/x-alaw", "8")}
MIN_CHUNK_BYTES = 3200  # Exotel's smallest audio message, in multiples of 320 bytes (20 ms at 8 kHz)


class ExotelWire:
    provider = "exotel"
    marks_on_clear = False  # the docs are silent: a flush reports nothing, queued markers come when due

    def __init__(self, n: int = 1, *, encoding: str = "pcm16", custom: dict[str, str] | None = None,
                 sample_rate: int = 8000) -> None:
        self.stream_sid = f"MZ{n:024x}"
        self.call_sid = f"CA{n:024x}"
        self.caller = f"+9198{n % 10**8:08d}"
        self.encoding = encoding
        self.sample_rate = sample_rate
        # the applet's URL; a rate other than the default is asked for on it
        self.path = "/telephone/exotel" if sample_rate == 8000 else f"/telephone/exotel?sample-rate={sample_rate}"
        self.custom = custom or {}
        self.seq = 0
        self.chunk = 0
        self.streamed = 0  # bytes of audio sent, for the timestamps

    @property
    def reply_frame_ms(self) -> float:
        """The audio a server's message should carry for Exotel: the shortest 20 ms multiple holding 3200
        bytes at this rate (at most 200 ms), for tests that check frame sizes per provider."""
        step = self.sample_rate * 2 * 20 // 1000
        return min(20.0 * -(-MIN_CHUNK_BYTES // step), 200.0)

    def _msg(self, event: str, body: dict[str, Any]) -> str:
        self.seq += 1
        return json.dumps({"event": event, "sequence_number": str(self.seq), "stream_sid": self.stream_sid,
                           **body})

    def opening(self) -> list[str | bytes]:
        encoding, bits = MEDIA_FORMATS[self.encoding]
        return [json.dumps({"event": "connected"}),
                self._msg("start", {"start": {
                    "stream_sid": self.stream_sid, "call_sid": self.call_sid, "account_sid": ACCOUNT,
                    "from": self.caller, "to": EXOPHONE, "custom_parameters": self.custom,
                    "media_format": {"encoding": encoding, "sample_rate": str(self.sample_rate),
                                     "bit_rate": bits}}})]

    def media(self, payload: bytes) -> str:
        self.chunk += 1
        self.streamed += len(payload)
        width = 2 if self.encoding == "pcm16" else 1
        ms = self.streamed * 1000 // (self.sample_rate * width)
        return self._msg("media", {"media": {"chunk": str(self.chunk), "timestamp": str(ms),
                                             "payload": base64.b64encode(payload).decode()}})

    def dtmf(self, digit: str) -> str:
        return self._msg("dtmf", {"dtmf": {"digit": digit, "duration": "100"}})

    def played(self, name: str) -> str:
        return self._msg("mark", {"mark": {"name": name}})

    def cleared(self) -> None:
        return None

    def stop(self) -> str:
        return self._msg("stop", {"stop": {"call_sid": self.call_sid, "account_sid": ACCOUNT,
                                           "reason": "callended"}})

    def read(self, message: str | bytes) -> Received:
        if isinstance(message, bytes):
            return Received("other", message=message)  # Exotel takes JSON text only
        msg = json.loads(message)
        event = msg.get("event") if isinstance(msg, dict) else None
        if event == "media":
            return Received("media", base64.b64decode(msg["media"]["payload"]), message=msg)
        if event == "mark":
            return Received("mark", name=msg["mark"]["name"], message=msg)
        if event == "clear":
            return Received("clear", message=msg)
        return Received("other", message=msg)
