"""Quantized TFLite (fp16 / dynamic-range int8 / full int8): real calibration data, the accuracy
report against ONNX Runtime float32, per-layer diagnostics, selective float layers, thresholds, and
every kind of bad quantization input (one clear line, non-zero exit, no output directory).

The digits model is trained here (seconds, fixed seeds) on scikit-learn's bundled 8x8 digits, so
the accuracy targets are checked on real held-out data: int8-full within 1 point of float32,
fp16 within 0.1 point."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch

from graph_convert import quantize as Q
from graph_convert.cli import EXIT_QUANT_THRESHOLD, EXIT_USAGE
from graph_convert.ir import from_onnx
from graph_convert.conversion.pipeline import convert
from graph_convert.checks.equivalence import to_rewritten_layout, to_source_layout
from graph_convert_models import digits_cnn
from tests.helpers import Builder
from tests.test_cli import assert_clean_failure, run, small_model

VARIANT_FILES = {"float32": "model_float32.tflite", **{v: f for v, (f, _, _) in Q.VARIANTS.items()}}


# ------------------------------------------------------------------------------------------------
# the digits model: trained once per test session


@pytest.fixture(scope="module")
def digits():
    model, data = digits_cnn.trained(epochs=8)
    with torch.no_grad():
        torch_acc = digits_cnn.accuracy(model(torch.from_numpy(data.x_test)).numpy(), data.y_test)
    return model, data, torch_acc


def lite_accuracy(out_dir, report, variant: str, x: np.ndarray, y: np.ndarray) -> float:
    """Label accuracy of one written .tflite on (N, C, H, W) images, fed in its own layout."""
    inp = report["io"]["inputs"][0]
    runs = {inp["name"]: x[:, None]}  # one image per run
    perm = inp["layout_perm"]
    rw = to_rewritten_layout(runs, {inp["name"]: tuple(perm)} if perm else {}, batched=True)
    got = Q.run_tflite_many(os.path.join(out_dir, VARIANT_FILES[variant]), {inp["tf_name"]: rw[inp["name"]]})
    logits = next(iter(got.values()))
    return digits_cnn.accuracy(logits.reshape(len(y), -1), y)


@pytest.fixture(scope="module")
def digits_onnx(digits, tmp_path_factory):
    """The trained digits model as an ONNX file (exported once), and its input name."""
    from graph_convert.conversion.export import export

    model, data, _ = digits
    path = tmp_path_factory.mktemp("digits_onnx") / "digits.onnx"
    export(model, (torch.from_numpy(data.x_test[:1]),), str(path))
    m = onnx.load(path)
    return path, m.graph.input[0].name, [(n.name, n.op_type) for n in m.graph.node]


@pytest.fixture(scope="module")
def digits_all(digits, digits_onnx, tmp_path_factory):
    """All three variants with --quant-debug: calibration on training images, evaluation on the test set."""
    _, data, torch_acc = digits
    path, name, _ = digits_onnx
    out = tmp_path_factory.mktemp("digits") / "out"
    result = convert(str(path), None, out, quantize="fp16,int8,int8-full",
                     calibration={name: data.x_train[:400]}, eval_data={name: data.x_test}, quant_debug=True)
    return result, data, torch_acc


def test_digits_accuracy_targets(digits_all):
    result, data, torch_acc = digits_all
    acc = {v: lite_accuracy(result.output_dir, result.report, v, data.x_test, data.y_test) for v in VARIANT_FILES}
    print("digits test accuracy (%):", {k: round(v, 2) for k, v in acc.items()}, "torch:", round(torch_acc, 2))
    assert acc["float32"] == pytest.approx(torch_acc, abs=1e-9)
    assert acc["float32"] > 95.0, "the digits model did not train"
    assert abs(acc["fp16"] - acc["float32"]) <= 0.1
    assert abs(acc["int8-full"] - acc["float32"]) <= 1.0
    assert abs(acc["int8"] - acc["float32"]) <= 1.0


def test_digits_report(digits_all):
    result, data, _ = digits_all
    q = result.report["quantization"]
    assert q["evaluation"]["samples"] == len(data.x_test) and q["evaluation"]["meaningful"] is True
    assert q["calibration"]["samples"] == 400
    for v, (fname, key, _) in Q.VARIANTS.items():
        entry = q["variants"][v]
        assert os.path.getsize(result.paths[key]) == entry["bytes"] and entry["path"] == fname
        f = entry["outputs"][result.report["io"]["outputs"][0]["name"]]
        assert set(f) >= {"max_abs", "mean_abs", "cosine", "sqnr_db", "top1_agreement_pct"}
        assert f["top1_agreement_pct"] >= 99.0 and f["sqnr_db"] > 25.0 and f["cosine"] > 0.99
    sizes = {v: q["variants"][v]["bytes"] for v in Q.VARIANTS}
    assert sizes["int8"] < sizes["fp16"] < q["float32"]["bytes"]
    assert q["variants"]["int8-full"]["io_dtypes"] == {"inputs": ["float32"], "outputs": ["float32"]}
    assert q["variants"]["int8-full"]["float_fallback_ops"] == []
    # full-integer: every compute op is int8; fp16 keeps float32 compute
    assert q["variants"]["int8-full"]["ops"].get("QUANTIZE") == 1 and q["variants"]["int8-full"]["ops"].get("DEQUANTIZE") == 1
    assert q["variants"]["fp16"]["ops"].get("DEQUANTIZE", 0) >= 1


def test_digits_per_layer_debug(digits_all):
    result, _, _ = digits_all
    layers = result.report["quantization"]["variants"]["int8-full"]["layers"]
    rows = layers["all"]
    assert layers["count"] == len(rows) >= 5
    sqnrs = [r["sqnr_db"] for r in rows]
    assert sqnrs == sorted(sqnrs) and all(np.isfinite(sqnrs))
    assert layers["worst"] == rows[:Q.WORST_LAYERS]
    rewritten = {n.name for n in onnx.load(result.rewritten_onnx).graph.node}
    convs = [r for r in rows if r["op"] == "CONV_2D"]
    assert len(convs) == 3
    for r in rows:  # every quantized layer leads back to nodes of the rewritten graph
        assert r["nodes"] and set(r["nodes"]) <= rewritten, r
    for r in convs:  # a conv layer is a Conv node (with the Relu TFLite fused into it)
        ops = {n.name: n.op_type for n in onnx.load(result.rewritten_onnx).graph.node}
        assert "Conv" in {ops[n] for n in r["nodes"]}
        assert 20.0 < r["sqnr_db"] < 80.0


def test_digits_int8_io_and_float_ops(digits, digits_onnx, tmp_path):
    """--int8-io gives int8 I/O; --float-ops keeps the named layers float and reports the difference."""
    _, data, _ = digits
    path, name, nodes = digits_onnx
    keep = [n for n, op in nodes if op == "Conv"][1:2] + [n for n, op in nodes if op in ("Gemm", "MatMul")][:1]
    assert len(keep) == 2, nodes
    out = tmp_path / "out"
    result = convert(str(path), None, out, quantize="int8-full", calibration={name: data.x_train[:300]},
                     eval_data={name: data.x_test}, int8_io=True, float_ops=keep, quant_debug=True)
    e = result.report["quantization"]["variants"]["int8-full"]
    assert e["io_dtypes"] == {"inputs": ["int8"], "outputs": ["int8"]}
    fo = e["float_ops"]
    assert fo["nodes"] == keep and all(fo["tflite_tensors_kept_float"][n] for n in keep)
    assert fo["bytes_added"] > 0  # float weights are bigger
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(e["float_fallback_ops"])
    y = result.report["io"]["outputs"][0]["name"]
    assert fo["gain"][y]["sqnr_db"] == pytest.approx(e["outputs"][y]["sqnr_db"] - fo["all_int8"]["outputs"][y]["sqnr_db"], abs=0.01)
    kept_layers = {n for r in e["layers"]["all"] for n in r["nodes"]}
    assert not set(keep) & kept_layers  # float layers are not quantized layers any more
    acc = lite_accuracy(out, result.report, "int8-full", data.x_test, data.y_test)
    assert abs(acc - lite_accuracy(out, result.report, "float32", data.x_test, data.y_test)) <= 1.0


def test_digits_image_folder_calibration(digits, digits_onnx, tmp_path, capsys):
    """--calibration DIR: PNG files through Pillow, --mean/--std applied after scaling to [0, 1]."""
    from PIL import Image

    _, data, _ = digits
    onnx_path, name, _ = digits_onnx
    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(data.x_train[:60, 0]):
        Image.fromarray(np.round(img * 255).astype(np.uint8), "L").resize((16, 16)).save(images / f"{i:03d}.png")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    np.savez(tmp_path / "test.npz", **{name: data.x_test[:100]})
    code, stdout, err = run(["convert", onnx_path, "-o", out, "--quantize", "int8-full", "--calibration", images, "--size", "8",
                             "--mean", "0", "--std", "1", "--eval-data", tmp_path / "test.npz"], capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())["quantization"]
    assert rep["calibration"]["samples"] == 60 and rep["calibration"]["source"].startswith("images in")
    assert rep["calibration"]["preprocessing"]["resize"] == [8, 8]
    assert rep["variants"]["int8-full"]["outputs"][next(iter(rep["variants"]["int8-full"]["outputs"]))]["top1_agreement_pct"] >= 98.0
    assert "SQNR dB" in stdout and "model_full_integer_quant.tflite" in stdout


# ------------------------------------------------------------------------------------------------
# small models: layout mapping, held-out split, random calibration, thresholds, CLI


def three_channel_model() -> onnx.ModelProto:
    """Conv -> Relu -> global pool -> Flatten -> Gemm: a 3-channel NCHW classifier (10 classes)."""
    b = Builder()
    x = b.input("img", [1, 3, 8, 8])
    y = b.op("Relu", [b.op("Conv", [x, b.weight([8, 3, 3, 3]), b.weight([8])], pads=[1, 1, 1, 1])])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    b.output(b.op("Gemm", [y, b.weight([10, 8]), b.weight([10])], transB=1))
    return b.model()


def channel_data(n: int, seed: int) -> np.ndarray:
    """Channels with very different ranges: data in the wrong layout would calibrate (and evaluate) wrongly."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    return x * np.array([0.1, 1.0, 10.0], np.float32)[None, :, None, None]


