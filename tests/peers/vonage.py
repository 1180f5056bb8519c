"""Vonage Voice API WebSockets, as Vonage's side of ``/telephone/vonage`` spells it.

Vonage opens the socket and sends one text message, ``websocket:connected``, with
the NCCO endpoint's ``headers`` at its top level; then binary frames of raw L16,
and text events. It has no sequence numbers, timestamps or stream ids of its own,
and no stop message: the call ending closes the socket, so ``stop`` is None.
"""

from __future__ import annotations

import json
from typing import Any

from peers.base import Received


class VonageWire:
    provider = "vonage"
    path = "/telephone/vonage"
    marks_on_clear = False  # a clear drops what was queued; nothing says Vonage still reports the notifies in it

    def __init__(self, n: int = 1, *, encoding: str = "pcm16", custom: dict[str, str] | None = None,
                 sample_rate: int = 16000) -> None:
        if encoding != "pcm16":
            raise ValueError(f"Vonage streams L16 (pcm16) only, not {encoding!r}")
        # a call uuid in the form the docs show (aaaaaaaa-bbbb-cccc-dddd-0123456789ab), distinct per n
        self.call_uuid = f"aaaaaaaa-bbbb-cccc-dddd-{n:012x}"
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.frame_bytes = sample_rate // 50 * 2  # what Vonage sends and takes: 20 ms a message (320 / 640)
        self.custom = dict(custom or {})
        # the NCCO's headers, as an answer webhook usually writes them: the call's uuid, then the app's own
        self.headers: dict[str, Any] = {"uuid": self.call_uuid, **self.custom}
        self._payloads: dict[str, Any] = {}  # each marker's notify payload, to echo as Vonage does

    def opening(self) -> list[str | bytes]:
        headers = {k: v for k, v in self.headers.items() if k not in ("event", "content-type")}
        return [json.dumps({"event": "websocket:connected", "content-type": f"audio/l16;rate={self.sample_rate}",
                            **headers})]

    def media(self, payload: bytes) -> bytes:
        return bytes(payload)

    def dtmf(self, digit: str) -> str:
        # "on most digital phone systems this will be a fixed length": the docs' example is 260 ms
        return json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260})

    def played(self, name: str) -> str:
        return json.dumps({"event": "websocket:notify", "payload": self._payloads.pop(name, {"mark": name})})

    def cleared(self) -> str:
        return json.dumps({"event": "websocket:cleared"})

    def stop(self) -> None:
        return None  # Vonage hangs up by closing the socket

    def read(self, message: str | bytes) -> Received:
        if isinstance(message, bytes):
            return Received("media", message, message=message)
        try:
            msg = json.loads(message)
        except ValueError:
            return Received("other", message=message)
        if not isinstance(msg, dict):
            return Received("other", message=msg)
        action = msg.get("action")
        if action == "notify":
            payload = msg.get("payload")
            name = payload.get("mark") if isinstance(payload, dict) else None
            if isinstance(name, str):
                self._payloads[name] = payload
                return Received("mark", name=name, message=msg)
            return Received("other", message=msg)
        if action == "clear":
            return Received("clear", message=msg)
        return Received("other", message=msg)
