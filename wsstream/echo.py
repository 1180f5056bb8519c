"""The embedded default reply: the user's own utterance, back in half-second chunks.

Needs no user code and no outside service, so ``wsstream serve`` works on a
fresh machine, and tests can check reply length against utterance length.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np


async def echo(audio: tuple[int, np.ndarray], *args: object, **kwargs: object) -> AsyncIterator[tuple[int, np.ndarray]]:
    rate, samples = audio
    step = max(rate // 2, 1)
    for i in range(0, samples.size, step):
        yield rate, samples[i:i + step]
