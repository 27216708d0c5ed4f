"""Fold channel permutations into neighbouring Conv weights.

- ``Gather(axis=1, permutation)`` read only by Convs: permute the Convs' input channels instead.
- ``Gather(axis=1, permutation)`` of a Conv output used nowhere else: permute that Conv's output
  channels (weights and bias) instead.
- ``DepthToSpace(mode=CRD)`` of such a Conv output: reorder the Conv's output channels to DCR,
  which TFLite's DEPTH_TO_SPACE computes natively (no 6-D TRANSPOSE).

"A Conv output" may also be reached through single-use elementwise unary ops (Relu, Sigmoid,
Clip with scalar bounds, ...): they act on every element alike, so they commute with any channel
permutation.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult


def _perm_of(graph: Graph, node: Node) -> np.ndarray | None:
    if node.op_type != "Gather" or node.attr("axis", 0) != 1 or node.is_layout_marked:
        return None
    idx = graph.constant_value(node.inputs[1])
    if idx is None or idx.ndim != 1:
        return None
    idx = idx.astype(np.int64)
    n = graph.shape(node.inputs[0])
    if n is None or not isinstance(n[1], int) or len(idx) != n[1]:
        return None
    idx = np.where(idx < 0, idx + n[1], idx)
    return idx if sorted(idx.tolist()) == list(range(n[1])) else None


def _plain_conv(graph: Graph, node: Node | None) -> bool:
    return (node is not None and node.op_type == "Conv" and node.domain in ("", "ai.onnx") and not node.is_layout_marked
            and graph.constant_value(node.inputs[1]) is not None
            and (len(node.inputs) < 3 or not node.inputs[2] or graph.constant_value(node.inputs[2]) is not None))


def input_foldable(graph: Graph, consumer: Node, tensor: str) -> bool:
    """Can a channel permutation of ``tensor`` be folded into ``consumer``'s input channels?"""
    return _plain_conv(graph, consumer) and consumer.inputs[0] == tensor and consumer.attr("group", 1) == 1 and tensor not in consumer.inputs[1:]


# elementwise ops that treat every element alike (extra inputs, if any, must be scalars)
_CHANNEL_FREE = {
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Identity", "ThresholdedRelu", "Shrink", "Clip", "Swish",
    # the local-function forms of fused activations (passes/lib/fused_ops.py), keyed "domain::op"
    "graph_convert::Gelu", "graph_convert::GeluTanh", "graph_convert::Swish", "graph_convert::HardSwish",
    "graph_convert::Mish",
}


def _channel_free(graph: Graph, node: Node | None) -> bool:
    if node is None or node.is_layout_marked:
        return False
    if (node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}") not in _CHANNEL_FREE:
        return False
    for t in node.inputs[1:]:
        if t:
            v = graph.constant_value(t)
            if v is None or v.size != 1:
                return False
    return len(node.outputs) == 1


def conv_source(graph: Graph, tensor: str) -> Node | None:
    """The plain Conv whose output reaches ``tensor`` through single-use channel-free elementwise
    ops (or directly), each intermediate used once and not a graph output; else None."""
    if len(graph.consumers(tensor)) != 1 or graph.is_graph_output(tensor):
        return None
    prod = graph.producer(tensor)
    while _channel_free(graph, prod):
        tensor = prod.inputs[0]
        if len(graph.consumers(tensor)) != 1 or graph.is_graph_output(tensor):
            return None
        prod = graph.producer(tensor)
    if _plain_conv(graph, prod) and prod.outputs[0] == tensor and prod.attr("group", 1) == 1:
        return prod
    return None


def output_foldable(graph: Graph, producer: Node | None, tensor: str) -> bool:
    return producer is not None and conv_source(graph, tensor) is not None


def permute_conv_outputs(graph: Graph, conv: Node, idx: np.ndarray) -> None:
    """Output channel k of ``conv`` becomes its old channel idx[k]."""
    w = graph.constant_value(conv.inputs[1])
    graph.set_input(conv, 1, graph.add_initializer(f"{conv.inputs[1]}_perm", np.ascontiguousarray(w[idx])))
    if len(conv.inputs) > 2 and conv.inputs[2]:
        b = graph.constant_value(conv.inputs[2])
        graph.set_input(conv, 2, graph.add_initializer(f"{conv.inputs[2]}_perm", np.ascontiguousarray(b[idx])))


class FoldChannelPermutation(Pass):
    name = "fold_channel_permutation"
    phase = "canonicalize"
    before = ("to_channels_last",)
    after = ("fold_batchnorm",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for node in graph.nodes:
            if not graph.has_node(node.name):
                continue
            if node.op_type == "DepthToSpace" and node.attr("mode", "DCR") == "CRD" and not node.is_layout_marked:
                src = node.inputs[0]
                shape = graph.shape(src)
                prod = conv_source(graph, src)
                if shape is None or not isinstance(shape[1], int) or prod is None:
                    continue
                r = node.attr("blocksize")
                c = shape[1] // (r * r)
                # DCR channel (dy, dx, c) holds CRD channel (c, dy, dx)
                idx = np.arange(shape[1]).reshape(c, r, r).transpose(1, 2, 0).reshape(-1)
                permute_conv_outputs(graph, prod, idx)
                node.set_attr("mode", "DCR")
                folded += 1
                continue
            idx = _perm_of(graph, node)
            if idx is None:
                continue
            x, y = node.inputs[0], node.outputs[0]
            users = graph.consumers(y)
            if users and not graph.is_graph_output(y) and all(input_foldable(graph, u, y) for u in users):
                inv = np.argsort(idx)  # Conv(x[:, idx]) == Conv'(x) with W'[:, m] = W[:, inv[m]]
                for u in users:
                    w = graph.constant_value(u.inputs[1])
                    graph.set_input(u, 1, graph.add_initializer(f"{u.inputs[1]}_perm", np.ascontiguousarray(w[:, inv])))
                graph.replace_all_uses(y, x)
                graph.remove_node(node, force=True)
                folded += 1
            elif conv_source(graph, x) is not None and not graph.is_graph_output(y):
                permute_conv_outputs(graph, conv_source(graph, x), idx)
                graph.replace_all_uses(y, x)
                graph.remove_node(node, force=True)
                folded += 1
        return PassResult(folded > 0, {"folded": folded} if folded else {})


PASS = FoldChannelPermutation
