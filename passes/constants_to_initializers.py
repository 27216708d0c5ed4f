"""Turn ``Constant`` nodes into initializers so every pass sees constants one way."""
from __future__ import annotations

from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult


class ConstantsToInitializers(Pass):
    name = "constants_to_initializers"
    phase = "canonicalize"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = 0
        for node in graph.nodes:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            out = node.outputs[0]
            if graph.is_graph_output(out):
                continue  # the output name must keep a producer
            value = graph.constant_value(out)
            if value is None or value.dtype == object:
                continue
            graph.remove_node(node, force=True)
            graph.set_initializer(out, value)
            n += 1
        return PassResult(n > 0, {"converted": n} if n else {})


PASS = ConstantsToInitializers
