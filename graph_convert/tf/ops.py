"""Built-in TF emitters: ``op_type -> emit(node, inputs, ctx)`` (see :mod:`graph_convert.tf.emitter`).

One traced ``tf.function`` serves both the SavedModel and the .tflite file, so emitters use TF ops
that the TFLite converter maps to *builtin* kernels (GATHER rather than GatherV2 with batch dims,
shifted slices rather than dilated pooling, ...). TFLite kernels take fewer dtypes than TF:
:func:`_lite` computes such a dtype in the narrowest wider one that holds every value (exact), and
when none exists (float64, uint64, ...) records a *TFLite gap* (:func:`take_tflite_gaps`): TF runs
the graph, the TFLite converter would refuse it.

Layout-sensitive emitters (Conv, ConvTranspose, pools, Resize, InstanceNormalization, LRN, ...)
work channels-last: when the layout pass marked the node they use its tensors as they are; an
unmarked node is transposed to channels-last here (correct, only slower).

An emitter that cannot translate a form raises :class:`ConvertError` naming the node and the
reason (never a silently different result).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import onnx
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


# --- dtypes TFLite kernels take ------------------------------------------------------------------
_I8, _U8, _I16, _U16, _I32, _U32, _I64, _U64 = tf.int8, tf.uint8, tf.int16, tf.uint16, tf.int32, tf.uint32, tf.int64, tf.uint64
_F16, _F32, _F64, _B = tf.float16, tf.float32, tf.float64, tf.bool
_MOVE = frozenset({_I8, _U8, _I16, _I32, _U32, _I64, _F32, _B})  # data movement: strided slice, concat, broadcast

# Dtypes the TFLite builtin kernel behind each TF primitive takes (non-quantized), found by
# converting and running every primitive for every dtype (TF 2.21, LiteRT 2.3). uint8 EQUAL even
# aborts the interpreter, so the table is the only safe way to choose.
_LITE_DTYPES: dict[str, frozenset] = {
    "add": frozenset({_I16, _I32, _U32, _I64, _F32}),
    "sub": frozenset({_I32, _I64, _F32}),
    "mul": frozenset({_I16, _I32, _U32, _I64, _F32}),
    "div": frozenset({_F32}),
    "truncatediv": frozenset({_I32}),
    "floormod": frozenset({_I8, _I16, _I32, _I64, _F32}),
    "pow": frozenset({_I32, _F32}),
    "maximum": frozenset({_I32, _I64, _F32}),
    "minimum": frozenset({_I32, _I64, _F32}),
    "equal": frozenset({_I16, _I32, _I64, _F32, _B}),
    "not_equal": frozenset({_I32, _I64, _F32, _B}),
    "less": frozenset({_I16, _I32, _I64, _F32}),
    "less_equal": frozenset({_I32, _I64, _F32}),
    "greater": frozenset({_I32, _I64, _F32}),
    "greater_equal": frozenset({_I16, _I32, _I64, _F32}),
    "abs": frozenset({_I16, _I32, _F32}),
    "neg": frozenset({_I32, _I64, _F32}),
    "sign": frozenset({_I32, _F32}),
    "relu": frozenset({_I32, _I64, _F32}),
    "float": frozenset({_F32}),  # exp, log, sqrt, sin, tanh, logistic, floor, matmul, pooling, ...
    "reduce": frozenset({_I32, _I64, _F32}),  # sum, prod, max, min
    "argmax": frozenset({_I8, _U8, _I32, _F32, _B}),
    "topk": frozenset({_I8, _U8, _I16, _I32, _I64, _F32}),
    "cumsum": frozenset({_I32, _I64, _F32}),
    "select": frozenset({_I8, _I16, _I32, _U32, _I64, _F32, _B}),
    "gather": frozenset({_I8, _U8, _I16, _I32, _I64, _F32, _B}),
    "slice": _MOVE,
    "concat": _MOVE,
    "broadcast_to": _MOVE,
    "split": frozenset({_I8, _U8, _I16, _I32, _I64, _F32}),
    "tile": frozenset({_U8, _I32, _I64, _F32, _B}),
    "transpose": frozenset({_I8, _U8, _I32, _I64, _F32, _B}),
    "pad": frozenset({_I32, _I64, _F32, _B}),
    "mirror_pad": frozenset({_I8, _U8, _I32, _I64, _F32}),
    "reverse": frozenset({_U8, _I16, _I32, _I64, _F32, _B}),
    "fill": _MOVE,
    "scatter": frozenset({_I32, _I64, _F32, _B}),
    "scatter_add": frozenset({_I32, _I64, _F32}),
    "segment": frozenset({_I32, _F32}),
    "one_hot": frozenset({_I8, _U8, _I32, _I64, _F32}),
    "range": frozenset({_I32, _I64, _F32}),
    "depth_to_space": frozenset({_I8, _U8, _I32, _I64, _F32}),
    "space_to_depth": frozenset({_I32, _I64, _F32}),
    "cast": frozenset({_I8, _U8, _I16, _U16, _I32, _U32, _I64, _F16, _F32, _F64, _B}),
}
# Dtypes that hold every value of a dtype, narrowest first: computing there is exact.
_CONTAINERS: dict = {
    _I8: (_I8, _I16, _I32, _I64), _U8: (_U8, _I16, _I32, _I64), _I16: (_I16, _I32, _I64),
    _U16: (_U16, _I32, _I64), _I32: (_I32, _I64), _U32: (_U32, _I64), _F16: (_F16, _F32),
    _B: (_B, _I8, _I32),
}

_GAPS: list[tuple[str, str, str]] = []


def take_tflite_gaps() -> list[tuple[str, str, str]]:
    """``(node, op_type, reason)`` for every form traced since the last call that TFLite has no
    builtin kernel for (TF runs it; TFLite conversion would fail). Clears the record."""
    out = list(dict.fromkeys(_GAPS))
    _GAPS.clear()
    return out


def _gap(node: Node, reason: str) -> None:
    _GAPS.append((node.name, node.op_type, reason))


def _lite(node: Node, kinds: str | tuple[str, ...], *xs):
    """``xs`` (one dtype) cast to the narrowest dtype that every TFLite kernel in ``kinds`` takes and
    that holds all their values; returns ``(tensors, original dtype)`` (see :func:`_back`). Records
    a TFLite gap when there is none; the tensors are then returned as they are."""
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    dt = xs[0].dtype
    ok = frozenset.intersection(*(_LITE_DTYPES[k] for k in kinds))
    for c in _CONTAINERS.get(dt, (dt,)):
        if c in ok:
            return [x if x.dtype == c else tf.cast(x, c) for x in xs], dt
    _gap(node, f"TFLite has no {'/'.join(kinds)} kernel for {dt.name}")
    return list(xs), dt


def _back(y, dt):
    return y if y.dtype == dt else tf.cast(y, dt)


def _float(node: Node, x):
    """``x`` in a dtype TFLite's float kernels take (float16 -> float32), and its own dtype."""
    (x,), dt = _lite(node, "float", x)
    return x, dt


def _const_of(dtype, value):
    return tf.constant(value, dtype=dtype)


# --- elementwise: arithmetic and comparison ------------------------------------------------------
_ARITH = {"Add": ("add", tf.math.add), "Sub": ("sub", tf.math.subtract), "Mul": ("mul", tf.math.multiply)}


@emitter(*_ARITH)
def emit_arith(node, x, ctx):
    kind, fn = _ARITH[node.op_type]
    (a, b), dt = _lite(node, kind, x[0], x[1])
    return _back(fn(a, b), dt)


_COMPARE = {
    "Equal": ("equal", tf.math.equal), "Less": ("less", tf.math.less), "LessOrEqual": ("less_equal", tf.math.less_equal),
    "Greater": ("greater", tf.math.greater), "GreaterOrEqual": ("greater_equal", tf.math.greater_equal),
}


@emitter(*_COMPARE)
def emit_compare(node, x, ctx):
    kind, fn = _COMPARE[node.op_type]
    (a, b), _ = _lite(node, kind, x[0], x[1])
    return fn(a, b)


_LOGIC = {"And": tf.math.logical_and, "Or": tf.math.logical_or, "Xor": tf.math.logical_xor}


@emitter(*_LOGIC)
def emit_logic(node, x, ctx):
    return _LOGIC[node.op_type](x[0], x[1])


@emitter("Not")
def emit_not(node, x, ctx):
    return tf.math.logical_not(x[0])


@emitter("Div")
def emit_div(node, x, ctx):
    if x[0].dtype.is_integer:  # ONNX integer Div truncates toward zero
        (a, b), dt = _lite(node, "truncatediv", x[0], x[1])
        return _back(tf.truncatediv(a, b), dt)
    (a, b), dt = _lite(node, "div", x[0], x[1])
    return _back(tf.math.divide(a, b), dt)


