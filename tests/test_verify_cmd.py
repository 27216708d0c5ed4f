"""``graph-convert verify``: the real command in a subprocess accepts our own files and files made
by a second path (TF's own converter, onnx2tf when installed), rejects files corrupted on purpose
(a flipped weight in the flatbuffer, a swapped output layout) and names where they go wrong,
matches multi-input/-output models with integer inputs, and resolves an H == W == C layout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import graph_convert
from graph_convert import ConvertError
from graph_convert.checks.candidate import Spec, layout_perms, match, parse_map, sanitise
from tests.helpers import Builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# onnx2tf lives in its own venv (its pins can clash with ours). CI installs one and sets
# GRAPH_CONVERT_REQUIRE_ONNX2TF=1: then the onnx2tf tests run, and fail if it is missing, never skip.
ONNX2TF_PYTHON = os.environ.get("GRAPH_CONVERT_ONNX2TF_PYTHON", "/tmp/venv_onnx2tf/bin/python")
HAVE_ONNX2TF = os.path.exists(ONNX2TF_PYTHON) or os.environ.get("GRAPH_CONVERT_REQUIRE_ONNX2TF") == "1"


def env_for(work) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, str(work)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must silence TensorFlow by itself
    return env


def verify_cli(*args, work, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graph_convert.cli", "verify", *map(str, args)], cwd=work, env=env_for(work),
                          capture_output=True, text=True, timeout=timeout)


def two_convs(c: int = 3, h: int = 8, w: int = 6, batch: int = 1) -> onnx.ModelProto:
    """x (batch, c, h, w) -> Conv 4 -> Relu -> Conv 5 -> y (batch, 5, h, w); seeded weights."""
    b = Builder()
    x = b.input("input.1", [batch, c, h, w])
    y = b.op("Relu", [b.op("Conv", [x, b.weight([4, c, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])])
    b.output(b.op("Conv", [y, b.weight([5, 4, 3, 3]), b.weight([5])], pads=[1, 1, 1, 1]))
    return b.model()


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A tiny model, converted by graph_convert.convert: (folder, model.onnx path, result)."""
    d = tmp_path_factory.mktemp("ours")
    model = two_convs()
    onnx.save(model, d / "model.onnx")
    res = graph_convert.convert(str(d / "model.onnx"), None, str(d / "out"))
    return d, d / "model.onnx", res


