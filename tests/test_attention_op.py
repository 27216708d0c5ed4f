"""Opset 23/24 Attention and RotaryEmbedding beyond the ONNX conformance cases, and as the
dynamo exporter writes them.

The conformance cases give every operand at run time; here masks, caches and sequence lengths are
also constants of the model (as exporters write them), through the pipeline, the TF emitter, the
TFLite converter (builtin ops only) and the LiteRT interpreter, against the ONNX reference
implementation (``onnx.reference``). Then ``nn.MultiheadAttention`` and
``F.scaled_dot_product_attention`` exported by the dynamo exporter at opset 23 (one Attention
node) are converted with and without ``heads_first``: verified, no Flex or custom op, the
.tflite against PyTorch, and the TRANSPOSE ops left.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx.backend.test.case.test_case import TestCase
from onnx.reference import ReferenceEvaluator

from graph_convert import convert
from graph_convert.conformance import Runner
from tests.torch_io import export, flex_or_custom, max_error_over_scale, run_tflite

RNG = np.random.default_rng(23)
FL, F16, I64, B = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.BOOL
NP = {FL: np.float32, F16: np.float16, I64: np.int64, B: np.bool_}


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner()


def _value(shape, dtype):
    if dtype == B:
        return RNG.random(shape) > 0.35
    if dtype == I64:
        return RNG.integers(1, 7, shape).astype(np.int64)
    return RNG.standard_normal(shape).astype(NP[dtype])


def _check(runner: Runner, op: str, opset: int, inputs: list, consts: dict, n_out: int, tol: float = 1e-4, **attrs) -> None:
    """One ``op`` node reading ``inputs`` ((name, shape, dtype) graph inputs, random values) and
    ``consts`` (name -> array, "" for an omitted input), wired in the order of ``order``."""
    order = attrs.pop("order")
    feeds = {n: _value(s, t) for n, s, t in inputs}
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, order, outs, **attrs)
    g = helper.make_graph([node], op.lower(), [helper.make_tensor_value_info(n, t, s) for n, s, t in inputs],
                          [helper.make_tensor_value_info(o, 0, None) for o in outs],
                          [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    expected = ReferenceEvaluator(m).run(None, feeds)
    for o, e in zip(m.graph.output, expected):
        o.CopyFrom(helper.make_tensor_value_info(o.name, helper.np_dtype_to_tensor_dtype(e.dtype), list(e.shape)))
    onnx.checker.check_model(m)
    case = TestCase(name=g.name, model_name=g.name, url=None, model_dir=None, model=m,
                    data_sets=[([feeds[n] for n, _, _ in inputs], expected)], kind="node", rtol=tol, atol=tol)
    r = runner.run(case)
    assert r.status == "pass" and r.tf == "pass" and r.tflite == "pass", (r.status, r.tf, r.tflite, r.reason_class, r.reason)


def _bool_mask_with_an_empty_row(shape):
    m = RNG.random(shape) > 0.4
    m[..., 1, :] = False  # a query that may attend nothing: its output is 0 by definition
    return m


def _float_mask(shape):
    m = RNG.standard_normal(shape).astype(np.float32)
    m[RNG.random(shape) < 0.3] = -np.inf
    return m


def test_constant_bool_mask_with_an_empty_row_gqa(runner):
    _check(runner, "Attention", 23, [("q", [2, 4, 5, 8], FL), ("k", [2, 2, 7, 8], FL), ("v", [2, 2, 7, 6], FL)],
           {"m": _bool_mask_with_an_empty_row((5, 7))}, 1, order=["q", "k", "v", "m"])


def test_constant_float_mask_causal_past_all_outputs_bias_mode(runner):
    _check(runner, "Attention", 23,
           [("q", [1, 3, 4, 8], FL), ("k", [1, 3, 4, 8], FL), ("v", [1, 3, 4, 8], FL),
            ("pk", [1, 3, 5, 8], FL), ("pv", [1, 3, 5, 8], FL)],
           {"m": _float_mask((1, 1, 4, 9))}, 4, order=["q", "k", "v", "m", "pk", "pv"], is_causal=1,
           qk_matmul_output_mode=2)


@pytest.mark.parametrize("mode", [0, 1, 3])
def test_3d_gqa_softcap_scale_and_qk_output(mode, runner):
    _check(runner, "Attention", 23, [("q", [2, 6, 32], FL), ("k", [2, 9, 16], FL), ("v", [2, 9, 12], FL)], {}, 4 if mode else 2,
           order=["q", "k", "v"] + (["", "", ""] if mode else []), q_num_heads=4, kv_num_heads=2, softcap=1.5,
           scale=0.4, qk_matmul_output_mode=mode)


def test_opset24_nonpad_kv_seqlen_constant_with_causal_and_short_mask(runner):
    _check(runner, "Attention", 24, [("q", [3, 2, 2, 8], FL), ("k", [3, 2, 6, 8], FL), ("v", [3, 2, 6, 8], FL)],
           {"m": RNG.random((1, 2, 2, 4)) > 0.2, "n": np.array([6, 4, 1], np.int64)}, 1,
           order=["q", "k", "v", "m", "", "", "n"], is_causal=1)


def test_float16_with_float_mask(runner):
    _check(runner, "Attention", 23, [("q", [1, 2, 3, 8], F16), ("k", [1, 2, 5, 8], F16), ("v", [1, 2, 5, 8], F16),
                                     ("m", [3, 5], F16)], {}, 1, tol=2e-3, order=["q", "k", "v", "m"])


ROTARY = {
    # name: (input shape, cache rows, rotary dim or 0, interleaved, num_heads (3-D input))
    "4d_full": ((2, 3, 5, 8), 16, 0, 0, 0),
    "4d_interleaved_partial": ((1, 2, 6, 12), 10, 8, 1, 0),
    "3d_partial": ((2, 5, 24), 12, 4, 0, 3),
    "3d_interleaved": ((1, 4, 16), 8, 0, 1, 2),
}


@pytest.mark.parametrize("form", list(ROTARY))
@pytest.mark.parametrize("positions", ["ids", "no_ids"])
def test_rotary_embedding_forms(form, positions, runner):
    shape, rows, rd, inter, heads = ROTARY[form]
    d = shape[-1] // heads if heads else shape[-1]
    half = (rd or d) // 2
    b, s = shape[0], shape[2] if len(shape) == 4 else shape[1]
    attrs = dict(interleaved=inter, rotary_embedding_dim=rd)
    if heads:
        attrs["num_heads"] = heads
    if positions == "ids":  # constant caches indexed by run-time positions
        consts = {"cos": RNG.uniform(-1, 1, (rows, half)).astype(np.float32),
                  "sin": RNG.uniform(-1, 1, (rows, half)).astype(np.float32)}
        inputs = [("x", list(shape), FL), ("pos", [b, s], I64)]
        order = ["x", "cos", "sin", "pos"]
    else:  # per-position caches given at run time
        consts = {}
        inputs = [("x", list(shape), FL), ("cos", [b, s, half], FL), ("sin", [b, s, half], FL)]
        order = ["x", "cos", "sin"]
    _check(runner, "RotaryEmbedding", 23, inputs, consts, 1, order=order, **attrs)


def test_attention_declines_a_transpose_in_front_with_a_reason():
    from graph_convert.ir import from_onnx
    from graph_convert_passes.lib.signal_attention_handlers import HANDLERS

    q = helper.make_tensor_value_info("q", FL, [1, 4, 2, 8])
    nodes = [helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
             helper.make_node("Attention", ["qt", "qt", "qt"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "a", [q], [helper.make_tensor_value_info("y", FL, None)]),
                          opset_imports=[helper.make_opsetid("", 23)])
    g = from_onnx(m)
    node = [n for n in g.nodes if n.op_type == "Attention"][0]
    got = HANDLERS["Attention"](g, node, (0, 2, 1, 3), "test")
    assert not got and "by position" in got.reason


# --- the dynamo exporter at opset 23 --------------------------------------------------------------
class MHA(torch.nn.Module):
    """``nn.MultiheadAttention`` self-attention (batch first) with random biases."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        with torch.no_grad():
            self.attn.in_proj_bias.normal_(0, 0.5)
            self.attn.out_proj.bias.normal_(0, 0.5)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class CausalGQA(torch.nn.Module):
    """Projections into 4 query and 2 key/value heads, causal SDPA with GQA, output projection."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        torch.manual_seed(6)
        self.h, self.kv, self.d = heads, kv_heads, dim // heads
        self.q = torch.nn.Linear(dim, dim)
        self.kvp = torch.nn.Linear(dim, 2 * kv_heads * self.d)
        self.o = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)
        k, v = self.kvp(x).view(b, t, 2, self.kv, self.d).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


# name: (factory, batch, TRANSPOSE ops without heads_first, with it). Measured: the same counts as
# the opset-18 export of the same module, where attention is spelled out in MatMul/Softmax (for
# nn.MultiheadAttention at batch 2 both give 6 and 2: its (T, B * H, D) reshapes, not the op)
DYNAMO = {"mha": (MHA, 1, 4, 0), "causal_gqa": (CausalGQA, 2, 4, 0)}


@pytest.mark.parametrize("name", list(DYNAMO))
def test_dynamo_opset23_attention_converts_and_matches(name, tmp_path):
    make, batch, before, after = DYNAMO[name]
    module = make().eval()
    x = (torch.randn(batch, 12, 32),)
    src = str(tmp_path / "model.onnx")
    export(module, x, src, "dynamo", 23)
    assert "Attention" in {n.op_type for n in onnx.load(src).graph.node}
    with torch.no_grad():
        ref = module(*x).numpy()
    counts = {}
    for hf in (False, True):
        result = convert(src, None, tmp_path / f"out_{hf}", heads_first=hf)
        for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
            for out, fig in result.report["verification"][stage].items():
                assert fig["ok"], (hf, stage, out, fig)
        assert not flex_or_custom(result), result.report["tflite"]["ops"]
        assert max_error_over_scale(run_tflite(result, x)[0], ref) <= 1e-5
        counts[hf] = result.report["tflite"]["ops"].get("TRANSPOSE", 0)
        if hf:  # the scale went onto the query (attention_scale_to_query), then into its weights
            assert "MUL" not in result.report["tflite"]["ops"], result.report["tflite"]["ops"]
    assert counts == {False: before, True: after}, counts


@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_scale_moves_onto_the_query_once(scale):
    from tests.helpers import assert_equivalent, run_pipeline

    attrs = {} if scale is None else {"scale": scale}
    ins = [helper.make_tensor_value_info(n, FL, s) for n, s in (("x", [1, 5, 16]), ("k", [1, 2, 7, 8]), ("v", [1, 2, 7, 8]))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]),
             helper.make_node("Reshape", ["p", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["q"], perm=[0, 2, 1, 3]),
             helper.make_node("Attention", ["q", "k", "v"], ["y"], softcap=2.0, **attrs)]
    inits = [onnx.numpy_helper.from_array(RNG.standard_normal((16, 16)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.array([1, 5, 2, 8], np.int64), "shape")]
    m = helper.make_model(helper.make_graph(nodes, "scale", ins, [helper.make_tensor_value_info("y", FL, [1, 2, 5, 8])], inits),
                          opset_imports=[helper.make_opsetid("", 23)])
    m.ir_version = 10
    g, records = run_pipeline(m, keep_io_layout=True)
    rec = [r for r in records if r.name == "attention_scale_to_query"][0]
    assert rec.details == {"moved": 1}
    assert g.count("Mul") == 0  # folded into the projection's weights by fold_scale_into_projection
    assert [n.attr("scale") for n in g.nodes if n.op_type == "Attention"] == [1.0]
    assert_equivalent(m, g, atol=1e-5)
    from graph_convert.ir import to_onnx

    _, again = run_pipeline(to_onnx(g), keep_io_layout=True)  # idempotent: scale 1 stays where it is
    assert not [r for r in again if r.name == "attention_scale_to_query"][0].changed


def test_rotary_then_causal_gqa_attention_with_a_dynamic_batch(tmp_path):
    """RotaryEmbedding on q and k (constant caches, run-time positions), then causal GQA
    Attention, converted with ``dynamic_batch``: verified at two batch sizes, run at a third."""
    from ai_edge_litert.interpreter import Interpreter

    cos, sin = (RNG.uniform(-1, 1, (16, 4)).astype(np.float32) for _ in range(2))
    ins = [helper.make_tensor_value_info("q", FL, [2, 4, 6, 8]), helper.make_tensor_value_info("k", FL, [2, 2, 6, 8]),
           helper.make_tensor_value_info("v", FL, [2, 2, 6, 8]), helper.make_tensor_value_info("pos", I64, [2, 6])]
    nodes = [helper.make_node("RotaryEmbedding", ["q", "cos", "sin", "pos"], ["qr"]),
             helper.make_node("RotaryEmbedding", ["k", "cos", "sin", "pos"], ["kr"], interleaved=1),
             helper.make_node("Attention", ["qr", "kr", "v"], ["y"], is_causal=1)]
    g = helper.make_graph(nodes, "rope_attention", ins, [helper.make_tensor_value_info("y", FL, [2, 4, 6, 8])],
                          [onnx.numpy_helper.from_array(cos, "cos"), onnx.numpy_helper.from_array(sin, "sin")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    src = str(tmp_path / "model.onnx")
    onnx.save(m, src)
    from tests.helpers import assert_batch_kept_and_checked

    result = convert(src, None, tmp_path / "out", dynamic_batch=True, keep_io_layout=True)
    assert_batch_kept_and_checked(result.report)
    assert not flex_or_custom(result), result.report["tflite"]["ops"]
    feeds = {"q": _value((5, 4, 6, 8), FL), "k": _value((5, 2, 6, 8), FL), "v": _value((5, 2, 6, 8), FL),
             "pos": RNG.integers(0, 16, (5, 6)).astype(np.int64)}
    ref = ReferenceEvaluator(m).run(None, feeds)[0]
    runner = Interpreter(model_path=result.tflite).get_signature_runner("serving_default")
    names = {i["name"]: i["tf_name"] for i in result.report["io"]["inputs"]}
    got = list(runner(**{names[k]: v for k, v in feeds.items()}).values())[0]
    assert max_error_over_scale(got, ref) <= 1e-5
