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
from wsstream.config import ServerConfig
from wsstream.hub import Hub
from wsstream.reply import ReplyOnPause
from wsstream.server import WsServer

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


@pytest.fixture(scope="module")
def driver(request: pytest.FixtureRequest) -> str:
    """Which driver serves the sockets: our transport ("native", the default) or the ASGI driver under
    uvicorn ("asgi"). A module with ``BOTH_DRIVERS = True`` runs its socket tests under both."""
    return getattr(request, "param", "native")


DRIVERS = ["native", "asgi"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "native_only: in a BOTH_DRIVERS module, run on the native driver only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if getattr(metafunc.module, "BOTH_DRIVERS", False) and "driver" in metafunc.fixturenames:
        # @pytest.mark.native_only: a heavy test whose driver-specific paths others in the module cover
        drivers = ["native"] if metafunc.definition.get_closest_marker("native_only") else DRIVERS
        metafunc.parametrize("driver", drivers, indirect=True, scope="module")


class AsgiServer:
    """``wsstream.asgi.create_app`` under uvicorn on a free loopback port, in the test's loop: the
    same surface as ``WsServer`` for what the tests use."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics = hub.metrics

    async def start(self) -> None:
        import asyncio

        import uvicorn

        from wsstream.asgi import create_app, uvicorn_tls

        ready = asyncio.Event()
        config = uvicorn.Config(create_app(self.hub, on_ready=ready.set), host="127.0.0.1", port=0,
                                lifespan="on", log_level="warning", ws="websockets-sansio",
                                ws_max_size=self.hub.config.max_message_bytes, **uvicorn_tls(self.hub.config))
        self.server = uvicorn.Server(config)
        self.task = asyncio.get_running_loop().create_task(self.server.serve())
        await asyncio.wait_for(ready.wait(), 30)
        for _ in range(500):  # (the sockets are bound just after the lifespan has started)
            if self.server.started:
                break
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def active(self) -> int:
        return self.hub.active

    @property
    def draining(self) -> bool:
        return self.hub.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.hub.draining = value

    async def wait_idle(self) -> None:
        await self.hub.wait_idle()

    async def aclose(self) -> None:
        self.server.should_exit = True
        await self.task


@pytest.fixture
async def make_server(model: SileroModel, driver: str) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process servers on free loopback ports (with the module's driver); all are closed at
    the end of the test."""
    servers: list[Any] = []

    async def start(app: ReplyOnPause, **config: Any) -> Any:
        cfg = ServerConfig(host="127.0.0.1", port=0, **config)
        server: Any
        if driver == "asgi":
            server = AsgiServer(Hub(app, cfg, engine=VadEngine(model)))
        else:
            server = WsServer(app, cfg, engine=VadEngine(model))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.aclose()


class ServerProcess:
    """``wsstream serve`` run the way a user runs it, on a free port."""

    def __init__(self, *args: str, driver: str = "native") -> None:
        cmd = [sys.executable, "-m", "wsstream.cli", "serve", "--port", "0", "--driver", driver, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        self.output: list[str] = []
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited before listening:\n" + "".join(self.output))
            self.output.append(line)
            match = re.search(r"listening on wss?://([\d.]+):(\d+)/ws", line)
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
def cli_server(driver: str) -> Iterator[ServerProcess]:
    """One real server process per test module, default options and the embedded echo."""
    server = ServerProcess(driver=driver)
    yield server
    server.close()
    assert server.proc.returncode is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Captured output made encodable: tests feed lone surrogates to the server on purpose, its log quotes
    them, and pytest-xdist cannot send a report holding one from a worker."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(name, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for name, text in report.sections]
