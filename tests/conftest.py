"""Shared fixtures: the corpus, a model engine, in-process servers and a real server process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr

from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream.codecs import float_to_int16
from wsstream.reply import ReplyOnPause
from wsstream.server import ServerConfig, WsServer

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
STRICT = os.environ.get("WSSTREAM_STRICT") == "1"


def require_program(name: str) -> str:
    """Path of a system program; skip (or, under WSSTREAM_STRICT=1, fail) when it is missing."""
    # Debian puts daemons such as nginx in /usr/sbin, which is not on an ordinary user's PATH.
    path = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/bin", "/usr/sbin", "/usr/local/sbin") if Path(f"{d}/{name}").exists()), None)
    if path is None:
        message = f"{name} is not installed (apt-get install {name}); .ci/run installs it"
        if STRICT:
            pytest.fail(f"WSSTREAM_STRICT=1 and {message}")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    return json.loads((DATA / "manifest.json").read_text())


def corpus_files() -> list[str]:
    return sorted(json.loads((DATA / "manifest.json").read_text())["files"])


def load_corpus(name: str, rate: int = 16000) -> np.ndarray:
    """A corpus file as int16 at ``rate`` (resampled with soxr when not 16 kHz)."""
    audio, sr = sf.read(DATA / name, dtype="float32")
    if rate != sr:
        audio = soxr.resample(audio, sr, rate)
    return float_to_int16(audio)


def turn_ends_s(manifest: dict[str, Any], name: str) -> list[float]:
    info = manifest["files"][name]
    return [t["end"] / manifest["sample_rate"] for t in info["turns"]]


@pytest.fixture(scope="session")
def model() -> SileroModel:
    return SileroModel()


@pytest.fixture
def engine(model: SileroModel) -> VadEngine:
    return VadEngine(model)


@pytest.fixture
async def make_server(model: SileroModel) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process servers on free loopback ports; all are closed at the end of the test."""
    servers: list[WsServer] = []

    async def start(app: ReplyOnPause, **config: Any) -> WsServer:
        server = WsServer(app, ServerConfig(host="127.0.0.1", port=0, **config), engine=VadEngine(model))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.aclose()


class ServerProcess:
    """``wsstream serve`` run the way a user runs it, on a free port."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "wsstream.cli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        self.output: list[str] = []
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited before listening:\n" + "".join(self.output))
            self.output.append(line)
            match = re.search(r"listening on ws://([\d.]+):(\d+)/ws", line)
            if match and line.startswith("wsstream:"):
                self.port = int(match.group(2))
                break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + "".join(self.output))
        self.url = f"ws://127.0.0.1:{self.port}"
        # Keep draining its output so the pipe never fills.
        import threading

        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def cli_server() -> Iterator[ServerProcess]:
    """One real server process per test module, default options and the embedded echo."""
    server = ServerProcess()
    yield server
    server.close()
    assert server.proc.returncode is not None
