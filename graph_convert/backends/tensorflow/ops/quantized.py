"""Quantized ONNX: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ConvInteger.

Two readings of one graph. Every emitter computes ONNX's arithmetic exactly (``round`` is
half-to-even in TF and in TFLite's ROUND, as in ONNX; the integer tensors are real integer
tensors), so the SavedModel and the float32 .tflite answer like ONNX Runtime. On top of that the
emitters tell TensorFlow's TFLite converter the model's own quantization, so that the int8
.tflite (converted with ``Optimize.DEFAULT``) uses exactly the source's scales and zero points:

* a DequantizeLinear whose input comes from a QuantizeLinear (or any emitter that recorded a
  float twin, see :func:`float_twin`) with the same per-tensor scale and zero point is the
  round trip ``dequantize(quantize(x))``: emitted as ``fake_quant_with_min_max_vars`` on ``x``
  with the range ``[(qmin - zp) * s, (qmax - zp) * s]``, whose zero point is an integer, so the
  converter's nudging changes nothing (the .tflite's scale equals ``s`` to the float32 bit);
* a DequantizeLinear of a constant int8 weight with zero point 0 is emitted as that weight
  in float under ``fake_quant_with_min_max_vars[_per_channel]`` with range ``+-127 * s``
  (``narrow_range``), which is the identity on the weight's values and gives the converter the
  weight's own per-tensor or per-channel scales (per-channel when the axis is the last one, the
  output channel of TF's HWIO conv and (K, N) matmul kernels; :mod:`graph_convert.backends.tensorflow.quant_grid`
  does the same for kernels that Conv/Gemm emitters read as numpy).

QLinearConv, QLinearMatMul and com.microsoft QGemm are expanded into DequantizeLinear -> float op
-> QuantizeLinear by the pass ``expand_qoperators`` (so the layout pass handles their Conv); their
emitters here compute them directly (in NCHW) when that pass is disabled.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from onnx import TensorProto, helper

from graph_convert.ir import Node
from graph_convert.backends.tensorflow.ops.core import EMITTERS, emitter, input_value, unsupported

# integer range of each quantized element type TF and TFLite hold
QRANGE = {tf.uint8: (0, 255), tf.int8: (-128, 127), tf.uint16: (0, 65535), tf.int16: (-32768, 32767),
          tf.int32: (-(2**31), 2**31 - 1)}
_ONNX_Q = {TensorProto.UINT8: tf.uint8, TensorProto.INT8: tf.int8, TensorProto.UINT16: tf.uint16,
           TensorProto.INT16: tf.int16, TensorProto.INT32: tf.int32}


def _out_dtype(node: Node, x) -> tf.DType:
    """QuantizeLinear's output type: the zero point's, else ``output_dtype`` (opset 21), else uint8."""
    if len(x) > 2 and x.has(2):
        dt = x[2].dtype
    else:
        code = node.attr("output_dtype", 0) or TensorProto.UINT8
        dt = _ONNX_Q.get(code)
        if dt is None:
            raise unsupported(node, f"output type {helper.tensor_dtype_to_string(code)}")
    if dt not in QRANGE:
        raise unsupported(node, f"quantized type {dt.name}")
    return dt


def _aligned(node: Node, p, x_shape: list, axis: int, block: int):
    """Scale or zero point ``p`` shaped to broadcast against the data: per-tensor as it is,
    per-axis (1-D) along ``axis``, blocked (same rank, ``block_size``) repeated along ``axis``."""
    rank = len(x_shape)
    prank = p.shape.rank
    if prank == 0 or (prank == 1 and p.shape[0] == 1 and block == 0):
        return tf.reshape(p, [])
    if prank == 1 and block == 0:
        return tf.reshape(p, [-1 if d == axis else 1 for d in range(rank)])
    if prank == rank and block > 0:
        n = x_shape[axis]
        if not isinstance(n, int):
            raise unsupported(node, "blocked quantization over a dimension of unknown size")
        return tf.gather(p, np.minimum(np.arange(n) // block, p.shape[axis] - 1), axis=axis)
    raise unsupported(node, f"scale of rank {prank} for data of rank {rank} (block_size {block})")


def _axis(node: Node, rank: int) -> int:
    a = node.attr("axis", 1)
    return a + rank if a < 0 else a


def _as_f32(t):
    return t if t.dtype == tf.float32 else tf.cast(t, tf.float32)


def _quantize(x, scale, zp, dt):
    """ONNX's ``saturate(round(x / scale) + zero_point)`` (round half to even)."""
    qmin, qmax = QRANGE[dt]
    y = tf.round(_as_f32(x) / _as_f32(scale))
    if zp is not None:
        y = y + _as_f32(zp)
    return tf.cast(tf.clip_by_value(y, float(qmin), float(qmax)), dt)


