"""Quantized ONNX in, int8 TFLite out: models quantized by onnxruntime.quantization (QDQ per-tensor
and per-channel, QOperator, dynamic) through the real pipeline. The .tflite's int8 kernels must
carry the ONNX model's own scales (read from the file and compared with the ONNX initializers
here), and its numbers are judged against ONNX Runtime running the quantized model, in
quantization steps computed here; the float export of the same model still takes the float path.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from graph_convert.conversion.pipeline import convert
from graph_convert.options import ConvertOptions


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


class SmallMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(32, 64)
        self.b = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class DepthwiseCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.pw(x)).mean((2, 3)))


class Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(16, 16) for _ in range(4))

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 4.0, -1)
        return self.o(a @ self.v(x))


class TwoHeads(torch.nn.Module):
    """Average pooling, a sigmoid head and a leaky-ReLU head added and concatenated (inputs of
    three scales, one fixed by the sigmoid), global pooling, a flatten and a linear layer: in the
    QOperator format ONNX Runtime's contrib ops QLinearAveragePool, QLinearSigmoid,
    QLinearLeakyRelu, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool and QGemm, with the
    Flatten run on the uint8 tensor between them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = torch.nn.functional.avg_pool2d(torch.relu(self.c1(x)), 2)
        s, r = torch.sigmoid(self.a(x)), torch.nn.functional.leaky_relu(self.b(x), 0.1)
        x = torch.cat([s, r, s + r], 1)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


NETS = {"cnn": SmallCNN, "mlp": SmallMLP, "dw": DepthwiseCNN, "attn": Attention, "heads": TwoHeads}
SHAPES = {"cnn": (1, 3, 16, 16), "mlp": (2, 32), "dw": (1, 3, 16, 16), "attn": (1, 8, 16), "heads": (1, 3, 16, 16)}


class _Reader(CalibrationDataReader):
    def __init__(self, shape) -> None:
        self.it = iter([{"x": np.random.default_rng(100 + i).standard_normal(shape).astype(np.float32)} for i in range(8)])

    def get_next(self):
        return next(self.it, None)


