"""Layout through quantization: Transposes move through QuantizeLinear/DequantizeLinear.

Q and DQ are elementwise: per-tensor they move a Transpose like any unary op; per-axis the axis
is remapped; blocked (scale of the data's rank) the scale and zero point are transposed too. A
Conv whose weight is ``DequantizeLinear(int8 constant)`` gets its kernel layout by transposing
that constant (the axis remapped), so the kernel stays a dequantized constant the TF emitter
can declare with its scales (graph_convert/backends/tensorflow/quant_grid.py).
"""
from __future__ import annotations

from graph_convert.ir import perm as P
from graph_convert.ir import Graph, Node
from graph_convert_passes.lib.transpose_push import decline, push


def _axis(graph: Graph, node: Node) -> int | None:
    rank = graph.rank(node.inputs[0])
    if rank is None:
        return None
    a = node.attr("axis", 1)
    return a + rank if a < 0 else a


def quantize_linear(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """QuantizeLinear / DequantizeLinear (data input 0; scale 1 and zero point 2)."""
    rank = len(perm)
    if graph.rank(node.inputs[0]) != rank:
        return decline("the data's rank differs from the Transpose's")
    srank = graph.rank(node.inputs[1])
    sshape = graph.shape(node.inputs[1])
    outs = [perm] + [None] * (len(node.outputs) - 1)
    if srank == 0 or (srank == 1 and sshape is not None and tuple(sshape) == (1,) and not node.attr("block_size", 0)):
        return push(graph, node, perm, [0], created_by, outs)
    axis = _axis(graph, node)
    if axis is None:
        return decline("the data's rank is unknown")
    update = lambda: node.set_attr("axis", P.remap_axis(axis, perm))  # noqa: E731
    if srank == 1:
        return push(graph, node, perm, [0], created_by, outs, update)
    if srank == rank and node.attr("block_size", 0):
        data = [j for j in (0, 1, 2) if j < len(node.inputs) and node.inputs[j]]
        return push(graph, node, perm, data, created_by, outs, update)
    return decline("a scale of unknown or unexpected rank")


def transposed_dequantize(graph: Graph, tensor: str, perm: tuple, created_by: str) -> str | None:
    """``Transpose(tensor, perm)`` as a new DequantizeLinear of the transposed int8 constant
    when ``tensor`` is a DequantizeLinear of constants; else None (nothing changed)."""
    node = graph.producer(tensor)
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    if graph.constant_value(node.inputs[0]) is None or any(t and graph.constant_value(t) is None for t in node.inputs[1:]):
        return None
    if node.attr("block_size", 0):
        return None
    axis = _axis(graph, node)
    if axis is None or graph.rank(node.inputs[0]) != len(perm):
        return None
    q = graph.transposed_constant(node.inputs[0], perm)
    attrs = {"axis": P.invert(perm)[axis]} if graph.rank(node.inputs[1]) == 1 else {}
    new = graph.add_node("DequantizeLinear", [q, *node.inputs[1:]], 1, attrs=attrs, created_by=created_by)
    shape = graph.shape(tensor)
    graph.set_info(new.outputs[0], graph.dtype(tensor), None if shape is None else P.apply_to_shape(shape, perm))
    return new.outputs[0]


def dynamic_quantize_linear(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """DynamicQuantizeLinear: the data moves, its scalar scale and zero point do not."""
    return push(graph, node, perm, [0], created_by, [perm, None, None])


HANDLERS = {"QuantizeLinear": quantize_linear, "DequantizeLinear": quantize_linear,
            "DynamicQuantizeLinear": dynamic_quantize_linear}
