"""Every tunable in one place: frozen, validated dataclasses; the CLI's flags are derived from them.

A field with ``help`` in its metadata is a ``wsstream serve`` flag of the same
name (``lead_ms`` is ``--lead-ms``), so the CLI, the embedding API and the ASGI
driver can never disagree on a default.
"""

from __future__ import annotations

import gc
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


def _flag(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _secret(help: str) -> Any:
    """A flag whose value is a secret: left out of the config's repr, so no log line can show it."""
    return field(default="", repr=False, metadata={"help": help})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


TOKENS_ENV = "WSSTREAM_TOKENS"
TWILIO_TOKEN_ENV = "WSSTREAM_TWILIO_AUTH_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_TOKENS = 64
# RFC 9110 token characters: what a token may hold to travel as a WebSocket subprotocol too
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _items(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated string (a flag, an environment variable) or a tuple, as a tuple of items."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(p.strip() for p in parts if p.strip())


def _origin(value: str) -> str:
    """An allowed Origin as browsers send it: scheme://host[:port], lower case, no path."""
    if value == "null":
        return value
    parts = urlsplit(value.lower())
    _check(parts.scheme in ("http", "https") and bool(parts.netloc) and parts.path in ("", "/")
           and not parts.query and not parts.fragment,
           f"allowed_origins: {value!r} is not an origin (scheme://host[:port], e.g. https://app.example.com)")
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class StreamConfig:
    """The rules of every stream (``wsstream.core.StreamCore``)."""

    lead_ms: float = _flag(160.0, "reply audio sent ahead of real time, at most (ms); "
                                  "telephony keeps it within 100-200")
    refill_ms: float = 40.0  # ... topped up when it falls this far below the lead (fewer wakeups)
    frame_ms: float = 20.0
    pad_last_frame: bool = False  # telephony wants every frame full-length
    asks_inputs: bool = False  # the dialect can send fastrtc's send_input (/ws, /websocket/offer: their setup)
    max_utterance_s: float = _flag(120.0, "a turn longer than this ends anyway (bounds memory)")
    max_message_s: float = 2.0  # one audio message may carry at most this much audio (fits the VAD buffer)
    outbox_limit: int = 1024  # outbound events waiting for a client that does not read
    playout_queue_frames: int = 100  # reply frames produced ahead of playout (backpressure on the reply)
    vad_high_water: float = 0.5  # fraction of the VAD buffer at which input waits for inference
    echo_gate: bool = _flag(False, "speech over a reply that is only the reply's own echo (a speakerphone, a "
                                   "browser without echo cancellation) does not interrupt it, nor become a turn; "
                                   "someone talking over the echo still does")
    first_chunk_timeout_s: float = _flag(0.0, "a reply whose function has yielded no audio this long after it was "
                                              "called is stopped, with an error to the client (0: no limit)")
    reply_timeout_s: float = _flag(0.0, "a reply function still running this long after it was called is stopped, "
                                        "with an error to the client; what it produced plays out (0: no limit). "
                                        "Its output is paced at real time: set it above your longest reply")
    max_reply_s: float = _flag(3600.0, "seconds of audio one reply may yield, at most: it is cut there, with an "
                                       "error to the client")
    vad_rate: int = _flag(16000, "rate Silero runs at for wideband streams: 8000 costs about a third less CPU "
                                 "(8 kHz streams always run at 8000)", choices=(16000, 8000))

    def __post_init__(self) -> None:
        _check(self.lead_ms > 0, f"lead_ms must be > 0, got {self.lead_ms}")
        _check(self.refill_ms >= 0, f"refill_ms must be >= 0, got {self.refill_ms}")
        _check(5.0 <= self.frame_ms <= 200.0, f"frame_ms must be in 5..200, got {self.frame_ms}")
        _check(self.max_utterance_s > 0, f"max_utterance_s must be > 0, got {self.max_utterance_s}")
        _check(0 < self.max_message_s <= 2.0, f"max_message_s must be in (0, 2], got {self.max_message_s}")
        _check(self.outbox_limit >= 16, f"outbox_limit must be >= 16, got {self.outbox_limit}")
        _check(self.playout_queue_frames >= 1, "playout_queue_frames must be >= 1")
        _check(0 < self.vad_high_water <= 1, f"vad_high_water must be in (0, 1], got {self.vad_high_water}")
        _check(0 <= self.first_chunk_timeout_s <= 86400,
               f"first_chunk_timeout_s must be in 0..86400 (0: none), got {self.first_chunk_timeout_s}")
        _check(0 <= self.reply_timeout_s <= 86400,
               f"reply_timeout_s must be in 0..86400 (0: none), got {self.reply_timeout_s}")
        _check(0 < self.max_reply_s <= 86400, f"max_reply_s must be in (0, 86400], got {self.max_reply_s}")
        _check(self.vad_rate in (16000, 8000), f"vad_rate must be 16000 or 8000, got {self.vad_rate}")

    @property
    def narrowband_vad(self) -> bool:
        return self.vad_rate == 8000


@dataclass(frozen=True)
class ServerConfig:
    """A server (any driver): where it listens, whom it admits, how inference is batched."""

    host: str = _flag("127.0.0.1", "address to listen on")
    port: int = _flag(8000, "port to listen on (0: any free port)")
    concurrency_limit: int = _flag(500, "streams open at once, in total (with --workers N each worker admits an "
                                        "equal share); more are refused (1013)")
    max_message_bytes: int = 1 << 20
    vad_batch_interval_ms: float = _flag(4.0, "least time between batched model calls: longer batches more "
                                              "streams per call (less CPU), shorter answers sooner")
    ping_interval_s: float = 20.0  # keepalive pings; a connection silent for 3 intervals is dropped
    write_stall_s: float = _flag(10.0, "a client that takes none of our output for this long (it does not read) "
                                       "is closed with 1008, and dropped if even the close cannot be sent")
    max_messages_per_s: float = _flag(
        1000.0, "WebSocket frames each connection may have handled per second, with a burst of as many (0: no "
                "limit); past it the server stops reading that client until the budget refills. 50/s is real "
                "time at 20 ms frames, so a file still goes at 20x; it stops floods of tiny frames (some 5 us "
                "of event loop each) from starving every other stream")
    reply_threads: int = _flag(32, "threads for plain (sync) reply functions, shared by every stream: a reply "
                                   "waits for one when all are busy (warned in the log), and fails if none is free "
                                   "in time")
    drain_s: float = _flag(0.0, "on SIGTERM/SIGINT, stop listening and let calls in progress go on for up to "
                                "this many seconds before closing them (default 0: close at once with 1001)")
    reuse_port: bool = False  # set for the workers of --workers N
    # Before each stream id (s1, s2, ...): --workers N gives worker i "w<i>-", so that ids are unique
    # across the workers of one port, in logs and hooks alike (each worker counts its own streams).
    stream_id_prefix: str = ""
    # Access control (wsstream.access), off by default: each setting applies to every WebSocket upgrade.
    auth_tokens: str | tuple[str, ...] = _secret(
        "shared secrets, comma-separated, one of which every WebSocket client must present (Authorization: "
        "Bearer, ?token= or the subprotocol wsstream.token.<t>); better in the environment variable "
        f"{TOKENS_ENV}, as a flag shows in the process list")
    twilio_auth_token: str = _secret(
        "the Twilio account's auth token: Twilio's upgrades on /telephone/handler must carry a valid "
        f"X-Twilio-Signature (instead of a token); better in the environment variable {TWILIO_TOKEN_ENV}")
    public_url: str = _flag("", "the server's URL as providers call it (wss://voice.example.com), over which "
                                "Twilio's signature is checked; needed behind a TLS-terminating proxy")
    allowed_origins: str | tuple[str, ...] = _flag(
        "", "origins of the web pages allowed to connect, comma-separated (https://app.example.com); a "
            "handshake with another Origin is refused (403), one without Origin (not a browser) is not")
    max_connections_per_ip: int = _flag(0, "WebSocket connections one client address may hold open at once; "
                                           "more are refused (429); 0: no cap. Per process, per proxy behind one")
    max_handshakes_per_ip_per_s: float = _flag(0.0, "WebSocket handshakes one client address may make per "
                                                    "second (bursts of as many); more are refused (429); 0: no cap")
    certfile: str = _flag("", "serve TLS (wss://, https://) with this PEM certificate chain")
    keyfile: str = _flag("", "the private key of --certfile, when it is not in that file")
    stream: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}")
        _check(self.concurrency_limit >= 0, f"concurrency_limit must be >= 0 (0 refuses every stream), "
                                            f"got {self.concurrency_limit}")
        _check(self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024")
        _check(0 <= self.vad_batch_interval_ms <= 100, "vad_batch_interval_ms must be in 0..100")
        _check(self.ping_interval_s > 0, "ping_interval_s must be > 0")
        _check(self.max_messages_per_s == 0 or self.max_messages_per_s >= 10,
               f"max_messages_per_s must be 0 (no limit) or >= 10, got {self.max_messages_per_s}")
        _check(self.write_stall_s > 0, f"write_stall_s must be > 0, got {self.write_stall_s}")
        _check(self.drain_s >= 0, "drain_s must be >= 0")
        _check(self.reply_threads >= 1, f"reply_threads must be >= 1, got {self.reply_threads}")
        _check(re.fullmatch(r"[A-Za-z0-9_.-]{0,32}", self.stream_id_prefix) is not None,
               f"stream_id_prefix must be at most 32 of A-Z a-z 0-9 _ . -, got {self.stream_id_prefix!r}")
        self._check_access()

    def _check_access(self) -> None:
        """Normalise and validate the access settings; secrets not given come from the environment."""
        tokens = _items(self.auth_tokens or os.environ.get(TOKENS_ENV, ""))
        for token in tokens:  # (the message never quotes a token)
            _check(len(token) >= MIN_TOKEN_CHARS and _TOKEN_CHARS.fullmatch(token) is not None,
                   f"auth_tokens: each token must be at least {MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 and "
                   "!#$%&'*+-.^_`|~ (no commas, spaces, / or =), e.g. python -c \"import secrets; "
                   "print(secrets.token_urlsafe(32))\"")
        _check(len(tokens) <= MAX_TOKENS, f"auth_tokens: at most {MAX_TOKENS} tokens")
        object.__setattr__(self, "auth_tokens", tokens)
        twilio = (self.twilio_auth_token or os.environ.get(TWILIO_TOKEN_ENV, "")).strip()
        object.__setattr__(self, "twilio_auth_token", twilio)
        if self.public_url:
            parts = urlsplit(self.public_url)
            _check(parts.scheme in ("ws", "wss") and bool(parts.netloc) and not parts.query and not parts.fragment,
                   f"public_url must be ws:// or wss:// with a host and no query, got {self.public_url!r}")
            object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        object.__setattr__(self, "allowed_origins", tuple(_origin(o) for o in _items(self.allowed_origins)))
        _check(self.max_connections_per_ip >= 0,
               f"max_connections_per_ip must be >= 0, got {self.max_connections_per_ip}")
        _check(self.max_handshakes_per_ip_per_s >= 0,
               f"max_handshakes_per_ip_per_s must be >= 0, got {self.max_handshakes_per_ip_per_s}")
        _check(bool(self.certfile) or not self.keyfile, "keyfile needs certfile")

    @property
    def tls(self) -> bool:
        """The server itself speaks TLS (wss://)."""
        return bool(self.certfile)


def tune_process(*, switch_interval_s: float = 0.0005, freeze_gc: bool = True) -> None:
    """What ``wsstream serve`` does to the process once the server is up; an embedder calls it too.

    The inference thread hands batches to and from the loop thread: Python's default 5 ms GIL switch
    interval would add up to that much to every pause_detected when both are busy. And everything
    loaded so far (modules, the model) lives as long as the process: frozen out of the collector's
    sight, a full collection under load scans only the streams' objects (a 24 ms stall of every
    stream at 200 streams without it, measured).
    """
    sys.setswitchinterval(switch_interval_s)
    if freeze_gc:
        gc.collect()
        gc.freeze()
