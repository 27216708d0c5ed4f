"""Spelled-out activations and normalizations (issue 12, part 1): each rule on a tiny torch module
exported with BOTH exporters (dynamo, and TorchScript at opset 17) through the real pipeline, the
fused op counted in the .tflite and the .tflite compared with ONNX Runtime; graph-level spellings
and near misses through the pass manager alone."""
from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from graph_convert import convert
from graph_convert.ir import from_onnx
from graph_convert_passes.lib import fused_ops
from graph_convert_passes.lib.expr import Poly, expand
from tests.helpers import Builder, assert_equivalent, run_ort, run_pipeline

D = 16


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(D, D)
    with torch.no_grad():
        lin.bias.copy_(torch.randn(D))
    return lin


class Act(nn.Module):
    """Linear -> activation, so the activation's input is read by more than the pattern."""

    def __init__(self, fn, seed=0):
        super().__init__()
        self.lin, self.fn = _linear(seed), fn

    def forward(self, x):
        return self.fn(self.lin(x)) * 1.5


class HandLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(D)), nn.Parameter(torch.randn(D))

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.w * ((x - u) / torch.sqrt(s + 1e-6)) + self.b


class HandRMSNorm(nn.Module):  # T5 / Llama style
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(D))

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.w * (x * torch.rsqrt(v + 1e-6))


class TorchRMSNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(D, eps=1e-6)
        with torch.no_grad():
            self.norm.weight.copy_(torch.randn(D))

    def forward(self, x):
        return self.norm(x)


class RandomLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        with torch.no_grad():
            self.norm.weight.copy_(torch.randn(D))
            self.norm.bias.copy_(torch.randn(D))

    def forward(self, x):
        return self.norm(x)


class HandSoftmax(nn.Module):
    def forward(self, x):
        e = torch.exp(x - x.max(-1, keepdim=True).values)
        return e / e.sum(-1, keepdim=True)


def _gelu_new(x):  # Hugging Face NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _fast_gelu(x):  # Hugging Face FastGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_hand(x):  # 0.5 first, Mul by 1/sqrt(2)
    return x * 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))


# name: (module factory, TFLite ops that must be there, TFLite ops that must not, exporters to skip)
CASES = {
    "gelu": (lambda: Act(nn.GELU()), {"GELU": 1}, ["TANH", "EXP", "ABS"], ()),
    "gelu_tanh": (lambda: Act(nn.GELU(approximate="tanh")), {"GELU": 1}, ["TANH", "POW"], ()),
    "gelu_hand": (lambda: Act(_gelu_hand), {"GELU": 1}, ["EXP", "ABS"], ()),
    "gelu_new": (lambda: Act(_gelu_new), {"GELU": 1}, ["TANH", "POW"], ()),
    "fast_gelu": (lambda: Act(_fast_gelu), {"GELU": 1}, ["TANH"], ()),
    "silu": (lambda: Act(nn.SiLU()), {"LOGISTIC": 1, "MUL": 2}, [], ()),
    "quick_gelu": (lambda: Act(lambda x: x * torch.sigmoid(1.702 * x)), {"LOGISTIC": 1, "MUL": 3}, [], ()),
    "hardswish": (lambda: Act(nn.Hardswish()), {"HARD_SWISH": 1}, ["RELU6", "MINIMUM"], ()),
    "hardswish_relu6": (lambda: Act(lambda x: x * F.relu6(x + 3.0) / 6.0), {"HARD_SWISH": 1}, ["RELU6", "MINIMUM", "DIV"], ()),
    "hardswish_hardsigmoid": (lambda: Act(lambda x: x * F.hardsigmoid(x)), {"HARD_SWISH": 1}, ["MINIMUM"], ()),
    "mish": (lambda: Act(nn.Mish()), {"EXP": 1}, ["TANH", "LOG"], ()),
    "layer_norm": (RandomLayerNorm, {"MEAN": 2, "RSQRT": 1}, ["SQRT", "DIV", "POW"], ()),
    "layer_norm_hand": (HandLayerNorm, {"MEAN": 2, "RSQRT": 1}, ["SQRT", "DIV", "POW"], ()),
    "rms_norm": (TorchRMSNorm, {"MEAN": 1, "RSQRT": 1}, ["SQRT", "DIV", "POW"], ("legacy",)),
    "rms_norm_hand": (HandRMSNorm, {"MEAN": 1, "RSQRT": 1}, ["SQRT", "DIV", "POW"], ()),
    "softmax_hand": (HandSoftmax, {"SOFTMAX": 1}, ["EXP", "REDUCE_MAX", "SUM"], ()),
}
# the TorchScript exporter has no aten::rms_norm at any opset; torch.nn.RMSNorm reaches users via dynamo only


