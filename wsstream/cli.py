"""``wsstream serve`` and ``wsstream client``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from vad.detector import DetectorOptions
from wsstream import logs, workers
from wsstream.codecs import ENCODINGS, AudioFormat
from wsstream.config import ServerConfig, StreamConfig, tune_process
from wsstream.hub import Hub
from wsstream.reply import ReplyOnPause
from wsstream.server import WsServer

DETECTOR_FLAGS = {
    "threshold": float, "neg_threshold": float, "min_speech_ms": float, "pause_ms": float,
    "prefix_padding_ms": float, "max_speech_s": float,
}


def load_handler(spec: str) -> Any:
    """``module:attribute``, a reply function or a ReplyOnPause."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--handler must look like module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `wsstream serve --handler myapp:app` finds myapp.py here, as python -m would
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"--handler: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"--handler: {module_name!r} has no attribute {attr!r}") from None


def build_app(args: argparse.Namespace) -> ReplyOnPause:
    """The handler with the command line's detector options: a new ReplyOnPause, the user's untouched."""
    target = load_handler(args.handler)
    app = target if isinstance(target, ReplyOnPause) else ReplyOnPause(fn=target)
    overrides = {name: getattr(args, name) for name in DETECTOR_FLAGS if getattr(args, name) is not None}
    if args.no_interrupt:
        overrides["can_interrupt"] = False
    rates = {name: getattr(args, name) for name in ("input_sample_rate", "output_sample_rate")
             if getattr(args, name)}
    for name in ("interrupt_ms", "idle_prompt_s", "input_wait_s"):
        if getattr(args, name) is not None:
            rates[name] = getattr(args, name)
    if args.speculative:
        rates["speculative"] = True
    try:
        app = dataclasses.replace(app, options=dataclasses.replace(app.options, **overrides), **rates)
        if args.stop_word:
            return stop_words_app(app, args.stop_word, args.stop_word_activation)
        return app
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"invalid option: {exc}") from None