def _const_scalar(node: Node, ctx, x, j: int) -> float | int | None:
    if len(node.inputs) <= j or not node.inputs[j]:
        return 0 if j == 2 else None
    v = input_value(node, ctx, x, j)
    if v is None or v.size != 1:
        return None
    return v.reshape(-1)[0].item()


def float_twin(ctx, tensor: str):
    """``(float tensor, scale, zero point, dtype)`` recorded for a quantized tensor by the
    emitter that made it (the float value before QuantizeLinear, fake-quantized), or None."""
    return ctx.quantized.get(tensor)


@emitter("QuantizeLinear")
def emit_quantize_linear(node, x, ctx):
    dt = _out_dtype(node, x)
    if node.attr("saturate", 1) == 0 and dt not in QRANGE:
        raise unsupported(node, "saturate=0")
    xs = x[0].shape.as_list()
    axis, block = _axis(node, len(xs)), node.attr("block_size", 0)
    scale = _aligned(node, x[1], xs, axis, block)
    zp = _aligned(node, x[2], xs, axis, block) if len(x) > 2 and x.has(2) else None
    y = _quantize(x[0], scale, zp, dt)
    s, z = _const_scalar(node, ctx, x, 1), _const_scalar(node, ctx, x, 2)
    if ctx.declare_quantization and s is not None and z is not None and dt in (tf.int8, tf.uint8) and x[0].dtype in (tf.float32, tf.float16):
        qmin, qmax = QRANGE[dt]
        twin = tf.quantization.fake_quant_with_min_max_vars(_as_f32(x[0]), (qmin - z) * s, (qmax - z) * s, num_bits=8)
        ctx.quantized[node.outputs[0]] = (twin, s, z, dt)
    return y


def _dequantize(node, x, ctx):
    xs = x[0].shape.as_list()
    axis, block = _axis(node, len(xs)), node.attr("block_size", 0)
    out_dt = x[1].dtype
    if node.attr("output_dtype", 0):
        out_dt = tf.as_dtype(helper.tensor_dtype_to_np_dtype(node.attr("output_dtype")))
    s, z = _const_scalar(node, ctx, x, 1), _const_scalar(node, ctx, x, 2)
    twin = float_twin(ctx, node.inputs[0])
    if twin is not None and s is not None and z is not None and twin[1:3] == (s, z):
        y = twin[0]  # dequantize(quantize(v)) as the converter's fake-quant of v
        return y if y.dtype == out_dt else tf.cast(y, out_dt)
    weight = input_value(node, ctx, x, 0) if ctx.declare_quantization else None
    if weight is not None:
        grid = weight_grid(node, ctx, x, weight)
        if grid is not None:
            return grid if grid.dtype == out_dt else tf.cast(grid, out_dt)
    scale = _aligned(node, x[1], xs, axis, block)
    y = _as_f32(x[0])
    if len(x) > 2 and x.has(2):
        y = y - _as_f32(_aligned(node, x[2], xs, axis, block))
    y = y * _as_f32(scale)
    return y if y.dtype == out_dt else tf.cast(y, out_dt)


# not through ``emitter``'s constant folding: a dequantized weight must stay a fake-quant op for
# the converter to see its scales (the value is the same either way)
EMITTERS["DequantizeLinear"] = _dequantize


def weight_grid(node: Node, ctx, x, q: np.ndarray):
    """A constant int8 weight with zero point 0 as its float value under a fake-quant op with its
    own scales (None when the form has no such op: a zero point, -128, an axis not last)."""
    if q.dtype != np.int8 or node.attr("block_size", 0) or (q.size and q.min() < -127):
        return None
    sv = input_value(node, ctx, x, 1)
    zv = input_value(node, ctx, x, 2) if len(node.inputs) > 2 and node.inputs[2] else None
    if sv is None or sv.dtype != np.float32 or (zv is not None and np.any(zv != 0)):
        return None
    w = q.astype(np.float32)
    if sv.size == 1:
        s = float(sv.reshape(-1)[0])
        w = w * np.float32(s)
        return tf.quantization.fake_quant_with_min_max_vars(ctx.weight(w), -127 * s, 127 * s, num_bits=8, narrow_range=True)
    axis = _axis(node, q.ndim)
    if axis != q.ndim - 1 or q.ndim < 3:
        # TF's per-channel fake-quant takes the last axis; a matmul's (K, N) weight becomes
        # FULLY_CONNECTED's (N, K), which the converter cannot transpose with per-axis scales
        return None
    w = w * sv
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(ctx.weight(w), -127 * sv, 127 * sv, num_bits=8,
                                                                     narrow_range=True)


