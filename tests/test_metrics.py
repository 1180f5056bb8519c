"""/metrics through prometheus-client, and the JSON log lines.

Every name the source counts must have its help in the catalogue (read from the source with ``ast``, so a
new counter without help fails here); what a server exposes is read back with prometheus-client's own text
parser, after real turns and refusals over real sockets, on both drivers; the JSON logs are read from a real
``wsstream serve`` process.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import json
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client
import pytest
from conftest import ROOT, ServerProcess, load_corpus
from prometheus_client.parser import text_string_to_metric_families
from test_core import PAUSE, SIL, SP, Harness, of
from twilio_peer import TwilioPeer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsclient import Conversation

from wsstream.codecs import AudioFormat, encode
from wsstream.core import StartReply
from wsstream.echo import echo
from wsstream.metrics import CATALOGUE, CONTENT_TYPE, GENERIC_HELP, Histogram, Metrics
from wsstream.reply import ReplyOnPause

BOTH_DRIVERS = True
TOKEN = "metrics-test-token"
DIALECT_PREFIXES = ("twilio", "exotel", "plivo", "telnyx", "vonage", "telephony")
HISTOGRAMS = ("reply_latency_seconds", "turn_seconds", "vad_queue_delay_seconds", "vad_batch_streams",
              "vad_call_seconds")


# ---- the catalogue ------------------------------------------------------------------------------

def counted_names() -> dict[str, str]:
    """Every metric name the source uses literally, with where: ``metrics.inc("x")``, ``inc_labelled``,
    ``observe``, ``declare``, the core's ``_log("x")`` (counted as events_x) and ``_fail_reply(..., "x", now)``,
    and dialects' ``Notice(..., "x")``."""
    found: dict[str, str] = {}
    for package in ("wsstream", "vad"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0] if node.args else None
                name = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if called in ("inc", "inc_labelled", "observe", "observe_many", "declare") and name:
                    found[name] = where
                elif called == "_fail_reply" and len(node.args) > 2 and isinstance(node.args[2], ast.Constant):
                    found[node.args[2].value] = where  # (the core ends a reply and counts why)
                elif called in ("dtmf_events", "unknown_event") and len(node.args) > 1 and isinstance(
                        node.args[1], ast.Constant):
                    found[node.args[1].value] = where  # (the dialects' shared notices: dialects/base.py)
                elif called == "_log" and name:
                    found[f"events_{name}"] = where
                elif called == "Notice":
                    metric = node.args[1] if len(node.args) > 1 else next(
                        (k.value for k in node.keywords if k.arg == "metric"), None)
                    if isinstance(metric, ast.Constant) and metric.value:
                        found[metric.value] = where
    return found


def test_every_counted_name_has_help_in_the_catalogue() -> None:
    names = counted_names()
    assert {"turns", "protocol_errors", "handshakes_refused", "reply_latency_seconds", "events_pause_detected",
            "twilio_dtmf", "vad_queue_delay_seconds", "reply_audio_refused"} <= set(names)  # (each kind of call)
    missing = {name: where for name, where in names.items() if name not in CATALOGUE}
    assert not missing, f"add these to wsstream.metrics.CATALOGUE with a help text: {missing}"
    assert all(spec.help and spec.kind in ("counter", "gauge", "histogram") for spec in CATALOGUE.values())
    assert all(spec.buckets for spec in CATALOGUE.values() if spec.kind == "histogram")


def test_the_readme_lists_every_series() -> None:
    readme = (ROOT / "README.md").read_text()
    notices = {name for name in CATALOGUE if name.split("_")[0] in DIALECT_PREFIXES}
    unlisted = [name for name in CATALOGUE if name not in notices and not name.startswith("events_")
                and f"wsstream_{name}" not in readme]
    assert not unlisted, f"README, Metrics and logs: add {unlisted}"


