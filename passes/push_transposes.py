"""Push Transposes down through layout-agnostic ops and cancel inverse pairs (step 2 of *wrap, then cancel*; README, "What the layout pass guarantees").

Pushing is table-driven (``registry.transpose_handlers``, built-ins in
:mod:`passes.transpose_handlers`) and happens only when the handler's cost strictly drops:
every Transpose removed at an input counts -1, every one added at an input +1 (constants fold
for free). Transposes only move downwards, so the group reaches a fixed point.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert.ir import perm as P
from graph_convert_passes.lib.transpose_handlers import pull_through_reshape, transpose_perm


class PushTransposes(Pass):
    name = "push_transposes"
    phase = "optimize"
    group = "transposes"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        handlers = ctx.registry.transpose_handlers
        pushed: dict[str, int] = {}
        folded = removed = 0
        for node in graph.nodes:
            if not graph.has_node(node.name):
                continue
            if node.op_type == "Transpose" and not node.is_layout_marked:
                perm = transpose_perm(graph, node.outputs[0])
                if perm is not None and P.is_identity(perm) and not graph.is_graph_output(node.outputs[0]):
                    graph.replace_all_uses(node.outputs[0], node.inputs[0])
                    graph.remove_node(node, force=True)
                    removed += 1
                    continue
                if pull_through_reshape(graph, node, self.name):
                    pushed["Reshape (pulled up)"] = pushed.get("Reshape (pulled up)", 0) + 1
                    continue
                value = graph.constant_value(node.inputs[0])
                if value is not None and not graph.is_graph_output(node.outputs[0]):
                    perm = transpose_perm(graph, node.outputs[0])
                    out = node.outputs[0]
                    graph.remove_node(node, force=True)
                    graph.set_initializer(out, np.ascontiguousarray(np.transpose(value, perm)))
                    folded += 1
                    continue
                if graph.num_uses(node.outputs[0]) == 0:
                    graph.remove_node(node)
                    removed += 1
                    continue
            if node.is_layout_marked:
                continue
            # custom-domain ops are keyed "domain::op_type", like the emitter table
            handler = handlers.get(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
            if handler is None:
                continue
            perms = []
            for t in node.inputs:
                p = transpose_perm(graph, t) if t else None
                if p is not None and p not in perms and not P.is_identity(p):
                    perms.append(p)
            for p in perms:
                if handler(graph, node, p, self.name):
                    pushed[node.op_type] = pushed.get(node.op_type, 0) + 1
                    break
        # Transposes left without readers after pushing
        for node in graph.nodes:
            if node.op_type == "Transpose" and graph.num_uses(node.outputs[0]) == 0:
                graph.remove_node(node)
                removed += 1
        details = {k: v for k, v in (("pushed", pushed), ("folded", folded), ("removed", removed)) if v}
        return PassResult(bool(details), details)


PASS = PushTransposes
