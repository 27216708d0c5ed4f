"""Elementwise emitters: arithmetic, comparison, logic, unary math (TFLite-friendly forms of erf,
sinh, asin, ...), activations, Where, casts."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from graph_convert.ir import Node
from graph_convert.backends.tensorflow.emitter import tf_dtype
from graph_convert.backends.tensorflow.ops.core import (
    CONTAINERS,
    F32,
    F64,
    I16,
    I32,
    I64,
    I8,
    LITE_DTYPES,
    U16,
    U8,
    cast_back,
    lite_float,
    tflite_gap,
    input_value,
    to_lite,
    scalar_operand,
    unsupported,
    emitter,
)


_ARITH = {"Add": ("add", tf.math.add), "Sub": ("sub", tf.math.subtract), "Mul": ("mul", tf.math.multiply)}


@emitter(*_ARITH)
def emit_arith(node, x, ctx):
    kind, fn = _ARITH[node.op_type]
    (a, b), dt = to_lite(node, kind, x[0], x[1])
    return cast_back(fn(a, b), dt)


_COMPARE = {
    "Equal": ("equal", tf.math.equal), "Less": ("less", tf.math.less), "LessOrEqual": ("less_equal", tf.math.less_equal),
    "Greater": ("greater", tf.math.greater), "GreaterOrEqual": ("greater_equal", tf.math.greater_equal),
}


@emitter(*_COMPARE)
def emit_compare(node, x, ctx):
    kind, fn = _COMPARE[node.op_type]
    (a, b), _ = to_lite(node, kind, x[0], x[1])
    return fn(a, b)


_LOGIC = {"And": tf.math.logical_and, "Or": tf.math.logical_or, "Xor": tf.math.logical_xor}


@emitter(*_LOGIC)
def emit_logic(node, x, ctx):
    return _LOGIC[node.op_type](x[0], x[1])


@emitter("Not")
def emit_not(node, x, ctx):
    return tf.math.logical_not(x[0])


def _trunc_div_int64(a, b):
    """int64 a / b truncated toward zero with kernels TFLite has for int64 (no integer DIV):
    m = a - floormod(a, b) is an exact multiple of b; a float32 estimate of m / b and two
    corrections by the (exact, int64) residual give m / b exactly for any int64 quotient."""
    r = tf.math.floormod(a, b)
    m = a - r
    bf = tf.cast(b, tf.float32)
    q = tf.cast(tf.cast(m, tf.float32) / bf, tf.int64)
    for _ in range(2):
        q = q + tf.cast(tf.math.round(tf.cast(m - q * b, tf.float32) / bf), tf.int64)
    zero = tf.zeros_like(r)
    return tf.where(tf.math.logical_and(tf.math.not_equal(r, zero), tf.math.not_equal(a < zero, b < zero)), q + 1, q)


@emitter("Div")
def emit_div(node, x, ctx):
    if x[0].dtype.is_integer:  # ONNX integer Div truncates toward zero
        dt = x[0].dtype
        if any(c == I32 for c in CONTAINERS.get(dt, (dt,))):
            (a, b), dt = to_lite(node, "truncatediv", x[0], x[1])
            return cast_back(tf.truncatediv(a, b), dt)
        (a, b), dt = to_lite(node, ("floormod", "sub", "mul", "cast", "select", "not_equal", "less"), x[0], x[1])
        return cast_back(_trunc_div_int64(a, b) if a.dtype == I64 else tf.truncatediv(a, b), dt)
    (a, b), dt = to_lite(node, "div", x[0], x[1])
    return cast_back(tf.math.divide(a, b), dt)


def lite_abs(t):
    """|t| with ops every integer TFLite dtype has (ABS lacks int64)."""
    if t.dtype in LITE_DTYPES["abs"]:
        return tf.math.abs(t)
    return tf.where(t < tf.zeros_like(t), -t, t)


@emitter("Mod")
def emit_mod(node, x, ctx):
    if node.attr("fmod", 0):
        # C fmod (sign of the dividend) = sign(a) * (|a| mod |b|); FLOOR_MOD of non-negative
        # operands is exact, also for floats
        (a, b), dt = to_lite(node, ("floormod", "less", "neg", "select"), x[0], x[1])
        r = tf.math.floormod(lite_abs(a), lite_abs(b))
        return cast_back(tf.where(a < tf.zeros_like(a), -r, r), dt)
    (a, b), dt = to_lite(node, "floormod", x[0], x[1])  # sign of the divisor, as Python/numpy
    return cast_back(tf.math.floormod(a, b), dt)


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
    e = input_value(node, ctx, x, 1)
    if base.dtype.is_floating:
        b, dt = lite_float(node, base)
        if e is not None and e.size == 1:
            v = float(e.reshape(-1)[0])
            if v == 1.0:
                return tf.identity(base)
            if v == 2.0:
                return cast_back(b * b, dt)
            if v == 0.5:
                return cast_back(tf.math.sqrt(b), dt)
        return cast_back(tf.math.pow(b, _cast(node, ex, b.dtype)), dt)
    if ex.dtype.is_floating:  # ORT/numpy: pow in double, truncated to the base's integer type
        tflite_gap(node, "integer Pow with a floating exponent needs float64")
        return tf.cast(tf.math.pow(tf.cast(base, F64), tf.cast(ex, F64)), base.dtype)
    if base.dtype in (I8, U8, I16, U16, I32):  # TFLite's POW takes int32, which holds these
        (b,), dt = to_lite(node, "pow", base)
        return cast_back(tf.math.pow(b, _cast(node, ex, b.dtype)), dt)
    (b,), dt = to_lite(node, ("mul", "floormod", "greater_equal", "select"), base)
    if e is not None and e.size == 1 and int(e.reshape(-1)[0]) >= 0:
        bits = max(int(e.reshape(-1)[0]).bit_length(), 1)
    else:
        bits = ex.dtype.size * 8 - 1
    return cast_back(_int_pow(b, ex, bits), dt)


_VARIADIC = {"Max": ("maximum", tf.math.maximum), "Min": ("minimum", tf.math.minimum),
             "Sum": ("add", tf.math.add), "Mean": ("add", tf.math.add)}


@emitter(*_VARIADIC)
def emit_variadic(node, x, ctx):
    kind, fn = _VARIADIC[node.op_type]
    xs, dt = to_lite(node, kind, *[t for t in x if t is not None])
    y = xs[0]
    for t in xs[1:]:
        y = fn(y, t)
    if node.op_type == "Mean":
        y = y / tf.cast(len(xs), y.dtype)
    return cast_back(y, dt)


@emitter("Clip")
def emit_clip(node, x, ctx):
    if ctx.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo, hi = scalar_operand(node, ctx, x, 1), scalar_operand(node, ctx, x, 2)
    (y,), dt = to_lite(node, ("maximum", "minimum"), x[0])
    if dt == F32 and isinstance(lo, float) and lo == 0.0 and isinstance(hi, float) and hi == 6.0:
        return tf.nn.relu6(y)
    if dt == F32 and isinstance(lo, float) and lo == 0.0 and hi is None:
        return tf.nn.relu(y)
    if lo is not None:
        y = tf.math.maximum(y, tf.cast(lo, y.dtype))
    if hi is not None:
        y = tf.math.minimum(y, tf.cast(hi, y.dtype))
    return cast_back(y, dt)


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


def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); TFLite has no LOG1P, and log(1 + u) loses u
    # entirely below 6e-8, so small u take the series
    u = tf.math.exp(-tf.math.abs(x))
    log1p = tf.where(u < 0.01, u * (1.0 + u * (-0.5 + u * (1.0 / 3.0 - 0.25 * u))), tf.math.log(1.0 + u))
    return tf.nn.relu(x) + log1p


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
    "Softsign": lambda t: t / (1.0 + tf.math.abs(t)), "Softplus": lambda t: _softplus(t),
}


@emitter(*_FLOAT_UNARY)
def emit_float_unary(node, x, ctx):
    t, dt = lite_float(node, x[0])
    return cast_back(_FLOAT_UNARY[node.op_type](t), dt)


@emitter("Abs")
def emit_abs(node, x, ctx):
    if x[0].dtype.is_unsigned:
        return tf.identity(x[0])
    (t,), dt = to_lite(node, ("less", "neg", "select"), x[0])
    return cast_back(lite_abs(t), dt)


@emitter("Neg")
def emit_neg(node, x, ctx):
    (t,), dt = to_lite(node, "neg", x[0])
    return cast_back(tf.math.negative(t), dt)


@emitter("Sign")
def emit_sign(node, x, ctx):
    if x[0].dtype.is_floating:
        t, dt = lite_float(node, x[0])
        return cast_back(tf.math.sign(t), dt)
    if x[0].dtype in LITE_DTYPES["sign"]:
        return tf.math.sign(x[0])
    (t,), dt = to_lite(node, ("greater", "less", "select", "neg"), x[0])  # no SIGN kernel: compare
    zero, one = tf.zeros_like(t), tf.ones_like(t)
    if t.dtype.is_unsigned:  # no container (uint64): nothing is negative
        return tf.where(t > zero, one, zero)
    return cast_back(tf.where(t > zero, one, tf.where(t < zero, -one, zero)), dt)


@emitter("Relu")
def emit_relu(node, x, ctx):
    (t,), dt = to_lite(node, "relu", x[0])
    return cast_back(tf.nn.relu(t), dt)


@emitter("Identity")
def emit_identity(node, x, ctx):
    return tf.identity(x[0])


@emitter("IsNaN")
def emit_isnan(node, x, ctx):
    t, _ = lite_float(node, x[0])
    return tf.math.not_equal(t, t)


@emitter("IsInf")
def emit_isinf(node, x, ctx):
    t, _ = lite_float(node, x[0])
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    big = float(t.dtype.max)  # beyond the largest finite value: only +-inf (NaN compares false)
    hit = tf.zeros_like(t, dtype=tf.bool)
    if pos:
        hit = tf.math.logical_or(hit, t > big)
    if neg:
        hit = tf.math.logical_or(hit, t < -big)
    return hit


# --- activations -----------------------------------------------------------------------------------
def _activation(fn):
    def emit(node, x, ctx):
        t, dt = lite_float(node, x[0])
        return cast_back(fn(node, t), dt)

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
    return tf.nn.relu(t) + tf.math.minimum(a * (tf.math.exp(t / a) - 1.0), 0.0)


def _mish(node, t):
    # x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2): exact in the tails, where
    # TFLite's TANH/softplus approximations lose digits
    e = tf.math.exp(tf.math.minimum(t, 20.0))
    n = e * (e + 2.0)
    return tf.where(t > 20.0, t, t * n / (n + 2.0))


def _swish(t, alpha: float):
    # TFLite has no SWISH kernel: LOGISTIC and MUL (and no MUL by an alpha of 1)
    return t * tf.math.sigmoid(t if alpha == 1.0 else alpha * t)


_ACTIVATIONS: dict[str, Callable] = {
    "LeakyRelu": lambda node, t: tf.nn.leaky_relu(t, alpha=node.attr("alpha", 0.01)),
    "Elu": _elu, "Selu": _selu, "Celu": _celu, "Mish": _mish,
    "HardSigmoid": lambda node, t: tf.math.minimum(tf.math.maximum(node.attr("alpha", 0.2) * t + node.attr("beta", 0.5), 0.0), 1.0),
    "HardSwish": lambda node, t: t * tf.nn.relu6(t + 3.0) / 6.0,
    "Gelu": lambda node, t: tf.nn.gelu(t, approximate=node.attr("approximate", "none") == "tanh"),
    "ThresholdedRelu": lambda node, t: tf.where(t > node.attr("alpha", 1.0), t, tf.zeros_like(t)),
    "Swish": lambda node, t: _swish(t, node.attr("alpha", 1.0)),
}
# the model-local functions that passes/lib/fused_ops.py writes below the opset that has the ONNX op:
# same attributes as the ONNX op, except that tanh-GELU is an op of its own
_ACTIVATIONS.update({
    "graph_convert::Gelu": lambda node, t: tf.nn.gelu(t, approximate=False),
    "graph_convert::GeluTanh": lambda node, t: tf.nn.gelu(t, approximate=True),
    "graph_convert::Swish": _ACTIVATIONS["Swish"], "graph_convert::HardSwish": _ACTIVATIONS["HardSwish"],
    "graph_convert::Mish": _mish,
})
for _op, _fn in _ACTIVATIONS.items():
    emitter(_op)(_activation(_fn))


@emitter("Shrink")
def emit_shrink(node, x, ctx):
    lambd, bias = node.attr("lambd", 0.5), node.attr("bias", 0.0)
    if not x[0].dtype.is_floating:
        (t,), dt = to_lite(node, ("less", "greater", "sub", "add", "select"), x[0])
        lo, hi = tf.cast(-lambd, t.dtype), tf.cast(lambd, t.dtype)
        b = tf.cast(bias, t.dtype)
        return cast_back(tf.where(t < lo, t + b, tf.where(t > hi, t - b, tf.zeros_like(t))), dt)
    t, dt = lite_float(node, x[0])
    return cast_back(tf.where(t < -lambd, t + bias, tf.where(t > lambd, t - bias, tf.zeros_like(t))), dt)


@emitter("PRelu")
def emit_prelu(node, x, ctx):
    (t, s), dt = to_lite(node, ("mul", "less", "select"), x[0], x[1])
    return cast_back(tf.where(t < tf.zeros_like(t), t * s, t), dt)


@emitter("Where")
def emit_where(node, x, ctx):
    (a, b), dt = to_lite(node, "select", x[1], x[2])
    return cast_back(tf.where(x[0], a, b), dt)


def _cast(node: Node, t, to):
    """``Cast``: float to integer truncates toward zero and anything to bool tests != 0, in TF and
    TFLite alike, as ONNX asks."""
    if t.dtype == to:
        return tf.identity(t)
    for d in (t.dtype, to):
        if d not in LITE_DTYPES["cast"]:
            tflite_gap(node, f"TFLite has no CAST kernel for {d.name}")
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
        mode = input_value(node, ctx, x, 2)
        if mode is None or bool(mode.reshape(-1)[0]):
            raise unsupported(node, "training mode (a random mask)")
    outs = [tf.identity(x[0])]
    if len(node.outputs) > 1:
        outs.append(tf.ones_like(x[0], dtype=tf.bool))
    return outs
