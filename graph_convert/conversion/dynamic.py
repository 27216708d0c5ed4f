"""Dynamic batch: one batch-polymorphic TF function from two static conversions.

The passes, the layout algorithm and constant folding all work on static shapes. For a dynamic
batch the model is converted twice, at batch sizes ``B1`` and ``B2`` (both > 1, so no rewrite
that only holds for size-1 axes is taken in one run and not the other). The two rewritten graphs
must be the same graph up to values; what differs between them is what depends on the batch:

- a tensor dim that differs is the batch dim (or a multiple of it): the emitter sees it as
  unknown (``None``), the SavedModel signature takes any size there;
- an integer constant whose differing entries are multiples of the batch size (a Reshape target
  ``[B*nW, 16, 32]``, an Expand shape) has ``k*B`` there. As the only -1-free
  target of Reshapes it becomes ``-1`` at that entry (static everywhere else, as TFLite likes);
  otherwise it is computed at run time from the input's batch size;
- a constant that differs in size along one axis and is the same block repeated batch times
  (a class token expanded over the batch, then folded) is that block tiled at run time;
- an integer constant that differs in size along one axis and steps by the same amount along it
  (``torch.arange(batch)`` indexing a batch of rows, then folded) is a run-time range.

Anything else (a batch-dependent float value, a non-linear shape) is refused with the node or
constant named. The result is checked by running the TF function and the .tflite at batch sizes
``B1``, ``B2`` and 1 against ONNX Runtime on the source model at those sizes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graph_convert.errors import ConvertError
from graph_convert.ir import Graph

B1, B2 = 2, 3


class DynamicBatchError(ConvertError):
    """The conversion cannot be made batch-polymorphic; says what depends on the batch."""


def batch_inputs(model: onnx.ModelProto, force: bool) -> list[str]:
    """Inputs whose dim 0 is the batch: symbolic in the model, or (``force``) every input of
    rank >= 1 whose dim 0 equals the first such input's."""
    inits = {i.name for i in model.graph.initializer}
    out, first = [], None
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        d0 = dims[0]
        if not d0.HasField("dim_value") or d0.dim_value <= 0:
            out.append(vi.name)
        elif force:
            first = d0.dim_value if first is None else first
            if d0.dim_value == first:
                out.append(vi.name)
    return out


