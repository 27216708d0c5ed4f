"""Normalizations: batch, instance (layout-aware), layer, group, RMS, mean-variance, Lp, LRN
(layout-aware)."""
from __future__ import annotations

import tensorflow as tf

from graph_convert.backends.tensorflow.emitter import EmitContext, tf_dtype
from graph_convert.backends.tensorflow.ops.core import (
    cast_back,
    dims_of,
    lite_float,
    shape_tensor,
    unsupported,
    emitter,
)


def _channel_shape(rank: int, channels_last: bool) -> list[int]:
    return [1] * (rank - 1) + [-1] if channels_last else [1, -1] + [1] * (rank - 2)


def _out_dtype(ctx: EmitContext, tensor: str, default):
    dt = ctx.graph.dtype(tensor) if tensor else 0
    return tf_dtype(dt) if dt else default


@emitter("BatchNormalization")
def emit_batchnorm(node, x, ctx):
    if node.attr("training_mode", 0):
        raise unsupported(node, "training mode (running statistics)")
    t, dt = lite_float(node, x[0])
    shape = _channel_shape(len(t.shape), False)
    eps = node.attr("epsilon", 1e-5)
    scale, bias, mean, var = (tf.reshape(tf.cast(v, t.dtype), shape) for v in x[1:5])
    return cast_back((t - mean) * (scale / tf.math.sqrt(var + eps)) + bias, dt)


@emitter("InstanceNormalization", layout_aware=True)
def emit_instance_norm(node, x, ctx):
    t, dt = lite_float(node, x[0])  # N...C when the layout pass marked the node, else NC...
    rank = len(t.shape)
    cl = node.in_perm(0) is not None
    axes = list(range(1, rank - 1)) if cl else list(range(2, rank))
    shape = _channel_shape(rank, cl)
    mean = tf.math.reduce_mean(t, axis=axes, keepdims=True)
    d = t - mean
    var = tf.math.reduce_mean(d * d, axis=axes, keepdims=True)
    scale, bias = (tf.reshape(tf.cast(v, t.dtype), shape) for v in x[1:3])
    return cast_back(d * tf.math.rsqrt(var + node.attr("epsilon", 1e-5)) * scale + bias, dt)


def _shift(b, rank: int, ctx):
    """A LayerNorm's shift: in the trace for a large .tflite (weights as stand-ins,
    tf/large_tflite.py) added at the input's rank, ``[1, ..., 1, C]``: TensorFlow's converter folds
    a 1-D constant added before a FULLY_CONNECTED into its bias (``b + shift @ W``, computed from
    the stand-in W, so the stand-ins would be refused) and no constant of higher rank."""
    if ctx.placeholders is None or len(b.shape) != 1 or rank < 2:
        return b
    return tf.reshape(b, [1] * (rank - 1) + [-1])


@emitter("LayerNormalization", "graph_convert::LayerNormalization")  # and its local function
def emit_layer_norm(node, x, ctx):
    t, dt = lite_float(node, x[0])
    rank = len(t.shape)
    axes = list(range(node.attr("axis", -1) % rank, rank))
    mean = tf.math.reduce_mean(t, axis=axes, keepdims=True)
    d = t - mean
    inv = tf.math.rsqrt(tf.math.reduce_mean(d * d, axis=axes, keepdims=True) + node.attr("epsilon", 1e-5))
    y = d * inv
    if len(x) > 1 and x[1] is not None:
        y = y * tf.cast(x[1], t.dtype)
    if len(x) > 2 and x[2] is not None:
        y = y + _shift(tf.cast(x[2], t.dtype), rank, ctx)
    outs = [cast_back(y, dt)]
    for k, v in ((1, mean), (2, inv)):
        if len(node.outputs) > k and node.outputs[k]:
            outs.append(cast_back(v, _out_dtype(ctx, node.outputs[k], v.dtype)))
    return outs


