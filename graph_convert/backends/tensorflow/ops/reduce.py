"""Reductions, softmax, hardmax, arg-max/min, top-k, cumulative sums."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_convert.ir import perm as P
from graph_convert.ir import Node
from graph_convert.backends.tensorflow.ops.core import (
    CONTAINERS,
    LITE_DTYPES,
    axes_input,
    cast_back,
    make_constant,
    dims_of,
    lite_float,
    input_value,
    to_lite,
    dims_product,
    shape_tensor,
    static_shape,
    unsupported,
    emitter,
)
from graph_convert.backends.tensorflow.ops.elementwise import lite_abs


def _reduce_axes(node, x, ctx):
    rank = len(x[0].shape)
    axes = axes_input(node, ctx, x)
    if not axes:
        return None if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({a % rank for a in axes})


def _log_sum_exp(t, axes, keepdims):
    m = tf.math.reduce_max(t, axis=axes, keepdims=True)
    m = tf.where(tf.math.equal(m - m, 0.0), m, tf.zeros_like(m))  # +-inf/NaN maxima: no shift
    y = tf.math.log(tf.math.reduce_sum(tf.math.exp(t - m), axis=axes, keepdims=True)) + m
    return y if keepdims else tf.squeeze(y, axis=axes)


# op -> (TFLite kernels needed, float-only?, fn(t, axes, keepdims))
_REDUCE: dict[str, tuple] = {
    "ReduceSum": ("reduce", False, tf.math.reduce_sum),
    "ReduceProd": ("reduce", False, tf.math.reduce_prod),
    "ReduceMax": ("reduce", False, tf.math.reduce_max),
    "ReduceMin": ("reduce", False, tf.math.reduce_min),
    "ReduceMean": ("float", True, tf.math.reduce_mean),
    "ReduceSumSquare": (("reduce", "mul"), False, lambda t, axis, keepdims: tf.math.reduce_sum(t * t, axis, keepdims)),
    "ReduceL1": (("reduce", "less", "neg", "select"), False, lambda t, axis, keepdims: tf.math.reduce_sum(lite_abs(t), axis, keepdims)),
    "ReduceL2": ("float", True, lambda t, axis, keepdims: tf.math.sqrt(tf.math.reduce_sum(t * t, axis, keepdims))),
    "ReduceLogSum": ("float", True, lambda t, axis, keepdims: tf.math.log(tf.math.reduce_sum(t, axis, keepdims))),
    "ReduceLogSumExp": ("float", True, _log_sum_exp),
}


def _empty_reduction(op: str, dtype):
    """What a reduction over zero elements gives (the identity of the operation)."""
    np_dt = dtype.as_numpy_dtype
    if op in ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"):
        return np.zeros((), np_dt)
    if op == "ReduceProd":
        return np.ones((), np_dt)
    if op in ("ReduceLogSum", "ReduceLogSumExp"):
        return np.array(-np.inf, np_dt)
    if op == "ReduceMean":
        return np.array(np.nan, np_dt)
    if dtype == tf.bool:
        return np.array(op == "ReduceMin")
    if dtype.is_floating:
        return np.array(-np.inf if op == "ReduceMax" else np.inf, np_dt)
    info = np.iinfo(np_dt)
    return np.array(info.min if op == "ReduceMax" else info.max, np_dt)


@emitter(*_REDUCE)
def emit_reduce(node, x, ctx):
    axes = _reduce_axes(node, x, ctx)
    if axes is None:
        return tf.identity(x[0])
    keep = bool(node.attr("keepdims", 1))
    kinds, float_only, fn = _REDUCE[node.op_type]
    s = static_shape(x[0])
    if s is not None and any(s[a] == 0 for a in axes):  # nothing to reduce: the result is a constant
        out = [1 if i in axes else d for i, d in enumerate(s)] if keep else [d for i, d in enumerate(s) if i not in axes]
        return make_constant(node, np.full(out, _empty_reduction(node.op_type, x[0].dtype)), ctx)
    if float_only and not x[0].dtype.is_floating:
        raise unsupported(node, f"{x[0].dtype.name} input")
    (t,), dt = to_lite(node, kinds, x[0])
    return cast_back(fn(t, axes, keep), dt)


@emitter("Softmax", "LogSoftmax")
def emit_softmax(node, x, ctx):
    fn = tf.nn.softmax if node.op_type == "Softmax" else tf.nn.log_softmax
    t, dt = lite_float(node, x[0])
    rank = len(t.shape)
    if ctx.opset >= 13:
        axis = node.attr("axis", -1) % rank
        if axis == rank - 1:
            return cast_back(fn(t, axis=-1), dt)
        # TFLite's SOFTMAX works on the last axis only (TF would wrap it in two TRANSPOSEs):
        # spell it out with reductions over the axis instead
        z = t - tf.math.reduce_max(t, axis=axis, keepdims=True)
        if node.op_type == "Softmax":
            e = tf.math.exp(z)
            return cast_back(e / tf.math.reduce_sum(e, axis=axis, keepdims=True), dt)
        return cast_back(z - tf.math.log(tf.math.reduce_sum(tf.math.exp(z), axis=axis, keepdims=True)), dt)
    axis = node.attr("axis", 1) % rank  # opset < 13: softmax over the flattened trailing dims
    if axis == rank - 1:
        return cast_back(fn(t, axis=-1), dt)
    dims = dims_of(t)
    flat = tf.reshape(t, shape_tensor([*dims[:axis], -1]))
    return cast_back(tf.reshape(fn(flat, axis=-1), tf.shape(t)), dt)


@emitter("Hardmax")
def emit_hardmax(node, x, ctx):
    t = x[0]
    rank = len(t.shape)
    if ctx.opset >= 13:
        axis = node.attr("axis", -1) % rank
        return _one_hot_of(node, _arg_index(node, t, axis, "max", last=False), t.shape[axis], axis, t.dtype)
    axis = node.attr("axis", 1) % rank
    dims = dims_of(t)
    flat = tf.reshape(t, shape_tensor([dims_product(dims[:axis]), dims_product(dims[axis:])]))
    y = _one_hot_of(node, _arg_index(node, flat, 1, "max", last=False), flat.shape[1], -1, t.dtype)
    return tf.reshape(y, tf.shape(t))


def _one_hot_of(node: Node, idx, depth: int, axis: int, dtype):
    (vals,), dt = to_lite(node, "one_hot", tf.constant([0, 1], dtype))
    return cast_back(tf.one_hot(idx, depth, on_value=vals[1], off_value=vals[0], axis=axis), dt)


def _arg_index(node: Node, t, axis: int, which: str, last: bool):
    """int64 index of the first (or last) max/min along ``axis`` (axis removed)."""
    dt = t.dtype
    if not last:
        for c in CONTAINERS.get(dt, (dt,)):
            if c in LITE_DTYPES["argmax"]:
                t = t if c == dt else tf.cast(t, c)
                return (tf.math.argmax if which == "max" else tf.math.argmin)(t, axis=axis, output_type=tf.int64)
    # no ARG_MAX kernel for the dtype (int64), or the last index wanted: mark where the extreme
    # value sits and take the smallest/largest position among the marks
    (t,), _ = to_lite(node, ("reduce", "equal"), t)
    ext = (tf.math.reduce_max if which == "max" else tf.math.reduce_min)(t, axis=axis, keepdims=True)
    n = t.shape[axis]
    if n is None:
        raise unsupported(node, "an unknown reduced dimension")
    pos = tf.constant(np.arange(n, dtype=np.int32).reshape([n if i == axis else 1 for i in range(len(t.shape))]))
    hit = tf.math.equal(t, ext)
    if last:
        return tf.cast(tf.math.reduce_max(tf.where(hit, pos, -1), axis=axis), tf.int64)
    return tf.cast(tf.math.reduce_min(tf.where(hit, pos, n), axis=axis), tf.int64)


@emitter("ArgMax", "ArgMin")
def emit_arg(node, x, ctx):
    t = x[0]
    rank = len(t.shape)
    axis = node.attr("axis", 0) % rank
    t = lite_float(node, t)[0] if t.dtype.is_floating else t
    y = _arg_index(node, t, axis, "max" if node.op_type == "ArgMax" else "min", bool(node.attr("select_last_index", 0)))
    if node.attr("keepdims", 1):
        y = tf.expand_dims(y, axis)
    return y


@emitter("TopK")
def emit_top_k(node, x, ctx):
    t = x[0]
    rank = len(t.shape)
    axis = node.attr("axis", -1) % rank
    if ctx.opset < 10:
        k = node.attr("k")
    else:
        kv = input_value(node, ctx, x, 1)
        k = int(kv.reshape(-1)[0]) if kv is not None else tf.cast(tf.reshape(x[1], []), tf.int32)
    (t,), dt = to_lite(node, ("topk", "neg", "sub"), t)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = axis != rank - 1
    if moved:
        t = tf.transpose(t, perm)
    # smallest-k = largest-k of an order-reversing map: -x for floats, -1 - x for integers
    # (no overflow at the minimum); top_k breaks ties by the lower index, as ONNX asks
    if t.dtype.is_floating:
        flip = lambda v: -v  # noqa: E731
    elif t.dtype.is_unsigned:
        flip = lambda v: tf.constant(v.dtype.max, v.dtype) - v  # noqa: E731
    else:
        flip = lambda v: tf.constant(-1, v.dtype) - v  # noqa: E731
    largest = node.attr("largest", 1)
    vals, idx = tf.math.top_k(t if largest else flip(t), k=k, sorted=True)
    if not largest:
        vals = flip(vals)
    idx = tf.cast(idx, tf.int64)
    if moved:
        inv = P.invert(perm)
        vals, idx = tf.transpose(vals, inv), tf.transpose(idx, inv)
    return [cast_back(vals, dt), idx]


@emitter("CumSum")
def emit_cumsum(node, x, ctx):
    av = input_value(node, ctx, x, 1)
    if av is None:
        raise unsupported(node, "a non-constant axis")
    (t,), dt = to_lite(node, "cumsum", x[0])
    y = tf.math.cumsum(t, axis=int(av.reshape(-1)[0]), exclusive=bool(node.attr("exclusive", 0)), reverse=bool(node.attr("reverse", 0)))
    return cast_back(y, dt)
