"""The dialect interface."""

from __future__ import annotations

import json
from typing import Any, Protocol

from wsstream.events import Error, FetchOutput, InEvent, Log, MarkPlayed, OutEvent, Pong, SendInput, Warning


class ProtocolError(ValueError):
    """A message the dialect cannot understand. ``fatal`` ones end the connection with ``code``."""

    def __init__(self, message: str, *, fatal: bool = False, code: int = 1003) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.code = code


class Dialect(Protocol):
    name: str

    def parse(self, message: str | bytes) -> list[InEvent]:
        """One wire message to session events; raises ProtocolError."""
        ...

    def serialize(self, event: OutEvent) -> str | bytes | None:
        """One session event to a wire message, or None when this dialect does not send it."""
        ...


def fastrtc_message(event: OutEvent) -> str | None:
    """The JSON messages ``/ws`` and ``/websocket/offer`` both spell as fastrtc does, or None."""
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
    return None


def parse_mark(msg: dict[str, Any]) -> MarkPlayed:
    """``{"event": "mark", "mark": {"name": ...}}``, as /ws clients and Twilio both send it."""
    mark = msg.get("mark")
    if not isinstance(mark, dict) or not isinstance(mark.get("name"), str):
        raise ProtocolError('mark message needs {"mark": {"name": "..."}}')
    return MarkPlayed(mark["name"])


def load_json_object(message: str | bytes) -> dict[str, Any]:
    """Parse a text message that must be a JSON object, with errors a client can act on."""
    try:
        value = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected a JSON object, got {type(value).__name__}")
    return value


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_jsonable, allow_nan=False)


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    return str(value)
