"""Tables computed from the sizes: the source's shape-only subgraph, replayed at run time.

A detector's anchor grid and stride table (ultralytics' ``make_anchors``: ``arange`` over each
feature map's height and width, a meshgrid, a stride column per level) are float tensors that the
export computes from ``Shape`` of feature maps and nothing else. At static sizes they fold into
constants, and the two conversions of :mod:`graph_convert.conversion.dynamic` see a float table
whose values and size move. Here such a constant is traced back, by its name, through the source
ONNX graph to the subgraph that produced it: nodes of :data:`OPS` whose inputs are constants or
other such nodes, with ``Shape`` of a tensor outside the subgraph as its only leaves (it never
reads an input's values). That subgraph is replayed in TensorFlow with builtin-TFLite ops (SHAPE,
GATHER, RANGE, CAST, FILL, CONCATENATION, ...), each leaf the run-time dims of the tensor it reads.

Nothing is trusted by construction: :func:`evaluate` runs the replay at the two converted sizes
(leaves at their inferred shapes) and the result must equal the rewritten graphs' constant at
both, as it is or with one axis permutation / unit-axis reshape that holds at both (the passes may
have moved its layout); otherwise the constant is refused as before. The conversion is then
checked at further sizes like any other dynamic one.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from graph_convert.ir.onnx_io import shape_model, tensor_array

OPS = frozenset({
    "Shape", "Constant", "Identity", "Gather", "Range", "Cast", "Add", "Sub", "Mul", "Div", "Neg", "Floor", "Ceil",
    "Min", "Max", "Concat", "Expand", "Unsqueeze", "Squeeze", "Reshape", "Tile", "ConstantOfShape", "Transpose", "Slice",
    "Equal", "Less", "Greater", "Where", "Not",
})
MAX_NODES = 2000  # a shape subgraph larger than this is not a table; refused as before
SMALL_AXIS = 8  # a transpose that moves one axis of at most this size is an UNPACK + PACK, not a TRANSPOSE


@dataclass
class Program:
    """The subgraph that computes ``output`` from ``Shape`` leaves and constants."""

    output: str
    nodes: list  # onnx.NodeProto, in the source's (topological) order
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    leaves: dict[str, tuple[str, int, int | None]] = field(default_factory=dict)  # Shape output -> (tensor, start, end)
    static: dict[str, list] = field(default_factory=dict)  # tensor -> shape, None where it moves between the sizes


class Sources:
    """The source model at its two converted sizes: traces programs and the leaves' shapes there."""

    def __init__(self, model: onnx.ModelProto, at: Callable[[int], onnx.ModelProto]):
        self.model = model
        self._at = at
        self._shapes: dict[int, dict[str, tuple]] = {}
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.inits = {t.name: t for t in model.graph.initializer}
        self._free: dict[str, bool] = {}

    def origin(self, name: str) -> str | None:
        """The source tensor a rewritten constant is named after: its own name, or the longest
        source name it extends (a pass's ``X_T__41`` is X moved to another layout). Only a
        candidate: the replay must give the constant's values at both sizes to be used."""
        if name in self.producer:
            return name
        cuts = [i for i, ch in enumerate(name) if ch == "_" and name[:i] in self.producer]
        return name[:max(cuts)] if cuts else None

    def trace(self, tensor: str) -> Program | str:
        """The shape-only program of ``tensor``, or why there is none."""
        prog = Program(tensor, [])
        seen: set[str] = set()
        stack = [tensor]
        order = {id(n): i for i, n in enumerate(self.model.graph.node)}
        picked: dict[int, Any] = {}
        while stack:
            t = stack.pop()
            if not t or t in seen:
                continue
            seen.add(t)
            if t in self.inits:
                prog.consts[t] = np.asarray(tensor_array(self.inits[t]))
                continue
            n = self.producer.get(t)
            if n is None:
                return f"it reads the values of graph input {t!r}"
            if n.op_type not in OPS or n.domain not in ("", "ai.onnx"):
                return f"it is computed by node {n.name!r} ({n.op_type}), not by shape arithmetic"
            if len(picked) >= MAX_NODES:
                return f"its shape subgraph has more than {MAX_NODES} nodes"
            picked[id(n)] = n
            if n.op_type == "Shape":
                x = n.input[0]
                if self.trace_free(x):  # the shape of a tensor computed in the program itself
                    stack.append(x)
                else:
                    prog.leaves[n.output[0]] = (x, _attr(n, "start", 0), _attr(n, "end", None))
                continue
            stack.extend(n.input)
        prog.nodes = sorted(picked.values(), key=lambda n: order[id(n)])
        return prog

    def trace_free(self, tensor: str) -> bool:
        """``tensor`` is computed by shape arithmetic alone (so its Shape is read from the replay)."""
        if tensor in self._free:
            return self._free[tensor]
        n = self.producer.get(tensor)
        if tensor in self.inits or (n is not None and n.op_type in ("Shape", "Constant")):
            ok = True
        elif n is None or n.op_type not in OPS:
            ok = False
        else:
            self._free[tensor] = False  # a cycle (never in a valid graph) stays False
            try:
                ok = all(not i or self.trace_free(i) for i in n.input)
            except RecursionError:
                ok = False
        self._free[tensor] = ok
        return ok

    def leaf_values(self, prog: Program, k: int) -> dict[str, np.ndarray] | None:
        """Each leaf's value at converted size ``k`` (0 or 1), from ONNX shape inference there."""
        if k not in self._shapes:
            m = onnx.shape_inference.infer_shapes(shape_model(self._at(k)), strict_mode=False, data_prop=True)
            shapes = {}
            for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
                dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else None
                if dims is not None and vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                    shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
            self._shapes[k] = shapes
        out = {}
        for leaf, (x, start, end) in prog.leaves.items():
            s = self._shapes[k].get(x)
            if s is None:
                return None
            out[leaf] = np.array(s[start:end], np.int64)
        return out


