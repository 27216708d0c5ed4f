"""Transpose handlers (or declines with their reasons) for the detection, sampling and indexing
ops: NonMaxSuppression, RoiAlign, GridSample, AffineGrid, DeformConv, MaxUnpool, LpPool, CumProd,
ReverseSequence, CenterCropPad, Compress, Unique.

The layout-sensitive ones among them (LpPool, GridSample, RoiAlign, DeformConv) are switched to
channels-last by ``to_channels_last`` instead; a Transpose that still feeds one (an input of a rank
the switch does not take) is declined here with that reason.
"""
from __future__ import annotations

from graph_convert.ir import Graph, Node
from graph_convert.ir import perm as P
from graph_convert_passes.lib.transpose_handlers import cumsum, with_axis
from graph_convert_passes.lib.transpose_push import Handler, decline, push


def _declines(reason: str) -> Handler:
    def handler(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
        return decline(reason)

    return handler


def compress(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Compress along an axis: the same selection along the matching axis of the untransposed input."""
    if node.attr("axis") is None:
        return decline("Compress without an axis selects from the flattened input, whose order the Transpose sets")
    return with_axis("axis")(graph, node, perm, created_by)


def reverse_sequence(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """ReverseSequence: batch and time axes follow the permutation while both stay in {0, 1}."""
    if graph.rank(node.inputs[0]) != len(perm):
        return decline("the input's rank differs from the Transpose's")
    b, t = perm[int(node.attr("batch_axis", 1))], perm[int(node.attr("time_axis", 0))]
    if {b, t} != {0, 1}:
        return decline("ONNX keeps batch_axis and time_axis in {0, 1}; the Transpose moves them elsewhere")

    def update() -> None:
        node.set_attr("batch_axis", b)
        node.set_attr("time_axis", t)

    return push(graph, node, perm, [0], created_by, update=update)


def center_crop_pad(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """CenterCropPad: each (axis, size) pair moves to the matching axis of the untransposed input."""
    rank = len(perm)
    if graph.rank(node.inputs[0]) != rank:
        return decline("the input's rank differs from the Transpose's")
    axes = [int(a) % rank for a in (node.attr("axes") or range(rank))]
    new_axes = [P.remap_axis(a, perm) for a in axes]
    return push(graph, node, perm, [0], created_by, update=lambda: node.set_attr("axes", new_axes))


_LAYOUT_SWITCHED = ("layout-sensitive: to_channels_last switches it (ranks it takes) rather than pushing a "
                    "Transpose through it")

HANDLERS: dict[str, Handler] = {
    "CumProd": cumsum,
    "Compress": compress,
    "ReverseSequence": reverse_sequence,
    "CenterCropPad": center_crop_pad,
    "Unique": _declines("Unique's sorted order (lexicographic over slices) and flattening depend on the axis order"),
    "NonMaxSuppression": _declines("boxes (batch, box, 4) and scores (batch, class, box) have fixed axis meanings "
                                   "that the selected indices name"),
    "AffineGrid": _declines("theta (N, 2|3, 3|4) is an affine matrix, not a layout"),
    "MaxUnpool": _declines("its indices address positions of the channels-first output, flattened"),
    "LpPool": _declines(_LAYOUT_SWITCHED),
    "GridSample": _declines(_LAYOUT_SWITCHED),
    "RoiAlign": _declines(_LAYOUT_SWITCHED),
    "DeformConv": _declines(_LAYOUT_SWITCHED),
}
