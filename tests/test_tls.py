"""TLS served by wsstream itself (``certfile``/``keyfile``), on both drivers, with a certificate made here.

A real ``wss://`` client (websockets, trusting only that certificate) streams a corpus turn and hears its reply;
the plain pages answer over https; a client that does not trust the certificate, or speaks plain HTTP to the
TLS port, gets nowhere. Twilio's signature is checked over the wss:// URL when the server itself is the TLS end.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import twilio_peer
from conftest import AsgiServer, ServerProcess, require_program
from websockets.asyncio.client import connect

from vad.engine import VadEngine
from vad.model import SileroModel
from wsstream.config import ServerConfig, StreamConfig
from wsstream.echo import echo
from wsstream.hub import Hub
from wsstream.reply import ReplyOnPause
from wsstream.server import WsServer

BOTH_DRIVERS = True

TOKEN = "tls-token-0123456789abcdef01234567"
TWILIO_KEY = "abcdefabcdefabcdefabcdefabcdef12"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, signed by itself, and its key (openssl)."""
    openssl = require_program("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts our certificate and nothing else."""
    return ssl.create_default_context(cafile=str(certificate[0]))


@pytest.fixture
async def tls_server(model: SileroModel, driver: str, certificate: tuple[Path, Path]) -> AsyncIterator[Any]:
    """An echo server speaking TLS only, tokens required, Twilio's signature checked, replies unpaced."""
    cert, key = certificate
    config = ServerConfig(host="127.0.0.1", port=0, certfile=str(cert), keyfile=str(key), auth_tokens=TOKEN,
                          twilio_auth_token=TWILIO_KEY, stream=StreamConfig(lead_ms=600000))
    app = ReplyOnPause(echo)
    server: Any
    if driver == "asgi":
        server = AsgiServer(Hub(  # (uvicorn serves TLS from the hub's config)
            app, config, engine=VadEngine(model)))
    else:
        server = WsServer(app, config, engine=VadEngine(model))
    await server.start()
    yield server
    await server.aclose()


def https_get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=5, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_a_wss_client_streams_a_turn_and_hears_its_reply(tls_server: Any, trusting: ssl.SSLContext,
                                                               manifest: dict) -> None:
    from test_access import echo_turn, handshake

    port = tls_server.port
    if isinstance(tls_server, WsServer):
        assert tls_server.url == f"wss://127.0.0.1:{port}"
    url = f"wss://127.0.0.1:{port}/ws"
    conv = await echo_turn(url, manifest, ssl=trusting, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    assert conv.ws is not None and conv.ws.transport.get_extra_info("ssl_object") is not None
    await echo_turn(url, manifest, ssl=trusting, subprotocols=[f"wsstream.token.{TOKEN}"])
    # access control holds over TLS as over TCP
    assert (await handshake(port, "/ws", scheme="wss", tls=trusting)).status == 401


async def test_twilio_signs_the_wss_url_when_the_server_is_the_tls_end(tls_server: Any, trusting: ssl.SSLContext,
                                                                       manifest: dict,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No public_url: the URL Twilio called is rebuilt from Host and the connection's scheme, wss://."""
    from test_access import handshake, twilio_call, twilio_signature

    port = tls_server.port
    url = f"wss://127.0.0.1:{port}/telephone/handler"
    plain = {"X-Twilio-Signature": twilio_signature(TWILIO_KEY, f"ws://127.0.0.1:{port}/telephone/handler")}
    answer = await handshake(port, "/telephone/handler", scheme="wss", tls=trusting, additional_headers=plain)
    assert answer.status == 403
    signed = {"X-Twilio-Signature": twilio_signature(TWILIO_KEY, url)}
    monkeypatch.setattr(twilio_peer, "connect", functools.partial(connect, additional_headers=signed, ssl=trusting))
    await twilio_call(url, manifest)


async def test_pages_over_https_and_nothing_without_trust_or_tls(tls_server: Any, trusting: ssl.SSLContext) -> None:
    port = tls_server.port
    assert await asyncio.to_thread(https_get, port, "/healthz", trusting) == (200, "ok\n")
    status, body = await asyncio.to_thread(https_get, port, "/metrics", trusting)
    assert status == 200 and 'wsstream_handshakes_refused_total{reason="auth_missing"}' in body
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's trust store does not know our certificate
        await connect(f"wss://127.0.0.1:{port}/ws", ssl=ssl.create_default_context(), open_timeout=5)

    async def plain_http() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            return b""
        finally:
            writer.close()
    assert b"ok" not in await plain_http()  # no plain HTTP answer on the TLS port


async def test_cli_serves_tls_with_tokens_from_the_environment(driver: str, certificate: tuple[Path, Path],
                                                               trusting: ssl.SSLContext,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``wsstream serve --certfile --keyfile`` with the tokens in WSSTREAM_TOKENS (not on the command line)."""
    from test_access import handshake

    cert, key = certificate
    monkeypatch.setenv("WSSTREAM_TOKENS", TOKEN)
    server = await asyncio.to_thread(ServerProcess, "--certfile", str(cert), "--keyfile", str(key), driver=driver)
    try:
        assert TOKEN not in " ".join(map(str, server.proc.args))  # (what a process list would show)
        assert await asyncio.to_thread(https_get, server.port, "/healthz", trusting) == (200, "ok\n")
        assert (await handshake(server.port, "/ws", scheme="wss", tls=trusting)).status == 401
        answer = await handshake(server.port, "/ws", scheme="wss", tls=trusting,
                                 additional_headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 101
    finally:
        await asyncio.to_thread(server.close)
    assert TOKEN not in "".join(server.output)  # nor its log
