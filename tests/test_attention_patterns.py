"""Attention as real code writes it (issue 12 part 2): timm-style, Hugging Face-style (SDPA),
conv-attention with an attention bias, and ``nn.MultiheadAttention`` (packed in_proj, both
layouts), each exported with BOTH exporters (dynamo, TorchScript at opset 17) and converted with
and without ``heads_first``: TRANSPOSE ops in the .tflite, the fused GELU, the pass's own count,
and the .tflite against PyTorch. Plus :mod:`movement` against ONNX Runtime and a near miss."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch

import graph_convert_models as models
from graph_convert import convert
from graph_convert_passes.lib.movement import follow, grid_perm
from tests.helpers import Builder, assert_equivalent, run_ort, run_pipeline


class MHA(torch.nn.Module):
    """``nn.MultiheadAttention`` self-attention with random in_proj/out_proj biases."""

    def __init__(self, batch_first: bool):
        super().__init__()
        torch.manual_seed(4)
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first)
        with torch.no_grad():
            self.attn.in_proj_bias.copy_(torch.randn(96) * 0.5)
            self.attn.out_proj.bias.copy_(torch.randn(32) * 0.5)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _mha(batch_first: bool):
    return MHA(batch_first).eval(), (torch.randn(1, 16, 32) if batch_first else torch.randn(16, 1, 32),)


def _bundled(name: str):
    module, _ = models.load(name)
    return module, models.example_inputs(name)


CASES = {
    # name: (factory, GELU ops in the .tflite)
    "timm_attention": (lambda: _bundled("timm_attention"), 1),
    "hf_attention": (lambda: _bundled("hf_attention"), 1),
    "conv_attention": (lambda: _bundled("conv_attention"), 3),
    "mha_batch_first": (lambda: _mha(True), 0),
    "mha_seq_first": (lambda: _mha(False), 0),
}
# measured: the exporters leave 4 TRANSPOSE around each attention (q, k, v into heads, heads
# back out) once push_transposes is done; heads_first removes all of them
BEFORE, AFTER = 4, 0


def _export(module, inputs, path: str, exporter: str) -> None:
    kw = {"dynamo": True} if exporter == "dynamo" else {"dynamo": False, "opset_version": 17}
    sink = io.StringIO()
    # no torch.no_grad(): under it nn.MultiheadAttention takes its fast path, which the TorchScript
    # exporter cannot write (aten::_native_multi_head_attention)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, path, **kw)


@pytest.fixture(scope="module", params=[(c, e) for c in CASES for e in ("dynamo", "legacy")], ids=lambda p: f"{p[0]}-{p[1]}")
def converted(request, tmp_path_factory):
    case, exporter = request.param
    module, inputs = CASES[case][0]()
    d = tmp_path_factory.mktemp(f"{case}_{exporter}")
    src = str(d / "model.onnx")
    _export(module, inputs, src, exporter)
    results = {hf: convert(src, None, d / f"out_{hf}", heads_first=hf) for hf in (False, True)}
    return case, module, inputs, results


def test_heads_first_removes_the_attention_transposes(converted):
    case, _, _, results = converted
    before, after = (results[hf].report["tflite"]["ops"] for hf in (False, True))
    assert before.get("TRANSPOSE", 0) == BEFORE, (case, before)
    assert after.get("TRANSPOSE", 0) == AFTER, (case, after)
    rec = [p for p in results[True].report["passes"] if p["name"] == "heads_first"][0]
    assert rec["details"] == {"into_heads": 3, "out_of_heads": 1}, rec  # q, k, v; the output projection
    gelu = CASES[case][1]
    assert before.get("GELU", 0) == after.get("GELU", 0) == gelu, (before, after)


def test_verified_and_matches_pytorch(converted):
    from ai_edge_litert.interpreter import Interpreter

    case, module, inputs, results = converted
    with torch.no_grad():
        ref = module(*inputs).numpy()
    for hf, result in results.items():
        for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
            for out, fig in result.report["verification"][stage].items():
                assert fig["ok"], (case, hf, stage, out, fig)
        runner = Interpreter(model_path=result.tflite).get_signature_runner("serving_default")
        io_ = result.report["io"]
        feeds = {i["tf_name"]: t.numpy().transpose(i["layout_perm"]) if i["layout_perm"] else t.numpy()
                 for i, t in zip(io_["inputs"], inputs)}
        got = runner(**feeds)[io_["outputs"][0]["tf_name"]]
        if io_["outputs"][0]["layout_perm"]:
            got = got.transpose(np.argsort(io_["outputs"][0]["layout_perm"]))
        scale = float(np.abs(ref).max())
        assert np.abs(got - ref).max() <= 1e-5 * scale, (case, hf, np.abs(got - ref).max(), scale)


# --- the index maps against ONNX Runtime -----------------------------------------------------
MOVES = {
    "Reshape": (lambda b, x: b.op("Reshape", [x, b.const(np.array([3, 2, 4], np.int64), dtype=np.int64)]), [2, 3, 4]),
    "Transpose": (lambda b, x: b.op("Transpose", [x], perm=[2, 0, 1]), [2, 3, 4]),
    "Gather": (lambda b, x: b.op("Gather", [x, b.const(np.array([[2, 0], [1, -1]], np.int64), dtype=np.int64)], axis=1), [2, 3, 4]),
    "GatherScalar": (lambda b, x: b.op("Gather", [x, b.const(np.array(1, np.int64), dtype=np.int64)], axis=0), [3, 2, 4]),
    "Split": (lambda b, x: b.op("Split", [x, b.const(np.array([1, 3], np.int64), dtype=np.int64)], 2, axis=2)[1], [2, 3, 4]),
    "Slice": (lambda b, x: b.op("Slice", [x, *(b.const(np.array(v, np.int64), dtype=np.int64) for v in ([3, 0], [0, 9], [2, 1], [-1, 2]))]),
              [2, 3, 4]),
    "Squeeze": (lambda b, x: b.op("Squeeze", [x, b.const(np.array([1], np.int64), dtype=np.int64)]), [2, 1, 4]),
    "Unsqueeze": (lambda b, x: b.op("Unsqueeze", [x, b.const(np.array([0, 3], np.int64), dtype=np.int64)]), [2, 3, 4]),
}


@pytest.mark.parametrize("op", list(MOVES))
def test_follow_moves_indices_as_onnx_runtime_moves_data(op):
    from graph_convert.ir import from_onnx

    make, shape = MOVES[op]
    b = Builder()
    x = b.input("x", shape)
    b.output(make(b, x))
    model = b.model()
    g = from_onnx(model)
    (node,) = [n for n in g.nodes if n.op_type == op.replace("Scalar", "")]
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    got = follow(g, node, idx)
    ref = list(run_ort(model, {"x": idx.astype(np.float32)}).values())[0]
    k = node.outputs.index(model.graph.output[0].name)
    np.testing.assert_array_equal(got[k], ref.astype(np.int64))


@pytest.mark.parametrize("shape", [(2, 3, 4), (6, 4), (2, 1, 3, 2), (24,)])
def test_grid_perm_finds_every_transpose_of_a_reshape(shape):
    import itertools

    n = int(np.prod(shape))
    for perm in itertools.permutations(range(len(shape))):
        tok = np.arange(n).reshape(shape).transpose(perm)
        for out in (tok.shape, (1, *tok.shape), (tok.shape[0], -1)):
            got = grid_perm(tok.reshape(out))
            # an output axis merging grid axes that the transpose separated is not looked for
            if got is None:
                assert out[-1] == -1 and list(perm[1:]) != list(range(perm[1], perm[1] + len(perm) - 1)), (perm, out)
                continue
            g, p = got
            np.testing.assert_array_equal(np.arange(n).reshape(g).transpose(p).reshape(tok.reshape(out).shape), tok.reshape(out))
    assert grid_perm(np.arange(n).reshape(shape)) == ([n], [0])  # nothing moved: one Reshape
    swapped = np.arange(n)
    swapped[[1, 2]] = swapped[[2, 1]]  # two elements exchanged: no reshape + transpose does that
    assert grid_perm(swapped.reshape(shape)) is None


def test_declines_when_tokens_and_features_mix():
    """Features folded into the token axis (``(T, H, D) -> (T*H, D)``) are no head split."""
    b = Builder()
    t, c, h, d = 5, 6, 2, 3
    x = b.input("x", [t, c])
    y = b.op("Add", [b.op("MatMul", [x, b.weight([c, h * d])]), b.weight([h * d])])
    y = b.op("Reshape", [y, b.const(np.array([t * h, d], np.int64), dtype=np.int64)])
    y = b.op("Transpose", [y], perm=[1, 0])
    b.output(b.op("MatMul", [y, b.weight([t * h, 4])]))
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True, heads_first=True)
    assert not [r for r in records if r.name == "heads_first"][0].changed
    assert_equivalent(model, g, atol=1e-5)


def test_weight_behind_identity_is_a_projection():
    """The TorchScript exporter shares an equal weight between layers through Identity; a weight
    that large (over fold_constants' limit) stays behind it and is still read as a constant."""
    from graph_convert_passes.fold_constants import MAX_ELEMENTS

    b = Builder()
    t, c, h = 4, 1024, 2
    n = MAX_ELEMENTS // c + 64  # the Identity's output is too big to fold
    x = b.input("x", [1, t, c])
    w = b.op("Identity", [b.weight([c, n], scale=0.03)])
    y = b.op("Reshape", [b.op("MatMul", [x, w]), b.const(np.array([1, t, h, n // h], np.int64), dtype=np.int64)])
    b.output(b.op("Relu", [b.op("Transpose", [y], perm=[0, 2, 1, 3])]))
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True, heads_first=True)
    assert [r for r in records if r.name == "heads_first"][0].details == {"into_heads": 1}
    assert g.count("Transpose") == 0
    assert_equivalent(model, g, atol=1e-5)
