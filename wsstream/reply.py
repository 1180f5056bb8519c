"""The ReplyOnPause handler API, fastrtc-shaped.

A reply function receives ``(sample_rate, int16 ndarray)`` — the utterance —
plus the additional inputs the client set, and yields ``(sample_rate, ndarray)``
audio chunks, ``AdditionalOutputs(...)`` or ``CloseStream()``. It may be a sync
or async generator (or a plain function / coroutine returning one chunk). Sync
code runs in a thread of its own, never on the event loop, and is closed in that
same thread on barge-in, so its ``finally`` blocks run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vad.detector import DetectorOptions


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

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"ReplyOnPause needs a callable reply function, got {type(self.fn).__name__}")
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


class _ReplyThread:
    """One daemon thread that runs a reply's sync calls in order (the steps of its generator, then its
    close). Daemon, unlike a ThreadPoolExecutor's worker: a reply function hung in a blocking call must
    not keep the process from exiting on SIGTERM (the interpreter joins executor threads at exit)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = \
            queue.SimpleQueue()
        threading.Thread(target=self._work, name="reply", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((fn, args, future))
        return future

    def shutdown(self) -> None:
        self._jobs.put(None)  # after the calls already queued

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # (handed to the awaiting task, which re-raises it)
                future.set_exception(exc)


def _next(gen: Iterator[Any]) -> Any:
    return next(gen, _DONE)


async def reply_items(fn: ReplyFn, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """Whatever ``fn`` produces, as an async stream of items, cleaned up however it ends."""
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn):
        result = fn(*args, **kwargs)
    else:
        # A plain function may block for long (a model call): its own thread, not the shared default pool.
        thread = _ReplyThread()
        try:
            ctx = contextvars.copy_context()
            result = await asyncio.wrap_future(thread.submit(ctx.run, functools.partial(fn, *args, **kwargs)))
        finally:
            thread.shutdown()
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
        async for item in _iterate_sync(result):
            yield item
    elif result is not None:
        yield result


async def _iterate_sync(gen: Iterator[Any]) -> AsyncIterator[Any]:
    """Step a sync generator in a dedicated thread; close it in that thread after the step in flight."""
    executor = _ReplyThread()
    ctx = contextvars.copy_context()
    try:
        while True:
            item = await asyncio.wrap_future(executor.submit(ctx.run, _next, gen))
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            # Queued behind any step still running, so the generator is never closed mid-step.
            done = executor.submit(ctx.run, close)
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), timeout=1.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
        executor.shutdown()
