"""Split group normalization spelled ``Reshape -> InstanceNormalization -> Reshape`` so that
it keeps the channel axis whole.

Exporters spell ``nn.GroupNorm`` / ``F.group_norm`` as ``Reshape(x, [N, G, -1])``, an
InstanceNormalization over the G "channels" and a Reshape back to the shape of ``x`` (the affine
part follows as Mul/Add). That first Reshape merges part of the channel axis with the spatial
ones, which no channels-last layout can express without a TRANSPOSE on each side. Here the
statistics are computed on ``Reshape(x, [N, G, C/G, *S])`` instead (ReduceMean over the axes
after G): only the channel axis is split, which the transpose handlers push through, so a
channels-last graph normalizes in place. (GroupNormalization itself is not used: opsets 18-20
only have the deprecated GroupNormalization-18, which onnx.checker rejects.) Only exact matches
are rewritten: static shapes, the reshapes split and restore exactly ``x``'s shape, constant
per-group scale and bias.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


class SplitGroupNorm(Pass):
    name = "split_group_norm"
    phase = "canonicalize"
    before = ("to_channels_last",)
    after = ("constants_to_initializers", "fold_constants")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        opset = graph.opset
        found = 0
        for norm in graph.nodes:
            if (not graph.has_node(norm.name) or norm.op_type != "InstanceNormalization"
                    or norm.domain not in ("", "ai.onnx") or norm.is_layout_marked):
                continue
            r1 = graph.producer(norm.inputs[0])
            if r1 is None or r1.op_type != "Reshape" or r1.domain not in ("", "ai.onnx"):
                continue
            mid, out = r1.outputs[0], norm.outputs[0]
            if any(len(graph.consumers(t)) != 1 or graph.is_graph_output(t) for t in (mid, out)):
                continue
            (r2,) = graph.consumers(out)
            if r2.op_type != "Reshape" or r2.domain not in ("", "ai.onnx") or r2.inputs[0] != out:
                continue
            x, y = r1.inputs[0], r2.outputs[0]
            s_x, s_mid, s_y = graph.shape(x), graph.shape(mid), graph.shape(y)
            if not (_static(s_x) and _static(s_mid) and _static(s_y)) or len(s_x) < 3 or len(s_mid) != 3:
                continue
            n, c, g = s_x[0], s_x[1], s_mid[1]
            if list(s_y) != list(s_x) or s_mid[0] != n or c % g or s_mid[2] * g != int(np.prod(s_x[1:])):
                continue
            scale, bias = (graph.constant_value(t) for t in norm.inputs[1:3])
            if scale is None or bias is None or scale.size != g or bias.size != g:
                continue
            rank = len(s_x)
            bshape = [1, g] + [1] * (rank - 1)
            scale, bias = scale.reshape(bshape), bias.reshape(bshape)
            eps = float(norm.attr("epsilon", 1e-5))
            dt = graph.dtype(x)
            if dt not in (1, 10, 11):  # float, float16, double
                continue
            np_dt = {1: np.float32, 10: np.float16, 11: np.float64}[dt]
            axes = list(range(2, rank + 1))
            split = [n, g, c // g, *s_x[2:]]
            graph.remove_node(r2, force=True)
            graph.remove_node(norm, force=True)
            graph.remove_node(r1, force=True)
            tag = norm.name

            def op(op_type, inputs, shape, **attrs):
                node = graph.add_node(op_type, inputs, 1, attrs=attrs or None, created_by=self.name,
                                      name=graph.fresh_name(f"{tag}_{op_type}"))
                graph.set_info(node.outputs[0], dt, shape)
                return node.outputs[0]

            def mean(t):
                if opset >= 18:
                    return op("ReduceMean", [t, graph.add_initializer(f"{tag}_axes", np.array(axes, np.int64))],
                              [n, g] + [1] * (rank - 1), keepdims=1)
                return op("ReduceMean", [t], [n, g] + [1] * (rank - 1), axes=axes, keepdims=1)

            stat_shape = [n, g] + [1] * (rank - 1)
            xs = op("Reshape", [x, graph.add_initializer(f"{tag}_split", np.array(split, np.int64))], split)
            d = op("Sub", [xs, mean(xs)], split)
            var = mean(op("Mul", [d, d], split))
            std = op("Sqrt", [op("Add", [var, graph.add_initializer(f"{tag}_eps", np.array(eps, np_dt))], stat_shape)],
                     stat_shape)
            yn = op("Div", [d, std], split)
            if not np.all(scale == 1):
                yn = op("Mul", [yn, graph.add_initializer(f"{tag}_scale", scale.astype(np_dt))], split)
            if not np.all(bias == 0):
                yn = op("Add", [yn, graph.add_initializer(f"{tag}_bias", bias.astype(np_dt))], split)
            graph.add_node("Reshape", [yn, graph.add_initializer(f"{tag}_restore", np.array(s_x, np.int64))], [y],
                           created_by=self.name, name=graph.fresh_name(f"{tag}_restore"))
            found += 1
        return PassResult(found > 0, {"rewritten": found} if found else {})


PASS = SplitGroupNorm
