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

from graph_convert.checks.int8_steps import QUANTIZED_OPS, SCALE_SLOTS, constants, is_quantized, output_steps  # noqa: F401

KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")

def source_scales(model: onnx.ModelProto) -> np.ndarray:
    """Every scale value the source's quantization ops hold (float32)."""
    consts = constants(model)
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
