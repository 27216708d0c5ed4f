"""Sampling at data-dependent positions: GridSample, AffineGrid, DeformConv, as exact gathers.

TFLite has no grid-sampling kernel, so every output position is computed the way the ONNX
reference computes it: the sample coordinate per spatial axis (in float32, same formula), its taps
(1 nearest, 2 linear, 4 cubic per axis) with their weights and padding rule, one GATHER of
channel rows per tap combination from the channels-last input flattened to (N * spatial, C), and
a weighted sum. Only the summation order differs from the reference (a product of per-axis
weights rather than nested 1-D interpolations): float32 rounding, nothing else. Layout-aware: the
layout pass hands these emitters X (and DeformConv's offset and mask) channels-last.
"""
from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from graph_convert.ir import perm as P
from graph_convert.ir import Node
from graph_convert.backends.tensorflow.ops.core import cast_back, emitter, input_value, lite_float, unsupported


def channels_last(node: Node, x, j: int):
    """Input ``j`` channels-last, whatever the node's layout marks."""
    return x if node.in_perm(j) is not None else tf.transpose(x, P.channels_last(len(x.shape)))


def result(node: Node, y, k: int = 0):
    """A channels-last result in the layout the node's output ``k`` is marked with."""
    return y if node.out_perm(k) is not None else tf.transpose(y, P.channels_first(len(y.shape)))


def reflect(x, lo: float, hi: float):
    """Reflect ``x`` at the borders ``lo``/``hi`` until it lies between them (ONNX ``_gs_reflect``)."""
    rng = hi - lo
    below, above = x < lo, x > hi
    dx = tf.where(below, lo - x, x - hi)
    n = tf.floor(dx / rng)
    r = dx - n * rng
    even = tf.equal(tf.math.floormod(n, 2.0), 0.0)
    from_lo, from_hi = lo + r, hi - r
    return tf.where(below, tf.where(even, from_lo, from_hi), tf.where(above, tf.where(even, from_hi, from_lo), x))


def _cubic_coeffs(t) -> list:
    """Keys cubic weights (A = -0.75) of the taps at -1, 0, 1, 2 for a fraction ``t`` in [0, 1)."""
    a = -0.75

    def far(u):  # 1 < |u| < 2
        return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a

    def near(u):  # |u| <= 1
        return ((a + 2) * u - (a + 3)) * u * u + 1

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _axis_taps(x, size: int, mode: str, padding: str, align: bool):
    """(index int32, weight float32) per tap of one spatial axis, coordinates ``x`` already
    denormalized; the index is inside [0, size) and a zero-padded tap has weight 0."""
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    if mode == "nearest":
        x = tf.round(x)  # half to even, as the reference's np.rint
    out = (x < lo) | (x > hi)
    # nearest and linear pad the coordinate, then the taps; cubic pads only its taps, as PyTorch
    # and ONNX Runtime do (the ONNX reference implementation also clamps a cubic coordinate, which
    # no conformance case covers: it disagrees with both runtimes for border and reflection)
    if padding == "border" and mode != "cubic":
        x = tf.where(out, tf.clip_by_value(x, 0.0, size - 1.0), x)
    elif padding == "reflection" and mode != "cubic":
        x = tf.where(out, reflect(x, lo, hi), x)
    if mode == "nearest":
        starts, weights = [x], [tf.ones_like(x)]
    else:
        x0 = tf.floor(x)
        t = x - x0
        if mode == "linear":
            starts, weights = [x0, x0 + 1], [1 - t, t]
        else:
            starts, weights = [x0 - 1, x0, x0 + 1, x0 + 2], _cubic_coeffs(t)
    taps = []
    for i, w in zip(starts, weights):
        if padding == "zeros":
            w = tf.where((i >= 0) & (i <= size - 1), w, tf.zeros_like(w))
            i = tf.clip_by_value(i, 0.0, size - 1.0)
        elif padding == "border":
            i = tf.clip_by_value(i, 0.0, size - 1.0)
        else:
            i = tf.clip_by_value(reflect(i, lo, hi), 0.0, size - 1.0)
        taps.append((tf.cast(i, tf.int32), w))
    return taps


