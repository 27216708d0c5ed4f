"""Transpose handlers for ops that change a tensor's rank or grouping: Reshape/Flatten (pushed
when axis groups stay contiguous, or absorbed into a following MatMul's weight rows), Unsqueeze
and Squeeze, and a Transpose pulled up through a Reshape."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from graph_convert.ir import perm as P
from graph_convert.ir import Graph, Node

from graph_convert_passes.lib.transpose_push import (
    decline,
    push,
    reason_of,
    transpose_outputs,
    transpose_perm,
)


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


def drop_axes(perm: tuple, positions: Sequence[int]) -> tuple:
    """``perm`` without the entries at ``positions``, renumbered: the perm that remains after
    those axes of ``transpose(x, perm)`` (axes ``perm[i]`` of ``x``) are removed."""
    gone = sorted(perm[i] for i in positions)
    return tuple(v - sum(g < v for g in gone) for i, v in enumerate(perm) if i not in positions)


def moves_whole(graph: Graph, tensor: str, out_perm: tuple) -> bool:
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
    out_perm = drop_axes(perm, axes)
    if not moves_whole(graph, node.inputs[0], out_perm):
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
