"""A third-party plugin as a user would write it: one pass, one TF emitter, one transpose handler.

- pass ``fold_double_neg``: Neg(Neg(x)) -> x
- emitter for ``demo.ops::Swish`` (x * sigmoid(x), a model-local ONNX function), plus a transpose handler so the
  layout optimizer moves Transposes through it like any unary op.
"""
from __future__ import annotations

from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult


class FoldDoubleNeg(Pass):
    name = "fold_double_neg"
    phase = "canonicalize"
    before = ("to_channels_last",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = 0
        for node in graph.nodes:
            if not graph.has_node(node.name) or node.op_type != "Neg":
                continue
            inner = graph.producer(node.inputs[0])
            if inner is None or inner.op_type != "Neg" or graph.is_graph_output(node.outputs[0]):
                continue
            graph.replace_all_uses(node.outputs[0], inner.inputs[0])
            graph.remove_node(node)
            if graph.num_uses(inner.outputs[0]) == 0:
                graph.remove_node(inner)
            n += 1
        return PassResult(n > 0, {"folded": n} if n else {})


def emit_swish(node, x, ctx):
    import tensorflow as tf

    return x[0] * tf.math.sigmoid(x[0])


def register(registry) -> None:
    from graph_convert_passes.lib.transpose_handlers import simple

    registry.add_pass(FoldDoubleNeg)
    registry.add_emitter("demo.ops::Swish", emit_swish)
    registry.add_transpose_handler("demo.ops::Swish", simple)
