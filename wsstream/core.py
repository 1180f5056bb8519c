"""The rules of one stream, sans-I/O: events in at time ``now``, events out, next deadline.

``StreamCore`` holds everything one stream decides: its input format and
limits, VAD flow control, the pause detector's turns, the reply state machine,
marks and barge-in, and the pacing of reply frames against real time plus the
lead. It owns no task, no queue that waits, no socket and no clock: a driver
calls it with the time, takes ``take_events()`` and calls ``poll(now)`` again at
``deadline``. Reply functions run outside (``StartReply`` / ``CancelReply`` are
commands to the runner, which feeds what the function yields back through
``reply_item`` and ``reply_done``). So every rule here is testable with a fake
clock and fed probabilities, without a model or a socket.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vad.detector import (
    DetectorEvent,
    PauseCancelled,
    PauseDetected,
    PauseDetector,
    PauseTentative,
    StartedTalking,
    State,
)
from vad.engine import VadStream
from wsstream.codecs import AudioFormat, FormatError, decode
from wsstream.config import StreamConfig
from wsstream.echogate import EchoGate
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
    Notice,
    OutEvent,
    Ping,
    Pong,
    SendInput,
    SetInputs,
    Start,
    Stop,
    StopWord,
    Trigger,
    VadTrace,
    Warning,
)
from wsstream.history import AudioHistory
from wsstream.metrics import Metrics
from wsstream.playout import FrameEncoder, ReplyAudioRefused
from wsstream.reply import AdditionalOutputs, CloseStream, ReplyContext, ReplyOnPause, StreamFacts
from wsstream.stopwords import Activation, Answer, ReplyOnStopWords, Spot, StopWordGate, clip

log = logging.getLogger(__name__)

FINISH_TIMEOUT_S = 10.0  # on stop, how long VAD may take to catch up before the last turn is cut


class StreamState(enum.Enum):
    """The input side of a stream."""

    NEW = "new"  # nothing yet: a start may set the formats
    STARTED = "started"  # a start came, no audio yet: another start may still change them
    STREAMING = "streaming"  # audio has come: the formats are fixed
    STOPPING = "stopping"  # stop: no more audio; VAD catches up, then the last turn is ended
    LAST_REPLY = "last_reply"  # stop: the last reply plays, then the stream closes
    CLOSED = "closed"  # a Close went out: nothing more happens


class ReplyState(enum.Enum):
    IDLE = "idle"  # no reply
    WAITING = "waiting"  # it asked the client for its inputs (send_input): its function is called once they come
    RUNNING = "running"  # the reply function is producing; its frames go out as they are due
    DRAINING = "draining"  # the function has ended; its last frames are still due


@dataclass(frozen=True, slots=True)
class StartReply:
    """Command to the runner: call ``fn(*args, **kwargs)`` as reply ``seq`` and feed back its items."""

    seq: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    context: ReplyContext


@dataclass(frozen=True, slots=True)
class CancelReply:
    """Command to the runner: reply ``seq`` was interrupted or the stream ended; stop its function."""

    seq: int


@dataclass(frozen=True, slots=True)
class ReplyEnded:
    """Observation for the host app (never on the wire): how reply ``seq`` ended."""

    seq: int
    how: str  # "played", "interrupted" or "cancelled"


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """Observation for the host app (never on the wire): a start was accepted (the client id is known)."""

    client_id: str | None


Command = StartReply | CancelReply | Spot
Output = OutEvent | Command | ReplyEnded | StreamStarted


@dataclass
class _Reply:
    seq: int
    encoder: FrameEncoder
    state: ReplyState = ReplyState.RUNNING
    spoke: bool = False  # its first frame went out (response_starting said)
    speculative: bool = False  # started at pause_tentative: held back until the pause is confirmed
    closes: bool = False  # it yielded CloseStream: the stream ends once it has played
    started: float = 0.0  # when its function was called (the timeouts count from here)
    audio_s: float = 0.0  # seconds of audio it has yielded (bounded by max_reply_s)
    flushed: bool = False  # its encoder's last frame is out (it has ended and all it fed is converted)
    turn_at: float | None = None  # when the turn it answers ended (pause_detected): for the latency histogram
    fn: Callable[..., Any] | None = None  # (WAITING) the function to call, and the arguments before the inputs
    lead: tuple[Any, ...] = ()
    wait_until: float = 0.0  # (WAITING) called then with the inputs it has, if none came


class StreamCore:
    """One stream's rules. Not thread-safe; every call is from the driver's loop."""

    def __init__(self, app: ReplyOnPause, open_vad: Callable[[int], VadStream], *, stream_id: str,
                 dialect: str = "ws", input_format: AudioFormat | None = None,
                 output_format: AudioFormat | None = None, config: StreamConfig | None = None,
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.config = config or StreamConfig()
        self.metrics = metrics or Metrics()
        self._open_vad = open_vad
        self.facts = StreamFacts(session_id=stream_id, dialect=dialect)
        self.context = ReplyContext(self.facts)  # what reply functions see: a read-only view of ``facts``
        cap = self.config.max_utterance_s
        opts = app.options
        # a speculative reply starts at pause_tentative: a quarter of the pause (at most 150 ms) leaves it
        # most of the pause to work in, unless the app chose the moment itself
        tentative = opts.tentative_ms
        if app.speculative and tentative is None:
            tentative = min(150.0, opts.pause_ms / 4)
        self.options = dataclasses.replace(opts, max_speech_s=min(opts.max_speech_s or cap, cap),
                                           tentative_ms=tentative)
        self.state = StreamState.NEW
        self.debug = False
        self.samples_in = 0  # audio samples taken in (published to metrics when the stream ends)
        self.deadline: float | None = None  # when ``poll`` wants to be called next (None: no timer)
        self._out: list[Output] = []
        self._args: tuple[Any, ...] = ()
        self._kwargs: dict[str, Any] = {}
        self._seq = 0
        self._reply: _Reply | None = None
        self._frames: deque[bytes] = deque()
        self._play_until = 0.0  # when the client will have played everything sent so far
        self._windows_seen = 0
        self._finish_by = 0.0
        self._barge: int | None = None  # onset of speech over a reply, not yet long enough to interrupt it
        self._barge_heard = 0  # the end of its speech so far
        self._idle_at: float | None = None  # when an idle prompt is due (None: none armed)
        self._turn_at: float | None = None  # when the last turn ended, until a reply to it begins
        self.vad: VadStream
        self._configure(input_format or AudioFormat(), output_format)

    def _configure(self, fmt: AudioFormat, out: AudioFormat | None) -> None:
        old = getattr(self, "vad", None)
        if old is not None:
            old.close()
        self.input_format = fmt
        self.output_format = out or fmt
        self.vad = self._open_vad(fmt.sample_rate)
        self.detector = PauseDetector(self.options, self.vad.rate, self.vad.window)
        app = self.app
        lead = int(self.options.prefix_padding_ms * self.vad.rate / 1000)
        self._gate = StopWordGate(app, self.vad.rate, lead) if isinstance(app, ReplyOnStopWords) else None
        self._interrupt_len = int(app.interrupt_ms * self.vad.rate / 1000)
        self._echo = EchoGate(fmt.sample_rate) if self.config.echo_gate else None
        self._echo_next = 0  # where the reference audio sent last ends, on the input timeline
        self._echo_anchor: float | None = None  # input position minus now * rate: the freshest input seen
        self._echo_seen_at = 0.0  # ... when last updated
        self._echo_asked = -1  # input position at which the echo gate was last asked about a barge
        self._echo_every = fmt.sample_rate * 3 // 50  # ... asked again after this much more input (60 ms)
        # ... or, while it hears nobody but the echo, after most of interrupt_ms: a talker's run is measured
        # from where it began, so only the answer that it has lasted interrupt_ms can wait, and it does not
        self._echo_quiet = max(self._echo_every, int(0.8 * self.app.interrupt_ms * fmt.sample_rate / 1000))
        self._echo_next_ask = 0  # how much input the answer holds for
        self._barge_echo = False  # the gate's last answer: the speech over the reply does not interrupt it
        self._barge_talker = False  # the gate heard someone besides the echo during this barge
        self._not_barge = -1  # onset of speech the gate found to be the user's after the reply: a turn
        self.history = AudioHistory(int((self.config.max_utterance_s + 2.0) * fmt.sample_rate))
        # what the audio hot path needs, computed once
        self._encoding = fmt.encoding
        self._max_message_samples = self.config.max_message_s * fmt.sample_rate
        self._vad_ratio = self.vad.rate / fmt.sample_rate
        self._vad_high_water = self.vad.capacity * self.config.vad_high_water
        self._vad_room = self._vad_high_water - self.vad.window  # pending + incoming beyond this must wait
        self._history_margin = int(self.options.prefix_padding_ms * self.vad.rate / 1000) + self.vad.window
        self._frame_out_s = 1.0 / (self.output_format.sample_width * self.output_format.sample_rate)

    # ---- what the driver reads ---------------------------------------------------

    def take_events(self) -> list[Output]:
        """Everything decided since the last call, in order."""
        out, self._out = self._out, []
        return out

    @property
    def has_events(self) -> bool:
        return bool(self._out)

    @property
    def reply_state(self) -> ReplyState:
        return self._reply.state if self._reply is not None else ReplyState.IDLE

    @property
    def playout_room(self) -> bool:
        """May the reply function produce more? (Frames produced ahead of playout are bounded, and a chunk
        is converted a slice at a time as playout needs it: its function waits until all of it is.)"""
        if self.state is StreamState.CLOSED:
            return True
        reply = self._reply
        return len(self._frames) < self.config.playout_queue_frames and (reply is None or not reply.encoder.queued)

    @property
    def vad_room(self) -> bool:
        """Has inference caught up enough that a reader held back by ``offer_audio`` may go on?"""
        return self.vad.pending_samples < self._vad_high_water / 2 or self.state is StreamState.CLOSED

    @property
    def closed(self) -> bool:
        return self.state is StreamState.CLOSED

    def _emit(self, event: Output) -> None:
        self._out.append(event)

    def _log(self, name: str, **fields: Any) -> None:
        self.metrics.inc(f"events_{name}")
        self._out.append(Log(name, fields))

    # ---- inbound -------------------------------------------------------------------

    def receive(self, event: InEvent, now: float) -> bool:
        """Handle ``event`` at ``now``. False only for audio inference has no room for yet: nothing
        was consumed, and the driver offers it again once ``vad_room`` (no audio is ever dropped)."""
        if self.state is StreamState.CLOSED:
            return True
        if type(event) is AudioIn:
            return self.offer_audio(event.data, now)
        if isinstance(event, Start):
            self._on_start(event, now)
        elif isinstance(event, SetInputs):
            self.set_inputs(event.data, now)
        elif isinstance(event, Trigger):
            self.trigger(now)
        elif isinstance(event, MarkPlayed):
            self.facts.marks_played.append(event.name)
        elif isinstance(event, Ping):
            self._emit(Pong())
        elif isinstance(event, Dtmf):
            self.facts.dtmf.append(event.digit)
        elif isinstance(event, Notice):
            if event.metric:
                self.metrics.inc(event.metric)
            facts = self.facts
            log.log(event.level, "%s stream %s: %s", facts.dialect, facts.client_id or facts.session_id, event.message)
        elif isinstance(event, Stop):
            if event.finish:
                self._stop(now)
            else:
                self._hang_up()
        return True

    def _on_start(self, event: Start, now: float) -> None:
        if self.state is not StreamState.NEW and self.state is not StreamState.STARTED:
            self._emit(Error("start must come before any audio; this start was ignored"))
            return
        reframed = event.frame_ms is not None and event.frame_ms != self.config.frame_ms
        if reframed:
            self.config = dataclasses.replace(self.config, frame_ms=event.frame_ms)
        if event.format is not None or event.output_format is not None:
            self._configure(event.format or self.input_format, event.output_format)
        if event.format is not None or event.output_format is not None or reframed:
            reply = self._reply
            if reply is not None and (reply.encoder.fmt != self.output_format or reframed):
                # the greeting began at the first start: it starts over, in the format asked for now
                self.close_reply("cancelled")
                if self.app.startup_fn is not None:
                    self._begin_reply(self.app.startup_fn, (), {}, now, "startup")
        if event.inputs is not None:
            self.set_inputs(event.inputs, now)
        self.debug = event.debug
        self.facts.client_id = event.client_id
        self.facts.call.update(event.context)
        self._emit(StreamStarted(event.client_id))
        self._leave_new(StreamState.STARTED, now)

    def _leave_new(self, to: StreamState, now: float) -> None:
        was_new = self.state is StreamState.NEW
        self.state = to
        if was_new and self.app.startup_fn is not None:
            self._begin_reply(self.app.startup_fn, (), {}, now, "startup")

    def set_inputs(self, data: Any, now: float) -> None:
        """fastrtc's ``set_input``: a list is positional, a dict keyword arguments, anything else one value.
        A reply waiting for them (``send_input``) is called with them at ``now``."""
        if isinstance(data, list):
            self._args, self._kwargs = tuple(data), {}
        elif isinstance(data, dict):
            self._args, self._kwargs = (), dict(data)
        else:
            self._args, self._kwargs = (data,), {}
        reply = self._reply
        if reply is not None and reply.state is ReplyState.WAITING:
            self.metrics.inc("inputs_received")
            self._call_waiting(reply, now)

    def offer_audio(self, data: bytes, now: float | None = None) -> bool:
        """``receive(AudioIn(data))`` without the event: the per-message hot path (a few attribute
        reads, one decode, two copies). ``now`` is needed for the first audio, which may start a
        greeting (its timeouts count from then), and for a pause decided on this audio before the model
        has scored it (``_decide_early``; without ``now``, the model's result decides it)."""
        state = self.state
        if state is not StreamState.STREAMING and state is not StreamState.NEW and state is not StreamState.STARTED:
            return True  # stopping or closed: audio after stop is not heard
        try:
            pcm = decode(data, self._encoding)
        except FormatError as exc:
            self.metrics.inc("bad_audio")
            self._emit(Error(str(exc)))
            return True
        n = pcm.size
        if n > self._max_message_samples:
            rate = self.input_format.sample_rate
            self._emit(Error(f"an audio message may carry at most {self.config.max_message_s:g} s of audio; "
                             f"got {n / rate:.1f} s"))
            return True
        vad = self.vad
        pending = vad.pending_samples
        # (only while the worker has whole windows to take: with less pending, waiting would never end)
        if pending + n * self._vad_ratio > self._vad_room and pending >= vad.window:
            self.metrics.inc("input_waits")
            return False
        if state is not StreamState.STREAMING:  # the first audio: the formats are fixed from now on
            self._leave_new(StreamState.STREAMING, self._play_until if now is None else now)
        self.history.append(pcm)
        vad.push(pcm)
        if self._echo is not None:
            self._echo.microphone(pcm, self.samples_in)
        self.samples_in += n
        if now is not None and self.detector.due() is not None:
            self._decide_early(now)
        return True

    # ---- VAD results -----------------------------------------------------------------

    def on_vad(self, probs: np.ndarray, levels: np.ndarray | None, now: float) -> None:
        """The probabilities (and sub-window levels) of the next windows of this stream's audio."""
        self._windows_seen += len(probs)
        if self.state is StreamState.CLOSED or self.state is StreamState.LAST_REPLY:
            return  # (after stop's last turn, late results are for audio the stream no longer answers)
        if self._echo is not None:
            self._echo_clock(now)
        detector = self.detector
        events = detector.push(probs, levels)
        if self.debug:
            self._emit(VadTrace([round(float(p), 3) for p in probs], round(detector.position / detector.rate, 3)))
        self._on_detector(events, now)
        if self.state is StreamState.STOPPING and self._vad_caught_up():
            self._end_last_turn(now)

    def _decide_early(self, now: float) -> None:
        """A pause whose end of speech has settled falls due at a known sample, and from there only the
        speaker's voice can hold it off, which levels tell (``PauseDetector.peek``). So once the input up
        to it has come, it is decided on that input's levels, without waiting for the model to score those
        windows: the turn ends (and its reply starts) up to a window plus the inference wait sooner, at the
        sub-window the model's result would have ended it. The levels are the input's own; at a rate the
        model does not take they still hold the highs its resampled audio lacks, which errs towards waiting
        for the model, not an early end."""
        detector = self.detector
        due = detector.due()
        if due is None or self.state is not StreamState.STREAMING:
            return
        if not self.options.can_interrupt and self._reply is not None:
            return  # (speech now is not heard: the detector starts afresh after the reply)
        sub, position = detector.sub_window, detector.position
        need = -(-(due - position) // sub)
        if need <= 0:
            return
        rate_in, rate = self.input_format.sample_rate, detector.rate
        last = (position + sub * need) * rate_in // rate
        if last > self.samples_in:
            return  # (not all of it has come yet)
        edges = (position + sub * np.arange(need + 1)) * rate_in // rate
        first = int(edges[0])
        audio = self.history.slice(first, last)
        if audio.size != last - first:
            return
        x = audio.astype(np.float32) * np.float32(1 / 32768)
        power = np.add.reduceat(x * x, edges[:-1] - first) / np.diff(edges)
        ev = detector.peek(10.0 * np.log10(power + 1e-12))
        if ev is None:
            return
        if self._echo is not None:
            self._echo_clock(now)
        self.metrics.inc("early_pauses")
        self._on_detector([ev], now)

    def _on_detector(self, events: list[DetectorEvent], now: float) -> None:
        """What the detector's events (from the model's results, or decided early) do to the stream."""
        detector = self.detector
        rate = detector.rate
        can_interrupt = self.options.can_interrupt
        for ev in events:
            if (not can_interrupt and self._called()) or self.state is StreamState.CLOSED:
                break  # (decided per event: one batch may hold a turn's end, its reply, then new speech)
            if isinstance(ev, StartedTalking):
                self._log("started_talking", t=round(ev.at / rate, 3), onset=round(ev.onset / rate, 3))
                reply = self._reply
                if reply is not None and reply.state is ReplyState.WAITING:
                    # the user goes on before the reply was even called: it is dropped, unheard (no clear),
                    # and this turn is answered (asked again)
                    self.metrics.inc("inputs_dropped")
                    self.close_reply("cancelled")
                if self._gate is not None:
                    self._gate.turn_started(ev.onset, now)
                if self._idle_at is not None:  # the user spoke: no idle prompt for this silence
                    self._idle_at = None
                    if self._reply is None:
                        self.deadline = self._finish_deadline()
                if can_interrupt and self._over_reply(ev.onset):
                    barge = self._barge = ev.onset if self._barge is None else min(self._barge, ev.onset)
                    if ev.at - barge >= self._interrupt_len and not self._is_echo(barge):
                        self._barge_over(now)  # (else it interrupts once it has lasted interrupt_ms)
            elif isinstance(ev, PauseDetected) and self._barge is not None and not self._heard_after_reply():
                self._backchannel(ev)
            elif isinstance(ev, PauseTentative):
                self._log("pause_tentative", t=round(ev.at / rate, 3))
                if self.app.speculative:
                    self._speculate(ev, now)
            elif isinstance(ev, PauseCancelled):
                self._log("pause_cancelled", t=round(ev.at / rate, 3))
                reply = self._reply
                if reply is not None and reply.speculative:
                    self.metrics.inc("speculative_wasted")
                    self.close_reply("cancelled")  # (nothing of it was sent: no clear)
            elif isinstance(ev, PauseDetected):
                self._turn_ended(ev, now)
        if can_interrupt and self._interrupt_len:
            self._follow_barge(now)
        gate = self._gate
        if gate is not None and detector.state is State.TALKING and self.state is not StreamState.CLOSED:
            window = gate.window(detector.speech_end, detector.onset)  # (speech only, no silence after)
            if window is not None:
                start, end = window
                self._emit(gate.spot(start, end, (self.input_format.sample_rate, self.history.slice(
                    self._to_input(start), self._to_input(end)))))
        idle = detector.state is State.IDLE
        if not can_interrupt and self._called() and not idle:
            detector.reset()
            idle = True
        # Keep only what the next utterance can need.
        keep = (detector.position if idle else detector.onset) - self._history_margin
        self.history.trim(keep * self.input_format.sample_rate // rate)

    def _to_input(self, position: int) -> int:
        return position * self.input_format.sample_rate // self.detector.rate

    def _turn_ended(self, ev: PauseDetected, now: float, reason: str = "turn") -> None:
        rate = self.detector.rate
        audio = self.history.slice(self._to_input(ev.start), self._to_input(ev.end))
        speech_s = audio.size / self.input_format.sample_rate
        self._log("pause_detected", t=round(ev.at / rate, 3), speech_s=round(speech_s, 3),
                  speech_end=round(ev.speech_end / rate, 3), reason=ev.reason)
        self.metrics.inc("turns")
        self.metrics.observe("turn_seconds", speech_s)
        self._turn_at = now
        reply = self._reply
        if reply is not None and reply.speculative:  # started at pause_tentative: its turn is confirmed
            self.metrics.inc("speculative_used")
            reply.speculative = False
            reply.turn_at = now
            self._pump(now)
            return
        gate = self._gate
        if gate is None or reason != "turn":
            self._reply_to(audio, now, reason)
            return
        decision = gate.turn_ended(ev, audio, now)
        if isinstance(decision, Answer):
            self._reply_to(clip(audio, ev, decision.start), now)
        elif decision is not None:
            self._spot_pending(gate, decision)
        elif gate.state is not Activation.ARMED and gate.pending_turn is None:  # (else a spot decides it)
            self._unanswered(ev)

    def _speculate(self, ev: PauseTentative, now: float) -> None:
        """pause_tentative: call the reply function now on the turn so far, its output held back."""
        if self._reply is not None or self._barge is not None or self._gate is not None or self._audible():
            return  # (only a turn of its own, with nobody else's words playing or gated)
        detector = self.detector
        start = max(detector.onset - int(self.options.prefix_padding_ms * detector.rate / 1000), 0)
        audio = self.history.slice(self._to_input(start), self._to_input(detector.position))
        self.metrics.inc("speculative_started")
        self._reply_to(audio, now)
        assert self._reply is not None
        self._reply.speculative = True

    def _follow_barge(self, now: float) -> None:
        """Speech over a reply, from its first window: the detector may drop an onset broken by a quiet
        window and count again from after it, but the listener heard the talker from the start."""
        detector, barge = self.detector, self._barge
        if detector.state is not State.IDLE:
            if barge is None and self._over_reply(detector.onset):
                barge = self._barge = detector.onset
            if barge is not None:
                self._barge_heard = detector.speech_end
                if detector.state is State.TALKING and detector.speech_end - barge >= self._interrupt_len:
                    if self._is_echo(barge):
                        return  # our own reply coming back: it interrupts nothing (nor becomes a turn)
                    self._barge_over(now)  # not a backchannel: the user is talking over the reply
        elif barge is not None and detector.position - self._barge_heard > self._interrupt_len:
            self._end_barge()  # (a sound that never became a turn, long enough ago)

    def _over_reply(self, onset: int) -> bool:
        """Is speech from ``onset`` on heard over a reply: one still playing, or (with the echo gate) one
        whose echo may still be coming back, unless the gate already found this speech the user's own."""
        if self._audible():
            return True
        echo = self._echo
        return echo is not None and onset != self._not_barge and echo.active

    def _barge_over(self, now: float) -> None:
        """Speech over a reply turned out to be the user's: it interrupts the reply if one is still heard
        (else, over the echo's tail, it is a turn like any other)."""
        if not self._audible():
            self._not_barge = self.detector.onset
        self._end_barge()
        if self._audible() and self.state is not StreamState.CLOSED:
            self._interrupt(now)

    def _heard_after_reply(self) -> bool:
        """A short turn over the echo's tail alone (the reply has played): the user's, if the gate hears
        them, and so answered like any turn after a reply."""
        barge = self._barge
        if barge is None or self._echo is None or self._audible():
            return False
        self._echo_asked = -1
        if self._is_echo(barge):
            return False
        self._end_barge()
        return True

    def _end_barge(self) -> None:
        self._barge, self._barge_echo, self._barge_talker, self._echo_asked = None, False, False, -1

    def _is_echo(self, barge: int) -> bool:
        """Should the speech since ``barge`` not interrupt the reply, the echo gate says? True when it is
        only the reply's echo, or when the talker over the echo has not yet spoken ``interrupt_ms`` (a
        backchannel over the echo is one too); over the echo's tail alone, once the reply has played,
        anyone heard is the user. Asked again after 60 ms of input once anyone but the echo has been heard,
        after 80% of interrupt_ms while only the echo has (the answer holds in between)."""
        echo = self._echo
        if echo is None:
            return False
        pos = self.samples_in
        if self._echo_asked >= 0 and pos - self._echo_asked < self._echo_next_ask:
            return self._barge_echo
        self._echo_asked = pos
        self.metrics.inc("echo_checks")
        verdict = echo.analyse(self._to_input(barge), pos)
        if verdict is None:  # no reply could be echoing: every sound is the user's
            self._barge_echo = False
            return False
        self._barge_talker = self._barge_talker or verdict.heard
        run = verdict.run_start()
        if not self._audible():
            self._barge_echo = not verdict.heard
        else:
            need = self._interrupt_len * self.input_format.sample_rate // self.detector.rate
            self._barge_echo = run is None or pos - run < need
        self._echo_next_ask = self._echo_every if run is not None or verdict.heard else self._echo_quiet
        return self._barge_echo

    def _backchannel(self, ev: PauseDetected) -> None:
        """A turn spoken over a reply that ended before ``interrupt_ms`` (or that was its own echo): heard,
        not answered."""
        self._barge = None
        rate = self.detector.rate
        speech_s = round((ev.speech_end - ev.start) / rate, 3)
        if self._barge_echo and not self._barge_talker:
            self.metrics.inc("echo_turns")
            self._log("echo", t=round(ev.at / rate, 3), speech_s=speech_s)
        else:
            self.metrics.inc("backchannels")
            self._log("backchannel", t=round(ev.at / rate, 3), speech_s=speech_s)
        self._barge_echo, self._barge_talker, self._echo_asked = False, False, -1

    def _reply_to(self, audio: np.ndarray, now: float, reason: str = "turn") -> None:
        self._begin_reply(self.app.fn, ((self.input_format.sample_rate, audio), *self._args), self._kwargs, now,
                          reason)

    def _unanswered(self, ev: PauseDetected) -> None:
        self.metrics.inc("turns_without_stop_word")
        self._log("turn_ignored", t=round(ev.at / self.detector.rate, 3), reason="no stop word")

    def _spot_pending(self, gate: StopWordGate, window: tuple[int, int]) -> None:
        audio = gate.pending_audio(*window)
        if audio is not None:
            self._emit(gate.spot(*window, (self.input_format.sample_rate, audio)))

    def spot_done(self, seq: int, result: Any, now: float) -> None:
        """The spotter's answer for ``Spot`` ``seq`` (or what it raised: counted, taken as not heard)."""
        gate = self._gate
        if gate is None or self.state is StreamState.CLOSED:
            return
        if isinstance(result, BaseException):
            self.metrics.inc("spotter_errors")
            log.warning("stream %s: the stop-word spotter failed: %s: %s", self.facts.session_id,
                        type(result).__name__, result)
        pending = gate.pending_turn
        heard, todo = gate.spot_done(seq, result)
        if heard is not None:
            self.metrics.inc("stop_words_heard")
            self._emit(StopWord(heard.word))
        if isinstance(todo, tuple) and len(todo) == 3:
            answer, ev, audio = todo
            self._reply_to(clip(audio, ev, answer.start), now)
        elif isinstance(todo, tuple):
            self._spot_pending(gate, todo)
        elif pending is not None and gate.pending_turn is None and gate.state is not Activation.ARMED:
            self._unanswered(pending)

    def trigger(self, now: float, *, tell_client: bool = True) -> bool:
        """Reply now to what has been heard since the last reply; False if nothing (and a warning to a
        client that asked; the host app gets the False)."""
        if self.state is StreamState.CLOSED or self.state is StreamState.LAST_REPLY:
            return False
        ev = self.detector.force_end()
        if ev is None:
            if tell_client:
                self._emit(Warning("trigger: no speech heard since the last reply; nothing to reply to"))
            return False
        self._end_barge()
        self._turn_ended(ev, now, reason="trigger")
        return True

    # ---- replies --------------------------------------------------------------------

    def _called(self) -> bool:
        """Is there a reply whose function has been called (not one still waiting for its inputs, which
        speech simply replaces)? What --no-interrupt protects from speech."""
        reply = self._reply
        return reply is not None and reply.state is not ReplyState.WAITING

    def _audible(self) -> bool:
        """Is a reply still being heard? Sent in full is not played in full: a client that echoes marks
        (browsers, Twilio) has not played the last reply until it echoes its mark."""
        reply = self._reply
        if reply is not None:  # (held back, or not yet called: the speaker has heard nothing of it)
            return not reply.speculative and reply.state is not ReplyState.WAITING
        sent, played = self.facts.marks_sent, self.facts.marks_played
        return bool(played and sent) and sent[-1] not in played

    def _begin_reply(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     now: float, reason: str = "turn") -> None:
        if self._reply is not None:
            self._interrupt(now)
        if self.state is StreamState.CLOSED:
            return  # (the interrupted reply had asked to close the stream: nothing more starts)
        self._idle_at = None
        self.facts.reason = reason
        self._seq += 1
        turn_at, self._turn_at = (self._turn_at if reason == "turn" or reason == "trigger" else None), None
        reply = self._reply = _Reply(self._seq, FrameEncoder(self.output_format, self.config.frame_ms),
                                     started=now, turn_at=turn_at)
        wait = self.app.input_wait_s
        if wait and fn is self.app.fn and self.config.asks_inputs:
            # fastrtc's send_input: the client sends the reply's inputs now (hub.set_input, /ws's input)
            reply.state, reply.fn, reply.lead, reply.wait_until = ReplyState.WAITING, fn, args[:1], now + wait
            self.metrics.inc("inputs_asked")
            self._emit(SendInput())
        else:
            self._emit(StartReply(self._seq, fn, args, kwargs, self.context))
        due = self._reply_due(reply)
        if due is not None:
            self.deadline = due if self.deadline is None else min(self.deadline, due)

    def reply_item(self, seq: int, item: Any, now: float) -> None:
        """One thing reply ``seq``'s function yielded. Items of a reply that has ended are ignored."""
        reply = self._reply
        if reply is None or reply.seq != seq or reply.state is not ReplyState.RUNNING:
            return
        if isinstance(item, tuple) and len(item) == 2:
            rate, samples = item
            limit = self.config.max_reply_s
            room = limit - reply.audio_s
            try:
                seconds = reply.encoder.feed(rate, samples, room)  # (converted a slice at a time, in _pump)
            except ReplyAudioRefused as exc:
                self._fail_reply(reply, f"reply audio refused: {exc}; the reply was stopped",
                                 "reply_audio_refused", now)
                return
            except (FormatError, TypeError, ValueError) as exc:
                self._emit(Warning(f"reply audio ignored: {exc}"))
                return
            reply.audio_s += min(seconds, room)
            if seconds > room:
                self._fail_reply(reply, f"reply audio refused: a reply may last at most {limit:g} s "
                                        "(max_reply_s); it was cut there", "reply_audio_refused", now)
                return
            self._pump(now)
        elif isinstance(item, AdditionalOutputs):
            self._emit(FetchOutput(list(item.args)))
        elif isinstance(item, CloseStream):
            reply.closes = True
            self._close_reason = item.msg
        elif item is not None:
            self._emit(Warning(f"reply function yielded an unsupported {type(item).__name__}; "
                               "expected (sample_rate, ndarray), AdditionalOutputs or CloseStream"))

    def reply_done(self, seq: int, now: float, error: BaseException | None = None, logged: bool = False) -> None:
        """Reply ``seq``'s function has returned (or raised ``error``, ``logged`` already by the caller):
        what it produced still plays to its last sample."""
        reply = self._reply
        if reply is None or reply.seq != seq or reply.state is not ReplyState.RUNNING:
            return
        if error is not None:
            self.metrics.inc("reply_errors")
            self._emit(Error(f"reply function failed: {type(error).__name__}: {error}", logged=logged))
        reply.state = ReplyState.DRAINING  # (its last frame is made once all it fed is converted: _fill)
        self._pump(now)

    def reply_running(self, seq: int) -> bool:
        """Is reply ``seq``'s function still wanted? (False once the core has ended it: interrupted,
        timed out, refused.)"""
        reply = self._reply
        return reply is not None and reply.seq == seq and reply.state is ReplyState.RUNNING

    def _fail_reply(self, reply: _Reply, message: str, counter: str, now: float) -> None:
        """End a reply's function for the server's own reasons (a timeout, audio refused): the client is
        told why, and what it produced still plays to its last sample, then its mark."""
        self.metrics.inc(counter)
        facts = self.facts
        log.warning("%s stream %s: %s", facts.dialect, facts.client_id or facts.session_id, message)
        self._emit(Error(message, logged=True))
        self._emit(CancelReply(reply.seq))
        reply.state = ReplyState.DRAINING
        self._pump(now)

    def _call_waiting(self, reply: _Reply, now: float) -> None:
        """The inputs have come (or the wait is over): call the function, with the inputs as they are now."""
        reply.state, reply.started = ReplyState.RUNNING, now
        self._emit(StartReply(reply.seq, reply.fn, (*reply.lead, *self._args), self._kwargs, self.context))
        self.deadline = self._finish_deadline()  # (the wait's end is over; a reply with no frames yet has no other)

    def _reply_due(self, reply: _Reply) -> float | None:
        """When the running reply times out (first audio, whole function), if it does; when the one waiting
        for its inputs is called without them."""
        if reply.state is ReplyState.WAITING:
            return reply.wait_until
        if reply.state is not ReplyState.RUNNING:
            return None
        config = self.config
        due = reply.started + config.reply_timeout_s if config.reply_timeout_s else None
        if config.first_chunk_timeout_s and not reply.audio_s:
            first = reply.started + config.first_chunk_timeout_s
            due = first if due is None else min(due, first)
        return due

    def _check_reply_timeouts(self, now: float) -> None:
        reply = self._reply
        if reply is not None and reply.state is ReplyState.WAITING and now >= reply.wait_until:
            self.metrics.inc("inputs_timeouts")
            facts = self.facts
            log.warning("%s stream %s: no inputs within %g s of send_input (input_wait_s): the reply is called "
                        "with those set before", facts.dialect, facts.client_id or facts.session_id,
                        self.app.input_wait_s)
            self._call_waiting(reply, now)
        if reply is None or reply.state is not ReplyState.RUNNING:
            return
        config = self.config
        if config.first_chunk_timeout_s and not reply.audio_s and now >= reply.started + config.first_chunk_timeout_s:
            self._fail_reply(reply, f"reply timed out: no audio within {config.first_chunk_timeout_s:g} s "
                                    "(first_chunk_timeout_s); the reply was stopped", "reply_timeouts", now)
        elif config.reply_timeout_s and now >= reply.started + config.reply_timeout_s:
            self._fail_reply(reply, f"reply timed out: its function was still running after "
                                    f"{config.reply_timeout_s:g} s (reply_timeout_s); it was stopped, what it "
                                    "produced plays out", "reply_timeouts", now)

    def _fill(self, reply: _Reply) -> None:
        """Convert fed reply audio into frames, a slice at a time, up to the playout queue's bound; once
        the function has ended and all it fed is converted, its last (partial) frame."""
        frames, encoder = self._frames, reply.encoder
        want = self.config.playout_queue_frames - len(frames)
        if want > 0 and encoder.queued:
            frames.extend(encoder.take(want))
            for problem, dropped_s in encoder.problems:  # (a long list found bad part-way, as it played)
                self._emit(Warning(f"reply audio ignored: {problem}; the rest of that chunk was dropped"))
                reply.audio_s -= dropped_s  # (not played: not counted against max_reply_s)
            encoder.problems.clear()
        if reply.state is ReplyState.DRAINING and not reply.flushed and not encoder.queued:
            frames.extend(encoder.flush(pad=self.config.pad_last_frame))
            reply.flushed = True

    def _interrupt(self, now: float) -> None:
        """Barge-in: stop the reply, drop its unsent audio, tell the client to drop what it holds."""
        self.metrics.inc("interruptions")
        reply = self._reply
        closes = reply is not None and reply.closes
        if reply is not None:
            if reply.state is ReplyState.RUNNING:
                self._emit(CancelReply(reply.seq))
            self._emit(ReplyEnded(reply.seq, "interrupted"))
        self._reply = None
        self._frames.clear()
        self._play_until = now
        self.deadline = self._finish_deadline()
        self._emit(Clear())
        if closes:  # it had said its last words and asked to end the stream: the interruption ends it now
            self.close(1000, self._close_reason)

    # ---- pacing ---------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Time has passed: send the frames now due, and act on a deadline that has come."""
        if self.state is StreamState.STOPPING and now >= self._finish_by:
            self._end_last_turn(now)
        elif self._idle_at is not None and now >= self._idle_at:
            self._idle_prompt(now)
        self._check_reply_timeouts(now)
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Send reply frames so the client holds at most ``lead`` of audio beyond real time; when it holds
        a full lead, wait until it has fallen by ``refill``, then top it up in one go (fewer wakeups)."""
        frames = self._frames
        reply = self._reply
        if reply is not None:
            self._fill(reply)
        if reply is not None and reply.speculative:
            self.deadline = self._finish_deadline()
            return  # (held until pause_detected confirms its turn)
        if frames and reply is not None and self.state is not StreamState.CLOSED:
            lead = self.config.lead_ms / 1000.0
            if self._play_until < now:
                self._play_until = now  # the client has played everything: restart the clock
            horizon = now + lead
            if not reply.spoke and self._play_until <= horizon:
                reply.spoke = True
                self._log("response_starting", t=round(self.detector.position / self.detector.rate, 3))
                if reply.turn_at is not None:
                    self.metrics.observe("reply_latency_seconds", now - reply.turn_at)
            out = self._out
            per_byte = self._frame_out_s
            play_until = self._play_until
            echo = self._echo
            while frames and play_until <= horizon:
                frame = frames.popleft()
                out.append(AudioOut(frame))
                if echo is not None:
                    self._echo_reference(echo, frame, play_until, now)
                play_until += len(frame) * per_byte
            self._play_until = play_until
        if reply is not None and not frames and reply.flushed:
            self._reply_played(reply)
        self.deadline = self._finish_deadline()
        if frames and self._reply is not None and self.state is not StreamState.CLOSED:
            refill = min(self.config.refill_ms, self.config.lead_ms / 2) / 1000.0
            due = self._play_until - self.config.lead_ms / 1000.0 + refill
            self.deadline = due if self.deadline is None else min(due, self.deadline)

    def _echo_reference(self, echo: EchoGate, frame: bytes, play_at: float, now: float) -> None:
        """A reply frame as the echo gate needs it: at the input rate, where it plays on the input
        timeline (the input received by ``now`` is the microphone's ``now``, for a live client)."""
        pcm = decode(frame, self.output_format.encoding)
        rate_in, rate_out = self.input_format.sample_rate, self.output_format.sample_rate
        if rate_in != rate_out:
            n = pcm.size * rate_in // rate_out
            pcm = np.interp(np.arange(n) * (rate_out / rate_in), np.arange(pcm.size), pcm).astype(np.int16)
        # Where it plays: where the microphone is by now, plus the wait. That estimate is noisy (input comes
        # in messages, late when a loop stalls), so a reply stays contiguous, slewed towards it by a
        # twentieth of the error per frame, and jumps only when over 40 ms off (a client that ran dry plays
        # the next frame late). Only the input's future is ever rewritten: start >= samples_in.
        start = int(self._echo_clock(now) + (play_at - now) * rate_in)
        err = start - self._echo_next
        if abs(err) < rate_in // 25:
            start = self._echo_next + int(round(err / 20))
        start = max(start, self.samples_in)
        echo.reference(pcm, start)
        self._echo_next = start + pcm.size

    def _echo_clock(self, now: float) -> float:
        """Where the client's microphone is by ``now``, on the input timeline. Input received by a time is a
        lower bound of that (it was captured before it arrived); the freshest one seen, carried forward
        at the input rate, is the closest. It forgets at 20 ms a second, so input that falls behind for
        good (lost packets, a clock that runs slow) is followed; input late in bursts (a stalled loop, a
        congested link) moves it hardly at all."""
        rate = self.input_format.sample_rate
        seen = self.samples_in - now * rate
        anchor = self._echo_anchor
        if anchor is not None:
            seen = max(seen, anchor - 0.02 * rate * max(now - self._echo_seen_at, 0.0))
        self._echo_anchor, self._echo_seen_at = seen, now
        return seen + now * rate

    def _reply_played(self, reply: _Reply) -> None:
        name = f"reply-{reply.seq}"
        self.facts.marks_sent.append(name)
        self._emit(Mark(name))
        self._reply = None
        self._emit(ReplyEnded(reply.seq, "played"))
        if not self.options.can_interrupt:
            self.detector.reset()
        idle_s = self.app.idle_prompt_s
        if idle_s is not None and self.facts.reason != "idle" and not reply.closes:
            self._idle_at = self._play_until + idle_s  # counted from when the client has played it all
        if reply.closes:
            self.close(1000, self._close_reason)
        elif self.state is StreamState.LAST_REPLY:
            self.close(1000, "stop")

    def _finish_deadline(self) -> float | None:
        if self.state is StreamState.CLOSED:
            return None
        due = self._finish_by if self.state is StreamState.STOPPING else self._idle_at
        reply_due = self._reply_due(self._reply) if self._reply is not None else None
        if reply_due is not None:
            due = reply_due if due is None else min(due, reply_due)
        return due

    def _idle_prompt(self, now: float) -> None:
        """The user has said nothing for ``idle_prompt_s`` since the last reply played: prompt them."""
        self._idle_at = None
        if self._reply is not None or self.detector.state is not State.IDLE or self.state not in (
                StreamState.STREAMING, StreamState.STARTED):
            return  # (someone is talking, or we are: not idle after all)
        self.metrics.inc("idle_prompts")
        self._log("idle_prompt", t=round(self.detector.position / self.detector.rate, 3))
        empty = np.zeros(0, dtype=np.int16)
        self._begin_reply(self.app.fn, ((self.input_format.sample_rate, empty), *self._args), self._kwargs, now,
                          "idle")

    # ---- end of input ---------------------------------------------------------------

    def _vad_caught_up(self) -> bool:
        vad = self.vad
        return vad.pending_samples < vad.window and self._windows_seen >= vad.windows_taken

    def _stop(self, now: float) -> None:
        """``stop`` on /ws: let VAD catch up, end a turn in progress, finish the reply, then close."""
        if self.state in (StreamState.STOPPING, StreamState.LAST_REPLY):
            return
        self.state = StreamState.STOPPING
        self._finish_by = now + FINISH_TIMEOUT_S
        if self._vad_caught_up():
            self._end_last_turn(now)
        else:
            self.deadline = self._finish_by if self.deadline is None else min(self.deadline, self._finish_by)

    def _end_last_turn(self, now: float) -> None:
        self.state = StreamState.LAST_REPLY
        ev = self.detector.force_end()
        if ev is not None:
            self._turn_ended(ev, now)
        if self._reply is None:
            self.close(1000, "stop")

    def _hang_up(self) -> None:
        """The peer is gone (Twilio ``stop``, fastrtc ``stop``): close at once, playing nothing more."""
        self.close(1000, "stop")

    def close_reply(self, how: str) -> None:
        """Drop the reply in flight (cancelling its function) without a word to the client."""
        reply = self._reply
        if reply is not None:
            if reply.state is ReplyState.RUNNING:
                self._emit(CancelReply(reply.seq))
            self._emit(ReplyEnded(reply.seq, how))
        self._reply = None
        self._frames.clear()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the stream: the reply is cancelled, nothing more is sent after this Close."""
        if self.state is StreamState.CLOSED:
            return
        self.close_reply("cancelled")
        self.state = StreamState.CLOSED
        self.deadline = None
        self._emit(Close(code, reason))

    def release(self) -> None:
        """The stream is over: give back its VAD slot and publish its hot-path counters."""
        self.vad.close()
        self.metrics.inc("audio_samples_in", self.samples_in)
        self.samples_in = 0

    _close_reason = "reply function closed the stream"
