"""Per-op transpose handlers: how a Transpose feeding an op moves below it (step 2 of DESIGN.md).

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
    return 0 if _reshape_target(graph, tensor, P.invert(perm)) is not None else 1


def _reshape_target(graph: Graph, tensor: str, perm: tuple) -> list[int] | None:
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
    target = _reshape_target(graph, tensor, inv)
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


def reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape ``a -> b`` into groups of contiguous axes with equal products.

    >>> reshape_groups((2, 6, 5), (2, 2, 3, 5))
    [([0], [0]), ([1], [1, 2]), ([2], [3])]
    >>> reshape_groups((2, 3, 4), (6, 4))
    [([0, 1], [0]), ([2], [1])]
    >>> reshape_groups((1, 1, 2, 4), (1, 2, 4))
    [([0], [0]), ([1, 2], [1]), ([3], [2])]
    """
    if any(not isinstance(d, int) or d <= 0 for d in (*a, *b)):
        return None
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ga, gb, pa, pb = [], [], 1, 1
        if i < len(a):
            ga.append(i); pa *= a[i]; i += 1  # noqa: E702
        if j < len(b):
            gb.append(j); pb *= b[j]; j += 1  # noqa: E702
        while pa != pb:
            if pa < pb and i < len(a):
                ga.append(i); pa *= a[i]; i += 1  # noqa: E702
            elif pb < pa and j < len(b):
                gb.append(j); pb *= b[j]; j += 1  # noqa: E702
            else:
                return None
        groups.append((ga, gb))
    return groups


def _group_key(x_axes: Sequence[int], shape: Sequence[int]) -> int:
    """Where a group sits in memory: its first axis of size > 1 (else its first axis)."""
    big = [ax for ax in x_axes if shape[ax] != 1]
    return min(big) if big else min(x_axes, default=len(shape))


def _consecutive(axes: Sequence[int]) -> bool:
    return all(b == a + 1 for a, b in zip(axes, axes[1:]))


def _nonunit_positions(axes: Sequence[int], shape: Sequence[int]) -> list[int]:
    """Positions of ``axes`` among the non-size-1 axes of ``shape`` (size-1 axes dropped)."""
    rank = {ax: k for k, ax in enumerate(i for i, d in enumerate(shape) if d != 1)}
    return [rank[ax] for ax in axes if shape[ax] != 1]


