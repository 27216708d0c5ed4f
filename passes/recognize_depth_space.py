"""Recognise Reshape -> Transpose -> Reshape chains that are DepthToSpace / SpaceToDepth.

Exporters spell PixelShuffle / PixelUnshuffle as 6-D reshape/transpose chains. Recognised as the
ONNX ops, they become channels-last DEPTH_TO_SPACE / SPACE_TO_DEPTH kernels instead of 6-D
TRANSPOSEs. Recognition is exact: the chain is replayed on an index tensor and compared with each
candidate op, so a chain is only replaced by an op that moves every element the same way.
A PixelUnshuffle (channels ordered (c, dy, dx)) is SpaceToDepth followed by a channel Gather;
that form is only used when ``fold_channel_permutation`` can fold the Gather into a Conv.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult


def depth_to_space(x: np.ndarray, r: int, mode: str) -> np.ndarray:
    b, c, h, w = x.shape
    if mode == "DCR":
        return x.reshape(b, r, r, c // (r * r), h, w).transpose(0, 3, 4, 1, 5, 2).reshape(b, c // (r * r), h * r, w * r)
    return x.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c // (r * r), h * r, w * r)


def space_to_depth(x: np.ndarray, r: int) -> np.ndarray:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // r, r, w // r, r).transpose(0, 3, 5, 1, 2, 4).reshape(b, c * r * r, h // r, w // r)


def channel_permutation(got: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """idx with ``got[:, k] == ref[:, idx[k]]`` for all k, if ``got`` is a channel permutation of ``ref``."""
    if got.shape != ref.shape:
        return None
    first = {int(ref[0, j].flat[0]): j for j in range(ref.shape[1])}
    idx = np.array([first.get(int(got[0, k].flat[0]), -1) for k in range(got.shape[1])])
    if (idx < 0).any() or not np.array_equal(got, ref[:, idx]):
        return None
    return idx


def _chain(graph: Graph, r2: Node) -> tuple[Node, Node] | None:
    t = graph.producer(r2.inputs[0])
    if t is None or t.op_type != "Transpose" or graph.num_uses(t.outputs[0]) != 1 or graph.is_graph_output(t.outputs[0]):
        return None
    r1 = graph.producer(t.inputs[0])
    if r1 is None or r1.op_type != "Reshape" or graph.num_uses(r1.outputs[0]) != 1 or graph.is_graph_output(r1.outputs[0]):
        return None
    return r1, t


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _gather_foldable(graph: Graph, tensor: str) -> bool:
    from graph_convert_passes.fold_channel_permutation import input_foldable

    users = graph.consumers(tensor)
    return bool(users) and not graph.is_graph_output(tensor) and all(input_foldable(graph, u, tensor) for u in users)


class RecognizeDepthSpace(Pass):
    name = "recognize_depth_space"
    phase = "canonicalize"
    before = ("fold_channel_permutation", "to_channels_last")
    after = ("constants_to_initializers",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        found: dict[str, int] = {}
        for r2 in graph.nodes:
            if not graph.has_node(r2.name) or r2.op_type != "Reshape" or r2.domain not in ("", "ai.onnx"):
                continue
            chain = _chain(graph, r2)
            if chain is None:
                continue
            r1, t = chain
            x, y = r1.inputs[0], r2.outputs[0]
            s_x, s_1, s_y = graph.shape(x), graph.shape(r1.outputs[0]), graph.shape(y)
            if not (_static(s_x) and _static(s_1) and _static(s_y)) or len(s_x) != 4 or len(s_y) != 4:
                continue
            idx = np.arange(int(np.prod(s_x))).reshape(s_x)
            got = idx.reshape(s_1).transpose(t.attr("perm") or list(reversed(range(len(s_1))))).reshape(s_y)
            rep = self._match(graph, idx, got, y)
            if rep is None:
                continue
            kind, r, mode, perm = rep
            graph.remove_node(r2, force=True)
            graph.remove_node(t, force=True)
            graph.remove_node(r1, force=True)
            if kind == "DepthToSpace":
                graph.add_node("DepthToSpace", [x], [y], attrs={"blocksize": r, "mode": mode}, created_by=self.name, name=f"{r2.name}_d2s")
            else:
                out = y if perm is None else graph.fresh_name(f"{y}_s2d")
                graph.add_node("SpaceToDepth", [x], [out], attrs={"blocksize": r}, created_by=self.name, name=f"{r2.name}_s2d")
                graph.set_info(out, graph.dtype(x), s_y)
                if perm is not None:
                    ind = graph.add_initializer(f"{r2.name}_channels", perm.astype(np.int64))
                    graph.add_node("Gather", [out, ind], [y], attrs={"axis": 1}, created_by=self.name, name=f"{r2.name}_channel_order")
            found[kind] = found.get(kind, 0) + 1
        return PassResult(bool(found), {"recognized": found} if found else {})

    @staticmethod
    def _match(graph: Graph, idx: np.ndarray, got: np.ndarray, y: str):
        b, c, h, w = idx.shape
        _, c2, h2, w2 = got.shape
        if h2 > h and h2 % h == 0 and h2 // h == w2 // w:
            r = h2 // h
            for mode in ("DCR", "CRD"):
                if c % (r * r) == 0 and np.array_equal(got, depth_to_space(idx, r, mode)):
                    return "DepthToSpace", r, mode, None
        if h2 < h and h % h2 == 0 and h // h2 == w // w2:
            r = h // h2
            if h % r == 0 and w % r == 0:
                ref = space_to_depth(idx, r)
                if np.array_equal(got, ref):
                    return "SpaceToDepth", r, None, None
                perm = channel_permutation(got, ref)
                if perm is not None and _gather_foldable(graph, y):
                    return "SpaceToDepth", r, None, perm
        return None


PASS = RecognizeDepthSpace
