"""The server's figures for ``/metrics``: plain counters on the hot path, exposed through prometheus-client.

Call sites only touch dicts and a few list slots (``inc``, ``inc_labelled``, ``observe``): no lock, no
library call per event, so hundreds of streams cost nothing measurable. At scrape time ``Metrics.collect``
turns them into prometheus-client metric families, and the library writes the text format, so every
series has its ``# HELP`` and ``# TYPE``. Each ``Metrics`` has its own ``CollectorRegistry`` (no module
global: a process may run many servers, the tests do); a host app may register its own collectors there.

Every name should be in ``CATALOGUE`` (its help, type, labels, buckets); a name that is not (a counter a
newer module added) still renders, with a generic help, so nothing is ever lost. Everything is touched from
the event loop (a scrape may come from another thread: it reads copies), so the figures need no lock.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

PREFIX = "wsstream_"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what /metrics answers with (the classic text format)
GENERIC_HELP = "wsstream {kind} {name} (no description yet: add it to wsstream.metrics.CATALOGUE)"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
TURN_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 60.0, 120.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0)
CALL_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.25, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Spec:
    """What one name means: its kind ("counter", "gauge" or "histogram"), help, labels and buckets."""

    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


def _counter(text: str, *labels: str) -> Spec:
    return Spec("counter", text, labels)


def _dialect_notices() -> dict[str, Spec]:
    """What dialects notice and count (``Notice.metric``): per provider, one counter each."""
    common = {
        "dtmf": "DTMF digits the provider reported",
        "unknown_events": "messages of an event type we do not know, ignored",
        "media_other_track": "media of a track other than the caller's, ignored",
        "bad_media_format": "start messages whose media format we could not use (a default was assumed)",
    }
    own = {
        "twilio": {},
        "exotel": {"bad_sample_rate": "sample-rate query values we could not read (8000 Hz assumed)",
                   "rate_mismatch": "calls whose start names another rate than the URL's sample-rate",
                   "undocumented_rate": "sample rates Exotel does not document, used as given"},
        "plivo": {"bad_extra_headers": "start messages with unreadable extra_headers, ignored",
                  "cleared_audio": "clearedAudio messages (Plivo flushed its playback buffer)",
                  "repeated_start": "second start messages, ignored (the first one stands)",
                  "unusual_media_format": "media formats Plivo does not offer, used as given"},
        "telnyx": {"bad_chunks": "media messages whose chunk is not a number",
                   "media_out_of_order": "media chunks that came after a later one (passed on as they came)",
                   "start_without_stream_id": "start messages without a stream_id",
                   "errors": "error messages Telnyx sent"},
        "vonage": {"bad_content_type": "websocket:connected messages with an unusable content-type (L16 16 kHz "
                                       "assumed)",
                   "unusual_rate": "content-type rates Vonage does not document, used as given",
                   "cleared": "playback buffer cleared messages",
                   "foreign_notify": "notify messages that are not our markers, ignored",
                   "bad_dtmf_duration": "DTMF events with an unreadable duration",
                   "dtmf": "DTMF digits Vonage reported",
                   "unknown_events": "text messages of an event type we do not know, ignored"},
    }
    out = {}
    for provider, extra in own.items():
        for kind, text in {**common, **extra}.items():
            out[f"{provider}_{kind}"] = _counter(f"{provider.capitalize()} streams: {text}.")
    out["telephony_held_message_errors"] = _counter(
        "/telephony: messages held until the provider was recognised that its dialect then refused.")
    return out


CATALOGUE: dict[str, Spec] = {
    # ---- streams -------------------------------------------------------------------------------
    "sessions_total": _counter("Streams opened (admitted by the hub)."),
    "sessions_rejected": _counter("Streams the hub refused (concurrency limit or draining); also counted in "
                                  "handshakes_refused by reason."),
    "sessions_active": Spec("gauge", "Streams open now."),
    "concurrency_limit": Spec("gauge", "Streams this process admits at most (with --workers: this worker's share)."),
    "worker_index": Spec("gauge", "Which of --workers N processes answered this scrape (0 without --workers)."),
    "worker_pid": Spec("gauge", "Process id of the worker that answered this scrape."),
    "handshakes_refused": _counter(
        "Connections refused before any audio, by reason: auth_missing and auth_bad (tokens), twilio_signature, "
        "origin, ip_connections and ip_rate (per-IP caps), concurrency_limit and draining (the hub is full or "
        "shutting down; closed 1013 right after the upgrade).", "reason"),
    "audio_samples_in": _counter("Audio samples received, at each stream's input rate (open streams included)."),
    "bad_audio": _counter("Audio messages that could not be decoded (answered with an error)."),
    "input_waits": _counter("Times a stream's reading paused until VAD caught up (no audio is dropped)."),
    "protocol_errors": _counter(
        "Messages a dialect could not understand, by dialect and kind: json (not JSON, nested too deeply, not an "
        "object), message (a bad message, answered with an error), setup (a bad start, format or query: the "
        "stream is closed), framing (a WebSocket framing violation: the connection is failed).", "dialect", "kind"),
    "outbox_overflows": _counter("Streams closed (1008) because the client did not read what was sent."),
    "reads_throttled": _counter("Clients held back for sending more messages per second than "
                                "--max-messages-per-s (once per episode)."),
    "write_stall_closes": _counter("Connections closed because the client read nothing for --write-stall-s."),
    # ---- turns and replies -------------------------------------------------------------------
    "turns": _counter("User turns ended (pause_detected, a trigger, the end of input)."),
    "early_pauses": _counter("Pauses decided on the input's levels as it came, before the model had scored its "
                             "last windows (the end of speech had settled)."),
    "interruptions": _counter("Replies stopped by the user speaking over them (barge-in)."),
    "backchannels": _counter("Speech over a reply too short to interrupt it (heard, not answered)."),
    "echo_turns": _counter("Speech over a reply that the echo gate found to be the reply's own echo."),
    "echo_checks": _counter("Times the echo gate was asked whether speech over a reply is its own echo."),
    "reply_errors": _counter("Reply functions that raised (the client gets an error message)."),
    "reply_timeouts": _counter("Replies stopped by a reply timeout (--first-chunk-timeout-s, --reply-timeout-s)."),
    "reply_audio_refused": _counter("Replies stopped because their audio was refused (a sample rate out of bounds, "
                                    "or more than --max-reply-s of it)."),
    "reply_threads_busy": _counter("Replies dropped because every reply thread stayed busy for the pool's wait."),
    "reply_pool_saturations": _counter("Times the pool of threads for sync reply functions ran full (the log "
                                       "warns once each time)."),
    "idle_prompts": _counter("Replies started by the idle prompt (silence after a reply)."),
    "speculative_started": _counter("Replies started early at pause_tentative (--speculative)."),
    "speculative_used": _counter("Speculative replies whose turn was confirmed by pause_detected."),
    "speculative_wasted": _counter("Speculative replies dropped because the user went on speaking."),
    "inputs_asked": _counter("Replies that asked the client for their inputs (send_input, input_wait_s)."),
    "inputs_received": _counter("... whose inputs came in time: the reply was called with them."),
    "inputs_timeouts": _counter("... that waited input_wait_s in vain: called with the inputs set before."),
    "inputs_dropped": _counter("... dropped unheard while waiting: the user spoke again (that turn is answered)."),
    "stop_words_heard": _counter("Stop words the spotter heard."),
    "turns_without_stop_word": _counter("Turns not answered because no stop word was heard."),
    "spotter_errors": _counter("Stop-word spotter calls that raised (taken as not heard)."),
    "reply_latency_seconds": Spec(
        "histogram", "From pause_detected (the server's decision that a turn ended) to the first audio of its "
        "reply sent, in seconds: the reply function's time to first audio plus ours.", buckets=LATENCY_BUCKETS),
    "turn_seconds": Spec("histogram", "Length of each user turn heard (the audio the reply function gets), "
                                      "in seconds.", buckets=TURN_BUCKETS),
    # ---- VAD -----------------------------------------------------------------------------------
    "vad_batches": _counter("Batched VAD inference calls."),
    "vad_windows": _counter("VAD windows inferred (32 ms at 16 kHz and 8 kHz)."),
    "vad_failed_batches": _counter("VAD inference calls that raised (their windows were taken as silence)."),
    "vad_largest_batch": Spec("gauge", "Most streams one VAD call has held since the start."),
    "vad_queue_delay_seconds": Spec(
        "histogram", "How long a stream's audio waited for VAD: from its first whole window being ready to the "
        "batch that took it, one observation per stream per batch, in seconds.", buckets=QUEUE_BUCKETS),
    "vad_batch_streams": Spec("histogram", "Streams in each batched VAD call.", buckets=BATCH_BUCKETS),
    "vad_call_seconds": Spec("histogram", "Time of each batched VAD model call (in its thread), in seconds.",
                             buckets=CALL_BUCKETS),
    **{f"events_{name}": _counter(f"{text} ({name}, as /ws sends it in a log message).") for name, text in {
        "started_talking": "Speech onsets the pause detector confirmed",
        "pause_tentative": "Pauses long enough to start a speculative reply",
        "pause_cancelled": "Tentative pauses the user spoke on through",
        "pause_detected": "Turns ended by a pause",
        "response_starting": "Replies whose first audio was sent",
        "backchannel": "Short speech over a reply, heard and not answered",
        "echo": "Speech over a reply found to be its own echo",
        "turn_ignored": "Turns not answered for want of a stop word",
        "idle_prompt": "Idle prompts started",
    }.items()},
}
# Shown from the first scrape, at 0, so that a rate or an alert over them is defined before the first event
# (the dialects' own counters appear once counted: most servers never see most providers).
ALWAYS = tuple(name for name, spec in CATALOGUE.items() if spec.kind == "counter" and not spec.labels)
CATALOGUE.update(_dialect_notices())

_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]")


class Histogram:
    """Bucket counts (non-cumulative, the last for +Inf) and a sum: an observation is a bisect and two adds."""

    __slots__ = ("_bounds", "_edges", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = tuple(sorted(float(b) for b in bounds))
        self._edges = np.asarray(self._bounds)
        self.counts = [0] * (len(self._bounds) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        if value != value:  # NaN: no bucket holds it
            return
        self.counts[bisect.bisect_left(self._bounds, value)] += 1  # (le: a value equal to a bound is in it)
        self.sum += value

    def observe_many(self, values: np.ndarray) -> None:
        """Many observations at once (numpy: one pass, whatever their number)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[~np.isnan(values)]
        if not values.size:
            return
        found = np.bincount(np.searchsorted(self._edges, values, side="left"), minlength=len(self.counts))
        for i in np.flatnonzero(found):
            self.counts[i] += int(found[i])
        self.sum += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as Prometheus has them."""
        out, total = [], 0
        for bound, n in zip((*self._bounds, math.inf), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
        return out


@dataclass
class Labelled:
    """A counter with labels: one series per tuple of label values (a fixed set: never one per client)."""

    labels: tuple[str, ...]
    counts: dict[tuple[str, ...], int]


# Figures read at scrape time: (counters to add to the kept ones, gauges).
LiveFigures = tuple[Mapping[str, float], Mapping[str, float]]


class Metrics:
    """One server's figures (see the module's docstring). ``counters`` stays a plain ``Counter``."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self.labelled: dict[str, Labelled] = {}
        self.histograms: dict[str, Histogram] = {
            name: Histogram(spec.buckets) for name, spec in CATALOGUE.items() if spec.kind == "histogram"}
        self._live: list[Callable[[], LiveFigures]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ---- the hot path ------------------------------------------------------------------------

    def inc(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def observe(self, name: str, value: float) -> None:
        """One observation of histogram ``name`` (one not in the catalogue gets latency buckets)."""
        hist = self.histograms.get(name)
        if hist is None:
            hist = self.histograms[name] = Histogram(LATENCY_BUCKETS)
        hist.observe(value)

    def observe_many(self, name: str, values: np.ndarray) -> None:
        hist = self.histograms.get(name)
        if hist is None:
            hist = self.histograms[name] = Histogram(LATENCY_BUCKETS)
        hist.observe_many(values)

    def declare(self, name: str, labels: str | tuple[str, ...], values: tuple[Any, ...] = ()) -> None:
        """A labelled counter whose given series all show from the start (at 0), so that a rate over them is
        defined before the first event. With one label, ``values`` are its values; else tuples of them."""
        labels = (labels,) if isinstance(labels, str) else tuple(labels)
        entry = self.labelled.get(name)
        if entry is None:
            entry = self.labelled[name] = Labelled(labels, {})
        elif entry.labels != labels:
            raise ValueError(f"metric {name} has labels {entry.labels}, not {labels}")
        for value in values:
            entry.counts.setdefault((value,) if isinstance(value, str) else tuple(value), 0)

    def inc_labelled(self, name: str, *values: str, by: int = 1) -> None:
        """Count one event of labelled counter ``name`` under label ``values`` (declared here on first use
        when the catalogue knows its labels)."""
        entry = self.labelled.get(name)
        if entry is None:
            spec = CATALOGUE.get(name)
            labels = spec.labels if spec is not None and spec.labels else tuple(f"label{i}" for i in range(len(values)))
            entry = self.labelled[name] = Labelled(labels, {})
        if len(values) != len(entry.labels):
            raise ValueError(f"metric {name} takes {len(entry.labels)} label value(s), got {values}")
        counts = entry.counts
        counts[values] = counts.get(values, 0) + by
        self.counters[name] += by  # (the total over its labels, for code that reads ``counters[name]``)

    # ---- reading -------------------------------------------------------------------------------

    def count(self, name: str, **labels: str) -> int:
        """A counter's value; for a labelled one, the sum over the series that match ``labels``
        (``counters[name]`` holds its total too; /metrics shows only the labelled series)."""
        entry = self.labelled.get(name)
        if entry is None or not labels:
            return self.counters.get(name, 0)
        wanted = [(entry.labels.index(k), v) for k, v in labels.items()]
        return sum(n for key, n in entry.counts.items() if all(key[i] == v for i, v in wanted))

    def add_live(self, source: Callable[[], LiveFigures]) -> None:
        """Call ``source`` at every scrape for figures held elsewhere (open streams' counts, gauges)."""
        self._live.append(source)

    def render(self, extra: Mapping[str, float] | None = None, live: Mapping[str, float] | None = None) -> str:
        """The text exposition format (as written by prometheus-client) of everything in the registry;
        ``extra`` gauges and ``live`` counts are added to this scrape only."""
        if not extra and not live:
            return generate_latest(self.registry).decode()
        figures: LiveFigures = (live or {}, extra or {})
        self._live.append(lambda: figures)
        try:
            return generate_latest(self.registry).decode()
        finally:
            self._live.pop()

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's collector protocol: our figures as metric families, sorted by name. It works on
        ``dict(d)`` copies, which CPython makes without running Python code, so a scrape from another thread (say
        ``prometheus_client.start_http_server(registry=...)``) never meets a dict changing under it. Not
        ``list(d.items())``: its tuple per item may start the garbage collector, whose callbacks and finalizers
        are Python code, during which the loop's thread may run and grow ``d``."""
        counters: Counter[str] = Counter(dict.fromkeys(ALWAYS, 0))
        counters.update(dict(self.counters))
        gauges = dict(self.gauges)
        for source in tuple(self._live):
            more_counters, more_gauges = source()
            for name, value in more_counters.items():
                counters[name] += value
            gauges.update(more_gauges)
        families: list[tuple[str, Metric]] = []
        labelled = dict(self.labelled)
        for name, value in counters.items():
            if name not in labelled:  # (a labelled counter's total: its series say it all)
                family = CounterMetricFamily(_exposed(name), _help(name, "counter"), value=value)
                families.append((name, family))
        for name, entry in labelled.items():
            family = CounterMetricFamily(_exposed(name), _help(name, "counter"), labels=entry.labels)
            series = dict(entry.counts)
            for key, n in sorted(series.items()):
                family.add_metric(list(key), n)
            unlabelled = counters.get(name, 0) - sum(series.values())  # plain ``inc`` calls on it
            if unlabelled > 0:
                family.add_metric(["unlabelled"] * len(entry.labels), unlabelled)
            families.append((name, family))
        for name, value in gauges.items():
            families.append((name, GaugeMetricFamily(_exposed(name), _help(name, "gauge"), value=value)))
        for name, hist in dict(self.histograms).items():
            family = HistogramMetricFamily(_exposed(name), _help(name, "histogram"))
            family.add_metric([], hist.buckets(), sum_value=hist.sum)
            families.append((name, family))
        families.sort(key=lambda item: item[0])
        for _, family in families:
            yield family


def _exposed(name: str) -> str:
    return PREFIX + _BAD_CHARS.sub("_", name)


def _help(name: str, kind: str) -> str:
    spec = CATALOGUE.get(name)
    return spec.help if spec is not None else GENERIC_HELP.format(kind=kind, name=name)
