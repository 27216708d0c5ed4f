"""The emitter table and what every emitter shares: conversion-time constant folding, the
TFLite dtype table and legalization (:func:`to_lite`), the record of TFLite gaps, shape helpers.

The helpers a plugin's emitter (``fn(node, inputs, ctx)``) may use, public and stable:
:func:`input_value` (an input's value when known at conversion time), :func:`axes_input` and
:func:`scalar_operand` (axes / a scalar from an attribute or a constant input), :func:`unsupported`
(the ConvertError for a form the emitter declines, naming the node), :func:`make_constant` (a
``tf.constant`` that keeps +-inf exact), :func:`to_lite` / :func:`cast_back` / :func:`lite_float`
(compute in a dtype TFLite's builtin kernels take, then cast back; :data:`LITE_DTYPES` says which
kernel takes which dtype), :func:`tflite_gap` (record a form TFLite has no builtin kernel for),
:func:`dims_of` / :func:`shape_tensor` / :func:`dims_product` / :func:`static_shape` (static ints
where known, tensors where not), and the dtype names ``I8`` ... ``F64``, ``BOOL``."""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from graph_convert.errors import ConvertError
from graph_convert.ir import Node
from graph_convert.backends.tensorflow.emitter import EmitContext, record_tflite_gap, trace_gaps

# the built-in table, filled once at import by ``@emitter``; a conversion reads it through its
# Registry (``register`` below copies it there), never changes it
EMITTERS: dict[str, Callable] = {}
LAYOUT_AWARE: set[str] = set()  # built-in emitters that read the layout marks themselves


def emitter(*op_types: str, layout_aware: bool = False, fold: bool = True):
    """Register ``fn`` as the emitter of ``op_types``. ``fold=False``: never evaluated at
    conversion time as a whole (control flow, whose bodies read more than the node's inputs)."""

    def deco(fn):
        folding = _folding(fn) if fold else fn
        for op in op_types:
            EMITTERS[op] = folding
            if layout_aware:
                LAYOUT_AWARE.add(op)
        return fn

    return deco


_FOLD_LIMIT = 1 << 20  # elements; larger results stay ops, as a constant that size only bloats the file


def _folding(fn):
    """The emitter, evaluated at conversion time when every input is a known constant: shape
    arithmetic becomes constants (as TF's own constant folding would make it) and needs no
    TFLite kernel. The values come from the same TF kernels, run eagerly."""

    def emit(node, x, ctx):
        static = lambda t: small_static_value(t, ctx)  # noqa: E731
        if hasattr(x, "peek"):  # the emitter's lazy inputs: look without making weights
            given = [x.has(j) for j in range(len(x))]
            vals = [x.peek(j, static) if g else None for j, g in enumerate(given)]
            vals = [None if v is None or v.size > _FOLD_LIMIT else np.asarray(v) for v in vals]
        else:
            given = [t is not None for t in x]
            vals = [None if t is None else static(t) for t in x]
        if any(given) and all(v is not None for v, g in zip(vals, given) if g):
            gaps = trace_gaps()
            mark = len(gaps) if gaps is not None else 0
            try:
                with tf.init_scope():
                    outs = fn(node, [None if v is None else tf.constant(v) for v in vals], ctx)
                many = isinstance(outs, (list, tuple))
                outs = [np.asarray(o) for o in (outs if many else [outs])]
            except ConvertError:
                raise
            except Exception:  # not evaluable eagerly: emit it as ops
                outs = None
            if gaps is not None:  # evaluated at conversion time: no TFLite kernel is needed
                del gaps[mark:]
            if outs is not None and all(o.size <= _FOLD_LIMIT for o in outs):
                consts = [make_constant(node, o, ctx) for o in outs]
                return consts if many else consts[0]
        ctx.const_reads.clear()
        outs = fn(node, x, ctx)
        # an infinite operand stays exact in TFLite only when the emitter used it as the tensor
        # ``EmitContext.exact_constant`` made, not as a value read through ``ctx.const``
        for j, v in enumerate(vals):
            if v is not None and v.dtype.kind == "f" and np.isinf(v).any():
                t = x.made(j) if hasattr(x, "made") else x[j]
                if t is None or ctx.exact_value(t) is None or node.inputs[j] in ctx.const_reads:
                    tflite_gap(node, "TFLite stores +-inf constants as +-FLT_MAX")
                    break
        return outs

    emit.__name__ = emit.__qualname__ = fn.__name__
    emit.__doc__ = fn.__doc__
    return emit


