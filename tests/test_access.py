"""Access control at the upgrade (issue 13): tokens, Twilio's signature (also behind nginx), Origin, per-address caps.

Socket tests run on both drivers against a real server; every refusal must come before any audio is accepted
(an HTTP answer to the handshake, never a 101) and show in /metrics. The Twilio signatures are computed here,
from Twilio's documented algorithm, independently of wsstream.access. The sans-I/O rules of ``AccessPolicy``
are tested directly at the end, with a clock of our own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import twilio_peer
from conftest import load_corpus, require_program
from test_scale_out import free_port, nginx_config, parse_metrics
from test_tls import self_signed_certificate
from twilio_peer import TwilioPeer
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from wsclient import Conversation

from wsstream.access import AccessPolicy, Admit, Refusal, split_token
from wsstream.codecs import AudioFormat, encode
from wsstream.config import ServerConfig, StreamConfig
from wsstream.dialects import DIALECTS
from wsstream.echo import echo
from wsstream.metrics import Metrics
from wsstream.reply import ReplyOnPause

BOTH_DRIVERS = True

TOKEN_A = "tokA-0123456789abcdef0123456789ab"
TOKEN_B = "tokB_fedcba9876543210fedcba987654"
WRONG = "tokA-0123456789abcdef0123456789aX"  # one character off
TWILIO_KEY = "12345678901234567890123456789012"  # an auth token's shape: 32 hex characters
WAYS = ("bearer", "query", "subprotocol")
UNPACED = StreamConfig(lead_ms=600000)  # replies sent as fast as they come (the tests wait for them whole)


def twilio_signature(auth_token: str, url: str) -> str:
    """Twilio's request signature as its security docs describe it: HMAC-SHA1 keyed with the account's auth token
    over the full URL it requested, followed (for a POST) by each POST parameter's name and value in sorted order
    (none for a WebSocket upgrade, a GET), base64-encoded."""
    return base64.b64encode(hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()).decode()


@dataclasses.dataclass
class Answer:
    status: int  # 101 when admitted
    headers: Headers
    body: str
    subprotocol: str | None = None


async def handshake(port: int, path: str, query: str = "", *, scheme: str = "ws", tls: ssl.SSLContext | None = None,
                    hold: list[ClientConnection] | None = None, **kwargs: Any) -> Answer:
    """One upgrade request; with ``hold``, an admitted connection is left open there (else closed at once)."""
    url = f"{scheme}://127.0.0.1:{port}{path}" + (f"?{query}" if query else "")
    try:
        ws = await connect(url, compression=None, open_timeout=10, ssl=tls, **kwargs)
    except InvalidStatus as exc:
        return Answer(exc.response.status_code, exc.response.headers, exc.response.body.decode())
    answer = Answer(101, ws.response.headers if ws.response else Headers(), "", ws.subprotocol)
    if hold is None:
        await ws.close()
    else:
        hold.append(ws)
    return answer


def with_token(way: str, token: str) -> dict[str, Any]:
    """``handshake`` arguments that present ``token`` the given way."""
    if way == "bearer":
        return {"additional_headers": {"Authorization": f"Bearer {token}"}}
    if way == "query":
        return {"query": f"token={token}"}
    return {"subprotocols": [f"wsstream.token.{token}"]}


async def get(port: int, path: str) -> tuple[int, str]:
    """A plain GET, off the loop (the server under test runs in it)."""
    def fetch() -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    return await asyncio.to_thread(fetch)


async def refused(port: int, reason: str) -> float:
    """wsstream_handshakes_refused_total{reason=...} in the server's /metrics."""
    _, text = await get(port, "/metrics")
    return parse_metrics(text)[f'wsstream_handshakes_refused_total{{reason="{reason}"}}']


class TokenConversation(Conversation):
    """``Conversation`` with handshake options of our own (a token header, a subprotocol, TLS)."""

    def __init__(self, url: str, fmt: AudioFormat | None = None, start: bool = True, **connect_kwargs: Any) -> None:
        super().__init__(url, fmt, start=start)
        self.connect_kwargs = connect_kwargs

    async def __aenter__(self) -> TokenConversation:
        self.ws = await connect(self.url, compression=None, max_size=1 << 22, open_timeout=20, **self.connect_kwargs)
        self.t0 = time.monotonic()
        if self.send_start:
            await self.ws.send(json.dumps({"event": "start", "media_as": self.media_as, "format": {
                "encoding": self.fmt.encoding, "sample_rate": self.fmt.sample_rate}}))
        self._receiver = asyncio.create_task(self._receive())
        return self


