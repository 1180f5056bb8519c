"""Scripted telephone bridges, one wire per provider (see peers.base): what tests and benchmarks call."""

from peers.exotel import ExotelWire
from peers.plivo import PlivoWire
from peers.telnyx import TelnyxWire
from peers.twilio import TwilioWire
from peers.vonage import VonageWire

WIRES = {"twilio": TwilioWire, "telnyx": TelnyxWire, "plivo": PlivoWire, "exotel": ExotelWire,
         "vonage": VonageWire}
