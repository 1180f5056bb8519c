"""Scale-out: ``wsstream serve --workers 2`` on one port, and nginx (deploy/nginx.conf) in front of two instances.

Corpus conversations go through both with the same checks as tests/test_server.py; /metrics,
which each worker answers for itself, shows which process served what.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess, corpus_files, load_corpus, require_program, turn_ends_s
from test_server import PAUSE, check_half_duplex, half_duplex, realtime
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from wsclient import Conversation

from wsstream.codecs import AudioFormat

FMT = AudioFormat("pcm16", 16000)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def parse_metrics(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in
            (line.split() for line in text.splitlines() if line and not line.startswith("#"))}


def metrics_by_worker(port: int, workers: int, tries: int = 200) -> dict[int, dict[str, float]]:
    """/metrics of every worker behind ``port``: each GET is a new connection, which the kernel
    gives to one worker by a hash of its addresses, so ask until every worker has answered."""
    seen: dict[int, dict[str, float]] = {}
    for _ in range(tries):
        status, body = http_get(port, "/metrics")
        assert status == 200
        metrics = parse_metrics(body)
        seen[int(metrics["wsstream_worker_pid"])] = metrics
        if len(seen) == workers:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered in {tries} requests")


@pytest.fixture(scope="module")
def workers_server() -> Iterator[ServerProcess]:
    """Two workers, reply pacing lifted, the default total limit (500: 250 per worker)."""
    server = ServerProcess("--workers", "2", "--lead-ms", "600000", *JSON_DEBUG)
    yield server
    server.close()
    assert server.proc.returncode == 0, "".join(server.output)


async def ping(url: str, held: list[ClientConnection] | None = None) -> str:
    """Open /ws and ping: "pong" when admitted, the refusal's error when the worker is full.
    With ``held``, the connection is left open there, else closed at once."""
    ws = await connect(url, compression=None, open_timeout=20)
    try:
        with contextlib.suppress(ConnectionClosed):  # a full worker refuses (and closes) at once
            await ws.send(json.dumps({"event": "ping"}))
        msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
        return "pong" if msg.get("event") == "pong" else msg["meta"]["error"]
    finally:
        if held is None:
            await ws.close()
        else:
            held.append(ws)


async def test_two_workers_serve_corpus_conversations(workers_server: ServerProcess, manifest: dict) -> None:
    url = workers_server.url
    names = corpus_files()
    convs = await asyncio.gather(*(half_duplex(url, n, FMT, "binary", manifest) for n in names))
    for conv, name in zip(convs, names, strict=True):
        check_half_duplex(conv, name, manifest, FMT)
    # A few more, short connections, so that both workers surely got some (each lands on a
    # worker by a hash of its source port: 24 connections all on one worker is 1 in 2**23).
    assert await asyncio.gather(*(ping(url + "/ws") for _ in range(16))) == ["pong"] * 16

    # Closed sessions are counted down just after their close handshake: wait for active == 0.
    for _ in range(50):
        workers = await asyncio.to_thread(metrics_by_worker, workers_server.port, 2)
        if all(m["wsstream_sessions_active"] == 0 for m in workers.values()):
            break
        await asyncio.sleep(0.1)
    assert set(workers) == set(worker_pids(workers_server))
    assert sorted(m["wsstream_worker_index"] for m in workers.values()) == [0, 1]
    assert all(m["wsstream_concurrency_limit"] == 250 for m in workers.values())
    served = [m.get("wsstream_sessions_total", 0) for m in workers.values()]
    assert sum(served) == len(names) + 16 and min(served) > 0, served
    assert all(m["wsstream_sessions_active"] == 0 for m in workers.values())
    assert sum(m["wsstream_vad_windows_total"] for m in workers.values()) > 0

    status, body = await asyncio.to_thread(http_get, workers_server.port, "/healthz")
    assert (status, body) == (200, "ok\n")
    check_stream_ids(workers_server, 2)


async def test_total_concurrency_limit_is_split_across_workers() -> None:
    """--concurrency-limit 4 with 2 workers: 2 each. 16 simultaneous streams: never more than 4
    admitted, and each worker admits up to its share of those the kernel gave it."""
    server = await asyncio.to_thread(ServerProcess, "--workers", "2", "--concurrency-limit", "4")
    try:
        held: list[ClientConnection] = []
        answers = await asyncio.gather(*(ping(server.url + "/ws", held) for _ in range(16)))
        assert set(answers) <= {"pong", "concurrency_limit_reached"}
        admitted = answers.count("pong")
        workers = await asyncio.to_thread(metrics_by_worker, server.port, 2)
        assert sorted(m["wsstream_concurrency_limit"] for m in workers.values()) == [2, 2]
        for m in workers.values():
            assert m["wsstream_sessions_active"] <= 2
            assert m["wsstream_sessions_active"] == m.get("wsstream_sessions_total", 0)
        offered = [m.get("wsstream_sessions_total", 0) + m.get("wsstream_sessions_rejected_total", 0)
                   for m in workers.values()]
        assert sum(offered) == 16
        assert admitted == sum(min(2, n) for n in offered) <= 4, (admitted, offered)
        for ws in held:
            await ws.close()
    finally:
        await asyncio.to_thread(server.close)
    assert server.proc.returncode == 0, "".join(server.output)


def test_workers_need_a_share_of_the_limit_each() -> None:
    proc = subprocess.run([sys.executable, "-m", "wsstream.cli", "serve", "--workers", "3",
                           "--concurrency-limit", "2"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "less than --workers" in proc.stderr


def test_workers_refuse_a_port_in_use(workers_server: ServerProcess) -> None:
    """SO_REUSEPORT would let a second server's workers silently join the first: refused instead."""
    proc = subprocess.run([sys.executable, "-m", "wsstream.cli", "serve", "--workers", "2",
                           "--port", str(workers_server.port)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "cannot bind" in proc.stderr, proc.stderr


JSON_DEBUG = ("--log-format", "json", "--log-level", "DEBUG")  # a line per event, with stream_id and pid


def check_stream_ids(server: ServerProcess, workers: int) -> None:
    """Stream ids are unique across the workers of one port: in the JSON log, each id is one process's,
    and worker i's ids are w<i>-s1, w<i>-s2, ... (without the prefix, every worker counts from s1)."""
    owners: dict[str, set[int]] = {}
    for line in list(server.output):
        if line.startswith("{"):
            record = json.loads(line)
            if "stream_id" in record:
                owners.setdefault(record["stream_id"], set()).add(record["pid"])
    assert owners, "no log line about a stream"
    assert all(len(pids) == 1 for pids in owners.values()), owners
    assert {re.fullmatch(r"(w\d+)-s\d+", sid).group(1) for sid in owners} == {f"w{i}" for i in range(workers)}
    by_prefix: dict[str, set[int]] = {}
    for sid, pids in owners.items():
        by_prefix.setdefault(sid.partition("-")[0], set()).update(pids)
    assert sorted(len(p) for p in by_prefix.values()) == [1] * workers  # a prefix is one worker's


def worker_pids(server: ServerProcess) -> list[int]:
    listening = next(line for line in server.output if line.startswith("wsstream: listening on"))
    return [int(p) for p in listening.partition("pids ")[2].rstrip(")\n").split(",")]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; reaping it is not our concern


async def workers_stop_when_the_parent_is_killed(driver: str, within: float = 15.0) -> None:
    """SIGKILL to the parent of two workers: they notice (EOF on its pipe) and stop by themselves."""
    server = await asyncio.to_thread(ServerProcess, "--workers", "2", driver=driver)
    pids = worker_pids(server)
    server.proc.kill()
    server.proc.wait(10)
    deadline = time.monotonic() + within
    while any(running(p) for p in pids):
        assert time.monotonic() < deadline, "workers outlived their parent"
        await asyncio.sleep(0.1)


async def test_sigterm_closes_calls_and_parent_death_stops_workers(manifest: dict) -> None:
    """SIGTERM to the parent: every live call is closed with 1001, and all exit 0 at once.
    SIGKILL to the parent: the workers notice and stop by themselves."""
    server = await asyncio.to_thread(ServerProcess, "--workers", "2")
    pids = worker_pids(server)
    audio = load_corpus("dialog_01.flac")
    convs = [Conversation(server.url + "/ws", FMT) for _ in range(4)]
    for conv in convs:
        await conv.__aenter__()
    senders = [asyncio.create_task(conv.send_audio(audio, speed=1.0)) for conv in convs]
    await asyncio.gather(*(conv.wait_for(lambda c: c.logs("started_talking"), 20) for conv in convs))
    t0 = time.monotonic()
    server.proc.terminate()
    assert [await conv.wait_closed(10) for conv in convs] == [1001] * 4
    assert await asyncio.to_thread(server.proc.wait, 10) == 0
    assert time.monotonic() - t0 < 5
    assert not any(running(p) for p in pids)
    for task in senders:
        task.cancel()
    await asyncio.gather(*senders, return_exceptions=True)

    await workers_stop_when_the_parent_is_killed("native")


# ---- nginx in front of two instances ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_config(tmp: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with our upstreams and listen address, wrapped in a main config that
    keeps everything (pid, logs, temp files) in ``tmp`` and runs as the current user."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n" for p in upstreams)
    site, n = re.subn(r"(?m)^\s*server\s+[\d.]+:\d+[^;\n]*;\n", "", site)
    assert n >= 2, "deploy/nginx.conf has no upstream server lines to replace"
    site = site.replace("    least_conn;\n", "    least_conn;\n" + servers, 1)
    site, n = re.subn(r"(?m)^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{listen};", site)
    assert n == 1
    (tmp / "wsstream.conf").write_text(site)
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {tmp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                             "uwsgi", "scgi"))
    main = (f"{user}daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {tmp}/access.log;\n{temp}    include {tmp}/wsstream.conf;\n}}\n")
    conf = tmp / "nginx.conf"
    conf.write_text(main)
    return conf