@pytest.fixture
def three_channel_file(tmp_path):
    p = tmp_path / "three.onnx"
    onnx.save(three_channel_model(), p)
    return p


def test_calibration_in_source_layout_held_out(three_channel_file, tmp_path, capsys):
    data = tmp_path / "calib.npz"
    np.savez(data, img=channel_data(50, 0))
    out = tmp_path / "out"
    code, stdout, err = run(["convert", three_channel_file, "-o", out, "--quantize", "int8,int8-full", "--calibration", data], capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["io"]["inputs"][0]["layout_perm"] == [0, 2, 3, 1]  # the TFLite model is NHWC
    q = rep["quantization"]
    assert q["calibration"]["samples"] == 40 and q["evaluation"]["samples"] == 10
    assert "held out" in q["evaluation"]["source"] and q["evaluation"]["meaningful"] is True
    y = rep["io"]["outputs"][0]["name"]
    assert q["float32"]["outputs"][y]["sqnr_db"] > 100.0
    assert q["variants"]["int8-full"]["outputs"][y]["sqnr_db"] > 25.0  # a layout mix-up collapses this
    assert "WARNING" not in stdout


def test_held_out_samples_are_not_calibration_samples():
    g = from_onnx(three_channel_model())
    calib = channel_data(20, 3)
    plan = Q.prepare(Q.make_options("int8-full", calibration={"img": calib}), g, seed=0)
    c, e = plan.calibration["img"][:, 0], plan.evaluation["img"][:, 0]
    assert len(c) == 16 and len(e) == 4
    flat = {x.tobytes() for x in calib}
    assert {x.tobytes() for x in c} | {x.tobytes() for x in e} == flat
    assert not {x.tobytes() for x in c} & {x.tobytes() for x in e}


def test_stacked_samples_and_layout_mapping_agree_with_verify():
    specs = [Q.InputSpec("img", (1, 3, 4, 5), np.dtype(np.float32))]
    x = np.arange(6 * 3 * 4 * 5, dtype=np.float32).reshape(6, 3, 4, 5)
    a = Q.stack_samples({"img": x}, specs, "t")["img"]
    b = Q.stack_samples({"img": x[:, None]}, specs, "t")["img"]  # whole inputs stacked on a new axis
    assert a.shape == (6, 1, 3, 4, 5) and np.array_equal(a, b)
    perm = {"img": (0, 2, 3, 1)}
    rw = to_rewritten_layout({"img": a}, perm, batched=True)["img"]
    for i in range(6):
        assert np.array_equal(rw[i], to_rewritten_layout({"img": a[i]}, perm)["img"])
    assert np.array_equal(to_source_layout({"img": rw}, perm, batched=True)["img"], a)


def test_node_names_from_tflite_tensor_names():
    names = Q.NodeNames({"conv_a": "/conv/A", "relu_b": "/relu/B", "fc": "/fc/Gemm"}, {"PartitionedCall:0": "/fc/Gemm"})
    assert names.nodes("relu_b/Relu;conv_a/BiasAdd;conv_a/convolution;Const_11") == ["/conv/A", "/relu/B"]
    assert names.nodes("PartitionedCall:01") == ["/fc/Gemm"]
    assert names.nodes("PartitionedCall:0") == ["/fc/Gemm"]
    assert names.nodes("tfl.quantize") == []


def test_sqnr_and_figures():
    ref = np.ones((4, 1, 10), np.float32)
    assert Q.sqnr_db(1.0, 0.0) == Q.SQNR_CAP_DB
    assert Q.sqnr_db(1.0, 0.01) == pytest.approx(20.0)
    f = Q.output_figures(ref, ref * 1.1)
    assert f["sqnr_db"] == pytest.approx(20.0) and f["max_abs"] == pytest.approx(0.1, rel=1e-5)
    assert f["mean_abs"] == pytest.approx(0.1, rel=1e-5) and f["cosine"] == pytest.approx(1.0)
    logits = np.eye(10, dtype=np.float32)[None, :5]  # (runs=1, batch=5, classes=10)
    other = logits.copy()
    other[0, 0] = np.roll(other[0, 0], 1)
    assert Q.output_figures(logits, other)["top1_agreement_pct"] == pytest.approx(80.0)
    assert "top1_agreement_pct" not in Q.output_figures(np.ones((2, 1, 3, 4)), np.ones((2, 1, 3, 4)))


def test_random_calibration_is_marked_meaningless(three_channel_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["convert", three_channel_file, "-o", out, "--quantize", "fp16,int8-full", "--calibration", "random"], capsys)
    assert code == 0, err
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert q["calibration"]["source"] == "random" and q["evaluation"]["meaningful"] is False
    assert "MEANINGLESS" in q["evaluation"]["warning"] and "MEANINGLESS" in stdout
    assert (out / "model_float16.tflite").exists() and (out / "model_full_integer_quant.tflite").exists()


def test_fp16_and_int8_need_no_calibration(onnx_small, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_small, "-o", out, "--quantize", "int8,fp16", "-q"], capsys)
    assert code == 0, err
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert list(q["variants"]) == ["fp16", "int8"] and q["evaluation"]["meaningful"] is False
    assert not (out / "model_full_integer_quant.tflite").exists()


