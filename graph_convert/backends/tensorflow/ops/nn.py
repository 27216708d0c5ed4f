"""Convolution, pooling and depth/space rearrangement: layout-aware, channels-last TFLite kernels."""
from __future__ import annotations

import itertools
import math

import numpy as np
import tensorflow as tf

from graph_convert.ir import perm as P
from graph_convert.errors import ConvertError
from graph_convert.ir import Node
from graph_convert.backends.tensorflow.emitter import EmitContext
from graph_convert.backends.tensorflow.ops.core import (
    F16,
    F32,
    I16,
    I8,
    U16,
    U8,
    cast_back,
    dims_of,
    lite_float,
    tflite_gap,
    input_value,
    to_lite,
    shape_tensor,
    unsupported,
    emitter,
)


def _spatial_pads(node: Node, in_spatial: list, kernel: list, strides: list, dilations: list) -> list[tuple[int, int]] | None:
    """Explicit (begin, end) pads per spatial dim, resolving auto_pad; None if not static."""
    n = len(kernel)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if any(d is None for d in in_spatial):
            return None
        out = []
        for i in range(n):
            eff = (kernel[i] - 1) * dilations[i] + 1
            total = max((math.ceil(in_spatial[i] / strides[i]) - 1) * strides[i] + eff - in_spatial[i], 0)
            small = total // 2
            out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return out
    if auto == "VALID":
        return [(0, 0)] * n
    pads = node.attr("pads") or [0] * (2 * n)
    return [(pads[i], pads[i + n]) for i in range(n)]


