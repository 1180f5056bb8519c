"""A reply function for issue 13's reply faults, run in a server process (``--handler
tests.reply_attacks:reply``): each stream picks what it gets with ``{"event": "input", "data":
{"kind": ...}}``; without one, the echo."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

TEN_MINUTES_RATE = 24000
_PERIOD = np.round(8000 * np.sin(2 * np.pi * 440 * np.arange(600) / TEN_MINUTES_RATE)).astype(np.int16)
# Ten minutes of a 440 Hz tone at 24 kHz (28.8 MB), made once when the server imports this module: the
# reply yields it without the cost of making it (what is measured is what the server does with it).
TEN_MINUTES = np.empty(600 * TEN_MINUTES_RATE, np.int16)
TEN_MINUTES.reshape(-1, _PERIOD.size)[:] = _PERIOD


def reply(audio: tuple[int, np.ndarray], kind: str = "echo") -> Iterator[Any]:
    """``huge``: ten minutes in one chunk; ``1hz``: 2000 samples "at 1 Hz" (33 minutes at 16 kHz);
    ``hang``: a blocking call that never returns; else the echo."""
    if kind == "huge":
        yield TEN_MINUTES_RATE, TEN_MINUTES
    elif kind == "1hz":
        yield 1, np.full(2000, 1000, np.int16)
    elif kind == "hang":
        time.sleep(3600)
    else:
        yield audio
