"""Twilio Media Streams, as Twilio's side of ``/telephone/handler`` spells it."""

from __future__ import annotations

import base64
import json
from typing import Any

from peers.base import Received

ACCOUNT = "AC00000000000000000000000000000001"


class TwilioWire:
    provider = "twilio"
    path = "/telephone/handler"
    marks_on_clear = True  # Twilio returns the marks still queued in a cleared buffer

    def __init__(self, n: int = 1, *, encoding: str = "mulaw", custom: dict[str, str] | None = None) -> None:
        self.stream_sid = f"MZ{n:032x}"
        self.call_sid = f"CA{n:032x}"
        self.encoding = encoding
        self.sample_rate = 8000
        self.custom = custom or {}
        self.seq = 0
        self.chunk = 0

    def _msg(self, msg: dict[str, Any]) -> str:
        self.seq += 1
        return json.dumps({**msg, "sequenceNumber": str(self.seq)})

    def opening(self) -> list[str | bytes]:
        name = "audio/x-alaw" if self.encoding == "alaw" else "audio/x-mulaw"
        return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                self._msg({"event": "start", "streamSid": self.stream_sid, "start": {
                    "accountSid": ACCOUNT, "streamSid": self.stream_sid, "callSid": self.call_sid,
                    "tracks": ["inbound"], "customParameters": self.custom,
                    "mediaFormat": {"encoding": name, "sampleRate": 8000, "channels": 1}}})]

    def media(self, payload: bytes) -> str:
        self.chunk += 1
        return self._msg({"event": "media", "streamSid": self.stream_sid, "media": {
            "track": "inbound", "chunk": str(self.chunk), "timestamp": str(self.chunk * 20),
            "payload": base64.b64encode(payload).decode()}})

    def dtmf(self, digit: str) -> str:
        return self._msg({"event": "dtmf", "streamSid": self.stream_sid,
                          "dtmf": {"track": "inbound_track", "digit": digit}})

    def played(self, name: str) -> str:
        return self._msg({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def cleared(self) -> None:
        return None

    def stop(self) -> str:
        return self._msg({"event": "stop", "streamSid": self.stream_sid,
                          "stop": {"accountSid": ACCOUNT, "callSid": self.call_sid}})

    def read(self, message: str | bytes) -> Received:
        msg = json.loads(message)
        event = msg.get("event")
        if event == "media":
            return Received("media", base64.b64decode(msg["media"]["payload"]), message=msg)
        if event == "mark":
            return Received("mark", name=msg["mark"]["name"], message=msg)
        if event == "clear":
            return Received("clear", message=msg)
        return Received("other", message=msg)
