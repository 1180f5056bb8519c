"""The asyncio runner of one ``StreamCore``: what needs a loop, and nothing else.

It owns the stream's reply task (async functions on the loop, sync ones in a
thread of the hub's bounded pool, see ``wsstream.reply``), one timer for the core's
deadline, the wait for VAD room, and the bounded outbox for a client that
cannot take output yet. Every driver (our transport, ASGI, in-process) runs
streams through this one class, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vad.engine import VadStream
from wsstream.core import (
    CancelReply,
    Output,
    ReplyEnded,
    ReplyState,
    StartReply,
    StreamCore,
    StreamStarted,
    StreamState,
)
from wsstream.dialects.base import Dialect, ProtocolError
from wsstream.events import AudioIn, AudioOut, Close, Error, FetchOutput, InEvent, Log, OutEvent, StopWord, Warning
from wsstream.inference import InferenceWorker
from wsstream.logs import STREAM_ID
from wsstream.reply import CloseStream, ReplyPool, ReplyThreadsBusy, default_pool, reply_items, set_context
from wsstream.stopwords import Spot

SPOT_THREADS = 2  # spotting is short CPU work: as many threads as cores, shared by every stream

log = logging.getLogger(__name__)

Observer = Callable[["StreamRunner", Output], None]


@dataclass(frozen=True)
class StreamInfo:
    """What a host app sees of an open stream."""

    id: str
    dialect: str
    client_id: str | None
    state: StreamState  # new, started, streaming, stopping, last_reply, closed
    reply: ReplyState  # idle, waiting (for its inputs), running, draining


class StreamRunner:
    """One stream on the loop. Drivers feed ``offer``/``offer_audio`` and send ``next_output``."""

    def __init__(self, core: StreamCore, worker: InferenceWorker, *, observer: Observer | None = None,
                 reply_pool: ReplyPool | None = None, spot_pool: ReplyPool | None = None) -> None:
        self.core = core
        self._reply_pool = reply_pool or default_pool()  # (a hub gives its own, of ServerConfig.reply_threads)
        self._spot_pool = spot_pool  # (a hub shares one between its streams)
        self.id = core.context.session_id
        # What this stream's tasks and timer run in: its log lines carry its id (wsstream.logs)
        self.log_context = contextvars.copy_context()
        self.log_context.run(STREAM_ID.set, self.id)
        self._worker = worker
        self._observer = observer
        self._loop = asyncio.get_running_loop()
        self._outbox: deque[OutEvent] = deque()
        self._outbox_ready = asyncio.Event()
        self._outbox_limit = core.config.outbox_limit
        self._closing = False  # a Close is in the outbox (or went out): nothing else is sent
        self.overflowed = False  # the outbox overflowed: the client is not reading (drivers bound its close)
        self._vad_room = asyncio.Event()
        self._vad_room.set()
        self._playout_room = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set by a driver: takes an outbound event now and returns True, or returns False when it
        # cannot write yet; the event then waits in the outbox for ``next_output``.
        self.sink: Callable[[OutEvent], bool] | None = None

    @property
    def vad(self) -> VadStream:  # (the inference worker's view of a client)
        return self.core.vad

    @property
    def info(self) -> StreamInfo:
        core = self.core
        return StreamInfo(self.id, core.context.dialect, core.context.client_id, core.state, core.reply_state)

    # ---- inbound ----------------------------------------------------------------------

    def offer_audio(self, data: bytes) -> bool:
        """The hot path: one binary audio message. False: no VAD room yet; nothing was consumed."""
        core = self.core
        if not core.offer_audio(data, self._loop.time()):
            self._vad_room.clear()
            return False
        vad = core.vad
        if vad.pending_samples >= vad.window:
            self._worker.notify(self)
        if core.has_events:
            token = STREAM_ID.set(self.id)
            try:
                self._after()
            finally:
                STREAM_ID.reset(token)
        return True

    def offer(self, event: InEvent) -> bool:
        """Any inbound event; False only for audio that must wait for ``wait_vad_room``."""
        if type(event) is AudioIn:
            return self.offer_audio(event.data)
        token = STREAM_ID.set(self.id)
        try:
            self.core.receive(event, self._loop.time())
            self._after()
        finally:
            STREAM_ID.reset(token)
        return True

    async def wait_vad_room(self) -> None:
        """Return once inference has caught up with this stream (or it is closing)."""
        await self._vad_room.wait()

    def on_vad(self, probs: np.ndarray, levels: np.ndarray) -> None:
        """From the inference worker, on the loop."""
        core = self.core
        token = STREAM_ID.set(self.id)
        try:
            core.on_vad(probs, levels, self._loop.time())
            if not self._vad_room.is_set() and core.vad_room:
                self._vad_room.set()  # a reader waiting for inference to catch up may go on
            self._after()
        finally:
            STREAM_ID.reset(token)

    # ---- control from the host app ------------------------------------------------------

    def set_inputs(self, data: Any) -> None:
        token = STREAM_ID.set(self.id)
        try:
            self.core.set_inputs(data, self._loop.time())  # (a reply waiting for them starts now)
            self._after()
        finally:
            STREAM_ID.reset(token)

    def trigger(self) -> bool:
        done = self.core.trigger(self._loop.time(), tell_client=False)
        self._after()
        return done

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.core.close(code, reason)
        self._after()

    # ---- the core's output ----------------------------------------------------------------

    def _after(self) -> None:
        """Carry out what the core decided: send events, run or cancel replies, set the timer."""
        core = self.core
        if core.has_events:
            observer = self._observer
            for event in core.take_events():
                kind = type(event)
                if kind is AudioOut:
                    self.emit(event)  # type: ignore[arg-type]
                    continue
                if kind is StartReply:
                    if not self._closing:
                        self._start_reply(event)  # type: ignore[arg-type]
                elif kind is CancelReply:
                    self._cancel_reply()
                elif kind is Spot:
                    if not self._closing:
                        self._spawn(self._run_spot(event))  # type: ignore[arg-type]
                elif kind is not ReplyEnded and kind is not StreamStarted:
                    self.emit(event)  # type: ignore[arg-type]
                if observer is not None:
                    observer(self, event)
        deadline = core.deadline
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer,
                                                                            context=self.log_context)
            self._timer_at = deadline
        if not self._playout_room.is_set() and core.playout_room:
            self._playout_room.set()
        if core.state is StreamState.CLOSED:
            self._vad_room.set()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.poll(self._loop.time())
        self._after()

    def _start_reply(self, cmd: StartReply) -> None:
        self._reply_task = self._spawn(self._run_reply(cmd))

    def _cancel_reply(self) -> None:
        task = self._reply_task
        # its generator is closed; a sync one in its own thread, after the step in flight. (Not the task
        # that is running this: the core ended its reply from within it, and it returns on seeing that.)
        if task is not None and not task.done() and task is not asyncio.current_task(self._loop):
            task.cancel()
        self._reply_task = None

    async def _run_reply(self, cmd: StartReply) -> None:
        set_context(cmd.context)
        core, loop, seq = self.core, self._loop, cmd.seq
        error: Exception | None = None
        logged = False  # (the error is in the server's log already, with its traceback)
        try:
            # aclosing: on barge-in the function's generator is closed here, in this task (its finally
            # runs before the task ends), not later by the collector's finalizer in a task of its own
            async with contextlib.aclosing(reply_items(cmd.fn, cmd.args, cmd.kwargs, self._reply_pool)) as items:
                async for item in items:
                    core.reply_item(seq, item, loop.time())
                    self._after()
                    if isinstance(item, CloseStream):
                        break
                    # produced far enough ahead of playout (a long chunk is converted as it plays): wait
                    while not core.playout_room and core.reply_running(seq):
                        self._playout_room.clear()
                        await self._playout_room.wait()
                    if not core.reply_running(seq):  # the core ended it (refused audio, a timeout, barge-in)
                        return
        except asyncio.CancelledError:
            raise
        except ReplyThreadsBusy as exc:  # (the pool has warned in the log: no traceback per reply)
            core.metrics.inc("reply_threads_busy")
            error = exc
        except Exception as exc:
            log.exception("reply function failed in stream %s", self.id)
            error, logged = exc, True
        core.reply_done(seq, loop.time(), error, logged)
        self._after()

    async def _run_spot(self, cmd: Spot) -> None:
        """The stop-word spotter, off the loop: a thread of the hub's small spotting pool (a coroutine
        function is awaited here instead)."""
        result: Any
        try:
            if inspect.iscoroutinefunction(cmd.spotter):
                result = await cmd.spotter(cmd.audio)
            else:
                pool = self._spot_pool
                if pool is None:
                    pool = self._spot_pool = ReplyPool(SPOT_THREADS)
                lane = await pool.acquire()
                try:
                    result = await asyncio.wrap_future(lane.submit(cmd.spotter, cmd.audio))
                finally:
                    lane.release()  # (after the call in flight, if this task was cancelled)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = exc
        self.core.spot_done(cmd.seq, result, self._loop.time())
        self._after()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro, context=self.log_context.copy())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stream %s: task failed", self.id, exc_info=task.exception())

    # ---- outbound -------------------------------------------------------------------------

    def emit(self, event: OutEvent) -> None:
        """Send ``event`` to the client: at once when the driver can write, else through the outbox."""
        if self._closing:
            return
        # The direct path: with nothing queued, a driver that can write now takes the event at once
        # (no task switch per message, and a pause_detected leaves as soon as it is known).
        if self.sink is not None and not self._outbox and type(event) is not Close and self.sink(event):
            return
        if len(self._outbox) >= self._outbox_limit:
            # The client is not reading what we send: end it rather than grow without bound.
            self._outbox.clear()
            self.core.metrics.inc("outbox_overflows")
            self.overflowed = True
            self.core.close(1008, "client is not reading: outbound queue full")
            self._closing = True  # (the close, and cancelling the reply, are done right here)
            self._cancel_reply()
            for dropped in self.core.take_events():  # what the host app follows still sees the end
                if self._observer is not None and type(dropped) is not AudioOut:
                    self._observer(self, dropped)
            event = Close(1008, "client is not reading: outbound queue full")
        if type(event) is Close:
            self._closing = True
            self._vad_room.set()
        self._outbox.append(event)
        self._outbox_ready.set()

    async def next_output(self) -> OutEvent:
        """The next event for the client, in order; a ``Close`` is the last one."""
        while not self._outbox:
            self._outbox_ready.clear()
            await self._outbox_ready.wait()
        return self._outbox.popleft()

    def connection_lost(self) -> None:
        """The driver's connection is gone: close the core (cancelling its reply) and end the writer."""
        if not self.core.closed:
            self.core.close(1006, "connection lost")
            self._after()
        elif not self._closing:
            self.emit(Close(1006, "connection lost"))

    async def aclose(self) -> None:
        """Cancel everything this stream owns and give back its VAD slot."""
        if not self.core.closed:
            self.core.close(1001, "stream closed")
            self._after()
        self._closing = True
        self._vad_room.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.core.release()


