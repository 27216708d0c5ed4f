"""Resize and Upsample in every coordinate mode: TFLite RESIZE_* kernels when their arithmetic
gives exactly the ONNX taps, else one GATHER and weighted sum per resized axis."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from graph_convert.ir import perm as P
from graph_convert.ir import Node
from graph_convert.backends.tensorflow.emitter import EmitContext
from graph_convert.backends.tensorflow.ops.core import (
    cast_back,
    dims_of,
    lite_float,
    input_value,
    to_lite,
    shape_tensor,
    static_shape,
    unsupported,
    emitter,
)


# Resize is separable: along each resized axis, output position o reads n source positions with
# weights. The taps are computed here, at conversion time, in float64 exactly as the ONNX spec
# defines them; they become either TFLite's RESIZE_* kernel (when its own float32 formula gives
# the same taps) or one GATHER + weighted sum per axis.
def _resize_source_coords(coord: str, out: int, size: int, scale: float, roi: tuple[float, float] | None):
    """Source coordinate of every output position, and which ones extrapolate (crop mode)."""
    y = np.arange(out, dtype=np.float64)
    width = scale * size  # the ideal (fractional) output width
    extrapolated = None
    if coord == "align_corners":
        x = np.zeros(out) if width == 1 else y * (size - 1) / (width - 1)
    elif coord == "asymmetric":
        x = y / scale
    elif coord == "tf_crop_and_resize":
        r0, r1 = roi if roi is not None else (0.0, 1.0)
        x = np.full(out, (r1 - r0) * (size - 1) / 2) if width == 1 else y * (r1 - r0) * (size - 1) / (width - 1)
        x = x + r0 * (size - 1)
        extrapolated = (x < 0) | (x > size - 1)
    elif coord == "pytorch_half_pixel":
        x = np.full(out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif coord == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif coord == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / width)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"coordinate_transformation_mode {coord!r}")
    return x, extrapolated


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _resize_weights(mode: str, ratio: np.ndarray, scale: float, nearest: str, cubic_a: float, antialias: bool) -> np.ndarray:
    """Filter weights (out, n) for the n taps starting at the window's first position."""
    r = ratio[:, None]
    if mode == "nearest":
        if nearest == "round_prefer_floor":
            up = ratio > 0.5
        elif nearest == "round_prefer_ceil":
            up = ratio >= 0.5
        elif nearest in ("floor", "ceil"):
            up = np.full(ratio.shape, nearest == "ceil")
        else:
            raise ValueError(f"nearest_mode {nearest!r}")
        up = up | (ratio == 1.0)  # an exact source position
        return np.stack([~up, up], axis=1).astype(np.float64)
    if not antialias or scale >= 1.0:
        if mode == "linear":
            return np.concatenate([1 - r, r], axis=1)
        return _cubic(np.arange(-1, 3)[None, :] - r, cubic_a)
    # antialiased downsampling: the filter is stretched by 1/scale and renormalized
    if mode == "linear":
        start = int(np.floor(-1 / scale) + 1)
        taps = np.arange(start, 2 - start)
        w = np.clip(1 - np.abs((taps[None, :] - r) * scale), 0, 1)
    else:
        start = int(np.floor(-2 / scale) + 1)
        taps = np.arange(start, 2 - start)
        w = _cubic((taps[None, :] - r) * scale, cubic_a)
    return w / w.sum(axis=1, keepdims=True)


def resize_taps(mode: str, coord: str, size: int, out: int, scale: float, roi=None, nearest: str = "round_prefer_floor",
                cubic_a: float = -0.75, exclude_outside: bool = False, antialias: bool = False):
    """Per output position along one axis: source indices (out, n), weights (out, n) and a mask of
    positions that take the extrapolation value (or None)."""
    x, extrapolated = _resize_source_coords(coord, out, size, scale, roi)
    ratio = np.where(x == np.floor(x), 1.0, x - np.floor(x))  # in (0, 1]: prefer the left pixel
    w = _resize_weights(mode, ratio, scale, nearest, cubic_a, antialias)
    n = w.shape[1]
    # the n source positions nearest to x (ties to the smaller), as the ONNX reference picks them
    pad = -(-n // 2)
    xp = x + pad
    p = np.floor(xp)
    frac = xp - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = (p + offset).astype(np.int64)[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= size), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, size - 1), w, extrapolated