def small_static_value(t, ctx: EmitContext | None = None) -> np.ndarray | None:
    """The value of ``t`` if known while tracing and not larger than the folding limit (big weights
    are never folded, and copying them per use would only cost time)."""
    n = t.shape.num_elements()
    if n is None or n > _FOLD_LIMIT:
        return None
    v = ctx.exact_value(t) if ctx is not None else None
    return v if v is not None else tf.get_static_value(t)


def make_constant(node: Node, value: np.ndarray, ctx: EmitContext | None = None):
    """``tf.constant``; one holding +-inf is built by ``ctx.exact_constant`` (TFLite would store
    +-FLT_MAX, which can change results: -FLT_MAX + -FLT_MAX overflows where -inf + -inf does
    not), or noted as a TFLite gap when that cannot be done."""
    if value.dtype.kind == "f" and np.isinf(value).any():
        exact = ctx.exact_constant(value) if ctx is not None else None
        if exact is not None:
            return exact
        tflite_gap(node, "TFLite stores +-inf constants as +-FLT_MAX")
    return tf.constant(value)


def input_value(node: Node, ctx: EmitContext, x: list, j: int) -> np.ndarray | None:
    """Input ``j`` as numpy when known at conversion time (an ONNX constant or a folded tensor)."""
    if len(node.inputs) <= j or not node.inputs[j]:
        return None
    v = ctx.const(node.inputs[j])
    if v is None and j < len(x) and x[j] is not None:
        v = small_static_value(x[j], ctx)
        v = tf.get_static_value(x[j]) if v is None else v
    return None if v is None else np.asarray(v)


def unsupported(node: Node, what: str) -> ConvertError:
    return ConvertError(f"node {node.name!r} ({node.op_type}): {what} is not supported by the TF emitter")


I8, U8, I16, U16, I32, U32, I64, U64 = tf.int8, tf.uint8, tf.int16, tf.uint16, tf.int32, tf.uint32, tf.int64, tf.uint64
F16, F32, F64, BOOL = tf.float16, tf.float32, tf.float64, tf.bool
_MOVE = frozenset({I8, U8, I16, I32, U32, I64, F32, BOOL})  # data movement: strided slice, concat, broadcast

