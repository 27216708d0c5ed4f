"""A plugin whose pass changes the model's meaning (Relu -> Sigmoid): verification must catch it
and name this pass."""
from __future__ import annotations

from graph_convert.pass_manager import Pass, PassResult


class BreakRelu(Pass):
    name = "break_relu"
    phase = "optimize"

    def run(self, graph, ctx):
        n = 0
        for node in graph.nodes:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
                n += 1
        return PassResult(n > 0)


def register(registry):
    registry.add_pass(BreakRelu)