def with_batch(model: onnx.ModelProto, names: list[str], b: int, overrides: dict | None = None) -> onnx.ModelProto:
    """A copy with the ``overrides`` input shapes, dim 0 of ``names`` set to ``b``, and inferred
    shapes dropped (they are inferred again at this batch size)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        new = list((overrides or {}).get(vi.name) or [])
        if new and len(new) == len(dims):
            for d, v in zip(dims, new):
                d.Clear()
                d.dim_value = int(v)
        if vi.name in names:
            dims[0].Clear()
            dims[0].dim_value = b
    del m.graph.value_info[:]
    for vi in m.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    return m


@dataclass
class BatchView:
    """What differs between the graphs converted at ``B1`` (``graph``) and ``B2``."""

    graph: Graph
    batch_source: tuple[str, int]  # (graph input, axis) whose size is the batch at run time
    dims: dict[str, tuple] = field(default_factory=dict)  # tensor -> shape with None at batch-dependent dims
    linear: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # const -> (c, k): c + k*B
    tiled: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)  # const -> (block, axis)
    ranged: dict[str, tuple[np.ndarray, np.ndarray, int, int]] = field(default_factory=dict)  # const -> (first, step, axis, m): first + i*step, i < m*B
    stats: dict[str, int] = field(default_factory=dict)

    # -- what the emitter asks ---------------------------------------------------------------
    def shape(self, tensor: str):
        return self.dims.get(tensor, self.graph.shape(tensor))

    def is_dynamic_const(self, tensor: str) -> bool:
        return tensor in self.linear or tensor in self.tiled or tensor in self.ranged

    def minus_one_target(self, tensor: str) -> np.ndarray | None:
        """The constant as a Reshape target with -1 at its one batch entry, when that is exact."""
        if tensor not in self.linear:
            return None
        c, k = self.linear[tensor]
        if c.ndim != 1:
            return None
        dyn = np.nonzero(k)[0]
        static = np.delete(c, dyn)
        if len(dyn) != 1 or np.any(static <= 0):
            return None  # a 0 (copy) or -1 elsewhere: not expressible as one -1
        readers = self.graph.consumers(tensor)
        if self.graph.is_graph_output(tensor) or not readers or any(
                r.op_type != "Reshape" or r.inputs[1:] != [tensor] or r.attr("allowzero", 0) for r in readers):
            return None
        out = c.copy()
        out[dyn[0]] = -1
        return out

    def tensor(self, tensor: str, batch) -> Any:
        """The run-time value of a batch-dependent constant; ``batch`` is a scalar int32 tensor."""
        import tensorflow as tf

        if tensor in self.linear:
            c, k = self.linear[tensor]
            dt = tf.as_dtype(c.dtype)
            b = tf.cast(batch, dt)
            if c.ndim == 1:  # a Pack of scalars: TF's shape inference keeps the static entries
                return tf.stack([tf.constant(int(ci), dt) if ki == 0 else int(ki) * b for ci, ki in zip(c, k)])
            return tf.constant(c) + tf.constant(k) * b
        if tensor in self.ranged:
            first, step, axis, m = self.ranged[tensor]
            dt = tf.as_dtype(first.dtype)
            shape = [1] * (first.ndim + 1)
            shape[axis] = -1
            i = tf.reshape(tf.cast(tf.range(m * tf.cast(batch, tf.int32)), dt), shape)
            return tf.constant(np.expand_dims(first, axis)) + i * tf.constant(np.expand_dims(step, axis))
        block, axis = self.tiled[tensor]
        reps = [1] * block.ndim
        reps[axis] = batch
        return tf.tile(tf.constant(block), tf.stack([tf.constant(r, tf.int32) if isinstance(r, int) else r for r in reps]))


def _same_structure(g1: Graph, g2: Graph) -> None:
    n1, n2 = g1.nodes, g2.nodes
    if [n.name for n in n1] != [n.name for n in n2]:
        a = [n.name for n in n1]
        b = [n.name for n in n2]
        first = next((x for x, y in zip(a, b) if x != y), None)
        raise DynamicBatchError(f"dynamic batch: the rewritten graph at batch {B1} differs from the one at batch {B2} "
                           f"(node {first!r}: {len(a)} vs {len(b)} nodes); the conversion depends on the batch size")
    for a, b in zip(n1, n2):
        if (a.op_type, a.inputs, a.outputs, a.in_perms, a.out_perms) != (b.op_type, b.inputs, b.outputs, b.in_perms, b.out_perms):
            raise DynamicBatchError(f"dynamic batch: node {a.name!r} ({a.op_type}) is rewritten differently at batch {B1} and {B2}")
        for key in set(a.attrs) | set(b.attrs):
            if a.attr(key) != b.attr(key):
                raise DynamicBatchError(f"dynamic batch: attribute {key!r} of node {a.name!r} ({a.op_type}) depends on the batch size "
                                   f"({a.attr(key)} vs {b.attr(key)})")
    if sorted(g1.initializer_names) != sorted(g2.initializer_names) or g1.inputs != g2.inputs or g1.outputs != g2.outputs:
        raise DynamicBatchError(f"dynamic batch: the rewritten graphs at batch {B1} and {B2} have different constants or I/O")


def batch_view(g1: Graph, g2: Graph, inputs: list[str]) -> BatchView:
    """Compare the graphs converted at ``B1`` and ``B2``; raise ConvertError naming what cannot
    be made batch-polymorphic."""
    _same_structure(g1, g2)
    src = None
    for x in g1.inputs:
        s1, s2 = g1.shape(x), g2.shape(x)
        if s1 and s2:
            diff = [a for a, (p, q) in enumerate(zip(s1, s2)) if p != q]
            if len(diff) == 1 and (s1[diff[0]], s2[diff[0]]) == (B1, B2):
                src = (x, diff[0])
                break
    if src is None:
        raise DynamicBatchError(f"dynamic batch: no graph input has the batch as a dim (batch inputs: {inputs})")
    view = BatchView(g1, src)
    # tensor shapes
    names = set(g1.info) & set(g2.info)
    for t in names:
        s1, s2 = g1.shape(t), g2.shape(t)
        if s1 is None or s2 is None or len(s1) != len(s2) or s1 == s2:
            continue
        view.dims[t] = tuple(None if p != q else p for p, q in zip(s1, s2))
    # constants
    for name in g1.initializer_names:
        v1, v2 = g1.initializer(name), g2.initializer(name)
        if v1.shape == v2.shape and v1.dtype == v2.dtype and np.array_equal(v1, v2):
            continue
        if v1.shape == v2.shape and v1.dtype.kind in "iu":
            a, b = v1.astype(np.int64), v2.astype(np.int64)
            moved = a != b
            k = np.where(moved, a // B1, 0)  # entries that move must be k*B: B1*k at B1, B2*k at B2
            if np.array_equal(np.where(moved, k * B1, a), a) and np.array_equal(np.where(moved, k * B2, a), b):
                view.linear[name] = (np.where(moved, 0, a).astype(v1.dtype), k.astype(v1.dtype))
                continue
        tile = _as_tiled(v1, v2)
        if tile is not None:
            view.tiled[name] = tile
            continue
        rng = _as_range(v1, v2)
        if rng is not None:
            view.ranged[name] = rng
            continue
        readers = ", ".join(f"{n.name} ({n.op_type})" for n in g1.consumers(name)) or "none"
        raise DynamicBatchError(f"dynamic batch: constant {name!r} (read by {readers}) depends on the batch size in a way "
                           f"that is neither linear nor a repeat: shape {v1.shape} at batch {B1}, {v2.shape} at batch {B2}")
    view.stats = {"batch_dependent_dims": len(view.dims), "linear_constants": len(view.linear), "tiled_constants": len(view.tiled),
                  "ranged_constants": len(view.ranged)}
    return view


def _batch_axis(v1: np.ndarray, v2: np.ndarray) -> tuple[int, int] | None:
    """``(axis, m)`` when the two values differ in size along one axis only, there ``m * B``."""
    if v1.ndim != v2.ndim or v1.dtype != v2.dtype:
        return None
    diff = [a for a in range(v1.ndim) if v1.shape[a] != v2.shape[a]]
    if len(diff) != 1:
        return None
    a = diff[0]
    n1, n2 = v1.shape[a], v2.shape[a]
    if n1 % B1 or n2 % B2 or n1 // B1 != n2 // B2:
        return None
    return a, n1 // B1


def _as_tiled(v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, int] | None:
    got = _batch_axis(v1, v2)
    if got is None:
        return None
    a, m = got
    block = np.take(v1, range(m), axis=a)
    if not (np.array_equal(np.concatenate([block] * B1, axis=a), v1) and np.array_equal(np.concatenate([block] * B2, axis=a), v2)):
        return None
    return block, a


def _as_range(v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """``(first, step, axis, m)`` when both integer constants are ``first + i*step`` along their one
    differing axis, ``i`` from 0 to ``m*B - 1`` (exactly, at both batch sizes)."""
    got = _batch_axis(v1, v2) if v1.dtype.kind in "iu" else None
    if got is None or v1.shape[got[0]] < 2:
        return None
    a = got[0]
    first = np.take(v1, 0, axis=a)
    step = np.take(v1, 1, axis=a) - first

    def ramp(n):
        shape = [1] * v1.ndim
        shape[a] = n
        return np.expand_dims(first, a) + np.arange(n, dtype=v1.dtype).reshape(shape) * np.expand_dims(step, a)

    if not (np.array_equal(ramp(v1.shape[a]), v1) and np.array_equal(ramp(v2.shape[a]), v2)):
        return None
    return first, step, a, got[1]
