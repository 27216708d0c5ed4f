"""Remove Identity and inference-time Dropout nodes."""
from __future__ import annotations

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult


def _is_noop(graph: Graph, node: Node) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        # training_mode input (opset 12+) must be absent or a constant False; the mask must be unused
        if len(node.inputs) > 2 and node.inputs[2]:
            v = graph.constant_value(node.inputs[2])
            if v is None or bool(v):
                return False
        return len(node.outputs) < 2 or not node.outputs[1] or graph.num_uses(node.outputs[1]) == 0
    return False


class EliminateIdentity(Pass):
    name = "eliminate_identity"
    # cleanup: also removes the Identity that cancelled Transposes leave in front of a graph output
    phase = "cleanup"
    before = ("prune",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = 0
        for node in graph.nodes:
            if not _is_noop(graph, node):
                continue
            src, dst = node.inputs[0], node.outputs[0]
            if graph.is_graph_output(dst):
                prod = graph.producer(src)
                # let the producer write the graph output directly when nothing else needs src
                if prod is None or graph.is_graph_output(src) or graph.num_uses(src) != 1:
                    continue
                graph.remove_node(node, force=True)
                graph.set_output(prod, prod.outputs.index(src), dst)
            else:
                graph.replace_all_uses(dst, src)
                graph.remove_node(node, force=True)
            removed += 1
        return PassResult(removed > 0, {"removed": removed} if removed else {})


PASS = EliminateIdentity
