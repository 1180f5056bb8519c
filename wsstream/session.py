"""One stream's life, independent of transport: inbound events in, outbound events out.

The session owns the input format, the stream's VAD state and pause detector,
the audio history utterances are cut from, the reply task and the paced
playout of reply audio. A transport feeds ``handle()`` and drains
``next_output()``; nothing here touches a socket, so the same core can sit under
any server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vad.detector import (
    PauseCancelled,
    PauseDetected,
    PauseDetector,
    PauseTentative,
    StartedTalking,
    State,
)
from wsstream.codecs import AudioFormat, FormatError, decode
from wsstream.events import (
    AudioIn,
    AudioOut,
    Clear,
    Close,
    Dtmf,
    Error,
    FetchOutput,
    InEvent,
    Log,
    Mark,
    MarkPlayed,
    OutEvent,
    Ping,
    Pong,
    SetInputs,
    Start,
    Stop,
    Trigger,
    VadTrace,
    Warning,
)
from wsstream.history import AudioHistory
from wsstream.inference import InferenceWorker
from wsstream.metrics import Metrics
from wsstream.playout import FrameEncoder
from wsstream.reply import (
    AdditionalOutputs,
    CloseStream,
    ReplyContext,
    ReplyOnPause,
    reply_items,
    set_context,
)

log = logging.getLogger("wsstream.session")


@dataclass(frozen=True)
class SessionConfig:
    lead_ms: float = 160.0  # reply audio sent ahead of real time, at most
    refill_ms: float = 40.0  # ... and topped up when it falls this far below the lead (fewer wakeups)
    frame_ms: float = 20.0
    pad_last_frame: bool = False  # telephony wants every frame full-length
    max_utterance_s: float = 120.0  # a turn longer than this ends anyway (bounds memory)
    max_message_s: float = 2.0  # one audio message may carry at most this much audio (fits the VAD buffer)
    outbox_limit: int = 1024  # outbound events waiting for a client that does not read
    playout_queue_frames: int = 100  # reply frames produced ahead of playout (backpressure on the reply)
    vad_high_water: float = 0.5  # fraction of the VAD buffer at which input waits for inference
    narrowband_vad: bool = False  # run Silero at 8 kHz for every stream (cheaper; telephony always is)


_END = b""  # end-of-reply marker in the playout queue


class Session:
    def __init__(self, app: ReplyOnPause, worker: InferenceWorker, *, session_id: str,
                 input_format: AudioFormat | None = None, output_format: AudioFormat | None = None,
                 dialect: str = "ws", config: SessionConfig | None = None,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.worker = worker
        self.config = config or SessionConfig()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.context = ReplyContext(session_id=session_id, dialect=dialect)
        opts = app.options
        cap = self.config.max_utterance_s
        self.options = dataclasses.replace(
            opts, max_speech_s=min(opts.max_speech_s or cap, cap))
        self.debug = False
        self._args: tuple[Any, ...] = ()
        self._kwargs: dict[str, Any] = {}
        self._outbox: deque[OutEvent] = deque()
        self._outbox_ready = asyncio.Event()
        self._closing = False
        self._audio_seen = False
        self._started = False
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_seq = 0
        self._playing_seq = 0  # the reply whose frames the playout may send (0: none)
        self._first_frame_sent = False
        self._reply_idle = asyncio.Event()
        self._reply_idle.set()
        self._close_after_seq = 0  # the reply that asked to end the stream once it has played
        self._playout_q: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(self.config.playout_queue_frames)
        self._play_until = 0.0
        self._vad_drained = asyncio.Event()
        self._vad_drained.set()
        self._windows_seen = 0
        self.samples_in = 0  # audio samples taken in (published to metrics when the session ends)
        # Set by a transport: takes an outbound event now and returns True, or returns False when it
        # cannot write yet; the event then waits in the outbox for ``next_output``.
        self.sink: Callable[[OutEvent], bool] | None = None
        self._configure(input_format or AudioFormat(), output_format)

    # ---- setup ---------------------------------------------------------------

    def _configure(self, fmt: AudioFormat, out: AudioFormat | None) -> None:
        old = getattr(self, "vad", None)
        if old is not None:
            old.close()
        self.input_format = fmt
        self.output_format = out or fmt
        self.vad = self.worker.engine.open_stream(fmt.sample_rate, self.config.narrowband_vad)
        self.detector = PauseDetector(self.options, self.vad.rate, self.vad.window)
        self.history = AudioHistory(int((self.config.max_utterance_s + 2.0) * fmt.sample_rate))
        self._frame_s = self.config.frame_ms / 1000.0
        # what the audio hot path needs, computed once
        self._encoding = fmt.encoding
        self._max_message_samples = self.config.max_message_s * fmt.sample_rate
        self._vad_ratio = self.vad.rate / fmt.sample_rate
        self._vad_high_water = self.vad.capacity * self.config.vad_high_water
        self._vad_room = self._vad_high_water - self.vad.window  # pending + incoming beyond this must wait
        self._history_margin = int(self.options.prefix_padding_ms * self.vad.rate / 1000) + self.vad.window

    def start(self) -> None:
        """Start the playout task (call from a running loop)."""
        self._spawn(self._playout())

    async def __aenter__(self) -> Session:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s task failed", self.context.session_id, exc_info=task.exception())

    async def aclose(self) -> None:
        """Cancel everything this session owns and give back its VAD slot."""
        self._closing = True
        self._vad_drained.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.vad.close()
        self.metrics.inc("audio_samples_in", self.samples_in)
        self.samples_in = 0

    # ---- outbound ------------------------------------------------------------

    def emit(self, event: OutEvent) -> None:
        if self._closing and not isinstance(event, Close):
            return
        # The direct path: with nothing queued, a transport that can write now takes the event at once
        # (no task switch per message, and a pause_detected leaves as soon as it is known).
        if self.sink is not None and not self._outbox and not isinstance(event, Close) and self.sink(event):
            return
        if len(self._outbox) >= self.config.outbox_limit:
            # The client is not reading what we send: end it rather than grow without bound.
            self._outbox.clear()
            self.metrics.inc("outbox_overflows")
            event = Close(1008, "client is not reading: outbound queue full")
        if isinstance(event, Close):
            self._closing = True
            self._vad_drained.set()
        self._outbox.append(event)
        self._outbox_ready.set()

    async def next_output(self) -> OutEvent:
        """The next event for the client, in order; a ``Close`` is the last one."""
        while not self._outbox:
            self._outbox_ready.clear()
            await self._outbox_ready.wait()
        return self._outbox.popleft()

    def _log(self, name: str, **fields: Any) -> None:
        self.metrics.inc(f"events_{name}")
        self.emit(Log(name, fields))

    # ---- inbound -------------------------------------------------------------

    async def handle(self, event: InEvent) -> None:
        """Handle ``event``, waiting first while inference has no room for more audio."""
        while not self.offer(event):
            await self.wait_vad_room()

    async def wait_vad_room(self) -> None:
        """Return once the stream's VAD buffer has drained (or the session is closing)."""
        await self._vad_drained.wait()

    def offer(self, event: InEvent) -> bool:
        """Handle ``event`` now, unless it is audio that inference has no room for yet: then nothing is
        consumed and False is returned; the transport stops reading, waits for ``wait_vad_room`` and
        offers it again. That is the whole backpressure path: no audio is ever dropped."""
        if self._closing:
            return True
        if isinstance(event, AudioIn):
            return self.offer_audio(event.data, event.encoding)
        if isinstance(event, Start):
            self._on_start(event)
        elif isinstance(event, SetInputs):
            self._set_inputs(event.data)
        elif isinstance(event, Trigger):
            self._on_trigger()
        elif isinstance(event, MarkPlayed):
            played = self.context.marks_played
            played.append(event.name)
            del played[:-100]
        elif isinstance(event, Ping):
            self.emit(Pong())
        elif isinstance(event, Dtmf):
            self.context.dtmf.append(event.digit)
            del self.context.dtmf[:-100]
        elif isinstance(event, Stop):
            if not event.finish:
                self._hang_up()
            elif not self._stopping:
                self._stopping = True
                self._spawn(self._finish())
        return True

    def _on_start(self, event: Start) -> None:
        if self._audio_seen:
            self.emit(Error("start must come before any audio; this start was ignored"))
            return
        if event.format is not None or event.output_format is not None:
            self._configure(event.format or self.input_format, event.output_format)
        if event.inputs is not None:
            self._set_inputs(event.inputs)
        self.debug = event.debug
        self.context.client_id = event.client_id
        self.context.call.update(event.context)
        self._maybe_startup()

    def _set_inputs(self, data: Any) -> None:
        if isinstance(data, list):
            self._args, self._kwargs = tuple(data), {}
        elif isinstance(data, dict):
            self._args, self._kwargs = (), dict(data)
        else:
            self._args, self._kwargs = (data,), {}

    def offer_audio(self, data: bytes, encoding: str | None = None) -> bool:
        """``offer(AudioIn(data, encoding))`` without the event: the per-message hot path (a few
        attribute reads, one decode, two copies), which a transport may call directly."""
        if self._closing or self._stopping:
            return True
        try:
            pcm = decode(data, encoding or self._encoding)
        except FormatError as exc:
            self.metrics.inc("bad_audio")
            self.emit(Error(str(exc)))
            return True
        n = pcm.size
        if n > self._max_message_samples:
            rate = self.input_format.sample_rate
            self.emit(Error(f"an audio message may carry at most {self.config.max_message_s:g} s of audio; "
                            f"got {n / rate:.1f} s"))
            return True
        vad = self.vad
        pending = vad.pending_samples
        # (only while the worker has whole windows to take: with less pending, waiting would never end)
        if pending + n * self._vad_ratio > self._vad_room and pending >= vad.window:
            self._vad_drained.clear()  # inference is behind: the client waits (TCP backpressure)
            self.metrics.inc("input_waits")
            return False
        if not self._audio_seen:
            self._audio_seen = True
            self._maybe_startup()
        self.history.append(pcm)
        vad.push(pcm)
        self.samples_in += n
        if vad.pending_samples >= vad.window:
            self.worker.notify(self)
        return True

    def _maybe_startup(self) -> None:
        if self._started:
            return
        self._started = True
        if self.app.startup_fn is not None:
            self._begin_reply(self.app.startup_fn, ())

    # ---- VAD results (called by the inference worker, on the loop) -------------

    def on_vad(self, probs: np.ndarray, levels: np.ndarray) -> None:
        self._windows_seen += len(probs)
        if not self._vad_drained.is_set() and (
                self._closing or self.vad.pending_samples < self._vad_high_water / 2):
            self._vad_drained.set()  # a reader waiting for inference to catch up may go on
        if self._closing:
            return
        detector = self.detector
        events = detector.push(probs, levels)
        rate = detector.rate
        if self.debug:
            self.emit(VadTrace([round(float(p), 3) for p in probs], round(detector.position / rate, 3)))
        ignore_speech = self._replying and not self.options.can_interrupt
        for ev in events:
            if isinstance(ev, StartedTalking):
                if ignore_speech:
                    continue
                self._log("started_talking", t=round(ev.at / rate, 3), onset=round(ev.onset / rate, 3))
                if self.options.can_interrupt and self._audible():
                    self._interrupt()
            elif isinstance(ev, PauseTentative):
                if not ignore_speech:
                    self._log("pause_tentative", t=round(ev.at / rate, 3))
            elif isinstance(ev, PauseCancelled):
                if not ignore_speech:
                    self._log("pause_cancelled", t=round(ev.at / rate, 3))
            elif isinstance(ev, PauseDetected) and not ignore_speech:
                self._turn_ended(ev)
        idle = detector.state is State.IDLE
        if ignore_speech and not idle:
            detector.reset()
            idle = True
        # Keep only what the next utterance can need.
        keep = (detector.position if idle else detector.onset) - self._history_margin
        self.history.trim(keep * self.input_format.sample_rate // rate)

    def _to_input(self, position: int) -> int:
        return position * self.input_format.sample_rate // self.detector.rate

    def _turn_ended(self, ev: PauseDetected) -> None:
        rate = self.detector.rate
        audio = self.history.slice(self._to_input(ev.start), self._to_input(ev.end))
        speech_s = audio.size / self.input_format.sample_rate
        self._log("pause_detected", t=round(ev.at / rate, 3), speech_s=round(speech_s, 3),
                  speech_end=round(ev.speech_end / rate, 3), reason=ev.reason)
        self.metrics.inc("turns")
        self._begin_reply(self.app.fn, ((self.input_format.sample_rate, audio), *self._args), self._kwargs)

    def _on_trigger(self) -> None:
        ev = self.detector.force_end()
        if ev is None:
            self.emit(Warning("trigger: no speech heard since the last reply; nothing to reply to"))
            return
        self._turn_ended(ev)

    # ---- replies -------------------------------------------------------------

    @property
    def _replying(self) -> bool:
        return not self._reply_idle.is_set()

    def _audible(self) -> bool:
        """Is a reply still being heard? Sent in full is not played in full: a client that echoes marks
        (browsers, Twilio) has not played the last reply until it echoes its mark."""
        if self._replying:
            return True
        ctx = self.context
        return bool(ctx.marks_played and ctx.marks_sent) and ctx.marks_sent[-1] not in ctx.marks_played

    def _begin_reply(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        if self._replying:
            self._interrupt()
        self._reply_seq += 1
        self._playing_seq = self._reply_seq
        self._first_frame_sent = False
        self._reply_idle.clear()
        self._reply_task = self._spawn(self._reply(self._reply_seq, fn, args, kwargs or {}))

    async def _reply(self, seq: int, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        set_context(self.context)
        encoder = FrameEncoder(self.output_format, self.config.frame_ms)
        try:
            async for item in reply_items(fn, *args, **kwargs):
                if isinstance(item, AdditionalOutputs):
                    self.emit(FetchOutput(list(item.args)))
                elif isinstance(item, CloseStream):
                    self._close_after_seq = seq
                    break
                elif isinstance(item, tuple) and len(item) == 2:
                    rate, samples = item
                    for frame in encoder.push(int(rate), samples):
                        await self._playout_q.put((seq, frame))
                elif item is not None:
                    self.emit(Warning(f"reply function yielded an unsupported {type(item).__name__}; "
                                      "expected (sample_rate, ndarray), AdditionalOutputs or CloseStream"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("reply function failed in session %s", self.context.session_id)
            self.metrics.inc("reply_errors")
            self.emit(Error(f"reply function failed: {type(exc).__name__}: {exc}"))
        # what the reply produced before it ended (or failed) is still played, to its last sample
        for frame in encoder.flush(pad=self.config.pad_last_frame):
            await self._playout_q.put((seq, frame))
        await self._playout_q.put((seq, _END))

    def _interrupt(self) -> None:
        """Barge-in: stop the reply (its generator is closed), drop queued audio, tell the client."""
        self.metrics.inc("interruptions")
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
        self._playing_seq = 0
        while not self._playout_q.empty():
            self._playout_q.get_nowait()
        self._play_until = self.clock()
        self._reply_idle.set()
        self.emit(Clear())
        if self._close_after_seq and self._close_after_seq == self._reply_seq:
            # the reply had said its last words and asked to end the stream: the interruption ends it now
            self.emit(Close(1000, "reply function closed the stream"))

    async def _playout(self) -> None:
        """Send reply frames paced to real time plus the lead, from a monotonic clock."""
        lead = self.config.lead_ms / 1000.0
        refill = min(self.config.refill_ms, self.config.lead_ms / 2) / 1000.0
        out_rate = self.output_format.sample_rate
        while True:
            seq, frame = await self._playout_q.get()
            if seq != self._playing_seq:
                continue  # left over from an interrupted reply
            if frame is _END:
                name = f"reply-{seq}"
                self.context.marks_sent.append(name)
                del self.context.marks_sent[:-100]
                self.emit(Mark(name))
                self._playing_seq = 0
                self._reply_idle.set()
                if not self.options.can_interrupt:
                    self.detector.reset()
                if self._close_after_seq == seq:
                    self.emit(Close(1000, "reply function closed the stream"))
                continue
            now = self.clock()
            if self._play_until < now:
                self._play_until = now  # the client has played everything: restart the clock
            wait = self._play_until - lead - now
            if wait > 0:
                # The client holds a full lead: let it fall to (lead - refill), then top it up with
                # several frames in a row, so this task wakes once per refill, not once per frame.
                await asyncio.sleep(wait + refill)
                if seq != self._playing_seq:
                    continue
            if not self._first_frame_sent:
                self._first_frame_sent = True
                self._log("response_starting", t=round(self.detector.position / self.detector.rate, 3))
            self.emit(AudioOut(frame))
            out_rate = self.output_format.sample_rate
            self._play_until += len(frame) / self.output_format.sample_width / out_rate

    # ---- end of input ----------------------------------------------------------

    def _hang_up(self) -> None:
        """The peer is gone (Twilio ``stop``, fastrtc ``stop``): cancel the reply and close, playing nothing more."""
        self._stopping = True
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
        self._playing_seq = 0
        self.emit(Close(1000, "stop"))

    async def _finish(self) -> None:
        """``stop``: let the VAD catch up, end a turn in progress, finish the reply, close."""
        deadline = self.clock() + 10.0
        while self.vad.pending_samples >= self.vad.window or self._windows_seen < self.vad.windows_taken:
            if self.clock() > deadline:
                break
            await asyncio.sleep(0.005)
        ev = self.detector.force_end()
        if ev is not None:
            self._turn_ended(ev)
        await self._reply_idle.wait()
        self.emit(Close(1000, "stop"))