# Dtypes the TFLite builtin kernel behind each TF primitive takes (non-quantized), found by
# converting and running every primitive for every dtype (TF 2.21, LiteRT 2.3). uint8 EQUAL even
# aborts the interpreter, so the table is the only safe way to choose.
LITE_DTYPES: dict[str, frozenset] = {
    "add": frozenset({I16, I32, U32, I64, F32}),
    "sub": frozenset({I32, I64, F32}),
    "mul": frozenset({I16, I32, U32, I64, F32}),
    "div": frozenset({F32}),
    "truncatediv": frozenset({I32}),
    "floormod": frozenset({I8, I16, I32, I64, F32}),
    "pow": frozenset({I32, F32}),
    "maximum": frozenset({I32, I64, F32}),
    "minimum": frozenset({I32, I64, F32}),
    "equal": frozenset({I16, I32, I64, F32, BOOL}),
    "not_equal": frozenset({I32, I64, F32, BOOL}),
    "less": frozenset({I16, I32, I64, F32}),
    "less_equal": frozenset({I32, I64, F32}),
    "greater": frozenset({I32, I64, F32}),
    "greater_equal": frozenset({I16, I32, I64, F32}),
    "abs": frozenset({I16, I32, F32}),
    "neg": frozenset({I32, I64, F32}),
    "sign": frozenset({I32, F32}),
    "relu": frozenset({I32, I64, F32}),
    "float": frozenset({F32}),  # exp, log, sqrt, sin, tanh, logistic, floor, matmul, pooling, ...
    "reduce": frozenset({I32, I64, F32}),  # sum, prod, max, min
    "argmax": frozenset({I8, U8, I32, F32, BOOL}),
    "topk": frozenset({I8, U8, I16, I32, I64, F32}),
    "cumsum": frozenset({I32, I64, F32}),
    "select": frozenset({I8, I16, I32, U32, I64, F32, BOOL}),
    "gather": frozenset({I8, U8, I16, I32, I64, F32, BOOL}),
    "slice": _MOVE,
    "concat": _MOVE,
    "broadcast_to": _MOVE,
    "split": frozenset({I8, U8, I16, I32, I64, F32}),
    "tile": frozenset({U8, I32, I64, F32, BOOL}),
    "transpose": frozenset({I8, U8, I32, I64, F32, BOOL}),
    "pad": frozenset({I32, I64, F32, BOOL}),
    "mirror_pad": frozenset({I8, U8, I32, I64, F32}),
    "reverse": frozenset({U8, I16, I32, I64, F32, BOOL}),
    "fill": _MOVE,
    "scatter": frozenset({I32, I64, F32, BOOL}),
    "scatter_add": frozenset({I32, I64, F32}),
    "segment": frozenset({I32, F32}),
    "one_hot": frozenset({I8, U8, I32, I64, F32}),
    "range": frozenset({I32, I64, F32}),
    "depth_to_space": frozenset({I8, U8, I32, I64, F32}),
    "space_to_depth": frozenset({I32, I64, F32}),
    "cast": frozenset({I8, U8, I16, U16, I32, U32, I64, F16, F32, F64, BOOL}),
}
# Dtypes that hold every value of a dtype, narrowest first: computing there is exact.
CONTAINERS: dict = {
    I8: (I8, I16, I32, I64), U8: (U8, I16, I32, I64), I16: (I16, I32, I64),
    U16: (U16, I32, I64), I32: (I32, I64), U32: (U32, I64), F16: (F16, F32),
    BOOL: (BOOL, I8, I32),
}

def tflite_gap(node: Node, reason: str) -> None:
    record_tflite_gap(node, reason)


def to_lite(node: Node, kinds: str | tuple[str, ...], *xs):
    """``xs`` (one dtype) cast to the narrowest dtype that every TFLite kernel in ``kinds`` takes and
    that holds all their values; returns ``(tensors, original dtype)`` (see :func:`cast_back`). Records
    a TFLite gap when there is none; the tensors are then returned as they are."""
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    dt = xs[0].dtype
    ok = frozenset.intersection(*(LITE_DTYPES[k] for k in kinds))
    for c in CONTAINERS.get(dt, (dt,)):
        if c in ok:
            return [x if x.dtype == c else tf.cast(x, c) for x in xs], dt
    tflite_gap(node, f"TFLite has no {'/'.join(kinds)} kernel for {dt.name}")
    return list(xs), dt


def cast_back(y, dt):
    return y if y.dtype == dt else tf.cast(y, dt)


def lite_float(node: Node, x):
    """``x`` in a dtype TFLite's float kernels take (float16 -> float32), and its own dtype."""
    (x,), dt = to_lite(node, "float", x)
    return x, dt


def dims_of(x) -> list:
    """Per-dim static ints where known, else scalar tensors."""
    static = x.shape.as_list()
    dyn = None
    out = []
    for i, d in enumerate(static):
        if d is None:
            dyn = tf.shape(x) if dyn is None else dyn
            out.append(dyn[i])
        else:
            out.append(d)
    return out


def shape_tensor(dims: list):
    if all(isinstance(d, int) for d in dims):
        return dims
    return tf.stack([tf.cast(d, tf.int32) if not isinstance(d, int) else tf.constant(d, tf.int32) for d in dims])


def dims_product(dims: list):
    if all(isinstance(d, int) for d in dims):
        return int(np.prod(dims)) if dims else 1
    return tf.reduce_prod(tf.stack([tf.cast(d, tf.int32) for d in dims]))


def static_shape(x) -> list[int] | None:
    s = x.shape.as_list() if x.shape.rank is not None else None
    return None if s is None or any(d is None for d in s) else s


