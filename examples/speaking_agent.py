"""A voice agent that talks back, with no API key and no model download: speech by espeak-ng.

Why: the embedded echo proves the plumbing but says nothing; a real agent
synthesizes its answer, and its answer should start playing while the rest is
still being synthesized, and stop being synthesized when the user interrupts.
This example shows both with a local synthesizer (``apt-get install espeak-ng``):
each finished turn is answered out loud with how long the user spoke and the
time of day. espeak-ng runs as a subprocess writing WAV to its stdout; the reply
reads it in small chunks and yields each as it arrives, so the server's pacing
holds espeak-ng back (its pipe fills) instead of everything being synthesized
up front. That holds on asyncio's own loop (``--loop asyncio``). uvloop (what
``--loop auto`` picks when the ``speed`` extra is installed) reads a subprocess's
pipe past the reader's limit, so there espeak-ng runs ahead and finishes early;
the reply still plays as paced and stops on barge-in. On barge-in the server
closes the reply generator, and its ``finally``
kills espeak-ng and waits for it.

Run it from the repository's root::

    uv run wsstream serve --handler examples.speaking_agent:app
    uv run wsstream client tests/data/dialog_00.flac --out reply.wav

A client of ``/ws`` can make it say anything from its next reply on, with
``{"event": "input", "data": {"text": "..."}}`` (or ``"inputs": {"text": ...}``
in ``start``; ``voice`` and ``speed`` too). It sends two additional outputs per
reply (``fetch_output``): ``{"synthesis": "started", "pid": ...}`` and, once
espeak-ng has exited normally, ``{"synthesis": "finished", "pid": ..., "samples": ...,
"sample_rate": ...}``; an interrupted reply never says finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from wsstream import AdditionalOutputs, ReplyOnPause

ESPEAK = "espeak-ng"
CHUNK_BYTES = 4096  # read at most this much at a time: about 93 ms at espeak-ng's 22050 Hz


async def wav_rate(stdout: asyncio.StreamReader) -> int:
    """Read a streamed WAV header up to its data chunk (whose size espeak-ng leaves unknown): the rate."""
    riff = await stdout.readexactly(12)
    if riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
        raise ValueError(f"{ESPEAK} did not write a WAV stream: {riff!r}")
    rate = 0
    while True:
        chunk_id, size = struct.unpack("<4sI", await stdout.readexactly(8))
        if chunk_id == b"data":
            if not rate:
                raise ValueError("WAV stream without a fmt chunk")
            return rate
        body = await stdout.readexactly(size + (size & 1))
        if chunk_id == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if (tag, channels, bits) != (1, 1, 16):
                raise ValueError(f"expected mono 16-bit PCM, got format {tag}, {channels} ch, {bits} bit")


async def speak(audio: tuple[int, np.ndarray], text: str | None = None, voice: str = "en-us",
                speed: int = 175) -> AsyncIterator[Any]:
    """Answer one turn out loud, streaming espeak-ng's audio as it is synthesized."""
    rate, samples = audio
    if text is None:
        text = f"You spoke for {samples.size / rate:.1f} seconds. It is {time.strftime('%H:%M')}."
    # The text goes in on stdin (never as an argument: it comes from the client); a small reader
    # limit keeps little buffered here, so espeak-ng runs only as far ahead as the server lets us.
    proc = await asyncio.create_subprocess_exec(
        ESPEAK, "--stdout", "--stdin", "-v", voice, "-s", str(int(speed)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        limit=CHUNK_BYTES)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(text.encode())
        await proc.stdin.drain()
        proc.stdin.close()
        yield AdditionalOutputs({"synthesis": "started", "pid": proc.pid, "text": text})
        out_rate = await wav_rate(proc.stdout)
        total, odd = 0, b""
        while data := await proc.stdout.read(CHUNK_BYTES):
            data = odd + data
            whole = len(data) & ~1  # a read may end mid-sample
            data, odd = data[:whole], data[whole:]
            if data:
                pcm = np.frombuffer(data, dtype="<i2")
                total += pcm.size
                yield out_rate, pcm
        code = await proc.wait()
        if code != 0:
            raise RuntimeError(f"{ESPEAK} exited with status {code}")
        yield AdditionalOutputs({"synthesis": "finished", "pid": proc.pid, "samples": total,
                                 "sample_rate": out_rate})
    finally:
        # Barge-in (or a closed stream) lands here: stop the synthesis for real, and reap it.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


app = ReplyOnPause(fn=speak)
