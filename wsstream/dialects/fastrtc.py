"""The fastrtc WebSocket dialect (``/websocket/offer``).

What fastrtc's own WebSocket clients send and expect, unchanged: ``start`` with
``websocket_id``, ``media`` with base64 μ-law at the handler's input sample
rate, ``ping`` (answered with ``pong``) and ``stop`` (which, as in fastrtc,
ends the stream at once). Replies go back as ``{"event": "media", "media":
{"payload": ...}}`` in μ-law at the handler's output rate, and status as
fastrtc's ``{"type": ..., "data": ...}`` messages: ``log``, ``error``,
``warning``, ``send_input``, ``fetch_output`` (the same as on ``/ws``).
fastrtc sends no ``mark`` or ``clear`` on this transport, so neither do we.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wsstream.codecs import AudioFormat
from wsstream.config import StreamConfig
from wsstream.dialects.base import (
    ProtocolError,
    StreamSetup,
    decode_payload,
    dumps,
    encode_payload,
    fastrtc_message,
    load_json_object,
)
from wsstream.events import (
    AudioIn,
    AudioOut,
    InEvent,
    OutEvent,
    Ping,
    Start,
    Stop,
)
from wsstream.reply import ReplyOnPause


class FastrtcDialect:
    name = "fastrtc"
    path = "/websocket/offer"
    binary_audio = False

    def __init__(self) -> None:
        self.websocket_id: str | None = None

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """μ-law in at the app's input rate, μ-law out at its output rate (``ReplyOnPause`` checks them)."""
        return StreamSetup(AudioFormat("mulaw", app.input_sample_rate), AudioFormat("mulaw", app.output_sample_rate),
                           dataclasses.replace(config, asks_inputs=True))

    def audio(self, message: bytes) -> bytes:
        raise ProtocolError("binary frames are not audio on this path")

    def parse(self, message: str | bytes) -> list[InEvent]:
        if isinstance(message, bytes):
            raise ProtocolError('binary frame: send {"event": "media", "media": {"payload": "<base64 μ-law>"}}')
        msg = load_json_object(message)
        event = msg.get("event")
        if event == "media":
            return [AudioIn(decode_payload(msg.get("media")))]
        if event == "start":
            return [self._start(msg)]
        if event == "ping":
            return [Ping()]
        if event == "stop":
            return [Stop(finish=False)]
        if event is None:
            raise ProtocolError('message has no "event" field')
        raise ProtocolError(f"unknown event {event!r}; expected start, media, ping or stop")

    def _start(self, msg: dict[str, Any]) -> Start:
        ws_id = msg.get("websocket_id")
        self.websocket_id = str(ws_id) if ws_id is not None else None
        return Start(client_id=self.websocket_id, context={"websocket_id": self.websocket_id})

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if isinstance(event, AudioOut):
            return dumps({"event": "media", "media": {"payload": encode_payload(event.data)}})
        return fastrtc_message(event)  # None for mark, clear, vad traces: not in fastrtc's protocol

