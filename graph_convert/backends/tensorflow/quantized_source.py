"""A quantized ONNX source (QDQ, QOperator, dynamic): its int8 .tflite and what that file holds.

The TF emitters declare the model's own scales and zero points to the TFLite converter
(graph_convert/backends/tensorflow/ops/quantized.py); the stage ``write_int8_tflite`` converts
with ``Optimize.DEFAULT`` and judges the file against ONNX Runtime by the int8 rule
(:func:`graph_convert.checks.equivalence.compare_int8`). This module finds the source's
quantization steps and scales and reads back the .tflite's, so report.json says whether every
int8 tensor uses a scale of the source (no new calibration).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

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
KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")


def is_quantized(model: onnx.ModelProto) -> bool:
    """The source computes with ONNX quantization ops (then an int8 .tflite is written too)."""
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
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
    consts = _constants(model)
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


def source_scales(model: onnx.ModelProto) -> np.ndarray:
    """Every scale value the source's quantization ops hold (float32)."""
    consts = _constants(model)
    found = [np.zeros(0, np.float32)]
    for n in model.graph.node:
        for j in SCALE_SLOTS.get(n.op_type, ()):
            if j < len(n.input) and n.input[j] in consts:
                found.append(numpy_helper.to_array(consts[n.input[j]]).astype(np.float32).reshape(-1))
    return np.unique(np.concatenate(found))


def describe(path: str, model: onnx.ModelProto) -> dict[str, Any]:
    """What the int8 .tflite holds: op counts, its kernels' dtypes, and whether every int8
    activation and weight scale of its int8 kernels is one of the source's (bit-equal in
    float32). Hybrid kernels (float input, int8 weight: dynamic quantization) carry the
    converter's weight scales and are only counted."""
    from graph_convert.backends.tensorflow.runner import interpreter

    interp = interpreter(path, allocate=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    known = source_scales(model)
    kernels, foreign = [], 0
    for op in ops:
        if op["op_name"] not in KERNEL_OPS:
            continue
        ins = [tensors[i] for i in op["inputs"] if i >= 0]
        outs = [tensors[i] for i in op["outputs"]]
        entry = {"op": op["op_name"], "dtypes": [t["dtype"].__name__ for t in ins[:2] + outs]}
        if ins[0]["dtype"] == np.float32:  # hybrid (dynamic range): the converter's weight scales
            kernels.append(entry)
            continue
        for role, t in (("input", ins[0]), ("weight", ins[1] if len(ins) > 1 else None), ("output", outs[0])):
            if t is None or t["dtype"] not in (np.int8, np.uint8, np.int16):
                continue
            sc = np.asarray(t["quantization_parameters"]["scales"], np.float32)
            same = bool(sc.size) and bool(np.isin(sc, known).all())
            foreign += not same
            entry[f"{role}_scale_from_source"] = same
        kernels.append(entry)
    int8 = [k for k in kernels if k["dtypes"][0] == "int8" and k["dtypes"][1] == "int8"]
    hybrid = [k for k in kernels if k["dtypes"][0] == "float32" and len(k["dtypes"]) > 2 and k["dtypes"][1] == "int8"]
    return {"path": "model_int8.tflite", "ops": dict(sorted(Counter(o["op_name"] for o in ops).items())),
            "kernels": kernels, "int8_kernels": len(int8), "hybrid_kernels": len(hybrid),
            "float_kernels": len(kernels) - len(int8) - len(hybrid),
            "scales_from_source": foreign == 0, "scales_not_from_source": foreign}
