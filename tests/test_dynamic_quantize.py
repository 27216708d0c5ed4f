"""Free dims with ``--quantize`` and ``--inputs``: every quantized .tflite keeps ``-1`` exactly where
the float32 file does and is checked at every size the float32 file was checked at (report.json
``dynamic.checks``), by the size rule of :mod:`graph_convert.quantize.sizes`; the user's ``--inputs``
arrays fix no dim and are one more size checked. Small TorchScript exports with random weights:
a conv net with free batch/height/width and a text model with free batch/sequence; calibration
data at one size."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from graph_convert.cli import EXIT_USAGE, EXIT_VERIFY, main
from graph_convert.conversion import dims as DM
from graph_convert.checks.equivalence import Verifier, make_draws
from graph_convert.errors import VerificationError
from graph_convert.ir import from_onnx
from graph_convert.quantize import sizes as QS

QUANTIZED = {"fp16": "model_float16.tflite", "int8": "model_dynamic_range_quant.tflite",
             "int8-full": "model_full_integer_quant.tflite"}
KEYS = {"fp16": "tflite_float16", "int8": "tflite_dynamic_range_quant", "int8-full": "tflite_full_integer_quant"}


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 1, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


class Text(nn.Module):
    def __init__(self, pool: bool = False):
        super().__init__()
        self.tok, self.l1, self.l2, self.pool = nn.Embedding(50, 32), nn.Linear(32, 64), nn.Linear(64, 16), pool

    def forward(self, ids):
        h = torch.relu(self.l1(self.tok(ids)))
        return h.sum(1) if self.pool else self.l2(h)  # pool: a sum over the free sequence


def _export(module: nn.Module, example, path, name: str, axes: dict[int, str], seed: int = 0) -> str:
    torch.manual_seed(seed)
    for p in module.parameters():  # random parameters, every one
        nn.init.normal_(p, std=0.3)
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=[name],
                      dynamic_axes={name: axes})
    return str(path)


def _signatures(path: str) -> tuple[list, list]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    return ([list(d["shape_signature"]) for d in interp.get_input_details()],
            [list(d["shape_signature"]) for d in interp.get_output_details()])


def _checked(rep: dict, variants) -> list[dict]:
    """Every size verdict ok, with figures of every quantized file there; the sizes each variant lists."""
    checks = rep["dynamic"]["checks"]
    assert len(checks) >= 5
    labels = []
    for e in checks:
        assert e["verdict"] == "ok", e
        for v in variants:
            figs = e[KEYS[v]]
            assert figs and all(f["sqnr_db"] > 20 for f in figs.values()), (v, e["sizes"], figs)
    for v in variants:
        sizes = rep["quantization"]["variants"][v]["sizes"]
        assert len(sizes["checked_at"]) == len(checks) and sizes["margin_db"] == QS.SIZE_MARGIN_DB
        labels.append(sizes["checked_at"])
    return checks


def test_quantized_files_keep_free_height_width_and_are_checked_at_every_size(tmp_path):
    src = _export(ConvNet(), torch.randn(1, 3, 64, 64), tmp_path / "conv.onnx", "x", {0: "b", 2: "h", 3: "w"})
    calib = tmp_path / "calib.npz"  # one size, never one the conversion uses
    np.savez(calib, x=np.random.default_rng(0).standard_normal((10, 3, 96, 80)).astype(np.float32))
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q", "--quantize", "fp16,int8,int8-full", "--calibration", str(calib)]) == 0
    rep = json.loads((out / "report.json").read_text())
    float_sig = _signatures(str(out / "model_float32.tflite"))
    assert float_sig == ([[-1, -1, -1, 3]], [[-1, -1, -1, 4]])
    for v, f in QUANTIZED.items():
        assert _signatures(str(out / f)) == float_sig, v
    checks = _checked(rep, QUANTIZED)
    assert {e["sizes"]["h"] for e in checks} == {160, 224, 128, 80, 100}
    for d in ("b", "h", "w"):
        assert rep["dynamic"]["dims"][d]["kept"] and len(rep["dynamic"]["dims"][d]["checked_sizes"]) >= 3


def test_user_inputs_are_one_more_size_and_fix_no_dim(tmp_path):
    src = _export(Text(), torch.randint(0, 50, (1, 16)), tmp_path / "text.onnx", "ids", {0: "b", 1: "s"})
    user = tmp_path / "ids.npz"
    np.savez(user, ids=np.random.default_rng(5).integers(0, 50, (4, 33)).astype(np.int64))
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q", "--inputs", str(user), "--quantize", "int8"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert _signatures(str(out / "model_dynamic_range_quant.tflite")) == ([[-1, -1]], [[-1, -1, 16]])
    checks = _checked(rep, ["int8"])
    mine = [e for e in checks if e.get("inputs") == "--inputs"]
    assert len(mine) == 1 and mine[0]["sizes"] == {"b": 4, "s": 33} and mine[0]["tflite_dynamic_range_quant"]
    assert "b=4, s=33 (--inputs)" in rep["quantization"]["variants"]["int8"]["sizes"]["checked_at"]
    assert all(f["ok"] for k in ("tensorflow", "tflite_float32") for f in mine[0][k].values())
    assert {33, 8, 77} <= set(rep["dynamic"]["dims"]["s"]["checked_sizes"])
    assert rep["dynamic"]["dims"]["s"]["kept"] and rep["dynamic"]["dims"]["b"]["kept"]


def test_user_inputs_outside_a_dim_range_are_refused_in_one_line(tmp_path, capsys):
    src = _export(Text(), torch.randint(0, 50, (1, 16)), tmp_path / "text.onnx", "ids", {0: "b", 1: "s"})
    user = tmp_path / "ids.npz"
    np.savez(user, ids=np.zeros((1, 33), np.int64))
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q", "--inputs", str(user), "--dim", "s=8..64/8"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "array 'ids'" in err and "dim 's'" in err and "8..64/8" in err
    assert not os.path.exists(out)


def test_int8_full_that_saturates_at_a_longer_sequence_is_caught(tmp_path, capsys):
    """A sum over the free sequence: int8-full calibrated at length 16 clips at 77 (a real file,
    wrong at one size): exit 3, one line naming the variant, output and size; nothing written."""
    src = _export(Text(pool=True), torch.randint(0, 50, (1, 16)), tmp_path / "pool.onnx", "ids", {0: "b", 1: "s"})
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q", "--quantize", "int8-full", "--calibration", "random"]) == EXIT_VERIFY
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TFLite int8-full" in err and "s=77" in err and "dB below" in err, err
    assert not os.path.exists(out)


def test_the_size_rule_catches_a_candidate_wrong_at_one_size(tmp_path):
    """The checker fed the fp16 file of one conv net at every size but one, where another conv
    net's fp16 file (same shapes, other random weights) stands in: the size rule names that size."""
    a = _export(ConvNet(), torch.randn(1, 3, 32, 32), tmp_path / "a.onnx", "x", {0: "b", 2: "h", 3: "w"}, seed=0)
    b = _export(ConvNet(), torch.randn(1, 3, 32, 32), tmp_path / "b.onnx", "x", {0: "b", 2: "h", 3: "w"}, seed=1)
    files = {}
    for name, src in (("a", a), ("b", b)):
        assert main(["convert", src, "-o", str(tmp_path / name), "-q", "--quantize", "fp16"]) == 0
        files[name] = str(tmp_path / name / "model_float16.tflite")
    model = onnx.load(a)
    dims = DM.find_dims(model)
    graph = from_onnx(model)

    def run_file(path):
        from graph_convert.quantize import run_tflite_many

        def run(feeds):  # NCHW source feeds -> the NHWC file -> NCHW outputs
            got = run_tflite_many(path, {"x": feeds["x"].transpose(0, 2, 3, 1)[None]})
            return {graph.outputs[0]: next(iter(got.values()))[0].transpose(0, 3, 1, 2)}
        return run

    per_size = []
    for i, sizes in enumerate(DM.assignments(dims)):
        shapes = DM.input_shapes(model, dims, sizes)
        ver = Verifier(DM.with_shapes(model, shapes), make_draws(graph, 0, shapes))
        label = ", ".join(f"{k}={v}" for k, v in sizes.items())
        per_size.append((label, QS.figures_at(ver, run_file(files["b" if i == 3 else "a"]), f"fp16 at {label}")))
    good = QS.judge([p for i, p in enumerate(per_size) if i != 3], set(graph.outputs), "fp16")
    assert all(v > 50 for v in good.values())  # the right file passes at every other size
    with pytest.raises(VerificationError, match=rf"fp16: output .* at {per_size[3][0]}: SQNR .* dB below"):
        QS.judge(per_size, set(graph.outputs), "fp16")


def test_quantized_onnx_source_keeps_free_dims_in_its_int8_file(tmp_path):
    """A QDQ model (onnxruntime.quantization) with free batch and sequence: model_int8.tflite keeps
    both -1 and is judged by the int8 rule at every size."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(32, 64), nn.Linear(64, 16)

        def forward(self, x):
            return self.l2(torch.relu(self.l1(x)))

    src = _export(MLP(), torch.randn(1, 16, 32), tmp_path / "mlp.onnx", "x", {0: "b", 1: "s"})

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"x": rng.standard_normal((1, 16, 32)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "qdq.onnx"), "-o", str(out), "-q"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert _signatures(str(out / "model_int8.tflite")) == ([[-1, -1, 32]], [[-1, -1, 16]])
    checks = rep["dynamic"]["checks"]
    assert len(checks) >= 5 and all(e["verdict"] == "ok" for e in checks)
    assert all("max_steps" in f and f["ok"] for e in checks for f in e["tflite_int8"].values())
