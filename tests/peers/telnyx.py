"""Telnyx media streaming in bidirectional RTP mode, as Telnyx's side of ``/telephone/telnyx`` spells it.

Message shapes as https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming shows
them: string sequence numbers over every message after ``connected``, ``stream_id`` at the top level,
snake_case throughout. The ids are made up, in Telnyx's forms (upper-case UUID stream ids, ``v3:``
call control ids). An A-law or L16 call is one whose stream was started with that bidirectional codec,
which the stream URL's query tells the server (the start message does not).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np

from peers.base import Received

USER_ID = "7d0a3c52-4be1-4f96-a3d8-2c61e9b05f14"  # the (made-up) Telnyx account the calls belong to
# wsstream's encoding -> Telnyx's codec and its rate
CODECS = {"mulaw": ("PCMU", 8000), "alaw": ("PCMA", 8000), "pcm16": ("L16", 16000)}


def _swap(data: bytes) -> bytes:
    """pcm16 (little-endian, as the peer holds audio) to L16 (big-endian, RTP's) and back."""
    return np.frombuffer(data, np.uint16).byteswap().tobytes()


class TelnyxWire:
    provider = "telnyx"
    marks_on_clear = True  # "the clear message will also result in all queued marks being sent back"

    def __init__(self, n: int = 1, *, encoding: str = "mulaw", custom: dict[str, str] | None = None) -> None:
        self.codec, self.sample_rate = CODECS[encoding]
        self.encoding = encoding
        digest = hashlib.sha256(f"wsstream telnyx call {n}".encode()).digest()  # 32 bytes of ids for call n
        self.stream_id = str(uuid.UUID(bytes=digest[:16], version=4)).upper()
        self.call_session_id = str(uuid.UUID(bytes=digest[16:], version=1))
        self.call_control_id = "v3:" + base64.urlsafe_b64encode(digest + digest[:8]).decode().rstrip("=")
        self.caller = f"+1312555{n % 10000:04d}"
        self.custom = custom or {}
        self.path = "/telephone/telnyx"
        if self.codec != "PCMU":  # PCMU 8 kHz is Telnyx's default bidirectional codec: no query needed
            self.path += (f"?stream_bidirectional_codec={self.codec}"
                          f"&stream_bidirectional_sampling_rate={self.sample_rate}")
        self.seq = 0
        self.chunk = 0

    def _msg(self, msg: dict[str, Any]) -> str:
        self.seq += 1
        return json.dumps({"event": msg.pop("event"), "sequence_number": str(self.seq), **msg,
                           "stream_id": self.stream_id})

    def opening(self) -> list[str | bytes]:
        return [json.dumps({"event": "connected", "version": "1.0.0"}),
                self._msg({"event": "start", "start": {
                    "user_id": USER_ID,
                    "call_control_id": self.call_control_id,
                    "call_session_id": self.call_session_id,
                    "from": self.caller,
                    "to": "+13125550199",
                    "tags": [],
                    "client_state": base64.b64encode(b"wsstream test call").decode(),
                    "custom_parameters": self.custom,
                    "media_format": {"encoding": self.codec, "sample_rate": self.sample_rate, "channels": 1}}})]

    def media(self, payload: bytes) -> str:
        self.chunk += 1
        data = _swap(payload) if self.codec == "L16" else payload
        return self._msg({"event": "media", "media": {
            "track": "inbound", "chunk": str(self.chunk), "timestamp": str((self.chunk - 1) * 20),
            "payload": base64.b64encode(data).decode()}})

    def dtmf(self, digit: str) -> str:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return self._msg({"event": "dtmf", "occurred_at": now, "dtmf": {"digit": digit}})

    def played(self, name: str) -> str:
        return self._msg({"event": "mark", "mark": {"name": name}})

    def cleared(self) -> None:
        return None  # Telnyx confirms a clear only by returning the queued marks (marks_on_clear)

    def stop(self) -> str:
        return self._msg({"event": "stop", "stop": {"user_id": USER_ID, "call_control_id": self.call_control_id}})

    def error(self, code: int = 100003, title: str = "malformed_frame",
              detail: str = "Received frame was not formed correctly") -> str:
        """Telnyx's report of a message of ours it did not take (not part of the Wire protocol)."""
        return json.dumps({"event": "error", "payload": {"code": code, "title": title, "detail": detail},
                           "stream_id": self.stream_id})

    def read(self, message: str | bytes) -> Received:
        msg = json.loads(message)
        event = msg.get("event")
        if event == "media":
            data = base64.b64decode(msg["media"]["payload"])
            return Received("media", _swap(data) if self.codec == "L16" else data, message=msg)
        if event == "mark":
            return Received("mark", name=msg["mark"]["name"], message=msg)
        if event == "clear":
            return Received("clear", message=msg)
        return Received("other", message=msg)
