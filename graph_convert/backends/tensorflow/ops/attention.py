"""Attention (opset 23/24, and the opset-25 sliding window) and RotaryEmbedding.

Attention is emitted the way the fused-attention rewrites want to find it: on 4-D
``(batch, heads, sequence, head_size)`` inputs — the form both exporters write at opset 23, where
``heads_first`` has already moved the head split into the projections' weights — it adds no
TRANSPOSE: ``Q @ Kᵀ`` is a BATCH_MATMUL with ``adj_y``, grouped-query attention reshapes ``Q``'s
``(heads, T)`` into ``(kv_heads, group * T)`` instead of repeating ``K`` and ``V`` (the same
products, no copies), and ``P @ V`` is a second BATCH_MATMUL. Only the 3-D form (heads packed
into the hidden axis) transposes into heads and back, as the op's definition does.

Masks are exact without +-inf constants (TFLite stores them as +-FLT_MAX): what is masked by a
boolean mask, ``is_causal``, the sliding window, ``nonpad_kv_seqlen`` or the padding of a short
``attn_mask`` is *selected* to the lowest float before the softmax (exp of it is exactly 0 next
to any real score), a float mask is added, and a row with nothing left to attend (every key
masked, or -inf in the float mask) is set to 0 after the softmax, as ONNX defines it. Masks known
at conversion time (causal, window, constant masks) are constants, and the row guard is dropped
when no row can be fully masked. ``qk_matmul_output_mode`` 2 needs the real -inf in its output
and gets it from ``EmitContext.exact_constant``. ``softmax_precision`` is met by computing the
softmax in float32 (float16/bfloat16 inputs are computed in float32 throughout, as ONNX Runtime's
CPU kernels do); a float64 request is computed in float32 (TFLite has no float64 kernels).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_convert.backends.tensorflow.ops.core import dims_of, lite_float, input_value, shape_tensor, unsupported, emitter


def _given(node, j: int) -> bool:
    return len(node.inputs) > j and bool(node.inputs[j])


def _compute(node, t):
    """``t`` in float32 for the arithmetic (float16/bfloat16 inputs too), and its own dtype."""
    t2, dt = lite_float(node, t)
    return (t2 if t2.dtype == tf.float32 else tf.cast(t2, tf.float32)), dt


def _to_heads(t, heads: int):
    """(B, T, heads * D) -> (B, heads, T, D)."""
    b, s, h = dims_of(t)
    return tf.transpose(tf.reshape(t, shape_tensor([b, s, heads, h // heads])), [0, 2, 1, 3])


class _Mask:
    """What the scores see: ``allowed`` (a boolean, numpy when known at conversion time, else a
    tensor; None: everything) and ``bias`` (a float tensor added to the scores, or None)."""

    def __init__(self):
        self.const: np.ndarray | None = None
        self.dynamic: list = []
        self.bias = None

    def allow(self, a) -> None:
        if isinstance(a, np.ndarray):
            self.const = a if self.const is None else np.logical_and(self.const, a)
        else:
            self.dynamic.append(a)

    def allowed(self):
        parts = list(self.dynamic)
        if self.const is not None and not (self.const.all() and parts):
            parts.insert(0, tf.constant(self.const))
        if not parts:
            return None
        out = parts[0]
        for p in parts[1:]:
            out = tf.logical_and(out, p)
        return out

    def may_empty_rows(self) -> bool:
        """Whether some query row may have no key left (then the softmax row is set to 0)."""
        if self.bias is not None or self.dynamic:
            return True
        return self.const is not None and not self.const.any(axis=-1).all()


def _build_mask(node, x, ctx, q_len: int, kv_len: int, past_len: int) -> _Mask:
    m = _Mask()
    nonpad = None
    if _given(node, 6):
        nonpad = tf.cast(tf.reshape(x[6], [-1, 1, 1, 1]), tf.int32)  # (B, 1, 1, 1)
        cols = tf.constant(np.arange(kv_len, dtype=np.int32).reshape(1, 1, 1, kv_len))
        m.allow(tf.less(cols, nonpad))
    if _given(node, 3):
        mt = x[3]
        s_mask = mt.shape.as_list()[-1]
        if s_mask is None:
            raise unsupported(node, "an attn_mask of unknown length")
        if s_mask > kv_len:
            raise unsupported(node, f"an attn_mask over {s_mask} keys for {kv_len} keys")
        if s_mask < kv_len:  # the keys past the mask are masked (ONNX pads it with -inf / False)
            m.allow(np.arange(kv_len) < s_mask)
        if mt.dtype == tf.bool:
            # a constant float mask is not read as numpy: its -inf entries must stay the exact
            # tensor ``EmitContext.weight`` made (TFLite would store -FLT_MAX)
            mv = input_value(node, ctx, x, 3)
            if mv is not None:
                m.allow(_pad_last(mv.astype(bool), kv_len, True))
            else:
                m.allow(_pad_last_t(mt, kv_len, True))
        else:
            f, _ = _compute(node, mt)
            m.bias = _pad_last_t(f, kv_len, 0.0)
    window = (node.attr("left_window_size", -1), node.attr("right_window_size", -1))
    if node.attr("is_causal", 0) or window != (-1, -1):
        i = np.arange(q_len).reshape(q_len, 1)
        j = np.arange(kv_len).reshape(1, kv_len)
        if nonpad is None:  # scalar offset: the past's length (0 without a cache)
            diff = i + past_len - j
            ok = np.ones((q_len, kv_len), bool)
            if node.attr("is_causal", 0):
                ok &= diff >= 0
            if window[0] >= 0:
                ok &= diff <= window[0]
            if window[1] >= 0:
                ok &= -diff <= window[1]
            m.allow(ok)
        else:  # per-batch offset nonpad_kv_seqlen[b] - q_len
            diff = tf.constant((i - j).astype(np.int32).reshape(1, 1, q_len, kv_len)) + (nonpad - q_len)
            if node.attr("is_causal", 0):
                m.allow(tf.greater_equal(diff, 0))
            if window[0] >= 0:
                m.allow(tf.less_equal(diff, window[0]))
            if window[1] >= 0:
                m.allow(tf.greater_equal(diff, -window[1]))
    return m


def _pad_last(a: np.ndarray, n: int, value) -> np.ndarray:
    pad = n - a.shape[-1]
    return a if pad <= 0 else np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)], constant_values=value)


def _pad_last_t(t, n: int, value):
    pad = n - t.shape.as_list()[-1]
    return t if pad <= 0 else tf.pad(t, [[0, 0]] * (t.shape.rank - 1) + [[0, pad]], constant_values=value)


@emitter("Attention")
def emit_attention(node, x, ctx):
    q, dt = _compute(node, x[0])
    k, _ = _compute(node, x[1])
    v, _ = _compute(node, x[2])
    rank = q.shape.rank
    if rank == 3:
        hq, hkv = node.attr("q_num_heads"), node.attr("kv_num_heads")
        if not hq or not hkv:
            raise unsupported(node, "3-D inputs without q_num_heads/kv_num_heads")
        q, k, v = _to_heads(q, hq), _to_heads(k, hkv), _to_heads(v, hkv)
    elif rank != 4:
        raise unsupported(node, f"rank-{rank} inputs")
    if _given(node, 4) != _given(node, 5):
        raise unsupported(node, "past_key without past_value (or the reverse)")
    past_len = 0
    if _given(node, 4):
        pk, _ = _compute(node, x[4])
        pv, _ = _compute(node, x[5])
        past_len = pk.shape.as_list()[2]
        if past_len is None:
            raise unsupported(node, "a past of unknown length")
        k, v = tf.concat([pk, k], axis=2), tf.concat([pv, v], axis=2)
    present_k, present_v = k, v
    b, hq, q_len, d = dims_of(q)
    hkv, kv_len = k.shape.as_list()[1], k.shape.as_list()[2]
    if not all(isinstance(s, int) for s in (hq, q_len, d, hkv, kv_len)):
        raise unsupported(node, "unknown head counts, sequence lengths or head sizes")
    if hq % hkv:
        raise unsupported(node, f"{hq} query heads over {hkv} key/value heads")
    group = hq // hkv
    scale = node.attr("scale")
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    softcap = float(node.attr("softcap", 0.0) or 0.0)
    mode = node.attr("qk_matmul_output_mode", 0)
    # the scale (and 1/softcap) on Q, the smaller operand
    qs = q * np.float32(scale / softcap if softcap > 0 else scale)
    if group > 1:  # heads h = g * group + r read kv head g: (B, Hkv, group * T, D), a reshape
        qs = tf.reshape(qs, shape_tensor([b, hkv, group * q_len, d]))
    scores = tf.linalg.matmul(qs, k, transpose_b=True)
    if group > 1:
        scores = tf.reshape(scores, shape_tensor([b, hq, q_len, kv_len]))
    if softcap > 0:
        scores = tf.math.tanh(scores) * np.float32(softcap)
    qk_out = scores
    mask = _build_mask(node, x, ctx, q_len, kv_len, past_len)
    allowed = mask.allowed()
    biased = scores if mask.bias is None else scores + mask.bias
    if mode == 2:
        neg = ctx.exact_constant(np.array(-np.inf, np.float32))
        if neg is None and allowed is not None:
            raise unsupported(node, "qk_matmul_output_mode 2 with a boolean/causal mask in a graph without inputs")
        qk_out = biased if allowed is None else tf.where(allowed, biased, neg)
    logits = biased if allowed is None else tf.where(allowed, biased, np.float32(np.finfo(np.float32).min))
    probs = tf.nn.softmax(logits, axis=-1)
    if mask.may_empty_rows():
        live = allowed
        if mask.bias is not None:  # -inf in the float mask masks that key too
            finite = tf.greater_equal(mask.bias, np.float32(np.finfo(np.float32).min))
            live = finite if live is None else tf.logical_and(live, finite)
        dead = tf.logical_not(tf.reduce_any(live, axis=-1, keepdims=True))
        probs = tf.where(dead, tf.zeros_like(probs), probs)
    if mode == 3:
        qk_out = probs
    pg = tf.reshape(probs, shape_tensor([b, hkv, group * q_len, kv_len])) if group > 1 else probs
    y = tf.linalg.matmul(pg, v)
    dv = v.shape.as_list()[-1]
    if group > 1:
        y = tf.reshape(y, shape_tensor([b, hq, q_len, dv]))
    if rank == 3:
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), shape_tensor([b, q_len, hq * dv]))
    back = (lambda t: t) if dt == tf.float32 else (lambda t: tf.cast(t, dt))
    return [back(y), back(present_k), back(present_v), back(qk_out)][:len(node.outputs)]


@emitter("RotaryEmbedding")
def emit_rotary_embedding(node, x, ctx):
    t, dt = _compute(node, x[0])
    cos, _ = _compute(node, x[1])
    sin, _ = _compute(node, x[2])
    rank = t.shape.rank
    dims = dims_of(t)
    if rank == 3:
        heads = node.attr("num_heads", 0)
        if not heads:
            raise unsupported(node, "a 3-D input without num_heads")
        b, s, hidden = dims
        if not isinstance(hidden, int):
            raise unsupported(node, "an unknown hidden size")
        t = tf.reshape(t, shape_tensor([b, s, heads, hidden // heads]))  # (B, S, H, D)
    elif rank != 4:
        raise unsupported(node, f"a rank-{rank} input")
    d = t.shape.as_list()[-1]
    if d is None:
        raise unsupported(node, "an unknown head size")
    rd = node.attr("rotary_embedding_dim", 0) or d
    half = rd // 2
    if _given(node, 3):  # (B, S) positions into the (max_positions, rd / 2) caches
        pos = tf.cast(x[3], tf.int32)
        cos, sin = tf.gather(cos, pos), tf.gather(sin, pos)
    # (B, S, rd / 2) against (B, S, H, D) or (B, H, S, D)
    cos = tf.expand_dims(cos, 2 if rank == 3 else 1)
    sin = tf.expand_dims(sin, 2 if rank == 3 else 1)
    rot = t[..., :rd] if rd < d else t
    if node.attr("interleaved", 0):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if node.attr("interleaved", 0):
        out_dims = dims_of(rot)
        rot = tf.reshape(tf.stack([real, imag], axis=-1), shape_tensor(out_dims))
        parts = [rot]
    else:
        parts = [real, imag]
    if rd < d:
        parts.append(t[..., rd:])
    y = tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
    if rank == 3:
        y = tf.reshape(y, shape_tensor(dims))
    return y if dt == tf.float32 else tf.cast(y, dt)