def test_threshold_failure_exits_5_and_writes_nothing(three_channel_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", three_channel_file, "-o", out, "--quantize", "int8-full", "--calibration", "random",
                        "--min-sqnr", "150"], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_QUANT_THRESHOLD, "int8-full", "--min-sqnr 150", "SQNR")


def test_threshold_met_passes(three_channel_file, tmp_path, capsys):
    data = tmp_path / "calib.npz"
    np.savez(data, img=channel_data(40, 1))
    out = tmp_path / "out"
    code, _, err = run(["convert", three_channel_file, "-o", out, "--quantize", "int8-full", "--calibration", data,
                        "--min-sqnr", "20", "--min-top1", "50", "-q"], capsys)
    assert code == 0, err
    t = json.loads((out / "report.json").read_text())["quantization"]["thresholds"]
    assert t == {"min_sqnr_db": 20.0, "min_top1_pct": 50.0, "failures": []}


# ------------------------------------------------------------------------------------------------
# bad input: one line naming the input/option, non-zero exit, nothing written


@pytest.fixture
def onnx_small(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    return p


def _npz(tmp_path, name="bad.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def good(n=8):
    return np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)


BAD_NPZ = {
    "wrong_shape": ({"input.1": np.zeros((8, 3, 9, 9), np.float32)}, ["bad.npz", "'input.1'", "(8, 3, 9, 9)"]),
    "wrong_rank": ({"input.1": np.zeros((8, 3, 8), np.float32)}, ["bad.npz", "'input.1'", "shape"]),
    "wrong_dtype": ({"input.1": np.zeros((8, 3, 8, 8), np.uint8)}, ["bad.npz", "uint8", "float32"]),
    "extra_array": ({"input.1": good(), "other": good()}, ["bad.npz", "'other'", "not a model input"]),
    "missing_array": ({"image": good()}, ["bad.npz", "'input.1'"]),
    "nan": ({"input.1": np.where(np.arange(8 * 3 * 64).reshape(8, 3, 8, 8) == 500, np.nan, good()).astype(np.float32)},
            ["bad.npz", "NaN/Inf", "sample 2"]),
    "inf": ({"input.1": np.concatenate([good(3), np.full((1, 3, 8, 8), np.inf, np.float32)])}, ["bad.npz", "NaN/Inf", "sample 3"]),
    "empty": ({"input.1": np.zeros((0, 3, 8, 8), np.float32)}, ["bad.npz", "no samples"]),
    "one_sample": ({"input.1": good(1)}, ["--calibration", "too few", "--eval-data"]),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_calibration_npz(case, onnx_small, tmp_path, capsys):
    arrays, fragments = BAD_NPZ[case]
    data = _npz(tmp_path, **arrays)
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_small, "-o", out, "--quantize", "int8-full", "--calibration", data], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, *fragments)