def learn_static(prog: Program, first: dict[str, tuple], second: dict[str, tuple]) -> None:
    """Record the dims that are the same in the two eager replays: static in the trace too."""
    for t, a in first.items():
        b = second.get(t)
        if b is not None and len(a) == len(b):
            prog.static[t] = [p if p == q else None for p, q in zip(a, b)]


def _attr(n, name: str, default):
    for a in n.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def evaluate(prog: Program, leaves: dict[str, Any], shapes: dict[str, tuple] | None = None):
    """The program's output in TensorFlow, each leaf given as a 1-D int64 tensor (or array):
    eagerly with arrays to check it (``shapes`` gets every tensor's shape), in the trace with
    run-time dims to emit it."""
    import tensorflow as tf

    env: dict[str, Any] = {k: tf.constant(v) if isinstance(v, np.ndarray) else v for k, v in prog.consts.items()}
    for k, v in leaves.items():
        env[k] = tf.cast(tf.constant(v) if isinstance(v, np.ndarray) else v, tf.int64)
    for n in prog.nodes:
        if n.output[0] in env:
            continue
        ins = [env[i] if i else None for i in n.input]
        out = _OPS[n.op_type](n, ins)
        known = prog.static.get(n.output[0])
        if known is not None and not tf.executing_eagerly() and len(out.shape) == len(known):
            out.set_shape(known)  # the trace knows what the sizes do not move (a transpose of a unit axis)
        if shapes is not None:
            shapes[n.output[0]] = tuple(out.shape)
        env[n.output[0]] = out
    return env[prog.output]


def _np_dtype(to: int):
    import tensorflow as tf

    return tf.as_dtype(onnx.helper.tensor_dtype_to_np_dtype(to))


def _static_ints(t) -> list[int]:
    import tensorflow as tf

    v = tf.get_static_value(t)
    if v is None:
        raise ValueError("an axes/perm input that is not constant")
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _constant(n, ins):
    import tensorflow as tf

    for a in n.attribute:
        if a.name == "value":
            return tf.constant(numpy_helper.to_array(a.t))
        if a.name in ("value_int", "value_ints"):
            return tf.constant(np.array(onnx.helper.get_attribute_value(a), np.int64))
        if a.name in ("value_float", "value_floats"):
            return tf.constant(np.array(onnx.helper.get_attribute_value(a), np.float32))
    raise ValueError(f"Constant {n.name!r} without a value this replay reads")


def _shape(n, ins):
    import tensorflow as tf

    s = tf.shape(ins[0], out_type=tf.int64)
    start, end = _attr(n, "start", 0), _attr(n, "end", None)
    return s[start:end] if (start, end) != (0, None) else s


