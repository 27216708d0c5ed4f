"""Recognise normalizations that exporters spell out: LayerNorm written as
ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div(+Mul/Add) -> LayerNormalization, RMSNorm
(``x * rsqrt(mean(x^2) + eps) * w``: torch.nn.RMSNorm and hand-written ones, both exporters) ->
RMSNormalization, and softmax with an explicit max-subtraction -> Softmax.

Like :mod:`passes.fuse_activations` the elementwise parts are read as polynomials, so Div by the
standard deviation, Mul by its Reciprocal or by ``1 / sqrt`` all match; Pow(d, 2) and d*d both
square. The reductions must agree (same axes, keepdims) and the normalized axes must be the
trailing ones (what LayerNormalization/RMSNormalization normalize); the affine scale and bias
must be constants that vary only along those axes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert_passes.lib.expr import Poly, expand, scalar
from graph_convert_passes.lib.rewrite_rules import Fail, Match, RulePass, operand, producer


def reduce_axes(graph: Graph, node: Node) -> list[int] | None:
    """Sorted non-negative axes of a ReduceX node with keepdims=1, or None (unknown, all, dropped)."""
    rank = graph.rank(node.inputs[0])
    if rank is None or not node.attr("keepdims", 1):
        return None
    if len(node.inputs) > 1 and node.inputs[1]:
        v = graph.constant_value(node.inputs[1])
        if v is None:
            return None
        axes = [int(a) for a in v.reshape(-1)]
    else:
        axes = list(node.attr("axes") or [])
    if not axes:
        return None
    return sorted({a % rank for a in axes})


def _inv_sqrt(graph: Graph, leaf: str, exp: int) -> Node | None:
    """The node whose input is v when ``leaf**exp`` is 1/sqrt(v): Sqrt(v)^-1, Pow(v, 0.5)^-1, Pow(v, -0.5)."""
    node = producer(graph, leaf, "Sqrt", "Pow")
    if node is None:
        return None
    if node.op_type == "Sqrt":
        return node if exp == -1 else None
    e = scalar(graph, node.inputs[1])
    return node if (e, exp) in ((0.5, -1), (-0.5, 1)) else None


@dataclass
class _Norm:
    """``c * y * W / sqrt(mean(q) + eps) + bias`` read off a root's polynomial."""

    y: str  # the tensor being scaled (x for RMSNorm, x - mean(x) for LayerNorm)
    scale: np.ndarray | float  # W * c (a number when there is no W)
    bias: np.ndarray | float | None
    reduce: Node  # the ReduceMean of the variance / mean square
    axes: list[int]
    eps: float
    nodes: set[str]
    square_of: str  # q = square_of^2


