"""Quantized weights that emitters read as numpy: their source scales, declared to the TFLite converter.

A Conv or Gemm emitter reads its kernel through ``EmitContext.const`` and rearranges it (OIHW to
HWIO, a transposed B, a dilated or depthwise kernel) before making it a constant with
``EmitContext.weight``. When that kernel is a DequantizeLinear of a constant int8 tensor,
:func:`dequantized` gives its float value and records the quantization (:class:`Grid`);
:func:`declare` then puts the finished kernel under a fake-quant op with the source's scales when
the kernel still lies exactly on that grid along its last axis (the output channel of TF's
kernels) -- checked on the values, so the fake-quant op is the identity and never changes a
number, it only tells the converter which int8 values and scales the int8 .tflite must hold.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from graph_convert.ir import Graph


class Grid(NamedTuple):
    """A DequantizeLinear's constant parameters: scale (scalar or per ``axis``), zero point."""

    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int


def dequantized(graph: Graph, tensor: str) -> tuple[np.ndarray, Grid] | None:
    """The float value of ``tensor`` when a DequantizeLinear (per-tensor or per-axis) of
    constants makes it, and its parameters; else None."""
    node = graph.producer(tensor)
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or node.attr("block_size", 0):
        return None
    vals = [graph.constant_value(t) if t else None for t in node.inputs]
    q, s = vals[0], vals[1] if len(vals) > 1 else None
    z = vals[2] if len(vals) > 2 else None
    if q is None or s is None or (len(node.inputs) > 2 and node.inputs[2] and z is None) or q.dtype.kind not in "iu":
        return None
    axis = node.attr("axis", 1)
    axis = axis + q.ndim if axis < 0 else axis
    shape = [1] * q.ndim
    if s.ndim == 1 and s.size > 1:
        shape[axis] = -1
    sa = s.astype(np.float32).reshape(shape if s.size > 1 else ())
    za = np.zeros((), np.float32) if z is None else z.astype(np.float32).reshape(shape if z.size > 1 else ())
    # as ONNX Runtime computes it: (q - zero_point) * scale in float32
    value = ((q.astype(np.float32) - za) * sa).astype(s.dtype)
    return value, Grid(s.astype(np.float32).reshape(-1), None if z is None else z.reshape(-1), axis)


def declare(tensor, value: np.ndarray, grids: list[Grid]):
    """``tensor`` (holding ``value``) under a fake-quant op with the first grid it lies on
    exactly (int8 values in [-127, 127], zero point 0, scales along the last axis), else as is."""
    import tensorflow as tf

    if value.dtype != np.float32 or value.ndim == 0:
        return tensor
    for g in grids:
        if g.zero_point is not None and np.any(g.zero_point != 0):
            continue
        if g.scale.size not in (1, value.shape[-1]) or np.any(g.scale <= 0):
            continue
        if g.scale.size > 1 and value.ndim < 3:
            # a matmul's (K, N) kernel becomes FULLY_CONNECTED's (N, K): the converter cannot
            # transpose per-axis scales, so it quantizes this kernel itself (per channel)
            continue
        q = np.round(value / g.scale)
        if np.abs(q).max(initial=0) > 127 or not np.array_equal(q.astype(np.float32) * g.scale, value):
            continue
        lo, hi = -127 * g.scale, 127 * g.scale
        if g.scale.size == 1:
            return tf.quantization.fake_quant_with_min_max_vars(tensor, float(lo[0]), float(hi[0]), num_bits=8, narrow_range=True)
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(tensor, lo, hi, num_bits=8, narrow_range=True)
    return tensor
