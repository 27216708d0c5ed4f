"""The ``graph-convert`` command: the demo path and every kind of bad input (one clear line,
non-zero exit, no output directory, no temp directory left behind)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from graph_convert.cli import EXIT_USAGE, EXIT_VERIFY, main
from tests.helpers import Builder, finish_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_model() -> onnx.ModelProto:
    b = Builder()
    x = b.input("input.1", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1], strides=[2, 2])
    b.output(b.op("Relu", [y]))
    return b.model()


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_model(), path)
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code, err, tmp_path, out_dir, expect_code=EXIT_USAGE, *fragments):
    assert code == expect_code, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not os.path.exists(out_dir)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n]


def test_convert_onnx_file(onnx_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["convert", onnx_file, "-o", out], capsys)
    assert code == 0, err
    assert "TRANSPOSE 0" in stdout and "tflite_float32" in stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["io"]["inputs"][0]["tf_name"] == "input_1"
    assert rep["io"]["inputs"][0]["shape"] == [1, 8, 8, 3]


def test_keep_io_layout(onnx_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_file, "-o", out, "--keep-io-layout", "-q"], capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["io"]["inputs"][0]["shape"] == [1, 3, 8, 8] and rep["io"]["inputs"][0]["layout_perm"] is None


def test_user_inputs_npz(onnx_file, tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, **{"input.1": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)})
    code, _, err = run(["convert", onnx_file, "-o", tmp_path / "out", "--inputs", data, "-q"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["verification"]["draws"][0].startswith("user") and len(rep["verification"]["draws"]) == 3


def test_verify_each_records_all_passes(onnx_file, tmp_path, capsys):
    code, _, err = run(["convert", onnx_file, "-o", tmp_path / "out", "--verify", "each", "-q"], capsys)
    assert code == 0, err


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", tmp_path / "nope.onnx", "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "nope.onnx", "no such file")


def test_empty_file(tmp_path, capsys):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    out = tmp_path / "out"
    code, _, err = run(["convert", p, "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "empty.onnx", "empty")


def test_truncated_file(tmp_path, capsys):
    p = tmp_path / "trunc.onnx"
    p.write_bytes(small_model().SerializeToString()[:-40])
    out = tmp_path / "out"
    code, _, err = run(["convert", p, "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "trunc.onnx")


def test_corrupt_file(tmp_path, capsys):
    p = tmp_path / "junk.onnx"
    p.write_bytes(os.urandom(2000))
    out = tmp_path / "out"
    code, _, err = run(["convert", p, "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "junk.onnx")


def test_unsupported_ops_all_listed_up_front(tmp_path, capsys):
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Relu", [x])
    b.nodes.append(helper.make_node("Foo", [y], ["f1"], name="first_foo", domain="acme"))
    b.nodes.append(helper.make_node("Bar", ["f1"], ["f2"], name="the_bar", domain="acme"))
    b.nodes.append(helper.make_node("Foo", ["f2"], ["f3"], name="second_foo", domain="acme"))

    g = helper.make_graph(b.nodes, "t", b.inputs, [], b.inits)
    g.output.extend([helper.make_tensor_value_info("f3", onnx.TensorProto.FLOAT, [1, 3, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    p = tmp_path / "custom.onnx"
    onnx.save(m, p)
    out = tmp_path / "out"
    code, _, err = run(["convert", p, "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "acme::Foo (node 'first_foo')", "acme::Bar (node 'the_bar')", "acme::Foo (node 'second_foo')")


@pytest.mark.parametrize("shape", ["1,a,3", "0,3,8,8", "", "1,,3", "=1,3"])
def test_malformed_input_shape(shape, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", f"{ROOT}/models/resnet_style.py:make", "-o", out, "--input-shape", shape], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "--input-shape")


def test_pytorch_source_without_shape(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", f"{ROOT}/models/resnet_style.py:make", "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "--input-shape")


def test_pytorch_source_bad_factory(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", f"{ROOT}/models/resnet_style.py:nothing_here", "-o", out, "--input-shape", "1,3,8,8"], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "nothing_here")


def test_output_under_a_file(onnx_file, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    out = blocker / "out"
    code, _, err = run(["convert", onnx_file, "-o", out], capsys)
    assert code == EXIT_USAGE and "afile" in err and "Traceback" not in err
    assert blocker.read_text() == "x"


def test_unwritable_parent(onnx_file, tmp_path, capsys):
    """/proc refuses new entries even to root: a real unwritable directory on any Linux box."""
    code, _, err = run(["convert", onnx_file, "-o", "/proc/graph_convert_out"], capsys)
    assert code == EXIT_USAGE and "cannot write in /proc" in err and "Traceback" not in err
    assert not os.path.exists("/proc/graph_convert_out")


def test_non_empty_output_needs_overwrite(onnx_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(["convert", onnx_file, "-o", out], capsys)
    assert code == EXIT_USAGE and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only what graph-convert wrote: a folder holding the user's file is refused
    code, _, err = run(["convert", onnx_file, "-o", out, "--overwrite", "-q"], capsys)
    assert code == EXIT_USAGE and "keep.txt" in err and "did not write" in err
    assert sorted(os.listdir(out)) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run(["convert", onnx_file, "-o", out, "-q"], capsys)[0] == 0  # an empty folder is fine
    first = (out / "report.json").stat().st_ino
    code, _, err = run(["convert", onnx_file, "-o", out, "--overwrite", "-q"], capsys)
    assert code == 0, err  # our own output is replaced
    assert (out / "report.json").stat().st_ino != first


def test_inputs_npz_wrong_shape(onnx_file, tmp_path, capsys):
    data = tmp_path / "bad.npz"
    np.savez(data, **{"input.1": np.zeros((1, 3, 9, 9), np.float32)})
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_file, "-o", out, "--inputs", data], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "bad.npz", "input.1")


def test_inputs_npz_missing_array(onnx_file, tmp_path, capsys):
    data = tmp_path / "other.npz"
    np.savez(data, other=np.zeros((1, 3, 8, 8), np.float32))
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_file, "-o", out, "--inputs", data], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "input.1")


def test_unknown_disable_pass(onnx_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_file, "-o", out, "--disable-pass", "no_such_pass"], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "no_such_pass")


def test_verification_failure_names_pass(onnx_file, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tests", "plugin_demo"))
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_file, "-o", out, "--plugin", "bad_plugin"], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_VERIFY, "break_relu")


def test_passes_listing(capsys):
    code, out, _ = run(["passes"], capsys)
    assert code == 0
    names = [ln.split()[1] for ln in out.strip().splitlines()]
    assert names.index("to_channels_last") < names.index("io_channels_last") < names.index("push_transposes") < names.index("prune")


def test_console_script_demo(tmp_path):
    """The README demo, through the installed console script (or the module if not installed)."""
    out = tmp_path / "demo"
    exe = os.path.join(os.path.dirname(sys.executable), "graph-convert")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "graph_convert.cli"]
    proc = subprocess.run(cmd + ["convert", "models/resnet_style.py:make", "--input-shape", "1,3,64,64", "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TRANSPOSE 0" in proc.stdout
    # exactly the documented artifacts: nothing the exporter wrote (external data) is left over
    assert sorted(os.listdir(out)) == [".graph-convert.json", "model.rewritten.onnx", "model_float32.tflite", "report.html", "report.json",
                                 "saved_model"]
    # the console script's fast exit leaves no XNNPACK/TF chatter behind -q
    proc = subprocess.run(cmd + ["convert", "models/resnet_style.py:make", "--input-shape", "1,3,64,64", "-o", str(out),
                                 "--overwrite", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr[-2000:]


def test_source_that_onnxruntime_rejects(tmp_path, capsys):
    """A model that passes onnx.checker but that ONNX Runtime refuses (mixed float/double
    BatchNormalization): it cannot be the reference, so one clear line and nothing written."""
    b = Builder()
    x = b.input("x", [1, 2, 4, 4])
    c = [b.const(np.ones(2, np.float64)) for _ in range(4)]
    b.output(b.op("BatchNormalization", [x, *c]))
    p = tmp_path / "mixed.onnx"
    onnx.save(b.model(), p)
    out = tmp_path / "out"
    code, _, err = run(["convert", p, "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "ONNX Runtime")


def _float64_model() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", [2, 3], onnx.TensorProto.DOUBLE)
    b.output(b.op("Sqrt", [b.op("Mul", [x, x])]), onnx.TensorProto.DOUBLE)
    return b.model()


def test_tflite_gap_is_named_up_front_and_no_tflite_records_it(tmp_path, capsys):
    """float64 runs in TF but TFLite has no float64 kernels: the node and the reason come in one
    line before any TFLite conversion; with --no-tflite the SavedModel is written and the gap noted."""
    path = tmp_path / "f64.onnx"
    onnx.save(_float64_model(), path)
    out = tmp_path / "out"
    code, _, err = run(["convert", path, "-o", out], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "TFLite has no builtin kernel", "float64", "--no-tflite")
    code, _, err = run(["convert", path, "-o", out, "--no-tflite"], capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["tflite_gaps"] and all("float64" in g["reason"] for g in rep["tflite_gaps"])
    assert {g["op_type"] for g in rep["tflite_gaps"]} <= {"Mul", "Sqrt"}
    assert not (out / "model_float32.tflite").exists()


def test_bad_verify_mode_is_refused_through_the_api(tmp_path):
    from graph_convert import convert
    from graph_convert.errors import ConvertError

    # named as the Python caller wrote it (the keyword); the command line names its flag
    with pytest.raises(ConvertError, match="^verify 'sometimes': expected one of end, phase, each, none"):
        convert(small_model(), None, tmp_path / "out", verify="sometimes")
    assert not (tmp_path / "out").exists()