def export(module, path, exporter: str) -> onnx.ModelProto:
    x = torch.randn(2, 5, D)
    kw = {"dynamo": False, "opset_version": 17} if exporter == "legacy" else {"dynamo": True}
    if exporter == "dynamo18":  # the dynamo exporter below opset 20 expands Gelu back into Div/Erf/Add/Mul/Mul
        kw["opset_version"] = 18
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), **kw)
    return onnx.load(str(path))


def _tflite_vs_ort(result, source: onnx.ModelProto) -> None:
    """The .tflite against ONNX Runtime on the source, within 1e-5 of the output's own scale."""
    from graph_convert.backends.tensorflow.runner import run_tflite

    rng = np.random.default_rng(1)
    (inp,) = [i for i in source.graph.input if i.name not in {t.name for t in source.graph.initializer}]
    x = (rng.standard_normal([d.dim_value for d in inp.type.tensor_type.shape.dim]) * 2).astype(np.float32)
    ref = list(run_ort(source, {inp.name: x}).values())[0]
    io_ = result.report["io"]
    perm = io_["inputs"][0]["layout_perm"]
    got = run_tflite(result.tflite, {io_["inputs"][0]["tf_name"]: x.transpose(perm) if perm else x})[io_["outputs"][0]["tf_name"]]
    if io_["outputs"][0]["layout_perm"]:
        got = got.transpose(np.argsort(io_["outputs"][0]["layout_perm"]))
    scale = float(np.abs(ref).max())
    assert np.abs(got - ref).max() <= 1e-5 * scale, (np.abs(got - ref).max(), scale)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_in_tflite(case, exporter, tmp_path):
    factory, present, absent, skip = CASES[case]
    torch.manual_seed(0)
    if exporter in skip:  # the exporter itself refuses this layer: that is checked, not skipped
        with pytest.raises(Exception, match="rms_norm"):
            export(factory(), tmp_path / "m.onnx", exporter)
        return
    source = export(factory(), tmp_path / "m.onnx", exporter)
    result = convert(str(tmp_path / "m.onnx"), None, tmp_path / "out")
    ops = result.report["tflite"]["ops"]
    for op, n in present.items():
        assert ops.get(op, 0) == n, (case, exporter, ops)
    for op in absent:
        assert op not in ops, (case, exporter, ops)
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(f["ok"] for f in result.report["verification"][stage].values()), stage
    _tflite_vs_ort(result, source)


@pytest.mark.parametrize("case", ["gelu", "gelu_tanh", "rms_norm"])
def test_dynamo_at_opset_18(case, tmp_path):
    factory, present, absent, _ = CASES[case]
    torch.manual_seed(0)
    source = export(factory(), tmp_path / "m.onnx", "dynamo18")
    assert source.graph.node[-1].op_type not in ("Gelu", "RMSNormalization")  # spelled out by the exporter
    result = convert(str(tmp_path / "m.onnx"), None, tmp_path / "out")
    ops = result.report["tflite"]["ops"]
    assert all(ops.get(op, 0) == n for op, n in present.items()) and not any(op in ops for op in absent), ops
    _tflite_vs_ort(result, source)


def test_pass_reports_and_is_idempotent(tmp_path):
    """The pass reports what it fused; a second run changes nothing."""
    from graph_convert.pass_manager import PassContext
    from graph_convert_passes.fuse_activations import FuseActivations
    from tests.helpers import registry

    source = export(Act(nn.GELU()), tmp_path / "m.onnx", "legacy")
    g, records = run_pipeline(source)
    rec = next(r for r in records if r.name == "fuse_activations")
    assert rec.changed and rec.details["fused"] == {"gelu_erf": 1}
    assert g.count("Erf") == 0 and [(n.domain, n.op_type) for n in g.nodes if n.op_type == "Gelu"] == [(fused_ops.DOMAIN, "Gelu")]
    assert not FuseActivations().run(g, PassContext(registry())).changed
    assert_equivalent(source, g)


# --- graph-level spellings (Builder), every one through ORT -----------------------------------------
def _erf_gelu(b: Builder, x: str, form: str) -> str:
    if form == "div_sqrt2":
        arg = b.op("Div", [x, b.const(math.sqrt(2.0))])
    else:
        arg = b.op("Mul", [b.const(1 / math.sqrt(2.0)), x])
    s = b.op("Add", [b.const(1.0), b.op("Erf", [arg])])
    if form == "div_sqrt2":  # x * (1 + erf) * 0.5
        return b.op("Mul", [b.op("Mul", [x, s]), b.const(0.5)])
    if form == "half_first":  # (0.5 * x) * (1 + erf)
        return b.op("Mul", [b.op("Mul", [b.const(0.5), x]), s])
    return b.op("Div", [b.op("Mul", [s, x]), b.const(2.0)])  # (1 + erf) * x / 2


