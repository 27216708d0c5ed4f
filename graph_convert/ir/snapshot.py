"""What a pass's ``changed`` flag is checked against: a snapshot of everything that defines a
graph's computation (:meth:`graph_convert.ir.Graph.snapshot`) and the first difference between two."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from graph_convert.ir.tensors import tensor_array

NODE_FIELDS = ("op_type", "domain", "inputs", "outputs", "implicit inputs", "attributes", "in_perms", "out_perms")


# an attribute larger than this (a Constant node's weight) is not serialized after every pass:
# the snapshot keeps the object and its size; the same object at the same size is taken as
# unchanged, another object is compared by content (only then is the weight read)
_ATTR_SERIALIZE_LIMIT = 1 << 16


class LargeAttr:
    __slots__ = ("a", "size")

    def __init__(self, a: onnx.AttributeProto, size: int):
        self.a, self.size = a, size

    def __eq__(self, other) -> bool:
        return isinstance(other, LargeAttr) and self.size == other.size and (self.a is other.a or self.a == other.a)

    def __hash__(self) -> int:
        return hash(self.size)


def attr_key(a: onnx.AttributeProto) -> Any:
    size = a.ByteSize()
    return a.SerializeToString() if size <= _ATTR_SERIALIZE_LIMIT else LargeAttr(a, size)


def perms_key(perms) -> tuple | None:
    return None if perms is None else tuple(None if p is None else tuple(p) for p in perms)


def same_tensor(x, y) -> bool:
    """Equal dtype, shape and bytes (NaN payloads included) for initializers stored as array or proto."""
    a = tensor_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)
    b = tensor_array(y) if isinstance(y, onnx.TensorProto) else np.asarray(y)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return bool(np.array_equal(a, b))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@dataclass
class GraphSnapshot:
    """The state :meth:`Graph.snapshot` records (opaque to passes)."""

    nodes: dict[str, tuple]
    inputs: tuple
    outputs: tuple
    io_perms: tuple
    inits: dict[str, Any]


def first_difference(snap: GraphSnapshot, now: GraphSnapshot) -> str | None:
    """The first difference between two snapshots of one graph, in words; None when equal."""
    for name in sorted(set(now.nodes) - set(snap.nodes)):
        return f"node {name!r} ({now.nodes[name][0]}) added"
    for name in sorted(set(snap.nodes) - set(now.nodes)):
        return f"node {name!r} ({snap.nodes[name][0]}) removed"
    for name in sorted(now.nodes):
        a, b = snap.nodes[name], now.nodes[name]
        if a == b:
            continue
        for field_name, x, y in zip(NODE_FIELDS, a, b):
            if x != y:
                if field_name == "attributes":
                    keys = sorted({k for k, v in set(x) ^ set(y)})
                    return f"node {name!r} ({b[0]}): attribute(s) {', '.join(keys)} changed"
                return f"node {name!r} ({b[0]}): {field_name} {x!r} -> {y!r}"
    for what, x, y in (("graph inputs", snap.inputs, now.inputs), ("graph outputs", snap.outputs, now.outputs),
                       ("graph I/O layouts", snap.io_perms, now.io_perms)):
        if x != y:
            return f"{what} {list(x)!r} -> {list(y)!r}"
    for name in sorted(set(snap.inits) | set(now.inits)):
        if name not in now.inits:
            return f"initializer {name!r} removed"
        if name not in snap.inits:
            return f"initializer {name!r} added"
        x, y = snap.inits[name], now.inits[name]
        if x is not y and not same_tensor(x, y):
            return f"initializer {name!r} replaced by a different value"
    return None
