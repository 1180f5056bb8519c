"""What flows into and out of a session, independent of any wire dialect.

Dialects (``wsstream.dialects``) translate wire messages to these inbound
events and these outbound events to wire messages; the session sees only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsstream.codecs import AudioFormat

# ---- inbound -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    format: AudioFormat | None = None
    output_format: AudioFormat | None = None
    inputs: Any = None
    debug: bool = False
    client_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AudioIn:
    data: bytes  # in the session's input format
    encoding: str | None = None  # overrides the input encoding (a dialect that knows better)


@dataclass(frozen=True, slots=True)
class SetInputs:
    data: Any


@dataclass(frozen=True, slots=True)
class Trigger:
    pass


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    name: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    finish: bool = True  # finish the reply in progress first (/ws); False: hang up now (a call ended)


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


InEvent = Start | AudioIn | SetInputs | Trigger | MarkPlayed | Ping | Stop | Dtmf

# ---- outbound ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Log:
    name: str  # started_talking, pause_detected, response_starting, pause_tentative, pause_cancelled
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VadTrace:
    probs: list[float]
    t: float


@dataclass(frozen=True, slots=True)
class AudioOut:
    data: bytes  # one frame in the session's output format


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Clear:
    pass


@dataclass(frozen=True, slots=True)
class FetchOutput:
    data: Any


@dataclass(frozen=True, slots=True)
class SendInput:
    data: Any = None


@dataclass(frozen=True, slots=True)
class Error:
    message: str


@dataclass(frozen=True, slots=True)
class Warning:
    message: str


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    code: int = 1000
    reason: str = ""


OutEvent = Log | VadTrace | AudioOut | Mark | Clear | FetchOutput | SendInput | Error | Warning | Pong | Close