def _abs(t):
    """|t| with ops every integer TFLite dtype has (ABS lacks int64)."""
    if t.dtype in _LITE_DTYPES["abs"]:
        return tf.math.abs(t)
    return tf.where(t < tf.zeros_like(t), -t, t)


@emitter("Mod")
def emit_mod(node, x, ctx):
    if node.attr("fmod", 0):
        # C fmod (sign of the dividend) = sign(a) * (|a| mod |b|); FLOOR_MOD of non-negative
        # operands is exact, also for floats
        (a, b), dt = _lite(node, ("floormod", "less", "neg", "select"), x[0], x[1])
        r = tf.math.floormod(_abs(a), _abs(b))
        return _back(tf.where(a < tf.zeros_like(a), -r, r), dt)
    (a, b), dt = _lite(node, "floormod", x[0], x[1])  # sign of the divisor, as Python/numpy
    return _back(tf.math.floormod(a, b), dt)


def _int_pow(base, exp, bits: int):
    """``base ** exp`` for integers by binary exponentiation over ``bits`` exponent bits (wraps
    like numpy); uses only MUL/FLOOR_MOD/SELECT, which TFLite has for int64."""
    exp = tf.cast(exp, base.dtype)
    result = tf.ones_like(base) * tf.ones_like(exp)
    p = base
    for k in range(bits):
        bit = tf.math.floormod(exp, tf.cast(2 ** (k + 1), exp.dtype)) >= tf.cast(2 ** k, exp.dtype)
        result = tf.where(bit, result * p, result)
        if k + 1 < bits:
            p = p * p
    return result


@emitter("Pow")
def emit_pow(node, x, ctx):
    base, ex = x
    e = ctx.const(node.inputs[1])
    if base.dtype.is_floating:
        b, dt = _float(node, base)
        if e is not None and e.size == 1:
            v = float(e.reshape(-1)[0])
            if v == 1.0:
                return tf.identity(base)
            if v == 2.0:
                return _back(b * b, dt)
            if v == 0.5:
                return _back(tf.math.sqrt(b), dt)
        return _back(tf.math.pow(b, tf.cast(ex, b.dtype)), dt)
    if ex.dtype.is_floating:  # ORT/numpy: pow in double, truncated to the base's integer type
        _gap(node, "integer Pow with a floating exponent needs float64")
        return tf.cast(tf.math.pow(tf.cast(base, _F64), tf.cast(ex, _F64)), base.dtype)
    if base.dtype in (_I8, _U8, _I16, _U16, _I32):  # TFLite's POW takes int32, which holds these
        (b,), dt = _lite(node, "pow", base)
        return _back(tf.math.pow(b, tf.cast(ex, b.dtype)), dt)
    (b,), dt = _lite(node, ("mul", "floormod", "greater_equal", "select"), base)
    if e is not None and e.size == 1 and int(e.reshape(-1)[0]) >= 0:
        bits = max(int(e.reshape(-1)[0]).bit_length(), 1)
    else:
        bits = ex.dtype.size * 8 - 1
    return _back(_int_pow(b, ex, bits), dt)


_VARIADIC = {"Max": ("maximum", tf.math.maximum), "Min": ("minimum", tf.math.minimum),
             "Sum": ("add", tf.math.add), "Mean": ("add", tf.math.add)}


@emitter(*_VARIADIC)
def emit_variadic(node, x, ctx):
    kind, fn = _VARIADIC[node.op_type]
    xs, dt = _lite(node, kind, *[t for t in x if t is not None])
    y = xs[0]
    for t in xs[1:]:
        y = fn(y, t)
    if node.op_type == "Mean":
        y = y / tf.cast(len(xs), y.dtype)
    return _back(y, dt)


def _scalar_operand(node: Node, ctx: EmitContext, x: list, j: int):
    """Input ``j`` as a Python float when constant, the tensor when not, None when absent."""
    if len(node.inputs) <= j or not node.inputs[j]:
        return None
    v = ctx.const(node.inputs[j])
    return x[j] if v is None else v.reshape(-1)[0].item()


@emitter("Clip")
def emit_clip(node, x, ctx):
    if ctx.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo, hi = _scalar_operand(node, ctx, x, 1), _scalar_operand(node, ctx, x, 2)
    (y,), dt = _lite(node, ("maximum", "minimum"), x[0])
    if dt == _F32 and lo == 0.0 and hi == 6.0:
        return tf.nn.relu6(y)
    if dt == _F32 and lo == 0.0 and hi is None:
        return tf.nn.relu(y)
    if lo is not None:
        y = tf.math.maximum(y, tf.cast(lo, y.dtype))
    if hi is not None:
        y = tf.math.minimum(y, tf.cast(hi, y.dtype))
    return _back(y, dt)


# --- elementwise: unary math ----------------------------------------------------------------------
def _series(x, coeffs: Sequence[float]):
    """``x * (c0 + c1 x^2 + c2 x^4 + ...)``: an odd series, accurate near 0 where formulas cancel."""
    return x * _horner(x * x, coeffs)


def _sinh(x):
    e = tf.math.exp(x)
    big = (e - 1.0 / e) * 0.5
    small = _series(x, [1.0, 1 / 6, 1 / 120, 1 / 5040, 1 / 362880])  # cancellation-free near 0
    return tf.where(tf.math.abs(x) < 0.5, small, big)


def _cosh(x):
    e = tf.math.exp(x)
    return (e + 1.0 / e) * 0.5


def _asinh(x):
    a = tf.math.abs(x)
    big = tf.math.log(a + tf.math.sqrt(a * a + 1.0))
    huge = tf.math.log(a) + math.log(2.0)  # a*a would overflow
    small = _series(a, [1.0, -1 / 6, 3 / 40, -5 / 112, 35 / 1152])
    y = tf.where(a < 0.125, small, tf.where(a > 1e18, huge, big))
    return tf.where(x < 0, -y, y)


def _acosh(x):
    return tf.math.log(x + tf.math.sqrt((x - 1.0) * (x + 1.0)))


def _atanh(x):
    big = 0.5 * tf.math.log((1.0 + x) / (1.0 - x))
    small = _series(x, [1.0, 1 / 3, 1 / 5, 1 / 7, 1 / 9])
    return tf.where(tf.math.abs(x) < 0.125, small, big)


def _asin(x):
    return tf.math.atan2(x, tf.math.sqrt((1.0 - x) * (1.0 + x)))


def _acos(x):
    return tf.math.atan2(tf.math.sqrt((1.0 - x) * (1.0 + x)), x)


# erf(x) = x * P(x^2) for |x| < 1, and 1 - exp(-x^2) * Q((|x| - 2.5) / 1.5) for 1 <= |x| <= 4 (erf is
# +-1 beyond, in float32). TFLite has no ERF kernel. Coefficients: least-squares fits to math.erf
# and math.erfc * exp(x^2) on Chebyshev nodes, made for this file; evaluated in float32 the error
# is below 2.2e-7 relative (|x| < 1) and 1e-7 absolute (1 <= |x| <= 4).
_ERF_P = (1.128379167062478, -0.3761263847636583, 0.11283782625472442, -0.02686543844267244,
          0.00522105366166387, -0.0008484398844108079, 0.00011268262732263899, -9.673597174780145e-06)
_ERF_Q = (0.21080635752659913, -0.1115214014837906, 0.05611095851601141, -0.026997789894110308,
          0.012484034711552804, -0.005611769038807508, 0.002425888218631358, -0.0009155542473697104,
          0.0003678646643658195, -0.00024550735627153854, 9.640629659697703e-05)


def _horner(t, coeffs: Sequence[float]):
    acc = tf.constant(coeffs[-1], t.dtype)
    for c in reversed(coeffs[:-1]):
        acc = acc * t + c
    return acc


def _erf(x):
    a = tf.math.minimum(tf.math.abs(x), 4.0)
    tail = 1.0 - tf.math.exp(-a * a) * _horner((a - 2.5) / 1.5, _ERF_Q)
    return tf.where(tf.math.abs(x) < 1.0, x * _horner(x * x, _ERF_P), tf.where(x < 0, -tail, tail))


_FLOAT_UNARY: dict[str, Callable] = {
    "Sigmoid": tf.math.sigmoid, "Tanh": tf.math.tanh, "Exp": tf.math.exp, "Log": tf.math.log,
    "Sqrt": tf.math.sqrt, "Reciprocal": lambda t: 1.0 / t, "Floor": tf.math.floor, "Ceil": tf.math.ceil,
    "Round": tf.math.round, "Sin": tf.math.sin, "Cos": tf.math.cos, "Tan": lambda t: tf.math.sin(t) / tf.math.cos(t),
    "Asin": _asin, "Acos": _acos, "Atan": lambda t: tf.math.atan2(t, tf.ones_like(t)),
    "Sinh": _sinh, "Cosh": _cosh, "Asinh": _asinh, "Acosh": _acosh, "Atanh": _atanh, "Erf": _erf,
    "Softsign": lambda t: t / (1.0 + tf.math.abs(t)), "Softplus": tf.math.softplus,
}


