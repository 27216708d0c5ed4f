"""cancel_reshape_pair: LeViT's ``Linear -> BatchNorm1d over flattened tokens -> Hardswish``
(Flatten/Reshape (B*N, C), per-channel Mul/Add, Reshape back) exported with BOTH exporters through
the real pipeline: the Reshape pair goes, the .tflite has HARD_SWISH (not ADD + MUL) and matches
ONNX Runtime; a constant that varies along another axis, or a round trip that moves the last axis,
is left alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from graph_convert import convert
from tests.helpers import Builder, assert_equivalent, run_pipeline
from tests.test_fused_ops import _tflite_vs_ort, export


class TokenLinearBN(nn.Module):
    """LeViT's MLP: Linear, BatchNorm1d on (B*N, C), Hardswish, twice."""

    def __init__(self, d: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.bn1 = nn.Linear(d, 2 * d, bias=False), nn.BatchNorm1d(2 * d)
        self.l2, self.bn2 = nn.Linear(2 * d, d, bias=False), nn.BatchNorm1d(d)
        for bn in (self.bn1, self.bn2):  # random statistics and affine: nothing folds away as a constant
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-1, 1)
        self.act = nn.Hardswish()

    def _lbn(self, lin, bn, x):
        return bn(lin(x).flatten(0, 1)).reshape(x.shape[0], x.shape[1], -1)

    def forward(self, x):
        return self._lbn(self.l2, self.bn2, self.act(self._lbn(self.l1, self.bn1, x))) + x


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_levit_token_batchnorm_keeps_hard_swish(exporter, tmp_path):
    module = TokenLinearBN().eval()
    source = export(module, tmp_path / "m.onnx", exporter)
    result = convert(str(tmp_path / "m.onnx"), None, tmp_path / "out")
    rec = [p for p in result.report["passes"] if p["name"] == "cancel_reshape_pair"][0]
    assert rec["changed"] and rec["details"] == {"cancelled": 2}, rec
    ops = result.report["tflite"]["ops"]
    assert ops.get("HARD_SWISH", 0) == 1 and "RESHAPE" not in ops, ops
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(f["ok"] for f in result.report["verification"][stage].values()), stage
    _tflite_vs_ort(result, source)


def _round_trip(const_shape, mid_shape=(12, 8)) -> tuple:
    b = Builder(opset=17)
    x = b.input("x", [3, 4, 8])
    flat = b.op("Reshape", [x, b.const(np.array(mid_shape, np.int64), dtype=np.int64)])
    c = b.const(np.random.default_rng(0).standard_normal(const_shape).astype(np.float32))
    y = b.op("Add", [b.op("Mul", [flat, c]), b.const(np.float32(0.5))])
    back = b.op("Reshape", [y, b.const(np.array([3, 4, 8], np.int64), dtype=np.int64)])
    b.output(b.op("HardSwish", [back]))  # (a Reshape writing a graph output is kept: it names it)
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True)
    assert_equivalent(model, g)
    return g, [r for r in records if r.name == "cancel_reshape_pair"][0]


def test_per_last_axis_constants_cancel():
    g, rec = _round_trip((8,))
    assert rec.changed and rec.details == {"cancelled": 1}
    assert g.count("Reshape") == 0


@pytest.mark.parametrize("const_shape, mid_shape", [((12, 1), (12, 8)), ((12, 8), (12, 8)), ((4,), (24, 4))])
def test_other_constants_or_axes_are_left_alone(const_shape, mid_shape):
    g, rec = _round_trip(const_shape, mid_shape)
    assert not rec.changed
    assert g.count("Reshape") == 2
