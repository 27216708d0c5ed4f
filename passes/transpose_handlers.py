"""Per-op transpose handlers: how a Transpose feeding an op moves below it (step 2 of DESIGN.md).

A handler is ``handler(graph, node, perm, created_by) -> bool``: ``node`` reads at least one
tensor produced by ``Transpose(perm)``; the handler either rewrites the graph so that ``node``
works on the untransposed tensors and a ``Transpose(perm)`` follows its outputs (returning True),
or leaves the graph untouched (False). Reusable building blocks: :func:`simple` (unary
elementwise), :func:`broadcast` (n-ary elementwise with broadcasting), :func:`with_axis`,
:func:`reduce`, :func:`pad`, :func:`slice_`, :func:`reshape_like`. Plugins add or override
entries through ``registry.add_transpose_handler``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from graph_convert import perm as P
from graph_convert.ir import Graph, Node

Handler = Callable[[Graph, Node, tuple, str], bool]


def transpose_perm(graph: Graph, tensor: str) -> tuple | None:
    """Perm of the Transpose producing ``tensor`` (None if not produced by a plain Transpose)."""
    prod = graph.producer(tensor)
    if prod is None or prod.op_type != "Transpose" or prod.domain not in ("", "ai.onnx") or prod.is_layout_marked:
        return None
    p = prod.attr("perm")
    if p is None:
        r = graph.rank(prod.inputs[0])
        return None if r is None else tuple(reversed(range(r)))
    return tuple(p)


def input_cost(graph: Graph, tensor: str, perm: tuple) -> int | None:
    """Cost of making ``tensor`` available transposed by ``invert(perm)``: -1 when an existing
    Transpose cancels, 0 for a constant (folded), +1 for a new Transpose, None if impossible."""
    if not tensor:
        return 0
    if transpose_perm(graph, tensor) == perm:
        return -1
    if graph.constant_value(tensor) is not None:
        return 0
    r = graph.rank(tensor)
    return 1 if r == len(perm) else None


def untranspose_input(graph: Graph, tensor: str, perm: tuple, created_by: str) -> str:
    """``tensor`` transposed by ``invert(perm)``, cancelling or folding where possible.
    Lower-rank constants are broadcast-aligned (leading 1s) first."""
    inv = P.invert(perm)
    if transpose_perm(graph, tensor) == perm:
        return graph.producer(tensor).inputs[0]
    value = graph.constant_value(tensor)
    if value is not None:
        if value.ndim < len(perm):
            value = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
        if value.ndim == 0 or all(d == 1 for d in value.shape):
            return graph.add_initializer(f"{tensor}_T", value.reshape(P.apply_to_shape(value.shape, inv)))
        return graph.add_initializer(f"{tensor}_T", np.ascontiguousarray(np.transpose(value, inv)))
    return graph.add_transpose(tensor, inv, created_by=created_by)


def transpose_outputs(graph: Graph, node: Node, out_perms: Sequence[tuple | None], created_by: str) -> None:
    """Rename each output ``y`` of ``node`` to ``y'`` and add ``y = Transpose(y', perm)``."""
    for k, p in enumerate(out_perms):
        y = node.outputs[k]
        if not y or p is None:
            continue
        inner = graph.fresh_name(f"{y}_pushed")
        shape = graph.shape(y)
        graph.set_output(node, k, inner)
        graph.set_info(inner, graph.dtype(y), None if shape is None else P.apply_to_shape(shape, P.invert(p)))
        graph.add_node("Transpose", [inner], [y], attrs={"perm": list(p)}, created_by=created_by)


def push(graph: Graph, node: Node, perm: tuple, data_inputs: Sequence[int], created_by: str,
         out_perms: Sequence[tuple | None] | None = None, update: Callable[[], None] | None = None) -> bool:
    """Generic push: decide by cost, rewrite ``data_inputs``, apply ``update``, transpose outputs."""
    costs = [input_cost(graph, node.inputs[j], perm) for j in data_inputs if j < len(node.inputs)]
    if any(c is None for c in costs) or sum(costs) >= 0:
        return False
    for j in data_inputs:
        if j < len(node.inputs) and node.inputs[j]:
            graph.set_input(node, j, untranspose_input(graph, node.inputs[j], perm, created_by))
    if update is not None:
        update()
    transpose_outputs(graph, node, out_perms if out_perms is not None else [perm] * len(node.outputs), created_by)
    return True


# --- reusable handlers ------------------------------------------------------------------------
def simple(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Unary elementwise op (extra inputs such as Clip's min/max are scalars)."""
    return push(graph, node, perm, [0], created_by, [perm] + [None] * (len(node.outputs) - 1))