@emitter("DynamicQuantizeLinear")
def emit_dynamic_quantize_linear(node, x, ctx):
    v = _as_f32(x[0])
    lo = tf.minimum(tf.reduce_min(v), 0.0)
    hi = tf.maximum(tf.reduce_max(v), 0.0)
    scale = (hi - lo) / 255.0
    zp = tf.clip_by_value(tf.round((0.0 - lo) / scale), 0.0, 255.0)
    y = tf.clip_by_value(tf.round(v / scale) + zp, 0.0, 255.0)
    return [tf.cast(y, tf.uint8), scale, tf.cast(zp, tf.uint8)]


def _centered(node, ctx, x, j: int, zj: int, per: str):
    """Integer input ``j`` minus its zero point ``zj``, in float32 (exact below 2**24)."""
    v = _as_f32(x[j])
    if len(node.inputs) > zj and node.inputs[zj]:
        z = _as_f32(x[zj])
        if z.shape.rank == 1 and z.shape[0] != 1:
            # MatMulInteger: a_zero_point per row of A (M,), b_zero_point per column of B (N,)
            z = tf.reshape(z, [-1, 1]) if per == "row" else z
        elif z.shape.rank == 1 and per == "channel":
            z = tf.reshape(z, [])
        v = v - z
    return v


@emitter("MatMulInteger")
def emit_matmul_integer(node, x, ctx):
    # float32 products and sums are exact while |sum| < 2**24 (K * 255 * 255 below it: K <= 258)
    a = _centered(node, ctx, x, 0, 2, "row")
    b = _centered(node, ctx, x, 1, 3, "col")
    return tf.cast(tf.round(tf.linalg.matmul(a, b)), tf.int32)


@emitter("ConvInteger", layout_aware=True)
def emit_conv_integer(node, x, ctx):
    """(x - x_zero_point) conv (w - w_zero_point) in int32; channels-last when the layout pass
    marked the node (HWIO kernel), else transposed here."""
    if x[0].shape.rank != 4:
        raise unsupported(node, "ConvInteger other than 2-D")
    xv = _as_f32(x[0]) if node.in_perm(0) is not None else tf.transpose(_as_f32(x[0]), [0, 2, 3, 1])
    if len(node.inputs) > 2 and node.inputs[2]:
        xv = xv - tf.reshape(_as_f32(x[2]), [])
    w = _as_f32(x[1]) if node.in_perm(1) is not None else tf.transpose(_as_f32(x[1]), [2, 3, 1, 0])
    if len(node.inputs) > 3 and node.inputs[3]:
        w = w - tf.reshape(_as_f32(x[3]), [-1])  # scalar, or per output channel (the last axis)
    y = tf.cast(tf.round(_conv_nhwc(node, xv, w)), tf.int32)
    return y if node.out_perm(0) is not None else tf.transpose(y, [0, 3, 1, 2])


def _conv_nchw(node: Node, xv, w):
    """A 2-D convolution of NCHW ``xv`` with OIHW ``w`` (float32), NCHW out."""
    y = _conv_nhwc(node, tf.transpose(xv, [0, 2, 3, 1]), tf.transpose(w, [2, 3, 1, 0]))
    return tf.transpose(y, [0, 3, 1, 2])


