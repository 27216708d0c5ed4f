"""``convert --backend onnx2tf|auto``: onnx2tf's files are gated by our verification exactly as our
emitter's (the real command, the real onnx2tf in its own interpreter when installed)."""
from __future__ import annotations

import importlib.util
import json
import os

import onnx
import numpy as np
import pytest

from tests.helpers import Builder
from tests.test_verify_cmd import HAVE_ONNX2TF, ONNX2TF_PYTHON, two_convs
from tests.test_trust import cli

needs_onnx2tf = pytest.mark.skipif(not HAVE_ONNX2TF,
                                   reason=f"onnx2tf is not installed at {ONNX2TF_PYTHON} (CI installs it and requires it)")


def softmax_over_chw() -> onnx.ModelProto:
    """Opset 11: Softmax(axis=1) of a (1, 4, 8, 8) tensor normalises over C*H*W at once; onnx2tf
    1.28.8 normalises over C only (exit 0, wrong numbers)."""
    b = Builder(opset=11)
    x = b.input("image", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    b.output(b.op("Softmax", [y], axis=1))
    return b.model()


@needs_onnx2tf
def test_onnx2tf_backend_writes_verified_files(tmp_path):
    onnx.save(two_convs(), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--onnx2tf-python", ONNX2TF_PYTHON], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "backend: onnx2tf" in r.stdout
    assert sorted(os.listdir(tmp_path / "out")) == [".graph-convert.json", "model_float32.tflite", "report.html", "report.json", "saved_model"]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["backend"]["used"] == "onnx2tf"
    assert all(f["ok"] for st in ("tensorflow", "tflite_float32") for f in rep["verification"][st].values())
    # the file it wrote is what was verified: it verifies again on its own
    v = cli(["verify", "m.onnx", "out/model_float32.tflite", "-q"], tmp_path)
    assert v.returncode == 0, v.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


@needs_onnx2tf
def test_onnx2tf_backend_writes_nothing_when_its_file_differs(tmp_path):
    onnx.save(softmax_over_chw(), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--onnx2tf-python", ONNX2TF_PYTHON], tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "made by onnx2tf" in r.stderr and "first disagreeing: Softmax" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no output folder, no temporary folder
    ours = cli(["convert", "m.onnx", "-o", "ours", "-q"], tmp_path)
    assert ours.returncode == 0, ours.stderr


def test_auto_uses_our_emitter_when_it_can_and_says_so(tmp_path):
    onnx.save(two_convs(), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "out", "-q", "--backend", "auto"], tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["backend"] == {"used": "graph-convert", "why": "--backend auto: our emitter handles every op"}


@pytest.mark.skipif(importlib.util.find_spec("onnx2tf") is not None, reason="onnx2tf is installed in this interpreter")
def test_without_onnx2tf_exit_2_names_the_pip_command(tmp_path):
    onnx.save(two_convs(), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf"], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "pip install 'graph-convert[onnx2tf]'" in r.stderr
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--onnx2tf-python", str(tmp_path / "nope")], tmp_path)
    assert r.returncode == 2 and "no such interpreter" in r.stderr
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--quantize", "fp16"], tmp_path)
    assert r.returncode == 2 and "cannot be combined with --quantize" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]



@needs_onnx2tf
def test_auto_falls_back_to_onnx2tf_for_an_op_we_cannot_emit(tmp_path):
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    b.output(b.op("GlobalLpPool", [y], p=2))  # no emitter of ours
    onnx.save(b.model(), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "ours", "-q"], tmp_path)
    assert r.returncode == 2 and "GlobalLpPool" in r.stderr
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "auto", "--onnx2tf-python", ONNX2TF_PYTHON], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["backend"]["used"] == "onnx2tf" and "GlobalLpPool" in rep["backend"]["why"]


@needs_onnx2tf
def test_an_onnx2tf_failure_is_named_as_onnx2tfs_and_leaves_nothing(tmp_path):
    b = Builder()
    x = b.input("x", [4, 2, 3])
    y = b.op("ReverseSequence", [x, b.const(np.array([4, 2], np.int64), dtype=np.int64)], time_axis=0, batch_axis=1)
    b.output(b.op("Relu", [y]))  # onnx2tf 1.28.8 fails on this ReverseSequence (our emitter has it since issue 22)
    onnx.save(b.model(), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--onnx2tf-python", ONNX2TF_PYTHON], tmp_path)
    assert r.returncode == 6 and "onnx2tf could not convert the model" in r.stderr, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and sorted(os.listdir(tmp_path)) == ["m.onnx"]


@needs_onnx2tf
def test_onnx2tf_keeps_the_source_batch_and_checks_it_at_several_sizes(tmp_path):
    """A symbolic batch goes to onnx2tf as it is; its -1 is judged at every batch size, as ours."""
    from ai_edge_litert.interpreter import Interpreter

    onnx.save(two_convs(batch="N"), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--onnx2tf-python", ONNX2TF_PYTHON], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    dyn = rep["dynamic"]
    assert dyn["dims"]["N"]["kept"] and len(dyn["dims"]["N"]["checked_sizes"]) >= 3 and "reason" not in dyn
    assert all(e["verdict"] == "ok" and all(f["ok"] for k in ("tensorflow", "tflite_float32") for f in e[k].values())
               for e in dyn["checks"])
    sig = Interpreter(model_path=str(tmp_path / "out" / "model_float32.tflite")).get_input_details()[0]["shape_signature"]
    assert int(sig[0]) == -1


@needs_onnx2tf
def test_onnx2tf_refuses_free_dims_other_than_the_batch_in_one_line(tmp_path):
    onnx.save(two_convs(batch="N", h="H", w="W"), tmp_path / "m.onnx")
    r = cli(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--onnx2tf-python", ONNX2TF_PYTHON], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "dims H (axis 2), W (axis 3)" in r.stderr and "--input-shape input.1=" in r.stderr
    assert not (tmp_path / "out").exists()
