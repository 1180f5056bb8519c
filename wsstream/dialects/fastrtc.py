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
from wsstream.dialects.base import ProtocolError, dumps, fastrtc_message, load_json_object
from wsstream.dialects.native import decode_payload
from wsstream.events import (
    AudioIn,
    AudioOut,
    InEvent,
    OutEvent,
    Ping,
    Start,
    Stop,
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
        return fastrtc_message(event)  # None for mark, clear, vad traces: not in fastrtc's protocol


def route(server: WsServer, query: str) -> tuple[FastrtcDialect, dict[str, Any]]:
    """``/websocket/offer``: μ-law in at the app's input rate, μ-law out at its output rate."""
    app = server.app
    try:
        fmt_in = AudioFormat("mulaw", app.input_sample_rate)
        fmt_out = AudioFormat("mulaw", app.output_sample_rate)
    except FormatError as exc:
        raise ProtocolError(f"server misconfigured for /websocket/offer: {exc}", fatal=True, code=1011) from None
    return FastrtcDialect(), {"input_format": fmt_in, "output_format": fmt_out}
