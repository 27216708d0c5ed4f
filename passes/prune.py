"""Remove nodes that reach no graph output and initializers nothing reads."""
from __future__ import annotations

from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult


class Prune(Pass):
    name = "prune"
    phase = "cleanup"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n_init = len(graph.initializer_names)
        removed = graph.prune()
        dropped = n_init - len(graph.initializer_names)
        return PassResult(bool(removed or dropped), {"nodes": removed, "initializers": dropped} if removed or dropped else {})


PASS = Prune