def test_bad_eval_data(onnx_small, tmp_path, capsys):
    calib = _npz(tmp_path, "calib.npz", **{"input.1": good()})
    ev = _npz(tmp_path, "eval.npz", **{"input.1": np.zeros((4, 3, 7, 8), np.float32)})
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_small, "-o", out, "--quantize", "int8-full", "--calibration", calib, "--eval-data", ev], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "--eval-data", "eval.npz", "'input.1'")


def test_calibration_not_an_npz(onnx_small, tmp_path, capsys):
    p = tmp_path / "calib.npz"
    p.write_bytes(b"not a zip archive")
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_small, "-o", out, "--quantize", "int8-full", "--calibration", p], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "--calibration", "calib.npz", "cannot read")


def test_empty_image_directory(onnx_small, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "readme.txt").write_text("no images here")
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_small, "-o", out, "--quantize", "int8-full", "--calibration", d], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "--calibration", "imgs", "no image files")


def test_unreadable_image(onnx_small, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_small, "-o", out, "--quantize", "int8-full", "--calibration", d], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "--calibration", "broken.png")


@pytest.mark.parametrize("args,fragments", [
    (["--quantize", "int4"], ["--quantize", "'int4'", "fp16, int8, int8-full"]),
    (["--quantize", "fp16,,int8"], ["--quantize"]),
    (["--quantize", "int8-full"], ["int8-full", "calibration", "--calibration random"]),
    (["--quantize", "int8", "--int8-io"], ["--int8-io", "int8-full"]),
    (["--quantize", "fp16", "--quant-debug"], ["--quant-debug", "int8-full"]),
    (["--quantize", "int8", "--float-ops", "x"], ["--float-ops", "int8-full"]),
    (["--calibration", "random"], ["--calibration", "--quantize"]),
    (["--quantize", "int8-full", "--calibration", "random", "--float-ops", "no_such_node"], ["--float-ops", "'no_such_node'", "no node"]),
    (["--quantize", "int8-full", "--calibration", "random", "--min-top1", "120"], ["--min-top1", "0 and 100"]),
    (["--quantize", "int8-full", "--calibration", "random", "--min-top1", "50"], ["--min-top1", "no classifier output"]),
    (["--quantize", "int8-full", "--calibration", "random", "--mean", "0.5"], ["--mean", "DIR"]),
    (["--quantize", "int8-full", "--calibration", "random", "--std", "0"], ["--std", "zero"]),
    (["--quantize", "int8-full", "--calibration", "nope.npz"], ["--calibration", "nope.npz", "no such file"]),
    (["--quantize", "int8", "--no-tflite"], ["--quantize", "--no-tflite"]),
])
def test_bad_quantization_options(args, fragments, onnx_small, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["convert", onnx_small, "-o", out, *args], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, *fragments)


