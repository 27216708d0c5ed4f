"""Shape and data-movement emitters: reshapes and transposes, slicing, gathers and scatters,
padding, constants of a shape."""
from __future__ import annotations

import math
from functools import reduce

import numpy as np
import onnx
import tensorflow as tf

from graph_convert.ir import Node
from graph_convert.backends.tensorflow.emitter import tf_dtype
from graph_convert.backends.tensorflow.ops.core import (
    CONTAINERS,
    LITE_DTYPES,
    axes_input,
    cast_back,
    make_constant,
    dims_of,
    tflite_gap,
    index_grid,
    input_value,
    nonneg_index,
    partial_value,
    to_lite,
    dims_product,
    scalar_operand,
    shape_tensor,
    static_shape,
    unsupported,
    emitter,
)


@emitter("Reshape")
def emit_reshape(node, x, ctx):
    target = input_value(node, ctx, x, 1)
    known = None
    if target is None and ctx.batch is not None and not node.attr("allowzero", 0):
        known = ctx.batch.reshape_target(node.inputs[1], ctx.env, x[0])  # a dynamic dims' target
    if known is not None:
        return tf.reshape(x[0], known)
    if target is None:
        t = tf.cast(x[1], tf.int64)
        n = t.shape[0]
        if not node.attr("allowzero", 0) and n is not None:  # 0 copies the input's dimension
            src = tf.shape(x[0], out_type=tf.int64)
            rank = len(x[0].shape)
            src = src[:n] if rank >= n else tf.concat([src, tf.zeros([n - rank], tf.int64)], 0)
            t = tf.where(tf.math.equal(t, 0), src, t)
        return tf.reshape(x[0], t)
    target = [int(v) for v in target.reshape(-1)]
    if not node.attr("allowzero", 0) and 0 in target:
        dims = dims_of(x[0])
        target = [dims[i] if v == 0 else v for i, v in enumerate(target)]
    return tf.reshape(x[0], shape_tensor(target))


@emitter("Flatten")
def emit_flatten(node, x, ctx):
    rank = len(x[0].shape)
    axis = node.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    dims = dims_of(x[0])
    return tf.reshape(x[0], shape_tensor([dims_product(dims[:axis]), dims_product(dims[axis:])]))


@emitter("Transpose")
def emit_transpose(node, x, ctx):
    p = node.attr("perm")
    if p is None:
        p = list(reversed(range(len(x[0].shape))))
    (t,), dt = to_lite(node, "transpose", x[0])
    return cast_back(_transpose(t, p), dt)


def _merged(shape: list, p: list) -> tuple[list, list]:
    """``shape``/``p`` with size-1 axes dropped and axes that stay adjacent merged: the transpose
    as the kernel sees it. Returns (dims of the merged input, perm over them)."""
    keep = [a for a in p if shape[a] != 1]
    groups: list[list[int]] = []  # runs of input axes, in output order
    for a in keep:
        if groups and a > groups[-1][-1] and all(shape[b] == 1 for b in range(groups[-1][-1] + 1, a)):
            groups[-1].append(a)
        else:
            groups.append([a])
    order = sorted(range(len(groups)), key=lambda g: groups[g][0])  # groups in input order
    dims = [math.prod(shape[a] for a in groups[g]) for g in order]
    pos = {g: i for i, g in enumerate(order)}
    return dims, [pos[g] for g in range(len(groups))]


def _transpose(t, p: list):
    """tf.transpose, except a batched transpose of small matrices ([B, m, n] -> [B, n, m] once
    size-1 axes are dropped and adjacent ones merged, with min(m, n) <= 4 and m*n >= 16), as in
    channel shuffles. XNNPACK moves that element by element; three tiled transposes that each
    move whole rows ([B, mn] -> [mn, B], then [m, n, B] -> [n, m, B], then back) run 2-3x faster
    on this machine (benchmarks/README.md)."""
    shape = t.shape.as_list()
    if None in shape or len(shape) < 3:
        return tf.transpose(t, p)
    dims, q = _merged(shape, list(p))
    if q != [0, 2, 1]:
        return tf.transpose(t, p)
    b, m, n = dims
    if not (min(m, n) <= 4 and m * n >= 16):
        return tf.transpose(t, p)
    y = tf.transpose(tf.reshape(t, [b, m * n]))            # [mn, B]
    y = tf.transpose(tf.reshape(y, [m, n, b]), [1, 0, 2])  # [n, m, B]
    y = tf.transpose(tf.reshape(y, [n * m, b]))            # [B, nm]
    return tf.reshape(y, [shape[a] for a in p])