def _is_tf_same(pads, in_spatial, kernel, strides, dilations) -> bool:
    for i, (b, e) in enumerate(pads):
        if in_spatial[i] is None:
            return False
        eff = (kernel[i] - 1) * dilations[i] + 1
        total = max((math.ceil(in_spatial[i] / strides[i]) - 1) * strides[i] + eff - in_spatial[i], 0)
        if (b, e) != (total // 2, total - total // 2):
            return False
    return True


def _pad_cl(x, pads, value=0.0):
    if all(b == 0 and e == 0 for b, e in pads):
        return x
    full = [(0, 0), *pads, (0, 0)]
    return tf.pad(x, full, constant_values=value)


def _to_cl(node: Node, x, j: int = 0):
    """Input ``j`` as channels-last, whatever the node's marks."""
    if node.in_perm(j) is not None:
        return x
    return tf.transpose(x, P.channels_last(len(x.shape)))


def _from_cl(node: Node, y, k: int = 0):
    if node.out_perm(k) is not None:
        return y
    return tf.transpose(y, P.channels_first(len(y.shape)))


def _kernel_tf(node: Node, ctx: EmitContext, x, j: int = 1):
    """Conv/ConvTranspose weight in TF layout (k..., I|O, O|I) as numpy when constant, else tensor."""
    w = ctx.const(node.inputs[j])
    rank = len(x.shape)
    wp = (*range(2, rank), 1, 0)
    if node.in_perm(j) is not None:
        if tuple(node.in_perm(j)) != wp:
            raise unsupported(node, f"weight layout {node.in_perm(j)}")
        return w
    if w is not None:
        return np.ascontiguousarray(np.transpose(w, wp))
    return tf.transpose(x, wp)


def _dilate_kernel(w: np.ndarray, dilations: list) -> np.ndarray:
    """Spread a (k..., I, O) kernel with zeros so dilation becomes a plain kernel."""
    if all(d == 1 for d in dilations):
        return w
    ks = w.shape[:-2]
    out = np.zeros(tuple((k - 1) * d + 1 for k, d in zip(ks, dilations)) + w.shape[-2:], dtype=w.dtype)
    out[tuple(slice(None, None, d) for d in dilations)] = w
    return out


# --- convolution -------------------------------------------------------------------------------
@emitter("Conv", layout_aware=True)
def emit_conv(node, x, ctx):
    xc = _to_cl(node, x[0])
    rank = len(xc.shape)
    n = rank - 2
    w = _kernel_tf(node, ctx, xc)
    if not isinstance(w, np.ndarray):
        raise unsupported(node, "a non-constant weight")
    kernel = list(w.shape[:n])
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    group = node.attr("group", 1)
    in_spatial = xc.shape.as_list()[1:-1]
    pads = _spatial_pads(node, in_spatial, kernel, strides, dilations)
    if pads is None:
        raise unsupported(node, "auto_pad SAME with unknown spatial size")
    squeeze = n == 1
    if squeeze:  # NWC conv as an NHWC conv over a height-1 image: TFLite's 2-D kernels, no splitting
        xc, w = tf.expand_dims(xc, 1), w[None]
        kernel, strides, dilations, pads, in_spatial = [1, *kernel], [1, *strides], [1, *dilations], [(0, 0), *pads], [1, *in_spatial]
        n = 2
    if any(d > 1 for d in dilations) and (any(s > 1 for s in strides) or n == 3):
        # TF refuses stride>1 with dilation>1, and a dilated 3-D conv becomes SpaceToBatchND,
        # which TFLite lacks: spread the kernel with zeros instead
        w, dilations = _dilate_kernel(w, dilations), [1] * n
        kernel = list(w.shape[:n])
    if all(p == (0, 0) for p in pads):
        padding = "VALID"
    elif _is_tf_same(pads, in_spatial, kernel, strides, dilations):
        padding = "SAME"
    else:
        xc, padding = _pad_cl(xc, pads), "VALID"
    c_in = w.shape[-2] * group
    c_out = w.shape[-1]
    fused_bias_ok = True  # TF's fused Conv2D+BiasAdd kernel refuses grouped convolutions
    if group == 1:
        y = tf.nn.convolution(xc, ctx.weight(w, xc.dtype), strides=strides, padding=padding, dilations=dilations)
    elif group == c_in and n == 2 and len(set(strides)) == 1:
        mult = c_out // c_in
        wd = w.reshape(kernel + [c_in, mult])
        y = tf.nn.depthwise_conv2d(xc, ctx.weight(wd, xc.dtype), strides=[1, *strides, 1], padding=padding, dilations=dilations)
    elif n == 2:
        # one grouped CONV_2D (TFLite and XNNPACK take it); TF's CPU kernel runs it too, but its
        # fused Conv2D+BiasAdd kernel refuses groups, so the bias below is a plain Add
        fused_bias_ok = False
        y = tf.nn.conv2d(xc, ctx.weight(w, xc.dtype), strides=[1, *strides, 1], padding=padding, dilations=[1, *dilations, 1])
    else:
        xs = tf.split(xc, group, axis=-1)
        ws = np.split(w, group, axis=-1)
        y = tf.concat([tf.nn.convolution(a, ctx.weight(b, xc.dtype), strides=strides, padding=padding, dilations=dilations) for a, b in zip(xs, ws)], axis=-1)
    if squeeze:
        y = tf.squeeze(y, 1)
    if len(node.inputs) > 2 and node.inputs[2]:
        y = tf.nn.bias_add(y, x[2]) if fused_bias_ok else tf.add(y, x[2])
    return _from_cl(node, y)


@emitter("ConvTranspose", layout_aware=True)
def emit_conv_transpose(node, x, ctx):
    xc = _to_cl(node, x[0])
    rank = len(xc.shape)
    n = rank - 2
    w = _kernel_tf(node, ctx, xc)  # (k..., C_out/group, C_in)
    if not isinstance(w, np.ndarray):
        raise unsupported(node, "a non-constant weight")
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    group = node.attr("group", 1)
    w = _dilate_kernel(w, dilations)
    kernel = list(w.shape[:n])
    in_spatial = xc.shape.as_list()[1:-1]
    if any(d is None for d in in_spatial):
        raise unsupported(node, "unknown spatial size")
    out_pad = list(node.attr("output_padding") or [0] * n)
    full = [(in_spatial[i] - 1) * strides[i] + kernel[i] for i in range(n)]
    out_shape = node.attr("output_shape")
    auto = node.attr("auto_pad", "NOTSET")
    if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-n:] if out_shape is not None else [in_spatial[i] * strides[i] for i in range(n)]
        pads = []
        for i in range(n):
            total = full[i] + out_pad[i] - target[i]
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    elif auto == "VALID":
        pads = [(0, 0)] * n
    else:
        p = node.attr("pads") or [0] * (2 * n)
        pads = [(p[i], p[i + n]) for i in range(n)]
    out_size = [full[i] + out_pad[i] - pads[i][0] - pads[i][1] for i in range(n)]
    c_out_g = w.shape[-2]
    batch = tf.shape(xc)[0] if xc.shape[0] is None else xc.shape[0]
    oshape = [batch, *full, c_out_g]
    oshape = tf.stack(oshape) if not isinstance(batch, int) else oshape
    conv = {1: tf.nn.conv1d_transpose, 2: tf.nn.conv2d_transpose, 3: tf.nn.conv3d_transpose}[n]
    xs = tf.split(xc, group, axis=-1) if group > 1 else [xc]
    ws = np.split(w, group, axis=-1) if group > 1 else [w]
    ys = [conv(a, ctx.weight(b, xc.dtype), oshape, strides=strides, padding="VALID") for a, b in zip(xs, ws)]
    y = tf.concat(ys, axis=-1) if group > 1 else ys[0]
    # crop the pads, then zero-extend where output_padding reaches past the full output
    extra = [max(pads[i][0] + out_size[i] - full[i], 0) for i in range(n)]
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    if has_bias and not any(extra):
        y = tf.nn.bias_add(y, x[2])  # right after TRANSPOSE_CONV, where TFLite fuses it
    if any(pads[i][0] or out_size[i] != full[i] for i in range(n)):
        sl = [slice(None)] + [slice(pads[i][0], min(pads[i][0] + out_size[i], full[i])) for i in range(n)] + [slice(None)]
        y = y[tuple(sl)]
    if any(extra):
        y = tf.pad(y, [(0, 0), *[(0, e) for e in extra], (0, 0)])
        if has_bias:
            y = tf.nn.bias_add(y, x[2])  # the zero-extended cells get the bias too
    return _from_cl(node, y)


