"""Recurrent layers: ONNX LSTM, GRU and RNN, unrolled over the static sequence length.

Each step is a matmul with a constant weight (TFLite FULLY_CONNECTED), adds, multiplies and the
gate activations (LOGISTIC, TANH, ...); the input projection of all steps is one matmul up
front. Supported per the ONNX spec: ``direction`` forward/reverse/bidirectional, ``layout`` 0/1,
``initial_h``/``initial_c``, ``B``, peepholes ``P``, ``clip``, ``input_forget``, GRU's
``linear_before_reset`` and the ``activations`` attribute (with ``activation_alpha``/``beta``,
consumed in order by the activations that take them, as ONNX Runtime does). ``sequence_lens`` is
accepted only as a constant equal to the full length everywhere (the result is then the same);
W, R, B and P may be constants or run-time tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from graph_convert.errors import ConvertError
from graph_convert.backends.tensorflow.ops.core import input_value, emitter

# name -> (function of (x, alpha, beta), default alpha, default beta); None: the activation takes none
_ACTIVATIONS = {
    "sigmoid": (lambda x, a, b: tf.sigmoid(x), None, None),
    "tanh": (lambda x, a, b: tf.tanh(x), None, None),
    "relu": (lambda x, a, b: tf.nn.relu(x), None, None),
    "hardsigmoid": (lambda x, a, b: tf.clip_by_value(a * x + b, 0.0, 1.0), 0.2, 0.5),
    "leakyrelu": (lambda x, a, b: tf.where(x < 0, a * x, x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: tf.where(x > a, x, tf.zeros_like(x)), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * tf.tanh(b * x), 1.0, 1.0),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "elu": (lambda x, a, b: tf.where(x < 0, a * (tf.exp(x) - 1.0), x), 1.0, None),
    "softsign": (lambda x, a, b: x / (1.0 + tf.abs(x)), None, None),
    "softplus": (lambda x, a, b: tf.math.softplus(x), None, None),
}

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _activations(node, n_dir: int):
    names = node.attr("activations")
    per = len(_DEFAULT_ACTS[node.op_type])
    if names is None:
        names = _DEFAULT_ACTS[node.op_type] * n_dir
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) == per and n_dir == 2:
        names = names * 2
    if len(names) != per * n_dir:
        raise ConvertError(f"node {node.name!r} ({node.op_type}): {len(names)} activations for {n_dir} direction(s), "
                           f"expected {per * n_dir}")
    alphas = list(node.attr("activation_alpha") or [])
    betas = list(node.attr("activation_beta") or [])
    out = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise ConvertError(f"node {node.name!r} ({node.op_type}): activation {name!r} is not supported by the TF emitter")
        fn, da, db = _ACTIVATIONS[key]
        a = (alphas.pop(0) if alphas else da) if da is not None else None
        b = (betas.pop(0) if betas else db) if db is not None else None
        out.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    return [out[d * per:(d + 1) * per] for d in range(n_dir)]


def _opt(node, x, j: int):
    return x[j] if len(node.inputs) > j and node.inputs[j] else None


@dataclass
class _Cell:
    """What every time step of one recurrent node needs."""

    op: str
    hidden: int
    clip: float | None
    peephole: Any  # LSTM's P input, [D, 3H], or None
    input_forget: bool
    linear_before_reset: bool

    def pre(self, a):
        return a if self.clip is None else tf.clip_by_value(a, -float(self.clip), float(self.clip))

    def step(self, d: int, f, xt, h, c, Rt, rb):
        """One step of direction ``d``: ``xt`` is the input projection plus biases, ``Rt`` the
        recurrence weight transposed, ``f`` the direction's activations. Returns (h, c)."""
        if self.op == "LSTM":
            return self._lstm(d, f, xt, h, c, Rt)
        if self.op == "GRU":
            return self._gru(f, xt, h, Rt, rb), None
        a = xt if h is None else xt + tf.matmul(h, Rt)
        return f[0](self.pre(a)), None

    def _lstm(self, d, f, xt, h, c, Rt):
        H, P = self.hidden, self.peephole
        a = xt if h is None else xt + tf.matmul(h, Rt)
        ai, ao, af, ac = (a[:, k * H:(k + 1) * H] for k in range(4))
        if P is not None and c is not None:
            ai = ai + P[d][:H] * c
            af = af + P[d][2 * H:] * c
        it = f[0](self.pre(ai))
        ft = 1.0 - it if self.input_forget else f[0](self.pre(af))
        ct = f[1](self.pre(ac))
        c = it * ct if c is None else ft * c + it * ct
        if P is not None:
            ao = ao + P[d][H:2 * H] * c
        return f[0](self.pre(ao)) * f[2](c), c

    def _gru(self, f, xt, h, Rt, rb):
        H = self.hidden
        az, ar, ah = (xt[:, k * H:(k + 1) * H] for k in range(3))
        if h is not None:
            hr = tf.matmul(h, Rt[:, :2 * H])
            az, ar = az + hr[:, :H], ar + hr[:, H:]
        zt, rt = f[0](self.pre(az)), f[0](self.pre(ar))
        Rh = Rt[:, 2 * H:]
        if self.linear_before_reset:
            rh = rb[2 * H:] if h is None else tf.matmul(h, Rh) + rb[2 * H:]
            ht = f[1](self.pre(ah + rt * rh))
        else:
            ht = f[1](self.pre(ah if h is None else ah + tf.matmul(rt * h, Rh)))
        return (1.0 - zt) * ht if h is None else (1.0 - zt) * ht + zt * h


