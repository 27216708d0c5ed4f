"""Fold a scalar Mul/Div, or a per-output-channel one (a layer scale), into the projection that
computes its input.

Attention as Hugging Face's sdpa path and ``F.scaled_dot_product_attention`` export it scales
queries and keys each by ``1/sqrt(sqrt(d))`` after ``x @ W + b -> Reshape (-> Transpose)``: two
element-wise MULs per layer over the whole (tokens x width) tensor. ``(x @ W + b) * s`` is
``x @ (W * s) + b * s``, and a Reshape or Transpose in between only moves elements, so the scale
goes into a copy of the weights and the Mul goes away. (``heads_first``, when it fires, does this
as part of its rewrite; this pass handles the default path.)

A *vector* ``g`` over the projection's output channels (ConvNeXt's ``gamma``, timm's LayerScale:
``g * Linear(x)``) folds the same way, ``x @ (W * g) + b * g``, when the Mul reads the projection's
output directly (a Reshape or Transpose in between could move the channels to another axis).
TensorFlow's converter does this fold itself in the FULLY_CONNECTED's weights; done here, the
SavedModel has no MUL either, and a large model's .tflite can take the folded weight as a
stand-in of its own (``tf/large_tflite.py``: a weight the converter computes from a stand-in
cannot be placed, and the whole model would go through the converter with its real weights).
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.heads_first import find_projection, scalar_scale, constant_weight
from graph_convert_passes.lib.movement import plain

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
        proj = find_projection(graph, p)
        if proj is None or proj.y != t or any(graph.num_uses(n.outputs[0]) != 1 for n in proj.nodes[:-1]):
            return None
        return proj


def _scaled(graph: Graph, node: Node, j: int, s, by: str, rows: bool = False) -> None:
    """Input ``j`` of ``node`` (a constant) becomes a new initializer holding it times ``s`` (a
    scalar, or a vector over its last axis; ``rows``: over its first axis)."""
    v = constant_weight(graph, node.inputs[j])
    s = np.asarray(s, v.dtype)
    if rows:
        s = s.reshape(-1, *([1] * (v.ndim - 1)))
    graph.set_input(node, j, graph.add_initializer(f"{node.name}_{by}", v * s))


def _channel_scale(graph: Graph, node: Node, t: str, n: int) -> np.ndarray | None:
    """The factors of ``Mul(t, g)`` / ``Mul(g, t)`` / ``Div(t, g)`` with ``g`` a constant whose only
    dimension past 1 is the last, of ``n`` (the projection's output channels), and of no higher
    rank than ``t`` (it would broadcast ``t`` up)."""
    if not plain(node, "Mul", "Div") or len(node.inputs) != 2 or node.inputs.count(t) != 1:
        return None
    j = 1 - node.inputs.index(t)
    g = graph.constant_value(node.inputs[j])
    rank = graph.rank(t)
    if (g is None or g.dtype.kind != "f" or g.ndim == 0 or g.shape[-1] != n or g.size != n or rank is None or g.ndim > rank
            or (node.op_type == "Div" and (j == 0 or not np.all(g != 0)))):
        return None
    g = g.reshape(-1).astype(np.float64)
    return g if node.op_type == "Mul" else 1.0 / g


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
            proj = _source_projection(graph, data) if data is not None else None
            if proj is None:
                continue
            s = scalar_scale(graph, node, data)
            if s is None and proj.y == data:
                s = _channel_scale(graph, node, data, proj.w.shape[1])
            if s is None or not np.all(np.isfinite(s)):
                continue
            mm = proj.nodes[0]
            _scaled(graph, mm, 1, s, "w_scaled", rows=mm.op_type == "Gemm" and bool(mm.attr("transB", 0)))
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