def families(text: str) -> dict[str, Any]:
    """The exposition read by prometheus-client's parser; every family must have HELP and a TYPE."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("counter", "gauge", "histogram"), f"{family.name} has no TYPE ({family.type})"
        out[family.name] = family
    return out


def value(fams: dict[str, Any], sample: str, **labels: str) -> float:
    """The value of one sample (``wsstream_turns_total``, ``..._count``) with exactly these labels."""
    family = fams[sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, family.samples)
    return found[0]


def test_unknown_names_render_with_a_generic_help_and_instances_are_apart() -> None:
    metrics, other = Metrics(), Metrics()
    metrics.inc("brand_new_counter", 3)
    metrics.observe("brand_new_seconds", 0.02)
    metrics.gauges["brand_new_gauge"] = 7
    metrics.inc_labelled("protocol_errors", "ws", "json")
    fams = families(metrics.render())
    assert value(fams, "wsstream_brand_new_counter_total") == 3
    assert fams["wsstream_brand_new_counter"].documentation == GENERIC_HELP.format(kind="counter",
                                                                                 name="brand_new_counter")
    assert value(fams, "wsstream_brand_new_seconds_count") == 1 and value(fams, "wsstream_brand_new_gauge") == 7
    assert value(fams, "wsstream_protocol_errors_total", dialect="ws", kind="json") == 1
    assert [s.labels for s in fams["wsstream_protocol_errors"].samples] == [{"dialect": "ws", "kind": "json"}]
    assert metrics.counters["protocol_errors"] == metrics.count("protocol_errors", kind="json") == 1  # (the total)
    assert value(fams, "wsstream_turns_total") == 0  # (known counters show from the start)
    metrics.inc("protocol_errors")  # (a plain inc on a labelled name, as older code does, is not lost)
    assert value(families(metrics.render()), "wsstream_protocol_errors_total", dialect="unlabelled",
                 kind="unlabelled") == 1
    # each Metrics has its own registry: nothing of one shows in the other
    other_fams = families(other.render())
    assert "wsstream_brand_new_counter" not in other_fams
    assert value(other_fams, "wsstream_reply_latency_seconds_count") == 0
    assert metrics.render() == metrics.render()  # (no timestamps: a HEAD's length is its GET's)
    # a host app's own metric, in the server's registry, shows in the same exposition
    mine = prometheus_client.Counter("myapp_orders", "Orders the agent took.", registry=metrics.registry)
    mine.inc(2)
    assert value(families(metrics.render()), "myapp_orders_total") == 2


def test_a_scrape_from_another_thread_meets_no_dict_changing_under_it() -> None:
    """prometheus_client.start_http_server(registry=hub.metrics.registry) scrapes from its own thread while
    the loop counts new names: the scrape works on copies."""
    metrics = Metrics()
    failures: list[BaseException] = []
    done = threading.Event()

    def scrape_forever() -> None:
        while not done.is_set():
            try:
                metrics.render()
            except BaseException as exc:  # (a RuntimeError: dictionary changed size during iteration)
                failures.append(exc)
                return

    scraper = threading.Thread(target=scrape_forever)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (threads switch every few bytecodes: a race shows at once)
    scraper.start()
    try:
        for i in range(2500):  # (every name new: the dicts grow while the scrape reads them)
            metrics.inc(f"new_{i}")
            metrics.inc_labelled("protocol_errors", f"d{i}", "json")
            metrics.observe(f"new_seconds_{i}", 0.01)
    finally:
        done.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert not failures, failures
    assert value(families(metrics.render()), "wsstream_new_2499_total") == 1


def test_histogram_buckets_are_cumulative_and_bulk_equals_one_by_one() -> None:
    one, bulk = Histogram((0.1, 1.0)), Histogram((0.1, 1.0))
    values = np.array([0.05, 0.1, 0.5, 1.0, 3.0, np.nan])
    for v in values:
        one.observe(float(v))
    bulk.observe_many(values)
    assert one.counts == bulk.counts == [2, 2, 1]  # (a value equal to a bound is in its bucket; NaN in none)
    assert one.buckets() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert one.sum == pytest.approx(bulk.sum) == pytest.approx(4.65)


def test_the_core_observes_turn_length_and_pause_to_first_audio() -> None:
    h = Harness()
    cmd = h.turn(speech=20)
    turn = h.core.metrics.histograms["turn_seconds"]
    assert turn.count == 1 and turn.sum == pytest.approx(cmd.args[0][1].size / 16000)
    h.now += 0.25  # the reply function takes 250 ms to its first audio
    h.reply(cmd.seq, (16000, np.full(3200, 1000, np.int16)))
    h.play()
    latency = h.core.metrics.histograms["reply_latency_seconds"]
    assert latency.count == 1 and latency.sum == pytest.approx(0.25)
    # a reply that answers no turn (a trigger with nothing heard, the greeting) is not observed
    assert not h.core.trigger(h.now) and latency.count == 1
    (again,) = of(h.run([SIL] * 5 + [SP] * 10 + [SIL] * PAUSE), StartReply)
    h.reply(again.seq, (16000, np.full(320, 1000, np.int16)))
    assert latency.count == 2 and turn.count == 2


# ---- over sockets ---------------------------------------------------------------------------------

async def scrape(port: int) -> tuple[str, dict[str, Any]]:
    def fetch() -> tuple[str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.headers["Content-Type"], resp.read().decode()
    content_type, text = await asyncio.to_thread(fetch)
    return content_type, families(text)


async def one_turn(port: int, manifest: dict[str, Any], token: str = TOKEN) -> None:
    """One corpus turn (1.6 s of speech, then 0.9 s of silence) as fast as it goes, answered whole."""
    name = "dialog_01.flac"
    turn = manifest["files"][name]["turns"][0]
    audio = load_corpus(name)[turn["start"] - 4800:turn["end"] + 14400]
    query = f"?token={token}" if token else ""
    async with Conversation(f"ws://127.0.0.1:{port}/ws{query}", AudioFormat()) as conv:
        await conv.send_audio(audio, speed=0.0)
        await conv.wait_for(lambda c: c.replies and c.replies[-1].ended_by == "mark", 15)
        assert conv.ws is not None
        await conv.ws.send("this is not json")
        await conv.wait_for(lambda c: any(e.get("type") == "error" for e in c.events), 5)


async def test_histograms_and_refusals_after_real_turns(make_server: Any, manifest: dict[str, Any]) -> None:
    server = await make_server(ReplyOnPause(echo), auth_tokens=(TOKEN,), concurrency_limit=1)
    content_type, fams = await scrape(server.port)
    assert content_type == CONTENT_TYPE
    for reason in ("auth_missing", "auth_bad", "origin", "ip_rate", "concurrency_limit", "draining"):
        assert value(fams, "wsstream_handshakes_refused_total", reason=reason) == 0  # from the first scrape
    for name in HISTOGRAMS:
        assert value(fams, f"wsstream_{name}_count") == 0

    await one_turn(server.port, manifest)
    with pytest.raises(InvalidStatus) as refused:  # no token: 401, before any audio
        await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10)
    assert refused.value.response.status_code == 401
    async with connect(f"ws://127.0.0.1:{server.port}/ws?token={TOKEN}") as held:  # the one stream allowed
        await held.send(json.dumps({"event": "ping"}))
        assert json.loads(await held.recv())["event"] == "pong"
        async with connect(f"ws://127.0.0.1:{server.port}/ws?token={TOKEN}") as extra:
            msg = json.loads(await extra.recv())
            assert msg["meta"]["error"] == "concurrency_limit_reached"
            with pytest.raises(ConnectionClosed):
                await extra.recv()
            assert extra.close_code == 1013
    await server.wait_idle()

    _, fams = await scrape(server.port)
    assert value(fams, "wsstream_handshakes_refused_total", reason="auth_missing") == 1
    assert value(fams, "wsstream_handshakes_refused_total", reason="concurrency_limit") == 1
    assert value(fams, "wsstream_handshakes_refused_total", reason="auth_bad") == 0
    assert value(fams, "wsstream_protocol_errors_total", dialect="ws", kind="json") == 1
    assert value(fams, "wsstream_turns_total") == 1 and value(fams, "wsstream_sessions_total") == 2
    assert value(fams, "wsstream_reply_latency_seconds_count") == 1
    latency = value(fams, "wsstream_reply_latency_seconds_sum")
    assert 0 <= latency < 1.0, latency  # the echo answers at once: our own share only
    assert value(fams, "wsstream_turn_seconds_count") == 1
    assert 1.5 < value(fams, "wsstream_turn_seconds_sum") < 3.5  # 1.6 s of speech, its padding and pause
    windows = value(fams, "wsstream_vad_windows_total")
    assert windows >= 2.5 * 16000 / 512 - 1  # every window of the turn's audio was inferred
    batches = value(fams, "wsstream_vad_call_seconds_count")
    assert batches == value(fams, "wsstream_vad_batches_total") == value(fams, "wsstream_vad_batch_streams_count")
    assert 0 < batches <= windows
    assert value(fams, "wsstream_vad_queue_delay_seconds_count") == batches  # (one stream: one per batch)
    assert 0 < value(fams, "wsstream_vad_call_seconds_sum") < batches * 0.5
    buckets = [s for s in fams["wsstream_vad_batch_streams"].samples if s.name.endswith("_bucket")]
    assert buckets[0].labels == {"le": "1.0"} and buckets[0].value == batches  # every batch had 1 stream
    assert buckets[-1].labels == {"le": "+Inf"} and buckets[-1].value == batches


# ---- JSON logs from a real server process -----------------------------------------------------------

def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the process wrote, as JSON, but for its stdout announcement (`wsstream: listening ...`)."""
    lines = [line for line in "".join(server.output).splitlines() if line and not line.startswith("wsstream:")]
    assert lines
    out = []
    for line in lines:
        record = json.loads(line)  # (fails the test on any line that is not one JSON object)
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["pid"] == server.proc.pid, record
        out.append(record)
    return out