def read_message(runner: StreamRunner, dialect: Dialect, message: str | bytes) -> list[InEvent]:
    """One wire message to the stream's events, as every driver reads it: a binary message of a dialect
    whose binary messages are audio goes straight through; a message the dialect cannot understand is
    counted and answered with an error (and ends the stream when the dialect says it is fatal)."""
    if dialect.binary_audio and type(message) is bytes:
        return [AudioIn(dialect.audio(message))]
    try:
        return dialect.parse(message)
    except ProtocolError as exc:
        runner.core.metrics.inc_labelled("protocol_errors", dialect.name, exc.kind)
        token = STREAM_ID.set(runner.id)
        try:
            runner.emit(Error(str(exc)))
            if exc.fatal:
                runner.close(exc.code, str(exc)[:120])
        finally:
            STREAM_ID.reset(token)
        return []


def write_message(runner: StreamRunner | None, dialect: Dialect, event: OutEvent) -> str | bytes | None:
    """One event to its wire message, as every driver writes it; None when the dialect does not send it
    (then it goes to the server log)."""
    try:
        message = dialect.serialize(event)
    except (TypeError, ValueError, RecursionError) as exc:
        # e.g. an AdditionalOutputs value JSON cannot carry: tell the client, keep the stream
        log.warning("cannot send %s: %s", type(event).__name__, exc)
        message = dialect.serialize(Error(f"the server could not encode a {type(event).__name__} message: {exc}"))
    if message is None and runner is not None:
        log_unsent(runner, event)
    return message


def log_unsent(runner: StreamRunner, event: OutEvent) -> None:
    """What a dialect does not send (Twilio takes no log or error messages) goes to the server log."""
    name = type(event).__name__
    ctx = runner.core.context
    dialect, key = ctx.dialect, ctx.client_id or runner.id  # (the caller's id: Twilio's streamSid)
    if isinstance(event, Error) and event.logged:
        return  # (the core logged it, with the stream's ids, when it happened)
    if isinstance(event, Error | Warning):
        log.warning("%s stream %s: %s: %s", dialect, key, name.lower(), event.message)
    elif isinstance(event, Log):
        # every turn of every call: DEBUG, so a busy server's INFO log stays readable
        log.debug("%s stream %s: %s %s", dialect, key, event.name, event.fields)
    elif isinstance(event, FetchOutput):
        log.info("%s stream %s: additional output %s", dialect, key, repr(event.data)[:500])
    elif isinstance(event, StopWord):
        log.info("%s stream %s: heard the stop word %r", dialect, key, event.word)
