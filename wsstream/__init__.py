"""wsstream: a WebSocket voice server with streaming Silero VAD and pause detection.

The public API, for apps that run us (``serve``), embed our endpoints in their
own ASGI app (``Hub`` with ``wsstream.asgi``), or steer streams from their own
code (``Hub``'s control methods and hooks).
"""

from vad.detector import DetectorOptions
from wsstream.codecs import AudioFormat, FormatError
from wsstream.config import ServerConfig, StreamConfig, tune_process
from wsstream.core import ReplyState, StreamState
from wsstream.dialects import ProtocolError
from wsstream.hub import HOOKS, Hub, StreamRefused, UnknownStream
from wsstream.reply import AdditionalOutputs, CloseStream, ReplyContext, ReplyOnPause, current_context
from wsstream.runner import StreamInfo, StreamRunner
from wsstream.server import WsServer, serve
from wsstream.spotter import Heard, Spotter
from wsstream.stopwords import ReplyOnStopWords

__all__ = [
    "HOOKS",
    "AdditionalOutputs",
    "AudioFormat",
    "CloseStream",
    "DetectorOptions",
    "FormatError",
    "Heard",
    "Hub",
    "ProtocolError",
    "ReplyContext",
    "ReplyOnPause",
    "ReplyOnStopWords",
    "ReplyState",
    "ServerConfig",
    "Spotter",
    "StreamConfig",
    "StreamInfo",
    "StreamRefused",
    "StreamRunner",
    "StreamState",
    "UnknownStream",
    "WsServer",
    "current_context",
    "serve",
    "tune_process",
]
