"""Fold channel permutations into neighbouring Conv weights.

- ``Gather(axis=1, permutation)`` read only by Convs: permute the Convs' input channels instead.
- ``Gather(axis=1, permutation)`` of a Conv output used nowhere else: permute that Conv's output
  channels (weights and bias) instead.
- ``DepthToSpace(mode=CRD)`` of such a Conv output: reorder the Conv's output channels to DCR,
  which TFLite's DEPTH_TO_SPACE computes natively (no 6-D TRANSPOSE).
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.passes import Pass, PassContext, PassResult


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


def output_foldable(graph: Graph, producer: Node | None, tensor: str) -> bool:
    return (_plain_conv(graph, producer) and producer.outputs[0] == tensor and producer.attr("group", 1) == 1
            and len(graph.consumers(tensor)) == 1 and not graph.is_graph_output(tensor))


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
                prod = graph.producer(src)
                if shape is None or not isinstance(shape[1], int) or not output_foldable(graph, prod, src):
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
            elif output_foldable(graph, graph.producer(x), x) and not graph.is_graph_output(y):
                permute_conv_outputs(graph, graph.producer(x), idx)
                graph.replace_all_uses(y, x)
                graph.remove_node(node, force=True)
                folded += 1
        return PassResult(folded > 0, {"folded": folded} if folded else {})


PASS = FoldChannelPermutation
