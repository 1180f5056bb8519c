"""Just enough of the ONNX protobuf encoding to read a model's weights and write a small graph.

We restate Silero's weights as a graph that onnxruntime runs efficiently on
large batches (see ``vad.restated``). Reading initializers and writing the few
message types that needs by hand keeps the ``onnx`` package (and its protobuf
runtime) out of our dependencies. Field numbers follow ``onnx.proto`` (proto2); repeated scalars
are written unpacked, which every protobuf parser accepts.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

FLOAT = 1  # TensorProto.DataType
INT64 = 7
_DTYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}

# AttributeProto.AttributeType
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement, as protobuf writes negative varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _int(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _bytes(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _key(number, 2) + _varint(len(data)) + data


def _float(number: int, value: float) -> bytes:
    return _key(number, 5) + struct.pack("<f", value)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of one message; skips nothing silently."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire_type, value
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire_type, buf[pos:pos + length]
            pos += length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            yield number, wire_type, buf[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _read_tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    name, data_type, raw, floats = "", FLOAT, b"", b""
    for number, wire_type, value in _fields(buf):
        if number == 1 and wire_type == 0:
            dims.append(int(value))  # type: ignore[arg-type]
        elif number == 1:  # packed dims
            pos, packed = 0, bytes(value)  # type: ignore[arg-type]
            while pos < len(packed):
                dim, pos = _read_varint(packed, pos)
                dims.append(dim)
        elif number == 2:
            data_type = int(value)  # type: ignore[arg-type]
        elif number == 8:
            name = bytes(value).decode()  # type: ignore[arg-type]
        elif number == 9:
            raw = bytes(value)  # type: ignore[arg-type]
        elif number == 4:
            floats += bytes(value) if wire_type == 2 else value  # type: ignore[operator]
    dtype = {FLOAT: np.dtype("<f4"), INT64: np.dtype("<i8")}.get(data_type)
    if dtype is None:
        return name, np.empty(0)
    data = raw or (floats if data_type == FLOAT else b"")
    if len(data) != int(np.prod(dims)) * dtype.itemsize:  # a form we do not read (int64_data, ...)
        return name, np.empty(0)
    return name, np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(dims)


def _graph_tensors(graph: bytes, found: dict[str, np.ndarray]) -> None:
    for number, _, item in _fields(graph):
        if number == 5:  # initializer
            name, array = _read_tensor(bytes(item))  # type: ignore[arg-type]
            found[name] = array
        elif number == 1:  # node: Constant values, and subgraphs (If branches) of any node
            op_type, outputs, attrs = "", [], []
            for n_number, _, n_item in _fields(bytes(item)):  # type: ignore[arg-type]
                if n_number == 2:
                    outputs.append(bytes(n_item).decode())  # type: ignore[arg-type]
                elif n_number == 4:
                    op_type = bytes(n_item).decode()  # type: ignore[arg-type]
                elif n_number == 5:
                    attrs.append(bytes(n_item))  # type: ignore[arg-type]
            for attr in attrs:
                for a_number, _, a_item in _fields(attr):
                    if a_number == 5 and op_type == "Constant" and outputs:
                        found[outputs[0]] = _read_tensor(bytes(a_item))[1]  # type: ignore[arg-type]
                    elif a_number == 6:
                        _graph_tensors(bytes(a_item), found)  # type: ignore[arg-type]


def read_tensors(model: bytes) -> dict[str, np.ndarray]:
    """Every named float32/int64 tensor of a serialized ModelProto: initializers and Constant
    outputs, in the main graph and in subgraphs."""
    found: dict[str, np.ndarray] = {}
    for number, _, graph in _fields(model):
        if number == 7:
            _graph_tensors(bytes(graph), found)  # type: ignore[arg-type]
    return found


def tensor(name: str, array: np.ndarray) -> bytes:
    """A TensorProto holding ``array`` as little-endian raw data."""
    dtype = _DTYPES[array.dtype]
    body = b"".join(_int(1, d) for d in array.shape)
    body += _int(2, dtype) + _bytes(8, name) + _bytes(9, array.astype(array.dtype.newbyteorder("<")).tobytes(order="C"))
    return body


def attribute(name: str, value: int | float | str | list[int]) -> bytes:
    """An AttributeProto; the type follows the Python value."""
    body = _bytes(1, name)
    if isinstance(value, bool | int):
        body += _int(3, int(value)) + _int(20, _ATTR_INT)
    elif isinstance(value, float):
        body += _float(2, value) + _int(20, _ATTR_FLOAT)
    elif isinstance(value, str):
        body += _bytes(4, value) + _int(20, _ATTR_STRING)
    else:
        body += b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)
    return body


def value_info(name: str, elem_type: int, shape: list[int | str]) -> bytes:
    """A ValueInfoProto for a graph input or output; str dims are symbolic."""
    dims = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    tensor_type = _int(1, elem_type) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


@dataclass
class GraphBuilder:
    """Collects nodes and initializers; ``model()`` returns the serialized ModelProto."""

    name: str
    opset: int = 17
    _nodes: list[bytes] = field(default_factory=list)
    _initializers: list[bytes] = field(default_factory=list)
    _inputs: list[bytes] = field(default_factory=list)
    _outputs: list[bytes] = field(default_factory=list)
    _count: int = 0

    def input(self, name: str, shape: list[int | str], elem_type: int = FLOAT) -> str:
        self._inputs.append(value_info(name, elem_type, shape))
        return name

    def output(self, name: str, shape: list[int | str], elem_type: int = FLOAT) -> None:
        self._outputs.append(value_info(name, elem_type, shape))

    def const(self, array: np.ndarray | list[int], name: str | None = None) -> str:
        """An initializer; Python int lists become int64 tensors (shapes, axes, pads)."""
        arr = np.asarray(array, dtype=np.int64) if isinstance(array, list) else array
        self._count += 1
        name = name or f"c{self._count}"
        self._initializers.append(tensor(name, arr))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | None = None,
           **attrs: int | float | str | list[int]) -> str | list[str]:
        """Append a node; returns its output name, or a list of names when ``outputs`` > 1."""
        self._count += 1
        names = [out] if out and outputs == 1 else [f"{op_type.lower()}{self._count}_{k}" for k in range(outputs)]
        body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in names)
        body += _bytes(3, f"n{self._count}") + _bytes(4, op_type)
        body += b"".join(_bytes(5, attribute(k, v)) for k, v in attrs.items())
        self._nodes.append(body)
        return names[0] if outputs == 1 else names

    def model(self) -> bytes:
        graph = b"".join(_bytes(1, n) for n in self._nodes) + _bytes(2, self.name)
        graph += b"".join(_bytes(5, t) for t in self._initializers)
        graph += b"".join(_bytes(11, v) for v in self._inputs) + b"".join(_bytes(12, v) for v in self._outputs)
        opset = _bytes(1, "") + _int(2, self.opset)
        return _int(1, 8) + _bytes(2, "wsstream") + _bytes(7, graph) + _bytes(8, opset)
