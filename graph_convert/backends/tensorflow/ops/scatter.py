"""Scatter emitters (ScatterND, ScatterElements): ONNX's reductions and duplicate rule on TFLite's
builtin kernels, with static shapes or with dims known only at run time (a detector's per-level
RoI count, NonZero's length)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_convert.ir import Node
from graph_convert.backends.tensorflow.ops.core import (
    cast_back,
    emitter,
    index_grid,
    nonneg_index,
    static_shape,
    to_lite,
    unsupported,
)


def _scatter_rows(node: Node, data2, rows, upd2, reduction: str):
    """Scatter ``upd2`` (M, R) into rows ``rows`` (M,) of ``data2`` (N, R) with an ONNX reduction
    (N may be a run-time count)."""
    n = data2.shape[0] if data2.shape[0] is not None else tf.cast(tf.shape(data2, out_type=tf.int64)[0], tf.int32)
    if reduction == "none":  # duplicate rows: the last update wins, as ONNX Runtime applies them
        # (TFLite's scatter adds duplicates: max-unpooling with overlapping windows writes some twice)
        (d, u), dt = to_lite(node, ("gather", "select"), data2, upd2)
        m = tf.cast(tf.shape(u, out_type=tf.int64)[0], tf.int32)
        winner = tf.math.unsorted_segment_max(tf.range(m), tf.cast(rows, tf.int32), n)
        # untouched rows read a zero row appended to the updates: with a run-time count of 0
        # updates (no RoI on a level) there is no row 0 to read
        u = tf.pad(u, [[0, 1], [0, 0]])
        return cast_back(tf.where((winner >= 0)[:, None], tf.gather(u, tf.where(winner >= 0, winner, m)), d), dt)
    if reduction == "add":
        (d, u), dt = to_lite(node, "scatter_add", data2, upd2)
        return cast_back(tf.tensor_scatter_nd_add(d, rows[:, None], u), dt)
    # duplicates must combine: reduce the updates per row first (TFLite UNSORTED_SEGMENT_*)
    (d, u), dt = to_lite(node, ("segment", "select", "maximum", "minimum", "mul"), data2, upd2)
    seg_ids = tf.cast(rows, tf.int32)
    if reduction == "mul":
        return cast_back(d * tf.math.unsorted_segment_prod(u, seg_ids, n), dt)
    if reduction not in ("max", "min"):
        raise unsupported(node, f"reduction {reduction!r}")
    seg = (tf.math.unsorted_segment_max if reduction == "max" else tf.math.unsorted_segment_min)(u, seg_ids, n)
    touched = tf.math.unsorted_segment_max(tf.ones_like(u[:, :1], dtype=tf.float32), seg_ids, n) > 0.0
    both = tf.math.maximum(d, seg) if reduction == "max" else tf.math.minimum(d, seg)
    return cast_back(tf.where(touched, both, d), dt)


def _row_index(idx, dims: list):
    """Row-major linear index of the leading ``len(dims)`` coordinates in ``idx[..., :]`` (int64);
    ``dims`` are ints or run-time scalars (each stride then a product at run time)."""
    if all(isinstance(d, int) for d in dims):
        strides = np.cumprod([1] + dims[::-1][:-1])[::-1].astype(np.int64)
        return tf.reduce_sum(tf.cast(idx, tf.int64) * tf.constant(strides), axis=-1)
    dims64 = [tf.cast(d, tf.int64) if not isinstance(d, int) else tf.constant(d, tf.int64) for d in dims]
    stride, strides = tf.constant(1, tf.int64), []
    for d in reversed(dims64):
        strides.append(stride)
        stride = stride * d
    return tf.reduce_sum(tf.cast(idx, tf.int64) * tf.stack(strides[::-1]), axis=-1)


def _size(dims: list):
    """The product of ``dims`` (ints and run-time scalars): an int when all are known."""
    if all(isinstance(d, int) for d in dims):
        return int(np.prod(dims, dtype=np.int64))
    out = tf.constant(1, tf.int64)
    for d in dims:
        out = out * (d if not isinstance(d, int) else tf.constant(d, tf.int64))
    return out


def _dims(x) -> list:
    """Per dim, the static int where known, else a run-time int64 scalar. int64 on purpose: the
    TFLite converter folds an int32 ``Shape`` of a ``Fill`` (ConstantOfShape) into a slice of its
    int64 dims with an int32 result, a STRIDED_SLICE that no kernel takes."""
    dyn = None
    out: list = []
    for i, d in enumerate(x.shape.as_list()):
        if d is None:
            dyn = tf.shape(x, out_type=tf.int64) if dyn is None else dyn
            d = dyn[i]
        out.append(d)
    return out


def _shape(dims: list):
    """A reshape target: a list when every dim is known, else a run-time int64 vector."""
    if all(isinstance(d, int) for d in dims):
        return list(dims)
    return tf.stack([d if not isinstance(d, int) else tf.constant(d, tf.int64) for d in dims])


@emitter("ScatterND")
def emit_scatter_nd(node, x, ctx):
    data, idx, upd = x
    if data.shape.rank is None or idx.shape.rank is None or idx.shape[-1] is None:
        raise unsupported(node, "an unknown rank or index depth (last dim of indices)")
    k = idx.shape[-1]
    dims, idims = _dims(data), _dims(idx)
    bounds = dims[:k]
    if all(isinstance(d, int) for d in bounds):
        bounds = tf.constant(np.array(bounds, dtype=idx.dtype.as_numpy_dtype))
    else:
        bounds = tf.stack([tf.cast(d, idx.dtype) for d in bounds])
    idx = nonneg_index(idx, bounds)
    n, r, m = _size(dims[:k]), _size(dims[k:]), _size(idims[:-1])
    rows = tf.reshape(_row_index(idx, dims[:k]), _shape([m]))
    y = _scatter_rows(node, tf.reshape(data, _shape([n, r])), rows, tf.reshape(upd, _shape([m, r])),
                      node.attr("reduction", "none"))
    return tf.ensure_shape(tf.reshape(y, _shape(dims)), data.shape)  # the dims known statically stay known


@emitter("ScatterElements", "Scatter")
def emit_scatter_elements(node, x, ctx):
    data, idx, upd = x
    if data.shape.rank is None or idx.shape.rank is None:
        raise unsupported(node, "an unknown rank")
    rank = data.shape.rank
    axis = node.attr("axis", 0) % rank
    dims, ishape = _dims(data), static_shape(idx)
    if ishape is not None:
        cols = index_grid(ishape, tf.int64, skip=axis)
    else:  # a run-time index shape (a count of RoIs): its coordinates made at run time
        ish = tf.shape(idx, out_type=tf.int64)
        cols = [None if a == axis else
                tf.broadcast_to(tf.reshape(tf.range(ish[a]), [-1 if i == a else 1 for i in range(rank)]), ish)
                for a in range(rank)]
    cols[axis] = nonneg_index(tf.cast(idx, tf.int64), dims[axis])
    rows = tf.reshape(_row_index(tf.stack(cols, axis=-1), dims), [-1])
    y = _scatter_rows(node, tf.reshape(data, [-1, 1]), rows, tf.reshape(upd, [-1, 1]), node.attr("reduction", "none"))
    return tf.ensure_shape(tf.reshape(y, _shape(dims)), data.shape)  # the dims known statically stay known
