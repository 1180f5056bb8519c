"""Reply functions for tests/test_metrics.py's server processes (``--handler tests.metrics_handlers:...``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger("tests.reply")


def logging_then_failing(audio: tuple[int, np.ndarray], *args: Any) -> Iterator[Any]:
    """Logs from its pool thread (the line must still name its stream), echoes, then raises (the server's
    traceback must stay one JSON line)."""
    rate, pcm = audio
    log.info("replying to %d samples\nsecond line of the message", pcm.size)
    yield rate, pcm
    raise RuntimeError("the model fell over")