def gather_taps(x_cl, axis_taps: list, batch_shape_of) -> tf.Tensor:
    """Sum over every combination of per-axis taps of weight * X[n, i_0, ..., i_k, :].

    ``x_cl`` is (N, *spatial, C) with static spatial and channel sizes; each tap's index and weight
    have the shape (N, *positions); the result is (N, *positions, C)."""
    dims = x_cl.shape.as_list()
    spatial, c = dims[1:-1], dims[-1]
    plane = int(np.prod(spatial))
    rows = tf.reshape(x_cl, [-1, c])
    strides = [int(np.prod(spatial[a + 1:])) for a in range(len(spatial))]
    idx0 = axis_taps[0][0][0]
    base = batch_shape_of(idx0) * plane
    y = None
    for combo in itertools.product(*axis_taps):
        flat = base
        w = None
        for (i, wa), s in zip(combo, strides):
            flat = flat + i * s
            w = wa if w is None else w * wa
        part = tf.gather(rows, flat) * tf.expand_dims(w, -1)
        y = part if y is None else y + part
    return y


def _batch_offsets(like):
    """(N, 1, ..., 1) int32 batch index broadcastable against ``like`` (N, *positions)."""
    n = tf.shape(like)[0]
    return tf.reshape(tf.range(n, dtype=tf.int32), [-1] + [1] * (len(like.shape) - 1))


def _spatial_static(node: Node, x_cl) -> list[int]:
    dims = x_cl.shape.as_list()
    if any(d is None for d in dims[1:]):
        raise unsupported(node, "unknown spatial or channel size")
    return dims[1:-1]


@emitter("GridSample", layout_aware=True)
def emit_grid_sample(node, x, ctx):
    xc, dt = lite_float(node, channels_last(node, x[0], 0))
    grid, _ = lite_float(node, x[1])
    spatial = _spatial_static(node, xc)
    mode = node.attr("mode", "linear" if ctx.opset >= 20 else "bilinear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = node.attr("padding_mode", "zeros")
    align = bool(node.attr("align_corners", 0))
    if mode not in ("nearest", "linear", "cubic") or padding not in ("zeros", "border", "reflection"):
        raise unsupported(node, f"mode {mode!r} with padding_mode {padding!r}")
    d = len(spatial)
    taps = []
    for a, size in enumerate(spatial):
        g = grid[..., d - 1 - a]  # the grid lists (x, y[, z]): the last spatial axis first
        if align:
            coord = (g + 1) / 2 * (size - 1)
        else:
            coord = ((g + 1) * size - 1) / 2
        taps.append(_axis_taps(coord, size, mode, padding, align))
    y = gather_taps(xc, taps, _batch_offsets)
    return result(node, cast_back(y, dt))


@emitter("AffineGrid")
def emit_affine_grid(node, x, ctx):
    theta, dt = lite_float(node, x[0])
    size = input_value(node, ctx, x, 1)
    if size is None:
        raise unsupported(node, "a size input not known at conversion time")
    spatial = [int(s) for s in np.asarray(size).reshape(-1)[2:]]
    align = bool(node.attr("align_corners", 0))
    axes = []
    for s in spatial:
        if align:
            a = np.zeros(1) if s == 1 else np.arange(s) * (2.0 / (s - 1)) - 1
        else:
            a = (np.arange(s) * 2.0 + 1) / s - 1
        axes.append(a)
    mesh = np.meshgrid(*axes, indexing="ij")
    # homogeneous base coordinates (x, y[, z], 1) per output position, the last spatial axis first
    base = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(int(np.prod(spatial)))], axis=1)
    base_t = tf.constant(base.T.astype(np.float32))  # (D + 1, positions)
    k = len(spatial)
    n = tf.shape(theta)[0]
    grid = tf.matmul(theta, tf.broadcast_to(base_t, [n, k + 1, base.shape[0]]))  # (N, D, positions)
    grid = tf.transpose(grid, [0, 2, 1])
    return cast_back(tf.reshape(grid, [-1, *spatial, k]), dt)


