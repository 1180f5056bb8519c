"""The server's log lines: plain text, or one JSON object per line, each with the stream it is about.

A line is about a stream when it is logged while that stream's code runs: its runner's tasks and timer
(reply functions included, in their threads too), and its calls from the drivers and the inference
worker, all run with ``STREAM_ID`` set to the stream's id. ``StreamIdFilter`` copies it onto the
record (a record given ``extra={"stream_id": ...}`` keeps its own), so log collectors can follow one
call without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

STREAM_ID: ContextVar[str | None] = ContextVar("wsstream_stream_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


class StreamIdFilter(logging.Filter):
    """Puts ``stream_id`` (None when the line is about no stream) on every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "stream_id", None) is None:
            record.stream_id = STREAM_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped, never split it):
    time (UTC, ISO 8601), level, logger, message, pid, and stream_id, exc_info, stack_info when there is one.
    ASCII only, so a client's bytes quoted in a message can never make a line unwritable."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # (with --workers, stream ids are per worker: s1 in each)
        }
        stream_id = getattr(record, "stream_id", None)
        if stream_id is not None:
            out["stream_id"] = stream_id
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """The root logger's one handler, on stderr: ``fmt`` "text" (as before) or "json"."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(StreamIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
