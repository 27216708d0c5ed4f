"""Switch layout-sensitive ops to channels-last: step 1 of *wrap, then cancel* (README, "What the layout pass guarantees").

Each such node gets its activations in N...C (explicit Transposes inserted before and after, so
the graph computes exactly what it did) and its weights rewritten in place to the TF layout
(Conv OIHW->HWIO, ConvTranspose IOHW->[k..., out, in]). The node records both layouts in
``in_perms``/``out_perms``; lowering turns them back into Transposes, so ORT checks every rewrite.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graph_convert.ir import perm as P
from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.lib.quantized_layout import transposed_dequantize


def kernel_to_tf(rank: int) -> tuple[int, ...]:
    """Weight perm for Conv/ConvTranspose of activation rank ``rank``: (O|I, I|O, k...) -> (k..., I|O, O|I).

    >>> kernel_to_tf(4)
    (2, 3, 1, 0)
    """
    return (*range(2, rank), 1, 0)


@dataclass(frozen=True)
class LayoutSpec:
    """How an op is switched: which inputs are activations, which are weights (with their perm)."""

    activations: tuple[int, ...] = (0,)
    weights: dict[int, str] = field(default_factory=dict)
    outputs: tuple[int, ...] = (0,)
    ranks: tuple[int, ...] = (3, 4, 5)
    unused_outputs: tuple[int, ...] = ()  # outputs that must be unused (e.g. MaxPool indices)


_CONV = LayoutSpec(weights={1: "kernel"})
CHANNELS_LAST_OPS: dict[str, LayoutSpec] = {
    "Conv": _CONV,
    "ConvTranspose": _CONV,
    "ConvInteger": LayoutSpec(weights={1: "kernel"}, ranks=(4,)),  # dynamic quantization's conv
    "MaxPool": LayoutSpec(unused_outputs=(1,)),
    "AveragePool": LayoutSpec(),
    "GlobalAveragePool": LayoutSpec(),
    "GlobalMaxPool": LayoutSpec(),
    "DepthToSpace": LayoutSpec(ranks=(4,)),
    "SpaceToDepth": LayoutSpec(ranks=(4,)),
    # per-channel or spatial ops whose emitters read the marks (scales/sizes stay in ONNX order)
    "Resize": LayoutSpec(),
    "Upsample": LayoutSpec(),
    "InstanceNormalization": LayoutSpec(),
    "LRN": LayoutSpec(),
    "LpPool": LayoutSpec(),
    # sampling and RoI ops gather channel rows: channels-last is their natural layout (the grid,
    # the RoIs and DeformConv's weight keep theirs; offset and mask are per-position like X)
    "GridSample": LayoutSpec(ranks=(4, 5)),
    "RoiAlign": LayoutSpec(ranks=(4,)),
    "DeformConv": LayoutSpec(activations=(0, 2, 4), weights={1: "kernel"}, ranks=(4,)),
}


def switch_node(graph: Graph, node: Node, spec: LayoutSpec, created_by: str) -> bool:
    x = node.inputs[0]
    rank = graph.rank(x)
    if rank not in spec.ranks:
        return False
    if any(k < len(node.outputs) and node.outputs[k] and graph.num_uses(node.outputs[k]) for k in spec.unused_outputs):
        return False
    cl, cf = P.channels_last(rank), P.channels_first(rank)
    in_perms: list[tuple | None] = [None] * len(node.inputs)
    for j in spec.activations:
        if j >= len(node.inputs) or not node.inputs[j]:  # an optional input left out
            continue
        graph.set_input(node, j, graph.add_transpose(node.inputs[j], cl, created_by=created_by))
        in_perms[j] = cl
    for j, kind in spec.weights.items():
        if j >= len(node.inputs) or not node.inputs[j]:
            continue
        wp = kernel_to_tf(rank)
        w = node.inputs[j]
        if graph.constant_value(w) is not None:
            graph.set_input(node, j, graph.transposed_constant(w, wp))
        elif (moved := transposed_dequantize(graph, w, wp, created_by)) is not None:  # its int8 constant moves
            graph.set_input(node, j, moved)
        else:
            graph.set_input(node, j, graph.add_transpose(w, wp, created_by=created_by))
        in_perms[j] = wp
    out_perms: list[tuple | None] = [None] * len(node.outputs)
    for k in spec.outputs:
        y = node.outputs[k]
        y_cl = graph.fresh_name(f"{y}_nhwc")
        shape = graph.shape(y)
        graph.set_output(node, k, y_cl)
        graph.set_info(y_cl, graph.dtype(y), None if shape is None else P.apply_to_shape(shape, cl))
        graph.add_node("Transpose", [y_cl], [y], attrs={"perm": list(cf)}, created_by=created_by)
        out_perms[k] = cl
    node.in_perms, node.out_perms = in_perms, out_perms
    return True


class ToChannelsLast(Pass):
    name = "to_channels_last"
    phase = "layout"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        table = {**CHANNELS_LAST_OPS, **ctx.options.get("channels_last_ops", {})}
        switched: dict[str, int] = {}
        for node in graph.nodes:
            spec = table.get(node.op_type)
            if spec is None or node.domain not in ("", "ai.onnx") or node.is_layout_marked:
                continue
            if switch_node(graph, node, spec, self.name):
                switched[node.op_type] = switched.get(node.op_type, 0) + 1
        return PassResult(bool(switched), {"switched": switched} if switched else {})


PASS = ToChannelsLast
