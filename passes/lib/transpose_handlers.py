"""Per-op transpose handlers: how a Transpose feeding an op moves below it (step 2 of *wrap, then cancel*; README, "What the layout pass guarantees").

A handler is ``handler(graph, node, perm, created_by) -> bool``: ``node`` reads at least one
tensor produced by ``Transpose(perm)``; the handler either rewrites the graph so that ``node``
works on the untransposed tensors and a ``Transpose(perm)`` follows its outputs (returning True),
or leaves the graph untouched and returns ``decline(reason)`` (false, with the reason that
report.json gives for every Transpose left). Reusable building blocks: :func:`simple` (unary
elementwise), :func:`broadcast` (n-ary elementwise with broadcasting), :func:`with_axis`,
:func:`reduce`, :func:`pad`, :func:`slice_`, :func:`reshape_like`. Plugins add or override
entries through ``registry.add_transpose_handler``.
"""
from __future__ import annotations


import numpy as np

from graph_convert.ir import perm as P
from graph_convert.ir import Graph, Node

from graph_convert_passes.lib.transpose_push import (  # noqa: F401  (the handler API plugins use)
    Declined,
    Handler,
    decline,
    input_cost,
    output_credit,
    push,
    reason_of,
    transpose_outputs,
    transpose_perm,
    untranspose_input,
)
from graph_convert_passes.lib.transpose_reshape import (  # noqa: F401
    absorb_into_matmul,
    drop_axes,
    moves_whole,
    pull_through_reshape,
    reshape,
    reshape_groups,
    reshape_like,
    reshape_push,
    squeeze,
)


