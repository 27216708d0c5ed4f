"""MatMul, Gemm and Einsum (as batch matmuls, with adjoint flags instead of transposes)."""
from __future__ import annotations

import tensorflow as tf

from graph_convert.ir import Node
from graph_convert.backends.tensorflow.ops.core import (
    cast_back,
    dims_of,
    input_value,
    to_lite,
    dims_product,
    shape_tensor,
    unsupported,
    emitter,
)


@emitter("MatMul")
def emit_matmul(node, x, ctx):
    (a, b), dt = to_lite(node, "float", x[0], x[1])
    if len(a.shape) == 1 or len(b.shape) == 1:
        a2 = a[None, :] if len(a.shape) == 1 else a
        b2 = b[:, None] if len(b.shape) == 1 else b
        y = tf.linalg.matmul(a2, b2)
        if len(a.shape) == 1:
            y = tf.squeeze(y, -2)
        if len(b.shape) == 1:
            y = tf.squeeze(y, -1)
        return cast_back(y, dt)
    return cast_back(tf.linalg.matmul(a, b), dt)


@emitter("Gemm")
def emit_gemm(node, x, ctx):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)
    (a,), dt = to_lite(node, "float", x[0])
    bv = input_value(node, ctx, x, 1)
    if bv is not None:  # fold transB and alpha into the constant: one FULLY_CONNECTED in TFLite
        bv = bv.T if tb else bv
        if alpha != 1.0:
            bv, alpha = bv * alpha, 1.0
        b, tb = ctx.weight(bv, a.dtype), 0  # a transposed view: the variable copies it once, a stand-in never
    else:
        (b,), _ = to_lite(node, "float", x[1])
    y = tf.linalg.matmul(a, b, transpose_a=bool(ta), transpose_b=bool(tb))
    if alpha != 1.0:
        y = y * alpha
    if len(node.inputs) > 2 and node.inputs[2]:
        # A (1, N) bias broadcasts over the (M, N) product exactly as an (N,) one, and must be
        # given as (N,): TF's grappler remapper fuses MatMul(transpose_a) + Add into _FusedMatMul
        # without checking the addend's rank, which then fails at run time with "bias must be
        # 1-dimensional" (ONNX test_gemm_transposeA).
        cv = input_value(node, ctx, x, 2)
        if cv is not None:
            cv = cv.reshape(-1) if cv.ndim == 2 and cv.shape[0] == 1 else cv
            c = tf.constant((cv * beta) if beta != 1.0 else cv, dtype=y.dtype)
        else:
            (c,), _ = to_lite(node, "float", x[2])
            c = tf.squeeze(c, 0) if c.shape.rank == 2 and c.shape[0] == 1 else c
            c = c * beta if beta != 1.0 else c
        y = y + c
    return cast_back(y, dt)


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _einsum_terms(node: Node, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Operand and output subscripts with ``...`` spelled out as letters (right-aligned)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise unsupported(node, f"equation {equation!r} for {len(ranks)} operands")
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
            raise unsupported(node, f"equation {equation!r}: term {t!r} for an operand of rank {r}")
    return terms, out


def _einsum_diagonal(t, term: str):
    """Take the diagonal for every letter repeated within one operand ('ii->i')."""
    while len(set(term)) < len(term):
        c = next(c for c in term if term.count(c) > 1)
        p, q = term.index(c), term.index(c, term.index(c) + 1)
        rest = [i for i in range(len(term)) if i not in (p, q)]
        t = tf.transpose(t, rest + [p, q])
        dims = dims_of(t)
        n = dims[-1]
        t = tf.reshape(t, shape_tensor(dims[:-2] + [n * n]))[..., :: n + 1]  # the diagonal of an n x n block
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
    xs, dt = to_lite(node, "float", *x)
    terms, out = _einsum_terms(node, node.attr("equation"), [len(t.shape) for t in xs])
    items = [_einsum_diagonal(t, term) for t, term in zip(xs, terms)]
    sizes: dict[str, object] = {}
    for t, term in items:
        for c, d in zip(term, dims_of(t)):
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
        da, db = dims_of(a), dims_of(b)
        nb = len(batch)
        la, ca, rb = dims_product([sizes[c] for c in left]), dims_product([sizes[c] for c in contract]), dims_product([sizes[c] for c in right])
        a = tf.reshape(a, shape_tensor(da[:nb] + ([ca, la] if adj_a else [la, ca])))
        b = tf.reshape(b, shape_tensor(db[:nb] + ([rb, ca] if adj_b else [ca, rb])))
        y = tf.linalg.matmul(a, b, adjoint_a=adj_a, adjoint_b=adj_b)
        term = batch + left + right
        y = tf.reshape(y, shape_tensor([sizes[c] for c in term]))
        items = [(y, term)] + items[2:]
    t, term = items[0]
    t, term = _einsum_sum_out(t, term, set(out))
    return cast_back(_transpose_to(t, term, out), dt)
