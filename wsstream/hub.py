"""The hub: one model, one inference worker and the registry of open streams, shared by every driver.

Whatever serves the sockets (our transport, an ASGI app, several mounted
endpoints in one process), streams are opened here, so they share one model
and one batched inference worker, obey one concurrency limit and show up in one
place. The hub is also the host app's handle on its streams: list them, set
their inputs, trigger a reply, close one, follow one's events (for Server-Sent
Events or a dashboard), and hooks on what happens in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream.config import ServerConfig
from wsstream.core import Output, ReplyEnded, StreamCore, StreamStarted
from wsstream.dialects.base import Dialect, ProtocolError
from wsstream.events import Clear, Close, Error, FetchOutput, Log, Mark, Refused, SendInput, StopWord, Warning
from wsstream.inference import InferenceWorker
from wsstream.metrics import Metrics
from wsstream.reply import ReplyFn, ReplyOnPause, ReplyPool
from wsstream.runner import SPOT_THREADS, StreamInfo, StreamRunner

log = logging.getLogger(__name__)

HOOKS = ("stream_opened", "started_talking", "pause_detected", "response_starting", "reply_finished",
         "stream_closed")
REFUSED = ("concurrency_limit", "draining")  # the hub's reasons in wsstream_handshakes_refused (access has the rest)
SUBSCRIBER_QUEUE = 256  # events a slow follower of a stream may fall behind by (the oldest go first)


class UnknownStream(KeyError):
    """No open stream has this id (or client id)."""


class StreamRefused(Exception):
    """The hub does not admit a new stream now; ``event`` says why in the dialect's words."""

    def __init__(self, event: Refused, code: int = 1013, reason: str = "concurrency limit reached") -> None:
        super().__init__(reason)
        self.event = event
        self.code = code
        self.reason = reason


Hook = Callable[[str, dict[str, Any]], Any]


class _Follower:
    """One ``events()`` iterator's bounded queue."""

    def __init__(self) -> None:
        self.items: deque[dict[str, Any] | None] = deque(maxlen=SUBSCRIBER_QUEUE)
        self.ready = asyncio.Event()

    def put(self, item: dict[str, Any] | None) -> None:
        self.items.append(item)
        self.ready.set()


def event_dict(event: Output) -> dict[str, Any] | None:
    """An observable event as a JSON-able dict (the wire's spelling where there is one), or None."""
    if isinstance(event, Log):
        return {"type": "log", "data": event.name, **event.fields}
    if isinstance(event, FetchOutput):
        return {"type": "fetch_output", "data": event.data}
    if isinstance(event, Error):
        return {"type": "error", "data": event.message}
    if isinstance(event, Warning):
        return {"type": "warning", "data": event.message}
    if isinstance(event, Mark):
        return {"type": "mark", "name": event.name}
    if isinstance(event, Clear):
        return {"type": "clear"}
    if isinstance(event, StopWord):
        return {"type": "stopword", "data": event.word}
    if isinstance(event, SendInput):  # (a host app may answer it itself: hub.set_input)
        return {"type": "send_input", "data": []}
    if isinstance(event, ReplyEnded):
        return {"type": "reply_finished", "seq": event.seq, "how": event.how}
    if isinstance(event, Close):
        return {"type": "close", "code": event.code, "reason": event.reason}
    return None


