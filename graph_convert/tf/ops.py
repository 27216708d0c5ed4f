"""Built-in TF emitters: ``op_type -> emit(node, inputs, ctx)`` (see :mod:`graph_convert.tf.emitter`).

Layout-sensitive emitters (Conv, ConvTranspose, pools, DepthToSpace, ...) work channels-last:
when the layout pass marked the node they use its tensors as they are; an unmarked node is
transposed to channels-last here (correct, only slower).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tensorflow as tf

from graph_convert import perm as P
from graph_convert.errors import ConvertError
from graph_convert.ir import Node
from graph_convert.tf.emitter import LAYOUT_AWARE, EmitContext, tf_dtype

EMITTERS: dict[str, Callable] = {}


def emitter(*op_types: str, layout_aware: bool = False):
    def deco(fn):
        for op in op_types:
            EMITTERS[op] = fn
            if layout_aware:
                LAYOUT_AWARE.add(op)
        return fn

    return deco


def _unsupported(node: Node, what: str) -> ConvertError:
    return ConvertError(f"node {node.name!r} ({node.op_type}): {what} is not supported by the TF emitter")


# --- elementwise -------------------------------------------------------------------------------
_UNARY = {
    "Relu": tf.nn.relu, "Sigmoid": tf.math.sigmoid, "Tanh": tf.math.tanh, "Exp": tf.math.exp,
    "Log": tf.math.log, "Abs": tf.math.abs, "Neg": tf.math.negative, "Sqrt": tf.math.sqrt,
    "Reciprocal": tf.math.reciprocal, "Floor": tf.math.floor, "Ceil": tf.math.ceil, "Sin": tf.math.sin,
    "Cos": tf.math.cos, "Erf": tf.math.erf, "Not": tf.math.logical_not, "Softsign": tf.math.softsign,
    "Sign": tf.math.sign, "Round": tf.math.round, "Identity": tf.identity, "Tan": tf.math.tan,
    "Asin": tf.math.asin, "Acos": tf.math.acos, "Atan": tf.math.atan, "Sinh": tf.math.sinh,
    "Cosh": tf.math.cosh, "Asinh": tf.math.asinh, "Acosh": tf.math.acosh, "Atanh": tf.math.atanh,
    "IsNaN": tf.math.is_nan,
}
_BINARY = {
    "Add": tf.math.add, "Sub": tf.math.subtract, "Mul": tf.math.multiply, "Equal": tf.math.equal,
    "Less": tf.math.less, "LessOrEqual": tf.math.less_equal, "Greater": tf.math.greater,
    "GreaterOrEqual": tf.math.greater_equal, "And": tf.math.logical_and, "Or": tf.math.logical_or,
    "Xor": tf.math.logical_xor,
}


def _unary(fn):
    return lambda node, x, ctx: fn(x[0])


def _binary(fn):
    return lambda node, x, ctx: fn(x[0], x[1])


for _op, _fn in _UNARY.items():
    EMITTERS[_op] = _unary(_fn)
for _op, _fn in _BINARY.items():
    EMITTERS[_op] = _binary(_fn)


@emitter("Div")
def emit_div(node, x, ctx):
    if x[0].dtype.is_integer:  # ONNX integer Div truncates toward zero
        return tf.truncatediv(x[0], x[1])
    return tf.math.divide(x[0], x[1])


@emitter("Pow")
def emit_pow(node, x, ctx):
    e = ctx.const(node.inputs[1])
    if e is not None and e.size == 1:
        v = float(e.reshape(-1)[0])
        if v == 2.0:
            return tf.math.square(x[0])
        if v == 0.5:
            return tf.math.sqrt(x[0])
        if v == 1.0:
            return tf.identity(x[0])
    return tf.math.pow(x[0], tf.cast(x[1], x[0].dtype))


@emitter("Max", "Min", "Sum", "Mean")
def emit_variadic(node, x, ctx):
    fn = {"Max": tf.math.maximum, "Min": tf.math.minimum, "Sum": tf.math.add, "Mean": tf.math.add}[node.op_type]
    y = x[0]
    for t in x[1:]:
        y = fn(y, t)
    if node.op_type == "Mean":
        y = y / tf.cast(len(x), y.dtype)
    return y


@emitter("Clip")
def emit_clip(node, x, ctx):
    if ctx.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo_v = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        hi_v = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        lo = None if lo_v is None else float(lo_v)
        hi = None if hi_v is None else float(hi_v)
        if lo_v is None and len(node.inputs) > 1 and node.inputs[1]:
            lo = x[1]
        if hi_v is None and len(node.inputs) > 2 and node.inputs[2]:
            hi = x[2]
    y = x[0]
    if isinstance(lo, float) and isinstance(hi, float) and lo == 0.0 and hi == 6.0:
        return tf.nn.relu6(y)
    if isinstance(lo, float) and lo == 0.0 and hi is None:
        return tf.nn.relu(y)
    if lo is not None:
        y = tf.math.maximum(y, tf.cast(lo, y.dtype))
    if hi is not None:
        y = tf.math.minimum(y, tf.cast(hi, y.dtype))
    return y


@emitter("LeakyRelu")
def emit_leaky_relu(node, x, ctx):
    return tf.nn.leaky_relu(x[0], alpha=node.attr("alpha", 0.01))


@emitter("Elu")
def emit_elu(node, x, ctx):
    a = node.attr("alpha", 1.0)
    return tf.nn.elu(x[0]) if a == 1.0 else tf.where(x[0] > 0, x[0], a * (tf.math.exp(x[0]) - 1))


@emitter("Selu")
def emit_selu(node, x, ctx):
    a, g = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
    return g * tf.where(x[0] > 0, x[0], a * (tf.math.exp(x[0]) - 1))


@emitter("HardSigmoid")
def emit_hard_sigmoid(node, x, ctx):
    a, b = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return tf.clip_by_value(a * x[0] + b, 0.0, 1.0)


@emitter("HardSwish")
def emit_hard_swish(node, x, ctx):
    return x[0] * tf.nn.relu6(x[0] + 3.0) / 6.0


@emitter("Softplus")
def emit_softplus(node, x, ctx):
    return tf.math.softplus(x[0])


@emitter("Mish")
def emit_mish(node, x, ctx):
    return x[0] * tf.math.tanh(tf.math.softplus(x[0]))


@emitter("Gelu")
def emit_gelu(node, x, ctx):
    return tf.nn.gelu(x[0], approximate=node.attr("approximate", "none") == "tanh")


@emitter("PRelu")
def emit_prelu(node, x, ctx):
    return tf.where(x[0] >= 0, x[0], x[0] * x[1])


@emitter("Where")
def emit_where(node, x, ctx):
    return tf.where(x[0], x[1], x[2])


@emitter("Cast")
def emit_cast(node, x, ctx):
    return tf.cast(x[0], tf_dtype(node.attr("to")))


@emitter("Dropout")
def emit_dropout(node, x, ctx):
    outs = [tf.identity(x[0])]
    if len(node.outputs) > 1:
        outs.append(tf.ones_like(x[0], dtype=tf.bool))
    return outs


# --- shape manipulation ----------------------------------------------------------------------
def _dims(x) -> list:
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


def _shape_tensor(dims: list):
    if all(isinstance(d, int) for d in dims):
        return dims
    return tf.stack([tf.cast(d, tf.int32) if not isinstance(d, int) else tf.constant(d, tf.int32) for d in dims])


@emitter("Reshape")
def emit_reshape(node, x, ctx):
    target = ctx.const(node.inputs[1])
    if target is None:
        return tf.reshape(x[0], tf.cast(x[1], tf.int32))
    target = [int(v) for v in target.reshape(-1)]
    if not node.attr("allowzero", 0) and 0 in target:
        dims = _dims(x[0])
        target = [dims[i] if v == 0 else v for i, v in enumerate(target)]
    return tf.reshape(x[0], _shape_tensor(target))


@emitter("Flatten")
def emit_flatten(node, x, ctx):
    rank = len(x[0].shape)
    axis = node.attr("axis", 1) % (rank + 1) if rank else 0
    dims = _dims(x[0])
    lead = dims[:axis]
    if all(isinstance(d, int) for d in lead):
        first = int(np.prod(lead)) if lead else 1
    else:
        first = tf.reduce_prod(tf.stack([tf.cast(d, tf.int32) for d in lead]))
    return tf.reshape(x[0], _shape_tensor([first, -1]))


@emitter("Transpose")
def emit_transpose(node, x, ctx):
    p = node.attr("perm")
    if p is None:
        p = list(reversed(range(len(x[0].shape))))
    return tf.transpose(x[0], p)


@emitter("Concat")
def emit_concat(node, x, ctx):
    return tf.concat([t for t in x if t is not None], axis=node.attr("axis"))


@emitter("Squeeze")
def emit_squeeze(node, x, ctx):
    axes = node.attr("axes") if ctx.opset < 13 else (None if len(node.inputs) < 2 or not node.inputs[1] else ctx.const(node.inputs[1]))
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        raise _unsupported(node, "non-constant axes")
    return tf.squeeze(x[0], axis=None if axes is None else [int(a) for a in np.reshape(axes, -1)])


@emitter("Unsqueeze")
def emit_unsqueeze(node, x, ctx):
    axes = node.attr("axes") if ctx.opset < 13 else ctx.const(node.inputs[1])
    if axes is None:
        raise _unsupported(node, "non-constant axes")
    out_rank = len(x[0].shape) + len(np.reshape(axes, -1))
    y = x[0]
    for a in sorted(int(a) % out_rank for a in np.reshape(axes, -1)):
        y = tf.expand_dims(y, a)
    return y


@emitter("Shape")
def emit_shape(node, x, ctx):
    s = tf.shape(x[0], out_type=tf.int64)
    start, end = node.attr("start", 0), node.attr("end")
    return s[start:end]


@emitter("Split")
def emit_split(node, x, ctx):
    axis = node.attr("axis", 0)
    if ctx.opset >= 13 and len(node.inputs) > 1 and node.inputs[1]:
        split = ctx.const(node.inputs[1])
        if split is None:
            raise _unsupported(node, "non-constant split sizes")
        split = [int(v) for v in split]
    else:
        split = node.attr("split")
    n = len(node.outputs)
    if split is None:
        dim = x[0].shape[axis]
        if dim is None:
            return tf.split(x[0], n, axis=axis)
        chunk = -(-dim // n)
        split = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
    return tf.split(x[0], split, axis=axis)


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
        vals = [ctx.const(t) if j < len(node.inputs) and node.inputs[j] else None for j, t in enumerate((node.inputs + ["", "", ""])[1:5], 1)]
        if vals[0] is None or vals[1] is None or (len(node.inputs) > 3 and node.inputs[3] and vals[2] is None) or (len(node.inputs) > 4 and node.inputs[4] and vals[3] is None):
            raise _unsupported(node, "non-constant starts/ends/axes/steps")
        starts, ends = [int(v) for v in vals[0]], [int(v) for v in vals[1]]
        axes = [int(v) for v in vals[2]] if vals[2] is not None else list(range(len(starts)))
        steps = [int(v) for v in vals[3]] if vals[3] is not None else [1] * len(starts)
    sl = [slice(None)] * rank
    shape = x[0].shape.as_list()
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
    return x[0][tuple(sl)]


@emitter("Gather")
def emit_gather(node, x, ctx):
    axis = node.attr("axis", 0)
    idx = x[1]
    dim = x[0].shape[axis]
    iv = ctx.const(node.inputs[1])
    if iv is not None and dim is not None:
        idx = tf.constant(np.where(iv < 0, iv + dim, iv).astype(np.int64))
    elif iv is None:
        d = tf.shape(x[0], out_type=idx.dtype)[axis]
        idx = tf.where(idx < 0, idx + d, idx)
    return tf.gather(x[0], idx, axis=axis)


@emitter("ConstantOfShape")
def emit_constant_of_shape(node, x, ctx):
    v = node.attr("value")
    value = np.zeros(1, np.float32) if v is None else __import__("onnx").numpy_helper.to_array(v)
    return tf.fill(tf.cast(x[0], tf.int64), tf.constant(value.reshape(-1)[0], dtype=tf.as_dtype(value.dtype)))


@emitter("Constant")
def emit_constant(node, x, ctx):
    return tf.constant(ctx.const(node.outputs[0]))


@emitter("Expand")
def emit_expand(node, x, ctx):
    shape = tf.cast(x[1], tf.int64)
    return x[0] * tf.ones(tf.broadcast_dynamic_shape(tf.shape(x[0], out_type=tf.int64), shape), dtype=x[0].dtype) if x[0].dtype != tf.bool else tf.broadcast_to(x[0], tf.broadcast_dynamic_shape(tf.shape(x[0], out_type=tf.int64), shape))


@emitter("Tile")
def emit_tile(node, x, ctx):
    return tf.tile(x[0], tf.cast(x[1], tf.int64))


# --- matmul ------------------------------------------------------------------------------------
@emitter("MatMul")
def emit_matmul(node, x, ctx):
    a, b = x
    if len(a.shape) == 1 or len(b.shape) == 1:
        a2 = a[None, :] if len(a.shape) == 1 else a
        b2 = b[:, None] if len(b.shape) == 1 else b
        y = tf.linalg.matmul(a2, b2)
        if len(a.shape) == 1:
            y = tf.squeeze(y, -2)
        if len(b.shape) == 1:
            y = tf.squeeze(y, -1)
        return y
    return tf.linalg.matmul(a, b)


@emitter("Gemm")
def emit_gemm(node, x, ctx):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)
    a = x[0]
    bv = ctx.const(node.inputs[1])
    if bv is not None:  # fold transB and alpha into the constant: one FULLY_CONNECTED in TFLite
        bv = bv.T if tb else bv
        if alpha != 1.0:
            bv, alpha = bv * alpha, 1.0
        b, tb = tf.constant(np.ascontiguousarray(bv)), 0
    else:
        b = x[1]
    y = tf.linalg.matmul(a, b, transpose_a=bool(ta), transpose_b=bool(tb))
    if alpha != 1.0:
        y = y * alpha
    if len(node.inputs) > 2 and node.inputs[2]:
        c = ctx.const(node.inputs[2])
        c = x[2] if c is None else tf.constant((c * beta).astype(c.dtype) if beta != 1.0 else c)
        if beta != 1.0 and ctx.const(node.inputs[2]) is None:
            c = c * beta
        y = y + c
    return y


# --- reductions / softmax --------------------------------------------------------------------
def _reduce_axes(node, x, ctx):
    rank = len(x[0].shape)
    if len(node.inputs) > 1 and node.inputs[1]:
        v = ctx.const(node.inputs[1])
        if v is None:
            raise _unsupported(node, "non-constant axes")
        axes = [int(a) % rank for a in v.reshape(-1)]
    else:
        axes = [int(a) % rank for a in (node.attr("axes") or [])]
    if not axes:
        return None if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    return axes


_REDUCE = {
    "ReduceMean": tf.math.reduce_mean, "ReduceSum": tf.math.reduce_sum, "ReduceMax": tf.math.reduce_max,
    "ReduceMin": tf.math.reduce_min, "ReduceProd": tf.math.reduce_prod,
    "ReduceL1": lambda x, axis, keepdims: tf.math.reduce_sum(tf.math.abs(x), axis, keepdims),
    "ReduceL2": lambda x, axis, keepdims: tf.math.sqrt(tf.math.reduce_sum(tf.math.square(x), axis, keepdims)),
    "ReduceSumSquare": lambda x, axis, keepdims: tf.math.reduce_sum(tf.math.square(x), axis, keepdims),
    "ReduceLogSum": lambda x, axis, keepdims: tf.math.log(tf.math.reduce_sum(x, axis, keepdims)),
    "ReduceLogSumExp": tf.math.reduce_logsumexp,
}


@emitter(*_REDUCE)
def emit_reduce(node, x, ctx):
    axes = _reduce_axes(node, x, ctx)
    if axes is None:
        return tf.identity(x[0])
    return _REDUCE[node.op_type](x[0], axis=axes, keepdims=bool(node.attr("keepdims", 1)))


@emitter("Softmax", "LogSoftmax")
def emit_softmax(node, x, ctx):
    fn = tf.nn.softmax if node.op_type == "Softmax" else tf.nn.log_softmax
    rank = len(x[0].shape)
    if ctx.opset >= 13:
        return fn(x[0], axis=node.attr("axis", -1))
    axis = node.attr("axis", 1) % rank
    if axis == rank - 1:
        return fn(x[0], axis=-1)
    dims = _dims(x[0])
    flat = tf.reshape(x[0], _shape_tensor([*dims[:axis], -1]))
    return tf.reshape(fn(flat, axis=-1), tf.shape(x[0]))


# --- padding helpers shared by conv and pooling ------------------------------------------------
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
            raise _unsupported(node, f"weight layout {node.in_perm(j)}")
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
        raise _unsupported(node, "a non-constant weight")
    kernel = list(w.shape[:n])
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    group = node.attr("group", 1)
    in_spatial = xc.shape.as_list()[1:-1]
    pads = _spatial_pads(node, in_spatial, kernel, strides, dilations)
    if pads is None:
        raise _unsupported(node, "auto_pad SAME with unknown spatial size")
    squeeze = n == 1
    if squeeze:  # NWC conv as an NHWC conv over a height-1 image: TFLite's 2-D kernels, no splitting
        xc, w = tf.expand_dims(xc, 1), w[None]
        kernel, strides, dilations, pads, in_spatial = [1, *kernel], [1, *strides], [1, *dilations], [(0, 0), *pads], [1, *in_spatial]
        n = 2
    if any(s > 1 for s in strides) and any(d > 1 for d in dilations):
        w, dilations = _dilate_kernel(w, dilations), [1] * n  # TF refuses stride>1 with dilation>1
        kernel = list(w.shape[:n])
    if all(p == (0, 0) for p in pads):
        padding = "VALID"
    elif _is_tf_same(pads, in_spatial, kernel, strides, dilations):
        padding = "SAME"
    else:
        xc, padding = _pad_cl(xc, pads), "VALID"
    c_in = w.shape[-2] * group
    c_out = w.shape[-1]
    if group == 1:
        y = tf.nn.convolution(xc, w, strides=strides, padding=padding, dilations=dilations)
    elif group == c_in and n == 2 and len(set(strides)) == 1:
        mult = c_out // c_in
        wd = w.reshape(kernel + [c_in, mult])
        y = tf.nn.depthwise_conv2d(xc, wd, strides=[1, *strides, 1], padding=padding, dilations=dilations)
    else:
        xs = tf.split(xc, group, axis=-1)
        ws = np.split(w, group, axis=-1)
        y = tf.concat([tf.nn.convolution(a, b, strides=strides, padding=padding, dilations=dilations) for a, b in zip(xs, ws)], axis=-1)
    if squeeze:
        y = tf.squeeze(y, 1)
    if len(node.inputs) > 2 and node.inputs[2]:
        y = tf.nn.bias_add(y, x[2])
    return _from_cl(node, y)


@emitter("ConvTranspose", layout_aware=True)
def emit_conv_transpose(node, x, ctx):
    xc = _to_cl(node, x[0])
    rank = len(xc.shape)
    n = rank - 2
    w = _kernel_tf(node, ctx, xc)  # (k..., C_out/group, C_in)
    if not isinstance(w, np.ndarray):
        raise _unsupported(node, "a non-constant weight")
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    group = node.attr("group", 1)
    w = _dilate_kernel(w, dilations)
    kernel = list(w.shape[:n])
    in_spatial = xc.shape.as_list()[1:-1]
    if any(d is None for d in in_spatial):
        raise _unsupported(node, "unknown spatial size")
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
    ys = [conv(a, b, oshape, strides=strides, padding="VALID") for a, b in zip(xs, ws)]
    y = tf.concat(ys, axis=-1) if group > 1 else ys[0]
    # crop the pads, then zero-extend where output_padding reaches past the full output
    sl = [slice(None)] + [slice(pads[i][0], min(pads[i][0] + out_size[i], full[i])) for i in range(n)] + [slice(None)]
    y = y[tuple(sl)]
    extra = [max(pads[i][0] + out_size[i] - full[i], 0) for i in range(n)]
    if any(extra):
        y = tf.pad(y, [(0, 0), *[(0, e) for e in extra], (0, 0)])
    if len(node.inputs) > 2 and node.inputs[2]:
        y = tf.nn.bias_add(y, x[2])
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
        raise _unsupported(node, "auto_pad SAME with unknown spatial size")
    extra = [0] * n
    if node.attr("ceil_mode", 0):
        if any(d is None for d in in_spatial):
            raise _unsupported(node, "ceil_mode with unknown spatial size")
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


@emitter("MaxPool", layout_aware=True)
def emit_max_pool(node, x, ctx):
    xc = _to_cl(node, x[0])
    n, kernel, strides, dilations, in_spatial, pads, extra = _pool_geometry(node, xc)
    if len(node.outputs) > 1 and node.outputs[1] and ctx.graph.num_uses(node.outputs[1]):
        raise _unsupported(node, "the Indices output")
    total = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    if any(d > 1 for d in dilations):
        if any(s > 1 for s in strides):
            raise _unsupported(node, "dilation together with stride > 1")
        low = xc.dtype.min if xc.dtype.is_floating else xc.dtype.min
        y = tf.nn.pool(_pad_cl(xc, total, low), kernel, "MAX", strides=strides, padding="VALID", dilations=dilations)
    elif n == 2 and not any(extra) and any(p != (0, 0) for p in total) and _is_tf_same(pads, in_spatial, kernel, strides, dilations):
        y = tf.nn.max_pool(xc, kernel, strides, "SAME")
    else:
        y = _pool_valid(_pad_cl(xc, total, xc.dtype.min), kernel, strides, "MAX")
    return _from_cl(node, y)


@emitter("AveragePool", layout_aware=True)
def emit_avg_pool(node, x, ctx):
    xc = _to_cl(node, x[0])
    n, kernel, strides, dilations, in_spatial, pads, extra = _pool_geometry(node, xc)
    if any(d > 1 for d in dilations):
        raise _unsupported(node, "dilated average pooling")
    include = node.attr("count_include_pad", 0)
    total = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    if all(p == (0, 0) for p in total):
        y = _pool_valid(xc, kernel, strides, "AVG")
    elif n == 2 and not include and not any(extra) and _is_tf_same(pads, in_spatial, kernel, strides, dilations):
        y = tf.nn.avg_pool(xc, kernel, strides, "SAME")  # TF SAME excludes padding from the count
    else:
        if any(d is None for d in in_spatial):
            raise _unsupported(node, "explicit padding with unknown spatial size")
        # windows sum over the zero-padded input; divide by how many counted cells each window saw
        mask = np.zeros([in_spatial[i] + total[i][0] + total[i][1] for i in range(n)], np.float32)
        if include:  # the declared pads count, the extra ceil_mode cells do not
            inner = tuple(slice(0, in_spatial[i] + pads[i][0] + pads[i][1]) for i in range(n))
        else:
            inner = tuple(slice(pads[i][0], pads[i][0] + in_spatial[i]) for i in range(n))
        mask[inner] = 1.0
        counts = _window_counts(mask, kernel, strides)[None, ..., None]
        s = _pool_valid(_pad_cl(xc, total), kernel, strides, "AVG") * float(np.prod(kernel))
        y = s / tf.constant(counts.astype(xc.dtype.as_numpy_dtype))
    return _from_cl(node, y)


@emitter("GlobalAveragePool", "GlobalMaxPool", layout_aware=True)
def emit_global_pool(node, x, ctx):
    xc = _to_cl(node, x[0])
    axes = list(range(1, len(xc.shape) - 1))
    fn = tf.math.reduce_mean if node.op_type == "GlobalAveragePool" else tf.math.reduce_max
    return _from_cl(node, fn(xc, axis=axes, keepdims=True))


@emitter("DepthToSpace", layout_aware=True)
def emit_depth_to_space(node, x, ctx):
    xc = _to_cl(node, x[0])
    b = node.attr("blocksize")
    if node.attr("mode", "DCR") == "DCR":
        y = tf.nn.depth_to_space(xc, b)
    else:  # CRD: channels ordered (c, b1, b2)
        nb, h, w, c = _dims(xc)
        cc = c // (b * b) if isinstance(c, int) else c // (b * b)
        t = tf.reshape(xc, _shape_tensor([nb, h, w, cc, b, b]))
        t = tf.transpose(t, [0, 1, 4, 2, 5, 3])
        y = tf.reshape(t, _shape_tensor([nb, h * b, w * b, cc]))
    return _from_cl(node, y)


@emitter("SpaceToDepth", layout_aware=True)
def emit_space_to_depth(node, x, ctx):
    return _from_cl(node, tf.nn.space_to_depth(_to_cl(node, x[0]), node.attr("blocksize")))


@emitter("BatchNormalization")
def emit_batchnorm(node, x, ctx):
    rank = len(x[0].shape)
    shape = [1, -1] + [1] * (rank - 2)
    eps = node.attr("epsilon", 1e-5)
    scale, bias, mean, var = (tf.reshape(t, shape) for t in x[1:5])
    return (x[0] - mean) * (scale / tf.math.sqrt(var + eps)) + bias


@emitter("Pad")
def emit_pad(node, x, ctx):
    rank = len(x[0].shape)
    mode = node.attr("mode", "constant")
    if ctx.opset < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
    else:
        pv = ctx.const(node.inputs[1])
        if pv is None:
            raise _unsupported(node, "non-constant pads")
        pads = [int(v) for v in pv.reshape(-1)]
        value = 0
        if len(node.inputs) > 2 and node.inputs[2]:
            cv = ctx.const(node.inputs[2])
            value = x[2] if cv is None else cv.reshape(-1)[0] if cv.size else 0
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        av = ctx.const(node.inputs[3])
        if av is None:
            raise _unsupported(node, "non-constant axes")
        axes = [int(a) % rank for a in av.reshape(-1)]
    k = len(axes)
    full = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(axes):
        full[a] = [pads[i], pads[i + k]]
    y = x[0]
    if any(b < 0 or e < 0 for b, e in full):  # negative pads crop
        y = y[tuple(slice(-b if b < 0 else None, e if e < 0 else None) for b, e in full)]
        full = [[max(b, 0), max(e, 0)] for b, e in full]
    if mode == "constant":
        return tf.pad(y, full, constant_values=tf.cast(value, y.dtype))
    if mode == "reflect":
        return tf.pad(y, full, mode="REFLECT")
    if mode == "edge":
        for a, (b, e) in enumerate(full):
            if b or e:
                parts = []
                if b:
                    parts.append(tf.repeat(tf.gather(y, [0], axis=a), b, axis=a))
                parts.append(y)
                if e:
                    parts.append(tf.repeat(tf.gather(y, [tf.shape(y)[a] - 1], axis=a), e, axis=a))
                y = tf.concat(parts, axis=a)
        return y
    raise _unsupported(node, f"pad mode {mode!r}")