@emitter("Concat")
def emit_concat(node, x, ctx):
    xs, dt = to_lite(node, "concat", *[t for t in x if t is not None])
    if ctx.declare_quantization:  # the int8 file's trace: inputs of other scales are requantized
        from graph_convert.backends.tensorflow.ops.quantized import requantizing_concat

        y = requantizing_concat(node, xs, ctx)
        if y is not None:
            return y
    return cast_back(tf.concat(xs, axis=node.attr("axis")), dt)


@emitter("Squeeze")
def emit_squeeze(node, x, ctx):
    axes = axes_input(node, ctx, x)
    rank = len(x[0].shape)
    dims = dims_of(x[0])
    if axes is None:
        if any(not isinstance(d, int) for d in dims):
            return tf.squeeze(x[0])
        axes = [i for i, d in enumerate(dims) if d == 1]
    drop = {a % rank for a in axes}
    if any(not isinstance(d, int) for d in dims):  # one SQUEEZE, its shape from its input's: no run-time shape ops
        return tf.squeeze(x[0], sorted(drop))
    return tf.reshape(x[0], shape_tensor([d for i, d in enumerate(dims) if i not in drop]))


@emitter("Unsqueeze")
def emit_unsqueeze(node, x, ctx):
    axes = axes_input(node, ctx, x)
    if axes is None:
        raise unsupported(node, "missing axes")
    out_rank = len(x[0].shape) + len(axes)
    new = {a % out_rank for a in axes}
    if None in x[0].shape.as_list():  # EXPAND_DIMS at ascending output axes: its shape from its input's, no shape ops
        return reduce(tf.expand_dims, sorted(new), x[0])
    rest = iter(dims_of(x[0]))
    return tf.reshape(x[0], shape_tensor([1 if i in new else next(rest) for i in range(out_rank)]))


@emitter("Shape")
def emit_shape(node, x, ctx):
    start, end = node.attr("start", 0), node.attr("end")
    s = static_shape(x[0])
    if s is not None:
        return tf.constant(np.array(s[start:end], dtype=np.int64))
    return tf.shape(x[0], out_type=tf.int64)[start:end]


@emitter("Size")
def emit_size(node, x, ctx):
    s = static_shape(x[0])
    if s is not None:
        return tf.constant(np.int64(np.prod(s)))
    return tf.size(x[0], out_type=tf.int64)


