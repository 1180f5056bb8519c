"""Scripted telephone bridges, one wire per provider (see peers.base): what tests and benchmarks call."""

from peers.twilio import TwilioWire

WIRES = {"twilio": TwilioWire}
