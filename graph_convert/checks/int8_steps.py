"""Which ONNX models are quantized, and the int8 rule's per-output steps for them.

One place for the conversion (the TF back end judges a quantized source's files by the int8 rule)
and for ``graph-convert verify`` (another converter's file of the same source is judged by the
same rule), so both judge alike. The rule itself is :func:`graph_convert.checks.equivalence.compare_int8`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graph_convert.checks.equivalence import INT8_MAX_STEPS, INT8_MAX_STEPS_SOFTMAX

# op type -> input slots that hold scales
SCALE_SLOTS: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1,), "DequantizeLinear": (1,), "QLinearConv": (1, 4, 6), "QLinearMatMul": (1, 4, 6),
    "QGemm": (1, 4, 7), "QLinearAdd": (1, 4, 6), "QLinearMul": (1, 4, 6), "QLinearSoftmax": (1, 3),
    "QLinearGlobalAveragePool": (1, 3), "QLinearAveragePool": (1, 3), "QLinearSigmoid": (1, 3),
    "QLinearLeakyRelu": (1, 3), "QLinearWhere": (2, 5, 7), "QLinearConcat": tuple(range(0, 3 * 64, 3)),
}  # (QLinearConcat: Y_scale, then every input's scale)
QUANTIZED_OPS = frozenset(SCALE_SLOTS) | {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}


def is_quantized(model: onnx.ModelProto) -> bool:
    """The source computes with ONNX quantization ops (then an int8 .tflite is written too)."""
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    vals = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            vals[n.output[0]] = n.attribute[0].t
    return vals


def output_steps(model: onnx.ModelProto) -> dict[str, tuple[float | None, float | None]]:
    """Per graph output: the quantization step the source gives it (the per-tensor scale of the
    DequantizeLinear that makes it, None for a float output) and the int8 rule's bound in steps
    (none when the model holds a softmax, see ``checks.equivalence``)."""
    bound = INT8_MAX_STEPS_SOFTMAX if any(n.op_type in ("Softmax", "QLinearSoftmax") for n in model.graph.node) else INT8_MAX_STEPS
    consts = constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    steps: dict[str, tuple[float | None, float | None]] = {}
    for y in model.graph.output:
        n = producer.get(y.name)
        step = None
        if n is not None and n.op_type == "DequantizeLinear" and n.input[1] in consts:
            s = numpy_helper.to_array(consts[n.input[1]])
            step = float(s.reshape(-1)[0]) if s.size == 1 else None
        steps[y.name] = (step, bound)
    return steps