def test_accepts_our_tflite_and_saved_model_with_a_strict_json_report(ours):
    d, src, res = ours
    r = verify_cli(src, res.tflite, "--report", d / "tfl.json", work=d)
    assert r.returncode == 0, r.stderr
    assert "equivalent" in r.stdout and r.stderr == ""
    rep = json.loads((d / "tfl.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert rep["verdict"] == "equivalent" and len(rep["verification"]["draws"]) == 2
    assert rep["io"]["inputs"][0] == {**rep["io"]["inputs"][0], "source": "input.1", "candidate": "input_1", "matched_by": "name",
                                      "layout_perm": [0, 2, 3, 1]}
    assert rep["verification"]["tflite"][rep["io"]["outputs"][0]["source"]]["ok"] is True
    r = verify_cli(src, res.saved_model, work=d)
    assert r.returncode == 0, r.stderr
    assert "saved_model" in r.stdout


def test_accepts_a_tflite_made_by_tensorflows_own_converter_from_our_saved_model(ours):
    import tensorflow as tf

    d, src, res = ours
    tflite = tf.lite.TFLiteConverter.from_saved_model(res.saved_model).convert()
    path = d / "by_tf.tflite"
    path.write_bytes(tflite)
    r = verify_cli(src, path, work=d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "equivalent" in r.stdout


def weight_offset(tflite: bytes, model: onnx.ModelProto, index: int) -> tuple[int, int]:
    """(byte offset, length) of the ``index``-th Conv weight of ``model`` in the flatbuffer,
    found by value in TFLite's OHWI layout."""
    w = numpy_helper.to_array({i.name: i for i in model.graph.initializer}[[n for n in model.graph.node if n.op_type == "Conv"][index].input[1]])
    blob = np.ascontiguousarray(np.transpose(w, (0, 2, 3, 1))).astype("<f4").tobytes()
    at = tflite.find(blob)
    assert at >= 0, "the weight is not stored as OHWI float32 in the flatbuffer"
    return at, len(blob)


def test_rejects_a_flipped_weight_and_names_the_first_diverging_op(ours):
    d, src, res = ours
    data = bytearray(open(res.tflite, "rb").read())
    at, n = weight_offset(bytes(data), onnx.load(src), 1)
    for i in range(at + 3, at + n // 5, 4):  # sign bit of every float of the first output channel
        data[i] ^= 0x80
    bad = d / "flipped.tflite"
    bad.write_bytes(bytes(data))
    r = verify_cli(src, bad, "--report", d / "flipped.json", work=d)
    assert r.returncode == 3, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "verification failed" in err[0] and "differs from the source" in err[0]
    div = json.loads((d / "flipped.json").read_text())["divergence"]
    assert div["found"], div
    # the first Conv (+ Relu) still agrees; the second Conv is where it goes wrong
    assert div["last_agreeing"]["onnx_op"].startswith("Relu") and div["last_agreeing"]["tflite_op"].startswith("CONV_2D")
    assert div["first_disagreeing"]["onnx_op"].startswith("Conv") and div["first_disagreeing"]["tflite_op"].startswith("CONV_2D")
    assert "first disagreeing: Conv" in r.stdout and "DELEGATE" not in r.stdout  # real kernels, not a delegate's partition


def swapped_layout_tflite(saved_model: str, path) -> None:
    """Our SavedModel with its NHWC output refilled with NCHW-ordered data (a reshape where a
    transpose belonged: the classic layout bug), converted by TF's TFLite converter."""
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model)
    fn = loaded.signatures["serving_default"]
    (iname, ispec), = fn.structured_input_signature[1].items()
    (oname, _), = fn.structured_outputs.items()

    @tf.function(input_signature=[tf.TensorSpec(ispec.shape, ispec.dtype, name=iname)])
    def wrong(x):
        y = fn(**{iname: x})[oname]
        return {oname: tf.reshape(tf.transpose(y, [0, 3, 1, 2]), tf.shape(y))}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([wrong.get_concrete_function()], loaded)
    open(path, "wb").write(conv.convert())


def test_rejects_a_swapped_output_layout(ours):
    d, src, res = ours
    swapped_layout_tflite(res.saved_model, d / "swapped.tflite")
    r = verify_cli(src, d / "swapped.tflite", work=d)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "differs from the source" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def multi_io_model() -> onnx.ModelProto:
    """Two float inputs and an int64 one; a float image output, a float vector and an int64 output."""
    b = Builder()
    x = b.input("image", [1, 3, 6, 5])
    v = b.input("vec", [1, 7])
    ids = b.input("ids", [1, 4], TensorProto.INT64)
    img = b.op("Relu", [b.op("Conv", [x, b.weight([2, 3, 3, 3]), b.weight([2])], pads=[1, 1, 1, 1])])
    emb = b.op("Gather", [b.weight([8, 7]), ids], axis=0)  # (1, 4, 7)
    mixed = b.op("Add", [emb, b.op("Unsqueeze", [v, b.const(np.array([1], np.int64), dtype=np.int64)])])
    b.output(img)
    b.output(b.op("ReduceSum", [mixed, b.const(np.array([1], np.int64), dtype=np.int64)], keepdims=0))
    b.output(b.op("Add", [ids, b.const(np.array(1, np.int64), dtype=np.int64)]), TensorProto.INT64)
    return b.model()


def test_multi_input_multi_output_with_int_inputs(tmp_path):
    model = multi_io_model()
    onnx.save(model, tmp_path / "m.onnx")
    res = graph_convert.convert(str(tmp_path / "m.onnx"), None, str(tmp_path / "out"))
    r = verify_cli(tmp_path / "m.onnx", res.tflite, "--report", tmp_path / "r.json", work=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [p["source"] for p in rep["io"]["inputs"]] == ["image", "vec", "ids"]
    assert {p["source"]: p["candidate"] for p in rep["io"]["inputs"]} == {"image": "image", "vec": "vec", "ids": "ids"}
    assert rep["io"]["inputs"][0]["layout_perm"] == [0, 2, 3, 1]
    assert len(rep["verification"]["tflite"]) == 3 and all(f["ok"] for f in rep["verification"]["tflite"].values())
    # user arrays: the int input is used as given (a wrong int output would show)
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "d.npz", image=rng.standard_normal((1, 3, 6, 5)).astype(np.float32),
             vec=rng.standard_normal((1, 7)).astype(np.float32), ids=np.array([[7, 0, 3, 3]], np.int64))
    out = graph_convert.verify_file(str(tmp_path / "m.onnx"), res.tflite, inputs=str(tmp_path / "d.npz"))
    assert out.equivalent and out.report["verification"]["draws"][0] == "user (--inputs)"


def test_resolves_an_h_equal_w_equal_c_model_on_the_data(tmp_path):
    b = Builder()
    x = b.input("x", [1, 4, 4, 4])
    b.output(b.op("Conv", [x, b.weight([4, 4, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1]))
    onnx.save(b.model(), tmp_path / "sq.onnx")
    res = graph_convert.convert(str(tmp_path / "sq.onnx"), None, str(tmp_path / "out"))
    r = verify_cli(tmp_path / "sq.onnx", res.tflite, "--report", tmp_path / "r.json", work=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    for p in rep["io"]["inputs"] + rep["io"]["outputs"]:
        assert p["layout_perm"] == [0, 2, 3, 1] and len(p["layouts_fitting_the_shape"]) == 6
        assert "(0, 2, 3, 1) matched on the data" in p["note"]
    assert "matched on the data" in r.stdout
    # the wrong layout, forced with --map, is caught
    out = graph_convert.verify_file(str(tmp_path / "sq.onnx"), res.tflite, maps=["x=x:0,1,2,3"], locate=False)
    assert not out.equivalent


def test_map_pairs_tensors_whose_names_and_order_say_nothing(ours):
    d, src, res = ours
    out_name = res.report["io"]["outputs"][0]["tf_name"]
    src_out = res.report["io"]["outputs"][0]["name"]
    ok = graph_convert.verify_file(str(src), res.tflite, maps=["input_1=input.1:0,2,3,1", f"{out_name}={src_out}:0,2,3,1"])
    assert ok.equivalent and [p["matched_by"] for p in ok.report["io"]["inputs"]] == ["--map"]
    with pytest.raises(ConvertError, match="does not give the candidate"):
        graph_convert.verify_file(str(src), res.tflite, maps=["input_1=input.1:0,1,2,3"])
    with pytest.raises(ConvertError, match="no input or output 'nope'"):
        graph_convert.verify_file(str(src), res.tflite, maps=["nope=input.1"])


def test_bad_input_is_exit_2_with_one_line_naming_the_tensors(ours, tmp_path):
    d, src, res = ours
    other = two_convs(c=2)  # element count of the input differs
    onnx.save(other, tmp_path / "other.onnx")
    r = verify_cli(tmp_path / "other.onnx", res.tflite, work=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "'input_1'" in r.stderr and "'input.1'" in r.stderr and "element counts differ" in r.stderr
    m = multi_io_model()
    onnx.save(m, tmp_path / "multi.onnx")
    r = verify_cli(tmp_path / "multi.onnx", res.tflite, work=tmp_path)
    assert r.returncode == 2 and "the candidate has 1 inputs (input_1), the source 3 (image, vec, ids)" in r.stderr
    (tmp_path / "junk.tflite").write_bytes(b"not a model at all")
    r = verify_cli(src, tmp_path / "junk.tflite", "--map", "nonsense", work=tmp_path)
    assert r.returncode == 2 and "junk.tflite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = verify_cli(src, res.tflite, "--signature", "other", work=tmp_path)
    assert r.returncode == 2 and "--signature other" in r.stderr and "serving_default" in r.stderr
    r = verify_cli(src, res.tflite, "--atol", "-1", work=tmp_path)
    assert r.returncode == 2 and "--atol" in r.stderr


def test_a_pytorch_source_leaves_nothing_behind(ours, tmp_path):
    d, src, res = ours
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()\n")
    conv = graph_convert.convert(str(tmp_path / "net.py") + ":make", None, str(tmp_path / "out"), input_shapes=[(None, (1, 3, 8, 8))])
    before = set(os.listdir(tmp_path))
    r = verify_cli("net.py:make", conv.tflite, "--input-shape", "1,3,8,8", work=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(os.listdir(tmp_path)) == before  # the export went to a temporary folder, now gone
    r = verify_cli("net.py:make", res.tflite, "--input-shape", "1,3,8,8", work=tmp_path)
    assert r.returncode == 2, "a model with another output shape must not verify"


def test_a_saved_model_with_a_flipped_weight_is_searched_through_tfs_own_tflite_conversion(ours, tmp_path):
    d, src, res = ours
    sm = tmp_path / "sm"
    shutil.copytree(res.saved_model, sm)
    model = onnx.load(src)
    w = numpy_helper.to_array({i.name: i for i in model.graph.initializer}[[n for n in model.graph.node if n.op_type == "Conv"][1].input[1]])
    blob = np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))).astype("<f4").tobytes()  # TF's HWIO
    # our SavedModel keeps the weights as constants in saved_model.pb (a converter may use variables/)
    found = [(p, bytes(p.read_bytes()).find(blob)) for p in sorted(sm.rglob("*")) if p.is_file()]
    (data_file, at), = [(p, at) for p, at in found if at >= 0]
    data = bytearray(data_file.read_bytes())
    for i in range(at + 3, at + len(blob), 4 * 5):  # every 5th float of the second conv's kernel changes sign
        data[i] ^= 0x80
    data_file.write_bytes(bytes(data))
    out = graph_convert.verify_file(str(src), str(sm))
    assert not out.equivalent
    div = out.divergence
    assert div["found"] and "TFLiteConverter" in div["searched_in"], div
    assert div["last_agreeing"]["onnx_op"].startswith("Relu") and div["first_disagreeing"]["onnx_op"].startswith("Conv")


def test_a_dtype_or_count_mismatch_names_the_tensors():
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    src = [Spec("ids", (1, 4), i64), Spec("x", (1, 3, 8, 8), f32)]
    with pytest.raises(ConvertError, match=r"input 'ids' of the candidate and 'ids' of the source: dtype float32 vs int64"):
        match("input", src, [Spec("ids", (1, 4), f32), Spec("x", (1, 8, 8, 3), f32)], {})
    with pytest.raises(ConvertError, match=r"the candidate has 1 inputs \(x\), the source 2 \(ids, x\)"):
        match("input", src, [Spec("x", (1, 8, 8, 3), f32)], {})
    pairs = match("input", src, [Spec("serving_default_x:0", (1, 8, 8, 3), f32), Spec("b", (1, 4), np.dtype(np.int32))], {})
    assert [(p.cand.name, p.how, p.perm) for p in pairs] == [("b", "order and shape", (0, 1)), ("serving_default_x:0", "name", (0, 2, 3, 1))]


def test_name_sanitising_and_layout_perms():
    assert sanitise("input.1") == sanitise("input_1") == sanitise("serving_default_input_1:0") == sanitise("Input_1:0")
    assert layout_perms((1, 3, 8, 6), (1, 8, 6, 3)) == [(0, 2, 3, 1)]
    assert layout_perms((1, 3, 8, 6), (1, 3, 8, 6)) == [(0, 1, 2, 3)]
    assert layout_perms((4, 4), (4, 4)) == [(0, 1), (1, 0)]  # a square matrix: both, tried on the data
    assert layout_perms((1, 3, 1, 1), (1, 1, 1, 3)) == [(0, 2, 3, 1)]  # size-1 axes: one data order
    assert layout_perms((1, 3, 8, 6), (1, 8, 3, 7)) == []
    assert parse_map("y=out:0,2,3,1") == ("y", "out", (0, 2, 3, 1)) and parse_map("y:0=x:0") == ("y:0", "x:0", None)
    with pytest.raises(ConvertError, match="not a permutation"):
        parse_map("y=out:0,2,2")


@pytest.mark.skipif(not HAVE_ONNX2TF, reason=f"onnx2tf is not installed at {ONNX2TF_PYTHON} (CI installs it and requires it)")
def test_onnx2tf_output_is_checked(tmp_path):
    """onnx2tf's .tflite (no signature, its own tensor names) and SavedModel of a small conv net:
    both verify; a corrupted copy does not, and the diverging op is named."""
    model = two_convs(h=8, w=6)
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.path.dirname(ONNX2TF_PYTHON) + os.pathsep + env.get("PATH", "")
    r = subprocess.run([ONNX2TF_PYTHON, "-m", "onnx2tf", "-i", "m.onnx", "-o", "o2t", "-n"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    tfl = tmp_path / "o2t" / "m_float32.tflite"
    for cand in (tfl, tmp_path / "o2t"):
        v = verify_cli(tmp_path / "m.onnx", cand, work=tmp_path)
        assert v.returncode == 0, v.stdout + v.stderr
    data = bytearray(tfl.read_bytes())
    at, n = weight_offset(bytes(data), model, 1)
    for i in range(at + 3, at + n, 4):
        data[i] ^= 0x80
    (tmp_path / "bad.tflite").write_bytes(bytes(data))
    v = verify_cli(tmp_path / "m.onnx", tmp_path / "bad.tflite", work=tmp_path)
    assert v.returncode == 3 and "first disagreeing: Conv" in v.stdout, v.stdout + v.stderr


def test_a_symbolic_batch_takes_the_candidates_fixed_batch(tmp_path):
    """A source with a symbolic batch against a file converted at batch 2: checked at batch 2."""
    res = graph_convert.convert(two_convs(batch=2), None, str(tmp_path / "out"))  # the same seeded weights
    assert res.report["io"]["inputs"][0]["shape"][0] == 2
    model = two_convs()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    onnx.save(model, tmp_path / "dyn.onnx")
    out = graph_convert.verify_file(str(tmp_path / "dyn.onnx"), res.tflite)
    assert out.equivalent and out.report["io"]["inputs"][0]["source_shape"] == [2, 3, 8, 6]
    with pytest.raises(ConvertError, match="element counts differ"):  # an explicit shape still wins
        graph_convert.verify_file(str(tmp_path / "dyn.onnx"), res.tflite, input_shapes=[("input.1", (1, 3, 8, 6))])


def test_report_never_replaces_a_users_file(ours, tmp_path):
    """--report writes a new file or replaces an earlier report of ours; a user's file at that
    path is refused before any work (exit 2, untouched), and nothing temporary is left."""
    _, src, res = ours
    (tmp_path / "notes.json").write_text('{"mine": true}')
    r = verify_cli(src, res.tflite, "--report", tmp_path / "notes.json", work=tmp_path)
    assert r.returncode == 2 and "is not a report graph-convert verify wrote" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "notes.json").read_text() == '{"mine": true}'
    r = verify_cli(src, res.tflite, "--report", tmp_path / "r.json", work=tmp_path)
    assert r.returncode == 0, r.stderr
    first = (tmp_path / "r.json").stat().st_ino
    r = verify_cli(src, res.tflite, "--report", tmp_path / "r.json", work=tmp_path)  # our own earlier report
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.json").stat().st_ino != first and json.loads((tmp_path / "r.json").read_text())["tool"]
    assert sorted(os.listdir(tmp_path)) == ["notes.json", "r.json"]
