"""Wire dialects: one small class per protocol, translating messages to and from session events."""

from wsstream.dialects.base import Dialect, ProtocolError
from wsstream.dialects.native import NativeDialect

__all__ = ["Dialect", "NativeDialect", "ProtocolError"]