@pytest.fixture
def nginx_front(tmp_path: Path) -> Iterator[tuple[int, list[ServerProcess]]]:
    nginx = require_program("nginx")
    instances = [ServerProcess("--lead-ms", "600000") for _ in range(2)]
    proc = None
    try:
        port = free_port()
        conf = nginx_config(tmp_path, port, [s.port for s in instances])
        check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                                "-c", str(conf)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                if http_get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield port, instances
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        for server in instances:
            server.close()


async def test_nginx_in_front_of_two_instances(nginx_front: tuple[int, list[ServerProcess]],
                                               manifest: dict) -> None:
    port, instances = nginx_front
    url = f"ws://127.0.0.1:{port}"
    status, body = await asyncio.to_thread(http_get, port, "/healthz")
    assert (status, body) == (200, "ok\n")
    status, body = await asyncio.to_thread(http_get, port, "/")
    assert status == 200 and "<html" in body.lower()

    # Half-duplex conversations through nginx, every check of test_server holding.
    names = corpus_files()[:6]
    cases = [(n, AudioFormat("mulaw", 8000) if i == 5 else FMT, "json" if i == 4 else "binary")
             for i, n in enumerate(names)]
    convs = await asyncio.gather(*(half_duplex(url, n, fmt, media_as, manifest) for n, fmt, media_as in cases))
    for conv, (name, fmt, _) in zip(convs, cases, strict=True):
        check_half_duplex(conv, name, manifest, fmt)

    # least_conn spread the simultaneous calls over both instances (each answers /metrics for itself).
    served = []
    for server in instances:
        status, body = await asyncio.to_thread(http_get, server.port, "/metrics")
        served.append(parse_metrics(body).get("wsstream_sessions_total", 0))
    assert sum(served) == len(names) and min(served) >= 2, served

    # The other two WebSocket paths are proxied too.
    assert await ping(url + "/websocket/offer") == "pong"
    async with connect(url + "/telephone/handler", compression=None, open_timeout=20) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))

    # One file in real time: nginx adds no buffering delay to pause_detected or the reply.
    name = "dialog_04.flac"
    conv, t_send = await realtime(url, name, manifest)
    pauses = conv.logs("pause_detected")
    ends = turn_ends_s(manifest, name)
    assert len(pauses) == len(ends)
    for pause, end in zip(pauses, ends, strict=True):
        latency = pause["wall"] - (t_send + end)
        assert PAUSE <= latency <= PAUSE + 0.2 + 0.1, f"pause_detected {latency:.3f} s after turn end via nginx"
    assert conv.replies[-1].ended_by == "mark"
    assert abs(len(conv.replies[-1].audio) / 2 - pauses[-1]["speech_s"] * 16000) <= 320