@emitter("DeformConv", layout_aware=True)
def emit_deform_conv(node, x, ctx):
    xc, dt = lite_float(node, channels_last(node, x[0], 0))
    spatial = _spatial_static(node, xc)
    if len(spatial) != 2:
        raise unsupported(node, f"{len(spatial)}-D input (ONNX defines DeformConv for 2-D images)")
    h, w = spatial
    cin = xc.shape[-1]
    wt = ctx.const(node.inputs[1])
    kernel_marked = node.in_perm(1) is not None
    if wt is not None:
        wt = np.asarray(wt, np.float32)
        if kernel_marked:  # (kH, kW, C/group, oC) -> ONNX (oC, C/group, kH, kW)
            wt = np.transpose(wt, (3, 2, 0, 1))
        oc, cg, kh, kw = wt.shape
    else:  # a run-time weight: the same arithmetic in TF ops
        wt = tf.cast(x[1], tf.float32)
        if kernel_marked:
            wt = tf.transpose(wt, (3, 2, 0, 1))
        oc, cg, kh, kw = wt.shape.as_list()
        if None in (oc, cg, kh, kw):
            raise unsupported(node, "a weight of unknown shape")
    group = int(node.attr("group", 1))
    og = int(node.attr("offset_group", 1))
    sh, sw = node.attr("strides") or [1, 1]
    dh, dw = node.attr("dilations") or [1, 1]
    pads = node.attr("pads") or [0, 0, 0, 0]
    offset = tf.cast(channels_last(node, x[2], 2), tf.float32)  # (N, oH, oW, og*kh*kw*2)
    oh, ow = offset.shape.as_list()[1:3]
    if oh is None or ow is None:
        raise unsupported(node, "unknown output size")
    k = kh * kw
    off = tf.reshape(offset, [-1, oh, ow, og, k, 2])
    base_y = (np.arange(oh) * sh - pads[0])[:, None] + (np.arange(kh) * dh).repeat(kw)[None, :]  # (oH, K)
    base_x = (np.arange(ow) * sw - pads[1])[:, None] + np.tile(np.arange(kw) * dw, kh)[None, :]  # (oW, K)
    ys = tf.constant(base_y[:, None, None, :].astype(np.float32)) + off[..., 0]  # (N, oH, oW, og, K)
    xs = tf.constant(base_x[None, :, None, :].astype(np.float32)) + off[..., 1]
    # the reference samples with GridSample(bilinear, zeros, align_corners=1) at these pixel positions
    taps = [_axis_taps(ys, h, "linear", "zeros", True), _axis_taps(xs, w, "linear", "zeros", True)]
    cpo = cin // og
    # channel rows of one offset group: (N * H * W * og, C/og), row ((n*H + y)*W + x)*og + g
    groups = tf.reshape(xc, [-1, h, w * og, cpo])
    g_idx = tf.reshape(tf.range(og, dtype=tf.int32), [1, 1, 1, og, 1])
    taps[1] = [(i * og + g_idx, wgt) for i, wgt in taps[1]]
    cols = gather_taps(groups, [taps[0], taps[1]], _batch_offsets)  # (N, oH, oW, og, K, C/og)
    if len(node.inputs) > 4 and node.inputs[4]:
        mask = tf.cast(channels_last(node, x[4], 4), tf.float32)
        cols = cols * tf.reshape(mask, [-1, oh, ow, og, k, 1])
    cols = tf.transpose(cols, [0, 1, 2, 4, 3, 5])  # (N, oH, oW, K, og, C/og): channel = g*C/og + c
    cols = tf.reshape(cols, [-1, k, cin])
    outs = []
    ocg = oc // group
    for gi in range(group):
        part = tf.reshape(cols[:, :, gi * cg:(gi + 1) * cg], [-1, k * cg])
        if isinstance(wt, np.ndarray):  # (K*C/group, oC/group)
            wg = ctx.weight(np.transpose(wt[gi * ocg:(gi + 1) * ocg], (2, 3, 1, 0)).reshape(k * cg, ocg))
        else:
            wg = tf.reshape(tf.transpose(wt[gi * ocg:(gi + 1) * ocg], (2, 3, 1, 0)), [k * cg, ocg])
        outs.append(tf.matmul(part, wg))
    y = outs[0] if group == 1 else tf.concat(outs, axis=-1)
    if len(node.inputs) > 3 and node.inputs[3]:
        y = y + tf.cast(tf.reshape(x[3], [1, oc]), tf.float32)
    y = tf.reshape(y, [-1, oh, ow, oc])
    return result(node, cast_back(y, dt))
