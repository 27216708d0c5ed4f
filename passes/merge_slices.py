"""Merge a Slice that reads only another Slice into one Slice, when the two cut different axes.

``x[:, 0::2][:, :, 0::2]`` exports as two Slice nodes; as one it is one STRIDED_SLICE in the
.tflite instead of two (each a pass over memory, and stride-2 slices run outside XNNPACK).
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult


def _slice_spec(graph: Graph, node: Node) -> dict[int, tuple[int, int, int]] | None:
    """{axis: (start, end, step)} of a Slice (opset >= 10 input form) with constant operands."""
    if node.op_type != "Slice" or node.domain not in ("", "ai.onnx") or node.is_layout_marked or len(node.inputs) < 3:
        return None
    rank = graph.rank(node.inputs[0])
    if rank is None:
        return None
    vals = []
    for j in range(1, 5):
        if j < len(node.inputs) and node.inputs[j]:
            v = graph.constant_value(node.inputs[j])
            if v is None:
                return None
            vals.append([int(a) for a in np.asarray(v).reshape(-1)])
        else:
            vals.append(None)
    starts, ends, axes, steps = vals
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        return None
    spec = {}
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a + rank if a < 0 else a
        if not 0 <= a < rank or a in spec:
            return None
        spec[a] = (s, e, st)
    return spec


class MergeSlices(Pass):
    name = "merge_slices"
    phase = "optimize"
    after = ("push_transposes",)  # transposes pushed through a Slice no longer sit between two

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        merged = 0
        for inner_node in graph.nodes:
            inner = _slice_spec(graph, inner_node)
            if inner is None or graph.is_graph_output(inner_node.outputs[0]):
                continue
            readers = graph.consumers(inner_node.outputs[0])
            specs = [_slice_spec(graph, r) if r.inputs[0] == inner_node.outputs[0] and r.inputs.count(r.inputs[0]) == 1 else None
                     for r in readers]
            # every reader must take the merge, else the inner Slice stays and merging adds work
            if not readers or any(o is None or set(o) & set(inner) for o in specs):
                continue  # (the same axis cut twice is left as it is)
            for node, outer in zip(readers, specs):
                # disjoint axes: the outer Slice's bounds refer to dims the inner one left whole
                spec = {**inner, **outer}
                axes = sorted(spec)
                cols = [np.array([spec[a][k] for a in axes], np.int64) for k in range(3)]
                operands = [graph.add_initializer(f"{node.name}_{what}", v)
                            for what, v in (("starts", cols[0]), ("ends", cols[1]), ("axes", np.array(axes, np.int64)), ("steps", cols[2]))]
                graph.set_input(node, 0, inner_node.inputs[0])
                for j, t in enumerate(operands, start=1):
                    if j < len(node.inputs):
                        graph.set_input(node, j, t)
                    else:
                        graph.add_input(node, t)
                merged += 1
            graph.remove_node(inner_node)
        return PassResult(merged > 0, {"merged": merged} if merged else {})


PASS = MergeSlices
