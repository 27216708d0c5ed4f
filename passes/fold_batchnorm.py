"""Fold an inference BatchNormalization into the Conv/ConvTranspose that feeds it."""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult


def bn_scale_shift(graph: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) of an inference BatchNormalization with constant parameters."""
    if bn.attr("training_mode", 0) or bn.attr("spatial", 1) != 1 or len(bn.inputs) < 5:
        return None
    if any(o and graph.num_uses(o) for o in bn.outputs[1:]):
        return None
    vals = [graph.constant_value(t) for t in bn.inputs[1:5]]
    if any(v is None for v in vals):
        return None
    gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
    scale = gamma / np.sqrt(var + bn.attr("epsilon", 1e-5))
    return scale, beta - mean * scale


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    phase = "canonicalize"
    after = ("constants_to_initializers",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for bn in graph.nodes:
            if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
                continue
            conv = graph.producer(bn.inputs[0])
            if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or conv.is_layout_marked:
                continue
            y = conv.outputs[0]
            if graph.is_graph_output(y) or len(graph.consumers(y)) != 1:
                continue
            w = graph.constant_value(conv.inputs[1])
            b = graph.constant_value(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
            if w is None or (len(conv.inputs) > 2 and conv.inputs[2] and b is None):
                continue
            ss = bn_scale_shift(graph, bn)
            if ss is None or w.dtype.kind != "f":
                continue
            scale, shift = ss
            if conv.op_type == "Conv":
                c_out = w.shape[0]
                new_w = w.astype(np.float64) * scale.reshape((c_out,) + (1,) * (w.ndim - 1))
            else:  # ConvTranspose weight: (C_in, C_out/group, k...), out channel = g*(C_out/group)+j
                group = conv.attr("group", 1)
                c_in, c_per = w.shape[0], w.shape[1]
                c_out = c_per * group
                ws = w.astype(np.float64).reshape((group, c_in // group, c_per) + w.shape[2:])
                ws = ws * scale.reshape((group, 1, c_per) + (1,) * (w.ndim - 2))
                new_w = ws.reshape(w.shape)
            if scale.shape != (c_out,):
                continue
            bias = np.zeros(c_out) if b is None else b.astype(np.float64)
            new_b = bias * scale + shift
            w_name = graph.add_initializer(f"{conv.inputs[1]}_bnfold", new_w.astype(w.dtype))
            b_name = graph.add_initializer(f"{conv.name}_bias_bnfold", new_b.astype(w.dtype))
            graph.set_input(conv, 1, w_name)
            if len(conv.inputs) > 2:
                graph.set_input(conv, 2, b_name)
            else:
                graph.add_input(conv, b_name)
            out = bn.outputs[0]
            graph.remove_node(bn, force=True)
            graph.set_output(conv, 0, out)
            graph.info.pop(y, None)
            folded += 1
        return PassResult(folded > 0, {"folded": folded} if folded else {})


PASS = FoldBatchNorm