async def test_json_logs_name_the_stream_on_every_line_about_it(driver: str, manifest: dict[str, Any]) -> None:
    """Two /ws turns whose reply function logs from its thread and then raises, and a Twilio call, whose turn
    events go to the server's log (DEBUG) since Twilio takes no log messages: every line is JSON, and each
    line about a stream names it."""
    server = await asyncio.to_thread(ServerProcess, "--log-format", "json", "--log-level", "DEBUG",
                                     "--handler", "tests.metrics_handlers:logging_then_failing", driver=driver)
    try:
        await one_turn(server.port, manifest, token="")
        await one_turn(server.port, manifest, token="")
        wire = encode(load_corpus("dialog_06.flac", 8000), "mulaw")
        async with TwilioPeer(f"ws://127.0.0.1:{server.port}/telephone/handler") as peer:
            await peer.send_raw("not json either")
            await peer.send_audio(wire[:int(4.4 * 8000)], realtime=False)
            await peer.send_silence_until(lambda p: len(p.marks_echoed) >= 1, within=15)
            await peer.stop()
            assert await peer.wait_closed() == 1000
        for _ in range(100):  # (the server writes its lines as the streams end)
            if sum('"reply function failed' in line for line in server.output) >= 3:
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(server.close)
    records = log_lines(server)
    replying = [r for r in records if r["logger"] == "tests.reply"]
    assert [r["stream_id"] for r in replying] == ["s1", "s2", "s3"]  # from the reply function's own thread
    assert replying[0]["message"].startswith("replying to ") and replying[0]["level"] == "INFO"
    assert "\n" in replying[0]["message"]  # (a newline in a message stays inside its one line)
    failed = [r for r in records if r["message"].startswith("reply function failed")]
    assert [(r["stream_id"], r["level"]) for r in failed] == [("s1", "ERROR"), ("s2", "ERROR"), ("s3", "ERROR")]
    assert all("RuntimeError: the model fell over" in r["exc_info"] for r in failed)
    call = [r for r in records if "twilio stream MZ" in r["message"]]
    assert {"pause_detected", "invalid JSON", "started"} <= {word for r in call for word in
                                                            ("pause_detected", "invalid JSON", "started")
                                                            if word in r["message"]}, call
    assert call and all(r.get("stream_id") == "s3" for r in call), call
    assert records[0]["time"].endswith("+00:00") and "T" in records[0]["time"]
    # lines about no stream (listening, a connection before its stream opens) have none
    unrelated = [r for r in records if r["logger"].startswith(("websockets", "uvicorn", "wsstream.server"))]
    assert all("stream_id" not in r for r in unrelated), unrelated
    assert unrelated or driver == "asgi"  # (under uvicorn at WARNING, every line here is about a stream)


