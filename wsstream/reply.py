"""The ReplyOnPause handler API, fastrtc-shaped.

A reply function receives ``(sample_rate, int16 ndarray)`` — the utterance —
plus the additional inputs the client set, and yields ``(sample_rate, ndarray)``
audio chunks, ``AdditionalOutputs(...)`` or ``CloseStream()``. It may be a sync
or async generator (or a plain function / coroutine returning one chunk). Sync
code never runs on the event loop: each reply takes one thread of a bounded pool
(``ReplyPool``, ``ServerConfig.reply_threads``) for all its calls, and is closed
in that same thread on barge-in, so its ``finally`` blocks run.

What the server bounds (``wsstream.playout``, ``StreamConfig``): reply audio at 8000..48000 Hz,
converted half a second at a time as it plays (a chunk of any length), at most ``max_reply_s`` of it
per reply; optional timeouts for the first audio and the whole function. Each ends the reply with an
error message to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vad.detector import DetectorOptions
from wsstream.metrics import Metrics

log = logging.getLogger(__name__)

REPLY_WAIT_S = 10.0  # how long a reply may wait for a free thread before it fails
DEFAULT_REPLY_THREADS = 32  # (ServerConfig.reply_threads; the pool of runners made outside a Hub)


class AdditionalOutputs:
    """Extra values for the client (sent as ``fetch_output``), e.g. a transcript."""

    def __init__(self, *args: Any) -> None:
        self.args = args


class CloseStream:
    """Yielded by a reply function to end the stream once the reply has played; ``msg`` is the close reason."""

    def __init__(self, msg: str = "reply function closed the stream") -> None:
        self.msg = msg


ReplyFn = Callable[..., Any]


@dataclass(frozen=True)
class ReplyOnPause:
    """What the application gives the server: its reply function and how to detect turns.

    ``input_sample_rate`` / ``output_sample_rate`` apply to dialects whose wire
    format does not carry a rate (fastrtc's ``/websocket/offer``). Frozen: the
    CLI or a host app derives a new one (``dataclasses.replace``), never edits yours.
    """

    fn: ReplyFn
    startup_fn: ReplyFn | None = None
    options: DetectorOptions = field(default_factory=DetectorOptions)
    input_sample_rate: int = 48000
    output_sample_rate: int = 24000
    # Barge-in: how much user speech stops a reply. Shorter speech over a reply ("yeah", "okay",
    # "mm-hm": a listener's backchannel) is heard and logged (``backchannel``) but stops nothing.
    # 0: any speech that starts a turn (min_speech_ms) interrupts.
    interrupt_ms: float = 500.0
    # Call the reply function (``current_context().reason == "idle"``, with no audio) when the user has
    # said nothing for this long after a reply finished playing; once per silence. None: never.
    idle_prompt_s: float | None = None
    # Start the reply function at ``pause_tentative`` (the audio went quiet), so its slow start (an LLM
    # call) overlaps the rest of the pause; nothing it yields is sent before ``pause_detected``, and if
    # the speaker goes on (``pause_cancelled``) the call is cancelled (its ``finally`` runs).
    speculative: bool = False
    # fastrtc's additional inputs, asked for: before each reply to a turn (or a trigger, an idle prompt) the
    # server sends ``send_input`` on /ws and /websocket/offer and calls the function once the client's
    # inputs come (``hub.set_input``, or /ws's ``input`` message), or after this many seconds with the
    # inputs it has. None: never asked (the inputs last set are used).
    input_wait_s: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"ReplyOnPause needs a callable reply function, got {type(self.fn).__name__}")
        if not 0 <= self.interrupt_ms <= 10_000:
            raise ValueError(f"interrupt_ms must be from 0 to 10000, got {self.interrupt_ms!r}")
        if self.input_wait_s is not None and not 0 < self.input_wait_s <= 60:
            raise ValueError(f"input_wait_s must be in (0, 60] s, got {self.input_wait_s!r}")
        if self.idle_prompt_s is not None and not 0 < self.idle_prompt_s <= 3600:
            raise ValueError(f"idle_prompt_s must be in (0, 3600] s, got {self.idle_prompt_s!r}")
        for name in ("input_sample_rate", "output_sample_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, int) or not 8000 <= rate <= 48000:
                raise ValueError(f"{name} must be an integer from 8000 to 48000, got {rate!r}")


@dataclass
class StreamFacts:
    """What the core knows of its stream and shows to reply functions (mutable; the core's own)."""

    session_id: str
    dialect: str = "ws"
    client_id: str | None = None
    call: dict[str, Any] = field(default_factory=dict)
    marks_sent: deque[str] = field(default_factory=lambda: deque(maxlen=100))
    marks_played: deque[str] = field(default_factory=lambda: deque(maxlen=100))
    dtmf: deque[str] = field(default_factory=lambda: deque(maxlen=100))
    reason: str = "turn"  # why the current reply was called: turn, trigger, idle, startup


class ReplyContext:
    """What a reply function may want to know about its stream; see ``current_context()``.

    A live, read-only view: values are current when read, and user code cannot
    change what barge-in relies on. ``marks_played`` lists the reply marks the
    client reported as played, so a handler knows what the listener actually
    heard. ``call`` holds dialect details (e.g. Twilio's streamSid, callSid,
    customParameters); ``dtmf`` the digits received so far.
    """

    __slots__ = ("_facts",)

    def __init__(self, facts: StreamFacts) -> None:
        self._facts = facts

    @property
    def session_id(self) -> str:
        return self._facts.session_id

    @property
    def client_id(self) -> str | None:
        return self._facts.client_id

    @property
    def dialect(self) -> str:
        return self._facts.dialect

    @property
    def call(self) -> Mapping[str, Any]:
        return MappingProxyType(self._facts.call)

    @property
    def marks_sent(self) -> tuple[str, ...]:
        return tuple(self._facts.marks_sent)

    @property
    def marks_played(self) -> tuple[str, ...]:
        return tuple(self._facts.marks_played)

    @property
    def dtmf(self) -> tuple[str, ...]:
        return tuple(self._facts.dtmf)

    @property
    def reason(self) -> str:
        """Why this reply was called: ``turn`` (a pause ended one), ``trigger``, ``idle`` (an idle
        prompt: the user said nothing for ``idle_prompt_s``) or ``startup``."""
        return self._facts.reason

    def __repr__(self) -> str:
        return f"ReplyContext(session_id={self.session_id!r}, dialect={self.dialect!r}, client_id={self.client_id!r})"


_context: contextvars.ContextVar[ReplyContext] = contextvars.ContextVar("wsstream_reply_context")


def current_context() -> ReplyContext:
    """The context of the stream whose reply is running (works in sync and async reply functions)."""
    try:
        return _context.get()
    except LookupError:
        raise RuntimeError("current_context() is only available inside a reply function") from None


def set_context(ctx: ReplyContext) -> None:
    _context.set(ctx)


_DONE = object()


class ReplyThreadsBusy(RuntimeError):
    """No reply thread came free in time: every one is running a sync reply (or a call that a barge-in
    interrupted and that has not returned yet)."""


_RELEASE = object()


class _Lane:
    """One daemon thread that runs one reply's sync calls in order (a plain function, the steps of its
    generator, then its close), then goes back to its pool: only after the call in flight has
    returned, so a call still running when its reply was interrupted keeps its thread until then.
    Daemon, unlike a ThreadPoolExecutor's worker: a reply hung in a blocking call must not keep the
    process from exiting on SIGTERM (the interpreter joins executor threads at exit)."""

    def __init__(self, pool: ReplyPool) -> None:
        self._pool = pool
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="reply", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((fn, args, future))
        return future

    def release(self) -> None:
        self._jobs.put(_RELEASE)  # after the calls already queued

    def stop(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job is _RELEASE:
                self._pool._put_back(self)
                continue
            fn, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # (handed to the awaiting task, which re-raises it)
                future.set_exception(exc)


class ReplyPool:
    """At most ``size`` threads for sync reply code, shared by every stream of a hub, so that replies
    forced faster than a slow function returns (each interrupted call runs on: Python cannot stop it)
    cost waiting, not a thread each. A reply waits, first come first served, up to ``wait_s`` for a
    thread, then fails with ``ReplyThreadsBusy``. A warning is logged (and ``reply_pool_saturations``
    counted in ``metrics``) once each time the pool runs full: not again until a thread has gone idle."""

    def __init__(self, size: int = DEFAULT_REPLY_THREADS, wait_s: float = REPLY_WAIT_S, *,
                 metrics: Metrics | None = None) -> None:
        if size < 1:
            raise ValueError(f"a reply pool needs at least one thread, got {size}")
        self.size = size
        self.wait_s = wait_s
        self._metrics = metrics
        self._lock = threading.Lock()  # lanes come back from their own threads
        self._idle: list[_Lane] = []
        self._started = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[_Lane]]] = deque()
        self._warned = False  # one warning per time the pool runs full
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started and not stopped (busy or idle)."""
        return self._started

    async def acquire(self) -> _Lane:
        """A thread for one reply, given back with ``_Lane.release`` once the reply is over."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._started < self.size:
                self._started += 1
                waiter = None
            else:
                waiter = loop.create_future()
                self._waiters.append((loop, waiter))
                warn, self._warned = not self._warned, True
        if waiter is None:
            return _Lane(self)
        if warn:
            if self._metrics is not None:
                self._metrics.inc("reply_pool_saturations")
            log.warning("all %d reply threads are busy (sync reply functions still running, interrupted ones "
                        "included): replies wait up to %g s for one; raise --reply-threads if this is load, "
                        "not a client forcing replies", self.size, self.wait_s)
        try:
            async with asyncio.timeout(self.wait_s):
                return await waiter
        except BaseException as exc:  # timed out, or the reply was cancelled (barge-in) while it waited
            if waiter.done() and not waiter.cancelled():
                self._put_back(waiter.result())  # one came just as it gave up: pass it on
            else:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, waiter))
            if isinstance(exc, TimeoutError):
                raise ReplyThreadsBusy(f"all {self.size} reply threads stayed busy for {self.wait_s:g} s; "
                                       "this reply was dropped") from None
            raise

    def _put_back(self, lane: _Lane) -> None:
        """From a lane's thread (or the loop): to the first reply still waiting, else idle."""
        while True:
            with self._lock:
                if self._closed:
                    self._started -= 1
                    lane.stop()
                    return
                if not self._waiters:
                    self._idle.append(lane)
                    self._warned = False
                    return
                loop, waiter = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(self._deliver, waiter, lane)
                return
            except RuntimeError:  # that waiter's loop is closed: its reply is long gone
                continue

    def _deliver(self, waiter: asyncio.Future[_Lane], lane: _Lane) -> None:
        if waiter.done():  # (it gave up, or was cancelled, in the meantime)
            self._put_back(lane)
        else:
            waiter.set_result(lane)

    def close(self) -> None:
        """Stop the idle threads now and the busy ones as they come back (they are daemons either way)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._started -= len(idle)
        for lane in idle:
            lane.stop()


_default_pool: ReplyPool | None = None


def default_pool() -> ReplyPool:
    """The pool of streams run outside a Hub (a hub has its own, of ``ServerConfig.reply_threads``)."""
    global _default_pool
    if _default_pool is None:
        _default_pool = ReplyPool()
    return _default_pool


def _next(gen: Iterator[Any]) -> Any:
    return next(gen, _DONE)


async def reply_items(fn: ReplyFn, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                      pool: ReplyPool | None = None) -> AsyncIterator[Any]:
    """Whatever ``fn(*args, **kwargs)`` produces, as an async stream of items, cleaned up however it ends.
    Sync code runs in one thread of ``pool`` for the whole reply (its calls in order, then its close)."""
    kwargs = kwargs or {}
    lane: _Lane | None = None
    ctx = contextvars.copy_context()  # (the reply's context, for the thread's calls)
    try:
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn):
            result = fn(*args, **kwargs)
        else:  # a plain function may block for long (a model call): a pool thread, never the loop
            lane = await (pool or default_pool()).acquire()
            result = await asyncio.wrap_future(lane.submit(ctx.run, functools.partial(fn, *args, **kwargs)))
        if inspect.isawaitable(result):
            result = await result
        if hasattr(result, "__aiter__"):
            try:
                async for item in result:
                    yield item
            finally:
                aclose = getattr(result, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif isinstance(result, Iterator):
            if lane is None:
                lane = await (pool or default_pool()).acquire()
            # (closed here, not by the collector later: its close must be queued before the release below)
            async with contextlib.aclosing(_iterate_sync(result, lane, ctx)) as steps:
                async for item in steps:
                    yield item
        elif result is not None:
            yield result
    finally:
        if lane is not None:
            lane.release()  # (behind a call still running: the thread is free once it returns)


async def _iterate_sync(gen: Iterator[Any], lane: _Lane, ctx: contextvars.Context) -> AsyncIterator[Any]:
    """Step a sync generator in ``lane``; close it there after the step in flight."""
    try:
        while True:
            item = await asyncio.wrap_future(lane.submit(ctx.run, _next, gen))
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            # Queued behind any step still running, so the generator is never closed mid-step.
            done = lane.submit(ctx.run, close)
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), timeout=1.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