def _directions(node) -> list[bool]:
    direction = node.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if dirs is None:
        raise ConvertError(f"node {node.name!r} ({node.op_type}): direction {direction!r} is not one of forward, reverse, bidirectional")
    return dirs


def _check_sequence_lens(node, ctx, x, T: int) -> None:
    if len(node.inputs) > 4 and node.inputs[4]:
        seq = input_value(node, ctx, x, 4)
        if seq is None or np.any(np.asarray(seq) != T):
            raise ConvertError(f"node {node.name!r} ({node.op_type}): sequence_lens other than the full length {T} everywhere "
                               f"(or known only at run time) is not supported by the TF emitter")


@emitter("LSTM", "GRU", "RNN")
def emit_recurrent(node, x, ctx):
    op = node.op_type
    ng, hidden, layout = _GATES[op], int(node.attr("hidden_size")), int(node.attr("layout", 0))
    dirs = _directions(node)
    X = x[0]
    T = X.shape[1 if layout else 0]
    if T is None:
        raise ConvertError(f"node {node.name!r} ({op}): the sequence length must be static to unroll")
    _check_sequence_lens(node, ctx, x, T)
    W, R, B = x[1], x[2], _opt(node, x, 3)
    init_h = x[5] if len(node.inputs) > 5 and node.inputs[5] else None
    init_c = x[6] if op == "LSTM" and len(node.inputs) > 6 and node.inputs[6] else None
    cell = _Cell(op, hidden, node.attr("clip"), _opt(node, x, 7) if op == "LSTM" else None,
                 op == "LSTM" and bool(node.attr("input_forget", 0)), op == "GRU" and bool(node.attr("linear_before_reset", 0)))
    acts = _activations(node, len(dirs))

    def state(s, d):  # initial state of direction d as [batch, hidden]
        return None if s is None else (s[:, d, :] if layout else s[d])

    shape, in_size = tf.shape(X), X.shape[2]
    hs_all, last_h, last_c = [], [], []
    for d, backward in enumerate(dirs):
        Bd = tf.zeros([2 * ng * hidden], X.dtype) if B is None else B[d]
        wb, rb = Bd[:ng * hidden], Bd[ng * hidden:]
        # input projection of every step at once: [T*B, I] x [I, G*H]
        flat = tf.reshape(X, [-1, in_size]) if in_size is not None else tf.reshape(X, tf.stack([-1, shape[2]]))
        # GRU with linear_before_reset adds Rbh inside r * (...); everywhere else both biases add up front
        bias_x = tf.concat([wb[:2 * hidden] + rb[:2 * hidden], wb[2 * hidden:]], 0) if cell.linear_before_reset else wb + rb
        proj = tf.reshape(tf.matmul(flat, tf.transpose(W[d])) + bias_x, tf.concat([shape[:2], [ng * hidden]], 0))
        h, c = state(init_h, d), (state(init_c, d) if op == "LSTM" else None)
        hs, Rt = [None] * T, tf.transpose(R[d])
        for t in (range(T - 1, -1, -1) if backward else range(T)):
            h, c = cell.step(d, acts[d], proj[:, t] if layout else proj[t], h, c, Rt, rb)
            hs[t] = h
        hs_all.append(hs)
        last_h.append(h)
        last_c.append(c)
    if layout:
        outs = [tf.stack([tf.stack(hs, axis=1) for hs in hs_all], axis=2), tf.stack(last_h, axis=1)]  # [B, T, D, H], [B, D, H]
    else:
        outs = [tf.stack([tf.stack(hs, axis=0) for hs in hs_all], axis=1), tf.stack(last_h, axis=0)]  # [T, D, B, H], [D, B, H]
    if op == "LSTM":
        outs.append(tf.stack(last_c, axis=1 if layout else 0))
    return outs