def _conv_nhwc(node: Node, xc, kernel):
    """A 2-D convolution of NHWC ``xc`` with an HWIO ``kernel`` (float32, I = C / group)."""
    group = node.attr("group", 1)
    strides = list(node.attr("strides") or [1, 1])
    dilations = list(node.attr("dilations") or [1, 1])
    if node.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise unsupported(node, "auto_pad SAME")
    p = list(node.attr("pads") or [0, 0, 0, 0])
    # explicit zero padding of the centred input (the zero point's value), then VALID
    xc, padding = tf.pad(xc, [(0, 0), (p[0], p[2]), (p[1], p[3]), (0, 0)]), "VALID"
    c_in = xc.shape[-1]
    if group > 1 and group == c_in and kernel.shape[2] == 1 and len(set(strides)) == 1:
        mult = kernel.shape[3] // c_in  # depthwise: (kh, kw, 1, C * m) -> (kh, kw, C, m)
        wd = tf.reshape(kernel, [kernel.shape[0], kernel.shape[1], c_in, mult])
        return tf.nn.depthwise_conv2d(xc, wd, strides=[1, *strides, 1], padding=padding, dilations=dilations)
    # group 1, or one grouped CONV_2D (TF's CPU kernel and TFLite take it)
    return tf.nn.conv2d(xc, kernel, strides=[1, *strides, 1], padding=padding, dilations=[1, *dilations, 1])


def _dq_input(node: Node, x, j: int, axis: int | None = None):
    """Inputs ``j`` (quantized), ``j + 1`` (scale), ``j + 2`` (zero point) dequantized in float32;
    a 1-D scale/zero point applies along ``axis``."""
    def shaped(t):
        if t.shape.rank == 1 and t.shape[0] != 1 and axis is not None:
            rank = x[j].shape.rank
            return tf.reshape(_as_f32(t), [-1 if d == axis % rank else 1 for d in range(rank)])
        return tf.reshape(_as_f32(t), []) if t.shape.rank == 1 else _as_f32(t)

    v = _as_f32(x[j])
    if len(node.inputs) > j + 2 and node.inputs[j + 2]:
        v = v - shaped(x[j + 2])
    return v * shaped(x[j + 1])


def _requantize(node: Node, y, x, js: int):
    """Float ``y`` quantized with the scale and zero point at inputs ``js``, ``js + 1``."""
    zp = x[js + 1] if len(node.inputs) > js + 1 and node.inputs[js + 1] else None
    dt = zp.dtype if zp is not None else tf.uint8
    return _quantize(y, tf.reshape(x[js], []), None if zp is None else tf.reshape(zp, []), dt)


# QOperator nodes, emitted directly when the pass ``expand_qoperators`` did not expand them (it
# does by default, so that the layout pass and the int8 .tflite see a plain Conv / MatMul / Gemm)
@emitter("QLinearMatMul")
def emit_qlinear_matmul(node, x, ctx):
    a = _dq_input(node, x, 0, -2)  # a_scale per row of A, b_scale per column of B
    b = _dq_input(node, x, 3, -1)
    return _requantize(node, tf.linalg.matmul(a, b), x, 6)


@emitter("QLinearConv")
def emit_qlinear_conv(node, x, ctx):
    a = _dq_input(node, x, 0)
    w = _dq_input(node, x, 3, 0)
    y = _conv_nchw(node, a, w)
    if len(node.inputs) > 8 and node.inputs[8]:
        bias_scale = tf.reshape(_as_f32(x[1]), []) * tf.reshape(_as_f32(x[4]), [-1])
        y = y + tf.reshape(_as_f32(x[8]) * bias_scale, [1, -1, 1, 1])
    return _requantize(node, y, x, 6)


@emitter("com.microsoft::QGemm")
def emit_qgemm(node, x, ctx):
    trans_b = node.attr("transB", 0)
    a = _dq_input(node, x, 0)
    b = _dq_input(node, x, 3, 0 if trans_b else 1)
    y = tf.linalg.matmul(a, b, transpose_a=bool(node.attr("transA", 0)), transpose_b=bool(trans_b)) * node.attr("alpha", 1.0)
    if len(node.inputs) > 6 and node.inputs[6]:
        y = y + _as_f32(x[6]) * (tf.reshape(_as_f32(x[1]), []) * tf.reshape(_as_f32(x[4]), [-1]))
    if len(node.inputs) > 7 and node.inputs[7]:
        return _requantize(node, y, x, 7)
    return y


@emitter("com.microsoft::QLinearAdd", "com.microsoft::QLinearMul")
def emit_qlinear_binary(node, x, ctx):
    a, b = _dq_input(node, x, 0), _dq_input(node, x, 3)
    return _requantize(node, a + b if node.op_type == "QLinearAdd" else a * b, x, 6)