@emitter(*_FLOAT_UNARY)
def emit_float_unary(node, x, ctx):
    t, dt = _float(node, x[0])
    return _back(_FLOAT_UNARY[node.op_type](t), dt)


@emitter("Abs")
def emit_abs(node, x, ctx):
    if x[0].dtype.is_unsigned:
        return tf.identity(x[0])
    (t,), dt = _lite(node, ("less", "neg", "select"), x[0])
    return _back(_abs(t), dt)


@emitter("Neg")
def emit_neg(node, x, ctx):
    (t,), dt = _lite(node, "neg", x[0])
    return _back(tf.math.negative(t), dt)


@emitter("Sign")
def emit_sign(node, x, ctx):
    if x[0].dtype in _LITE_DTYPES["sign"] or x[0].dtype in (_F16, _F64):
        t, dt = (_float(node, x[0]) if x[0].dtype.is_floating else (x[0], x[0].dtype))
        return _back(tf.math.sign(t), dt)
    (t,), dt = _lite(node, ("greater", "less", "select"), x[0])
    zero, one = tf.zeros_like(t), tf.ones_like(t)
    return _back(tf.where(t > zero, one, tf.where(t < zero, -one if not dt.is_unsigned else zero, zero)), dt)


@emitter("Relu")
def emit_relu(node, x, ctx):
    (t,), dt = _lite(node, "relu", x[0])
    return _back(tf.nn.relu(t), dt)


@emitter("Identity")
def emit_identity(node, x, ctx):
    return tf.identity(x[0])


@emitter("IsNaN")
def emit_isnan(node, x, ctx):
    t, _ = _float(node, x[0])
    return tf.math.not_equal(t, t)


@emitter("IsInf")
def emit_isinf(node, x, ctx):
    t, _ = _float(node, x[0])
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    hit = tf.zeros_like(t, dtype=tf.bool)
    if pos:
        hit = tf.math.logical_or(hit, tf.math.equal(t, tf.constant(np.inf, t.dtype)))
    if neg:
        hit = tf.math.logical_or(hit, tf.math.equal(t, tf.constant(-np.inf, t.dtype)))
    return hit


# --- activations -----------------------------------------------------------------------------------
def _activation(fn):
    def emit(node, x, ctx):
        t, dt = _float(node, x[0])
        return _back(fn(node, t), dt)

    return emit


def _elu(node, t):
    a = node.attr("alpha", 1.0)
    return tf.nn.elu(t) if a == 1.0 else tf.where(t > 0, t, a * (tf.math.exp(t) - 1.0))


def _selu(node, t):
    a = node.attr("alpha", 1.67326319217681884765625)
    g = node.attr("gamma", 1.05070102214813232421875)
    return g * tf.where(t > 0, t, a * (tf.math.exp(t) - 1.0))


def _celu(node, t):
    a = node.attr("alpha", 1.0)
    return tf.nn.relu(t) + tf.math.minimum(0.0, a * (tf.math.exp(t / a) - 1.0))


def _mish(node, t):
    # x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2): exact in the tails, where
    # TFLite's TANH/softplus approximations lose digits
    e = tf.math.exp(tf.math.minimum(t, 20.0))
    n = e * (e + 2.0)
    return tf.where(t > 20.0, t, t * n / (n + 2.0))


_ACTIVATIONS: dict[str, Callable] = {
    "LeakyRelu": lambda node, t: tf.nn.leaky_relu(t, alpha=node.attr("alpha", 0.01)),
    "Elu": _elu, "Selu": _selu, "Celu": _celu, "Mish": _mish,
    "HardSigmoid": lambda node, t: tf.math.minimum(tf.math.maximum(node.attr("alpha", 0.2) * t + node.attr("beta", 0.5), 0.0), 1.0),
    "HardSwish": lambda node, t: t * tf.nn.relu6(t + 3.0) / 6.0,
    "Gelu": lambda node, t: tf.nn.gelu(t, approximate=node.attr("approximate", "none") == "tanh"),
    "ThresholdedRelu": lambda node, t: tf.where(t > node.attr("alpha", 1.0), t, tf.zeros_like(t)),
    "Swish": lambda node, t: t * tf.math.sigmoid(node.attr("alpha", 1.0) * t),
}
for _op, _fn in _ACTIVATIONS.items():
    EMITTERS[_op] = _activation(_fn)


@emitter("Shrink")
def emit_shrink(node, x, ctx):
    lambd, bias = node.attr("lambd", 0.5), node.attr("bias", 0.0)
    if not x[0].dtype.is_floating:
        (t,), dt = _lite(node, ("less", "greater", "sub", "add", "select"), x[0])
        lo, hi = tf.cast(-lambd, t.dtype), tf.cast(lambd, t.dtype)
        b = tf.cast(bias, t.dtype)
        return _back(tf.where(t < lo, t + b, tf.where(t > hi, t - b, tf.zeros_like(t))), dt)
    t, dt = _float(node, x[0])
    return _back(tf.where(t < -lambd, t + bias, tf.where(t > lambd, t - bias, tf.zeros_like(t))), dt)


@emitter("PRelu")
def emit_prelu(node, x, ctx):
    (t, s), dt = _lite(node, ("mul", "less", "select"), x[0], x[1])
    return _back(tf.where(t < tf.zeros_like(t), t * s, t), dt)


@emitter("Where")
def emit_where(node, x, ctx):
    (a, b), dt = _lite(node, "select", x[1], x[2])
    return _back(tf.where(x[0], a, b), dt)


def _cast(node: Node, t, to):
    if t.dtype == to:
        return tf.identity(t)
    for d in (t.dtype, to):
        if d not in _LITE_DTYPES["cast"]:
            _gap(node, f"TFLite has no CAST kernel for {d.name}")
    if to == _B or t.dtype == _B:
        return tf.cast(t, to)
    if t.dtype.is_floating and to.is_integer:
        return tf.cast(t, to)  # truncates toward zero, as ONNX
    return tf.cast(t, to)


@emitter("Cast")
def emit_cast(node, x, ctx):
    return _cast(node, x[0], tf_dtype(node.attr("to")))


@emitter("CastLike")
def emit_cast_like(node, x, ctx):
    return _cast(node, x[0], x[1].dtype)


@emitter("Dropout")
def emit_dropout(node, x, ctx):
    if len(node.inputs) > 2 and node.inputs[2]:
        mode = ctx.const(node.inputs[2])
        if mode is None or bool(mode.reshape(-1)[0]):
            raise _unsupported(node, "training mode (a random mask)")
    outs = [tf.identity(x[0])]
    if len(node.outputs) > 1:
        outs.append(tf.ones_like(x[0], dtype=tf.bool))
    return outs


# --- shape manipulation --------------------------------------------------------------------------
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


def _prod(dims: list):
    if all(isinstance(d, int) for d in dims):
        return int(np.prod(dims)) if dims else 1
    return tf.reduce_prod(tf.stack([tf.cast(d, tf.int32) for d in dims]))


def _static(x) -> list[int] | None:
    s = x.shape.as_list() if x.shape.rank is not None else None
    return None if s is None or any(d is None for d in s) else s


def _axes_input(node: Node, ctx: EmitContext, j: int = 1, attr: str = "axes") -> list[int] | None:
    """Axes from the opset<13 attribute or constant input ``j`` (None when absent)."""
    if len(node.inputs) > j and node.inputs[j]:
        v = ctx.const(node.inputs[j])
        if v is None:
            raise _unsupported(node, f"non-constant {attr}")
        return [int(a) for a in v.reshape(-1)]
    a = node.attr(attr)
    return None if a is None else [int(v) for v in a]


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
    axis = node.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    dims = _dims(x[0])
    return tf.reshape(x[0], _shape_tensor([_prod(dims[:axis]), _prod(dims[axis:])]))


@emitter("Transpose")
def emit_transpose(node, x, ctx):
    p = node.attr("perm")
    if p is None:
        p = list(reversed(range(len(x[0].shape))))
    (t,), dt = _lite(node, "transpose", x[0])
    return _back(tf.transpose(t, p), dt)


@emitter("Concat")
def emit_concat(node, x, ctx):
    xs, dt = _lite(node, "concat", *[t for t in x if t is not None])
    return _back(tf.concat(xs, axis=node.attr("axis")), dt)