# --- reusable handlers ------------------------------------------------------------------------
def simple(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Unary elementwise op (extra inputs such as Clip's min/max are scalars)."""
    return push(graph, node, perm, [0], created_by, [perm] + [None] * (len(node.outputs) - 1))


def broadcast(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Elementwise op over all inputs with numpy broadcasting (Add, Mul, Where, PRelu, ...)."""
    rank = len(perm)
    data = []
    for j, t in enumerate(node.inputs):
        r = graph.rank(t) if t else rank
        if r == 0 and graph.constant_value(t) is None:
            continue  # a run-time scalar (a dynamic quantization scale) broadcasts the same in any layout
        if r is None or (r < rank and graph.constant_value(t) is None) or r > rank:
            return decline("an input's rank is unknown, higher, or lower without being a constant (broadcasting would change)")
        data.append(j)
    return push(graph, node, perm, data, created_by)


def with_axis(attr: str = "axis", default: int = 0, all_inputs: bool = False) -> Handler:
    """Op with one axis attribute (Concat, Softmax at opset >= 13, Gather's data, ...)."""

    def handler(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
        if node.op_type in ("Softmax", "LogSoftmax", "Hardmax") and graph.opset < 13:
            return decline('Softmax-like ops before opset 13 flatten from the axis on: the layout cannot move through')
        axis = node.attr(attr, default)
        data = list(range(len(node.inputs))) if all_inputs else [0]
        if any(graph.rank(node.inputs[j]) != len(perm) for j in data):
            return decline("an input's rank differs from the Transpose's")
        return push(graph, node, perm, data, created_by, update=lambda: node.set_attr(attr, P.remap_axis(axis, perm)))

    return handler


def reduce(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """ReduceX with axes as attribute or input; keepdims=0 drops axes from the output perm."""
    rank = len(perm)
    axes_from_input = len(node.inputs) > 1 and bool(node.inputs[1])
    if axes_from_input:
        axes_v = graph.constant_value(node.inputs[1])
        if axes_v is None:
            return decline('the reduced axes are not a constant')
        axes = [int(a) % rank for a in axes_v.reshape(-1)]
    else:
        axes = [int(a) % rank for a in (node.attr("axes") or [])]
    every = not axes  # no axes: every axis is reduced, in any layout (nothing to rewrite)
    if every:
        if node.attr("noop_with_empty_axes", 0):
            return simple(graph, node, perm, created_by)
        axes = list(range(rank))
    new_axes = sorted(perm[a] for a in axes)
    keep = node.attr("keepdims", 1)
    if keep:
        out_perm = perm
    else:
        kept_x = [a for a in range(rank) if a not in new_axes]  # axes of the new output, in x order
        out_perm = tuple(kept_x.index(perm[i]) for i in range(rank) if i not in axes)

    def update() -> None:
        if every:  # (an axes attribute would be invalid where axes are an input, opset 13+ ReduceSum)
            return
        if axes_from_input:
            graph.set_input(node, 1, graph.add_initializer(f"{node.name}_axes", np.array(new_axes, dtype=np.int64)))
        else:
            node.set_attr("axes", new_axes)

    return push(graph, node, perm, [0], created_by, [out_perm] + [None] * (len(node.outputs) - 1), update)


def cumsum(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """CumSum: the axis is a (constant) input; ``exclusive``/``reverse`` do not depend on the layout."""
    if len(node.inputs) < 2 or graph.rank(node.inputs[0]) != len(perm):
        return decline("not a CumSum of an input of the Transpose's rank")
    axis_v = graph.constant_value(node.inputs[1])
    if axis_v is None or axis_v.size != 1:
        return decline('the axis is not a constant scalar')
    new_axis = np.array(P.remap_axis(int(axis_v.reshape(-1)[0]), perm), dtype=axis_v.dtype).reshape(axis_v.shape)

    def update() -> None:
        graph.set_input(node, 1, graph.add_initializer(f"{node.name}_axis", new_axis))

    return push(graph, node, perm, [0], created_by, update=update)


def arg_reduce(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """ArgMax/ArgMin: one axis attribute; keepdims=0 drops it from the output perm. The indices
    count positions along that axis, which no permutation of the other axes changes."""
    rank = len(perm)
    if graph.rank(node.inputs[0]) != rank:
        return decline("the input's rank differs from the Transpose's")
    axis = node.attr("axis", 0) % rank
    new_axis = perm[axis]
    if node.attr("keepdims", 1):
        out_perm = perm
    else:
        kept_x = [a for a in range(rank) if a != new_axis]
        out_perm = tuple(kept_x.index(perm[i]) for i in range(rank) if i != axis)
    return push(graph, node, perm, [0], created_by, [out_perm], lambda: node.set_attr("axis", new_axis))


def pad(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    rank = len(perm)
    if len(node.inputs) > 3 and node.inputs[3]:  # explicit axes (opset 18): keep it simple and exact
        return decline('explicit axes input (opset 18) is not remapped')
    if len(node.inputs) > 1 and node.inputs[1]:
        pads = graph.constant_value(node.inputs[1])
        if pads is None:
            return decline('the pads are not a constant')
        pads = [int(v) for v in pads.reshape(-1)]
    else:
        pads = list(node.attr("pads") or [])
    if len(pads) != 2 * rank:
        return decline('the pads do not cover every axis')
    new = [0] * (2 * rank)
    for i in range(rank):
        new[perm[i]], new[rank + perm[i]] = pads[i], pads[rank + i]

    def update() -> None:
        if len(node.inputs) > 1 and node.inputs[1]:
            graph.set_input(node, 1, graph.add_initializer(f"{node.name}_pads", np.array(new, dtype=np.int64)))
        else:
            node.set_attr("pads", new)

    return push(graph, node, perm, [0], created_by, update=update)


def slice_(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    rank = len(perm)
    if graph.opset < 10:
        axes = node.attr("axes")
        if axes is None:
            axes = list(range(len(node.attr("starts"))))
        new = [perm[int(a) % rank] for a in axes]
        return push(graph, node, perm, [0], created_by, update=lambda: node.set_attr("axes", new))
    starts = graph.constant_value(node.inputs[1])
    if len(node.inputs) > 3 and node.inputs[3]:
        axes_v = graph.constant_value(node.inputs[3])
        if axes_v is None:
            return decline('the axes are not a constant')
        axes = [int(a) % rank for a in axes_v.reshape(-1)]
    else:
        if starts is None:
            return decline('the starts are not a constant')
        axes = list(range(starts.size))
    new_axes = np.array([perm[a] for a in axes], dtype=np.int64)

    def update() -> None:
        name = graph.add_initializer(f"{node.name}_axes", new_axes)
        if len(node.inputs) > 3:
            graph.set_input(node, 3, name)
        else:
            while len(node.inputs) < 3:
                graph.add_input(node, "")
            graph.add_input(node, name)

    return push(graph, node, perm, [0], created_by, update=update)


def merge_transpose(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Transpose(q) after Transpose(p): one Transpose of the composite, or none if identity."""
    q = tuple(node.attr("perm") or reversed(range(len(perm))))
    src = graph.producer(node.inputs[0]).inputs[0]
    total = P.compose(perm, q)
    y = node.outputs[0]
    if P.is_identity(total):
        if not graph.is_graph_output(y):
            graph.replace_all_uses(y, src)
            graph.remove_node(node, force=True)
            return True
        # a graph output keeps its name: an Identity (free in TF and TFLite) carries it
        graph.set_input(node, 0, src)
        node.op_type = "Identity"
        node.del_attr("perm")
        return True
    graph.set_input(node, 0, src)
    node.set_attr("perm", list(total))
    return True


def gather(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Gather from ``Transpose(perm)(data)`` with a scalar or 1-D index: gather along the matching
    axis of ``data``; a scalar index drops that axis from the perm that follows (often leaving
    none, e.g. the q/k/v selection of nn.MultiheadAttention's packed projection)."""
    if transpose_perm(graph, node.inputs[0]) != perm or graph.rank(node.inputs[0]) != len(perm):
        return decline("the data input is not the Transpose's output")
    r_idx = graph.rank(node.inputs[1])
    if r_idx not in (0, 1):
        return decline('the index is not a scalar or 1-D')
    axis = node.attr("axis", 0) % len(perm)
    out_perm = drop_axes(perm, [axis]) if r_idx == 0 else perm
    if not moves_whole(graph, node.inputs[0], out_perm):
        return decline('after gathering, the Transpose would still move data')
    return push(graph, node, perm, [0], created_by, [out_perm], lambda: node.set_attr("axis", perm[axis]))


UNARY = [
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Not", "Cast", "Clip", "Identity", "ThresholdedRelu", "IsNaN", "IsInf",
    "Shrink", "Dropout", "CastLike", "Swish",
    # the local-function forms of fused activations (passes/lib/fused_ops.py)
    "graph_convert::Gelu", "graph_convert::GeluTanh", "graph_convert::Swish", "graph_convert::HardSwish",
    "graph_convert::Mish",
]
BROADCAST = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal",
             "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift"]

HANDLERS: dict[str, Handler] = {op: simple for op in UNARY}
HANDLERS["CastLike"] = broadcast
HANDLERS.update({op: broadcast for op in BROADCAST})
HANDLERS.update({
    "Concat": with_axis("axis", all_inputs=True),
    "Softmax": with_axis("axis", -1),
    "LogSoftmax": with_axis("axis", -1),
    "Split": with_axis("axis", 0),
    "Squeeze": squeeze,
    "Gather": gather,
    "Unsqueeze": reshape_like,
    "Transpose": merge_transpose,
    "Pad": pad,
    "CumSum": cumsum,
    "ArgMax": arg_reduce,
    "ArgMin": arg_reduce,
    "TopK": with_axis("axis", -1),
    "Slice": slice_,
    "Reshape": reshape,
    "Flatten": reshape,
    **{op: reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                             "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
})