@emitter("com.microsoft::QLinearSoftmax")
def emit_qlinear_softmax(node, x, ctx):
    rank = x[0].shape.rank
    axis = node.attr("axis", -1) % rank
    if node.attr("opset", 13) < 13 and axis != rank - 1:
        raise unsupported(node, "the opset < 13 form over more than the last axis")
    return _requantize(node, tf.nn.softmax(_dq_input(node, x, 0), axis=axis), x, 3)


@emitter("com.microsoft::QLinearGlobalAveragePool")
def emit_qlinear_global_average_pool(node, x, ctx):
    v = _dq_input(node, x, 0)
    rank = v.shape.rank
    axes = list(range(1, rank - 1)) if node.attr("channels_last", 0) else list(range(2, rank))
    return _requantize(node, tf.math.reduce_mean(v, axis=axes, keepdims=True), x, 3)


@emitter("com.microsoft::QLinearSigmoid", "com.microsoft::QLinearLeakyRelu")
def emit_qlinear_activation(node, x, ctx):
    v = _dq_input(node, x, 0)
    y = tf.math.sigmoid(v) if node.op_type == "QLinearSigmoid" else tf.nn.leaky_relu(v, alpha=node.attr("alpha", 0.01))
    return _requantize(node, y, x, 3)


@emitter("com.microsoft::QLinearConcat")
def emit_qlinear_concat(node, x, ctx):
    if (len(node.inputs) - 2) % 3:
        raise unsupported(node, "inputs that are not (tensor, scale, zero point) triples")
    parts = [_dq_input(node, x, k) for k in range(2, len(node.inputs), 3)]
    return _requantize(node, tf.concat(parts, axis=node.attr("axis") % parts[0].shape.rank), x, 0)


@emitter("com.microsoft::QLinearWhere")
def emit_qlinear_where(node, x, ctx):
    return _requantize(node, tf.where(x[0], _dq_input(node, x, 1), _dq_input(node, x, 4)), x, 7)


@emitter("com.microsoft::QLinearAveragePool")
def emit_qlinear_average_pool(node, x, ctx):
    # its window, padding and counting rules are AveragePool's; the pass expand_qoperators (on by
    # default) writes it as DequantizeLinear -> AveragePool -> QuantizeLinear for that emitter
    raise unsupported(node, "the direct form (the pass expand_qoperators, on by default, expands it)")


def _dq_params(ctx, tensor: str) -> tuple[float, float] | None:
    """Per-tensor ``(scale, zero point)`` of the DequantizeLinear (or QuantizeLinear) making ``tensor``."""
    p = ctx.graph.producer(tensor)
    if p is None or p.op_type not in ("DequantizeLinear", "QuantizeLinear") or len(p.inputs) < 2:
        return None
    vals = [ctx.graph.constant_value(t) if t else np.zeros(1) for t in (p.inputs[1], p.inputs[2] if len(p.inputs) > 2 else "")]
    if any(v is None or v.size != 1 for v in vals):
        return None
    return float(vals[0].reshape(-1)[0]), float(vals[1].reshape(-1)[0])


def requantizing_concat(node: Node, xs: list, ctx):
    """A Concat of dequantized inputs whose scales differ from its QuantizeLinear's, written as
    PADs and ADDs (None when it is not one): TFLite's int8 CONCATENATION takes one scale for all
    inputs and its output, and the converter will not requantize an input whose scale an op fixes
    (a LOGISTIC's output: "quantization parameters violate the same scale constraint"). Each input
    padded with zeros to the output's extent along the axis and the pads added is the concat (one
    input is non-zero at each position); int8 ADD rescales each input to the output's scale, which
    is ONNX's ``Q(concat(DQ(a), DQ(b)))`` element by element."""
    readers = ctx.graph.consumers(node.outputs[0])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or len(xs) < 2:
        return None
    out = _dq_params(ctx, readers[0].outputs[0])
    ins = [_dq_params(ctx, t) for t in node.inputs]
    if out is None or any(p is None for p in ins) or all(p == out for p in ins):
        return None
    rank = xs[0].shape.rank
    axis = node.attr("axis") % rank
    sizes = [t.shape[axis] for t in xs]
    if any(n is None for n in sizes):
        return None  # pads need each input's extent
    total, y, start = sum(sizes), None, 0
    for t, n in zip(xs, sizes):
        pads = [[0, 0]] * rank
        pads[axis] = [start, total - start - n]
        part = tf.pad(t, pads)
        y = part if y is None else y + part
        start += n
    return y