def stop_words_app(app: ReplyOnPause, words: list[str], activation: str) -> ReplyOnPause:
    """``--stop-word``: the same app, answering only once one of ``words`` has been heard."""
    from wsstream.stopwords import ReplyOnStopWords

    if isinstance(app, ReplyOnStopWords):
        return dataclasses.replace(app, stop_words=tuple(words), activation=activation, spotter=None)
    base = {f.name: getattr(app, f.name) for f in dataclasses.fields(ReplyOnPause)}
    return ReplyOnStopWords(**base, stop_words=tuple(words), activation=activation)  # type: ignore[arg-type]


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag per field of a config dataclass that has ``help`` in its metadata."""
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        if isinstance(f.default, bool):  # --name / --no-name
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                                action=argparse.BooleanOptionalAction, help=f.metadata["help"])
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=f.default,
                            choices=f.metadata.get("choices"),
                            help=f"{f.metadata['help']} (default {f.default})")


def config_from_args(args: argparse.Namespace, **fixed: Any) -> ServerConfig:
    def values(cls: type) -> dict[str, Any]:
        return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}
    try:
        stream = StreamConfig(**values(StreamConfig))
        return ServerConfig(**{**values(ServerConfig), **fixed, "stream": stream})
    except ValueError as exc:
        raise SystemExit(f"invalid option: {exc}") from None


def _run(main: Any, loop: str) -> None:
    """Run on asyncio's loop, or uvloop's (optional dependency: ``pip install uvloop``)."""
    factory = None
    if loop in ("auto", "uvloop"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


async def _serve(args: argparse.Namespace) -> None:
    worker = args.worker_index is not None  # one of --workers N, started by wsstream.workers
    config = config_from_args(args, reuse_port=worker, stream_id_prefix=f"w{args.worker_index}-" if worker else "")
    app = build_app(args)
    if args.driver == "asgi":
        await _serve_asgi(app, config, args)
        return
    server = WsServer(app, config)
    server.metrics.gauges.update(worker_index=args.worker_index or 0, worker_pid=os.getpid())
    await server.start()
    tune_process()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if worker:
        workers.watch_parent(args.parent_fd, stop.set)
        workers.announce_ready(args.ready_fd, args.worker_index, server.port)
    else:
        print(f"wsstream: listening on {'wss' if config.tls else 'ws'}://{config.host}:{server.port}/ws", flush=True)
    await stop.wait()
    await server.drain(config.drain_s)


def listening_socket(host: str, port: int, backlog: int = 1024, *, reuse_port: bool = False) -> socket.socket:
    """A TCP listening socket for uvicorn, made with ``IPPROTO_TCP``: asyncio sets TCP_NODELAY on the
    connections it accepts only when the socket says it is TCP (``socket.create_server`` leaves its proto
    0). Without it, Nagle's algorithm held each small message sent right after another (a reply frame
    after ``pause_detected``) until the first was acknowledged: about 20 ms on every turn. ``reuse_port``:
    one of ``--workers N``, which all listen on the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def _serve_asgi(app: ReplyOnPause, config: ServerConfig, args: argparse.Namespace) -> None:
    """The same endpoints through the ASGI driver, under uvicorn (``pip install wsstream[asgi]``); as one of
    ``--workers N`` too, like ours: on the shared port, ready told to the parent, gone when it is."""
    try:
        import uvicorn

        from wsstream.asgi import create_app, uvicorn_tls
    except ImportError as exc:
        raise SystemExit(f"--driver asgi needs the asgi extra (pip install 'wsstream[asgi]'): {exc}") from None
    worker = args.worker_index is not None
    hub = Hub(app, config)
    hub.metrics.gauges.update(worker_index=args.worker_index or 0, worker_pid=os.getpid())
    sock = listening_socket(config.host, config.port, reuse_port=config.reuse_port)
    port = sock.getsockname()[1]
    started = asyncio.Event()
    asgi_app = create_app(hub, on_ready=started.set)
    # (in JSON, uvicorn's loggers go through ours: its own config would print them as text)
    own_logs = {"log_config": None} if args.log_format == "json" else {}
    server = uvicorn.Server(uvicorn.Config(asgi_app, log_level="warning", lifespan="on", ws="websockets-sansio",
                                           **own_logs,
                                           ws_max_size=config.max_message_bytes,
                                           ws_ping_interval=config.ping_interval_s,
                                           ws_ping_timeout=3 * config.ping_interval_s, **uvicorn_tls(config)))
    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(server.serve(sockets=[sock]))
        await started.wait()
        tune_process()
        stopping: list[asyncio.Task[None]] = []

        def stop() -> None:
            if not stopping:
                stopping.append(tasks.create_task(_drain_asgi(hub, server, config.drain_s)))

        # (ours, not uvicorn's, from here on: its own shutdown would close the calls with 1012 at once,
        # before the hub could drain them or close them with 1001 as our transport does)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop)
        if worker:
            workers.watch_parent(args.parent_fd, stop)
            workers.announce_ready(args.ready_fd, args.worker_index, port)
        else:
            scheme = "wss" if config.tls else "ws"
            print(f"wsstream: listening on {scheme}://{config.host}:{port}/ws (asgi)", flush=True)
        await serving


async def _drain_asgi(hub: Hub, server: Any, seconds: float) -> None:
    """SIGTERM under uvicorn, as on our transport: refuse new calls, let those in progress go on for up to
    ``seconds`` (``--drain-s``), close what is left with 1001, then let uvicorn stop."""
    await hub.let_finish(seconds)
    await hub.aclose()
    server.should_exit = True


