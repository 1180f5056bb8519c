"""What permessage-deflate costs and saves on PCM audio frames, measured on websockets' own protocol.

    uv run python benchmarks/deflate.py

A client and a server protocol object (websockets' sans-I/O core, so no
sockets or scheduling noise) exchange 640-byte frames of corpus PCM (20 ms of
pcm16 at 16 kHz), with and without permessage-deflate negotiated. Reports the
server's CPU per received frame and the compressed size. This is why the server
turns compression off on every audio dialect.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corpus import load


def pair(deflate: bool) -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(parse_uri("ws://localhost/ws"),
                            extensions=[ClientPerMessageDeflateFactory()] if deflate else None)
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()] if deflate else None)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    request = server.events_received()[0]
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    return client, server


def measure(deflate: bool, frames: list[bytes]) -> tuple[float, float, float]:
    client, server = pair(deflate)
    wire = []
    for f in frames:
        client.send_binary(f)
        wire.append(b"".join(client.data_to_send()))
    t0 = time.process_time()
    for data in wire:
        server.receive_data(data)
        server.events_received()
    rx = (time.process_time() - t0) / len(wire)
    t0 = time.process_time()
    for f in frames:
        server.send_binary(f)
        server.data_to_send()
    tx = (time.process_time() - t0) / len(frames)
    return rx * 1e6, tx * 1e6, sum(map(len, wire)) / len(wire)


def main() -> None:
    pcm = (np.clip(load("dialog_00.flac"), -1, 1) * 32767).astype("<i2").tobytes()
    frames = [pcm[i:i + 640] for i in range(0, len(pcm) - 639, 640)] * 3
    print(f"{len(frames)} frames of 640 bytes (20 ms pcm16 16 kHz speech and silence)")
    base = measure(False, frames)
    comp = measure(True, frames)
    for label, (rx, tx, size) in (("no compression", base), ("permessage-deflate", comp)):
        print(f"  {label:20} server receive {rx:6.1f} µs/frame   server send {tx:6.1f} µs/frame   "
              f"{size:6.1f} bytes/frame on the wire")
    print(f"  deflate costs {comp[0] / base[0]:.2f}x the CPU to receive and {comp[1] / base[1]:.2f}x to send, "
          f"and saves {100 * (1 - comp[2] / base[2]):.0f}% of the bytes")


if __name__ == "__main__":
    main()
