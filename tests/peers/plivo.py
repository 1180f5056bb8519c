"""Plivo Audio Streams, as Plivo's side of ``/telephone/plivo`` spells it.

Message shapes from https://www.plivo.com/docs/voice/audio-streaming/audio-streaming and
Plivo's stream SDKs: numeric ``sequenceNumber`` from 1 over every message, numeric ``chunk``,
``timestamp`` as a string of Unix milliseconds, ``extra_headers`` on start, media and dtmf.
Plivo sends nothing when the call ends (it closes the socket), and reports no checkpoint
that a ``clearAudio`` dropped.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from peers.base import Received

ACCOUNT = "MAZDQ1ZDIYNTC0OWY2MJ"  # Plivo auth ids: "MA" and 18 capitals or digits
CONTENT_TYPES = {"mulaw": "audio/x-mulaw", "pcm16": "audio/x-l16"}
FORMATS = {("mulaw", 8000), ("pcm16", 8000), ("pcm16", 16000)}  # what <Stream contentType> offers


class PlivoWire:
    provider = "plivo"
    path = "/telephone/plivo"
    marks_on_clear = False  # playedStream is sent only for audio that did play

    def __init__(self, n: int = 1, *, encoding: str = "mulaw", custom: dict[str, str] | None = None,
                 sample_rate: int = 8000) -> None:
        if (encoding, sample_rate) not in FORMATS:
            raise ValueError(f"Plivo streams {sorted(FORMATS)}, not {encoding} at {sample_rate} Hz")
        self.stream_id = f"{n:08x}-5e7a-4d2b-9c1f-{n:012x}"  # UUIDs, distinct per call
        self.call_id = f"{n:08x}-ca11-4f6e-8a3d-{n:012x}"
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.custom = custom or {}
        # the <Stream extraHeaders> as the protocol reference shows them: "k=v;k=v"
        self.extra_headers = ";".join(f"{k}={v}" for k, v in self.custom.items())
        self.seq = 0
        self.chunk = 0
        self.t0_ms = int(time.time() * 1000)

    def _msg(self, msg: dict[str, Any]) -> str:
        self.seq += 1
        return json.dumps({"event": msg.pop("event"), "sequenceNumber": self.seq, **msg})

    def opening(self) -> list[str | bytes]:
        return [self._msg({"event": "start", "start": {
            "callId": self.call_id, "streamId": self.stream_id, "accountId": ACCOUNT, "tracks": ["inbound"],
            "mediaFormat": {"encoding": CONTENT_TYPES[self.encoding], "sampleRate": self.sample_rate}},
            "extra_headers": self.extra_headers})]

    def media(self, payload: bytes) -> str:
        self.chunk += 1
        return self._msg({"event": "media", "streamId": self.stream_id, "media": {
            "track": "inbound", "timestamp": str(self.t0_ms + self.chunk * 20), "chunk": self.chunk,
            "payload": base64.b64encode(payload).decode()}, "extra_headers": self.extra_headers})

    def dtmf(self, digit: str) -> str:
        return self._msg({"event": "dtmf", "streamId": self.stream_id, "dtmf": {
            "track": "inbound", "digit": digit, "timestamp": str(self.t0_ms + self.chunk * 20)},
            "extra_headers": self.extra_headers})

    def played(self, name: str) -> str:
        return self._msg({"event": "playedStream", "streamId": self.stream_id, "name": name})

    def cleared(self) -> str:
        return self._msg({"event": "clearedAudio", "streamId": self.stream_id})

    def stop(self) -> None:
        return None  # Plivo hangs up by closing the socket

    def read(self, message: str | bytes) -> Received:
        msg = json.loads(message)
        event = msg.get("event")
        if event == "playAudio":
            media = msg["media"]
            # Plivo plays audio labelled in the call's own format; anything else it would not play as sent
            if (media.get("contentType"), media.get("sampleRate")) == (CONTENT_TYPES[self.encoding],
                                                                       self.sample_rate):
                return Received("media", base64.b64decode(media["payload"]), message=msg)
        elif event == "checkpoint" and msg.get("streamId") == self.stream_id:
            return Received("mark", name=msg["name"], message=msg)
        elif event == "clearAudio" and msg.get("streamId") == self.stream_id:
            return Received("clear", message=msg)
        return Received("other", message=msg)