def _dense(idx: np.ndarray, w: np.ndarray, size: int) -> np.ndarray:
    m = np.zeros((idx.shape[0], size))
    for j in range(idx.shape[1]):
        np.add.at(m, (np.arange(idx.shape[0]), idx[:, j]), w[:, j])
    return m


def _tf_resize_matrix(kind: str, flags: tuple[bool, bool], size: int, out: int) -> np.ndarray:
    """What TF/TFLite's RESIZE_* kernel computes along one axis (its float32 arithmetic) as a matrix."""
    align, half = flags
    f = np.float32
    scale = f(size - 1) / f(out - 1) if align and out > 1 else f(size) / f(out)
    o = np.arange(out, dtype=np.float32)
    if kind == "nearest":
        src = (o + f(0.5)) * scale if half else o * scale
        i = np.floor(src) if not align else np.floor(src + f(0.5))  # roundf of non-negatives
        i = np.clip(i.astype(np.int64), 0, size - 1)
        return _dense(i[:, None], np.ones((out, 1)), size)
    src = ((o + f(0.5)) * scale - f(0.5)) if half else o * scale
    lo = np.floor(src)
    lerp = (src - lo).astype(np.float64)
    i0 = np.clip(lo.astype(np.int64), 0, size - 1)
    i1 = np.clip(np.ceil(src).astype(np.int64), 0, size - 1)
    return _dense(np.stack([i0, i1], 1), np.stack([1 - lerp, lerp], 1), size)