# --- pooling -----------------------------------------------------------------------------------
def _pool_geometry(node, xc):
    n = len(xc.shape) - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    in_spatial = xc.shape.as_list()[1:-1]
    pads = _spatial_pads(node, in_spatial, kernel, strides, dilations)
    if pads is None:
        raise unsupported(node, "auto_pad SAME with unknown spatial size")
    extra = [0] * n
    if node.attr("ceil_mode", 0):
        if any(d is None for d in in_spatial):
            raise unsupported(node, "ceil_mode with unknown spatial size")
        for i in range(n):
            eff = (kernel[i] - 1) * dilations[i] + 1
            span = in_spatial[i] + pads[i][0] + pads[i][1] - eff
            out_ceil = -(-span // strides[i]) + 1
            if (out_ceil - 1) * strides[i] >= in_spatial[i] + pads[i][0]:
                out_ceil -= 1  # the last window must start inside the input or the left padding
            extra[i] = max((out_ceil - 1) * strides[i] + eff - (in_spatial[i] + pads[i][0] + pads[i][1]), 0)
    return n, kernel, strides, dilations, in_spatial, pads, extra


def _window_counts(mask: np.ndarray, kernel: list, strides: list) -> np.ndarray:
    """Per output window, the sum of ``mask`` (spatial dims only) under a VALID strided window."""
    v = np.lib.stride_tricks.sliding_window_view(mask, kernel)
    v = v[tuple(slice(None, None, s) for s in strides)]
    return v.sum(axis=tuple(range(len(kernel), 2 * len(kernel))))


def _pool_valid(x, kernel: list, strides: list, kind: str):
    """VALID max/avg pooling of an N...C tensor with 1-3 spatial dims, using only 2-D pools
    (TFLite has MAX_POOL_2D/AVERAGE_POOL_2D but no 3-D pooling): pooling is separable, so a 3-D
    window is a 2-D pool over (H, W) followed by a 1-D pool over D."""
    pool = tf.nn.max_pool2d if kind == "MAX" else tf.nn.avg_pool2d
    n = len(kernel)
    if n == 1:
        return tf.squeeze(pool(tf.expand_dims(x, 1), [1, kernel[0]], [1, strides[0]], "VALID"), 1)
    if n == 2:
        return pool(x, kernel, strides, "VALID")
    _, d, h, w, c = x.shape.as_list()
    if None in (d, h, w, c):
        raise ConvertError("3-D pooling needs static spatial and channel sizes")
    y = pool(tf.reshape(x, [-1, h, w, c]), kernel[1:], strides[1:], "VALID")
    h2, w2 = y.shape.as_list()[1:3]
    y = pool(tf.reshape(y, [-1, d, h2 * w2, c]), [kernel[0], 1], [strides[0], 1], "VALID")
    return tf.reshape(y, [-1, y.shape[1], h2, w2, c])


def _window_slices(spatial: list[int], kernel: list, strides: list, dilations: list) -> list[tuple]:
    """For each kernel offset, the strided spatial slices that give that tap of every VALID window:
    pooling with any dilation and stride is a max/sum over these (TFLite has no dilated pooling)."""
    out = [(spatial[i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(len(kernel))]
    return [tuple(slice(o * d, o * d + (m - 1) * s + 1, s) for o, d, s, m in zip(offs, dilations, strides, out))
            for offs in itertools.product(*[range(k) for k in kernel])]


def _window_max(x, kernel: list, strides: list, dilations: list):
    y = None
    for sl in _window_slices(x.shape.as_list()[1:-1], kernel, strides, dilations):
        part = x[(slice(None), *sl, slice(None))]
        y = part if y is None else tf.math.maximum(y, part)
    return y


def _max_pool_with_indices(node: Node, padded, kernel: list, strides: list, dilations: list, total: list):
    """MaxPool and its Indices output (channels-last): per window the first maximum in row-major
    window order (ONNX Runtime keeps the first of equal values), as its flat position in the
    (N, C, *spatial) input. One strided slice and compare per window tap."""
    if node.attr("storage_order", 0):
        raise unsupported(node, "the Indices output with storage_order=1")
    dims = padded.shape.as_list()
    if any(d is None for d in dims[1:]):
        raise unsupported(node, "the Indices output with unknown spatial or channel size")
    spatial = [d - b - e for d, (b, e) in zip(dims[1:-1], total)]
    plane = int(np.prod(spatial))
    taps = _window_slices(dims[1:-1], kernel, strides, dilations)
    offsets = list(itertools.product(*[range(k) for k in kernel]))
    out = [(dims[1 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(len(kernel))]
    y = where = None
    for sl, off in zip(taps, offsets):
        v = padded[(slice(None), *sl, slice(None))]
        # the input position this tap reads for every window (padding cells never win: -max fill)
        coords = np.meshgrid(*[np.arange(o) * s + k * d - b for o, s, k, d, (b, _) in
                               zip(out, strides, off, dilations, total)], indexing="ij")
        flat = np.zeros(out, np.int64)
        for c_, size in zip(coords, spatial):
            flat = flat * size + c_
        pos = tf.constant(flat[None, ..., None])
        if y is None:
            y, where = v, tf.broadcast_to(pos, tf.shape(v, out_type=tf.int32))
        else:
            better = v > y
            y, where = tf.where(better, v, y), tf.where(better, pos, where)
    c = dims[-1]
    nc = tf.range(tf.shape(padded)[0], dtype=tf.int64)[:, None] * c + tf.range(c, dtype=tf.int64)[None, :]
    nc = tf.reshape(nc * plane, [-1] + [1] * len(kernel) + [c])
    return y, where + nc


@emitter("MaxPool", layout_aware=True)
def emit_max_pool(node, x, ctx):
    xc = _to_cl(node, x[0])
    dt = xc.dtype
    if dt in (I8, U8, I16, U16, F16):  # float32 holds every value; TFLite pools only float32
        xc = tf.cast(xc, F32)
    elif dt != F32:
        tflite_gap(node, f"TFLite has no MAX_POOL_2D kernel for {dt.name}")
    n, kernel, strides, dilations, in_spatial, pads, extra = _pool_geometry(node, xc)
    total = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    low = xc.dtype.min
    if len(node.outputs) > 1 and node.outputs[1] and ctx.graph.num_uses(node.outputs[1]):
        y, where = _max_pool_with_indices(node, _pad_cl(xc, total, low), kernel, strides, dilations, total)
        return [_from_cl(node, cast_back(y, dt)), _from_cl(node, where, 1)]
    if any(d > 1 for d in dilations):
        if any(v is None for v in in_spatial):
            raise unsupported(node, "dilation with unknown spatial size")
        y = _window_max(_pad_cl(xc, total, low), kernel, strides, dilations)
    elif n == 2 and not any(extra) and any(p != (0, 0) for p in total) and _is_tf_same(pads, in_spatial, kernel, strides, dilations):
        y = tf.nn.max_pool(xc, kernel, strides, "SAME")
    elif all(p == (0, 0) for p in total):
        y = _pool_valid(xc, kernel, strides, "MAX")
    elif _non_negative(ctx, node.inputs[0]):
        # after ReLU & co. a zero fill is exact (padding never wins a max over >= 0 values) and,
        # unlike a -inf fill, keeps an honest range for int8. As PADV2 (an explicit fill value)
        # rather than PAD: XNNPack takes PAD but cannot fuse a zero fill into the pooling, and its
        # separate pad measured slower than TFLite's own PADV2 kernel (resnet_style 115 vs 110 us,
        # a 1x32x32x16 ReLU->pad->pool block 71 vs 58 us, 1 thread)
        full = [(0, 0), *total, (0, 0)]
        y = _pool_valid(tf.raw_ops.PadV2(input=xc, paddings=tf.constant(full, tf.int32), constant_values=tf.zeros([], xc.dtype)),
                        kernel, strides, "MAX")
    else:
        y = _pool_valid(_pad_cl(xc, total, low), kernel, strides, "MAX")
    return _from_cl(node, cast_back(y, dt))


_NON_NEGATIVE = {"Relu", "Sigmoid", "Softplus", "Abs", "Exp", "HardSigmoid"}


def _non_negative(ctx, tensor: str) -> bool:
    """Whether ``tensor`` is provably >= 0 from the op that produces it."""
    prod = ctx.graph.producer(tensor)
    if prod is None:
        return False
    if prod.op_type in _NON_NEGATIVE:
        return True
    if prod.op_type == "Clip" and len(prod.inputs) > 1 and prod.inputs[1]:
        lo = ctx.const(prod.inputs[1])
        return lo is not None and float(lo) >= 0.0
    if prod.op_type == "Clip" and ctx.opset < 11:
        return prod.attr("min", float("-inf")) >= 0.0
    return False


@emitter("AveragePool", layout_aware=True)
def emit_avg_pool(node, x, ctx):
    xc = _to_cl(node, x[0])
    n, kernel, strides, dilations, in_spatial, pads, extra = _pool_geometry(node, xc)
    include = node.attr("count_include_pad", 0)
    total = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    dilated = any(d > 1 for d in dilations)
    if dilated and any(d is None for d in in_spatial):
        raise unsupported(node, "dilation with unknown spatial size")
    if not dilated and all(p == (0, 0) for p in total):
        y = _pool_valid(xc, kernel, strides, "AVG")
    elif not dilated and n == 2 and not include and not any(extra) and _is_tf_same(pads, in_spatial, kernel, strides, dilations):
        y = tf.nn.avg_pool(xc, kernel, strides, "SAME")  # TF SAME excludes padding from the count
    else:
        if any(d is None for d in in_spatial):
            raise unsupported(node, "explicit padding with unknown spatial size")
        # windows sum over the zero-padded input; divide by how many counted cells each window saw
        mask = np.zeros([in_spatial[i] + total[i][0] + total[i][1] for i in range(n)], np.float32)
        if include:  # the declared pads count, the extra ceil_mode cells do not
            inner = tuple(slice(0, in_spatial[i] + pads[i][0] + pads[i][1]) for i in range(n))
        else:
            inner = tuple(slice(pads[i][0], pads[i][0] + in_spatial[i]) for i in range(n))
        mask[inner] = 1.0
        if dilated:
            padded = _pad_cl(xc, total)
            taps = _window_slices(list(mask.shape), kernel, strides, dilations)
            s = tf.math.add_n([padded[(slice(None), *sl, slice(None))] for sl in taps])
            counts = np.sum([mask[sl] for sl in taps], axis=0)[None, ..., None]
        else:
            counts = _window_counts(mask, kernel, strides)[None, ..., None]
            s = _pool_valid(_pad_cl(xc, total), kernel, strides, "AVG") * float(np.prod(kernel))
        y = s / tf.constant(counts.astype(xc.dtype.as_numpy_dtype))
    return _from_cl(node, y)


@emitter("LpPool", layout_aware=True)
def emit_lp_pool(node, x, ctx):
    """(sum over the window of |x|^p)^(1/p), padded cells counting as 0 (ONNX Runtime, PyTorch)."""
    xc, dt = lite_float(node, _to_cl(node, x[0]))
    n, kernel, strides, dilations, in_spatial, pads, extra = _pool_geometry(node, xc)
    if any(d is None for d in in_spatial):
        raise unsupported(node, "unknown spatial size")
    p = float(node.attr("p", 2))
    powered = xc * xc if p == 2 else tf.abs(xc) if p == 1 else tf.pow(tf.abs(xc), p)
    padded = _pad_cl(powered, [(b, e + x_) for (b, e), x_ in zip(pads, extra)])
    if any(d > 1 for d in dilations):
        taps = _window_slices(padded.shape.as_list()[1:-1], kernel, strides, dilations)
        s = tf.math.add_n([padded[(slice(None), *sl, slice(None))] for sl in taps])
    else:
        s = _pool_valid(padded, kernel, strides, "AVG") * float(np.prod(kernel))
    y = tf.sqrt(s) if p == 2 else s if p == 1 else tf.pow(s, 1.0 / p)
    return _from_cl(node, cast_back(y, dt))


@emitter("GlobalAveragePool", "GlobalMaxPool", layout_aware=True)
def emit_global_pool(node, x, ctx):
    xc = _to_cl(node, x[0])
    axes = list(range(1, len(xc.shape) - 1))
    fn = tf.math.reduce_mean if node.op_type == "GlobalAveragePool" else tf.math.reduce_max
    return _from_cl(node, fn(xc, axis=axes, keepdims=True))


@emitter("DepthToSpace", layout_aware=True)
def emit_depth_to_space(node, x, ctx):
    (xc,), dt = to_lite(node, "depth_to_space", _to_cl(node, x[0]))
    b = node.attr("blocksize")
    if node.attr("mode", "DCR") == "DCR":
        y = tf.nn.depth_to_space(xc, b)
    else:  # CRD: channels ordered (c, b1, b2)
        nb, h, w, c = dims_of(xc)
        t = tf.reshape(xc, shape_tensor([nb, h, w, c // (b * b), b, b]))
        t = tf.transpose(t, [0, 1, 4, 2, 5, 3])
        y = tf.reshape(t, shape_tensor([nb, h * b, w * b, c // (b * b)]))
    return _from_cl(node, cast_back(y, dt))


@emitter("SpaceToDepth", layout_aware=True)
def emit_space_to_depth(node, x, ctx):
    b = node.attr("blocksize")
    if node.attr("mode", "DCR") == "DCR":  # output channels ordered (b1, b2, c), as TF's
        (xc,), dt = to_lite(node, "space_to_depth", _to_cl(node, x[0]))
        return _from_cl(node, cast_back(tf.nn.space_to_depth(xc, b), dt))
    (xc,), dt = to_lite(node, "transpose", _to_cl(node, x[0]))  # CRD: (c, b1, b2)
    nb, h, w, c = dims_of(xc)
    t = tf.reshape(xc, shape_tensor([nb, h // b, b, w // b, b, c]))
    t = tf.transpose(t, [0, 1, 3, 5, 2, 4])
    return _from_cl(node, cast_back(tf.reshape(t, shape_tensor([nb, h // b, w // b, c * b * b])), dt))


# --- Col2Im (F.fold) ---------------------------------------------------------------------------
def col2im_kernel(channels: int, block: list[int], dilations: list[int]) -> np.ndarray:
    """ConvTranspose weight (ONNX layout (C*K, C, *dilated block)) that scatters column
    ``c*K + k`` of a Col2Im input to channel ``c`` at block offset ``k`` (row-major over ``block``)."""
    k = int(np.prod(block))
    kd = [(b - 1) * d + 1 for b, d in zip(block, dilations)]
    w = np.zeros((channels * k, channels, *kd), np.float32)
    for c in range(channels):
        for j, off in enumerate(itertools.product(*[range(b) for b in block])):
            w[(c * k + j, c, *[o * d for o, d in zip(off, dilations)])] = 1.0
    return w


def col2im_geometry(image: list[int], block: list[int], dilations: list[int], pads: list[int], strides: list[int]):
    """Per spatial dim: number of block positions L, and the output cells past the last block (r)."""
    n = len(image)
    grid, rest = [], []
    for i in range(n):
        span = image[i] + pads[i] + pads[i + n] - dilations[i] * (block[i] - 1) - 1
        grid.append(span // strides[i] + 1)
        rest.append(span % strides[i])
    return grid, rest


@emitter("Col2Im")
def emit_col2im(node, x, ctx):
    t, dt = lite_float(node, x[0])
    image, block = input_value(node, ctx, x, 1), input_value(node, ctx, x, 2)
    if image is None or block is None:
        raise unsupported(node, "a run-time image_shape or block_shape")
    image, block = [int(v) for v in image.reshape(-1)], [int(v) for v in block.reshape(-1)]
    n = len(image)
    if n not in (1, 2, 3) or len(block) != n:
        raise unsupported(node, f"{n}-D images")
    dil = list(node.attr("dilations") or [1] * n)
    strides = list(node.attr("strides") or [1] * n)
    pads = list(node.attr("pads") or [0] * (2 * n))
    dims = dims_of(t)
    ck, k = dims[1], int(np.prod(block))
    if not isinstance(ck, int) or ck % k:
        raise unsupported(node, "an unknown or non-divisible column count")
    c = ck // k
    grid, _ = col2im_geometry(image, block, dil, pads, strides)
    if isinstance(dims[2], int) and dims[2] != int(np.prod(grid)):
        raise ConvertError(f"node {node.name!r} (Col2Im): {dims[2]} columns, but the geometry gives {int(np.prod(grid))}")
    cols = tf.reshape(t, shape_tensor([dims[0], ck, *grid]))
    cols = tf.transpose(cols, [0, *range(2, n + 2), 1])  # channels-last for TF's conv_transpose
    w = col2im_kernel(c, block, dil)  # (CK, C, k...) -> TF (k..., C, CK)
    w = np.ascontiguousarray(np.transpose(w, [*range(2, n + 2), 1, 0]))
    kd = list(w.shape[:n])
    full = [(grid[i] - 1) * strides[i] + kd[i] for i in range(n)]
    batch = dims[0]
    oshape = shape_tensor([batch, *full, c])
    conv = {1: tf.nn.conv1d_transpose, 2: tf.nn.conv2d_transpose, 3: tf.nn.conv3d_transpose}[n]
    y = conv(cols, tf.constant(w, cols.dtype), oshape, strides=strides, padding="VALID")
    y = y[(slice(None), *[slice(pads[i], min(pads[i] + image[i], full[i])) for i in range(n)], slice(None))]
    extra = [max(pads[i] + image[i] - full[i], 0) for i in range(n)]  # cells no block reaches
    if any(extra):
        y = tf.pad(y, [(0, 0), *[(0, e) for e in extra], (0, 0)])
    return cast_back(tf.transpose(y, [0, n + 1, *range(1, n + 1)]), dt)