async def _client(args: argparse.Namespace) -> int:
    from wsstream.client import stream_file

    def show(msg: dict[str, Any]) -> None:
        wall = msg.pop("wall")
        print(f"{wall:8.3f}s  {msg}", flush=True)

    fmt = AudioFormat(args.encoding, args.sample_rate)
    result = await stream_file(args.url, args.file, fmt=fmt, speed=args.speed, media_as=args.media_as,
                               on_event=show)
    audio = result.reply_audio()
    print(f"closed with code {result.close_code}; reply audio {audio.size / fmt.sample_rate:.2f} s")
    if args.out:
        import soundfile as sf

        sf.write(args.out, audio, fmt.sample_rate, subtype="PCM_16")
        print(f"saved the reply to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsstream", description="WebSocket voice server with pause detection")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server")
    add_config_flags(s, ServerConfig)
    add_config_flags(s, StreamConfig)
    s.add_argument("--driver", default="native", choices=("native", "asgi"),
                   help="our lean transport (default), or the ASGI driver under uvicorn (the asgi extra)")
    s.add_argument("--handler", default="wsstream.echo:echo",
                   help="reply function or ReplyOnPause as module:attribute (default: the embedded echo)")
    defaults = DetectorOptions()  # (frozen; ReplyOnPause.options)
    for name, kind in DETECTOR_FLAGS.items():
        s.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"pause detector option (default {getattr(defaults, name)})")
    s.add_argument("--no-interrupt", action="store_true", help="user speech does not stop a reply (no barge-in)")
    s.add_argument("--interrupt-ms", type=float, default=None,
                   help="user speech over a reply that stops it (default 500; shorter is a backchannel; 0: any)")
    s.add_argument("--idle-prompt-s", type=float, default=None,
                   help="call the reply function after this much silence following a reply (default: never)")
    s.add_argument("--input-wait-s", type=float, default=None,
                   help="before each reply, send fastrtc's send_input on /ws and /websocket/offer and wait up to "
                        "this long for the client's inputs (default: never asked)")
    s.add_argument("--speculative", action="store_true",
                   help="start the reply function at pause_tentative, its audio held until pause_detected")
    s.add_argument("--stop-word", action="append", default=[], metavar="WORD",
                   help="answer only after hearing this word or phrase (repeatable; needs the stopwords extra)")
    s.add_argument("--stop-word-activation", default="turn", choices=("turn", "conversation"),
                   help="one request per stop word (turn, the default), or every turn until a quiet period")
    s.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port with SO_REUSEPORT, each with its own model (default 1)")
    for hidden in ("--worker-index", "--ready-fd", "--parent-fd"):  # set by the --workers supervisor
        s.add_argument(hidden, type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--input-sample-rate", type=int, default=None,
                   help="input rate for fastrtc clients (default 48000)")
    s.add_argument("--output-sample-rate", type=int, default=None,
                   help="output rate for fastrtc clients (default 24000)")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--log-format", default="text", choices=logs.FORMATS,
                   help="text lines (default), or one JSON object per line with time, level, logger, message and "
                        "the stream_id of the stream a line is about")
    s.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"),
                   help="event loop: uvloop when installed (auto), or force one")

    c = sub.add_parser("client", help="stream an audio file in real time and print what comes back")
    c.add_argument("file")
    c.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    c.add_argument("--encoding", default="pcm16", choices=ENCODINGS)
    c.add_argument("--sample-rate", type=int, default=16000)
    c.add_argument("--speed", type=float, default=1.0, help="times real time (0: as fast as possible)")
    c.add_argument("--media-as", default="binary", choices=("binary", "json"))
    c.add_argument("--out", help="save the reply audio to this WAV file")

    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.command == "serve" and args.workers != 1 and args.worker_index is None:
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        return workers.supervise(args, argv)
    if args.command == "serve":
        logs.configure(args.log_level, args.log_format)
        # websockets logs every frame at DEBUG: --log-level DEBUG is for our events, not that
        logging.getLogger("websockets").setLevel(max(logging.getLogger().level, logging.INFO))
        _run(_serve(args), args.loop)
        return 0
    return asyncio.run(_client(args))


if __name__ == "__main__":
    sys.exit(main())