def _model(opset: int, body, *, rank=3) -> onnx.ModelProto:
    b = Builder(opset)
    x0 = b.input("x", [2, 5, D] if rank == 3 else [1, D, 4, 4])
    x = b.op("Add", [x0, b.weight([D] if rank == 3 else [1, D, 1, 1])])  # read by more than the pattern
    b.output(body(b, x))
    return b.model()


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("form", ["div_sqrt2", "half_first", "div2"])
def test_erf_gelu_spellings(form, opset):
    model = _model(opset, lambda b, x: _erf_gelu(b, x, form))
    g, _ = run_pipeline(model)
    gelus = [n for n in g.nodes if n.op_type == "Gelu"]
    assert len(gelus) == 1 and g.count("Erf") == 0 and g.count("Mul") == 0
    assert gelus[0].domain == ("" if opset >= 20 else fused_ops.DOMAIN)
    assert_equivalent(model, g)


def test_local_functions_pass_the_checker():
    model = _model(17, lambda b, x: b.op("Mul", [x, b.op("Sigmoid", [x])]))
    g, _ = run_pipeline(model)
    from graph_convert.ir import to_onnx

    out = to_onnx(g)
    onnx.checker.check_model(out, full_check=True)
    assert [(f.domain, f.name) for f in out.functions] == [(fused_ops.DOMAIN, "Swish")]
    assert_equivalent(model, g)


def test_convnext_channel_layer_norm_declines_with_reason():
    """LayerNorm over the channels of NCHW (ConvNeXt's LayerNorm2d) is not a trailing-axes norm."""
    def ln(b, x):
        axes = b.const(np.array([1], np.int64), dtype=np.int64)
        u = b.op("ReduceMean", [x, axes], keepdims=1) if b.opset >= 18 else b.op("ReduceMean", [x], axes=[1], keepdims=1)
        d = b.op("Sub", [x, u])
        v = (b.op("ReduceMean", [b.op("Mul", [d, d]), axes], keepdims=1) if b.opset >= 18
             else b.op("ReduceMean", [b.op("Mul", [d, d])], axes=[1], keepdims=1))
        return b.op("Div", [d, b.op("Sqrt", [b.op("Add", [v, b.const(1e-6)])])])

    model = _model(17, ln, rank=4)
    g, records = run_pipeline(model)
    rec = next(r for r in records if r.name == "fuse_normalizations")
    assert not rec.changed and "trailing axes" in rec.details["declined"][0]["reason"]
    assert_equivalent(model, g)


def _mean(b: Builder, t: str, axes: list[int]) -> str:
    if b.opset >= 18:
        return b.op("ReduceMean", [t, b.const(np.array(axes, np.int64), dtype=np.int64)], keepdims=1)
    return b.op("ReduceMean", [t], axes=axes, keepdims=1)


def _layer_norm(b: Builder, x: str) -> str:
    d = b.op("Sub", [x, _mean(b, x, [-1])])
    var = _mean(b, b.op("Pow", [d, b.const(2.0)]), [-1])
    y = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, b.const(1e-5)])])])
    return b.op("Add", [b.op("Mul", [b.weight([D]), y]), b.weight([D])])


def _rms_norm(b: Builder, x: str) -> str:
    ms = _mean(b, b.op("Mul", [x, x]), [-1])
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, b.const(1e-6)])])])
    return b.op("Mul", [b.op("Mul", [x, inv]), b.weight([D])])


def _hard_swish(b: Builder, x: str) -> str:
    clip = b.op("Clip", [b.op("Add", [x, b.const(3.0)]), b.const(0.0), b.const(6.0)])
    return b.op("Div", [b.op("Mul", [x, clip]), b.const(6.0)])


@pytest.mark.parametrize("opset", [13, 15, 17, 18, 23])
@pytest.mark.parametrize("kind", ["LayerNormalization", "RMSNormalization", "HardSwish", "Mish"])
def test_local_function_or_onnx_op_by_opset(kind, opset):
    """Below the ONNX op's opset the rule writes the local function; ORT runs either."""
    body = {"LayerNormalization": _layer_norm, "RMSNormalization": _rms_norm, "HardSwish": _hard_swish,
            "Mish": lambda b, x: b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])])}[kind]
    model = _model(opset, body)
    g, _ = run_pipeline(model)
    (node,) = [n for n in g.nodes if n.op_type == kind]
    assert node.domain == ("" if opset >= fused_ops.FUSED[kind].since else fused_ops.DOMAIN)
    assert len(g) == 2  # the Add in front, the fused op
    assert_equivalent(model, g)