def _parse_norm(graph: Graph, poly: Poly) -> _Norm | Fail | None:
    main = bias = None
    for mono in poly.terms:
        if any(_inv_sqrt(graph, leaf, e) is not None for leaf, e in mono):
            if main is not None:
                return None
            main = mono
    if main is None:
        return None
    c = poly.terms[main]
    rest = [m for m in poly.terms if m != main]
    inv = next(leaf for leaf, e in main if _inv_sqrt(graph, leaf, e) is not None)
    sq = _inv_sqrt(graph, inv, dict(main)[inv])
    if len(rest) > 1:
        return Fail(sq.name, f"more than one term besides the normalized one: {poly!r}")
    if rest:
        (m,) = rest
        if m == ():
            bias = poly.terms[m]
        elif len(m) == 1 and m[0][1] == 1 and graph.constant_value(m[0][0]) is not None:
            bias = graph.constant_value(m[0][0]) * poly.terms[m]
        else:
            return Fail(sq.name, f"bias term {m} is not a constant")
    others = [(leaf, e) for leaf, e in main if leaf != inv]
    weights = [(leaf, e) for leaf, e in others if graph.constant_value(leaf) is not None]
    data = [(leaf, e) for leaf, e in others if graph.constant_value(leaf) is None]
    if len(data) != 1 or data[0][1] != 1 or len(weights) > 1 or any(e != 1 for _, e in weights):
        return Fail(sq.name, f"normalized term {main} is not y * W / sqrt(..)", 1)
    scale = graph.constant_value(weights[0][0]) * c if weights else c
    v = operand(graph, sq.inputs[0])
    eps = v.terms.get((), 0.0)
    red = [producer(graph, leaf, "ReduceMean") for leaf in v.leaves]
    if len(v.leaves) != 1 or red[0] is None or v.coeff(red[0].outputs[0]) != 1.0 or not eps >= 0:
        return Fail(sq.name, f"square root of {v!r}, expected mean(..) + eps", 2)
    axes = reduce_axes(graph, red[0])
    if axes is None:
        return Fail(sq.name, "the ReduceMean's axes are not known constants with keepdims=1", 3)
    q = operand(graph, red[0].inputs[0])
    if len(q.terms) != 1 or len(q.leaves) != 1 or q.coeff((next(iter(q.leaves)), 2)) != 1.0:
        return Fail(sq.name, f"ReduceMean of {q!r}, expected a square", 3)
    nodes = poly.nodes | v.nodes | q.nodes | {sq.name, red[0].name}
    return _Norm(data[0][0], scale, bias, red[0], axes, eps, nodes, next(iter(q.leaves)))


def _affine(graph: Graph, x: str, axes: list[int], value, anchor: str, what: str) -> np.ndarray | Fail:
    """``value`` (a number or a constant broadcast against x) as an array of x.shape[axes]."""
    shape = graph.shape(x)
    norm_shape = [shape[a] for a in axes]
    if not all(isinstance(d, int) and d > 0 for d in norm_shape):
        return Fail(anchor, f"normalized dims {norm_shape} are not static", 5)
    arr = np.asarray(value, np.float32)
    rank = len(shape)
    if arr.ndim > rank or any(d != 1 for d in arr.shape[: max(arr.ndim - len(axes), 0)]):
        return Fail(anchor, f"{what} of shape {arr.shape} varies along axes outside the normalized ones", 5)
    arr = arr.reshape(arr.shape[max(arr.ndim - len(axes), 0):])
    try:
        return np.ascontiguousarray(np.broadcast_to(arr, norm_shape), np.float32)
    except ValueError:
        return Fail(anchor, f"{what} of shape {arr.shape} does not broadcast to {norm_shape}", 5)


def _trailing_axis(graph: Graph, x: str, axes: list[int], anchor: str) -> int | Fail:
    rank = graph.rank(x)
    if axes != list(range(rank - len(axes), rank)):
        return Fail(anchor, f"normalizes axes {axes} of a rank-{rank} tensor; the fused op normalizes trailing axes", 4)
    return axes[0]


def _centered(graph: Graph, y: str, axes: list[int]) -> tuple[str, Poly, Node] | None:
    """(x, Poly, mean node) when y = x - ReduceMean(x) over ``axes``."""
    p = expand(graph, y)  # looked through although x - mean is read twice: the match's closure check decides
    if len(p.terms) != 2:
        return None
    for leaf in p.leaves:
        mean = producer(graph, leaf, "ReduceMean")
        if mean is not None and p.coeff(leaf) == -1.0 and reduce_axes(graph, mean) == axes:
            x = mean.inputs[0]
            if p.coeff(x) == 1.0:
                return x, p, mean
    return None