@emitter("Split")
def emit_split(node, x, ctx):
    axis = node.attr("axis", 0)
    if ctx.opset >= 13 and len(node.inputs) > 1 and node.inputs[1]:
        split = input_value(node, ctx, x, 1)
        if split is None:
            raise unsupported(node, "non-constant split sizes")
        split = [int(v) for v in split]
    else:
        split = node.attr("split")
    n = len(node.outputs)
    (t,), dt = to_lite(node, "split", x[0])
    if split is None:
        dim = t.shape[axis]
        if dim is None:
            return [cast_back(y, dt) for y in tf.split(t, n, axis=axis)]
        chunk = -(-dim // n)  # opset 18 num_outputs: the last chunk may be smaller
        split = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
    if len(set(split)) == 1 and t.shape[axis] == sum(split) and t.dtype != tf.int64:
        # equal parts as a count: TFLite SPLIT, which XNNPACK takes (SPLIT_V cuts the delegate graph);
        # SPLIT has no int64 kernel (the converter refuses it), SPLIT_V has
        return [cast_back(y, dt) for y in tf.split(t, len(split), axis=axis)]
    return [cast_back(y, dt) for y in tf.split(t, split, axis=axis)]


def _slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int | None]:
    """ONNX Slice clamping rules for one axis of static size ``dim``."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return start, end
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return start, (None if end == -1 else end)


@emitter("Slice")
def emit_slice(node, x, ctx):
    rank = len(x[0].shape)
    if ctx.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes = node.attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        vals = [input_value(node, ctx, x, j) for j in range(1, 5)]
        if (len(node.inputs) > 3 and node.inputs[3] and vals[2] is None) or (len(node.inputs) > 4 and node.inputs[4] and vals[3] is None):
            raise unsupported(node, "non-constant axes/steps")
        n = (x[1].shape[0] if vals[0] is None else vals[0].size)
        if n is None:
            raise unsupported(node, "starts of unknown length")
        axes = [int(v) for v in vals[2]] if vals[2] is not None else list(range(n))
        steps = [int(v) for v in vals[3]] if vals[3] is not None else [1] * n
        if vals[0] is None or vals[1] is None:
            (t,), dt = to_lite(node, "slice", x[0])
            return cast_back(_slice_runtime(t, x[1], x[2], [a % rank for a in axes], steps), dt)
        starts, ends = [int(v) for v in vals[0]], [int(v) for v in vals[1]]
    sl = [slice(None)] * rank
    shape = x[0].shape.as_list()
    out_ir = ctx.shape(node.outputs[0])
    out_ir = list(out_ir) if out_ir is not None and len(out_ir) == rank else [None] * rank
    if any(shape[a % rank] is None and not isinstance(out_ir[a % rank], int) for a in axes):
        # a slice of a run-time dim (a count of detections) whose length nobody knows now: TF's
        # strided slice clamps the ends to it, but the TFLite converter may turn it into a SLICE of
        # size end - begin, which fails past the end
        (t,), dt = to_lite(node, "slice", x[0])
        y = _slice_runtime(t, tf.constant(starts, tf.int64), tf.constant(ends, tf.int64), [a % rank for a in axes], steps)
        # run-time bounds hide every dim from TF: restore the ones known now
        known = [d if d is not None else (o if isinstance(o, int) else None) for d, o in zip(shape, out_ir)]
        for st_, e_, a, sp in zip(starts, ends, axes, steps):
            if shape[a % rank] is not None:
                b, e2 = _slice_bounds(st_, e_, sp, shape[a % rank])
                known[a % rank] = len(range(b, -1 if e2 is None else e2, sp))
            else:
                known[a % rank] = None
        y.set_shape(known)
        return cast_back(y, dt)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= rank
        dim = shape[a]
        if dim is not None:
            s, e = _slice_bounds(s, e, st, dim)
        else:
            big = 2**31 - 1
            s = None if (st > 0 and s <= -big) or (st < 0 and s >= big) else max(min(s, big), -big)
            e = None if abs(e) >= big else e
        sl[a] = slice(s, e, st)
    (t,), dt = to_lite(node, "slice", x[0])
    if rank > 5 and None not in shape:
        return cast_back(_slice_high_rank(node, t, shape, sl), dt)
    return cast_back(t[tuple(sl)], dt)


def _slice_runtime(t, starts, ends, axes: list[int], steps: list[int]):
    """Slice by starts/ends known only at run time: ONNX's clamping rules spelled out as ops, then
    one STRIDED_SLICE (end -1 of a backward slice becomes -dim-1: 'through index 0')."""
    rank = len(t.shape)
    dims = tf.shape(t, out_type=tf.int64)
    begin, end, stride = [tf.constant(0, tf.int64)] * rank, [dims[a] for a in range(rank)], [1] * rank
    starts, ends = tf.cast(starts, tf.int64), tf.cast(ends, tf.int64)
    for i, (a, st) in enumerate(zip(axes, steps)):
        d = dims[a]
        s, e = starts[i], ends[i]
        s = tf.where(s < 0, s + d, s)
        e = tf.where(e < 0, e + d, e)
        if st > 0:
            s, e = tf.clip_by_value(s, 0, d), tf.clip_by_value(e, 0, d)
        else:
            s, e = tf.clip_by_value(s, 0, d - 1), tf.clip_by_value(e, -1, d - 1)
            e = tf.where(e < 0, -d - 1, e)
        begin[a], end[a], stride[a] = s, e, st
    return tf.strided_slice(t, tf.cast(tf.stack(begin), tf.int32), tf.cast(tf.stack(end), tf.int32), stride)


def _slice_high_rank(node: Node, t, shape: list[int], sl: list[slice]):
    """TFLite's STRIDED_SLICE takes at most 5-D: merge runs of untouched axes first."""
    groups: list[list[int]] = []
    for a in range(len(shape)):
        if sl[a] == slice(None) and groups and sl[groups[-1][0]] == slice(None):
            groups[-1].append(a)
        else:
            groups.append([a])
    if len(groups) > 5:
        tflite_gap(node, "TFLite's STRIDED_SLICE takes at most 5-D tensors")
        return t[tuple(sl)]
    merged = tf.reshape(t, [int(np.prod([shape[a] for a in g])) for g in groups])
    y = merged[tuple(sl[g[0]] if len(g) == 1 else slice(None) for g in groups)]
    return tf.reshape(y, [len(range(d)[sl[a]]) for a, d in enumerate(shape)])