def broadcast(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Elementwise op over all inputs with numpy broadcasting (Add, Mul, Where, PRelu, ...)."""
    rank = len(perm)
    for t in node.inputs:
        r = graph.rank(t) if t else rank
        if r is None or (r < rank and graph.constant_value(t) is None) or r > rank:
            return False
    return push(graph, node, perm, list(range(len(node.inputs))), created_by)


def with_axis(attr: str = "axis", default: int = 0, all_inputs: bool = False) -> Handler:
    """Op with one axis attribute (Concat, Softmax at opset >= 13, Gather's data, ...)."""

    def handler(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
        if node.op_type in ("Softmax", "LogSoftmax", "Hardmax") and _opset(graph) < 13:
            return False
        axis = node.attr(attr, default)
        data = list(range(len(node.inputs))) if all_inputs else [0]
        if any(graph.rank(node.inputs[j]) != len(perm) for j in data):
            return False
        return push(graph, node, perm, data, created_by, update=lambda: node.set_attr(attr, P.remap_axis(axis, perm)))

    return handler


def _opset(graph: Graph) -> int:
    return dict(graph.model_meta.get("opset_import", [("", 17)])).get("", 17)


def reduce(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """ReduceX with axes as attribute or input; keepdims=0 drops axes from the output perm."""
    rank = len(perm)
    axes_from_input = len(node.inputs) > 1 and bool(node.inputs[1])
    if axes_from_input:
        axes_v = graph.constant_value(node.inputs[1])
        if axes_v is None:
            return False
        axes = [int(a) % rank for a in axes_v.reshape(-1)]
    else:
        axes = [int(a) % rank for a in (node.attr("axes") or [])]
    if not axes:
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
        if axes_from_input:
            graph.set_input(node, 1, graph.add_initializer(f"{node.name}_axes", np.array(new_axes, dtype=np.int64)))
        else:
            node.set_attr("axes", new_axes)

    return push(graph, node, perm, [0], created_by, [out_perm] + [None] * (len(node.outputs) - 1), update)


def pad(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    rank = len(perm)
    if len(node.inputs) > 3 and node.inputs[3]:  # explicit axes (opset 18): keep it simple and exact
        return False
    if len(node.inputs) > 1 and node.inputs[1]:
        pads = graph.constant_value(node.inputs[1])
        if pads is None:
            return False
        pads = [int(v) for v in pads.reshape(-1)]
    else:
        pads = list(node.attr("pads") or [])
    if len(pads) != 2 * rank:
        return False
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
    if _opset(graph) < 10:
        axes = node.attr("axes")
        if axes is None:
            axes = list(range(len(node.attr("starts"))))
        new = [perm[int(a) % rank] for a in axes]
        return push(graph, node, perm, [0], created_by, update=lambda: node.set_attr("axes", new))
    starts = graph.constant_value(node.inputs[1])
    if len(node.inputs) > 3 and node.inputs[3]:
        axes_v = graph.constant_value(node.inputs[3])
        if axes_v is None:
            return False
        axes = [int(a) % rank for a in axes_v.reshape(-1)]
    else:
        if starts is None:
            return False
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


def reshape_like(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Reshape/Flatten/Squeeze/Unsqueeze of a Transpose that only moves size-1 axes: the
    Transpose does not change the element order, so the op can read the untransposed tensor."""
    t = node.inputs[0]
    src = graph.producer(t).inputs[0]
    src_shape = graph.shape(src)
    t_shape = graph.shape(t)
    if src_shape is None or t_shape is None or not P.is_memory_order_preserving(src_shape, perm):
        return False
    if node.op_type == "Flatten":
        axis = node.attr("axis", 1) % max(len(perm), 1)
        if set(perm[:axis]) != set(range(axis)):
            return False
    elif node.op_type == "Reshape":
        target = graph.constant_value(node.inputs[1])
        if target is None:
            return False
        target = [int(v) for v in target.reshape(-1)]
        if not node.attr("allowzero", 0) and 0 in target:
            for i, v in enumerate(target):
                if v == 0:
                    if i < len(perm) and perm[i] == i:
                        continue
                    if i < len(t_shape) and isinstance(t_shape[i], int):
                        target[i] = t_shape[i]
                    else:
                        return False
            graph.set_input(node, 1, graph.add_initializer(f"{node.name}_shape", np.array(target, dtype=np.int64)))
    else:  # Squeeze/Unsqueeze: axes depend on the layout, so become a Reshape to the static shape
        out_shape = graph.shape(node.outputs[0])
        if out_shape is None or any(not isinstance(d, int) for d in out_shape) or len(node.inputs) > 2:
            return False
        shape_name = graph.add_initializer(f"{node.name}_shape", np.array(out_shape, dtype=np.int64))
        node.op_type, node.attrs = "Reshape", {}
        if len(node.inputs) > 1:
            graph.set_input(node, 1, shape_name)
        else:
            graph.add_input(node, shape_name)
    graph.set_input(node, 0, src)
    return True


UNARY = [
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Not", "Cast", "Clip", "Identity", "ThresholdedRelu", "IsNaN", "IsInf",
    "Shrink", "Dropout", "CastLike",
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
    "Squeeze": reshape_like,
    "Unsqueeze": reshape_like,
    "Transpose": merge_transpose,
    "Pad": pad,
    "Slice": slice_,
    "Reshape": reshape_like,
    "Flatten": reshape_like,
    **{op: reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                             "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
})
