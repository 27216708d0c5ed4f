"""Move an Attention node's scale onto its query as an explicit Mul, where the projection passes
can fold it into weights.

``Attention(Q, K, V, scale=s)`` is ``Attention(Q * s, K, V, scale=1)``: the scores are
``(Q * s) @ Kᵀ`` either way (softcap, masks and the softmax come after). Inside the node the
scale is one MUL over ``Q`` in the .tflite; as a Mul in the graph it is a scalar scale after the
query projection, which ``heads_first`` folds into the head-major weights and
``fold_scale_into_projection`` into the projection's weights, so it costs nothing. Where nothing
folds it, the MUL is the one the emitter would have written. The dynamo exporter writes
``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` at opset 23 this way (one
Attention node, the scale inside it). ONNX Runtime checks the rewrite like any other.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult


class AttentionScaleToQuery(Pass):
    name = "attention_scale_to_query"
    phase = "canonicalize"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        moved = 0
        for node in graph.nodes:
            if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
                continue
            q = node.inputs[0]
            shape = graph.shape(q)
            if shape is None or len(shape) != 4 or not isinstance(shape[-1], int) or graph.constant_value(q) is not None:
                continue  # the 3-D form's head size is only known through q_num_heads; a constant folds anyway
            scale = node.attr("scale")
            scale = 1.0 / np.sqrt(shape[-1]) if scale is None else float(scale)
            if scale == 1.0:
                continue  # nothing to move (also: what this pass leaves behind, so a second run changes nothing)
            dtype = graph.dtype(q)
            factor = graph.add_initializer(f"{node.name}_scale", np.array(scale, helper.tensor_dtype_to_np_dtype(dtype)))
            mul = graph.add_node("Mul", [q, factor], created_by=self.name)
            graph.set_info(mul.outputs[0], dtype, shape)
            graph.set_input(node, 0, mul.outputs[0])
            node.set_attr("scale", 1.0)
            moved += 1
        return PassResult(moved > 0, {"moved": moved} if moved else {})


PASS = AttentionScaleToQuery