def test_the_log_format_option_is_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "wsstream.cli", "serve", "--log-format", "xml"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--log-format" in result.stderr


def test_a_scrape_holds_when_the_loop_grows_its_dicts_while_it_copies_them() -> None:
    """The race the threaded test above hits only now and then, made certain. A collection started inside the
    scrape (by an allocation while it copies) runs Python code, gc callbacks and finalizers, during which the
    loop's thread may run and count new names. Here a gc callback does that counting at the worst moment, while
    ``collect`` itself is running; every copy it takes must survive that."""
    metrics = Metrics()
    for i in range(3000):  # (more items than CPython keeps spare tuples: copying them allocates, and collects)
        metrics.observe(f"old_seconds_{i}", 0.01)
        metrics.inc(f"old_{i}")
        metrics.inc_labelled("protocol_errors", f"d{i}", "json")
    grown: list[int] = []

    def count_during_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and sys._getframe(1).f_code.co_name == "collect" and len(grown) < 200:
            k = len(grown)
            grown.append(k)
            metrics.observe(f"new_seconds_{k}", 0.01)
            metrics.inc(f"new_{k}")
            metrics.inc_labelled("protocol_errors", f"n{k}", "json")

    threshold = gc.get_threshold()
    gc.set_threshold(50)
    gc.callbacks.append(count_during_collection)
    try:
        for _ in range(3):
            metrics.render()
    finally:
        gc.callbacks.remove(count_during_collection)
        gc.set_threshold(*threshold)
    assert grown  # (collections did start inside collect)
    assert value(families(metrics.render()), "wsstream_old_2999_total") == 1
