"""Cancel a Reshape round trip around element-wise ops with per-last-axis constants.

``BatchNorm1d`` on tokens, as LeViT's ``Linear -> BatchNorm1d`` writes it, exports as
``MatMul -> Flatten/Reshape (B*N, C) -> Mul(scale) -> Add(shift) -> Reshape (B, N, C)``. The two
Reshapes undo each other and the constants broadcast over the last axis only, which both Reshapes
keep, so the Mul/Add can read the first Reshape's input and the second Reshape goes away. Left in,
TensorFlow's converter folds the affine into the FULLY_CONNECTED and then no longer sees the
``x * relu6(x + 3) / 6`` that follows as one tensor: the HardSwish is written as ADD + MUL
instead of HARD_SWISH (and two RESHAPE stay).
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.lib.movement import plain, static

_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_ELEMENTWISE = ("Mul", "Add", "Sub", "Div")


def _last_axis_constant(graph: Graph, node: Node, chain_in: str, rank: int, last: int) -> bool:
    """``node`` reads ``chain_in`` once and a constant that varies at most along the last axis
    (shape (), (last,), (1, .., 1, last) or (1, .., 1)), of rank <= ``rank``."""
    if not plain(node, *_ELEMENTWISE) or len(node.inputs) != 2 or node.inputs.count(chain_in) != 1:
        return False
    other = node.inputs[1] if node.inputs[0] == chain_in else node.inputs[0]
    c = graph.constant_value(other)
    if c is None or np.ndim(c) > rank:
        return False
    shape = tuple(np.shape(c))
    return all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, last))


def _match(graph: Graph, outer: Node) -> tuple[Node, list[Node]] | None:
    """(inner Reshape, element-wise chain between them) when ``outer`` undoes ``inner``."""
    if not plain(outer, *_RESHAPES) or graph.is_graph_output(outer.outputs[0]):
        return None
    want = static(graph, outer.outputs[0])
    chain: list[Node] = []
    t = outer.inputs[0]
    while want is not None:
        prod = graph.producer(t)
        if prod is None or graph.num_uses(t) != 1 or graph.is_graph_output(t):
            return None
        if plain(prod, *_RESHAPES):
            src = static(graph, prod.inputs[0])
            mid = static(graph, t)
            if src != want or not chain or mid is None or mid[-1] != want[-1]:
                return None
            rank = len(want)
            ok = all(_last_axis_constant(graph, n, n_in, rank, want[-1])
                     for n, n_in in zip(chain, [*[c.outputs[0] for c in chain[1:]], prod.outputs[0]]))
            return (prod, chain[::-1]) if ok else None
        if not plain(prod, *_ELEMENTWISE) or len(chain) >= 8:
            return None
        chain.append(prod)
        t = next((x for x in prod.inputs if graph.constant_value(x) is None), None)
        if t is None:
            return None
    return None


class CancelReshapePair(Pass):
    name = "cancel_reshape_pair"
    phase = "optimize"
    after = ("push_transposes",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        cancelled = 0
        for outer in graph.nodes:
            if not graph.has_node(outer.name):
                continue
            m = _match(graph, outer)
            if m is None:
                continue
            inner, chain = m
            shape = static(graph, inner.inputs[0])
            first = chain[0]
            graph.set_input(first, first.inputs.index(inner.outputs[0]), inner.inputs[0])
            for n in chain:
                graph.set_info(n.outputs[0], shape=shape)
            graph.replace_all_uses(outer.outputs[0], chain[-1].outputs[0])
            graph.remove_node(outer)
            graph.remove_node(inner)
            cancelled += 1
        return PassResult(cancelled > 0, {"cancelled": cancelled} if cancelled else {})


PASS = CancelReshapePair
