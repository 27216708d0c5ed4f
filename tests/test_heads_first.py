"""heads_first (opt-in, --heads-first): attention projections with head-major weights, so the
.tflite holds no attention TRANSPOSE; checked against ONNX Runtime by the pipeline and against
PyTorch here, plus the pattern's corners on small ONNX graphs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graph_convert_models as models
from graph_convert import convert
from tests.helpers import Builder, assert_equivalent, run_pipeline

# TRANSPOSE ops left with heads_first: swin's window partition and reverse (data movement the
# model asks for, 2 per block), nothing around attention
LEFT = {"vit_tiny": 0, "bert_tiny": 0, "swin_block": 4}


@pytest.mark.parametrize("name", models.TRANSFORMERS)
def test_transformers_lose_their_attention_transposes(name, tmp_path):
    module, _ = models.load(name)
    ex = models.example_inputs(name)
    result = convert(module, ex, tmp_path / "out", heads_first=True)
    rec = [p for p in result.report["passes"] if p["name"] == "heads_first"][0]
    assert rec["changed"] and rec["details"]["into_heads"] >= 2 and rec["details"]["out_of_heads"] >= 1
    assert result.report["tflite"]["transpose_ops"] == LEFT[name], result.report["tflite"]["ops"]
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=result.paths["tflite_float32"]).get_signature_runner("serving_default")
    feeds = {}
    for io, t in zip(result.report["io"]["inputs"], ex):
        v = t.numpy()
        feeds[io["tf_name"]] = np.transpose(v, io["layout_perm"]) if io["layout_perm"] else v
    got = runner(**feeds)
    with torch.no_grad():
        ref = module(*ex)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    for io, r in zip(result.report["io"]["outputs"], ref):
        np.testing.assert_allclose(got[io["tf_name"]], r.numpy(), atol=1e-4 * max(1.0, float(r.abs().max())), rtol=0)


def test_off_by_default(tmp_path):
    module, _ = models.load("vit_tiny")
    result = convert(module, models.example_inputs("vit_tiny"), tmp_path / "out")
    assert not [p for p in result.report["passes"] if p["name"] == "heads_first"][0]["changed"]


def _attention(opset: int, leading: list[int], k_perm: list[int], bias: bool) -> "onnx.ModelProto":
    """Q/K/V projections split into 2 heads of 3, Q @ Kᵀ, softmax, @ V, heads merged, projected."""
    b = Builder(opset=opset)
    t, c, h, d = 5, 6, 2, 3
    x = b.input("x", [*leading, t, c])
    lead = len(leading)

    def proj(perm):
        y = b.op("MatMul", [x, b.weight([c, h * d])])
        if bias:
            y = b.op("Add", [b.weight([h * d]), y])  # the constant on the left, too
        y = b.op("Reshape", [y, b.const(np.array([*leading, t, h, d], np.int64), dtype=np.int64)])
        return b.op("Transpose", [y], perm=perm)

    base = list(range(lead))
    q = proj(base + [lead + 1, lead, lead + 2])
    kt = proj(k_perm)
    v = proj(base + [lead + 1, lead, lead + 2])
    if k_perm[-2:] == [lead, lead + 2]:  # K came out (T, D): transpose it for Q @ Kᵀ
        r = len(k_perm)
        kt = b.op("Transpose", [kt], perm=list(range(r - 2)) + [r - 1, r - 2])
    s = b.op("Softmax", [b.op("MatMul", [q, kt])], axis=-1)
    o = b.op("MatMul", [s, v])
    o = b.op("Transpose", [o], perm=base + [lead + 1, lead, lead + 2])
    o = b.op("Reshape", [o, b.const(np.array([*leading, t, h * d], np.int64), dtype=np.int64)])
    b.output(b.op("MatMul", [o, b.weight([h * d, 4])]))
    return b.model()


@pytest.mark.parametrize("opset", [12, 17])  # ReduceSum's axes: an attribute before 13, an input after
@pytest.mark.parametrize("leading", [[2], [2, 3], []])
@pytest.mark.parametrize("k_kind", ["T,D", "D,T"])
@pytest.mark.parametrize("bias", [True, False])
def test_pattern_corners_match_onnx_runtime(opset, leading, k_kind, bias):
    lead = len(leading)
    k_perm = list(range(lead)) + ([lead + 1, lead, lead + 2] if k_kind == "T,D" else [lead + 1, lead + 2, lead])
    model = _attention(opset, leading, k_perm, bias)
    g, records = run_pipeline(model, keep_io_layout=True, heads_first=True)
    rec = [r for r in records if r.name == "heads_first"][0]
    assert rec.details == {"into_heads": 3, "out_of_heads": 1}
    # what is left: at most the swap of K's last two axes, which TFLite folds into BATCH_MATMUL
    assert g.count("Transpose") == 1
    assert_equivalent(model, g, atol=1e-5)
