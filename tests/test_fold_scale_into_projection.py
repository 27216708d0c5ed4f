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


def _layer_scale_graph(scale_shape, *, gemm: bool = False, div: bool = False):
    """``g * (x @ W + b)`` (or ``/ g``; or a Gemm with transB), every constant random; returns the
    rewritten graph and the pass's record."""
    b = Builder(opset=17)
    x = b.input("x", [2, 12] if gemm else [2, 5, 8])
    rng = np.random.default_rng(1)
    if gemm:
        y = b.op("Gemm", [x, b.const(rng.standard_normal((6, 12)).astype(np.float32)),
                          b.const(rng.standard_normal(6).astype(np.float32))], transB=1)
    else:
        y = b.op("Add", [b.op("MatMul", [x, b.const(rng.standard_normal((8, 6)).astype(np.float32))]),
                         b.const(rng.standard_normal(6).astype(np.float32))])
    g = b.const(rng.uniform(0.5, 1.5, scale_shape).astype(np.float32))
    b.output(b.op("Relu", [b.op("Div" if div else "Mul", [y, g] if div else [g, y])]))
    model = b.model()
    out, records = run_pipeline(model, keep_io_layout=True)
    assert_equivalent(model, out)
    return out, [r for r in records if r.name == "fold_scale_into_projection"][0]


@pytest.mark.parametrize("shape,gemm,div", [((6,), False, False), ((1, 1, 6), False, False), ((6,), False, True),
                                            ((6,), True, False), ((1, 6), True, True)])
def test_a_layer_scale_goes_into_the_weights(shape, gemm, div):
    """A per-output-channel Mul/Div right after the projection (ConvNeXt's gamma, LayerScale)."""
    g, rec = _layer_scale_graph(shape, gemm=gemm, div=div)
    assert rec.changed and rec.details == {"folded": 1}, rec
    assert g.count("Mul") == 0 and g.count("Div") == 0


@pytest.mark.parametrize("shape", [(1, 5, 1),      # over the tokens, not the channels
                                   (5, 6),         # a full matrix
                                   (1, 1, 1, 6)])  # would broadcast the output to rank 4
def test_a_scale_that_is_no_channel_scale_stays(shape):
    g, rec = _layer_scale_graph(shape)
    assert not rec.changed, rec
    assert g.count("Mul") == 1


class LayerScaleMlp(nn.Module):
    """A ViT MLP with timm's LayerScale: ``x + ls * fc2(gelu(fc1(norm(x))))``, every parameter random."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.Linear(2 * D, D)
        self.ls = nn.Parameter(torch.empty(D).uniform_(0.1, 1.0))
        nn.init.uniform_(self.norm.weight, 0.5, 1.5)
        nn.init.normal_(self.norm.bias)

    def forward(self, x):
        return x + self.ls * self.fc2(F.gelu(self.fc1(self.norm(x))))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_layer_scale_of_a_real_block_folds_and_matches(exporter, tmp_path):
    """Both exporters' LayerScale: the scale goes into fc2, no MUL is left in the .tflite, and it
    matches ONNX Runtime."""
    source = export(LayerScaleMlp(), tmp_path / "m.onnx", exporter)
    result = convert(str(tmp_path / "m.onnx"), None, tmp_path / "out")
    rec = [p for p in result.report["passes"] if p["name"] == "fold_scale_into_projection"][0]
    assert rec["changed"] and rec["details"]["folded"] == 1, rec
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(f["ok"] for f in result.report["verification"][stage].values()), stage
    _tflite_vs_ort(result, source)