def test_local_functions_through_the_pipeline(tmp_path):
    """An opset-15 model: LayerNorm, RMSNorm, HardSwish, GELU all become local functions, and the
    TF emitter writes each as the ONNX op's kernel."""
    model = _model(15, lambda b, x: _erf_gelu(b, _hard_swish(b, _rms_norm(b, _layer_norm(b, x))), "div_sqrt2"))
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = convert(str(tmp_path / "m.onnx"), None, tmp_path / "out")
    fused = {k: v for p in result.report["passes"] for k, v in p.get("details", {}).get("fused", {}).items()}
    assert fused == {"gelu_erf": 1, "hard_swish": 1, "layer_norm": 1, "rms_norm": 1}
    ops = result.report["tflite"]["ops"]
    assert ops["GELU"] == 1 and ops["HARD_SWISH"] == 1 and ops["RSQRT"] == 2 and "DIV" not in ops and "SQRT" not in ops
    rewritten = onnx.load(result.rewritten_onnx)
    assert sorted(f.name for f in rewritten.functions) == ["Gelu", "LayerNormalization", "RMSNormalization"]  # HardSwish: ONNX op (14)
    _tflite_vs_ort(result, model)


@pytest.mark.parametrize("kind", ["Swish", "HardSwish"])
def test_x_made_by_the_gate_op_itself(kind):
    """x = sigmoid(..) then x * sigmoid(x); x = relu6(..) then hardswish(x): either leaf could be the gate."""
    def body(b, y):
        if kind == "Swish":
            x = b.op("Sigmoid", [y])
            return b.op("Mul", [b.op("Sigmoid", [x]), x])
        x = b.op("Clip", [y, b.const(0.0), b.const(6.0)])
        return _hard_swish(b, x)

    model = _model(17, body)
    g, _ = run_pipeline(model)
    assert g.count(kind) == 1
    assert_equivalent(model, g)


# --- near misses: left alone, with the reason ---------------------------------------------------------
NEAR_MISSES = {
    "gelu_tanh_0.05": (lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.05 * torch.pow(x, 3.0)))),
                       "fuse_activations", "Tanh", "Tanh argument"),
    "gelu_div_1.5": (lambda x: 0.5 * x * (1.0 + torch.erf(x / 1.5)), "fuse_activations", "Erf", "Erf argument"),
    "gelu_0.6": (lambda x: 0.6 * x * (1.0 + torch.erf(x / math.sqrt(2.0))), "fuse_activations", "Erf", "0.5*x*(1 + Erf)"),
    "hardswish_div_5": (lambda x: x * F.relu6(x + 3.0) / 5.0, "fuse_activations", "Clip", "is not x*clip(x/6 + 1/2"),
    "silu_2x": (lambda x: 2.0 * x * torch.sigmoid(x), "fuse_activations", "Sigmoid", "is not x*sigmoid"),
    "softmax_other_max": (lambda x: torch.exp(x - x.max(-2, keepdim=True).values)
                          / torch.exp(x - x.max(-2, keepdim=True).values).sum(-1, keepdim=True),
                          "fuse_normalizations", "Exp", None),
}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("case", list(NEAR_MISSES))
def test_near_miss_is_not_rewritten(case, exporter, tmp_path):
    fn, pass_name, kept_op, reason = NEAR_MISSES[case]
    source = export(Act(fn), tmp_path / "m.onnx", exporter)
    g, records = run_pipeline(source)
    rec = next(r for r in records if r.name == pass_name)
    assert not rec.changed, rec.details
    assert g.count(kept_op) >= 1 and g.count("Gelu") == g.count("HardSwish") == g.count("Swish") == g.count("Softmax") == 0
    if reason is not None:
        assert any(reason in d["reason"] for d in rec.details.get("declined", [])), rec.details
    assert_equivalent(source, g)


def test_poly_reads_spellings_alike():
    b = Builder(17)
    x = b.input("x", [4])
    y = b.op("Add", [x, b.const(1.0)])  # read three times below: a leaf
    e = b.op("Erf", [b.op("Div", [y, b.const(math.sqrt(2.0))])])
    one = b.op("Mul", [b.op("Mul", [y, b.const(0.5)]), b.op("Add", [e, b.const(1.0)])])
    two = b.op("Div", [b.op("Mul", [b.op("Add", [b.const(1.0), e]), y]), b.const(2.0)])
    b.output(one)
    b.output(two)
    g = from_onnx(b.model())
    p1, p2 = expand(g, one), expand(g, two)
    assert p1.terms == p2.terms == {((y, 1),): 0.5, tuple(sorted([(e, 1), (y, 1)])): 0.5}
    assert Poly.leaf(y).inverse().terms == {((y, -1),): 1.0}
