"""drop_nan_guard: the dynamo exporter's ``Where(IsNaN(softmax), 0, softmax)`` after
``scaled_dot_product_attention`` goes when the scores are finite by construction (MatMul, finite
constant scale and bias) and stays when a mask input or a -inf constant feeds them."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graph_convert import convert
from tests.helpers import Builder, assert_equivalent, run_pipeline


class MaskedSDPA(torch.nn.Module):
    """SDPA with a constant boolean mask, as Hugging Face passes one (what the dynamo exporter guards)."""

    def __init__(self, masked_row: bool = False):
        super().__init__()
        torch.manual_seed(5)
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
        if masked_row:
            mask[0, 0, 2, :] = False  # one query attends to nothing: -inf everywhere, the guard's zeros
        self.register_buffer("mask", mask)

    def forward(self, x):
        def heads(t):
            return t.view(1, 6, 2, 8).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=self.mask)
        return o.transpose(1, 2).reshape(1, 6, 16)


def _convert(module, tmp_path):
    x = torch.randn(1, 6, 16)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(tmp_path / "m.onnx"), dynamo=True)
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "IsNaN" in ops and "Where" in ops  # the exporter wrote the guard
    result = convert(str(tmp_path / "m.onnx"), None, tmp_path / "out")
    rec = [p for p in result.report["passes"] if p["name"] == "drop_nan_guard"][0]
    return result, rec


def test_finite_bias_drops_the_guard(tmp_path):
    result, rec = _convert(MaskedSDPA(), tmp_path)
    assert rec["details"] == {"dropped": 1}
    ops = result.report["tflite"]["ops"]
    assert "SELECT_V2" not in ops and "NOT_EQUAL" not in ops, ops
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(f["ok"] for f in result.report["verification"][stage].values()), result.report["verification"][stage]


def test_fully_masked_row_is_finite_in_the_file(tmp_path):
    """The exporter writes a masked position as float32's lowest finite value, not -inf: in its
    file a fully masked row is finite (a uniform softmax), so the guard never acts there either
    and goes; the converted model still computes what the file computes (checked by ONNX Runtime
    on the rewritten graph, TF and TFLite)."""
    result, rec = _convert(MaskedSDPA(masked_row=True), tmp_path)
    assert rec["details"] == {"dropped": 1}
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(f["ok"] for f in result.report["verification"][stage].values()), result.report["verification"][stage]


@pytest.mark.parametrize("mask_kind", ["input", "constant_nan", "constant_minus_inf"])
def test_guard_stays_when_the_scores_can_be_nan(mask_kind):
    b = Builder()
    x = b.input("x", [2, 4, 3])
    s = b.op("MatMul", [x, b.op("Transpose", [x], perm=[0, 2, 1])])
    if mask_kind == "input":
        mask = b.input("mask", [2, 4, 4])
    else:
        m = np.zeros((1, 4, 4), np.float32)
        m[0, 1, :] = np.nan if mask_kind == "constant_nan" else -np.inf  # a whole row: the guard acts
        mask = b.const(m)
    p = b.op("Softmax", [b.op("Add", [s, mask])], axis=-1)
    b.output(b.op("Where", [b.op("IsNaN", [p]), b.const(np.array(0.0, np.float32)), p]))
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True)
    assert not [r for r in records if r.name == "drop_nan_guard"][0].changed
    assert g.count("IsNaN") == 1 and g.count("Where") == 1
    assert_equivalent(model, g, atol=1e-5)
