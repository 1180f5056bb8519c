"""``wsstream serve --workers N``: N server processes on one port, supervised by the parent.

Each worker is ``wsstream serve`` itself, re-run as ``python -m wsstream.cli serve ...`` with
the same options plus hidden ``--worker-index``, ``--ready-fd`` and ``--parent-fd``. Every worker
binds the same port with SO_REUSEPORT, so the kernel spreads new connections over them (by a
hash of the connection's addresses, not by load), and each loads its own Silero session and
runs its own event loop and inference worker: nothing is shared between them.

The concurrency limit is a total, split statically: worker ``i`` of ``N`` admits at most
``limit // N`` streams, plus one for the first ``limit % N`` workers, so the shares add up to
exactly the limit. The total can never be exceeded; the price of no shared counter is that a
stream may be refused by a full worker while another still has room.

The parent only supervises. It checks that nothing listens on the port yet and holds it (a
free one for ``--port 0``) with SO_REUSEPORT until the workers listen on it; starts the
workers; waits until each has written a line to the readiness pipe; prints ``wsstream:
listening on ws://HOST:PORT/ws`` once; then forwards SIGINT/SIGTERM to them as SIGTERM (a
second signal kills them). If any worker exits on its own, the parent stops the others and
exits with a failure status: a half-dead server is left to the process manager (systemd,
Kubernetes) to restart whole. The workers hold the read end of a pipe whose write end only
the parent has: if the parent dies, even by SIGKILL, they see end-of-file there and stop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType


def share(limit: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of a total concurrency ``limit``; the parts add up to ``limit``."""
    return limit // workers + (1 if index < limit % workers else 0)


def _hold_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound (not listening) to ``port`` (a free one for 0) with SO_REUSEPORT, so the workers
    can bind it too and nothing else can take it meanwhile; bound but not listening, it never gets a
    connection. A port something already listens on is refused, as a single server would refuse it:
    SO_REUSEPORT alone would let these workers silently join another server's."""
    family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    if port:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's bind does
            try:
                probe.bind(addr)
            except OSError as exc:
                raise SystemExit(f"wsstream: cannot bind {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    return sock, sock.getsockname()[1]


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.workers`` workers; return the exit status for the parent."""
    n = args.workers
    if args.concurrency_limit < n:
        raise SystemExit(f"--concurrency-limit {args.concurrency_limit} is less than --workers {n}: "
                         "the limit is a total, split across the workers")
    holder, port = _hold_port(args.host, args.port)
    ready_r, ready_w = os.pipe()
    life_r, life_w = os.pipe()  # the workers read life_r; EOF there means the parent is gone
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        sig = signal.SIGKILL if stopping else signal.SIGTERM  # a second signal does not wait
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    previous: dict[int, Callable[..., object] | int | None] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, forward)
    try:
        for i in range(n):
            cmd = [sys.executable, "-m", "wsstream.cli", *argv,
                   "--workers", "1", "--port", str(port),
                   "--concurrency-limit", str(share(args.concurrency_limit, n, i)),
                   "--worker-index", str(i), "--ready-fd", str(ready_w), "--parent-fd", str(life_r)]
            procs.append(subprocess.Popen(cmd, pass_fds=(ready_w, life_r)))
        os.close(ready_w)
        os.close(life_r)
        # Each worker writes one line once it listens; EOF before n lines means one died first.
        lines = b""
        while lines.count(b"\n") < n:
            chunk = os.read(ready_r, 4096)
            if not chunk:
                break
            lines += chunk
        os.close(ready_r)
        holder.close()
        ready = lines.count(b"\n")
        if ready < n:
            asked_to_stop = stopping
            if not asked_to_stop:
                print(f"wsstream: only {ready} of {n} workers started; stopping", file=sys.stderr, flush=True)
                forward(signal.SIGTERM, None)
            for proc in procs:
                proc.wait()
            return 0 if asked_to_stop else 1
        pids = ",".join(str(p.pid) for p in procs)
        print(f"wsstream: listening on ws://{args.host}:{port}/ws ({n} workers, pids {pids})", flush=True)
        status = 0
        while True:
            exited = [p for p in procs if p.poll() is not None]
            if len(exited) == n:
                break
            if exited and not stopping:
                p = exited[0]
                print(f"wsstream: worker {procs.index(p)} (pid {p.pid}) exited with status {p.returncode}; "
                      "stopping the others", file=sys.stderr, flush=True)
                status = 1
                forward(signal.SIGTERM, None)
            time.sleep(0.1)
        if status == 0 and any(p.returncode not in (0, -signal.SIGTERM) for p in procs):
            status = 1
        return status
    finally:
        os.close(life_w)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def announce_ready(ready_fd: int, index: int, port: int) -> None:
    """In a worker: tell the parent this worker is listening."""
    print(f"wsstream: worker {index} (pid {os.getpid()}) ready on port {port}", flush=True)
    os.write(ready_fd, f"{index} {os.getpid()}\n".encode())
    os.close(ready_fd)


def watch_parent(parent_fd: int, stop: Callable[[], None]) -> None:
    """In a worker, on the running loop: call ``stop`` when the parent is gone (EOF on its pipe)."""
    import asyncio

    loop = asyncio.get_running_loop()

    def readable() -> None:
        if not os.read(parent_fd, 1):
            loop.remove_reader(parent_fd)
            stop()

    loop.add_reader(parent_fd, readable)