def reshape_push(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Reshape of ``Transpose(perm)(x)`` whose axis groups stay contiguous and ordered in ``x``:
    becomes ``Transpose(q)(Reshape(x))`` (channel splits/merges, patch flattening)."""
    if node.op_type != "Reshape":
        return decline('not a Reshape')
    u, y = node.inputs[0], node.outputs[0]
    s_u, s_y = graph.shape(u), graph.shape(y)
    s_x = graph.shape(graph.producer(u).inputs[0])
    if s_u is None or s_y is None or s_x is None:
        return decline('a shape is unknown')
    groups = reshape_groups(s_u, s_y)
    if groups is None:
        return decline('the reshape does not split into groups of whole axes')
    pre = None
    if not all(_consecutive(_nonunit_positions([perm[a] for a in ga], s_x)) for ga, _ in groups):
        split = _split_perm(perm, groups)
        if split is None:
            return decline("the reshape's axis groups are not contiguous in the untransposed tensor")
        pre, perm = split
        s_x = P.apply_to_shape(s_x, pre)
    order = sorted(range(len(groups)), key=lambda g: _group_key([perm[a] for a in groups[g][0]], s_x))
    new_axes = [j for g in order for j in groups[g][1]]  # y axes in x order
    q = tuple(new_axes.index(j) for j in range(len(s_y)))
    new_shape = [s_y[j] for j in new_axes]

    def update() -> None:
        graph.set_input(node, 1, graph.add_initializer(f"{node.name}_shape", np.array(new_shape, dtype=np.int64)))

    if pre is None:
        return push(graph, node, perm, [0], created_by, [q], update)
    # T(p) = T(p_b) o T(p_a): keep the within-group reorder p_a before the Reshape, move p_b below
    src = graph.producer(u).inputs[0]
    graph.set_input(node, 0, graph.add_transpose(src, pre, created_by=SPLIT_TAG))
    update()
    transpose_outputs(graph, node, [q], created_by)
    return True


SPLIT_TAG = "push_transposes:split"


def _split_perm(perm: tuple, groups) -> tuple[tuple, tuple] | None:
    """Factor ``perm`` as ``p_b`` after ``p_a`` where ``p_a`` only reorders axes within each reshape
    group and ``p_b`` moves whole groups (so it can pass through the Reshape). None if impossible."""
    p_a = list(range(len(perm)))
    p_b = [0] * len(perm)
    for ga, _ in groups:
        xs = [perm[a] for a in ga]
        slots = sorted(xs)
        if not _consecutive(slots):
            return None
        for k, a in enumerate(ga):
            p_a[slots[k]] = xs[k]
            p_b[a] = slots[k]
    if P.is_identity(p_a) or P.is_identity(p_b):
        return None  # nothing to keep, or nothing to move
    return tuple(p_a), tuple(p_b)


def absorb_into_matmul(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Flatten/Reshape to (batch, K) read only by MatMul/Gemm with a constant weight: flatten the
    untransposed tensor and permute the weight's K rows instead (no data movement at run time)."""
    u, y = node.inputs[0], node.outputs[0]
    s_u, s_x, s_y = graph.shape(u), graph.shape(graph.producer(u).inputs[0]), graph.shape(y)
    if s_u is None or s_x is None or s_y is None or len(s_y) != 2 or perm[0] != 0 or graph.is_graph_output(y):
        return decline('not a flatten to (batch, K) of a transposed tensor whose batch axis stays first')
    if node.op_type == "Flatten" and node.attr("axis", 1) != 1:
        return decline('Flatten with axis != 1')
    if any(not isinstance(d, int) for d in s_u[1:]) or s_y[1] != int(np.prod(s_u[1:])):
        return decline('the flattened dims are not static')
    users = graph.consumers(y)
    weights = []
    for c in users:
        if c.op_type == "Gemm" and c.inputs[0] == y and not c.attr("transA", 0) and c.inputs[1] != y:
            trans_b = bool(c.attr("transB", 0))
        elif c.op_type == "MatMul" and c.inputs[0] == y and c.inputs[1] != y:
            trans_b = False
        else:
            return decline('read by something other than a MatMul/Gemm taking it as its first input')
        w = graph.constant_value(c.inputs[1])
        if w is None or w.ndim != 2 or w.shape[1 if trans_b else 0] != s_y[1]:
            return decline('the matmul weight is not a constant of matching size')
        weights.append((c, w, trans_b))
    if not users:
        return decline('nothing reads it')
    inv = P.invert(perm)
    k_axes = [inv[a] - 1 for a in range(1, len(perm))]  # for each x axis, the u axis it came from
    for c, w, trans_b in weights:
        if trans_b:
            cube = w.reshape((w.shape[0], *s_u[1:]))
            new = np.transpose(cube, (0, *[k + 1 for k in k_axes])).reshape(w.shape)
        else:
            cube = w.reshape((*s_u[1:], w.shape[1]))
            new = np.transpose(cube, (*k_axes, len(k_axes))).reshape(w.shape)
        graph.set_input(c, 1, graph.add_initializer(f"{c.inputs[1]}_rows", np.ascontiguousarray(new)))
    if node.op_type == "Reshape":
        graph.set_input(node, 1, graph.add_initializer(f"{node.name}_shape", np.array([s_y[0] if isinstance(s_y[0], int) else 0, s_y[1]], dtype=np.int64)))
    graph.set_input(node, 0, graph.producer(u).inputs[0])
    return True


def reshape(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Reshape/Flatten: drop an order-keeping Transpose, else push by axis groups, else absorb
    into the following matmul weights; otherwise keep the Transpose (never a wrong answer)."""
    reasons = []
    for attempt in (reshape_like, reshape_push, absorb_into_matmul):
        done = attempt(graph, node, perm, created_by)
        if done:
            return done
        reasons.append(f"{attempt.__name__}: {reason_of(done)}")
    return decline("; ".join(reasons))


def pull_through_reshape(graph: Graph, node: Node, created_by: str) -> bool:
    """``Transpose(p2)(Reshape(v))`` with ``v`` a Transpose output or constant becomes
    ``Reshape(Transpose(r)(v))``; the new Transpose then merges with ``v``'s (strictly fewer)."""
    r_node = graph.producer(node.inputs[0])
    if r_node is None or r_node.op_type != "Reshape" or r_node.is_layout_marked:
        return decline('not fed by a Reshape')
    y, v, z = r_node.outputs[0], r_node.inputs[0], node.outputs[0]
    if graph.is_graph_output(y) or len(graph.consumers(y)) != 1:
        return decline("the Reshape's output has other readers or is a graph output")
    v_prod = graph.producer(v)
    # a Transpose split off by reshape_push stays put: pulling into it would undo the split
    foldable = graph.constant_value(v) is not None or (
        transpose_perm(graph, v) is not None and v_prod.created_by != SPLIT_TAG
        and len(graph.consumers(v)) == 1 and not graph.is_graph_output(v))
    if not foldable:
        return decline("the Reshape's input is neither a constant nor a single-use Transpose")
    s_v, s_y, s_z = graph.shape(v), graph.shape(y), graph.shape(z)
    if s_v is None or s_y is None or s_z is None:
        return decline('a shape is unknown')
    groups = reshape_groups(s_v, s_y)
    if groups is None:
        return decline('the reshape does not split into groups of whole axes')
    p2 = transpose_perm(graph, z)
    inv2 = P.invert(p2)
    # z axis k is y axis p2[k]: each group's y axes must appear in z consecutively and in order
    if not all(_consecutive(_nonunit_positions([inv2[j] for j in gb], s_z)) for _, gb in groups):
        return decline("the reshape's axis groups are not kept together by the Transpose")
    order = sorted(range(len(groups)), key=lambda g: _group_key([inv2[j] for j in groups[g][1]], s_z))
    r = tuple(a for g in order for a in groups[g][0])
    del v_prod
    new_v = graph.add_transpose(v, r, created_by=created_by)
    graph.remove_node(node, force=True)
    graph.set_output(r_node, 0, z)
    graph.set_input(r_node, 0, new_v)
    graph.set_input(r_node, 1, graph.add_initializer(f"{r_node.name}_shape", np.array(s_z, dtype=np.int64)))
    graph.info.pop(y, None)
    return True


def reshape_like(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Reshape/Flatten/Squeeze/Unsqueeze of a Transpose that only moves size-1 axes: the
    Transpose does not change the element order, so the op can read the untransposed tensor."""
    t = node.inputs[0]
    src = graph.producer(t).inputs[0]
    src_shape = graph.shape(src)
    t_shape = graph.shape(t)
    if src_shape is None or t_shape is None or not P.is_memory_order_preserving(src_shape, perm):
        return decline('the Transpose moves data (not only size-1 axes)')
    if node.op_type == "Flatten":
        axis = node.attr("axis", 1) % max(len(perm), 1)
        if set(perm[:axis]) != set(range(axis)):
            return decline('Flatten would mix the axes the Transpose moves')
    elif node.op_type == "Reshape":
        target = graph.constant_value(node.inputs[1])
        if target is None:
            return decline('the Reshape target is not a constant')
        target = [int(v) for v in target.reshape(-1)]
        if not node.attr("allowzero", 0) and 0 in target:
            for i, v in enumerate(target):
                if v == 0:
                    if i < len(perm) and perm[i] == i:
                        continue
                    if i < len(t_shape) and isinstance(t_shape[i], int):
                        target[i] = t_shape[i]
                    else:
                        return decline('a 0 in the Reshape target refers to a dim that the Transpose moved and is not static')
            graph.set_input(node, 1, graph.add_initializer(f"{node.name}_shape", np.array(target, dtype=np.int64)))
    else:  # Squeeze/Unsqueeze: axes depend on the layout, so become a Reshape to the static shape
        out_shape = graph.shape(node.outputs[0])
        if out_shape is None or any(not isinstance(d, int) for d in out_shape) or len(node.inputs) > 2:
            return decline('the output shape is not static (or Squeeze/Unsqueeze has an axes input)')
        shape_name = graph.add_initializer(f"{node.name}_shape", np.array(out_shape, dtype=np.int64))
        node.op_type, node.attrs = "Reshape", {}
        if len(node.inputs) > 1:
            graph.set_input(node, 1, shape_name)
        else:
            graph.add_input(node, shape_name)
    graph.set_input(node, 0, src)
    return True


def _drop_axes(perm: tuple, positions: Sequence[int]) -> tuple:
    """``perm`` without the entries at ``positions``, renumbered: the perm that remains after
    those axes of ``transpose(x, perm)`` (axes ``perm[i]`` of ``x``) are removed."""
    gone = sorted(perm[i] for i in positions)
    return tuple(v - sum(g < v for g in gone) for i, v in enumerate(perm) if i not in positions)


def _moves_whole(graph: Graph, tensor: str, out_perm: tuple) -> bool:
    """Pushing below one reader only pays when no Transpose is left behind on each reader's
    output (``out_perm`` is the identity), or when that reader is the only one (the Transpose
    moves rather than multiplies)."""
    return P.is_identity(out_perm) or (len(graph.consumers(tensor)) == 1 and not graph.is_graph_output(tensor))


def squeeze(graph: Graph, node: Node, perm: tuple, created_by: str) -> bool:
    """Squeeze of ``Transpose(perm)(x)``: squeeze the same (size-1) axes of ``x`` instead; the
    Transpose of the remaining axes follows. Order-keeping cases become a Reshape (reshape_like)."""
    if reshape_like(graph, node, perm, created_by):
        return True
    rank = len(perm)
    if transpose_perm(graph, node.inputs[0]) != perm:
        return decline("the Squeeze input is not the Transpose's output")
    from_input = graph.opset >= 13
    if from_input and len(node.inputs) > 1 and node.inputs[1]:
        v = graph.constant_value(node.inputs[1])
        if v is None:
            return decline('the axes are not a constant')
        axes = [int(a) % rank for a in v.reshape(-1)]
    elif not from_input and node.attr("axes") is not None:
        axes = [int(a) % rank for a in node.attr("axes")]
    else:  # every size-1 axis
        shape = graph.shape(node.inputs[0])
        if shape is None or any(not isinstance(d, int) for d in shape):
            return decline('the shape is not static')
        axes = [a for a, d in enumerate(shape) if d == 1]
    axes = sorted(set(axes))
    new_axes = sorted(perm[a] for a in axes)
    out_perm = _drop_axes(perm, axes)
    if not _moves_whole(graph, node.inputs[0], out_perm):
        return decline('after squeezing, the Transpose would still move data')

    def update() -> None:
        if from_input:
            name = graph.add_initializer(f"{node.name}_axes", np.array(new_axes, dtype=np.int64))
            if len(node.inputs) > 1:
                graph.set_input(node, 1, name)
            else:
                graph.add_input(node, name)
        else:
            node.set_attr("axes", new_axes)

    return push(graph, node, perm, [0], created_by, [out_perm], update)


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
    out_perm = _drop_axes(perm, [axis]) if r_idx == 0 else perm
    if not _moves_whole(graph, node.inputs[0], out_perm):
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