@emitter("Squeeze")
def emit_squeeze(node, x, ctx):
    axes = _axes_input(node, ctx)
    rank = len(x[0].shape)
    dims = _dims(x[0])
    if axes is None:
        if any(not isinstance(d, int) for d in dims):
            return tf.squeeze(x[0])
        axes = [i for i, d in enumerate(dims) if d == 1]
    drop = {a % rank for a in axes}
    return tf.reshape(x[0], _shape_tensor([d for i, d in enumerate(dims) if i not in drop]))


@emitter("Unsqueeze")
def emit_unsqueeze(node, x, ctx):
    axes = _axes_input(node, ctx)
    if axes is None:
        raise _unsupported(node, "missing axes")
    out_rank = len(x[0].shape) + len(axes)
    new = {a % out_rank for a in axes}
    rest = iter(_dims(x[0]))
    return tf.reshape(x[0], _shape_tensor([1 if i in new else next(rest) for i in range(out_rank)]))


@emitter("Shape")
def emit_shape(node, x, ctx):
    start, end = node.attr("start", 0), node.attr("end")
    s = _static(x[0])
    if s is not None:
        return tf.constant(np.array(s[start:end], dtype=np.int64))
    return tf.shape(x[0], out_type=tf.int64)[start:end]


@emitter("Size")
def emit_size(node, x, ctx):
    s = _static(x[0])
    if s is not None:
        return tf.constant(np.int64(np.prod(s)))
    return tf.size(x[0], out_type=tf.int64)


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
    (t,), dt = _lite(node, "split", x[0])
    if split is None:
        dim = t.shape[axis]
        if dim is None:
            return [_back(y, dt) for y in tf.split(t, n, axis=axis)]
        chunk = -(-dim // n)  # opset 18 num_outputs: the last chunk may be smaller
        split = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
    return [_back(y, dt) for y in tf.split(t, split, axis=axis)]


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
    (t,), dt = _lite(node, "slice", x[0])
    return _back(t[tuple(sl)], dt)


def _nonneg_index(idx, dim):
    """ONNX indices may be negative (counted from the end)."""
    return tf.where(idx < tf.zeros_like(idx), idx + tf.cast(dim, idx.dtype), idx)


@emitter("Gather")
def emit_gather(node, x, ctx):
    axis = node.attr("axis", 0) % max(len(x[0].shape), 1)
    dim = x[0].shape[axis]
    iv = ctx.const(node.inputs[1])
    if iv is not None and dim is not None:
        idx = tf.constant(np.where(iv < 0, iv + dim, iv).astype(iv.dtype))
    else:
        idx = _nonneg_index(x[1], dim if dim is not None else tf.shape(x[0], out_type=x[1].dtype)[axis])
    (t,), dt = _lite(node, "gather", x[0])
    return _back(tf.gather(t, idx, axis=axis), dt)


def _coords(shape: list[int], dtype, skip: int | None = None) -> list:
    """Per axis, a constant tensor of ``shape`` holding that axis' coordinate (None at ``skip``)."""
    grids = np.indices(shape, dtype=dtype.as_numpy_dtype) if shape else np.zeros((0,), dtype.as_numpy_dtype)
    return [None if a == skip else tf.constant(grids[a]) for a in range(len(shape))]


@emitter("GatherElements")
def emit_gather_elements(node, x, ctx):
    data, idx = x
    rank = len(data.shape)
    axis = node.attr("axis", 0) % rank
    ishape, dshape = _static(idx), _static(data)
    if ishape is None or dshape is None:
        raise _unsupported(node, "unknown input shapes")
    cols = _coords(ishape, idx.dtype, skip=axis)
    cols[axis] = _nonneg_index(idx, dshape[axis])
    (t,), dt = _lite(node, "gather", data)
    return _back(tf.gather_nd(t, tf.stack(cols, axis=-1)), dt)


@emitter("GatherND")
def emit_gather_nd(node, x, ctx):
    data, idx = x
    b = node.attr("batch_dims", 0)
    ishape, dshape = _static(idx), _static(data)
    if ishape is None or dshape is None:
        raise _unsupported(node, "unknown input shapes")
    k = ishape[-1]
    idx = _nonneg_index(idx, tf.constant(np.array(dshape[b:b + k], dtype=idx.dtype.as_numpy_dtype)))
    if b:  # prepend the batch coordinates, so one plain GATHER_ND does it
        grid = _coords(ishape[:-1], idx.dtype)[:b]
        idx = tf.concat([tf.expand_dims(g, -1) for g in grid] + [idx], axis=-1)
    (t,), dt = _lite(node, "gather", data)
    return _back(tf.gather_nd(t, idx), dt)


def _scatter_rows(node: Node, data2, rows, upd2, reduction: str):
    """Scatter ``upd2`` (M, R) into rows ``rows`` (M,) of ``data2`` (N, R) with an ONNX reduction."""
    n = data2.shape[0]
    if reduction == "none":
        (d, u), dt = _lite(node, "scatter", data2, upd2)
        return _back(tf.tensor_scatter_nd_update(d, rows[:, None], u), dt)
    if reduction == "add":
        (d, u), dt = _lite(node, "scatter_add", data2, upd2)
        return _back(tf.tensor_scatter_nd_add(d, rows[:, None], u), dt)
    # duplicates must combine: reduce the updates per row first (TFLite UNSORTED_SEGMENT_*)
    (d, u), dt = _lite(node, ("segment", "select", "maximum", "minimum", "mul"), data2, upd2)
    seg_ids = tf.cast(rows, tf.int32)
    if reduction == "mul":
        return _back(d * tf.math.unsorted_segment_prod(u, seg_ids, n), dt)
    if reduction not in ("max", "min"):
        raise _unsupported(node, f"reduction {reduction!r}")
    seg = (tf.math.unsorted_segment_max if reduction == "max" else tf.math.unsorted_segment_min)(u, seg_ids, n)
    touched = tf.math.unsorted_segment_max(tf.ones_like(u[:, :1], dtype=tf.float32), seg_ids, n) > 0.0
    both = tf.math.maximum(d, seg) if reduction == "max" else tf.math.minimum(d, seg)
    return _back(tf.where(touched, both, d), dt)


def _row_index(idx, dims: list[int]):
    """Row-major linear index of the leading ``len(dims)`` coordinates in ``idx[..., :]``."""
    strides = np.cumprod([1] + dims[::-1][:-1])[::-1].astype(np.int64)
    return tf.reduce_sum(tf.cast(idx, tf.int64) * tf.constant(strides), axis=-1)


@emitter("ScatterND")
def emit_scatter_nd(node, x, ctx):
    data, idx, upd = x
    dshape, ishape = _static(data), _static(idx)
    if dshape is None or ishape is None:
        raise _unsupported(node, "unknown input shapes")
    k = ishape[-1]
    idx = _nonneg_index(idx, tf.constant(np.array(dshape[:k], dtype=idx.dtype.as_numpy_dtype)))
    n, r = int(np.prod(dshape[:k])), int(np.prod(dshape[k:]))
    m = int(np.prod(ishape[:-1]))
    rows = tf.reshape(_row_index(idx, dshape[:k]), [m])
    y = _scatter_rows(node, tf.reshape(data, [n, r]), rows, tf.reshape(upd, [m, r]), node.attr("reduction", "none"))
    return tf.reshape(y, dshape)


@emitter("ScatterElements", "Scatter")
def emit_scatter_elements(node, x, ctx):
    data, idx, upd = x
    dshape, ishape = _static(data), _static(idx)
    if dshape is None or ishape is None:
        raise _unsupported(node, "unknown input shapes")
    axis = node.attr("axis", 0) % len(dshape)
    cols = _coords(ishape, tf.int64, skip=axis)
    cols[axis] = tf.cast(_nonneg_index(idx, dshape[axis]), tf.int64)
    m = int(np.prod(ishape))
    rows = tf.reshape(_row_index(tf.stack(cols, axis=-1), dshape), [m])
    y = _scatter_rows(node, tf.reshape(data, [-1, 1]), rows, tf.reshape(upd, [m, 1]), node.attr("reduction", "none"))
    return tf.reshape(y, dshape)


@emitter("ConstantOfShape")
def emit_constant_of_shape(node, x, ctx):
    v = node.attr("value")
    value = np.zeros(1, np.float32) if v is None else onnx.numpy_helper.to_array(v).reshape(-1)
    shape = ctx.const(node.inputs[0])
    if shape is not None:
        return tf.constant(np.full([int(d) for d in shape.reshape(-1)], value[0], dtype=value.dtype))
    dt = tf.as_dtype(value.dtype)
    for c in _CONTAINERS.get(dt, (dt,)):
        if c in _LITE_DTYPES["fill"]:
            return _back(tf.fill(tf.cast(x[0], tf.int64), tf.constant(value[0], dtype=dt) if c == dt else tf.cast(value[0], c)), dt)
    _gap(node, f"TFLite has no FILL kernel for {dt.name}")
    return tf.fill(tf.cast(x[0], tf.int64), tf.constant(value[0], dtype=dt))


@emitter("Constant")
def emit_constant(node, x, ctx):
    return tf.constant(ctx.const(node.outputs[0]))


@emitter("Expand")
def emit_expand(node, x, ctx):
    target = ctx.const(node.inputs[1])
    s = _static(x[0])
    (t,), dt = _lite(node, "broadcast_to", x[0])
    if target is not None and s is not None:
        out = list(np.broadcast_shapes(tuple(s), tuple(int(d) for d in target.reshape(-1))))
        return _back(t if out == s else tf.broadcast_to(t, out), dt)
    shape = tf.broadcast_dynamic_shape(tf.shape(t, out_type=tf.int64), tf.cast(x[1], tf.int64))
    return _back(tf.broadcast_to(t, shape), dt)


@emitter("Tile")
def emit_tile(node, x, ctx):
    reps = ctx.const(node.inputs[1])
    (t,), dt = _lite(node, "tile", x[0])
    return _back(tf.tile(t, [int(r) for r in reps.reshape(-1)] if reps is not None else tf.cast(x[1], tf.int64)), dt)


@emitter("Range")
def emit_range(node, x, ctx):
    vals = [ctx.const(t) for t in node.inputs[:3]]
    if all(v is not None for v in vals):
        start, limit, delta = (v.reshape(-1)[0] for v in vals)
        n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
        return tf.constant((start + np.arange(n) * delta).astype(vals[0].dtype))
    xs, dt = _lite(node, "range", *x[:3])
    return _back(tf.range(xs[0], xs[1], xs[2]), dt)


@emitter("Trilu")
def emit_trilu(node, x, ctx):
    k = 0
    if len(node.inputs) > 1 and node.inputs[1]:
        kv = ctx.const(node.inputs[1])
        if kv is None:
            raise _unsupported(node, "a non-constant k")
        k = int(kv.reshape(-1)[0])
    s = _static(x[0])
    if s is None:
        raise _unsupported(node, "unknown input shape")
    i, j = np.indices(s[-2:])
    keep = (j - i >= k) if node.attr("upper", 1) else (j - i <= k)
    (t,), dt = _lite(node, "select", x[0])
    return _back(tf.where(tf.constant(np.broadcast_to(keep, s)), t, tf.zeros_like(t)), dt)


@emitter("OneHot")
def emit_one_hot(node, x, ctx):
    idx, depth, values = x
    dv = ctx.const(node.inputs[1])
    depth_v = int(dv.reshape(-1)[0]) if dv is not None else tf.cast(tf.reshape(depth, []), tf.int32)
    idx = tf.cast(idx, tf.int64)  # ONNX allows float indices (truncated)
    idx = tf.where(idx < 0, idx + tf.cast(depth_v, tf.int64), idx)
    (vals,), dt = _lite(node, "one_hot", values)
    y = tf.one_hot(idx, depth_v, on_value=vals[1], off_value=vals[0], axis=node.attr("axis", -1))
    return _back(y, dt)


@emitter("EyeLike")
def emit_eye_like(node, x, ctx):
    s = _static(x[0])
    if s is None:
        raise _unsupported(node, "unknown input shape")
    to = node.attr("dtype")
    dt = x[0].dtype if to is None else tf_dtype(to)
    return tf.constant(np.eye(s[0], s[1], k=node.attr("k", 0), dtype=dt.as_numpy_dtype))


@emitter("NonZero")
def emit_non_zero(node, x, ctx):
    t = x[0] if x[0].dtype == tf.bool else tf.cast(x[0], tf.bool)
    return tf.transpose(tf.where(t))


# --- matmul, gemm, einsum ------------------------------------------------------------------------
@emitter("MatMul")
def emit_matmul(node, x, ctx):
    (a, b), dt = _lite(node, "float", x[0], x[1])
    if len(a.shape) == 1 or len(b.shape) == 1:
        a2 = a[None, :] if len(a.shape) == 1 else a
        b2 = b[:, None] if len(b.shape) == 1 else b
        y = tf.linalg.matmul(a2, b2)
        if len(a.shape) == 1:
            y = tf.squeeze(y, -2)
        if len(b.shape) == 1:
            y = tf.squeeze(y, -1)
        return _back(y, dt)
    return _back(tf.linalg.matmul(a, b), dt)


@emitter("Gemm")
def emit_gemm(node, x, ctx):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)
    (a,), dt = _lite(node, "float", x[0])
    bv = ctx.const(node.inputs[1])
    if bv is not None:  # fold transB and alpha into the constant: one FULLY_CONNECTED in TFLite
        bv = bv.T if tb else bv
        if alpha != 1.0:
            bv, alpha = bv * alpha, 1.0
        b, tb = tf.constant(np.ascontiguousarray(bv), dtype=a.dtype), 0
    else:
        (b,), _ = _lite(node, "float", x[1])
    y = tf.linalg.matmul(a, b, transpose_a=bool(ta), transpose_b=bool(tb))
    if alpha != 1.0:
        y = y * alpha
    if len(node.inputs) > 2 and node.inputs[2]:
        cv = ctx.const(node.inputs[2])
        if cv is not None:
            c = tf.constant((cv * beta) if beta != 1.0 else cv, dtype=y.dtype)
        else:
            (c,), _ = _lite(node, "float", x[2])
            c = c * beta if beta != 1.0 else c
        y = y + c
    return _back(y, dt)


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _einsum_terms(node: Node, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Operand and output subscripts with ``...`` spelled out as letters (right-aligned)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise _unsupported(node, f"equation {equation!r} for {len(ranks)} operands")
    spare = [c for c in _LETTERS if c not in eq]
    n_ell = max([r - (len(t) - 3) for t, r in zip(terms, ranks) if "..." in t] or [0])
    ell = "".join(spare[:n_ell])
    terms = [t.replace("...", ell[n_ell - (r - (len(t) - 3)):]) if "..." in t else t for t, r in zip(terms, ranks)]
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit output: the ellipsis, then letters seen once, alphabetically
        seen = "".join(terms)
        out = ell + "".join(sorted(c for c in set(seen) if seen.count(c) == 1 and c not in ell))
    for t, r in zip(terms, ranks):
        if len(t) != r:
            raise _unsupported(node, f"equation {equation!r}: term {t!r} for an operand of rank {r}")
    return terms, out


def _einsum_diagonal(t, term: str):
    """Take the diagonal for every letter repeated within one operand ('ii->i')."""
    while len(set(term)) < len(term):
        c = next(c for c in term if term.count(c) > 1)
        p, q = term.index(c), term.index(c, term.index(c) + 1)
        rest = [i for i in range(len(term)) if i not in (p, q)]
        t = tf.transpose(t, rest + [p, q])
        dims = _dims(t)
        n = dims[-1]
        t = tf.reshape(t, _shape_tensor(dims[:-2] + [n * n]))[..., :: n + 1]  # the diagonal of an n x n block
        term = "".join(term[i] for i in rest) + c
    return t, term


def _einsum_sum_out(t, term: str, keep: set[str]):
    axes = [i for i, c in enumerate(term) if c not in keep]
    if not axes:
        return t, term
    return tf.math.reduce_sum(t, axis=axes), "".join(c for c in term if c in keep)


def _transpose_to(t, term: str, order: str):
    return t if term == order else tf.transpose(t, [term.index(c) for c in order])


@emitter("Einsum")
def emit_einsum(node, x, ctx):
    xs, dt = _lite(node, "float", *x)
    terms, out = _einsum_terms(node, node.attr("equation"), [len(t.shape) for t in xs])
    items = [_einsum_diagonal(t, term) for t, term in zip(xs, terms)]
    sizes: dict[str, object] = {}
    for t, term in items:
        for c, d in zip(term, _dims(t)):
            if not isinstance(sizes.get(c), int) or sizes.get(c) == 1:
                sizes[c] = d
    while len(items) > 1:
        (a, ta), (b, tb) = items[0], items[1]
        later = set(out).union(*[set(t) for _, t in items[2:]])
        a, ta = _einsum_sum_out(a, ta, set(tb) | later)
        b, tb = _einsum_sum_out(b, tb, set(ta) | later)
        batch = "".join(c for c in ta if c in tb and c in later)
        contract = "".join(c for c in ta if c in tb and c not in later)
        left = "".join(c for c in ta if c not in tb)
        right = "".join(c for c in tb if c not in ta)
        # operands already in (batch, contract, left) / (batch, right, contract) order use the
        # matmul's adjoint flags instead of a transpose
        adj_a = ta == batch + contract + left and bool(contract) and bool(left)
        adj_b = tb == batch + right + contract and bool(contract) and bool(right)
        a = _transpose_to(a, ta, batch + (contract + left if adj_a else left + contract))
        b = _transpose_to(b, tb, batch + (right + contract if adj_b else contract + right))
        da, db = _dims(a), _dims(b)
        nb = len(batch)
        la, ca, rb = _prod([sizes[c] for c in left]), _prod([sizes[c] for c in contract]), _prod([sizes[c] for c in right])
        a = tf.reshape(a, _shape_tensor(da[:nb] + ([ca, la] if adj_a else [la, ca])))
        b = tf.reshape(b, _shape_tensor(db[:nb] + ([rb, ca] if adj_b else [ca, rb])))
        y = tf.linalg.matmul(a, b, adjoint_a=adj_a, adjoint_b=adj_b)
        term = batch + left + right
        y = tf.reshape(y, _shape_tensor([sizes[c] for c in term]))
        items = [(y, term)] + items[2:]
    t, term = items[0]
    t, term = _einsum_sum_out(t, term, set(out))
    return _back(_transpose_to(t, term, out), dt)


# --- reductions, softmax, arg/top-k, cumsum --------------------------------------------------------
def _reduce_axes(node, x, ctx):
    rank = len(x[0].shape)
    axes = _axes_input(node, ctx)
    if not axes:
        return None if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({a % rank for a in axes})


def _log_sum_exp(t, axes, keepdims):
    m = tf.math.reduce_max(t, axis=axes, keepdims=True)
    m = tf.where(tf.math.equal(m - m, 0.0), m, tf.zeros_like(m))  # +-inf/NaN maxima: no shift
    y = tf.math.log(tf.math.reduce_sum(tf.math.exp(t - m), axis=axes, keepdims=True)) + m
    return y if keepdims else tf.squeeze(y, axis=axes)


# op -> (TFLite kernels needed, float-only?, fn(t, axes, keepdims))
_REDUCE: dict[str, tuple] = {
    "ReduceSum": ("reduce", False, tf.math.reduce_sum),
    "ReduceProd": ("reduce", False, tf.math.reduce_prod),
    "ReduceMax": ("reduce", False, tf.math.reduce_max),
    "ReduceMin": ("reduce", False, tf.math.reduce_min),
    "ReduceMean": ("float", True, tf.math.reduce_mean),
    "ReduceSumSquare": (("reduce", "mul"), False, lambda t, axis, keepdims: tf.math.reduce_sum(t * t, axis, keepdims)),
    "ReduceL1": (("reduce", "less", "neg", "select"), False, lambda t, axis, keepdims: tf.math.reduce_sum(_abs(t), axis, keepdims)),
    "ReduceL2": ("float", True, lambda t, axis, keepdims: tf.math.sqrt(tf.math.reduce_sum(t * t, axis, keepdims))),
    "ReduceLogSum": ("float", True, lambda t, axis, keepdims: tf.math.log(tf.math.reduce_sum(t, axis, keepdims))),
    "ReduceLogSumExp": ("float", True, _log_sum_exp),
}


def _empty_reduction(op: str, dtype):
    """What a reduction over zero elements gives (the identity of the operation)."""
    np_dt = dtype.as_numpy_dtype
    if op in ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"):
        return np.zeros((), np_dt)
    if op == "ReduceProd":
        return np.ones((), np_dt)
    if op in ("ReduceLogSum", "ReduceLogSumExp"):
        return np.array(-np.inf, np_dt)
    if op == "ReduceMean":
        return np.array(np.nan, np_dt)
    if dtype == tf.bool:
        return np.array(op == "ReduceMin")
    if dtype.is_floating:
        return np.array(-np.inf if op == "ReduceMax" else np.inf, np_dt)
    info = np.iinfo(np_dt)
    return np.array(info.min if op == "ReduceMax" else info.max, np_dt)


@emitter(*_REDUCE)
def emit_reduce(node, x, ctx):
    axes = _reduce_axes(node, x, ctx)
    if axes is None:
        return tf.identity(x[0])
    keep = bool(node.attr("keepdims", 1))
    kinds, float_only, fn = _REDUCE[node.op_type]
    s = _static(x[0])
    if s is not None and any(s[a] == 0 for a in axes):  # nothing to reduce: the result is a constant
        out = [1 if i in axes else d for i, d in enumerate(s)] if keep else [d for i, d in enumerate(s) if i not in axes]
        return tf.constant(np.full(out, _empty_reduction(node.op_type, x[0].dtype)))
    if float_only and not x[0].dtype.is_floating:
        raise _unsupported(node, f"{x[0].dtype.name} input")
    (t,), dt = _lite(node, kinds, x[0])
    return _back(fn(t, axes, keep), dt)


@emitter("Softmax", "LogSoftmax")
def emit_softmax(node, x, ctx):
    fn = tf.nn.softmax if node.op_type == "Softmax" else tf.nn.log_softmax
    t, dt = _float(node, x[0])
    rank = len(t.shape)
    if ctx.opset >= 13:
        axis = node.attr("axis", -1) % rank
        if axis == rank - 1:
            return _back(fn(t, axis=-1), dt)
        # TFLite's SOFTMAX works on the last axis only (TF would wrap it in two TRANSPOSEs):
        # spell it out with reductions over the axis instead
        z = t - tf.math.reduce_max(t, axis=axis, keepdims=True)
        if node.op_type == "Softmax":
            e = tf.math.exp(z)
            return _back(e / tf.math.reduce_sum(e, axis=axis, keepdims=True), dt)
        return _back(z - tf.math.log(tf.math.reduce_sum(tf.math.exp(z), axis=axis, keepdims=True)), dt)
    axis = node.attr("axis", 1) % rank  # opset < 13: softmax over the flattened trailing dims
    if axis == rank - 1:
        return _back(fn(t, axis=-1), dt)
    dims = _dims(t)
    flat = tf.reshape(t, _shape_tensor([*dims[:axis], -1]))
    return _back(tf.reshape(fn(flat, axis=-1), tf.shape(t)), dt)


@emitter("Hardmax")
def emit_hardmax(node, x, ctx):
    t = x[0]
    rank = len(t.shape)
    if ctx.opset >= 13:
        axis = node.attr("axis", -1) % rank
        idx = _arg_index(node, t, axis, "max", last=False)
        return tf.one_hot(idx, t.shape[axis], on_value=tf.constant(1, t.dtype), off_value=tf.constant(0, t.dtype), axis=axis, dtype=t.dtype)
    axis = node.attr("axis", 1) % rank
    dims = _dims(t)
    flat = tf.reshape(t, _shape_tensor([_prod(dims[:axis]), _prod(dims[axis:])]))
    idx = _arg_index(node, flat, 1, "max", last=False)
    y = tf.one_hot(idx, flat.shape[1], on_value=tf.constant(1, t.dtype), off_value=tf.constant(0, t.dtype), dtype=t.dtype)
    return tf.reshape(y, tf.shape(t))


def _arg_index(node: Node, t, axis: int, which: str, last: bool):
    """int64 index of the first (or last) max/min along ``axis`` (axis removed)."""
    dt = t.dtype
    if not last:
        for c in _CONTAINERS.get(dt, (dt,)):
            if c in _LITE_DTYPES["argmax"]:
                t = t if c == dt else tf.cast(t, c)
                return (tf.math.argmax if which == "max" else tf.math.argmin)(t, axis=axis, output_type=tf.int64)
    # no ARG_MAX kernel for the dtype (int64), or the last index wanted: mark where the extreme
    # value sits and take the smallest/largest position among the marks
    (t,), _ = _lite(node, ("reduce", "equal"), t)
    ext = (tf.math.reduce_max if which == "max" else tf.math.reduce_min)(t, axis=axis, keepdims=True)
    n = t.shape[axis]
    if n is None:
        raise _unsupported(node, "an unknown reduced dimension")
    pos = tf.constant(np.arange(n, dtype=np.int32).reshape([n if i == axis else 1 for i in range(len(t.shape))]))
    hit = tf.math.equal(t, ext)
    if last:
        return tf.cast(tf.math.reduce_max(tf.where(hit, pos, -1), axis=axis), tf.int64)
    return tf.cast(tf.math.reduce_min(tf.where(hit, pos, n), axis=axis), tf.int64)


@emitter("ArgMax", "ArgMin")
def emit_arg(node, x, ctx):
    t = x[0]
    rank = len(t.shape)
    axis = node.attr("axis", 0) % rank
    t = _float(node, t)[0] if t.dtype.is_floating else t
    y = _arg_index(node, t, axis, "max" if node.op_type == "ArgMax" else "min", bool(node.attr("select_last_index", 0)))
    if node.attr("keepdims", 1):
        y = tf.expand_dims(y, axis)
    return y


@emitter("TopK")
def emit_top_k(node, x, ctx):
    t = x[0]
    rank = len(t.shape)
    axis = node.attr("axis", -1) % rank
    if ctx.opset < 10:
        k = node.attr("k")
    else:
        kv = ctx.const(node.inputs[1])
        k = int(kv.reshape(-1)[0]) if kv is not None else tf.cast(tf.reshape(x[1], []), tf.int32)
    (t,), dt = _lite(node, ("topk", "neg", "sub"), t)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = axis != rank - 1
    if moved:
        t = tf.transpose(t, perm)
    # smallest-k = largest-k of an order-reversing map: -x for floats, -1 - x for integers
    # (no overflow at the minimum); top_k breaks ties by the lower index, as ONNX asks
    flip = (lambda v: -v) if t.dtype.is_floating else (lambda v: tf.constant(-1, v.dtype) - v)
    largest = node.attr("largest", 1)
    vals, idx = tf.math.top_k(t if largest else flip(t), k=k, sorted=True)
    if not largest:
        vals = flip(vals)
    idx = tf.cast(idx, tf.int64)
    if moved:
        inv = P.invert(perm)
        vals, idx = tf.transpose(vals, inv), tf.transpose(idx, inv)
    return [_back(vals, dt), idx]


@emitter("CumSum")
def emit_cumsum(node, x, ctx):
    av = ctx.const(node.inputs[1])
    if av is None:
        raise _unsupported(node, "a non-constant axis")
    (t,), dt = _lite(node, "cumsum", x[0])
    y = tf.math.cumsum(t, axis=int(av.reshape(-1)[0]), exclusive=bool(node.attr("exclusive", 0)), reverse=bool(node.attr("reverse", 0)))
    return _back(y, dt)


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


def _window_max(x, kernel: list, strides: list, dilations: list):
    """VALID max pooling of an N...C tensor, any dilation and stride, as the maximum of
    prod(kernel) strided slices (TFLite has no dilated pooling)."""
    spatial = x.shape.as_list()[1:-1]
    out = [(spatial[i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(len(kernel))]
    y = None
    for offs in itertools.product(*[range(k) for k in kernel]):
        sl = [slice(o * d, o * d + (m - 1) * s + 1, s) for o, d, s, m in zip(offs, dilations, strides, out)]
        part = x[(slice(None), *sl, slice(None))]
        y = part if y is None else tf.math.maximum(y, part)
    return y


@emitter("MaxPool", layout_aware=True)
def emit_max_pool(node, x, ctx):
    xc = _to_cl(node, x[0])
    dt = xc.dtype
    if dt in (_I8, _U8, _I16, _U16, _F16):  # float32 holds every value; TFLite pools only float32
        xc = tf.cast(xc, _F32)
    elif dt != _F32:
        _gap(node, f"TFLite has no MAX_POOL_2D kernel for {dt.name}")
    n, kernel, strides, dilations, in_spatial, pads, extra = _pool_geometry(node, xc)
    if len(node.outputs) > 1 and node.outputs[1] and ctx.graph.num_uses(node.outputs[1]):
        raise _unsupported(node, "the Indices output")
    total = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    low = xc.dtype.min
    if any(d > 1 for d in dilations):
        if any(v is None for v in in_spatial):
            raise _unsupported(node, "dilation with unknown spatial size")
        y = _window_max(_pad_cl(xc, total, low), kernel, strides, dilations)
    elif n == 2 and not any(extra) and any(p != (0, 0) for p in total) and _is_tf_same(pads, in_spatial, kernel, strides, dilations):
        y = tf.nn.max_pool(xc, kernel, strides, "SAME")
    else:
        y = _pool_valid(_pad_cl(xc, total, low), kernel, strides, "MAX")
    return _from_cl(node, _back(y, dt))


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
    (xc,), dt = _lite(node, "depth_to_space", _to_cl(node, x[0]))
    b = node.attr("blocksize")
    if node.attr("mode", "DCR") == "DCR":
        y = tf.nn.depth_to_space(xc, b)
    else:  # CRD: channels ordered (c, b1, b2)
        nb, h, w, c = _dims(xc)
        t = tf.reshape(xc, _shape_tensor([nb, h, w, c // (b * b), b, b]))
        t = tf.transpose(t, [0, 1, 4, 2, 5, 3])
        y = tf.reshape(t, _shape_tensor([nb, h * b, w * b, c // (b * b)]))
    return _from_cl(node, _back(y, dt))


@emitter("SpaceToDepth", layout_aware=True)
def emit_space_to_depth(node, x, ctx):
    b = node.attr("blocksize")
    if node.attr("mode", "DCR") == "DCR":  # output channels ordered (b1, b2, c), as TF's
        (xc,), dt = _lite(node, "space_to_depth", _to_cl(node, x[0]))
        return _from_cl(node, _back(tf.nn.space_to_depth(xc, b), dt))
    (xc,), dt = _lite(node, "transpose", _to_cl(node, x[0]))  # CRD: (c, b1, b2)
    nb, h, w, c = _dims(xc)
    t = tf.reshape(xc, _shape_tensor([nb, h // b, b, w // b, b, c]))
    t = tf.transpose(t, [0, 1, 3, 5, 2, 4])
    return _from_cl(node, _back(tf.reshape(t, _shape_tensor([nb, h // b, w // b, c * b * b])), dt))


# --- normalization -------------------------------------------------------------------------------
def _channel_shape(rank: int, channels_last: bool) -> list[int]:
    return [1] * (rank - 1) + [-1] if channels_last else [1, -1] + [1] * (rank - 2)


def _out_dtype(ctx: EmitContext, tensor: str, default):
    dt = ctx.graph.dtype(tensor) if tensor else 0
    return tf_dtype(dt) if dt else default


@emitter("BatchNormalization")
def emit_batchnorm(node, x, ctx):
    if node.attr("training_mode", 0):
        raise _unsupported(node, "training mode (running statistics)")
    t, dt = _float(node, x[0])
    shape = _channel_shape(len(t.shape), False)
    eps = node.attr("epsilon", 1e-5)
    scale, bias, mean, var = (tf.reshape(tf.cast(v, t.dtype), shape) for v in x[1:5])
    return _back((t - mean) * (scale / tf.math.sqrt(var + eps)) + bias, dt)


@emitter("InstanceNormalization", layout_aware=True)
def emit_instance_norm(node, x, ctx):
    t, dt = _float(node, x[0])  # N...C when the layout pass marked the node, else NC...
    rank = len(t.shape)
    cl = node.in_perm(0) is not None
    axes = list(range(1, rank - 1)) if cl else list(range(2, rank))
    shape = _channel_shape(rank, cl)
    mean = tf.math.reduce_mean(t, axis=axes, keepdims=True)
    d = t - mean
    var = tf.math.reduce_mean(d * d, axis=axes, keepdims=True)
    scale, bias = (tf.reshape(tf.cast(v, t.dtype), shape) for v in x[1:3])
    return _back(d * tf.math.rsqrt(var + node.attr("epsilon", 1e-5)) * scale + bias, dt)


@emitter("LayerNormalization")
def emit_layer_norm(node, x, ctx):
    t, dt = _float(node, x[0])
    rank = len(t.shape)
    axes = list(range(node.attr("axis", -1) % rank, rank))
    mean = tf.math.reduce_mean(t, axis=axes, keepdims=True)
    d = t - mean
    inv = tf.math.rsqrt(tf.math.reduce_mean(d * d, axis=axes, keepdims=True) + node.attr("epsilon", 1e-5))
    y = d * inv
    if len(x) > 1 and x[1] is not None:
        y = y * tf.cast(x[1], t.dtype)
    if len(x) > 2 and x[2] is not None:
        y = y + tf.cast(x[2], t.dtype)
    outs = [_back(y, dt)]
    for k, v in ((1, mean), (2, inv)):
        if len(node.outputs) > k and node.outputs[k]:
            outs.append(_back(v, _out_dtype(ctx, node.outputs[k], v.dtype)))
    return outs


@emitter("GroupNormalization")
def emit_group_norm(node, x, ctx):
    t, dt = _float(node, x[0])
    g = node.attr("num_groups")
    dims = _dims(t)
    c = dims[1]
    if not isinstance(c, int):
        raise _unsupported(node, "an unknown channel count")
    grouped = tf.reshape(t, _shape_tensor([dims[0], g, -1]))
    mean = tf.math.reduce_mean(grouped, axis=2, keepdims=True)
    d = grouped - mean
    var = tf.math.reduce_mean(d * d, axis=2, keepdims=True)
    y = tf.reshape(d * tf.math.rsqrt(var + node.attr("epsilon", 1e-5)), tf.shape(t))
    scale, bias = (tf.cast(v, t.dtype) for v in x[1:3])
    if ctx.opset < 21:  # GroupNormalization-18: scale and bias per group
        scale, bias = (tf.reshape(tf.broadcast_to(tf.reshape(v, [g, 1]), [g, c // g]), [c]) for v in (scale, bias))
    shape = _channel_shape(len(t.shape), False)
    return _back(y * tf.reshape(scale, shape) + tf.reshape(bias, shape), dt)


@emitter("RMSNormalization")
def emit_rms_norm(node, x, ctx):
    t, dt = _float(node, x[0])
    rank = len(t.shape)
    axes = list(range(node.attr("axis", -1) % rank, rank))
    y = t * tf.math.rsqrt(tf.math.reduce_mean(t * t, axis=axes, keepdims=True) + node.attr("epsilon", 1e-5))
    return _back(y * tf.cast(x[1], t.dtype), dt)


@emitter("MeanVarianceNormalization")
def emit_mvn(node, x, ctx):
    t, dt = _float(node, x[0])
    rank = len(t.shape)
    axes = sorted({a % rank for a in node.attr("axes", [0, 2, 3])})
    mean = tf.math.reduce_mean(t, axis=axes, keepdims=True)
    var = tf.math.reduce_mean(t * t, axis=axes, keepdims=True) - mean * mean  # as ONNX's function body
    return _back((t - mean) / (tf.math.sqrt(var) + 1e-9), dt)


@emitter("LpNormalization")
def emit_lp_norm(node, x, ctx):
    t, dt = _float(node, x[0])
    axis, p = node.attr("axis", -1), node.attr("p", 2)
    if p == 1:
        norm = tf.math.reduce_sum(tf.math.abs(t), axis=axis, keepdims=True)
    elif p == 2:
        norm = tf.math.sqrt(tf.math.reduce_sum(t * t, axis=axis, keepdims=True))
    else:
        raise _unsupported(node, f"p={p}")
    return _back(t / norm, dt)


@emitter("LRN", layout_aware=True)
def emit_lrn(node, x, ctx):
    t, dt = _float(node, x[0])  # N...C when marked, else NC...
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    rank = len(t.shape)
    cl = node.in_perm(0) is not None
    if cl and rank == 4 and size % 2 == 1:  # TFLite's LOCAL_RESPONSE_NORMALIZATION, a symmetric window
        return _back(tf.nn.local_response_normalization(t, depth_radius=size // 2, bias=bias, alpha=alpha / size, beta=beta), dt)
    # the channel window [c - floor((size-1)/2), c + ceil((size-1)/2)] as a sum of shifted slices
    c_axis = rank - 1 if cl else 1
    lo = (size - 1) // 2
    pads = [[0, 0] for _ in range(rank)]
    pads[c_axis] = [lo, size - 1 - lo]
    sq = tf.pad(t * t, pads)
    n = t.shape[c_axis]
    if n is None:
        raise _unsupported(node, "an unknown channel count")
    window = None
    for k in range(size):
        part = sq[tuple(slice(k, k + n) if a == c_axis else slice(None) for a in range(rank))]
        window = part if window is None else window + part
    return _back(t / tf.math.pow(bias + (alpha / size) * window, beta), dt)


# --- pad -----------------------------------------------------------------------------------------
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
        value = _scalar_operand(node, ctx, x, 2)
        value = 0 if value is None else value
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
    if not any(b or e for b, e in full):
        return tf.identity(y)
    if mode == "constant":
        (t,), dt = _lite(node, "pad", y)
        return _back(tf.pad(t, full, constant_values=tf.cast(value, t.dtype)), dt)
    if mode == "reflect":
        (t,), dt = _lite(node, "mirror_pad", y)
        return _back(tf.pad(t, full, mode="REFLECT"), dt)
    if mode in ("edge", "wrap"):  # one GATHER per padded axis with clamped / wrapped positions
        (t,), dt = _lite(node, "gather", y)
        for a, (b, e) in enumerate(full):
            n = t.shape[a]
            if not (b or e):
                continue
            if n is None:
                raise _unsupported(node, f"{mode} padding of an axis of unknown size")
            pos = np.arange(-b, n + e)
            pos = np.clip(pos, 0, n - 1) if mode == "edge" else np.mod(pos, n)
            t = tf.gather(t, pos.astype(np.int32), axis=a)
        return _back(t, dt)
    raise _unsupported(node, f"pad mode {mode!r}")


# --- resize ----------------------------------------------------------------------------------------
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


def _resize_params(node: Node, ctx: EmitContext, shape: list[int]):
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
            sv = ctx.const(node.inputs[1])
            if sv is None:
                raise _unsupported(node, "non-constant scales")
            scales = [float(s) for s in sv.reshape(-1)]
        axes = [(shape[a], int(np.floor(scales[a] * shape[a])), scales[a], None) for a in range(rank)]
        return mode, "asymmetric", None, axes
    coord = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    axes_attr = [a % rank for a in node.attr("axes", list(range(rank)))]
    consts = []
    for j in (1, 2, 3):
        if len(node.inputs) > j and node.inputs[j]:
            v = ctx.const(node.inputs[j])
            if v is None:
                raise _unsupported(node, "non-constant roi/scales/sizes")
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
        raise _unsupported(node, "neither scales nor sizes")
    return mode, coord, nearest, [(shape[a], outs[a], scales[a], roi[a] if coord == "tf_crop_and_resize" else None) for a in range(rank)]


@emitter("Resize", "Upsample", layout_aware=True)
def emit_resize(node, x, ctx):
    t = x[0]  # N...C when the layout pass marked the node, else as ONNX
    rank = len(t.shape)
    cl = node.in_perm(0) is not None
    where_is = list(P.channels_last(rank)) if cl else list(range(rank))  # ONNX axis -> position in t
    shape_t = _static(t)
    if shape_t is None:
        raise _unsupported(node, "unknown input shape")
    shape = [shape_t[where_is.index(a)] for a in range(rank)]
    mode, coord, nearest, axes = _resize_params(node, ctx, shape)
    if mode not in ("nearest", "linear", "cubic"):
        raise _unsupported(node, f"mode {mode!r}")
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
    integer = not t.dtype.is_floating
    if integer:
        (t,), dt = _lite(node, "gather", t) if mode == "nearest" else ((tf.cast(t, _F32),), t.dtype)
    else:
        t, dt = _float(node, t)
    y = _native_resize(node, t, mode, taps, axes, cl) if cl and rank == 4 else None
    if y is None:
        for a, (idx, w, extrap) in taps.items():
            y_axis = where_is.index(a)
            y = _resize_axis(t if y is None else y, y_axis, idx, w, extrap, node.attr("extrapolation_value", 0.0), mode)
    if integer and mode != "nearest":  # as the reference: round half to even, saturate
        info = np.iinfo(dt.as_numpy_dtype)
        y = tf.clip_by_value(tf.math.round(y), float(info.min), float(info.max))
    return _back(y, dt)


def _resize_axis(t, axis: int, idx: np.ndarray, w: np.ndarray, extrap, extrap_value: float, mode: str):
    out, n = idx.shape
    rank = len(t.shape)
    if mode == "nearest":
        y = tf.gather(t, idx[np.arange(out), np.argmax(w, axis=1)].astype(np.int32), axis=axis)
    else:
        g = tf.gather(t, idx.reshape(-1).astype(np.int32), axis=axis)  # (..., out * n, ...)
        dims = _dims(g)
        g = tf.reshape(g, _shape_tensor(dims[:axis] + [out, n] + dims[axis + 1:]))
        wt = tf.constant(w.reshape([1] * axis + [out, n] + [1] * (rank - axis - 1)).astype(t.dtype.as_numpy_dtype))
        y = tf.math.reduce_sum(g * wt, axis=axis + 1)
    if extrap is not None and extrap.any():
        mask = tf.constant(extrap.reshape([1] * axis + [out] + [1] * (rank - axis - 1)))
        y = tf.where(mask, tf.cast(extrap_value, y.dtype), y)
    return y


def _native_resize(node: Node, t, mode: str, taps: dict, axes: list, cl: bool):
    """TFLite's RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR on an NHWC tensor, when its arithmetic
    gives exactly the taps of this node on H and W; else None."""
    if mode not in ("nearest", "linear") or not set(taps) <= {2, 3} or any(e is not None and e.any() for _, _, e in taps.values()):
        return None
    size = [axes[2][0], axes[3][0]]
    out = [axes[2][1], axes[3][1]]
    want = [_dense(*taps[a][:2], size[i]) if a in taps else np.eye(size[i]) for i, a in enumerate((2, 3))]
    for flags in ((False, False), (False, True), (True, False)):
        got = [_tf_resize_matrix(mode, flags, size[i], out[i]) for i in range(2)]
        if all(g.shape == w_.shape and np.allclose(g, w_, atol=1e-6) for g, w_ in zip(got, want)):
            align, half = flags
            if mode == "nearest":
                return tf.compat.v1.image.resize_nearest_neighbor(t, out, align_corners=align, half_pixel_centers=half)
            return tf.compat.v1.image.resize_bilinear(t, out, align_corners=align, half_pixel_centers=half)
    return None