def test_drain_lets_calls_in_progress_finish(manifest: dict) -> None:
    """--drain-s: on SIGTERM the port closes at once, but a call in progress is still answered."""
    import signal as _signal

    server = ServerProcess("--drain-s", "20", "--lead-ms", "600000")
    try:
        async def scenario() -> tuple[Conversation, bool, float]:
            name = "dialog_02.flac"
            turns = manifest["files"][name]["turns"]
            audio = load_corpus(name)
            async with Conversation(server.url + "/ws") as conv:
                await conv.send_audio(audio[: turns[0]["end"] + 16000])
                await conv.wait_for(lambda c: c.of("event", "mark"))
                server.proc.send_signal(_signal.SIGTERM)
                await asyncio.sleep(0.5)
                try:  # no new calls
                    async with Conversation(server.url + "/ws"):
                        refused = False
                except OSError:
                    refused = True
                # the call in progress goes on and is answered
                await conv.send_audio(audio[turns[0]["end"] + 16000: turns[1]["end"] + 16000])
                await conv.wait_for(lambda c: len(c.of("event", "mark")) == 2, 20)
                t0 = time.monotonic()
            return conv, refused, t0

        conv, refused, t_hangup = asyncio.run(scenario())
        assert refused
        assert len(conv.logs("pause_detected")) == 2
        # once the last call has gone, the server exits at once, well before the 20 s drain
        assert server.proc.wait(10) == 0
        assert time.monotonic() - t_hangup < 5
    finally:
        server.close()


