"""The machinery transpose handlers are written with: how a handler declines (:func:`decline`,
with the reason report.json gives for every Transpose left), the cost rules (a push must make
the graph cheaper), and :func:`push`, which moves ``Transpose(perm)`` from a node's inputs to its
outputs. The handlers themselves and their table: :mod:`graph_convert_passes.lib.transpose_handlers`."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from graph_convert.ir import perm as P
from graph_convert.ir import Graph, Node

Handler = Callable[[Graph, Node, tuple, str], bool]


class Declined:
    """A handler's refusal with its reason: false in a boolean test, so callers that only ask
    "did it move?" need nothing else (the rewriter idiom ``MatchResult.fail(reason)``)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Declined({self.reason!r})"


def decline(reason: str) -> Declined:
    return Declined(reason)


def reason_of(result) -> str:
    """Why a handler said no (a plugin's plain ``False`` gives no reason)."""
    return result.reason if isinstance(result, Declined) else "declined (the handler gave no reason)"


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
    Transpose cancels, 0 for a constant (folded) or when the transposition only moves size-1
    axes (a Reshape does it), +1 for a new Transpose, None if impossible."""
    if not tensor:
        return 0
    if transpose_perm(graph, tensor) == perm:
        return -1
    if graph.constant_value(tensor) is not None:
        return 0
    r = graph.rank(tensor)
    if r != len(perm):
        return None
    return 0 if reshape_target(graph, tensor, P.invert(perm)) is not None else 1


def reshape_target(graph: Graph, tensor: str, perm: tuple) -> list[int] | None:
    """Reshape target equal to ``transpose(tensor, perm)`` when that transpose keeps the element
    order (it only moves size-1 axes); None otherwise. Unknown dims kept in place become 0."""
    shape = graph.shape(tensor)
    if shape is None or not P.is_memory_order_preserving(shape, perm):
        return None
    target = []
    for i, a in enumerate(perm):
        d = shape[a]
        if isinstance(d, int):
            target.append(d)
        elif a == i:
            target.append(0)  # Reshape's 0 copies the input dim at the same index
        else:
            return None
    return target


def untranspose_input(graph: Graph, tensor: str, perm: tuple, created_by: str) -> str:
    """``tensor`` transposed by ``invert(perm)``, cancelling or folding where possible.
    Lower-rank constants are broadcast-aligned (leading 1s) first."""
    inv = P.invert(perm)
    if P.is_identity(perm):
        return tensor
    if transpose_perm(graph, tensor) == perm:
        return graph.producer(tensor).inputs[0]
    value = graph.constant_value(tensor)
    if value is not None:
        if value.ndim < len(perm):
            value = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
        if value.ndim == 0 or all(d == 1 for d in value.shape):
            return graph.add_initializer(f"{tensor}_T", value.reshape(P.apply_to_shape(value.shape, inv)))
        return graph.add_initializer(f"{tensor}_T", np.ascontiguousarray(np.transpose(value, inv)))
    target = reshape_target(graph, tensor, inv)
    if target is not None:
        shape_name = graph.add_initializer(f"{tensor}_shape", np.array(target, dtype=np.int64))
        node = graph.add_node("Reshape", [tensor, shape_name], 1, created_by=created_by)
        graph.set_info(node.outputs[0], graph.dtype(tensor), P.apply_to_shape(graph.shape(tensor), inv))
        return node.outputs[0]
    return graph.add_transpose(tensor, inv, created_by=created_by)


def transpose_outputs(graph: Graph, node: Node, out_perms: Sequence[tuple | None], created_by: str) -> None:
    """Rename each output ``y`` of ``node`` to ``y'`` and add ``y = Transpose(y', perm)``."""
    for k, p in enumerate(out_perms):
        y = node.outputs[k]
        if not y or p is None or P.is_identity(p):
            continue
        inner = graph.fresh_name(f"{y}_pushed")
        shape = graph.shape(y)
        graph.set_output(node, k, inner)
        graph.set_info(inner, graph.dtype(y), None if shape is None else P.apply_to_shape(shape, P.invert(p)))
        graph.add_node("Transpose", [inner], [y], attrs={"perm": list(p)}, created_by=created_by)


def output_credit(graph: Graph, tensor: str, perm: tuple | None) -> int:
    """-1 when a ``Transpose(perm)`` put on ``tensor`` would cancel: every reader of ``tensor`` is
    a plain Transpose undoing ``perm`` (the pair merges to an identity and both go); else 0."""
    if not tensor or perm is None or P.is_identity(perm) or graph.is_graph_output(tensor):
        return 0
    users = graph.consumers(tensor)
    if not users:
        return 0
    for u in users:
        if u.op_type != "Transpose" or u.domain not in ("", "ai.onnx") or u.is_layout_marked:
            return 0
        q = u.attr("perm")
        q = tuple(reversed(range(len(perm)))) if q is None else tuple(q)
        if len(q) != len(perm) or not P.is_identity(P.compose(perm, q)):
            return 0
    return -1


def push(graph: Graph, node: Node, perm: tuple, data_inputs: Sequence[int], created_by: str,
         out_perms: Sequence[tuple | None] | None = None, update: Callable[[], None] | None = None) -> bool:
    """Generic push: decide by cost, rewrite ``data_inputs``, apply ``update``, transpose outputs.
    The cost counts the Transposes cancelled or added at the inputs, and those the moved
    Transpose cancels right away below the node (its readers undo it)."""
    costs = [input_cost(graph, node.inputs[j], perm) for j in data_inputs if j < len(node.inputs)]
    if any(c is None for c in costs):
        return decline('an input cannot take the inverse layout (its rank or shape is unknown or differs)')
    outs = out_perms if out_perms is not None else [perm] * len(node.outputs)
    if sum(costs) >= 0 and sum(costs) + sum(output_credit(graph, y, p) for y, p in zip(node.outputs, outs)) >= 0:
        return decline('moving it would not lower the number of Transposes')
    for j in data_inputs:
        if j < len(node.inputs) and node.inputs[j]:
            graph.set_input(node, j, untranspose_input(graph, node.inputs[j], perm, created_by))
    if update is not None:
        update()
    transpose_outputs(graph, node, outs, created_by)
    return True
