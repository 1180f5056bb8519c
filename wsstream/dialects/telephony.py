"""One endpoint for every telephone bridge (``/telephony``): the call's first messages say which it is.

A user points Twilio, Telnyx, Plivo, Exotel and Vonage at the same URL. Each
provider's dialect knows its own opening message (``recognises``): a ``start``
with that provider's field names, or Vonage's ``websocket:connected``. Messages
several providers share (a bare ``connected``) are held, a few at most, until a
decisive one arrives; then the call is handed to that dialect, the held
messages first, and from then on this class only forwards. Anything else as a
first message is a clear error and the connection closes: there is nobody to
answer in a dialect we do not know.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Protocol

from wsstream.codecs import AudioFormat
from wsstream.config import StreamConfig
from wsstream.dialects.base import Dialect, ProtocolError, StreamSetup, load_json_object, telephony_setup
from wsstream.events import AudioIn, InEvent, Notice, OutEvent, Start
from wsstream.reply import ReplyOnPause

MAX_HELD = 2  # shared opening messages (``connected``) held before one that names the provider


class Provider(Dialect, Protocol):
    @staticmethod
    def recognises(msg: dict[str, Any]) -> bool: ...


class TelephonyDialect:
    name = "telephony"
    path = "/telephony"
    binary_audio = False  # until recognised nobody's binary is audio; after, ``parse`` forwards it
    providers: ClassVar[tuple[type[Provider], ...]] = ()

    def __init__(self) -> None:
        self.inner: Provider | None = None
        self._held: list[str | bytes] = []
        self._query = ""
        self._app: ReplyOnPause | None = None
        self._config: StreamConfig | None = None

    def setup(self, query: str, app: ReplyOnPause, config: StreamConfig) -> StreamSetup:
        """What every provider's setup gives (20 ms padded frames, paced); each one's start sets the format."""
        self._query, self._app, self._config = query, app, config
        return telephony_setup(AudioFormat("mulaw", 8000), config)

    def audio(self, message: bytes) -> bytes:
        raise ProtocolError("binary frame before the call's provider is known")

    def parse(self, message: str | bytes) -> list[InEvent]:
        inner = self.inner
        if inner is not None:
            if inner.binary_audio and type(message) is bytes:
                return [AudioIn(inner.audio(message))]
            return inner.parse(message)
        return self._recognise(message)

    def _recognise(self, message: str | bytes) -> list[InEvent]:
        names = ", ".join(p.name for p in self.providers)
        if isinstance(message, bytes):
            raise ProtocolError(f"binary first message; /telephony takes calls from {names}", fatal=True)
        try:
            msg = load_json_object(message)
        except ProtocolError:
            raise ProtocolError(f"first message not a JSON object; /telephony takes calls from {names}",
                                fatal=True) from None
        for provider in self.providers:
            if provider.recognises(msg):
                return self._hand_over(provider, message)
        if msg.get("event") == "connected" and len(self._held) < MAX_HELD:
            self._held.append(message)  # Twilio and Telnyx both open so: their start tells them apart
            return []
        event = str(msg.get("event", msg.get("type", "")))[:24]
        raise ProtocolError(f"unknown first message {event!r}; /telephony takes calls from {names}", fatal=True)

    def _hand_over(self, provider: type[Provider], message: str | bytes) -> list[InEvent]:
        inner = self.inner = provider()
        assert self._app is not None and self._config is not None
        events: list[InEvent] = [Notice(f"recognised as a {provider.name} call", level=logging.INFO)]
        held, self._held = self._held, []
        for m in [*held, message]:
            try:
                events.extend(inner.parse(m))
            except ProtocolError as exc:
                events.append(Notice(f"{provider.name}: {exc}", "telephony_held_message_errors"))
        # the reply function sees which provider the call came from; the frames are the ones it wants
        frame_ms = inner.setup(self._query, self._app, self._config).config.frame_ms
        return [dataclasses.replace(e, context={**e.context, "provider": provider.name},
                                    frame_ms=e.frame_ms if e.frame_ms is not None else frame_ms)
                if isinstance(e, Start) else e for e in events]

    def serialize(self, event: OutEvent) -> str | bytes | None:
        if self.inner is None:
            return None  # no provider's words yet: the driver logs it
        return self.inner.serialize(event)


def recognising(providers: tuple[type[Provider], ...]) -> type[TelephonyDialect]:
    """The ``/telephony`` dialect over these providers (the registry's list: one line per provider)."""
    return type("TelephonyDialect", (TelephonyDialect,), {"providers": tuple(providers),
                                                          "__doc__": TelephonyDialect.__doc__})