@emitter("Gather")
def emit_gather(node, x, ctx):
    axis = node.attr("axis", 0) % max(len(x[0].shape), 1)
    dim = x[0].shape[axis]
    iv = input_value(node, ctx, x, 1)
    if iv is not None and dim is not None:
        iv = np.where(iv < 0, iv + dim, iv).astype(iv.dtype)
        if iv.ndim <= 1 and iv.size and (iv.size == 1 or np.all(np.diff(iv) == 1)) and 0 <= iv.min() and iv.max() < dim:
            # a constant run of indices (q/k/v picked out of a packed tensor, a class token): a
            # SLICE, which XNNPACK takes, where a GATHER would split the delegated graph in two
            begin = [0] * len(x[0].shape)
            begin[axis] = int(iv.flat[0])
            size = [-1 if d is None else d for d in x[0].shape.as_list()]  # XNNPACK refuses -1 sizes
            size[axis] = int(iv.size)
            (t,), dt = to_lite(node, "slice", x[0])
            y = tf.slice(t, begin, size)
            if iv.ndim == 0:
                out = [d for a, d in enumerate(dims_of(y)) if a != axis]
                y = tf.reshape(y, shape_tensor(out))
            return cast_back(y, dt)
        idx = tf.constant(iv)
    else:
        idx = nonneg_index(x[1], dim if dim is not None else tf.shape(x[0], out_type=x[1].dtype)[axis])
    (t,), dt = to_lite(node, "gather", x[0])
    return cast_back(tf.gather(t, idx, axis=axis), dt)


@emitter("GatherElements")
def emit_gather_elements(node, x, ctx):
    data, idx = x
    rank = len(data.shape)
    axis = node.attr("axis", 0) % rank
    ishape, dshape = static_shape(idx), static_shape(data)
    if ishape is None or dshape is None:  # dynamic dims: the coordinates made at run time
        if ctx.batch is None:
            raise unsupported(node, "unknown input shapes")
        idx = tf.cast(idx, tf.int32)
        ish = tf.shape(idx)
        cols = [None if a == axis else tf.broadcast_to(tf.reshape(tf.range(ish[a]), [-1 if i == a else 1 for i in range(rank)]), ish)
                for a in range(rank)]
        bound = dshape[axis] if dshape is not None else tf.shape(data)[axis]
        cols[axis] = nonneg_index(idx, bound)
    else:
        cols = index_grid(ishape, idx.dtype, skip=axis)
        cols[axis] = nonneg_index(idx, dshape[axis])
    (t,), dt = to_lite(node, "gather", data)
    return cast_back(tf.gather_nd(t, tf.stack(cols, axis=-1)), dt)


@emitter("GatherND")
def emit_gather_nd(node, x, ctx):
    data, idx = x
    b = node.attr("batch_dims", 0)
    k = idx.shape[-1]
    if k is None:
        raise unsupported(node, "an unknown index depth (last dim of indices)")
    # only the k indexed dims bound negative indices; other data dims (a run-time batch) may be unknown
    bounds = dims_of(data)[b:b + k]
    if all(isinstance(d, int) for d in bounds):
        bounds = tf.constant(np.array(bounds, dtype=idx.dtype.as_numpy_dtype))
    else:
        bounds = tf.stack([tf.cast(d, idx.dtype) for d in bounds])
    idx = nonneg_index(idx, bounds)
    slice_dims = data.shape.as_list()[b + k:]
    if 0 in slice_dims:  # empty slices (YOLO's mask columns when it has none): TF's kernel refuses them
        return tf.zeros(tf.concat([tf.shape(idx)[:-1], slice_dims], 0), data.dtype)
    if b:  # prepend the batch coordinates, so one plain GATHER_ND does it
        ishape = static_shape(idx)
        if ishape is None:
            raise unsupported(node, "batch_dims > 0 with unknown index shape")
        grid = index_grid(ishape[:-1], idx.dtype)[:b]
        idx = tf.concat([tf.expand_dims(g, -1) for g in grid] + [idx], axis=-1)
    (t,), dt = to_lite(node, "gather", data)
    return cast_back(tf.gather_nd(t, idx), dt)