@emitter("GroupNormalization")
def emit_group_norm(node, x, ctx):
    t, dt = lite_float(node, x[0])
    g = node.attr("num_groups")
    dims = dims_of(t)
    c = dims[1]
    if not isinstance(c, int):
        raise unsupported(node, "an unknown channel count")
    grouped = tf.reshape(t, shape_tensor([dims[0], g, -1]))
    mean = tf.math.reduce_mean(grouped, axis=2, keepdims=True)
    d = grouped - mean
    var = tf.math.reduce_mean(d * d, axis=2, keepdims=True)
    y = tf.reshape(d * tf.math.rsqrt(var + node.attr("epsilon", 1e-5)), tf.shape(t))
    scale, bias = (tf.cast(v, t.dtype) for v in x[1:3])
    if ctx.opset < 21:  # GroupNormalization-18: scale and bias per group
        scale, bias = (tf.reshape(tf.broadcast_to(tf.reshape(v, [g, 1]), [g, c // g]), [c]) for v in (scale, bias))
    shape = _channel_shape(len(t.shape), False)
    return cast_back(y * tf.reshape(scale, shape) + tf.reshape(bias, shape), dt)


@emitter("RMSNormalization", "graph_convert::RMSNormalization")
def emit_rms_norm(node, x, ctx):
    t, dt = lite_float(node, x[0])
    rank = len(t.shape)
    axes = list(range(node.attr("axis", -1) % rank, rank))
    y = t * tf.math.rsqrt(tf.math.reduce_mean(t * t, axis=axes, keepdims=True) + node.attr("epsilon", 1e-5))
    return cast_back(y * tf.cast(x[1], t.dtype), dt)


@emitter("MeanVarianceNormalization")
def emit_mvn(node, x, ctx):
    t, dt = lite_float(node, x[0])
    rank = len(t.shape)
    axes = sorted({a % rank for a in node.attr("axes", [0, 2, 3])})
    mean = tf.math.reduce_mean(t, axis=axes, keepdims=True)
    var = tf.math.reduce_mean(t * t, axis=axes, keepdims=True) - mean * mean  # as ONNX's function body
    return cast_back((t - mean) / (tf.math.sqrt(var) + 1e-9), dt)


@emitter("LpNormalization")
def emit_lp_norm(node, x, ctx):
    t, dt = lite_float(node, x[0])
    axis, p = node.attr("axis", -1), node.attr("p", 2)
    if p == 1:
        norm = tf.math.reduce_sum(tf.math.abs(t), axis=axis, keepdims=True)
    elif p == 2:
        norm = tf.math.sqrt(tf.math.reduce_sum(t * t, axis=axis, keepdims=True))
    else:
        raise unsupported(node, f"p={p}")
    return cast_back(tf.where(tf.math.equal(norm, 0.0), tf.zeros_like(t), t / norm), dt)  # 0/0 gives 0


@emitter("LRN", layout_aware=True)
def emit_lrn(node, x, ctx):
    t, dt = lite_float(node, x[0])  # N...C when marked, else NC...
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    rank = len(t.shape)
    cl = node.in_perm(0) is not None
    if cl and rank == 4 and size % 2 == 1:  # TFLite's LOCAL_RESPONSE_NORMALIZATION, a symmetric window
        return cast_back(tf.nn.local_response_normalization(t, depth_radius=size // 2, bias=bias, alpha=alpha / size, beta=beta), dt)
    # the channel window [c - floor((size-1)/2), c + ceil((size-1)/2)] as a sum of shifted slices
    c_axis = rank - 1 if cl else 1
    lo = (size - 1) // 2
    pads = [[0, 0] for _ in range(rank)]
    pads[c_axis] = [lo, size - 1 - lo]
    sq = tf.pad(t * t, pads)
    n = t.shape[c_axis]
    if n is None:
        raise unsupported(node, "an unknown channel count")
    window = None
    for k in range(size):
        part = sq[tuple(slice(k, k + n) if a == c_axis else slice(None) for a in range(rank))]
        window = part if window is None else window + part
    return cast_back(t / tf.math.pow(bias + (alpha / size) * window, beta), dt)
