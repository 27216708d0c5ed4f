"""Ops that pick, reorder or place elements by computed indices: Compress, Unique,
ReverseSequence, CenterCropPad, MaxUnpool, CumProd.

Data-dependent output sizes (Compress, Unique) come from TFLite's WHERE kernel and are exact
(dynamic dimensions, no padding). Unique sorts without a sort kernel: each element's rank among
the distinct values is a count of smaller values (lexicographic for slices), O(n^2) comparisons.
MaxUnpool's "the last write wins" is an UNSORTED_SEGMENT_MAX over element positions (a scatter
would add duplicates). CumProd has no TFLite kernel: a log-depth scan of shifted products.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_convert.backends.tensorflow.ops.core import cast_back, emitter, input_value, to_lite, unsupported


@emitter("Compress")
def emit_compress(node, x, ctx):
    keep = tf.reshape(tf.cast(x[1], tf.bool), [-1])
    idx = tf.reshape(tf.where(keep), [-1])
    axis = node.attr("axis")
    (t,), dt = to_lite(node, "gather", x[0])
    if axis is None:
        return cast_back(tf.gather(tf.reshape(t, [-1]), idx), dt)
    return cast_back(tf.gather(t, idx, axis=int(axis) % len(t.shape)), dt)


@emitter("Unique")
def emit_unique(node, x, ctx):
    t = x[0]
    axis = node.attr("axis")
    if axis is None:
        moved, back = tf.reshape(t, [-1]), None
    else:
        rank = len(t.shape)
        axis = int(axis) % rank
        order = [axis] + [a for a in range(rank) if a != axis]
        moved, back = tf.transpose(t, order), order
    rows = tf.reshape(moved, [tf.shape(moved)[0], -1])
    (r,), _ = to_lite(node, ("equal", "less", "not_equal"), rows)
    n = tf.shape(r)[0]
    width = tf.shape(r)[1]
    j = tf.range(n)
    eq = tf.reduce_all(tf.equal(r[:, None, :], r[None, :, :]), axis=2)  # (n, n): same value/slice
    first = tf.reduce_min(tf.where(eq, tf.broadcast_to(j[None, :], [n, n]), n), axis=1)  # first occurrence
    is_first = tf.equal(first, j)
    if node.attr("sorted", 1):
        pos = tf.range(width)
        differs = tf.not_equal(r[:, None, :], r[None, :, :])  # (i, j, m)
        where_first = tf.reduce_min(tf.where(differs, tf.broadcast_to(pos[None, None, :], tf.shape(differs)), width), axis=2)
        at_first = tf.equal(pos[None, None, :], where_first[:, :, None])
        below = tf.reduce_any(tf.logical_and(tf.less(r[None, :, :], r[:, None, :]), at_first), axis=2)  # x_j < x_i
        inverse = tf.reduce_sum(tf.cast(tf.logical_and(below, is_first[None, :]), tf.int32), axis=1)
    else:  # the order of first occurrence
        inverse = tf.gather(tf.cumsum(tf.cast(is_first, tf.int32)) - 1, first)
    firsts = tf.cast(tf.reshape(tf.where(is_first), [-1]), tf.int32)
    u = tf.shape(firsts)[0]
    indices = tf.scatter_nd(tf.gather(inverse, firsts)[:, None], firsts, tf.reshape(u, [1]))
    y = tf.gather(moved, indices)
    if back is not None:
        y = tf.transpose(y, list(np.argsort(back)))
    counts = tf.reduce_sum(tf.cast(tf.equal(inverse[None, :], tf.range(u)[:, None]), tf.int32), axis=1)
    return [y, tf.cast(indices, tf.int64), tf.cast(inverse, tf.int64), tf.cast(counts, tf.int64)]


@emitter("ReverseSequence")
def emit_reverse_sequence(node, x, ctx):
    batch_axis, time_axis = int(node.attr("batch_axis", 1)), int(node.attr("time_axis", 0))
    (t,), dt = to_lite(node, "gather", x[0])
    rank = len(t.shape)
    order = [batch_axis, time_axis] + list(range(2, rank))
    bt = tf.transpose(t, order) if order != list(range(rank)) else t  # (B, T, ...)
    shape = tf.shape(bt)
    b, steps = shape[0], shape[1]
    lens = tf.cast(tf.reshape(x[1], [-1, 1]), tf.int32)
    tt = tf.range(steps)[None, :]
    src = tf.where(tt < lens, lens - 1 - tt, tt)  # (B, T): reversed inside each sequence's length
    flat = tf.range(b)[:, None] * steps + src
    rows = tf.reshape(bt, tf.concat([[b * steps], shape[2:]], 0))
    y = tf.reshape(tf.gather(rows, flat), shape)
    if order != list(range(rank)):
        y = tf.transpose(y, list(np.argsort(order)))
    return cast_back(y, dt)


@emitter("CenterCropPad")
def emit_center_crop_pad(node, x, ctx):
    target = input_value(node, ctx, x, 1)
    if target is None:
        raise unsupported(node, "a shape input not known at conversion time")
    (t,), dt = to_lite(node, ("slice", "pad"), x[0])
    rank = len(t.shape)
    axes = [int(a) % rank for a in (node.attr("axes") or range(rank))]
    dims = t.shape.as_list()
    begin, size, pads = [0] * rank, [-1] * rank, [[0, 0] for _ in range(rank)]
    for a, want in zip(axes, np.asarray(target).reshape(-1).tolist()):
        have = dims[a]
        if have is None:
            raise unsupported(node, f"axis {a} of unknown size")
        if want < have:  # crop: the extra element of an odd difference comes off the end
            begin[a], size[a] = (have - want) // 2, int(want)
        elif want > have:  # pad: the extra element of an odd difference goes to the end
            pads[a] = [(want - have) // 2, want - have - (want - have) // 2]
    y = tf.slice(t, begin, size) if any(s != -1 for s in size) else t
    if any(p != [0, 0] for p in pads):
        y = tf.pad(y, pads)
    return cast_back(y, dt)


@emitter("MaxUnpool")
def emit_max_unpool(node, x, ctx):
    t = x[0]
    dims = t.shape.as_list()
    if any(d is None for d in dims):
        raise unsupported(node, "an input of unknown shape")
    kernel = list(node.attr("kernel_shape"))
    k = len(kernel)
    strides = list(node.attr("strides") or [1] * k)
    pads = list(node.attr("pads") or [0] * (2 * k))
    out = dims[:2] + [(dims[2 + i] - 1) * strides[i] - (pads[i] + pads[k + i]) + kernel[i] for i in range(k)]
    if len(node.inputs) > 2 and node.inputs[2]:
        shape = input_value(node, ctx, x, 2)
        if shape is None:
            raise unsupported(node, "an output_shape input not known at conversion time")
        # the indices address the flattened output_shape tensor, as MaxPool over an input of that
        # shape writes them (ONNX Runtime, PyTorch); the ONNX reference implementation instead
        # reads them in the inferred shape and zero-pads (see the conformance exclusions)
        out = [int(s) for s in np.asarray(shape).reshape(-1)]
    total = int(np.prod(out))
    m = int(np.prod(dims))
    where = tf.cast(tf.reshape(x[1], [-1]), tf.int32)  # flat positions in the result
    # duplicate positions: the reference assigns in element order, so the last element wins
    winner = tf.math.unsorted_segment_max(tf.range(m, dtype=tf.int32), where, total)
    (flat,), dt = to_lite(node, ("gather", "select"), tf.reshape(t, [-1]))
    hit = winner >= 0
    y = tf.where(hit, tf.gather(flat, tf.maximum(winner, 0)), tf.zeros_like(flat[:1]))
    y = tf.reshape(y, out)
    return cast_back(y, dt)


@emitter("CumProd")
def emit_cum_prod(node, x, ctx):
    av = input_value(node, ctx, x, 1)
    if av is None:
        raise unsupported(node, "a non-constant axis")
    (t,), dt = to_lite(node, ("mul", "concat", "slice", "reverse"), x[0])
    axis = int(np.asarray(av).reshape(-1)[0]) % len(t.shape)
    n = t.shape[axis]
    if n is None:
        raise unsupported(node, "an axis of unknown length")
    if node.attr("reverse", 0):
        t = tf.reverse(t, [axis])

    def shifted(v, k):  # v moved k steps along the axis, ones coming in
        ones_shape = tf.concat([tf.shape(v)[:axis], [k], tf.shape(v)[axis + 1:]], 0)
        head = tf.ones(ones_shape, v.dtype)
        keep = [slice(None)] * axis + [slice(0, n - k)]
        return tf.concat([head, v[tuple(keep)]], axis=axis)

    if node.attr("exclusive", 0) and n > 0:
        t = shifted(t, 1)
    k = 1
    while k < n:  # Hillis-Steele: after the step with shift k, each entry holds the product of 2k
        t = t * shifted(t, k)
        k *= 2
    if node.attr("reverse", 0):
        t = tf.reverse(t, [axis])
    return cast_back(t, dt)