@emitter("ConstantOfShape")
def emit_constant_of_shape(node, x, ctx):
    v = node.attr("value")
    value = np.zeros(1, np.float32) if v is None else onnx.numpy_helper.to_array(v).reshape(-1)
    shape = input_value(node, ctx, x, 0)
    if shape is not None:
        return make_constant(node, np.full([int(d) for d in shape.reshape(-1)], value[0], dtype=value.dtype), ctx)
    dt = tf.as_dtype(value.dtype)
    if value.dtype.kind == "f" and np.isinf(value[0]):
        exact = ctx.exact_constant(value[:1].reshape(()))
        if exact is not None and dt in LITE_DTYPES["fill"]:
            return tf.fill(tf.cast(x[0], tf.int64), exact)
    for c in CONTAINERS.get(dt, (dt,)):
        if c in LITE_DTYPES["fill"]:
            y = cast_back(tf.fill(tf.cast(x[0], tf.int64), tf.constant(value[0], dtype=dt) if c == dt else tf.cast(value[0], c)), dt)
            known = partial_value(x[0])  # the dims known now (a run-time count beside static ones)
            if known is not None and y.shape.rank == len(known):
                y.set_shape(known)
            return y
    tflite_gap(node, f"TFLite has no FILL kernel for {dt.name}")
    return tf.fill(tf.cast(x[0], tf.int64), tf.constant(value[0], dtype=dt))


@emitter("Constant")
def emit_constant(node, x, ctx):
    return make_constant(node, np.asarray(ctx.const(node.outputs[0])), ctx)


@emitter("Expand")
def emit_expand(node, x, ctx):
    target = input_value(node, ctx, x, 1)
    s = static_shape(x[0])
    (t,), dt = to_lite(node, "broadcast_to", x[0])
    if target is not None and s is not None:
        out = list(np.broadcast_shapes(tuple(s), tuple(int(d) for d in target.reshape(-1))))
        if out == s:
            return tf.identity(x[0])
    else:
        out = tf.broadcast_dynamic_shape(tf.shape(t, out_type=tf.int64), tf.cast(x[1], tf.int64))
    if t.dtype != dt:
        # the TFLite converter moves the cast pair across BROADCAST_TO (which then lacks the
        # narrow dtype): broadcast by adding zeros instead, exact in the wider dtype
        zeros = tf.zeros(out, t.dtype)
        return cast_back(tf.math.logical_or(t, zeros) if t.dtype == tf.bool else t + zeros, dt)
    return tf.broadcast_to(t, out)


@emitter("Tile")
def emit_tile(node, x, ctx):
    reps = input_value(node, ctx, x, 1)
    (t,), dt = to_lite(node, "tile", x[0])
    return cast_back(tf.tile(t, [int(r) for r in reps.reshape(-1)] if reps is not None else tf.cast(x[1], tf.int64)), dt)


@emitter("Range")
def emit_range(node, x, ctx):
    vals = [input_value(node, ctx, x, j) for j in range(3)]
    if all(v is not None for v in vals):
        start, limit, delta = (v.reshape(-1)[0] for v in vals)
        n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
        return tf.constant((start + np.arange(n) * delta).astype(vals[0].dtype))
    xs, dt = to_lite(node, "range", *x[:3])
    xs = [tf.reshape(v, []) for v in xs]  # ONNX Runtime takes 1-element vectors too (AffineGrid's expansion gives them)
    return cast_back(tf.range(xs[0], xs[1], xs[2]), dt)


@emitter("Trilu")
def emit_trilu(node, x, ctx):
    k = 0
    if len(node.inputs) > 1 and node.inputs[1]:
        kv = input_value(node, ctx, x, 1)
        if kv is None:
            raise unsupported(node, "a non-constant k")
        k = int(kv.reshape(-1)[0])
    s = static_shape(x[0])
    if s is None:
        raise unsupported(node, "unknown input shape")
    i, j = np.indices(s[-2:])
    keep = (j - i >= k) if node.attr("upper", 1) else (j - i <= k)
    (t,), dt = to_lite(node, "select", x[0])
    return cast_back(tf.where(tf.constant(np.broadcast_to(keep, s)), t, tf.zeros_like(t)), dt)