def axes_input(node: Node, ctx: EmitContext, x: list, j: int = 1, attr: str = "axes") -> list[int] | None:
    """Axes from the opset<13 attribute or constant input ``j`` (None when absent)."""
    if len(node.inputs) > j and node.inputs[j]:
        v = input_value(node, ctx, x, j)
        if v is None:
            raise unsupported(node, f"non-constant {attr}")
        return [int(a) for a in v.reshape(-1)]
    a = node.attr(attr)
    return None if a is None else [int(v) for v in a]


def scalar_operand(node: Node, ctx: EmitContext, x: list, j: int):
    """Input ``j`` as a Python float when constant, the tensor when not, None when absent."""
    v = input_value(node, ctx, x, j)
    if v is None:
        return None if len(node.inputs) <= j or not node.inputs[j] else tf.reshape(x[j], [])
    return v.reshape(-1)[0].item()


def nonneg_index(idx, dim):
    """ONNX indices may be negative (counted from the end)."""
    return tf.where(idx < tf.zeros_like(idx), idx + tf.cast(dim, idx.dtype), idx)


def index_grid(shape: list[int], dtype, skip: int | None = None) -> list:
    """Per axis, a constant tensor of ``shape`` holding that axis' coordinate (None at ``skip``)."""
    grids = np.indices(shape, dtype=dtype.as_numpy_dtype) if shape else np.zeros((0,), dtype.as_numpy_dtype)
    return [None if a == skip else tf.constant(grids[a]) for a in range(len(shape))]


def partial_value(t, depth: int = 0) -> list | None:
    """The entries of a small int vector (or scalar, as one entry) known at conversion time, None
    where known only at run time: shape arithmetic (Shape, slices and gathers of it, Pack, Concat,
    Cast, Reshape) traced back through the graph, so that a ConstantOfShape of ``[n, 256, 14, 14]``
    with a run-time RoI count ``n`` keeps its three static dims. None when nothing is known."""
    v = tf.get_static_value(t)
    if v is not None:
        return [int(a) for a in np.asarray(v).reshape(-1)]
    if depth > 12 or t.shape.rank not in (0, 1) or not hasattr(t, "op"):
        return None
    op = t.op
    ins = list(op.inputs)
    if op.type == "Shape":
        r = ins[0].shape.rank
        return None if r is None else ins[0].shape.as_list()
    if op.type in ("Cast", "Identity", "Reshape", "ExpandDims", "Squeeze"):
        return partial_value(ins[0], depth + 1) if ins[0].shape.num_elements() in (None, 1) or op.type in ("Cast", "Identity") else None
    if op.type in ("Pack", "ConcatV2"):
        parts = [partial_value(a, depth + 1) for a in (ins if op.type == "Pack" else ins[:-1])]
        if all(p is None for p in parts):
            return None
        out: list = []
        for a, p in zip(ins, parts):
            n = a.shape.num_elements() if op.type == "ConcatV2" else 1
            if p is None and n is None:
                return None
            out += p if p is not None else [None] * n
        return out
    if op.type == "GatherV2":
        src, idx, axis = partial_value(ins[0], depth + 1), tf.get_static_value(ins[1]), tf.get_static_value(ins[2])
        if src is None or idx is None or axis not in (0, None):
            return None
        try:
            return [src[int(i)] for i in np.asarray(idx).reshape(-1)]
        except IndexError:  # out of range: TF reports it when the graph runs
            return None
    if op.type == "Slice":
        src, b, n = partial_value(ins[0], depth + 1), tf.get_static_value(ins[1]), tf.get_static_value(ins[2])
        if src is None or b is None or n is None:
            return None
        return src[int(b[0]):] if int(n[0]) < 0 else src[int(b[0]):int(b[0]) + int(n[0])]
    if op.type == "StridedSlice":
        src = partial_value(ins[0], depth + 1)
        b, e, s = (tf.get_static_value(a) for a in ins[1:4])
        if src is None or b is None or e is None or s is None or op.get_attr("ellipsis_mask") or op.get_attr("new_axis_mask"):
            return None
        lo = None if op.get_attr("begin_mask") & 1 else int(b[0])
        hi = None if op.get_attr("end_mask") & 1 else int(e[0])
        if op.get_attr("shrink_axis_mask") & 1:
            return [src[lo or 0]] if -len(src) <= (lo or 0) < len(src) else None
        return src[slice(lo, hi, int(s[0]))]
    return None
