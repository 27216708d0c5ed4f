"""Drop the operands of a Concat that are empty along its axis (a static 0 there): they add nothing.

ultralytics' YOLO exported with NMS inside concatenates its detections' boxes, scores and classes
with the mask columns it has none of, a (n, 0) tensor gathered by the NMS's data-dependent indices.
Kept, that empty tensor costs a gather chain and, in TFLite, breaks the file: the converter folds
an int64 SHAPE of the empty FILL into int32 dims and leaves a STRIDED_SLICE it cannot build, and
XNNPACK's delegate aborts on the empty gather. Dropping the operand is exact; the nodes that made it
go with the dead code (``prune``).
"""
from __future__ import annotations

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult


def _empty_operands(graph: Graph, node: Node) -> list[int]:
    """Indices of the operands whose static size along the concat axis is 0."""
    rank = graph.rank(node.outputs[0])
    if rank is None or rank == 0:
        return []
    axis = node.attr("axis", 0) % rank
    out = []
    for i, t in enumerate(node.inputs):
        s = graph.shape(t) if t else None
        if s is not None and len(s) == rank and isinstance(s[axis], int) and s[axis] == 0:
            out.append(i)
    return out


class DropEmptyConcatInputs(Pass):
    name = "drop_empty_concat_inputs"
    phase = "canonicalize"
    after = ("fold_constants",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        dropped = 0
        for node in graph.nodes:
            if node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
                continue
            empty = _empty_operands(graph, node)
            keep = [t for i, t in enumerate(node.inputs) if i not in empty]
            if not empty or not keep:  # every operand empty: the (empty) result stays as it is
                continue
            outputs, name, axis = list(node.outputs), node.name, node.attr("axis", 0)
            graph.remove_node(node, force=True)
            graph.add_node("Concat", keep, outputs, name=name, attrs={"axis": axis}, created_by=self.name)
            dropped += len(empty)
        return PassResult(dropped > 0, {"dropped": dropped} if dropped else {})


PASS = DropEmptyConcatInputs