def _resize_params(node: Node, ctx: EmitContext, x: list, shape: list[int]):
    """(mode, coordinate mode, nearest mode, per-axis (size, out, scale, roi)) in ONNX axis order."""
    rank = len(shape)
    mode = node.attr("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    if node.op_type == "Upsample" or ctx.opset < 11:
        # Upsample and Resize-10: asymmetric coordinates; nearest rounds down when upsampling and
        # up when downsampling (what ONNX Runtime does for these old forms)
        if node.op_type == "Upsample" and ctx.opset < 9:
            scales = [float(s) for s in node.attr("scales")]
        else:
            sv = input_value(node, ctx, x, 1)
            if sv is None:
                raise unsupported(node, "non-constant scales")
            scales = [float(s) for s in sv.reshape(-1)]
        axes = [(shape[a], int(np.floor(scales[a] * shape[a])), scales[a], None) for a in range(rank)]
        return mode, "asymmetric", None, axes
    coord = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    axes_attr = [a % rank for a in node.attr("axes", list(range(rank)))]
    consts = []
    for j in (1, 2, 3):
        if len(node.inputs) > j and node.inputs[j]:
            v = input_value(node, ctx, x, j)
            if v is None and ctx.batch is not None and ctx.batch.is_dynamic_const(node.inputs[j]):
                v = ctx.graph.constant_value(node.inputs[j])  # sizes with the batch in: its entry is checked unresized
            if v is None:
                raise unsupported(node, "non-constant roi/scales/sizes")
            consts.append(v.reshape(-1) if v.size else None)
        else:
            consts.append(None)
    roi_v, scales_v, sizes_v = consts
    roi = [(0.0, 1.0)] * rank
    if roi_v is not None and coord == "tf_crop_and_resize":
        k = len(axes_attr)
        for i, a in enumerate(axes_attr):
            roi[a] = (float(roi_v[i]), float(roi_v[k + i]))
    scales, outs = [1.0] * rank, list(shape)
    if sizes_v is not None:
        for i, a in enumerate(axes_attr):
            outs[a] = int(sizes_v[i])
            scales[a] = outs[a] / shape[a]
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = (min if policy == "not_larger" else max)(scales[a] for a in axes_attr)
            for a in axes_attr:
                scales[a], outs[a] = s, int(s * shape[a] + 0.5)
    elif scales_v is not None:
        for i, a in enumerate(axes_attr):
            scales[a] = float(scales_v[i])
            outs[a] = int(np.floor(scales[a] * shape[a]))
    else:
        raise unsupported(node, "neither scales nor sizes")
    return mode, coord, nearest, [(shape[a], outs[a], scales[a], roi[a] if coord == "tf_crop_and_resize" else None) for a in range(rank)]


@emitter("Resize", "Upsample", layout_aware=True)
def emit_resize(node, x, ctx):
    t = x[0]  # N...C when the layout pass marked the node, else as ONNX
    rank = len(t.shape)
    cl = node.in_perm(0) is not None
    where_is = list(P.channels_last(rank)) if cl else list(range(rank))  # ONNX axis -> position in t
    shape_t = static_shape(t)
    dynamic = []  # positions of the batch dim (dynamic batch): the IR's size there, never resized
    if shape_t is None and ctx.batch is not None and ctx.graph.shape(node.inputs[0]) is not None:
        dynamic = [i for i, d in enumerate(t.shape.as_list()) if d is None]
        shape_t = [d if d is not None else ctx.graph.shape(node.inputs[0])[i] for i, d in enumerate(t.shape.as_list())]
    if shape_t is None or any(not isinstance(d, int) for d in shape_t):
        raise unsupported(node, "unknown input shape")
    shape = [shape_t[where_is.index(a)] for a in range(rank)]
    mode, coord, nearest, axes = _resize_params(node, ctx, x, shape)
    resized = [i for i in dynamic if _is_resized(*axes[where_is[i]])]
    if resized and not (cl and rank == 4 and all(where_is[i] in (2, 3) for i in resized)):
        raise unsupported(node, "resizing a dynamic axis other than the height/width of a channels-last image")
    if mode not in ("nearest", "linear", "cubic"):
        raise unsupported(node, f"mode {mode!r}")
    old_form = nearest is None
    taps = {}
    for a, (size, out, scale, roi) in enumerate(axes):
        if out == size and math.isclose(scale, 1.0) and (roi is None or roi == (0.0, 1.0)):
            continue
        nm = ("floor" if scale >= 1.0 else "ceil") if old_form else nearest
        taps[a] = resize_taps(mode, coord, size, out, scale, roi, nm, node.attr("cubic_coeff_a", -0.75),
                              bool(node.attr("exclude_outside", 0)), bool(node.attr("antialias", 0)))
    if not taps:
        return tf.identity(t)
    if not t.dtype.is_floating:
        if mode != "nearest":  # no agreed rounding: ONNX's reference rounds half to even, ONNX Runtime truncates
            raise unsupported(node, f"{mode} interpolation of {t.dtype.name} values")
        (t,), dt = to_lite(node, "gather", t)
    else:
        t, dt = lite_float(node, t)
    out_rt = _run_time_size(node, ctx, x, t, axes_of(node, rank), mode) if resized else None
    y = _native_resize(node, t, mode, taps, axes, cl, out_rt) if cl and rank == 4 else None
    if y is None and resized:  # the per-axis gathers are built for one size
        raise unsupported(node, "this resize of a dynamic height/width (only TFLite's RESIZE kernels follow a run-time size: "
                                 "modes nearest/linear with align_corners, half_pixel or asymmetric coordinates)")
    if y is None:
        for a, (idx, w, extrap) in taps.items():
            y_axis = where_is.index(a)
            y = _resize_axis(t if y is None else y, y_axis, idx, w, extrap, node.attr("extrapolation_value", 0.0), mode)
    return cast_back(y, dt)


def _resize_axis(t, axis: int, idx: np.ndarray, w: np.ndarray, extrap, extrap_value: float, mode: str):
    out, n = idx.shape
    rank = len(t.shape)
    if mode == "nearest":
        y = tf.gather(t, idx[np.arange(out), np.argmax(w, axis=1)].astype(np.int32), axis=axis)
    else:
        g = tf.gather(t, idx.reshape(-1).astype(np.int32), axis=axis)  # (..., out * n, ...)
        dims = dims_of(g)
        g = tf.reshape(g, shape_tensor(dims[:axis] + [out, n] + dims[axis + 1:]))
        wt = tf.constant(w.reshape([1] * axis + [out, n] + [1] * (rank - axis - 1)).astype(t.dtype.as_numpy_dtype))
        y = tf.math.reduce_sum(g * wt, axis=axis + 1)
    if extrap is not None and extrap.any():
        mask = tf.constant(extrap.reshape([1] * axis + [out] + [1] * (rank - axis - 1)))
        y = tf.where(mask, tf.cast(extrap_value, y.dtype), y)
    return y


def _native_resize(node: Node, t, mode: str, taps: dict, axes: list, cl: bool, out_rt=None):
    """TFLite's RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR on an NHWC tensor, when its arithmetic
    gives exactly the taps of this node on H and W; else None. ``out_rt``: the output H, W as a
    run-time tensor (dynamic dims; the taps were matched at the sizes of the first conversion)."""
    if mode not in ("nearest", "linear") or not set(taps) <= {2, 3} or any(e is not None and e.any() for _, _, e in taps.values()):
        return None
    size = [axes[2][0], axes[3][0]]
    out = [axes[2][1], axes[3][1]]
    want = [_dense(*taps[a][:2], size[i]) if a in taps else np.eye(size[i]) for i, a in enumerate((2, 3))]
    for flags in ((False, False), (False, True), (True, False)):
        got = [_tf_resize_matrix(mode, flags, size[i], out[i]) for i in range(2)]
        if all(g.shape == w_.shape and np.allclose(g, w_, atol=1e-6) for g, w_ in zip(got, want)):
            align, half = flags
            out = out if out_rt is None else out_rt
            if mode == "nearest":
                return tf.compat.v1.image.resize_nearest_neighbor(t, out, align_corners=align, half_pixel_centers=half)
            return tf.compat.v1.image.resize_bilinear(t, out, align_corners=align, half_pixel_centers=half)
    return None


def _is_resized(size: int, out: int, scale: float, roi) -> bool:
    return out != size or not math.isclose(scale, 1.0) or (roi is not None and roi != (0.0, 1.0))


def axes_of(node: Node, rank: int) -> list[int]:
    """The ONNX axes a Resize's scales/sizes entries are for."""
    return [a % rank for a in node.attr("axes", list(range(rank)))]


def _run_time_size(node: Node, ctx: EmitContext, x: list, t, axes_attr: list[int], mode: str):
    """Output height and width of an NHWC resize whose input H/W are dynamic, as an int32 tensor:
    the ``sizes`` input as computed at run time (a dynamic constant), or floor(input * scale)."""
    hw = tf.shape(t, out_type=tf.int32)[1:3]
    entries = ctx.batch.entries(node.inputs[3], ctx.env) if len(node.inputs) > 3 and node.inputs[3] else None
    if entries is not None:  # the sizes' entries as run-time dims (int32), without the int64 pack in between
        want = [entries[axes_attr.index(a)] if a in axes_attr else hw[i] for i, a in enumerate((2, 3))]
        return tf.stack([tf.constant(v, tf.int32) if isinstance(v, int) else v for v in want])
    if len(node.inputs) > 3 and node.inputs[3]:
        sizes = tf.cast(tf.reshape(x[3], [-1]), tf.int32)
        return tf.stack([sizes[axes_attr.index(a)] if a in axes_attr else hw[i] for i, a in enumerate((2, 3))])
    if node.op_type == "Upsample" and ctx.opset < 9:
        scales = [float(v) for v in node.attr("scales")]
    else:
        v = input_value(node, ctx, x, 1 if node.op_type == "Upsample" else 2)
        if v is None:
            raise unsupported(node, "run-time scales with a dynamic height/width")
        scales = [float(s) for s in v.reshape(-1)]
        if node.op_type == "Resize":
            full = [1.0] * 4
            for i, a in enumerate(axes_attr):
                full[a] = scales[i]
            scales = full
    return tf.cast(tf.floor(tf.cast(hw, tf.float32) * tf.constant([scales[2], scales[3]], tf.float32)), tf.int32)