async def echo_turn(url: str, manifest: dict[str, Any], fmt: AudioFormat | None = None, start: bool = True,
                    **connect_kwargs: Any) -> Conversation:
    """A corpus turn (1.6 s of speech and the pause after it) sent at once; its echo heard back whole."""
    fmt = fmt or AudioFormat()
    name = "dialog_01.flac"
    turn = manifest["files"][name]["turns"][0]
    audio = load_corpus(name)[turn["start"] - 4800:turn["end"] + 14400]
    if fmt.sample_rate != 16000:
        audio = load_corpus(name, fmt.sample_rate)[(turn["start"] - 4800) // 2:(turn["end"] + 14400) // 2]
    async with TokenConversation(url, fmt, start=start, **connect_kwargs) as conv:
        await conv.send_audio(audio)
        await conv.wait_for(lambda c: c.replies and c.replies[-1].ended_by == "mark", 20)
    (pause,) = conv.logs("pause_detected")
    assert pause["speech_s"] > 1.0
    assert abs(len(conv.replies[-1].audio) / fmt.sample_width - pause["speech_s"] * fmt.sample_rate) \
        <= 0.02 * fmt.sample_rate
    return conv


# ---- tokens -------------------------------------------------------------------------------------------------

async def test_tokens_good_bad_and_missing_on_every_path_and_every_way(make_server: Any,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await make_server(ReplyOnPause(echo), auth_tokens=f"{TOKEN_A},{TOKEN_B}")
    port = server.port
    for path in DIALECTS:
        for way in WAYS:
            for token in (TOKEN_A, TOKEN_B):
                answer = await handshake(port, path, **with_token(way, token))
                assert answer.status == 101, (path, way, answer)
                # a browser fails a connection whose subprotocol is not echoed: it is, and only then
                expected = f"wsstream.token.{token}" if way == "subprotocol" else None
                assert answer.subprotocol == expected, (path, way)
            answer = await handshake(port, path, **with_token(way, WRONG))
            assert (answer.status, answer.body) == (403, "invalid token\n"), (path, way)
        answer = await handshake(port, path)
        assert (answer.status, answer.body) == (401, "a token is required\n"), path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        # not a Bearer token: as good as none
        answer = await handshake(port, path, additional_headers={"Authorization": f"Basic {TOKEN_A}"})
        assert answer.status == 401, path
    assert server.active == 0
    n = len(DIALECTS)
    assert await refused(port, "auth_bad") == len(WAYS) * n
    assert await refused(port, "auth_missing") == 2 * n
    assert await refused(port, "origin") == 0
    # the plain pages need no token
    assert await get(port, "/healthz") == (200, "ok\n")
    # no token, good or bad, in any log of the server's (websockets' client logs its own request: not ours)
    server_side = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "refused an upgrade" in server_side
    for token in (TOKEN_A, TOKEN_B, WRONG):
        assert token not in server_side


async def test_a_token_passed_each_way_carries_a_whole_turn(make_server: Any, manifest: dict) -> None:
    """Admitted, the stream works as ever; the query's token is taken out and its other parameters still apply
    (μ-law at 8 kHz, named in the query around the token, comes back as μ-law at 8 kHz)."""
    server = await make_server(ReplyOnPause(echo), auth_tokens=TOKEN_A, stream=UNPACED)
    url = f"ws://127.0.0.1:{server.port}/ws"
    conv = await echo_turn(url, manifest, subprotocols=[f"wsstream.token.{TOKEN_A}"])
    assert conv.ws is not None and conv.ws.subprotocol == f"wsstream.token.{TOKEN_A}"
    await echo_turn(url, manifest, additional_headers={"Authorization": f"Bearer {TOKEN_A}"})
    mulaw = AudioFormat("mulaw", 8000)
    await echo_turn(f"{url}?encoding=mulaw&token={TOKEN_A}&sample_rate=8000", manifest, mulaw, start=False)


# ---- Twilio's signature ---------------------------------------------------------------------------------------

async def test_twilio_signed_upgrade_is_admitted_and_forged_ones_are_403(make_server: Any, manifest: dict,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server(ReplyOnPause(echo), auth_tokens=TOKEN_A, twilio_auth_token=TWILIO_KEY)
    port = server.port
    path = "/telephone/handler"
    url = f"ws://127.0.0.1:{port}{path}"  # no public_url: the URL is the Host header's, ws:// as this is not TLS
    good = twilio_signature(TWILIO_KEY, url)
    forged = {
        "another account's": twilio_signature("0" * 32, url),
        "another path's": twilio_signature(TWILIO_KEY, f"ws://127.0.0.1:{port}/telephony"),
        "another host's": twilio_signature(TWILIO_KEY, f"ws://evil.example:{port}{path}"),
        "a wss URL's": twilio_signature(TWILIO_KEY, f"wss://127.0.0.1:{port}{path}"),
        "garbage": "not base64 at all",
    }
    for what, signature in forged.items():
        answer = await handshake(port, path, additional_headers={"X-Twilio-Signature": signature})
        assert (answer.status, answer.body) == (403, "invalid Twilio signature\n"), what
    assert (await handshake(port, path)).status == 403  # no signature
    # our token is no substitute for Twilio's signature on Twilio's path
    assert (await handshake(port, path, **with_token("bearer", TOKEN_A))).status == 403
    # the signature covers the query: signed without it, sent with one
    answer = await handshake(port, path, "x=1", additional_headers={"X-Twilio-Signature": good})
    assert answer.status == 403
    assert await refused(port, "twilio_signature") == len(forged) + 3

    # signed, a call is served (a corpus turn in, its echo out)
    monkeypatch.setattr(twilio_peer, "connect", functools.partial(connect, additional_headers={
        "X-Twilio-Signature": good}))
    await twilio_call(url, manifest)

    # /telephony: a signature, when sent, is Twilio's and checked as such; without one a token is wanted
    recognising = f"ws://127.0.0.1:{port}/telephony"
    signed = {"additional_headers": {"X-Twilio-Signature": twilio_signature(TWILIO_KEY, recognising)}}
    assert (await handshake(port, "/telephony", **signed)).status == 101
    assert (await handshake(port, "/telephony", additional_headers={"X-Twilio-Signature": good})).status == 403
    assert (await handshake(port, "/telephony")).status == 401
    assert (await handshake(port, "/telephony", **with_token("query", TOKEN_A))).status == 101
    # the other paths still want our token
    assert (await handshake(port, "/ws", additional_headers={"X-Twilio-Signature": good})).status == 401


async def twilio_call(url: str, manifest: dict[str, Any], tls: ssl.SSLContext | None = None) -> TwilioPeer:
    """One Twilio call on ``url``: a corpus turn as μ-law 8 kHz media, its echo played back and marked."""
    name = "dialog_01.flac"
    turn = manifest["files"][name]["turns"][0]
    wire = encode(load_corpus(name, 8000)[(turn["start"] - 4800) // 2:(turn["end"] + 14400) // 2], "mulaw")
    async with TwilioPeer(url) as peer:
        await peer.send_audio(wire, realtime=False)
        await peer.send_silence_until(lambda p: p.replies and p.replies[-1].ended_by == "mark", 20)
        await peer.stop()
    reply = peer.replies[-1]
    assert {len(p) for _, p in reply.frames} == {160}  # Twilio's 20 ms frames
    assert len(reply.audio) >= 8000  # over a second of the turn, echoed
    return peer


# ---- behind nginx, TLS terminated there ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def nginx_tls(tmp: Path, listen: int, upstream: int, cert: Path, key: Path) -> Iterator[None]:
    """deploy/nginx.conf in front of one server, as tests/test_scale_out.py runs it, with TLS ended at nginx: its
    listen line given ``ssl`` and its commented certificate lines our test certificate."""
    nginx = require_program("nginx")
    tmp.mkdir()
    conf = nginx_config(tmp, listen, [upstream])
    site = tmp / "wsstream.conf"
    text, n1 = re.subn(rf"listen 127\.0\.0\.1:{listen};", f"listen 127.0.0.1:{listen} ssl;", site.read_text())
    text, n2 = re.subn(r"(?m)^\s*#\s*ssl_certificate\s+\S+;", f"    ssl_certificate {cert};", text)
    text, n3 = re.subn(r"(?m)^\s*#\s*ssl_certificate_key\s+\S+;", f"    ssl_certificate_key {key};", text)
    assert (n1, n2, n3) == (1, 1, 1), "deploy/nginx.conf no longer has the TLS lines this test turns on"
    site.write_text(text)
    args = ["-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    check = subprocess.run([nginx, "-t", *args], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


async def test_twilio_signature_behind_a_tls_terminating_nginx(make_server: Any, manifest: dict, tmp_path: Path,
                                                               certificate: tuple[Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Twilio calls wss://<nginx>/telephone/handler and signs that URL; the server behind sees ws://, and nginx's
    Host. With public_url set to the URL Twilio called the signature holds; without it, it cannot."""
    cert, key = certificate
    front = free_port()
    public = f"wss://127.0.0.1:{front}"
    url = public + "/telephone/handler"
    signed = {"X-Twilio-Signature": twilio_signature(TWILIO_KEY, url)}
    tls = ssl.create_default_context(cafile=str(cert))
    behind = await make_server(ReplyOnPause(echo), twilio_auth_token=TWILIO_KEY, public_url=public)
    naive = await make_server(ReplyOnPause(echo), twilio_auth_token=TWILIO_KEY)
    with nginx_tls(tmp_path / "public_url", front, behind.port, cert, key):
        answer = await handshake(front, "/telephone/handler", scheme="wss", tls=tls, additional_headers=signed)
        assert answer.status == 101
        forged = {"X-Twilio-Signature": twilio_signature("0" * 32, url)}
        answer = await handshake(front, "/telephone/handler", scheme="wss", tls=tls, additional_headers=forged)
        assert (answer.status, answer.body) == (403, "invalid Twilio signature\n")
        monkeypatch.setattr(twilio_peer, "connect", functools.partial(connect, additional_headers=signed, ssl=tls))
        await twilio_call(url, manifest)
    assert await refused(behind.port, "twilio_signature") == 1
    with nginx_tls(tmp_path / "no_public_url", front, naive.port, cert, key):
        answer = await handshake(front, "/telephone/handler", scheme="wss", tls=tls, additional_headers=signed)
        assert answer.status == 403
    assert await refused(naive.port, "twilio_signature") == 1


# ---- Origin -----------------------------------------------------------------------------------------------------

async def test_origin_allow_list(make_server: Any, manifest: dict) -> None:
    server = await make_server(ReplyOnPause(echo), allowed_origins="https://app.example.com, http://localhost:8000",
                               stream=UNPACED)
    port = server.port
    for path in ("/ws", "/websocket/offer", "/telephony"):
        assert (await handshake(port, path, origin="https://app.example.com")).status == 101
        assert (await handshake(port, path, origin="http://localhost:8000")).status == 101
        for origin in ("https://evil.example", "https://app.example.com.evil.example", "http://app.example.com",
                       "null"):
            answer = await handshake(port, path, origin=origin)
            assert (answer.status, answer.body) == (403, "origin not allowed\n"), (path, origin)
        assert (await handshake(port, path)).status == 101  # no Origin: not a browser
    assert await refused(port, "origin") == 3 * 4
    await echo_turn(f"ws://127.0.0.1:{port}/ws", manifest, origin="https://app.example.com")


# ---- per-address caps -------------------------------------------------------------------------------------------

async def test_open_connections_per_ip_are_capped(make_server: Any) -> None:
    server = await make_server(ReplyOnPause(echo), max_connections_per_ip=2)
    port = server.port
    held: list[ClientConnection] = []
    assert [(await handshake(port, "/ws", hold=held)).status for _ in range(2)] == [101, 101]
    answer = await handshake(port, "/ws")
    assert (answer.status, answer.body) == (429, "too many connections from your address\n")
    assert int(answer.headers["Retry-After"]) >= 1
    assert (await handshake(port, "/telephony")).status == 429  # every WebSocket path counts
    assert await refused(port, "ip_connections") == 2
    # the plain pages are not capped
    assert await get(port, "/healthz") == (200, "ok\n")
    # one closed: its slot is free again (once the server has seen the close)
    await held.pop().close()
    deadline = time.monotonic() + 5
    while (answer := await handshake(port, "/ws", hold=held)).status != 101:
        assert answer.status == 429 and time.monotonic() < deadline, answer
        await asyncio.sleep(0.05)
    assert (await handshake(port, "/ws")).status == 429
    for ws in held:
        await ws.close()


async def test_handshakes_per_ip_per_second_are_capped(make_server: Any) -> None:
    rate = 4.0
    server = await make_server(ReplyOnPause(echo), max_handshakes_per_ip_per_s=rate)
    port = server.port
    t0 = time.monotonic()
    admitted = 0
    while (answer := await handshake(port, "/ws")).status == 101:
        admitted += 1
        assert admitted < 50, "never refused"
    elapsed = time.monotonic() - t0
    assert (answer.status, answer.body) == (429, "too many handshakes from your address\n")
    assert int(answer.headers["Retry-After"]) >= 1
    # a burst of one second's worth, plus what refilled meanwhile
    assert rate <= admitted <= rate + rate * elapsed + 1, (admitted, elapsed)
    assert await refused(port, "ip_rate") == 1
    assert await get(port, "/healthz") == (200, "ok\n")  # pages: not limited
    await asyncio.sleep(1.1 / rate)  # one handshake's worth refilled
    assert (await handshake(port, "/ws")).status == 101
    assert (await handshake(port, "/ws")).status == 429


# ---- AccessPolicy, sans I/O -------------------------------------------------------------------------------------

def policy(**config: Any) -> AccessPolicy:
    return AccessPolicy(ServerConfig(**config), Metrics())


def check(p: AccessPolicy, path: str = "/ws", query: str = "", headers: list[tuple[str, str]] | None = None,
          ip: str = "192.0.2.1", now: float = 0.0, **kwargs: Any) -> Admit | Refusal:
    return p.check(path, query, headers or [], ip, now, **kwargs)


def test_off_by_default_everything_is_admitted() -> None:
    p = policy()
    assert not p.enabled
    assert check(p, query="encoding=mulaw") == Admit("encoding=mulaw")
    assert check(p, query="token=abc&x=1") == Admit("x=1")  # a stray token is still not passed on
    assert p.tracked_ips == 0


def test_tokens_each_way_and_what_the_dialect_sees() -> None:
    p = policy(auth_tokens=(TOKEN_A, TOKEN_B))
    for token in (TOKEN_A, TOKEN_B):
        assert check(p, headers=[("Authorization", f"Bearer {token}")]) == Admit("")
        assert check(p, headers=[("authorization", f"bearer   {token}")]) == Admit("")
        assert check(p, query=f"encoding=mulaw&token={token}&sample_rate=8000") == Admit(
            "encoding=mulaw&sample_rate=8000")
        offered = [("Sec-WebSocket-Protocol", f"chat, wsstream.token.{WRONG}, wsstream.token.{token}")]
        assert check(p, headers=offered) == Admit("", f"wsstream.token.{token}")  # the one that matched
    missing = check(p)
    assert isinstance(missing, Refusal) and (missing.status, missing.metric) == (401, "auth_missing")
    assert dict(missing.headers)["WWW-Authenticate"].startswith("Bearer")
    for bad in ([("Authorization", f"Bearer {WRONG}")], [("Authorization", f"Bearer {TOKEN_A[:-1]}")],
                [("Sec-WebSocket-Protocol", f"wsstream.token.{TOKEN_A}x")]):
        verdict = check(p, headers=bad)
        assert isinstance(verdict, Refusal) and (verdict.status, verdict.metric) == (403, "auth_bad"), bad
        assert TOKEN_A not in verdict.reason
    assert isinstance(check(p, query=f"token={WRONG}"), Refusal)
    assert check(p, query=f"token={WRONG}&token={TOKEN_B}") == Admit("")  # any presented token that is good
    assert check(p, headers=[("Sec-WebSocket-Protocol", "chat")]).status == 401  # type: ignore[union-attr]
    assert p.metrics is not None and p.metrics.count("handshakes_refused", reason="auth_bad") == 4


def test_split_token_keeps_the_rest_of_the_query_as_sent() -> None:
    assert split_token("a=%2F1&token=x%2By&b=+2&token=z") == ("a=%2F1&b=+2", ["x+y", "z"])
    assert split_token("tokens=1&mytoken=2") == ("tokens=1&mytoken=2", [])
    assert split_token("") == ("", [])


def test_twilio_signature_rules() -> None:
    url = "wss://voice.example.com/telephone/handler"
    signature = twilio_signature(TWILIO_KEY, url)
    p = policy(twilio_auth_token=TWILIO_KEY, public_url="wss://voice.example.com/", auth_tokens=TOKEN_A)
    behind_proxy = [("Host", "10.0.0.5:8000"), ("X-Twilio-Signature", signature)]  # what the server sees
    assert check(p, "/telephone/handler", headers=behind_proxy) == Admit("")
    # the URL with the scheme's default port spelt out signs the same call (Twilio's validators accept both)
    with_port = twilio_signature(TWILIO_KEY, "wss://voice.example.com:443/telephone/handler")
    assert check(p, "/telephone/handler", headers=[("X-Twilio-Signature", with_port)]) == Admit("")
    for bad in ([], [("X-Twilio-Signature", twilio_signature("f" * 32, url))],
                [("X-Twilio-Signature", signature), ("X-Twilio-Signature", signature)],
                [("X-Twilio-Signature", twilio_signature(TWILIO_KEY, "wss://voice.example.com:8443/telephone/handler"))],
                [("Authorization", f"Bearer {TOKEN_A}")]):
        verdict = check(p, "/telephone/handler", headers=bad)
        assert isinstance(verdict, Refusal) and (verdict.status, verdict.metric) == (403, "twilio_signature"), bad
    # the query is signed too
    signed_query = twilio_signature(TWILIO_KEY, url + "?a=1")
    assert check(p, "/telephone/handler", "a=1", [("X-Twilio-Signature", signed_query)]) == Admit("a=1")
    assert isinstance(check(p, "/telephone/handler", "a=2", [("X-Twilio-Signature", signed_query)]), Refusal)
    # no public_url: the Host header and the connection's scheme make the URL; without a Host, nothing validates
    q = policy(twilio_auth_token=TWILIO_KEY)
    host = [("Host", "voice.example.com"), ("X-Twilio-Signature", signature)]
    assert check(q, "/telephone/handler", headers=host, scheme="wss") == Admit("")
    assert isinstance(check(q, "/telephone/handler", headers=host, scheme="ws"), Refusal)
    assert isinstance(check(q, "/telephone/handler", headers=[("X-Twilio-Signature", signature)]), Refusal)
    # a prefixed mount: the rule follows the dialect's route, the URL the path as sent
    prefixed = twilio_signature(TWILIO_KEY, "wss://voice.example.com/voice/telephone/handler")
    assert check(p, "/voice/telephone/handler", headers=[("X-Twilio-Signature", prefixed)],
                 route="/telephone/handler") == Admit("")
    assert isinstance(check(p, "/voice/telephone/handler", route="/telephone/handler"), Refusal)


def test_origin_rules() -> None:
    p = policy(allowed_origins="https://App.Example.com/,http://localhost:8000")
    assert check(p, headers=[("Origin", "https://app.example.com")]) == Admit("")
    assert check(p, headers=[("Origin", "HTTP://LOCALHOST:8000")]) == Admit("")
    assert check(p) == Admit("")
    for origin in ("https://app.example.com:444", "http://localhost:8001", "null", ""):
        verdict = check(p, headers=[("Origin", origin)])
        assert isinstance(verdict, Refusal) and (verdict.status, verdict.metric) == (403, "origin"), origin
    two = [("Origin", "https://app.example.com"), ("Origin", "https://evil.example")]
    assert isinstance(check(p, headers=two), Refusal)


def test_handshake_rate_is_a_token_bucket_per_address() -> None:
    p = policy(max_handshakes_per_ip_per_s=2.0)
    assert [isinstance(check(p, now=0.0), Admit) for _ in range(3)] == [True, True, False]  # a burst of 2
    verdict = check(p, now=0.1)
    assert isinstance(verdict, Refusal) and (verdict.status, verdict.metric) == (429, "ip_rate")
    assert dict(verdict.headers)["Retry-After"] == "1"
    assert isinstance(check(p, ip="192.0.2.2", now=0.1), Admit)  # another address has its own bucket
    assert isinstance(check(p, now=0.5), Admit)  # refilled at 2 per second
    assert isinstance(check(p, now=0.6), Refusal)
    assert [isinstance(check(p, now=100.0), Admit) for _ in range(3)] == [True, True, False]  # never beyond the burst
    slow = policy(max_handshakes_per_ip_per_s=0.25)  # one every 4 s
    assert isinstance(check(slow, now=0.0), Admit)
    verdict = check(slow, now=1.0)
    assert isinstance(verdict, Refusal) and dict(verdict.headers)["Retry-After"] == "3"


def test_connections_per_address_are_held_until_closed() -> None:
    p = policy(max_connections_per_ip=2)
    first, second = check(p), check(p)
    assert isinstance(first, Admit) and first.ip == "192.0.2.1" and isinstance(second, Admit)
    verdict = check(p)
    assert isinstance(verdict, Refusal) and (verdict.status, verdict.metric) == (429, "ip_connections")
    assert isinstance(check(p, ip="192.0.2.9"), Admit)
    p.closed("192.0.2.1")
    assert isinstance(check(p), Admit)
    assert p.open_connections("192.0.2.1") == 2
    for _ in range(3):
        p.closed("192.0.2.1")
    p.closed("192.0.2.9")
    assert p.open_connections("192.0.2.1") == 0 and p.tracked_ips == 0  # forgotten once idle
    # refused by an earlier rule: no slot taken
    q = policy(max_connections_per_ip=1, auth_tokens=TOKEN_A)
    assert isinstance(check(q), Refusal) and q.open_connections("192.0.2.1") == 0


def test_memory_is_bounded_whatever_the_number_of_addresses() -> None:
    p = AccessPolicy(ServerConfig(max_handshakes_per_ip_per_s=1.0, max_connections_per_ip=1), max_ips=100)
    held = [f"10.0.0.{i}" for i in range(5)]
    for ip in held:
        assert isinstance(check(p, ip=ip), Admit)
    for i in range(5000):
        check(p, ip=f"10.1.{i // 256}.{i % 256}", now=i * 0.001)
        p.closed(f"10.1.{i // 256}.{i % 256}")
    assert p.tracked_ips <= 100 + len(held)
    assert all(p.open_connections(ip) == 1 for ip in held)  # an address holding connections is never forgotten
    assert isinstance(check(p, ip=held[0], now=10.0), Refusal)


def test_config_validation_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ({"auth_tokens": "short"}, {"auth_tokens": "a" * 20 + "/="}, {"auth_tokens": "a" * 20 + " b"},
                {"public_url": "https://x.example"}, {"public_url": "wss://x.example/?a=1"},
                {"allowed_origins": "app.example.com"}, {"allowed_origins": "https://x.example/path"},
                {"max_connections_per_ip": -1}, {"max_handshakes_per_ip_per_s": -0.5}, {"keyfile": "k.pem"}):
        with pytest.raises(ValueError):
            ServerConfig(**bad)
    config = ServerConfig(auth_tokens=f" {TOKEN_A} ,{TOKEN_B},", twilio_auth_token=TWILIO_KEY)
    assert config.auth_tokens == (TOKEN_A, TOKEN_B)
    assert TOKEN_A not in repr(config) and TWILIO_KEY not in repr(config)
    with pytest.raises(ValueError) as exc:
        ServerConfig(auth_tokens=f"{TOKEN_A},tooshort")
    assert "tooshort" not in str(exc.value) and TOKEN_A not in str(exc.value)
    # from the environment, so that they never show in a process list
    monkeypatch.setenv("WSSTREAM_TOKENS", f"{TOKEN_B},{TOKEN_A}")
    monkeypatch.setenv("WSSTREAM_TWILIO_AUTH_TOKEN", TWILIO_KEY)
    config = ServerConfig()
    assert config.auth_tokens == (TOKEN_B, TOKEN_A) and config.twilio_auth_token == TWILIO_KEY
    assert ServerConfig(auth_tokens=TOKEN_A).auth_tokens == (TOKEN_A,)  # given beats the environment


def test_refusals_show_in_metrics_from_the_start() -> None:
    metrics = Metrics()
    p = AccessPolicy(ServerConfig(auth_tokens=TOKEN_A), metrics)
    text = metrics.render()
    for reason in ("auth_missing", "auth_bad", "twilio_signature", "origin", "ip_connections", "ip_rate"):
        assert f'wsstream_handshakes_refused_total{{reason="{reason}"}} 0.0' in text
    check(p)
    assert 'wsstream_handshakes_refused_total{reason="auth_missing"} 1.0' in metrics.render()
    assert text.count("# TYPE wsstream_handshakes_refused_total counter") == 1
