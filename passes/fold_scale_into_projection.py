"""Fold a scalar Mul/Div into the projection that computes its input.

Attention as Hugging Face's sdpa path and ``F.scaled_dot_product_attention`` export it scales
queries and keys each by ``1/sqrt(sqrt(d))`` after ``x @ W + b -> Reshape (-> Transpose)``: two
element-wise MULs per layer over the whole (tokens x width) tensor. ``(x @ W + b) * s`` is
``x @ (W * s) + b * s``, and a Reshape or Transpose in between only moves elements, so the scale
goes into a copy of the weights and the Mul goes away. (``heads_first``, when it fires, does this
as part of its rewrite; this pass handles the default path.)
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.heads_first import _projection, _scale, _weight
from graph_convert_passes.movement import plain

_MOVES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def _source_projection(graph: Graph, t: str):
    """The MatMul/Gemm projection whose output reaches ``t`` through single-use moves only."""
    while True:
        if graph.is_graph_output(t) or graph.num_uses(t) != 1:
            return None
        p = graph.producer(t)
        if p is None:
            return None
        if plain(p, *_MOVES):
            t = p.inputs[0]
            continue
        if plain(p, "Add"):  # a bias Add: the MatMul is one of its inputs
            p = next((graph.producer(x) for x in p.inputs if plain(graph.producer(x), "MatMul")), None)
        if not plain(p, "MatMul", "Gemm"):
            return None
        proj = _projection(graph, p)
        if proj is None or proj.y != t or any(graph.num_uses(n.outputs[0]) != 1 for n in proj.nodes[:-1]):
            return None
        return proj


def _scaled(graph: Graph, node: Node, j: int, s: float, by: str) -> None:
    """Input ``j`` of ``node`` (a constant) becomes a new initializer holding it times ``s``."""
    v = _weight(graph, node.inputs[j])
    graph.set_input(node, j, graph.add_initializer(f"{node.name}_{by}", v * np.asarray(s, v.dtype)))


class FoldScaleIntoProjection(Pass):
    name = "fold_scale_into_projection"
    phase = "optimize"
    after = ("heads_first", "push_transposes")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for node in graph.nodes:
            if not plain(node, "Mul", "Div") or len(node.inputs) != 2 or graph.is_graph_output(node.outputs[0]):
                continue
            data = next((x for x in node.inputs if graph.constant_value(x) is None), None)
            s = _scale(graph, node, data) if data is not None else None
            proj = _source_projection(graph, data) if s is not None else None
            if proj is None or not np.isfinite(s):
                continue
            mm = proj.nodes[0]
            _scaled(graph, mm, 1, s, "w_scaled")
            if mm.op_type == "Gemm" and len(mm.inputs) > 2 and mm.inputs[2]:
                _scaled(graph, mm, 2, s, "b_scaled")
            if len(proj.nodes) > 1:  # MatMul + bias Add
                add = proj.nodes[1]
                _scaled(graph, add, 1 - add.inputs.index(mm.outputs[0]), s, "b_scaled")
            graph.replace_all_uses(node.outputs[0], data)
            graph.remove_node(node)
            folded += 1
        return PassResult(folded > 0, {"folded": folded} if folded else {})


PASS = FoldScaleIntoProjection
