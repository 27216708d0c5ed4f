"""Rewrite a BatchNormalization that could not be folded as Mul + Add with per-channel constants,
which the transpose pusher moves through like any broadcast elementwise op."""
from __future__ import annotations

from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.fold_batchnorm import bn_scale_shift


class BatchNormToAffine(Pass):
    name = "batchnorm_to_affine"
    phase = "canonicalize"
    after = ("fold_batchnorm",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = 0
        for bn in graph.nodes:
            if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
                continue
            rank = graph.rank(bn.inputs[0])
            ss = bn_scale_shift(graph, bn)
            if rank is None or rank < 2 or ss is None:
                continue
            dtype = graph.constant_value(bn.inputs[1]).dtype
            scale, shift = ss
            bshape = (scale.shape[0],) + (1,) * (rank - 2)
            s = graph.add_initializer(f"{bn.name}_scale", scale.reshape(bshape).astype(dtype))
            t = graph.add_initializer(f"{bn.name}_shift", shift.reshape(bshape).astype(dtype))
            out = bn.outputs[0]
            x = bn.inputs[0]
            graph.remove_node(bn, force=True)
            mul = graph.add_node("Mul", [x, s], 1, name=f"{bn.name}_mul", created_by=self.name)
            graph.set_info(mul.outputs[0], graph.dtype(x), graph.shape(x))
            graph.add_node("Add", [mul.outputs[0], t], [out], name=f"{bn.name}_add", created_by=self.name)
            n += 1
        return PassResult(n > 0, {"rewritten": n} if n else {})


PASS = BatchNormToAffine
