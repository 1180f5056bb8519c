"""Who may open a WebSocket: tokens, Twilio's signature, Origin and per-address caps, decided at the upgrade.

Sans-I/O, so that both drivers decide alike: each hands ``AccessPolicy.check`` what it
knows of an upgrade request (path, query, headers, the peer's address, the time)
before any stream is opened, and either answers the ``Refusal`` (its HTTP status,
short text and headers) or goes on with the ``Admit`` (the query the dialect may see,
the subprotocol to echo). Every rule is off until ``ServerConfig`` sets it.

The rules, in this order (the cheapest first, and the handshake rate before any
secret is compared, so that guessing tokens is slowed down by it too):

1. ``max_handshakes_per_ip_per_s``: a token bucket per address, bursts of one
   second's worth; over it, 429 (``ip_rate``).
2. ``allowed_origins``: a handshake whose ``Origin`` is not listed is 403
   (``origin``). One without ``Origin`` passes: only browsers send it, and it is
   there to stop other sites' pages from using a visitor's browser; other clients
   are what the tokens are for.
3. Credentials. On Twilio's path, with ``twilio_auth_token`` set: a valid
   ``X-Twilio-Signature`` instead of a token (Twilio's stream URLs can carry no query
   and Twilio sends no header of ours), else 403 (``twilio_signature``). On
   ``/telephony`` a signature, when sent, is checked the same way, and without one the
   token rule applies. Everywhere else, with ``auth_tokens`` set: a token as
   ``Authorization: Bearer <t>``, a ``token`` query parameter, or the subprotocol
   ``wsstream.token.<t>``; none is 401 with ``WWW-Authenticate: Bearer``
   (``auth_missing``), a wrong one 403 (``auth_bad``).
4. ``max_connections_per_ip``: an address holding that many admitted connections
   gets 429 (``ip_connections``). An ``Admit`` holds a slot until ``closed(ip)``.

Tokens are compared in constant time with every configured token (no early exit that
would tell which matched), and never logged; a ``token`` query parameter is taken out
of the query the dialect sees. Memory is bounded: at most ``MAX_TRACKED_IPS``
addresses' handshake buckets (the least recently seen are forgotten, which at worst
gives one a fresh burst), and an open count only for addresses holding connections.
Behind a proxy every client has the proxy's address, so the per-address caps then
cap the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from wsstream.config import ServerConfig
from wsstream.metrics import Metrics

log = logging.getLogger(__name__)

TOKEN_SUBPROTOCOL = "wsstream.token."  # a browser's way: new WebSocket(url, ["wsstream.token." + token])
TOKEN_PARAM = "token"
TWILIO_PATH = "/telephone/handler"
RECOGNISING_PATH = "/telephony"
METRIC = "handshakes_refused"  # wsstream_handshakes_refused{reason="..."} in /metrics
REASONS = ("auth_missing", "auth_bad", "twilio_signature", "origin", "ip_connections", "ip_rate")
MAX_TRACKED_IPS = 10_000
MAX_CANDIDATES = 8  # credentials looked at per request (each is compared with every token)
CONNECTIONS_RETRY_S = 5
_DEFAULT_PORTS = {"ws": 80, "wss": 443, "http": 80, "https": 443}
_WANTED = ("authorization", "sec-websocket-protocol", "origin", "x-twilio-signature", "host")


@dataclass(frozen=True)
class Admit:
    """Go on with the handshake."""

    query: str  # what the dialect sees of the query (no token in it)
    subprotocol: str | None = None  # echo it in Sec-WebSocket-Protocol (browsers fail the connection otherwise)
    ip: str | None = None  # a connection slot of this address is held: give it back with ``closed(ip)``


@dataclass(frozen=True)
class Refusal:
    """Answer the upgrade with this instead of a 101."""

    status: int
    reason: str
    metric: str  # the ``reason`` label of wsstream_handshakes_refused
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def body(self) -> str:
        return self.reason + "\n"


def split_token(query: str) -> tuple[str, list[str]]:
    """The query without its ``token`` parameters (the rest byte for byte as sent), and their values."""
    if TOKEN_PARAM not in query:
        return query, []
    kept, tokens = [], []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == TOKEN_PARAM:
            tokens.append(unquote_plus(value))
        else:
            kept.append(part)
    return "&".join(kept), tokens


def _digest(value: str) -> bytes:
    """Equal-length values to compare, so that not even a token's length shows in the timing."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _port_variants(url: str) -> list[str]:
    """``url`` as given and with its scheme's default port added or taken out: Twilio's own validators accept
    either spelling, as the URL a provider signs may or may not name the port."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return [url]
    if default is None or (port is not None and port != default):
        return [url]
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    other = parts._replace(netloc=host if port is not None else f"{host}:{default}").geturl()
    return [url, other]


class AccessPolicy:
    """The access rules of one server (see the module's docstring); ``check`` each upgrade, ``closed`` each end."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None, *,
                 max_ips: int = MAX_TRACKED_IPS) -> None:
        self.metrics = metrics
        self._tokens = tuple(_digest(t) for t in config.auth_tokens)
        self._twilio_key = config.twilio_auth_token.encode()
        self._public_url = config.public_url
        self._origins = frozenset(config.allowed_origins)
        self._max_conns = config.max_connections_per_ip
        self._rate = float(config.max_handshakes_per_ip_per_s)
        self._burst = max(1.0, self._rate)
        self._max_ips = max_ips
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # ip -> [tokens, last time], oldest first
        self._open: dict[str, int] = {}  # ip -> connections admitted and not yet closed
        self.enabled = bool(self._tokens or self._twilio_key or self._origins or self._max_conns or self._rate)
        if metrics is not None:
            metrics.declare(METRIC, "reason", REASONS)
        if self._tokens and not self._twilio_key:
            log.warning("auth_tokens is set without twilio_auth_token: Twilio cannot present a token (its stream "
                        "URLs take no query), so %s admits only clients that send one", TWILIO_PATH)

    @property
    def tracked_ips(self) -> int:
        """Addresses the policy holds state for (bounded: see ``max_ips``)."""
        return len(self._buckets.keys() | self._open.keys())

    def open_connections(self, ip: str) -> int:
        return self._open.get(ip, 0)

    def opened(self, ip: str) -> None:
        self._open[ip] = self._open.get(ip, 0) + 1

    def closed(self, ip: str) -> None:
        """A connection admitted with ``Admit.ip == ip`` is over."""
        left = self._open.get(ip, 0) - 1
        if left > 0:
            self._open[ip] = left
        else:
            self._open.pop(ip, None)

    def check(self, path: str, query: str, headers: Iterable[tuple[str, str]], ip: str, now: float, *,
              scheme: str = "ws", route: str | None = None) -> Admit | Refusal:
        """Admit or refuse one upgrade request. ``path`` and ``query`` are as the client sent them (the Twilio
        signature is over them), ``route`` the dialect's path when it differs (a prefixed mount), ``scheme``
        ``wss`` when the connection is TLS, ``now`` a monotonic time in seconds."""
        if not self.enabled:
            return Admit(split_token(query)[0])
        route = route or path
        if self._rate and not self._take(ip, now):
            retry = math.ceil((1 - self._buckets[ip][0]) / self._rate)
            return self._refuse(429, "too many handshakes from your address", "ip_rate", ip, route,
                                ("Retry-After", str(max(1, retry))))
        found: dict[str, list[str]] = {}
        for name, value in headers:
            key = name.lower()
            if key in _WANTED:
                found.setdefault(key, []).append(value)
        origins = found.get("origin")
        if self._origins and origins is not None and (
                len(origins) != 1 or origins[0].strip().lower().rstrip("/") not in self._origins):
            return self._refuse(403, "origin not allowed", "origin", ip, route)
        rest, query_tokens = split_token(query)
        subprotocol = None
        if self._twilio_key and (route == TWILIO_PATH or (route == RECOGNISING_PATH and "x-twilio-signature" in found)):
            if not self._twilio_valid(found, path, query, scheme):
                return self._refuse(403, "invalid Twilio signature", "twilio_signature", ip, route)
        elif self._tokens:
            verdict = self._token(found, query_tokens, ip, route)
            if isinstance(verdict, Refusal):
                return verdict
            subprotocol = verdict
        held = None
        if self._max_conns:
            if self._open.get(ip, 0) >= self._max_conns:
                return self._refuse(429, "too many connections from your address", "ip_connections", ip, route,
                                    ("Retry-After", str(CONNECTIONS_RETRY_S)))
            self.opened(ip)
            held = ip
        return Admit(rest, subprotocol, held)

    # ---- the rules -------------------------------------------------------------------------

    def _take(self, ip: str, now: float) -> bool:
        """One handshake from ``ip``'s bucket, refilled at the configured rate since it was last seen."""
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = [self._burst, now]
            while len(self._buckets) > self._max_ips:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
            bucket[0] = min(self._burst, bucket[0] + max(0.0, now - bucket[1]) * self._rate)
            bucket[1] = now
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True

    def _token(self, found: dict[str, list[str]], query_tokens: list[str], ip: str, route: str
               ) -> str | Refusal | None:
        """Admitted (the subprotocol to echo, if the token came as one) or refused, on the tokens presented."""
        candidates: list[tuple[str, str | None]] = []
        for value in found.get("authorization", ()):
            kind, _, credential = value.strip().partition(" ")
            if kind.lower() == "bearer" and credential.strip():
                candidates.append((credential.strip(), None))
        candidates += [(token, None) for token in query_tokens]
        for value in found.get("sec-websocket-protocol", ()):
            for offered in value.split(","):
                offered = offered.strip()
                if offered.startswith(TOKEN_SUBPROTOCOL):
                    candidates.append((offered[len(TOKEN_SUBPROTOCOL):], offered))
        if not candidates:
            return self._refuse(401, "a token is required", "auth_missing", ip, route,
                                ("WWW-Authenticate", 'Bearer realm="wsstream"'))
        admitted, echo = False, None
        for candidate, subprotocol in candidates[:MAX_CANDIDATES]:
            digest = _digest(candidate)
            match = False
            for token in self._tokens:  # every one, whatever the outcome
                match |= hmac.compare_digest(digest, token)
            admitted |= match
            if match and subprotocol is not None and echo is None:
                echo = subprotocol
        if not admitted:
            return self._refuse(403, "invalid token", "auth_bad", ip, route)
        return echo

    def _twilio_valid(self, found: dict[str, list[str]], path: str, query: str, scheme: str) -> bool:
        """Twilio's request validation for a WebSocket upgrade: base64 of the HMAC-SHA1, keyed with the auth token,
        of the URL Twilio called (a GET: no parameters follow it). That URL is ``public_url`` plus the path and
        query when configured (behind a proxy the Host and scheme we see are not what Twilio called), else the
        Host header's."""
        signatures = found.get("x-twilio-signature", [])
        if len(signatures) != 1:
            return False
        if self._public_url:
            base = self._public_url
        else:
            hosts = found.get("host", [])
            if len(hosts) != 1:
                return False
            base = f"{scheme}://{hosts[0].strip()}"
        url = base + path + ("?" + query if query else "")
        given = signatures[0].strip().encode("utf-8", "surrogateescape")
        valid = False
        for candidate in _port_variants(url):
            mac = hmac.new(self._twilio_key, candidate.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
            valid |= hmac.compare_digest(base64.b64encode(mac), given)
        return valid

    def _refuse(self, status: int, reason: str, metric: str, ip: str, route: str,
                *headers: tuple[str, str]) -> Refusal:
        if self.metrics is not None:
            self.metrics.inc_labelled(METRIC, metric)
        # (at debug level: a flood of refused handshakes must not flood the log too)
        log.debug("refused an upgrade on %s from %s: %s", route, ip or "?", metric)
        return Refusal(status, reason, metric, headers)


def policy_for(hub: Any) -> AccessPolicy:
    """The policy of ``hub`` (from its config, counted in its metrics), kept on the hub: one per hub, so every
    endpoint mounted from it, in any number of apps, shares the per-address counts."""
    policy = getattr(hub, "_access_policy", None)
    if policy is None:
        policy = hub._access_policy = AccessPolicy(hub.config, hub.metrics)
    return policy