def _float_model(kind: str, path: str, dynamo: bool = False) -> None:
    torch.manual_seed(sorted(NETS).index(kind) + 7)  # random parameters, fixed for reproducibility
    m = NETS[kind]().eval()
    kw = {"dynamo": True} if dynamo else {"dynamo": False, "opset_version": 17}
    torch.onnx.export(m, (torch.randn(SHAPES[kind]),), path, input_names=["x"], **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("qmodels")
    out = {}
    for kind in NETS:
        f = str(d / f"{kind}.onnx")
        _float_model(kind, f)
        out[kind] = f
        for tag, fmt, pc in (("qdq", QuantFormat.QDQ, False), ("qdq_pc", QuantFormat.QDQ, True), ("qop", QuantFormat.QOperator, False)):
            q = str(d / f"{kind}_{tag}.onnx")
            quantize_static(f, q, _Reader(SHAPES[kind]), quant_format=fmt, per_channel=pc,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            out[f"{kind}_{tag}"] = q
        q = str(d / f"{kind}_dyn.onnx")
        quantize_dynamic(f, q, weight_type=QuantType.QInt8)
        out[f"{kind}_dyn"] = q
    return out


def _source_scales(path: str) -> np.ndarray:
    """Every float32 scale initializer of the quantized ONNX model."""
    m = onnx.load(path)
    slots = {"QuantizeLinear": (1,), "DequantizeLinear": (1,), "QLinearConv": (1, 4, 6), "QLinearMatMul": (1, 4, 6), "QGemm": (1, 4, 7),
             "QLinearGlobalAveragePool": (1, 3), "QLinearAveragePool": (1, 3), "QLinearSigmoid": (1, 3),
             "QLinearLeakyRelu": (1, 3), "QLinearConcat": (0, 3, 6)}  # (ONNX Runtime's contrib op signatures)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    vals = [inits[n.input[j]].astype(np.float32).reshape(-1) for n in m.graph.node for j in slots.get(n.op_type, ())
            if j < len(n.input) and n.input[j] in inits]
    return np.unique(np.concatenate(vals))


def _output_step(path: str) -> float:
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    last = next(n for n in m.graph.node if n.output[0] == m.graph.output[0].name)
    assert last.op_type == "DequantizeLinear"
    return float(inits[last.input[1]])


def _kernels(tfl: str) -> list[tuple[str, list]]:
    it = Interpreter(model_path=tfl)
    ts = {t["index"]: t for t in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            out.append((op["op_name"], [ts[i] for i in list(op["inputs"][:2]) + list(op["outputs"])]))
    return out


def _run_both(src: str, tfl: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    shape = SHAPES[os.path.basename(src).split("_")[0].split(".")[0]]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ref = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    it = Interpreter(model_path=tfl)
    run = it.get_signature_runner("serving_default")
    got = next(iter(run(x=x.transpose(0, 2, 3, 1) if x.ndim == 4 else x).values()))
    return ref, got


def _convert(src: str, out: str) -> dict:
    convert(src, output_dir=out, options=ConvertOptions())
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


KERNELS = {"cnn": {"CONV_2D": 2, "FULLY_CONNECTED": 1}, "mlp": {"FULLY_CONNECTED": 2},
           "dw": {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}, "attn": {"FULLY_CONNECTED": 4},
           "heads": {"CONV_2D": 3, "FULLY_CONNECTED": 1}}


@pytest.mark.parametrize("name", ["cnn_qdq", "cnn_qdq_pc", "cnn_qop", "mlp_qdq", "mlp_qop", "dw_qdq_pc", "attn_qdq", "attn_qop",
                                  "heads_qdq", "heads_qop"])
def test_static_quantized_model_keeps_its_scales(models, tmp_path, name):
    src = models[name]
    report = _convert(src, str(tmp_path / "out"))
    tfl = str(tmp_path / "out" / "model_int8.tflite")
    kernels = _kernels(tfl)
    want = KERNELS[name.split("_")[0]]
    assert {k: sum(1 for op, _ in kernels if op == k) for k in want} == want
    known = _source_scales(src)
    for op, (inp, w, y) in kernels:
        assert (inp["dtype"], w["dtype"], y["dtype"]) == (np.int8, np.int8, np.int8), op
        for t in (inp, y):  # activations: the ONNX scale bit for bit (no new calibration)
            assert np.isin(t["quantization_parameters"]["scales"].astype(np.float32), known).all(), (op, t["name"])
        if not (name.endswith("_pc") and op == "FULLY_CONNECTED"):  # per-channel FC weights: the converter's (README)
            assert np.isin(w["quantization_parameters"]["scales"].astype(np.float32), known).all(), (op, w["name"])
    # one quantization step; with a softmax (TFLite's int8 SOFTMAX is another function: its own
    # output scale and exp table) the SQNR only
    step, softmax = _output_step(src), name.startswith("attn")
    for seed in (0, 1, 2):
        ref, got = _run_both(src, tfl, seed)
        assert softmax or np.abs(got - ref).max() <= step * 1.0001, (seed, np.abs(got - ref).max() / step)
        err = np.sum((got.astype(np.float64) - ref) ** 2)
        assert err == 0 or 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / err) >= 30
    # (attn's own k.transpose(1, 2) runs on the uint8 tensor in the QOperator form; it is moved
    # after the dequantization and folded into the matmul, as in the QDQ form)
    assert report["tflite"]["transpose_ops"] == 0
    (figures,) = report["verification"]["tflite_int8"].values()
    assert figures["ok"] and (softmax or figures["max_steps"] <= 1.0001)


def test_dynamic_quantized_mlp(models, tmp_path):
    src = models["mlp_dyn"]
    report = _convert(src, str(tmp_path / "out"))
    assert "MatMulInteger" in {n.op_type for n in onnx.load(src).graph.node}
    tfl = str(tmp_path / "out" / "model_int8.tflite")
    assert [op for op, _ in _kernels(tfl)] == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert any(w["dtype"] == np.int8 for _, (_, w, _) in _kernels(tfl))
    ref, got = _run_both(src, tfl, 0)
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((got.astype(np.float64) - ref) ** 2))
    assert sqnr >= 30, sqnr
    # the float32 file computes the dynamic quantization exactly as ONNX Runtime does
    ref, got = _run_both(src, str(tmp_path / "out" / "model_float32.tflite"), 0)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert report["verification"]["tflite_int8"]
    # `graph-convert verify` judges a quantized source's candidate by the same int8 rule
    from graph_convert import verify_file

    res = verify_file(src, str(tmp_path / "out" / "model_int8.tflite"))
    assert res.equivalent and all(f["rule"] == "int8" for f in res.report["verification"]["tflite"].values()), res.report["verification"]


def test_dynamic_quantized_depthwise_cnn_keeps_no_transpose(models, tmp_path):
    src = models["dw_dyn"]
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in onnx.load(src).graph.node}
    report = _convert(src, str(tmp_path / "out"))
    assert report["tflite"]["transpose_ops"] == 0
    ref, got = _run_both(src, str(tmp_path / "out" / "model_float32.tflite"), 0)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    ops = [op for op, _ in _kernels(str(tmp_path / "out" / "model_int8.tflite"))]
    assert sorted(ops) == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]