def test_float_ops_folded_node_is_named(tmp_path, capsys):
    """A node the passes fold away (BatchNormalization into the Conv) cannot be kept float: say so."""
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    bn = b.op("BatchNormalization", [y, b.const(np.ones(4, np.float32)), b.const(np.zeros(4, np.float32)), b.const(np.zeros(4, np.float32)), b.const(np.ones(4, np.float32))])
    b.output(b.op("Relu", [bn]))
    m = b.model()
    bn_name = [n.name for n in m.graph.node if n.op_type == "BatchNormalization"][0]
    p = tmp_path / "bn.onnx"
    onnx.save(m, p)
    out = tmp_path / "out"
    code, _, err = run(["convert", p, "-o", out, "--quantize", "int8-full", "--calibration", "random", "--float-ops", bn_name], capsys)
    assert_clean_failure(code, err, tmp_path, out, EXIT_USAGE, "--float-ops", repr(bn_name), "folded")


def test_api_threshold_error_is_typed(three_channel_file, tmp_path):
    with pytest.raises(Q.QuantizationThresholdError) as e:
        convert(str(three_channel_file), None, tmp_path / "out", quantize=["int8"], min_sqnr=190.0)
    assert e.value.failures and "int8" in e.value.failures[0]
    assert not (tmp_path / "out").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_tables_render_every_report_shape():
    """The printed table copes with float-ops whose all-int8 model was refused, and with debug rows."""
    figs = {"y": {"max_abs": 0.1, "mean_abs": 0.01, "cosine": 0.999, "sqnr_db": 40.0, "finite": True, "top1_agreement_pct": 99.0}}
    section = {
        "evaluation": {"samples": 10, "source": "held out", "meaningful": True},
        "float32": {"bytes": 100, "outputs": figs},
        "variants": {"int8-full": {"bytes": 40, "outputs": figs, "float_fallback_ops": ["CONV_2D"],
                                   "float_ops": {"nodes": ["n1"], "all_int8": {"bytes": 30, "error": "degenerate scale"}, "gain": None,
                                                 "bytes_added": 10},
                                   "layers": {"count": 1, "worst": [{"sqnr_db": 30.0, "op": "CONV_2D", "nodes": ["n1"], "tensor": "n1/conv"}]}}},
    }
    text = Q.tables(section)
    assert "all-int8 model is refused (degenerate scale)" in text and "n1/conv" in text and "CONV_2D" in text
    section["variants"]["int8-full"]["float_ops"] = {"nodes": ["n1"], "all_int8": {"bytes": 30, "outputs": figs},
                                                     "gain": {"y": {"sqnr_db": 1.5, "top1_agreement_pct": 0.5}}, "bytes_added": 10}
    text = Q.tables(section)
    assert "int8-full (all int8)" in text and "SQNR +1.5 dB, top-1 +0.50 pt" in text
