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

import base64
from typing import TYPE_CHECKING, Any

from wsstream.codecs import AudioFormat, FormatError
from wsstream.dialects.base import ProtocolError, dumps, load_json_object
from wsstream.dialects.native import decode_payload
from wsstream.events import (
    AudioIn,
    AudioOut,
    Error,
    FetchOutput,
    InEvent,
    Log,
    OutEvent,
    Ping,
    Pong,
    SendInput,
    Start,
    Stop,
    Warning,
)

if TYPE_CHECKING:
    from wsstream.server import WsServer


class FastrtcDialect:
    name = "fastrtc"

    def __init__(self) -> None:
        self.websocket_id: str | None = None

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
            return dumps({"event": "media", "media": {"payload": base64.b64encode(event.data).decode()}})
        if isinstance(event, Log):
            return dumps({"type": "log", "data": event.name, **event.fields})
        if isinstance(event, FetchOutput):
            return dumps({"type": "fetch_output", "data": event.data})
        if isinstance(event, SendInput):
            return dumps({"type": "send_input", "data": event.data if event.data is not None else []})
        if isinstance(event, Error):
            return dumps({"type": "error", "data": event.message})
        if isinstance(event, Warning):
            return dumps({"type": "warning", "data": event.message})
        if isinstance(event, Pong):
            return dumps({"event": "pong"})
        return None  # mark, clear, vad traces: not part of fastrtc's WebSocket protocol


def route(server: WsServer, query: str) -> tuple[FastrtcDialect, dict[str, Any]]:
    """``/websocket/offer``: μ-law in at the app's input rate, μ-law out at its output rate."""
    app = server.app
    try:
        fmt_in = AudioFormat("mulaw", app.input_sample_rate)
        fmt_out = AudioFormat("mulaw", app.output_sample_rate)
    except FormatError as exc:
        raise ProtocolError(f"server misconfigured for /websocket/offer: {exc}", fatal=True, code=1011) from None
    return FastrtcDialect(), {"input_format": fmt_in, "output_format": fmt_out}