class Hub:
    """Open with ``async with Hub(reply_fn) as hub:`` (or ``start``/``aclose``); drivers call ``open_stream``."""

    def __init__(self, app: ReplyOnPause | ReplyFn, config: ServerConfig | None = None, *,
                 engine: VadEngine | None = None) -> None:
        self.app = app if isinstance(app, ReplyOnPause) else ReplyOnPause(fn=app)
        self.config = config or ServerConfig()
        self.metrics = Metrics()
        self.metrics.declare("handshakes_refused", "reason", REFUSED)
        self.metrics.add_live(self._live_figures)
        self._access_policy: Any = None  # (wsstream.access.policy_for: one per hub, built on first use)
        self.engine = engine
        self.worker: InferenceWorker | None = None
        self.draining = False
        self._ids = itertools.count(1)
        self._streams: dict[str, StreamRunner] = {}
        self._followers: dict[str, list[_Follower]] = {}
        self._hooks: dict[str, list[Hook]] = {name: [] for name in HOOKS}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker_task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._closed = False
        # threads for sync reply functions, shared
        self.reply_pool = ReplyPool(self.config.reply_threads, metrics=self.metrics)
        self._spot_pool = ReplyPool(SPOT_THREADS)  # stop-word spotting, for every stream (threads start on use)
        self._idle = asyncio.Event()
        self._idle.set()
        self._opened = asyncio.Event()

    # ---- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (off the loop) and start the inference worker; idempotent. A closed hub
        stays closed (it admits nothing more)."""
        async with self._starting:
            if self.worker is not None or self._closed:
                return
            if self.engine is None:
                model = await asyncio.to_thread(SileroModel)
                self.engine = VadEngine(model)
            spotter = getattr(self.app, "spotter", None)
            if hasattr(spotter, "start"):  # (worker processes of the default stop-word spotter)
                await asyncio.to_thread(spotter.start)
            worker = InferenceWorker(self.engine, min_interval_s=self.config.vad_batch_interval_ms / 1000,
                                     metrics=self.metrics)
            self._worker_task = asyncio.get_running_loop().create_task(worker.run(), name="vad-worker")
            self.worker = worker

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def let_finish(self, seconds: float) -> None:
        """The first half of a drain (SIGTERM with ``--drain-s``), whichever driver: refuse new streams and
        give those open up to ``seconds`` to end by themselves. ``aclose`` closes what is left."""
        self.draining = True
        if seconds > 0:
            if self._streams:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), seconds)
            log.info("drain over: %d call(s) still open", len(self._streams))

    async def aclose(self) -> None:
        """Close every stream (1001), then stop the worker and the hooks still running."""
        self.draining = True
        self._closed = True
        for runner in dict(self._streams).values():
            runner.close(1001, "server shutting down")
        if self._streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5.0)
        tasks = [t for t in (self._worker_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker_task = None
        self.worker = None
        self._spot_pool.close()
        self.reply_pool.close()  # (its threads are daemons: one still in a reply function ends with it)

    @property
    def ready(self) -> bool:
        return self.worker is not None and not self.draining

    @property
    def active(self) -> int:
        return len(self._streams)

    async def wait_idle(self) -> None:
        """Return once no stream is open."""
        await self._idle.wait()

    # ---- for drivers -------------------------------------------------------------------------

    def open_stream(self, dialect: Dialect, query: str = "") -> StreamRunner:
        """A new stream on ``dialect``, registered; raises StreamRefused (full, draining) or the
        dialect's ProtocolError (a bad query). The driver calls ``stream_ended`` when it is over."""
        worker = self.worker
        if worker is None or self.draining or len(self._streams) >= self.config.concurrency_limit:
            self.metrics.inc("sessions_rejected")
            self.metrics.inc_labelled("handshakes_refused", "concurrency_limit" if worker and not self.draining
                                      else "draining")
            raise StreamRefused(Refused("concurrency_limit_reached", self.config.concurrency_limit))
        try:
            setup = dialect.setup(query, self.app, self.config.stream)
        except ProtocolError as exc:  # (a bad query: the driver answers it and closes)
            self.metrics.inc_labelled("protocol_errors", dialect.name, exc.kind)
            raise
        engine, narrowband = worker.engine, setup.config.narrowband_vad
        stream_id = f"{self.config.stream_id_prefix}s{next(self._ids)}"
        core = StreamCore(self.app, lambda rate: engine.open_stream(rate, narrowband), stream_id=stream_id,
                          dialect=dialect.name, input_format=setup.input_format,
                          output_format=setup.output_format, config=setup.config, metrics=self.metrics)
        runner = StreamRunner(core, worker, observer=self._observe, spot_pool=self._spot_pool,
                              reply_pool=self.reply_pool)
        self._streams[runner.id] = runner
        self.metrics.inc("sessions_total")
        self._idle.clear()
        self._streams_changed()
        self._fire("stream_opened", runner.id, {"dialect": dialect.name})
        log.debug("%s stream opened", dialect.name, extra={"stream_id": stream_id})
        return runner

    def _streams_changed(self) -> None:
        """Wake ``wait_stream``: a stream opened, or one's client id became known."""
        self._opened.set()
        self._opened = asyncio.Event()

    async def stream_ended(self, runner: StreamRunner) -> None:
        """The driver is done with ``runner``: cancel what it owns and forget it."""
        await runner.aclose()
        if self._streams.pop(runner.id, None) is not None:
            for follower in self._followers.pop(runner.id, []):
                follower.put(None)
            ctx = runner.core.context
            self._fire("stream_closed", runner.id, {"client_id": ctx.client_id, "dialect": ctx.dialect})
            log.debug("%s stream closed (client id %s)", ctx.dialect, ctx.client_id, extra={"stream_id": runner.id})
        if not self._streams:
            self._idle.set()

    def _observe(self, runner: StreamRunner, event: Output) -> None:
        if type(event) is StreamStarted:
            self._streams_changed()
            return
        followers = self._followers.get(runner.id)
        if followers or isinstance(event, Log | ReplyEnded):
            item = event_dict(event)
            if item is None:
                return
            for follower in followers or ():
                follower.put(item)
            if isinstance(event, Log) and event.name in self._hooks:
                self._fire(event.name, runner.id, dict(event.fields))
            elif isinstance(event, ReplyEnded):
                self._fire("reply_finished", runner.id, {"seq": event.seq, "how": event.how})

    def _fire(self, name: str, stream_id: str, fields: dict[str, Any]) -> None:
        for hook in self._hooks[name]:
            try:
                result = hook(stream_id, fields)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._hook_done)
            except Exception:  # a host app's hook must not break a stream
                log.exception("hook %s failed for stream %s", name, stream_id)

    def _hook_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hook failed", exc_info=task.exception())

    # ---- for the host app ------------------------------------------------------------------

    def on(self, name: str) -> Callable[[Hook], Hook]:
        """Decorator: call ``fn(stream_id, fields)`` on ``name`` (one of HOOKS); sync hooks run on the
        loop and must be quick, async ones run as tasks the hub owns."""
        if name not in self._hooks:
            raise ValueError(f"unknown hook {name!r}; use one of {', '.join(HOOKS)}")

        def register(fn: Hook) -> Hook:
            self._hooks[name].append(fn)
            return fn
        return register

    def streams(self) -> list[StreamInfo]:
        """The streams open now."""
        return [runner.info for runner in self._streams.values()]

    def stream(self, key: str) -> StreamRunner:
        """The open stream with id (or client id: fastrtc's websocket_id, Twilio's streamSid) ``key``."""
        runner = self._streams.get(key)
        if runner is None:  # the newest open one: a client that reconnects reuses its id
            runner = next((r for r in reversed(self._streams.values())
                           if r.core.context.client_id == key and not r.core.closed), None)
        if runner is None:
            raise UnknownStream(key)
        return runner

    async def wait_stream(self, key: str) -> StreamRunner:
        """``stream(key)``, waiting for it to open (a page may subscribe first); bound it with
        ``asyncio.timeout``."""
        while True:
            with contextlib.suppress(UnknownStream):
                return self.stream(key)
            await self._opened.wait()

    def set_input(self, key: str, *args: Any, **kwargs: Any) -> None:
        """New additional inputs for the stream's next replies (fastrtc's ``set_input``): positional
        or keyword, as a client's ``input`` message is a list or an object. A reply waiting for them
        (``input_wait_s``) is called now, so this is for the loop's thread (an async route), as are
        ``trigger`` and ``close_stream``."""
        if args and kwargs:
            raise TypeError("set_input takes positional or keyword inputs, not both")
        self.stream(key).set_inputs(dict(kwargs) if kwargs else list(args))

    def trigger(self, key: str) -> bool:
        """Reply now to what the stream has heard; False when it has heard nothing since its last reply."""
        return self.stream(key).trigger()

    def close_stream(self, key: str, code: int = 1000, reason: str = "closed by the server") -> None:
        self.stream(key).close(code, reason)

    def events(self, key: str) -> AsyncIterator[dict[str, Any]]:
        """Every observable event of the stream from now on, as dicts, until it closes (bounded: a
        follower that falls behind loses the oldest). Raises UnknownStream here, not when iterated."""
        runner = self.stream(key)
        follower = _Follower()
        self._followers.setdefault(runner.id, []).append(follower)
        return self._follow(runner, follower)

    async def _follow(self, runner: StreamRunner, follower: _Follower) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                while not follower.items:
                    follower.ready.clear()
                    await follower.ready.wait()
                item = follower.items.popleft()
                if item is None:
                    return
                yield item
        finally:
            followers = self._followers.get(runner.id)
            if followers is not None and follower in followers:
                followers.remove(follower)

    def outputs(self, key: str) -> AsyncIterator[list[Any]]:
        """The stream's additional outputs from now on (what its replies yield as ``AdditionalOutputs``,
        each as the list of its arguments): fastrtc's ``output_stream``. Raises UnknownStream here."""
        return self._outputs(self.events(key))

    @staticmethod
    async def _outputs(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[list[Any]]:
        async for item in events:
            if item["type"] == "fetch_output":
                yield item["data"]

    # ---- HTTP ----------------------------------------------------------------------------------

    def health(self) -> tuple[int, str]:
        return (200, "ok\n") if self.ready else (503, "not ready\n")

    def metrics_text(self) -> str:
        """Prometheus text exposition format, with the live counts open streams hold."""
        return self.metrics.render()

    def _live_figures(self) -> tuple[dict[str, float], dict[str, float]]:
        """What the scrape reads from elsewhere: counts open streams still hold, the worker's stats."""
        samples = sum(runner.core.samples_in for runner in dict(self._streams).values())  # (a copy: see collect)
        stats = self.worker.stats if self.worker else None
        counters = {
            "audio_samples_in": samples,
            "vad_batches": stats.batches if stats else 0,
            "vad_windows": stats.windows if stats else 0,
            "vad_failed_batches": stats.failed_batches if stats else 0,
        }
        gauges = {
            "sessions_active": len(self._streams),
            "concurrency_limit": self.config.concurrency_limit,
            "vad_largest_batch": stats.largest_batch if stats else 0,
        }
        return counters, gauges
