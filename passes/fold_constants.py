"""Fold nodes whose inputs are all known at conversion time (shape-computing subgraphs above all).

``Shape``/``Size`` of a tensor with a fully static shape become constants; any deterministic
standard op whose inputs are all constants is evaluated with ONNX's reference implementation
(``onnx.reference``) and replaced by an initializer. Outputs larger than ``MAX_ELEMENTS`` stay
computed at run time, so folding never bloats the model. Floating-point functions that no two
libraries round alike (log, exp, sin, ...) are never folded: see :data:`NOT_ROUNDED_ALIKE`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult

MAX_ELEMENTS = 1 << 20
# random, stateful or control-flow ops are never folded
NEVER = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
         "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty", "Optional", "Constant",
         # a quantized model's Q/DQ carry the scales the int8 .tflite must keep (backends/tensorflow/ops/quantized.py)
         "QuantizeLinear", "DequantizeLinear"}
# Floating-point functions that are not correctly rounded: onnx.reference evaluates them with numpy,
# whose results differ from ONNX Runtime's (the verification reference) in the last bit for a
# quarter or more of the elements (measured: Log 24 %, Exp 40 %, Sin 6 %, Tanh 58 % of 4096 random
# float32 values). A model that amplifies such a bit fails verification because of the fold alone:
# HF RT-DETR's anchors, log(a / (1 - a)) of constants, move its predicted boxes by 1.7e-4. Left to run
# time, ONNX Runtime computes them as in the source and TensorFlow's converter folds them itself.
# (IEEE-exact ops, +, -, *, /, sqrt, data movement and integer arithmetic, still fold.)
NOT_ROUNDED_ALIKE = {"Log", "Exp", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Tanh", "Asinh", "Acosh",
                     "Atanh", "Erf", "Sigmoid", "HardSigmoid", "Softplus", "Softsign", "Softmax", "LogSoftmax", "Pow", "Elu",
                     "Selu", "Celu", "Gelu", "Mish", "Swish", "HannWindow", "HammingWindow", "BlackmanWindow",
                     "MelWeightMatrix", "DFT", "STFT"}


def _static_shape(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    s = graph.shape(tensor)
    if s is None or any(not isinstance(d, int) or d < 0 for d in s):
        return None
    return tuple(s)


def _shape_value(graph: Graph, node: Node) -> np.ndarray | None:
    shape = _static_shape(graph, node.inputs[0])
    if shape is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    rank = len(shape)
    start = node.attr("start", 0)
    end = node.attr("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return np.array(shape[start:end], dtype=np.int64)


def _evaluate(graph: Graph, node: Node, values: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    names = [f"i{j}" if v is not None else "" for j, v in enumerate(values)]
    outs = [f"o{k}" if t else "" for k, t in enumerate(node.outputs)]
    n = helper.make_node(node.op_type, names, outs, domain=node.domain or None)
    n.attribute.extend(node.attrs.values())
    inputs = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for nm, v in zip(names, values) if nm]
    outputs = [helper.make_empty_tensor_value_info(o) for o in outs if o]
    model = helper.make_model(helper.make_graph([n], "fold", inputs, outputs), opset_imports=[helper.make_opsetid("", opset)])
    try:
        res = ReferenceEvaluator(model).run(None, {nm: v for nm, v in zip(names, values) if nm})
    except Exception:
        return None  # the reference cannot evaluate it: leave it to run time
    return [np.asarray(r) for r in res]


class FoldConstants(Pass):
    name = "fold_constants"
    phase = "canonicalize"
    # to a fixed point: a Shape whose input's static shape is known only once an upstream Reshape
    # target has been folded (and shapes refreshed) folds in the next round
    group = "fold_constants"
    after = ("constants_to_initializers",)
    before = ("fold_batchnorm", "to_channels_last")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        opset = graph.opset
        folded: dict[str, int] = {}
        for node in graph.nodes:
            if node.domain not in ("", "ai.onnx") or node.op_type in NEVER or node.is_layout_marked or node.implicit_inputs:
                continue
            if any(graph.is_graph_output(t) for t in node.outputs if t):
                continue
            if node.op_type in ("Shape", "Size"):
                v = _shape_value(graph, node)
                results = None if v is None else [v]
            else:
                values = [graph.constant_value(t) if t else None for t in node.inputs]
                if not node.inputs or any(t and v is None for t, v in zip(node.inputs, values)):
                    continue
                if any(v is not None and v.dtype == object for v in values):
                    continue
                if node.op_type in NOT_ROUNDED_ALIKE and any(v is not None and v.dtype.kind in "fc" for v in values):
                    continue
                results = _evaluate(graph, node, values, opset)
            if results is None or len(results) < sum(1 for t in node.outputs if t):
                continue
            if any(r.size > MAX_ELEMENTS or r.dtype == object for r in results):
                continue
            outs = [t for t in node.outputs if t]
            graph.remove_node(node, force=True)
            for t, r in zip(outs, results):
                expected = graph.dtype(t)
                if expected and expected != onnx.TensorProto.UNDEFINED:
                    r = r.astype(helper.tensor_dtype_to_np_dtype(expected), copy=False)
                graph.set_initializer(t, r)
            folded[node.op_type] = folded.get(node.op_type, 0) + 1
        if folded:
            graph.refresh_shapes()  # e.g. a Reshape whose target just became a constant
        return PassResult(bool(folded), {"folded": folded} if folded else {})


PASS = FoldConstants
