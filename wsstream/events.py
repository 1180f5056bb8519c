"""What flows into and out of a stream, independent of any wire dialect.

Dialects (``wsstream.dialects``) translate wire messages to these inbound
events and these outbound events to wire messages; the stream sees only these.
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
    frame_ms: float | None = None  # reply frames of this length from now on (a provider that wants its own)


@dataclass(frozen=True, slots=True)
class AudioIn:
    data: bytes  # in the stream's input format


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


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a dialect noticed that is not an error for the stream (an unknown event type, a bad
    format it replaced): logged and counted by the core, so dialects stay free of side effects."""

    message: str
    metric: str = ""
    level: int = 30  # logging.WARNING


InEvent = Start | AudioIn | SetInputs | Trigger | MarkPlayed | Ping | Stop | Dtmf | Notice

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
    data: bytes  # one frame in the stream's output format


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
class Error:
    message: str
    logged: bool = field(default=False, compare=False)  # the core wrote it to the server's log already


@dataclass(frozen=True, slots=True)
class Warning:
    message: str


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class SendInput:
    """fastrtc's ``send_input``: the reply about to start wants the client's additional inputs now."""


@dataclass(frozen=True, slots=True)
class StopWord:
    """ReplyOnStopWords heard its stop word: what follows it is answered."""

    word: str


@dataclass(frozen=True, slots=True)
class Close:
    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """The stream is not admitted (server full, draining): said in the dialect's words, then Close."""

    error: str  # e.g. "concurrency_limit_reached"
    limit: int = 0


OutEvent = (Log | VadTrace | AudioOut | Mark | Clear | FetchOutput | Error | Warning | Pong | Close | Refused
            | StopWord | SendInput)
