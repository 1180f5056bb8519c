"""wsstream: a WebSocket voice server with streaming Silero VAD and pause detection."""

from vad.detector import DetectorOptions
from wsstream.codecs import AudioFormat
from wsstream.reply import AdditionalOutputs, CloseStream, ReplyContext, ReplyOnPause, current_context

__all__ = [
    "AdditionalOutputs",
    "AudioFormat",
    "CloseStream",
    "DetectorOptions",
    "ReplyContext",
    "ReplyOnPause",
    "current_context",
]
