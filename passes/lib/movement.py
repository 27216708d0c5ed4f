"""Data-movement ops followed element by element: where each output element of a Reshape /
Transpose / Gather / Split / ... chain comes from, found by running the chain on an index array.

``follow(graph, node, idx)`` applies ``node`` to ``idx`` — an integer array shaped like the
node's data input whose entries name source elements — and returns one such array per output,
or None when ``node`` is not a pure data movement with static shapes and constant parameters.
Running ``arange(n).reshape(shape)`` through a chain therefore says, for every element at the
end, which element at the start it is a copy of, whatever mix of reshapes, transposes, gathers
and splits an exporter wrote: a rewrite can then be planned from that map instead of from one
exporter's spelling.

    >>> idx = np.arange(6).reshape(1, 2, 3)
    >>> np.transpose(idx.reshape(2, 3), (1, 0)).tolist()   # a Reshape then a Transpose
    [[0, 3], [1, 4], [2, 5]]
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node

# reshapes in all but name: the output shape says everything
_RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
MOVES = (*_RESHAPES, "Transpose", "Gather", "Split", "Slice")
# the largest index array followed (int64 elements); bigger tensors are left alone
MAX_ELEMENTS = 1 << 24


def plain(node: Node | None, *ops: str) -> bool:
    return node is not None and node.op_type in ops and node.domain in ("", "ai.onnx") and not node.is_layout_marked


def static(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    s = graph.shape(tensor)
    return tuple(s) if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None


def follow(graph: Graph, node: Node, idx: np.ndarray) -> list[np.ndarray] | None:
    """``node`` applied to the index array ``idx`` (its data input), or None."""
    if not plain(node, *MOVES) or idx.size > MAX_ELEMENTS:
        return None
    shapes = [static(graph, t) for t in node.outputs]
    if any(s is None for s in shapes):
        return None
    op = node.op_type
    if op in _RESHAPES:
        outs = [idx.reshape(shapes[0])] if idx.size == int(np.prod(shapes[0])) else None
    elif op == "Transpose":
        p = node.attr("perm")
        outs = [np.transpose(idx, list(p) if p is not None else None)]
    elif op == "Gather":
        ind = graph.constant_value(node.inputs[1])
        outs = None if ind is None else [np.take(idx, ind.astype(np.int64), axis=node.attr("axis", 0))]
    elif op == "Split":
        outs = _split(node, idx, shapes)
    else:
        outs = _slice(graph, node, idx)
    if outs is None or [tuple(o.shape) for o in outs] != shapes:
        return None
    return outs


def _split(node: Node, idx: np.ndarray, shapes: list) -> list[np.ndarray] | None:
    axis = node.attr("axis", 0) % idx.ndim
    sizes = [s[axis] for s in shapes]
    if sum(sizes) != idx.shape[axis]:
        return None
    return np.split(idx, np.cumsum(sizes)[:-1], axis=axis)


def _slice(graph: Graph, node: Node, idx: np.ndarray) -> list[np.ndarray] | None:
    if len(node.inputs) < 3:  # opset < 10: starts/ends/axes are attributes
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        vals = [graph.constant_value(t) if t else None for t in [*node.inputs[1:], "", ""][:4]]
        if any(v is None for v, t in zip(vals, node.inputs[1:]) if t):
            return None
        starts, ends, axes, steps = vals
    if starts is None or ends is None:
        return None
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    sl = [slice(None)] * idx.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        sl[int(a) % idx.ndim] = slice(int(s), int(e), int(st))
    return [idx[tuple(sl)]]


def grid_perm(tok: np.ndarray) -> tuple[list[int], list[int]] | None:
    """``(g, p)`` with ``tok == arange(tok.size).reshape(g).transpose(p).reshape(tok.shape)``:
    ``tok`` (a permutation of ``range(tok.size)``) as a reshape of a row-major grid ``g`` moved by
    ``p`` — None when it is no such thing. Axes that stay adjacent are merged, so ``g`` is the
    coarsest such grid (no 1s); an identity ``p`` means a Reshape alone does it.

        >>> grid_perm(np.arange(6).reshape(2, 3).T.reshape(3, 1, 2))
        ([2, 3], [1, 0])
        >>> grid_perm(np.arange(64).reshape(8, 8))
        ([64], [0])
    """
    axes = []  # (size, step) per axis of tok, adjacent contiguous ones merged
    for a, size in enumerate(tok.shape):
        if size == 1:
            continue
        step = int(tok[tuple(1 if b == a else 0 for b in range(tok.ndim))] - tok[(0,) * tok.ndim])
        if axes and axes[-1][1] == step * size:
            axes[-1] = (axes[-1][0] * size, step)
        else:
            axes.append((size, step))
    order = sorted(range(len(axes)), key=lambda i: -axes[i][1])
    g = [axes[i][0] for i in order]
    if any(axes[i][1] != int(np.prod(g[j + 1:])) for j, i in enumerate(order)):
        return None
    perm = [order.index(i) for i in range(len(axes))]
    n = tok.size
    if not np.array_equal(tok, np.arange(n).reshape(g).transpose(perm).reshape(tok.shape)):
        return None
    return g, perm
