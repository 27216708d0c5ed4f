"""Drop the NaN guard the dynamo exporter writes after an attention softmax when the scores are finite.

``scaled_dot_product_attention`` exported by dynamo is ``Where(IsNaN(s), 0, s)`` with
``s = Softmax(scores)`` (PyTorch's "safe softmax": a row masked entirely with -inf gives zeros, not
NaN; the exporter itself writes a boolean mask's masked positions as float32's lowest finite value,
so in its file such a row is finite and the guard does not act on it either). Softmax of a row is NaN only when the row holds a NaN or an infinity. When the scores are
built from the data by MatMul, Mul/Div by finite constants, Add/Sub of finite constants
(attention biases, constant masks) and rearrangements, a NaN or infinity there can come only
from a NaN or infinity in the data or an overflow of float32 — no mask input can make a row -inf
— and on such data the guard's zeros are no more meaningful than the NaN. So the guard is the
identity on every finite computation and goes; ONNX Runtime checks the result like any rewrite.

Why bother: TFLite writes the guard as NOT_EQUAL + SELECT_V2 per attention, and XNNPACK's
delegate takes neither, so each attention splits the delegated graph (see benchmarks/heads_first.py).
A guard after scores that read any other tensor (a mask input) stays.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.lib.movement import MOVES, plain


def _finite_const(graph: Graph, t: str, nonzero: bool = False) -> bool:
    v = graph.constant_value(t)
    return v is not None and v.dtype.kind == "f" and bool(np.isfinite(v).all()) and (not nonzero or bool((v != 0).all()))


def finite_scores(graph: Graph, t: str, depth: int = 0) -> bool:
    """``t`` is made from the data only by MatMul, finite-constant arithmetic and rearrangements."""
    p = graph.producer(t)
    if p is None or depth > 32:
        return False
    if plain(p, "MatMul"):
        return True
    if plain(p, *MOVES) and all(graph.constant_value(u) is not None for u in p.inputs[1:] if u):
        return finite_scores(graph, p.inputs[0], depth + 1)
    if plain(p, "Add", "Sub"):
        return all(_finite_const(graph, u) or finite_scores(graph, u, depth + 1) for u in p.inputs)
    if plain(p, "Mul", "Div") and len(p.inputs) == 2:
        a, b = p.inputs
        if _finite_const(graph, b, nonzero=p.op_type == "Div"):
            return finite_scores(graph, a, depth + 1)
        return p.op_type == "Mul" and _finite_const(graph, a) and finite_scores(graph, b, depth + 1)
    return False


def _guarded_softmax(graph: Graph, where: Node) -> str | None:
    """``s`` when ``where`` is ``Where(IsNaN(s), 0, s)`` with ``s`` a Softmax of finite scores."""
    if not plain(where, "Where") or len(where.inputs) != 3 or graph.is_graph_output(where.outputs[0]):
        return None
    cond, zero, s = where.inputs
    isnan, soft = graph.producer(cond), graph.producer(s)
    z = graph.constant_value(zero)
    if not plain(isnan, "IsNaN") or isnan.inputs[0] != s or z is None or z.size != 1 or float(z.reshape(-1)[0]) != 0.0:
        return None
    if not plain(soft, "Softmax") or not finite_scores(graph, soft.inputs[0]):
        return None
    return s


class DropNanGuard(Pass):
    name = "drop_nan_guard"
    phase = "canonicalize"
    after = ("fold_constants",)  # attention biases gathered from a table are constants by then

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        dropped = 0
        for node in graph.nodes:
            if not graph.has_node(node.name):
                continue
            s = _guarded_softmax(graph, node)
            if s is None:
                continue
            isnan = graph.producer(node.inputs[0])
            graph.replace_all_uses(node.outputs[0], s)
            graph.remove_node(node)
            if graph.num_uses(isnan.outputs[0]) == 0:
                graph.remove_node(isnan)
            dropped += 1
        return PassResult(bool(dropped), {"dropped": dropped} if dropped else {})


PASS = DropNanGuard