def layer_norm(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * W + B -> LayerNormalization."""
    n = _parse_norm(graph, poly)
    if not isinstance(n, _Norm):
        return n
    anchor = n.reduce.name
    if n.square_of != n.y:
        return Fail(anchor, "the variance is not of the normalized tensor", 3)
    cen = _centered(graph, n.y, n.axes)
    if cen is None:
        return None  # not centered: an RMSNorm, that rule's business
    x, p, mean = cen
    axis = _trailing_axis(graph, x, n.axes, anchor)
    if isinstance(axis, Fail):
        return axis
    scale = _affine(graph, x, n.axes, n.scale, anchor, "scale")
    if isinstance(scale, Fail):
        return scale
    inputs = [x, scale]
    if n.bias is not None:
        bias = _affine(graph, x, n.axes, n.bias, anchor, "bias")
        if isinstance(bias, Fail):
            return bias
        inputs.append(bias)
    elif graph.opset < 17:  # the local function always adds B
        inputs.append(np.zeros_like(scale))
    return Match("LayerNormalization", inputs, n.nodes | p.nodes | {mean.name},
                 {"axis": axis, "epsilon": float(n.eps)}, anchor=anchor)


def rms_norm(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """x / sqrt(mean(x^2) + eps) * W -> RMSNormalization."""
    n = _parse_norm(graph, poly)
    if not isinstance(n, _Norm):
        return n
    anchor = n.reduce.name
    if n.square_of != n.y or _centered(graph, n.y, n.axes) is not None:
        return None
    if n.bias is not None:
        return Fail(anchor, "RMSNorm with a bias term", 4)
    axis = _trailing_axis(graph, n.y, n.axes, anchor)
    if isinstance(axis, Fail):
        return axis
    scale = _affine(graph, n.y, n.axes, n.scale, anchor, "scale")
    if isinstance(scale, Fail):
        return scale
    return Match("RMSNormalization", [n.y, scale], n.nodes, {"axis": axis, "epsilon": float(n.eps)}, anchor=anchor)


def softmax(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """exp(x - max(x)) / sum(exp(x - max(x))) over the same axes -> Softmax."""
    if len(poly.terms) != 1:
        return None
    ((mono, c),) = poly.terms.items()
    exps = dict(mono)
    e_leaf = next((leaf for leaf, e in mono if e == 1 and producer(graph, leaf, "Exp")), None)
    s_leaf = next((leaf for leaf, e in mono if e == -1 and producer(graph, leaf, "ReduceSum")), None)
    if e_leaf is None or s_leaf is None:
        return None
    exp, total = producer(graph, e_leaf, "Exp"), producer(graph, s_leaf, "ReduceSum")
    if len(exps) != 2 or c != 1.0 or total.inputs[0] != e_leaf:
        return Fail(exp.name, f"output is {poly!r}, not exp(..) / sum(exp(..))")
    axes = reduce_axes(graph, total)
    if axes is None:
        return Fail(exp.name, "the ReduceSum's axes are not known constants with keepdims=1", 1)
    arg = operand(graph, exp.inputs[0])
    maxes = [producer(graph, leaf, "ReduceMax") for leaf in arg.leaves]
    mx = next((m for m in maxes if m is not None), None)
    if mx is None or len(arg.terms) != 2 or arg.coeff(mx.outputs[0]) != -1.0 or arg.coeff(mx.inputs[0]) != 1.0:
        return Fail(exp.name, f"Exp argument is {arg!r}, not x - max(x)", 2)
    x = mx.inputs[0]
    if reduce_axes(graph, mx) != axes:
        return Fail(exp.name, f"max over {reduce_axes(graph, mx)} but sum over {axes}", 3)
    rank = graph.rank(x)
    if graph.opset >= 13 and len(axes) != 1:
        return Fail(exp.name, f"over axes {axes}; Softmax takes one axis", 4)
    if graph.opset < 13 and axes != list(range(axes[0], rank)):
        return Fail(exp.name, f"over axes {axes}; Softmax before opset 13 normalizes trailing axes", 4)
    return Match("Softmax", [x], poly.nodes | arg.nodes | {exp.name, total.name, mx.name}, {"axis": axes[0]}, anchor=exp.name)


class FuseNormalizations(RulePass):
    name = "fuse_normalizations"
    rules = {"layer_norm": layer_norm, "rms_norm": rms_norm, "softmax": softmax}


PASS = FuseNormalizations
