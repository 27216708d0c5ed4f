"""ONNX files from older model zoos (opsets 7-13): LRN, Sum, Dropout, BatchNormalization,
attribute-style Unsqueeze/Split/Reduce/Pad/Slice, Upsample. We handle the old forms directly (no
version conversion): the emitters and transpose handlers read the opset; the report records it."""
from __future__ import annotations

import numpy as np
import pytest

from graph_convert import convert
from tests.helpers import Builder


def zoo_like(opset: int):
    b = Builder(opset=opset)
    x = b.input("data", [1, 3, 16, 16])
    y = b.op("Conv", [x, b.weight([8, 3, 3, 3]), b.weight([8])], pads=[1, 1, 1, 1])
    y = b.op("BatchNormalization", [y, b.const(np.full(8, 1.5, np.float32)), b.const(np.full(8, 0.1, np.float32)),
                                       b.const(np.zeros(8, np.float32)), b.const(np.full(8, 2.0, np.float32))])
    y = b.op("Relu", [y])
    y = b.op("LRN", [y], size=3, alpha=1e-4, beta=0.75, bias=1.0)
    if opset < 12:
        y = b.op("Dropout", [y], ratio=0.5)
    else:
        y = b.op("Dropout", [y])
    a, c = b.op("Split", [y], 2, axis=1, split=[4, 4]) if opset < 13 else b.op("Split", [y, b.const(np.array([4, 4]), dtype=np.int64)], 2, axis=1)
    y = b.op("Sum", [a, c, a])
    if opset < 10:
        y = b.op("Upsample", [y, b.const(np.array([1, 1, 2, 2], dtype=np.float32))], mode="nearest")
    else:
        y = b.op("Resize", [y, b.const(np.array([], dtype=np.float32)), b.const(np.array([1, 1, 2, 2], dtype=np.float32))], mode="nearest")
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    if opset < 11:
        y = b.op("Pad", [y], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant", value=0.0)
    else:
        y = b.op("Pad", [y, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]), dtype=np.int64)], mode="constant")
    m = b.op("ReduceMean", [y], axes=[2, 3], keepdims=1)
    m = b.op("Unsqueeze", [b.op("Squeeze", [m], axes=[3])], axes=[3]) if opset < 13 else m
    f = b.op("Flatten", [m], axis=1)
    b.output(b.op("Gemm", [f, b.weight([4, 4]), b.weight([4])], transB=1))
    return b.model()


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_zoo_style_model_converts(opset, tmp_path):
    result = convert(zoo_like(opset), None, tmp_path / "out")
    rep = result.report
    assert rep["tflite"]["transpose_ops"] == 0, rep["tflite"]["ops"]
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(f["ok"] and f["max_abs"] <= 1e-4 for f in rep["verification"][stage].values()), (stage, rep["verification"][stage])
    assert rep["source"]["opset"] == opset and rep["source"]["old_forms"] == "handled directly (no version conversion)"