def _gather(n, ins):
    import tensorflow as tf

    data, idx = ins
    axis = _attr(n, "axis", 0) % len(data.shape)
    idx = tf.cast(idx, tf.int64)
    idx = tf.where(idx < 0, idx + tf.shape(data, out_type=tf.int64)[axis], idx)
    return tf.gather(data, idx, axis=axis)


def _unsqueeze(n, ins):
    import tensorflow as tf

    axes = _attr(n, "axes", None) if len(ins) < 2 else _static_ints(ins[1])
    x = ins[0]
    rank = len(x.shape) + len(axes)
    for a in sorted(a % rank for a in axes):
        x = tf.expand_dims(x, a)
    return x


def _squeeze(n, ins):
    import tensorflow as tf

    axes = _attr(n, "axes", None) if len(ins) < 2 or ins[1] is None else _static_ints(ins[1])
    return tf.squeeze(ins[0], axis=None if axes is None else [a % len(ins[0].shape) for a in axes])


def _reshape(n, ins):
    import tensorflow as tf

    x, shape = ins
    shape = tf.cast(shape, tf.int64)
    k = shape.shape[0]
    if not _attr(n, "allowzero", 0) and k is not None and k <= len(x.shape):  # 0 copies the input's dim
        shape = tf.where(tf.equal(shape, 0), tf.shape(x, out_type=tf.int64)[:k], shape)
    return tf.reshape(x, shape)


def _expand(n, ins):
    import tensorflow as tf

    x, shape = ins
    full = tf.broadcast_dynamic_shape(tf.shape(x, out_type=tf.int64), tf.cast(shape, tf.int64))
    return tf.broadcast_to(x, full)


def _constant_of_shape(n, ins):
    import tensorflow as tf

    value = _attr(n, "value", None)
    v = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    return tf.fill(tf.cast(ins[0], tf.int64), tf.constant(v))


def _transpose(n, ins):
    import tensorflow as tf

    x = ins[0]
    perm = _attr(n, "perm", None) or list(range(len(x.shape)))[::-1]
    return transpose(x, list(perm))


def transpose(x, perm: list[int]):
    """``tf.transpose``, or when it moves a single axis of a few entries (an ``[n, 2]`` grid to
    ``[2, n]``), that axis unstacked and stacked at its new place: UNPACK + PACK in the .tflite
    instead of a TRANSPOSE (the tables are tiny; a TRANSPOSE would count against the layout); a
    unit axis moved is a RESHAPE."""
    import tensorflow as tf

    if perm == sorted(perm):
        return x
    for src in range(len(perm)):
        dst = perm.index(src)
        rest = [a for a in range(len(perm)) if a != src]
        moved = rest[:dst] + [src] + rest[dst:]
        size = x.shape[src]
        if moved == list(perm) and size == 1:  # a unit axis moved: the same values, reshaped
            return tf.reshape(x, tf.gather(tf.shape(x), perm))
        if moved == list(perm) and size is not None and size <= SMALL_AXIS:
            return tf.stack(tf.unstack(x, axis=src), axis=dst)
    return tf.transpose(x, perm)


def _slice(n, ins):
    import tensorflow as tf

    x = ins[0]
    rank = len(x.shape)
    starts, ends = tf.cast(ins[1], tf.int64), tf.cast(ins[2], tf.int64)
    axes = _static_ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(int(starts.shape[0])))
    steps = _static_ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(axes)
    big = np.iinfo(np.int64).max // 2  # INT64_MAX ends: clamped like Python slicing
    begin, end, stride, mask = [], [], [], 0
    where = {a % rank: j for j, a in enumerate(axes)}
    for a in range(rank):
        if a in where:
            j = where[a]
            begin.append(starts[j])
            end.append(tf.clip_by_value(ends[j], -big, big))
            stride.append(steps[j])
        else:
            begin.append(tf.constant(0, tf.int64))
            end.append(tf.constant(0, tf.int64))
            stride.append(1)
            mask |= 1 << a
    return tf.strided_slice(x, tf.stack(begin), tf.stack(end), tf.constant(stride, tf.int64), begin_mask=mask, end_mask=mask)


