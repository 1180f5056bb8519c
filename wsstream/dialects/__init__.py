"""Wire dialects: one small module per protocol, registered here by the path it is served on.

Adding a dialect is writing one module with a class that satisfies
``wsstream.dialects.base.Dialect`` and adding it to ``DIALECTS``.
"""

from wsstream.dialects.base import Dialect, ProtocolError, StreamSetup
from wsstream.dialects.exotel import ExotelDialect
from wsstream.dialects.fastrtc import FastrtcDialect
from wsstream.dialects.native import NativeDialect
from wsstream.dialects.plivo import PlivoDialect
from wsstream.dialects.telephony import Provider, TelephonyDialect, recognising
from wsstream.dialects.telnyx import TelnyxDialect
from wsstream.dialects.twilio import TwilioDialect
from wsstream.dialects.vonage import VonageDialect

# the telephone bridges, each on its own path and all behind /telephony (which tells them apart)
PROVIDERS: tuple[type[Provider], ...] = (TwilioDialect, TelnyxDialect, PlivoDialect, ExotelDialect,
                                             VonageDialect)

DIALECTS: dict[str, type[Dialect]] = {d.path: d for d in (NativeDialect, FastrtcDialect, *PROVIDERS,
                                                             recognising(PROVIDERS))}

__all__ = ["DIALECTS", "PROVIDERS", "Dialect", "ExotelDialect", "FastrtcDialect", "NativeDialect", "PlivoDialect",
           "ProtocolError", "StreamSetup", "TelephonyDialect", "TelnyxDialect", "TwilioDialect", "VonageDialect"]
