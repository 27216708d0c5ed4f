"""A one-file ONNX model's large weights moved to a data file by walking the protobuf wire format
with buffered reads: neither the file nor any large ``raw_data`` is ever held in memory.

Only the path to the top-level initializers is walked (ModelProto.graph -> GraphProto.initializer
-> TensorProto.raw_data); every other field is copied as its bytes. Field numbers are those of
onnx.proto: ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.raw_data = 9,
.external_data = 13 (StringStringEntryProto key = 1, value = 2), .data_location = 14.
"""
from __future__ import annotations

import io
import os

MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 9, 13, 14
EXTERNAL = 1  # TensorProto.DataLocation
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
ALIGN = 64  # every weight starts 64-byte aligned, so a reader may map it in place
CHUNK = 8 << 20


class WireError(ValueError):
    """The file is not well-formed protobuf (truncated, a length past its end, a bad wire type)."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(len(payload)) + payload


class _Reader:
    """Reads fields from a file, knowing its position (for bounds and error messages)."""

    def __init__(self, f: io.BufferedReader, size: int):
        self.f, self.pos, self.size = f, 0, size

    def _read(self, n: int, end: int, what: str) -> bytes:
        if self.pos + n > end:
            raise WireError(f"{what} at byte {self.pos} runs past the end of {self._scope(end)}")
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while read
            raise WireError(f"{what} at byte {self.pos} runs past the end of the file")
        self.pos += n
        return data

    def _scope(self, end: int) -> str:
        return "the file" if end == self.size else f"its enclosing message (byte {end})"

    def varint(self, end: int, what: str) -> tuple[int, bytes]:
        """(value, its bytes as in the file)."""
        start, raw, value = self.pos, bytearray(), 0
        while True:
            if self.pos >= end:
                raise WireError(f"{what} at byte {start} is cut off by the end of {self._scope(end)}")
            b = self._read(1, end, what)[0]
            raw.append(b)
            value |= (b & 0x7F) << (7 * (len(raw) - 1))
            if b < 0x80:
                return value, bytes(raw)
            if len(raw) == 10:
                raise WireError(f"{what} at byte {start} is not terminated within 10 bytes")

    def tag(self, end: int) -> tuple[int, int, bytes]:
        """(field number, wire type, the tag's bytes)."""
        start = self.pos
        value, raw = self.varint(end, "a field tag")
        number, wire = value >> 3, value & 7
        if number == 0 or wire not in (VARINT, FIXED64, LENGTH_DELIMITED, FIXED32):
            raise WireError(f"the field tag at byte {start} has field number {number} and wire type {wire}")
        return number, wire, raw

    def length(self, end: int, what: str) -> tuple[int, bytes]:
        """(a length-delimited field's length, checked against ``end``; its bytes as in the file)."""
        start = self.pos
        n, raw = self.varint(end, f"the length of {what}")
        if self.pos + n > end:
            raise WireError(f"{what} at byte {start} is {n} bytes long, past the end of {self._scope(end)} "
                            f"({end - self.pos} bytes left)")
        return n, raw

    def payload(self, n: int, end: int, what: str) -> bytes:
        return self._read(n, end, what)

    def rest_of_field(self, number: int, wire: int, end: int) -> bytes:
        """The value of a field whose tag was just read, as in the file (with its length)."""
        what = f"field {number}"
        if wire == VARINT:
            return self.varint(end, what)[1]
        if wire == FIXED64:
            return self._read(8, end, what)
        if wire == FIXED32:
            return self._read(4, end, what)
        n, raw = self.length(end, what)
        return raw + self._read(n, end, what)

    def copy_to(self, out: io.BufferedWriter, n: int, buf: bytearray) -> None:
        view = memoryview(buf)
        while n:
            k = self.f.readinto(view[:min(n, len(buf))])
            if not k:
                raise WireError(f"the file ends at byte {self.pos}, inside a weight")
            out.write(view[:k])
            self.pos += k
            n -= k


class Spill:
    """The walk: the shell's bytes, the weights written to ``data`` (named ``location`` in the shell)."""

    def __init__(self, r: _Reader, data: io.BufferedWriter, location: str, min_bytes: int):
        self.r, self.data, self.location, self.min_bytes = r, data, location, min_bytes
        self.spilled = 0  # tensors moved to the data file
        self.external = False  # a top-level initializer already refers to external data
        self.buf = bytearray(CHUNK)

    def model(self) -> bytes:
        r, out = self.r, bytearray()
        while r.pos < r.size:
            number, wire, tag = r.tag(r.size)
            if number == MODEL_GRAPH and wire == LENGTH_DELIMITED:
                n, _ = r.length(r.size, "the graph")
                out += field(MODEL_GRAPH, self.graph(r.pos + n))
            else:
                out += tag + r.rest_of_field(number, wire, r.size)
        return bytes(out)

    def graph(self, end: int) -> bytes:
        r, out = self.r, bytearray()
        while r.pos < end:
            number, wire, tag = r.tag(end)
            if number == GRAPH_INITIALIZER and wire == LENGTH_DELIMITED:
                n, raw = r.length(end, "an initializer")
                if n >= self.min_bytes:  # may hold a large raw_data
                    out += field(GRAPH_INITIALIZER, self.tensor(r.pos + n))
                else:
                    out += tag + raw + r.payload(n, end, "an initializer")
            else:
                out += tag + r.rest_of_field(number, wire, end)
        return bytes(out)

    def tensor(self, end: int) -> bytes:
        """A TensorProto whose raw_data, if large, goes to the data file (protobuf's last value of
        a repeated scalar field wins: so here too)."""
        r = self.r
        pieces: list[tuple[int, bytes]] = []
        last_raw: tuple[int, int] | None = None  # (offset, length) of the raw_data written, if it is the last one
        while r.pos < end:
            number, wire, tag = r.tag(end)
            if number == TENSOR_RAW_DATA and wire == LENGTH_DELIMITED:
                n, raw = r.length(end, "a tensor's raw_data")
                if n >= self.min_bytes:
                    self.data.write(b"\0" * (-self.data.tell() % ALIGN))
                    last_raw = (self.data.tell(), n)
                    r.copy_to(self.data, n, self.buf)
                else:
                    pieces.append((number, tag + raw + r.payload(n, end, "a tensor's raw_data")))
                    last_raw = None
                continue
            value = r.rest_of_field(number, wire, end)
            if number == TENSOR_EXTERNAL_DATA or (number == TENSOR_DATA_LOCATION and value != varint(0)):
                self.external = True
            pieces.append((number, tag + value))
        if last_raw is None:
            return b"".join(p for _, p in pieces)
        self.spilled += 1
        out = bytearray(b"".join(p for n, p in pieces if n != TENSOR_RAW_DATA))
        for key, value in (("location", self.location), ("offset", str(last_raw[0])), ("length", str(last_raw[1]))):
            out += field(TENSOR_EXTERNAL_DATA, field(1, key.encode()) + field(2, value.encode()))
        out += varint(TENSOR_DATA_LOCATION << 3 | VARINT) + varint(EXTERNAL)
        return bytes(out)


def spill_one_file(path: str, data_path: str, min_bytes: int) -> tuple[bytes, int, bool]:
    """Walk the ONNX file ``path``: every top-level initializer's raw_data of ``min_bytes`` and more
    is written to ``data_path`` (64-byte aligned) and replaced by external data entries naming it
    by its file name. Returns (the serialized shell model, the number of tensors moved, whether a
    top-level initializer already had external data). Raises WireError for a file that is not
    well-formed protobuf."""
    size = os.path.getsize(path)
    with open(path, "rb", buffering=1 << 16) as f, open(data_path, "wb") as data:
        walk = Spill(_Reader(f, size), data, os.path.basename(data_path), min_bytes)
        shell = walk.model()
    return shell, walk.spilled, walk.external