def _div(n, ins):
    import tensorflow as tf

    a, b = ins
    if not a.dtype.is_integer:
        return a / b
    # ONNX truncates toward zero; TFLite's FLOOR_DIV floors, on int32 (sizes fit): |a| // |b|, signed
    a32, b32 = tf.cast(a, tf.int32), tf.cast(b, tf.int32)
    q = tf.math.floordiv(tf.where(a32 < 0, -a32, a32), tf.where(b32 < 0, -b32, b32))
    return tf.cast(tf.where(tf.not_equal(a32 < 0, b32 < 0), -q, q), a.dtype)


def _table():
    import tensorflow as tf

    two = {"Add": tf.add, "Sub": tf.subtract, "Mul": tf.multiply, "Equal": tf.equal, "Less": tf.less, "Greater": tf.greater}
    out: dict[str, Callable] = {k: (lambda f: lambda n, ins: f(ins[0], ins[1]))(f) for k, f in two.items()}
    out.update({
        "Constant": _constant, "Shape": _shape, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
        "Reshape": _reshape, "Expand": _expand, "ConstantOfShape": _constant_of_shape, "Transpose": _transpose,
        "Slice": _slice, "Div": _div,
        "Identity": lambda n, ins: tf.identity(ins[0]),
        "Cast": lambda n, ins: tf.cast(ins[0], _np_dtype(_attr(n, "to", 1))),
        "Range": lambda n, ins: tf.range(ins[0], ins[1], ins[2]),
        "Neg": lambda n, ins: -ins[0], "Floor": lambda n, ins: tf.floor(ins[0]), "Ceil": lambda n, ins: tf.math.ceil(ins[0]),
        "Not": lambda n, ins: tf.logical_not(ins[0]),
        "Min": lambda n, ins: _fold(tf.minimum, ins), "Max": lambda n, ins: _fold(tf.maximum, ins),
        "Concat": lambda n, ins: tf.concat([i for i in ins if i is not None], axis=_attr(n, "axis", 0)),
        "Tile": lambda n, ins: tf.tile(ins[0], tf.cast(ins[1], tf.int64)),
        "Where": lambda n, ins: tf.where(ins[0], ins[1], ins[2]),
    })
    return out


def _fold(f, ins):
    out = ins[0]
    for x in ins[1:]:
        out = f(out, x)
    return out


class _Lazy(dict):
    def __missing__(self, key):
        self.update(_table())
        return dict.__getitem__(self, key)


_OPS: dict[str, Callable] = _Lazy()


def layout(p1: np.ndarray, p2: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> tuple | None:
    """How the rewritten constant (``v1`` at the first size, ``v2`` at the second) is laid out
    relative to the replay (``p1``, ``p2``): ``("same",)``, ``("perm", perm)`` or ``("reshape",
    shape with -1)``, holding at both sizes; ``None`` when no such correspondence exists."""
    if p1.dtype != v1.dtype or p2.dtype != v2.dtype:
        return None
    eq = _equal
    if p1.shape == v1.shape and p2.shape == v2.shape and eq(p1, v1) and eq(p2, v2):
        return ("same",)
    if p1.ndim == v1.ndim and p1.ndim <= 6:
        for perm in itertools.permutations(range(p1.ndim)):
            t1, t2 = np.transpose(p1, perm), np.transpose(p2, perm)
            if t1.shape == v1.shape and t2.shape == v2.shape and eq(t1, v1) and eq(t2, v2):
                return ("perm", list(perm))
    if p1.size == v1.size and p2.size == v2.size and eq(p1.reshape(-1), v1.reshape(-1)) and eq(p2.reshape(-1), v2.reshape(-1)) \
            and v1.ndim == v2.ndim:
        moving = [a for a in range(v1.ndim) if v1.shape[a] != v2.shape[a]]
        if len(moving) == 1:
            target = list(v1.shape)
            target[moving[0]] = -1
            return ("reshape", target)
    return None


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact for integers; floats to their own float32 rounding (the source's folding and the
    replay may round a product differently in the last bit)."""
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    return bool(np.all(np.isfinite(a) == np.isfinite(b))) and float(np.max(np.abs(a - b), initial=0.0)) <= 4 * np.finfo(np.float32).eps * scale


def apply_layout(t, how: tuple):
    """The replay's tensor laid out as the rewritten graph's constant (see :func:`layout`)."""
    import tensorflow as tf

    if how[0] == "perm":
        return transpose(t, how[1])
    if how[0] == "reshape":
        return tf.reshape(t, how[1])
    return t
