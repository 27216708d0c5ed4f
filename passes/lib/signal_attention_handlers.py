"""Transpose handlers for the signal-processing and attention ops (DFT, STFT, Attention,
RotaryEmbedding), kept beside :mod:`transpose_handlers` and registered with its table.

DFT moves a Transpose below it by transforming the matching axis of the untransposed tensor,
as long as the Transpose keeps the last axis (the real/imaginary parts) last. The others read
their axes by position (STFT: ``[batch, length, 1|2]``; Attention and RotaryEmbedding:
``(batch, heads, sequence, head_size)`` or ``(batch, sequence, hidden)``): a Transpose in front
of them is a real rearrangement of data they cannot take over, so they decline with that reason.
Attention's head split is taken off the data path by ``heads_first`` instead (the projections'
weights go head-major), which needs no handler here.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert_passes.lib.transpose_handlers import Handler, decline, push, transpose_perm


def dft(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """``DFT(Transpose(x, p), axis=a)`` is ``Transpose(DFT(x, axis=p[a]), p)`` when ``p`` keeps the
    last axis in place; the axis is an attribute before opset 20 and a constant input from it."""
    r = len(perm)
    if transpose_perm(graph, node.inputs[0]) != perm or graph.rank(node.inputs[0]) != r:
        return decline("the Transpose does not feed the signal")
    if perm[-1] != r - 1:
        return decline("the Transpose moves the last axis, which holds the real/imaginary parts")
    if graph.opset < 20:
        axis = node.attr("axis", 1) % r
        return push(graph, node, perm, [0], created_by, [perm], lambda: node.set_attr("axis", int(perm[axis])))
    given = len(node.inputs) > 2 and bool(node.inputs[2])
    value = graph.constant_value(node.inputs[2]) if given else np.array(-2)
    if value is None:
        return decline("the axis is not a constant")
    axis = int(value.reshape(-1)[0]) % r
    if perm[axis] == axis:
        return push(graph, node, perm, [0], created_by, [perm])

    def update() -> None:
        name = graph.add_initializer(f"{node.name}_axis", np.array(perm[axis], np.int64))
        while len(node.inputs) < 3:
            graph.add_input(node, "")
        graph.set_input(node, 2, name)

    return push(graph, node, perm, [0], created_by, [perm], update)


def _positional(what: str) -> Handler:
    def handler(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
        return decline(f"{node.op_type} reads {what} by position: a Transpose in front of it is data movement it cannot take over")

    return handler


HANDLERS: dict[str, Handler] = {
    "DFT": dft,
    "STFT": _positional("its signal as [batch, length, 1|2]"),
    "Attention": _positional("(batch, heads, sequence, head_size) or (batch, sequence, heads * head_size)"),
    "RotaryEmbedding": _positional("(batch, heads, sequence, head_size) or (batch, sequence, heads * head_size)"),
}