async def test_asgi_workers_share_the_port_and_stop_with_their_parent(manifest: dict) -> None:
    """``--workers 2 --driver asgi``: uvicorn in each worker on the shared port, both serving corpus calls;
    SIGTERM to the parent closes the live calls and all exit 0; SIGKILL to it stops the workers."""
    server = await asyncio.to_thread(ServerProcess, "--workers", "2", "--lead-ms", "600000", *JSON_DEBUG,
                                     driver="asgi")
    try:
        names = ["dialog_01.flac", "dialog_05.flac"]
        convs = await asyncio.gather(*(half_duplex(server.url, n, FMT, "binary", manifest) for n in names))
        for conv, name in zip(convs, names, strict=True):
            check_half_duplex(conv, name, manifest, FMT)
        assert await asyncio.gather(*(ping(server.url + "/ws") for _ in range(16))) == ["pong"] * 16
        workers = await asyncio.to_thread(metrics_by_worker, server.port, 2)
        assert set(workers) == set(worker_pids(server))
        assert sorted(m["wsstream_worker_index"] for m in workers.values()) == [0, 1]
        served = [m.get("wsstream_sessions_total", 0) for m in workers.values()]
        assert sum(served) == len(names) + 16 and min(served) > 0, served
        check_stream_ids(server, 2)

        pids = worker_pids(server)
        live = [Conversation(server.url + "/ws", FMT) for _ in range(2)]
        for conv in live:
            await conv.__aenter__()
        audio = load_corpus("dialog_01.flac")
        senders = [asyncio.create_task(conv.send_audio(audio, speed=1.0)) for conv in live]
        await asyncio.gather(*(conv.wait_for(lambda c: c.logs("started_talking"), 20) for conv in live))
        server.proc.terminate()
        codes = [await conv.wait_closed(15) for conv in live]
        assert codes == [1001, 1001], codes  # (as on our transport: not uvicorn's own 1012)
        assert await asyncio.to_thread(server.proc.wait, 15) == 0, "".join(server.output)
        assert not any(running(p) for p in pids)
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    finally:
        await asyncio.to_thread(server.close)

    await workers_stop_when_the_parent_is_killed("asgi")
