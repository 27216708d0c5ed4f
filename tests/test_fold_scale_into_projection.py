"""fold_scale_into_projection: the scalar Mul an attention export puts on queries and keys after
``Linear -> view -> transpose`` (both exporters write ``F.scaled_dot_product_attention`` with the
scale split as sqrt(scale) on each) goes into the projection's weights; the .tflite has no MUL and
matches ONNX Runtime. A Mul on a tensor that is not a projection's own output is left alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from graph_convert import convert
from tests.helpers import Builder, assert_equivalent, run_pipeline
from tests.test_fused_ops import D, _tflite_vs_ort, export


class SdpaAttention(nn.Module):
    """Hugging Face-style self-attention through F.scaled_dot_product_attention."""

    def __init__(self, heads: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.h = heads
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (lin(x).view(b, t, self.h, c // self.h).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_sdpa_scale_goes_into_the_weights(exporter, tmp_path):
    source = export(SdpaAttention(), tmp_path / "m.onnx", exporter)
    result = convert(str(tmp_path / "m.onnx"), None, tmp_path / "out")
    rec = [p for p in result.report["passes"] if p["name"] == "fold_scale_into_projection"][0]
    ops = result.report["tflite"]["ops"]
    assert rec["changed"] and rec["details"]["folded"] >= 1, rec
    assert "MUL" not in ops and "DIV" not in ops, ops
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(f["ok"] for f in result.report["verification"][stage].values()), stage
    _tflite_vs_ort(result, source)


def _graph(bias_add: bool, extra_reader: bool):
    b = Builder(opset=17)
    x = b.input("x", [2, 5, 8])
    rng = np.random.default_rng(0)
    y = b.op("MatMul", [x, b.const(rng.standard_normal((8, 12)).astype(np.float32))])
    if bias_add:
        y = b.op("Add", [b.const(rng.standard_normal(12).astype(np.float32)), y])
    r = b.op("Reshape", [y, b.const(np.array([2, 5, 3, 4], np.int64), dtype=np.int64)])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3])
    s = b.op("Div", [t, b.const(np.float32(1.7))])
    b.output(b.op("Relu", [s]))
    if extra_reader:
        b.output(b.op("Sigmoid", [r]))  # the unscaled tensor is needed too: the weights cannot change
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True)
    assert_equivalent(model, g)
    return g, [r for r in records if r.name == "fold_scale_into_projection"][0]


@pytest.mark.parametrize("bias_add", [True, False])
def test_div_after_reshape_transpose_folds(bias_add):
    g, rec = _graph(bias_add, extra_reader=False)
    assert rec.changed and rec.details == {"folded": 1}
    assert g.count("Div") == 0 and g.count("Mul") == 0


def test_a_second_reader_keeps_the_div():
    g, rec = _graph(True, extra_reader=True)
    assert not rec.changed
    assert g.count("Div") == 1