@emitter("OneHot")
def emit_one_hot(node, x, ctx):
    idx, depth, values = x
    dv = input_value(node, ctx, x, 1)
    depth_v = int(dv.reshape(-1)[0]) if dv is not None else tf.cast(tf.reshape(depth, []), tf.int32)
    idx = tf.cast(idx, tf.int64)  # ONNX allows float indices (truncated)
    idx = tf.where(idx < 0, idx + tf.cast(depth_v, tf.int64), idx)
    (vals,), dt = to_lite(node, "one_hot", values)
    axis = node.attr("axis", -1) % (len(idx.shape) + 1)
    y = tf.one_hot(idx, depth_v, on_value=vals[1], off_value=vals[0], axis=axis)
    return cast_back(y, dt)


@emitter("EyeLike")
def emit_eye_like(node, x, ctx):
    s = static_shape(x[0])
    if s is None:
        raise unsupported(node, "unknown input shape")
    to = node.attr("dtype")
    dt = x[0].dtype if to is None else tf_dtype(to)
    return tf.constant(np.eye(s[0], s[1], k=node.attr("k", 0), dtype=dt.as_numpy_dtype))


@emitter("NonZero")
def emit_non_zero(node, x, ctx):
    t = x[0] if x[0].dtype == tf.bool else tf.cast(x[0], tf.bool)
    return tf.transpose(tf.where(t))


# --- pad -----------------------------------------------------------------------------------------
def _pad_runtime(node: Node, t, pads, axes: list[int], value):
    """Constant padding by pads known only at run time: negative pads crop (SLICE), the rest pad (PAD)."""
    rank, k = len(t.shape), len(axes)
    zero = tf.constant(0, tf.int32)
    begin = tf.stack([pads[axes.index(a)] if a in axes else zero for a in range(rank)])
    end = tf.stack([pads[k + axes.index(a)] if a in axes else zero for a in range(rank)])
    start = tf.math.maximum(-begin, 0)
    t = tf.slice(t, start, tf.shape(t) - start - tf.math.maximum(-end, 0))
    (t,), dt = to_lite(node, "pad", t)
    paddings = tf.stack([tf.math.maximum(begin, 0), tf.math.maximum(end, 0)], axis=1)
    return cast_back(tf.pad(t, paddings, constant_values=tf.cast(value, t.dtype)), dt)


@emitter("Pad")
def emit_pad(node, x, ctx):
    rank = len(x[0].shape)
    mode = node.attr("mode", "constant")
    if ctx.opset < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
    else:
        pv = input_value(node, ctx, x, 1)
        pads = None if pv is None else [int(v) for v in pv.reshape(-1)]
        value = scalar_operand(node, ctx, x, 2)
        value = 0 if value is None else value
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        av = input_value(node, ctx, x, 3)
        if av is None:
            raise unsupported(node, "non-constant axes")
        axes = [int(a) % rank for a in av.reshape(-1)]
    if pads is None:
        if mode != "constant":
            raise unsupported(node, f"non-constant pads in {mode} mode")
        return _pad_runtime(node, x[0], tf.cast(x[1], tf.int32), axes, value)
    k = len(axes)
    full = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(axes):
        full[a] = [pads[i], pads[i + k]]
    y = x[0]
    if any(b < 0 or e < 0 for b, e in full):  # negative pads crop
        y = y[tuple(slice(-b if b < 0 else None, e if e < 0 else None) for b, e in full)]
        full = [[max(b, 0), max(e, 0)] for b, e in full]
    if not any(b or e for b, e in full):
        return tf.identity(y)
    if mode == "constant":
        (t,), dt = to_lite(node, "pad", y)
        return cast_back(tf.pad(t, full, constant_values=tf.cast(value, t.dtype)), dt)
    if mode == "reflect":
        (t,), dt = to_lite(node, "mirror_pad", y)
        return cast_back(tf.pad(t, full, mode="REFLECT"), dt)
    if mode in ("edge", "wrap"):  # one GATHER per padded axis with clamped / wrapped positions
        (t,), dt = to_lite(node, "gather", y)
        for a, (b, e) in enumerate(full):
            n = t.shape[a]
            if not (b or e):
                continue
            if n is None:
                raise unsupported(node, f"{mode} padding of an axis of unknown size")
            pos = np.arange(-b, n + e)
            pos = np.clip(pos, 0, n - 1) if mode == "edge" else np.mod(pos, n)
            t = tf.gather(t, pos.astype(np.int32), axis=a)
        return cast_back(t, dt)
    raise unsupported(node, f"pad mode {mode!r}")