@pytest.mark.parametrize("dynamo", [False, True])
def test_float_export_keeps_the_float_path(tmp_path, dynamo):
    src = str(tmp_path / "cnn.onnx")
    _float_model("cnn", src, dynamo=dynamo)
    report = _convert(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "model_int8.tflite")
    assert "tflite_int8" not in report
    kernels = _kernels(str(tmp_path / "out" / "model_float32.tflite"))
    assert kernels and all(t["dtype"] == np.float32 for _, ts in kernels for t in ts)


# ------------------------------------------------------------------------------------------------
# the layout pass through quantization (built graphs, checked in ONNX Runtime)
def _q_params(b, rng, kind: str, c: int = 4):
    """Scale and zero point (uint8) for a (1, c, 6, 6) tensor, and the Q/DQ attributes."""
    if kind == "tensor":
        return b.const(np.float32(rng.uniform(0.01, 0.05))), b.const(np.uint8(rng.integers(100, 150)), dtype=np.uint8), {}
    if kind == "axis":
        return (b.const(rng.uniform(0.01, 0.05, c).astype(np.float32)), b.const(rng.integers(100, 150, c).astype(np.uint8), dtype=np.uint8),
                {"axis": 1})
    shape = (1, c // 2, 6, 6)  # blocked over the channels, two per block (opset 21)
    return (b.const(rng.uniform(0.01, 0.05, shape).astype(np.float32)), b.const(rng.integers(100, 150, shape).astype(np.uint8), dtype=np.uint8),
            {"axis": 1, "block_size": 2})


@pytest.mark.parametrize("kind", ["tensor", "axis", "blocked"])
def test_qdq_between_convs_keeps_no_transpose(kind):
    from tests.helpers import Builder, assert_equivalent, run_pipeline

    rng = np.random.default_rng(3)
    b = Builder(opset=21)
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Conv", [x, b.weight([4, 4, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    s, z, attrs = _q_params(b, rng, kind)
    y = b.op("DequantizeLinear", [b.op("QuantizeLinear", [y, s, z], **attrs), s, z], **attrs)
    # a per-output-channel int8 weight, as onnxruntime.quantization writes it
    wq = b.const(rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8), dtype=np.int8)
    ws = b.const(rng.uniform(0.005, 0.02, 4).astype(np.float32))
    w = b.op("DequantizeLinear", [wq, ws, b.const(np.zeros(4, np.int8), dtype=np.int8)], axis=0)
    y = b.op("Conv", [y, w], pads=[1, 1, 1, 1])
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert g.count("Transpose") == 0
    weight_dq = [n for n in g.nodes if n.op_type == "DequantizeLinear" and g.constant_value(n.inputs[0]) is not None]
    assert [n.attr("axis") for n in weight_dq] == [3]  # OIHW axis 0 is HWIO axis 3
    assert_equivalent(model, g, atol=1e-6)


def test_qlinearconv_is_expanded_and_switched():
    from tests.helpers import Builder, assert_equivalent, run_pipeline

    rng = np.random.default_rng(4)
    b = Builder(opset=17)
    x = b.input("x", [1, 4, 6, 6])
    xs, xz = b.const(np.float32(0.02)), b.const(np.uint8(rng.integers(100, 150)), dtype=np.uint8)
    xq = b.op("QuantizeLinear", [x, xs, xz])
    wq = b.const(rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8), dtype=np.int8)
    ws = b.const(rng.uniform(0.005, 0.02, 8).astype(np.float32))
    wz = b.const(np.zeros(8, np.int8), dtype=np.int8)
    ys, yz = b.const(np.float32(rng.uniform(0.05, 0.1))), b.const(np.uint8(rng.integers(100, 150)), dtype=np.uint8)
    bias = b.const(rng.integers(-300, 300, 8).astype(np.int32), dtype=np.int32)
    yq = b.op("QLinearConv", [xq, xs, xz, wq, ws, wz, ys, yz, bias], pads=[1, 1, 1, 1])
    b.output(b.op("DequantizeLinear", [yq, ys, yz]))
    model = b.model()
    g, records = run_pipeline(model)
    assert g.count("QLinearConv") == 0 and g.count("Conv") == 1 and g.count("Transpose") == 0
    assert [r for r in records if r.name == "expand_qoperators"][0].changed
    assert_equivalent(model, g, atol=1e-6)
