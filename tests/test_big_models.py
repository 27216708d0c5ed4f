"""Big models (issue 16): the paths a model of gigabytes takes — weights kept in their external
data file, ONNX Runtime sessions fed OrtValues instead of a serialized proto, the rewritten ONNX
written with external data, a .tflite with buffer offsets — forced on small models by lowering
GRAPH_CONVERT_EXTERNAL_DATA_BYTES, so CI runs them in seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graph_convert.errors import ConvertError
from graph_convert.ir import from_onnx
from graph_convert.ir.onnx_io import load_model
from graph_convert.ir.tensors import EXTERNAL_DATA_ENV, PLACEHOLDER_BYTES
from graph_convert.checks.equivalence import ort_error_line, ort_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORCED = "1000"  # bytes: every test model here is "large"


def _model(name: str, nodes, inits: dict[str, np.ndarray], x: tuple, y: tuple) -> onnx.ModelProto:
    """An opset-17 model of ``nodes`` with the initializers ``inits`` and one input ``x`` and one
    output ``y``, each ``(name, element type, shape)``."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(*x)], [helper.make_tensor_value_info(*y)],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_mlp() -> onnx.ModelProto:
    """Conv (its weight rewritten to channels-last by the layout passes) -> Flatten -> MatMul (its
    rows permuted to match) + Add -> MatMul (untouched); the weights are above PLACEHOLDER_BYTES,
    so they stay external, the small bias is not."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)  # 4.6 KB
    fc = (rng.standard_normal((16 * 4 * 4, 32)) * 0.05).astype(np.float32)  # 32 KB
    bias = rng.standard_normal(32).astype(np.float32)  # 128 B: stays in the proto
    head = (rng.standard_normal((32, 40)) * 0.2).astype(np.float32)  # 5 KB, untouched by the passes
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "bias"], ["a"], name="bias_add"),
             helper.make_node("MatMul", ["a", "head"], ["y"], name="head")]
    return _model("conv_mlp", nodes, {"w": w, "fc": fc, "bias": bias, "head": head}, ("x", TensorProto.FLOAT, [1, 8, 8, 8]),
                  ("y", TensorProto.FLOAT, [1, 40]))


@pytest.fixture
def external_file(tmp_path):
    """The model written with its weights in ``m.onnx.data`` (as exporters write big models)."""
    folder = tmp_path / "src"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(conv_mlp(), path, save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    return path


def _source_outputs(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_large_model_keeps_its_weights_in_the_file(external_file, monkeypatch):
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    model = load_model(external_file)
    by_name = {t.name: t for t in model.graph.initializer}
    assert by_name["fc"].data_location == TensorProto.EXTERNAL and by_name["w"].data_location == TensorProto.EXTERNAL
    assert not by_name["fc"].HasField("raw_data")
    assert by_name["bias"].data_location == TensorProto.DEFAULT  # small: read in
    fc = from_onnx(model).initializer("fc")
    assert isinstance(fc, np.memmap) and not fc.flags.writeable  # mapped read-only, not copied
    np.testing.assert_array_equal(fc, numpy_helper.to_array(conv_mlp().graph.initializer[1]))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, str(10**12))  # the same file below the threshold: read in whole
    assert all(t.data_location == TensorProto.DEFAULT for t in load_model(external_file).graph.initializer)


def test_ort_session_of_a_large_model_gets_ortvalues(external_file, monkeypatch):
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 8)).astype(np.float32)
    small = ort_session(conv_mlp())
    assert small.graph_convert_weights == "in the serialized model"
    ref = small.run(None, {"x": x})[0]
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    in_memory = ort_session(conv_mlp())
    assert in_memory.graph_convert_weights.startswith("3 initializers as OrtValues")
    from_file = ort_session(load_model(external_file))  # weights left in their file: ORT maps them from it
    assert from_file.graph_convert_weights.startswith("3 initializers read by ONNX Runtime from the external data file")
    got = [sess.run(None, {"x": x})[0] for sess in (in_memory, from_file)]
    np.testing.assert_array_equal(got[0], got[1])  # the same graph and kernels, the same numbers
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-6)  # (without weight pre-packing: float rounding)


def test_protobuf_limit_is_not_called_a_broken_model():
    msg = ort_error_line(ValueError("Failed to serialize proto"))
    assert "too large for one protobuf message" in msg and "not broken" in msg


def test_convert_through_the_external_data_path(external_file, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT, **{EXTERNAL_DATA_ENV: FORCED})
    proc = subprocess.run([sys.executable, "-m", "graph_convert.cli", "convert", str(external_file), "-o", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model.rewritten.onnx (+ model.rewritten.onnx.data)" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    weights = report["weights"]
    assert weights["external_data_threshold_bytes"] == int(FORCED)
    # the reference and every check of the rewritten graph: a proto without weights plus OrtValues
    assert len(weights["onnx_runtime_sessions"]) >= 2
    sessions = weights["onnx_runtime_sessions"]
    assert sessions[0].startswith("source: 3 initializers read by ONNX Runtime from the external data file"), sessions
    # the rewritten graph: the untouched weight still from the file, the two the layout passes
    # rewrote (new arrays) as OrtValues
    assert all("1 initializers read by ONNX Runtime from the external data file and 2 initializers as OrtValues" in s
               for s in sessions[1:]), sessions
    assert report["source"]["weights_memory_mapped"] == 3
    assert set(report["verification"]) >= {"rewritten_onnx", "tensorflow", "tflite_float32"}
    # the rewritten ONNX: its big weights in the data file beside it, and it means the same
    assert weights["rewritten_onnx_data"] == "model.rewritten.onnx.data"
    shell = onnx.load(out / "model.rewritten.onnx", load_external_data=False)
    external = [t.name for t in shell.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external and all(t.data_location == TensorProto.DEFAULT for t in shell.graph.initializer
                            if len(t.raw_data) or t.float_data)
    assert os.path.getsize(out / "model.rewritten.onnx") < 4096 < os.path.getsize(out / "model.rewritten.onnx.data")
    x = np.random.default_rng(2).standard_normal((1, 8, 8, 8)).astype(np.float32)
    perm = report["io"]["inputs"][0]["layout_perm"]
    got = ort.InferenceSession(str(out / "model.rewritten.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ascontiguousarray(x.transpose(perm)) if perm else x})[0]
    np.testing.assert_allclose(got, _source_outputs(external_file, x), rtol=1e-4, atol=1e-5)
    # the .tflite keeps its weights after the flatbuffer (buffer offsets) and was verified
    assert report["verification"]["tflite_float32"]["y"]["ok"]
    from tensorflow.lite.python.lite import _check_model_use_buffer_offset
    from tensorflow.lite.tools import flatbuffer_utils

    assert _check_model_use_buffer_offset(flatbuffer_utils.read_model(str(out / "model_float32.tflite")))
    # the marker lists the data file; nothing else is left beside the output or in it
    marker = json.loads((out / ".graph-convert.json").read_text())
    assert "model.rewritten.onnx.data" in marker["entries"]
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]
    assert sorted(os.listdir(tmp_path / "src")) == ["m.onnx", "m.onnx.data"]
    assert sorted(os.listdir(out)) == sorted(marker["entries"])


def test_pytorch_source_keeps_its_exported_weights_in_their_file(tmp_path, monkeypatch):
    import torch

    import graph_convert as gc

    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 16)).eval()
    x = torch.randn(1, 64)
    result = gc.convert(net, x, tmp_path / "out", tflite=False)
    r = result.report
    assert r["source"]["kind"] == "pytorch"
    assert r["source"].get("weights_memory_mapped", 0) >= 1, r["source"]  # the exporter's data file, not read in whole
    assert all("from the external data file" in s for s in r["weights"]["onnx_runtime_sessions"]), r["weights"]
    assert r["verification"]["tensorflow"][next(iter(r["verification"]["tensorflow"]))]["ok"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the export folder went with the temporary folder
    assert ".export" not in os.listdir(tmp_path / "out")
    assert (tmp_path / "out" / "model.rewritten.onnx.data").exists()


def test_small_models_take_the_usual_path(tmp_path):
    out = tmp_path / "out"
    import graph_convert as gc

    r = gc.convert(conv_mlp(), None, out, tflite=False).report
    assert r["weights"]["onnx_runtime_sessions"] and all("in the serialized model" in s for s in r["weights"]["onnx_runtime_sessions"])
    assert r["weights"]["rewritten_onnx_data"] is None
    assert not (out / "model.rewritten.onnx.data").exists()
    assert PLACEHOLDER_BYTES <= 4096


def test_tflite_past_the_flatbuffer_limit_without_the_memory_is_refused_up_front(tmp_path, monkeypatch):
    """The model stands in for one past 2 GiB (the limit lowered to its size) on a machine without
    the memory TensorFlow's converter needs (MemAvailable read as 1 KB): the run stops before any
    conversion work with one line naming --no-tflite (exit 0 means every requested artifact was
    written), and --no-tflite writes and verifies the SavedModel."""
    import graph_convert as gc
    from graph_convert.backends.tensorflow import backend as tf_backend
    from graph_convert.backends.tensorflow import writer

    monkeypatch.setattr(writer, "FLATBUFFER_LIMIT", 1000)
    monkeypatch.setattr(tf_backend, "available_memory", lambda: 1024)
    said = []
    with pytest.raises(gc.ConvertError, match=r"no \.tflite can be written here: the weights .* \(--no-tflite writes the SavedModel only\)"):
        gc.convert(conv_mlp(), None, tmp_path / "out", log=said.append)
    assert len(said) == 1 and said[0].startswith("source:"), said  # right after the source is read: no work done
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == []
    r = gc.convert(conv_mlp(), None, tmp_path / "out", tflite=False).report
    assert "tflite_float32" not in r["verification"] and r["verification"]["tensorflow"]["y"]["ok"]
    assert sorted(os.listdir(tmp_path / "out")) == [".graph-convert.json", "model.rewritten.onnx", "report.html", "report.json", "saved_model"]


def test_pass_checks_hold_for_weights_left_in_their_file(external_file, monkeypatch):
    """A weight read from its file is a new (read-only) mapping on every read: reading is not a
    change, an in-place edit fails where it happens, a replaced weight is still caught."""
    from graph_convert.errors import PassError
    from graph_convert.pass_manager import PassManager, PassResult
    from tests.test_pass_manager import make_pass, registry_of

    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)

    def reader(graph, ctx):
        assert all(graph.initializer(n) is not None for n in graph.initializer_names)
        return PassResult(False)

    def in_place(graph, ctx):
        graph.initializer("fc")[0, 0] = 1.0
        return PassResult(False)

    def liar(graph, ctx):
        graph.set_initializer("fc", np.array(graph.initializer("fc")) + 1.0)
        return PassResult(False)

    graph = from_onnx(load_model(external_file))
    assert PassManager(registry_of(make_pass("reader", run=reader))).run(graph)[0].changed is False
    for run, fragment in ((in_place, "edited an initializer in place"), (liar, "initializer 'fc' replaced by a different value")):
        with pytest.raises(PassError) as e:
            PassManager(registry_of(make_pass("culprit", run=run))).run(from_onnx(load_model(external_file)))
        assert e.value.pass_name == "culprit" and fragment in str(e.value), str(e.value)


def test_a_bad_threshold_setting_is_one_line(external_file, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, **{EXTERNAL_DATA_ENV: "lots"})
    r = subprocess.run([sys.executable, "-m", "graph_convert.cli", "convert", str(external_file), "-o", str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"graph-convert: error: ${EXTERNAL_DATA_ENV}='lots': expected a number of bytes"]
    assert not (tmp_path / "out").exists()


def square_net() -> onnx.ModelProto:
    """Weights whose converted layout a splat cannot show: a square MatMul (FULLY_CONNECTED stores
    it transposed), a Gemm with transB (stored as given), a 3x3 Conv with as many in as out
    channels (HWIO -> OHWI; 64 x 3 x 3 x 64), a depthwise Conv."""
    rng = np.random.default_rng(3)

    def w(*shape, s=0.2):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    inits = {"k": w(64, 64, 3, 3, s=0.05), "dw": w(64, 1, 5, 5), "sq": w(1024, 128, s=0.05), "gt": w(128, 128, s=0.1),
             "c": w(1, 128), "gb": w(128)}
    nodes = [helper.make_node("Conv", ["x", "k"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "dw"], ["d"], name="depthwise", group=64, pads=[2, 2, 2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["d"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "sq"], ["m"], name="square"),
             helper.make_node("Add", ["m", "c"], ["p"], name="plus_const"),
             helper.make_node("Relu", ["p"], ["q"], name="relu2"),
             helper.make_node("Gemm", ["q", "gt", "gb"], ["y"], name="gemm_transb", transB=1)]
    model = _model("square_net", nodes, inits, ("x", TensorProto.FLOAT, [1, 64, 8, 8]), ("y", TensorProto.FLOAT, [1, 128]))
    return model


def _tflite_contents(path):
    """(op codes with their tensors' shapes and data, in order) of a .tflite: everything but names."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    raw = open(path, "rb").read()
    data = [raw[b.offset:b.offset + b.size] if b.offset > 1 else (bytes(b.data) if b.data is not None else b"")
            for b in model.buffers]
    sg = model.subgraphs[0]
    tensor = lambda i: None if i < 0 else (tuple(sg.tensors[i].shape), sg.tensors[i].type, data[sg.tensors[i].buffer])  # noqa: E731
    return [(model.operatorCodes[o.opcodeIndex].builtinCode, [tensor(i) for i in o.inputs], [tensor(i) for i in o.outputs])
            for o in sg.operators]


def test_large_tflite_from_stand_ins_is_the_converters_file(tmp_path, monkeypatch):
    """The large .tflite is converted with splat stand-ins and filled from the SavedModel: its ops
    and every buffer are those TensorFlow's converter writes from the real weights (a wrong
    permutation of a square weight would show here), it is verified, and it is reproducible."""
    import graph_convert as gc
    from graph_convert.backends.tensorflow import large_tflite
    from graph_convert.backends.tensorflow.writer import convert_tflite

    plans, right = [], large_tflite.plan
    monkeypatch.setattr(large_tflite, "plan", lambda data, ph: plans.append(right(data, ph)) or plans[-1])
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    r = gc.convert(square_net(), None, tmp_path / "out").report
    # the two weights of 125 KB and more (TensorFlow layouts here) come from the converter as FILL ops, the two smaller in full
    assert [sorted(f.weight.shape for f in p.fills) for p in plans] == [[(3, 3, 64, 64), (1024, 128)]] * 2
    assert [sorted(w.shape for w, _ in p.buffers.values()) for p in plans] == [[(5, 5, 64, 1), (128, 128)]] * 2
    assert r["weights"]["tflite"].startswith("converted with stand-ins, 4 buffers filled from the SavedModel's variables"), r["weights"]
    assert "verified on LiteRT's builtin kernels" in r["weights"]["tflite"]
    assert r["verification"]["tflite_float32"]["y"]["ok"]
    assert r["tflite"]["ops"].get("FULLY_CONNECTED") == 2 and r["tflite"]["ops"].get("CONV_2D") == 1, r["tflite"]["ops"]
    convert_tflite(None, None, str(tmp_path / "direct.tflite"), large=True, saved_model=str(tmp_path / "out" / "saved_model"))
    ours, direct = _tflite_contents(tmp_path / "out" / "model_float32.tflite"), _tflite_contents(tmp_path / "direct.tflite")
    assert len(ours) == len(direct) == sum(r["tflite"]["ops"].values())
    for a, b in zip(ours, direct):
        assert a == b
    gc.convert(square_net(), None, tmp_path / "again")
    assert (tmp_path / "again" / "model_float32.tflite").read_bytes() == (tmp_path / "out" / "model_float32.tflite").read_bytes()


@pytest.mark.parametrize("where", ["buffer", "fill"])
def test_a_misplaced_stand_in_is_caught_by_the_tflite_check(where, tmp_path, monkeypatch):
    """The check that guards the stand-ins: one weight filled in the wrong layout (the shapes
    agree or the byte counts do, only the data order is wrong) fails verification against ONNX
    Runtime, and nothing is written. ``buffer``: the square 128x128 weight, which the converter
    writes out in full; ``fill``: the 1024x128 one, which it writes as a FILL (written as given
    instead of transposed)."""
    import dataclasses

    import graph_convert as gc
    from graph_convert.backends.tensorflow import large_tflite

    right = large_tflite.plan

    def misplaced(data, ph):
        p = right(data, ph)
        if where == "buffer":
            b = next(b for b, (w, _) in p.buffers.items() if w.shape == (128, 128))
            p.buffers[b] = (p.buffers[b][0], p.buffers[b][1][::-1])
        else:
            k = next(k for k, f in enumerate(p.fills) if f.weight is not None and f.weight.shape == (1024, 128))
            assert p.fills[k].perm == (1, 0)
            p.fills[k] = dataclasses.replace(p.fills[k], perm=(0, 1))
        return p

    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    monkeypatch.setattr(large_tflite, "plan", misplaced)
    with pytest.raises(gc.VerificationError, match="TFLite"):
        gc.convert(square_net(), None, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_stand_ins_folded_by_the_converter_fall_back_to_the_real_weights(tmp_path, monkeypatch):
    """TensorFlow's converter folds a constant added before a FULLY_CONNECTED into its bias, computed
    from the weight (here MatMul -> Add -> Gemm: the Add's constant goes through the Gemm's weight
    into its bias): that bias differs between the two stand-in conversions, the stand-ins are not
    used, the SavedModel is converted with its weights instead, and the run says so and verifies."""
    import graph_convert as gc

    rng = np.random.default_rng(4)
    inits = {"wm": (rng.standard_normal((512, 64)) * 0.04).astype(np.float32), "c": rng.standard_normal((1, 64)).astype(np.float32),
             "gt": (rng.standard_normal((64, 64)) * 0.1).astype(np.float32), "gb": rng.standard_normal(64).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "wm"], ["m"], name="proj"), helper.make_node("Add", ["m", "c"], ["s"], name="plus"),
             helper.make_node("Gemm", ["s", "gt", "gb"], ["y"], name="gemm", transB=1)]
    model = _model("scaled", nodes, inits, ("x", TensorProto.FLOAT, [1, 512]), ("y", TensorProto.FLOAT, [1, 64]))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    r = gc.convert(model, None, tmp_path / "out").report
    assert r["weights"]["tflite"].startswith("converted from the SavedModel with its weights (stand-ins not usable: "), r["weights"]
    assert "depend on a weight's value" in r["weights"]["tflite"], r["weights"]
    assert r["verification"]["tflite_float32"]["y"]["ok"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_scale_before_a_projection_stays_a_mul_with_stand_ins(tmp_path, monkeypatch):
    """A constant scale right before a MatMul (an RMSNorm's or a bias-free LayerNorm's weight):
    TensorFlow's converter would fold it into the FULLY_CONNECTED weights (the stand-in's buffer
    lost); the stand-in conversion tells it not to, so the scale stays a MUL and the stand-in is
    used, and the file verifies."""
    import graph_convert as gc

    rng = np.random.default_rng(4)
    inits = {"g": rng.uniform(0.5, 1.5, 512).astype(np.float32), "wm": (rng.standard_normal((512, 64)) * 0.04).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "g"], ["s"], name="scale"), helper.make_node("MatMul", ["s", "wm"], ["y"], name="proj")]
    model = _model("scaled", nodes, inits, ("x", TensorProto.FLOAT, [1, 512]), ("y", TensorProto.FLOAT, [1, 64]))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    r = gc.convert(model, None, tmp_path / "out").report
    assert r["weights"]["tflite"].startswith("converted with stand-ins, 1 buffers filled"), r["weights"]
    assert r["tflite"]["ops"] == {"MUL": 1, "FULLY_CONNECTED": 1}, r["tflite"]["ops"]
    assert r["verification"]["tflite_float32"]["y"]["ok"]


def test_a_large_model_in_one_file_is_not_held_in_memory(tmp_path, monkeypatch):
    """A large .onnx without external data: its weights are moved to a data file in the temporary
    folder while it is read and memory-mapped from there like any large model's; the run verifies,
    and neither the user's folder nor the output keeps that file."""
    import graph_convert as gc

    src = tmp_path / "src"
    src.mkdir()
    onnx.save(square_net(), src / "one.onnx")
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    r = gc.convert(str(src / "one.onnx"), None, tmp_path / "out").report
    assert r["source"]["weights_memory_mapped"] == 4 and "weights_spilled" in r["source"], r["source"]
    assert all("read by ONNX Runtime from the external data file" in s for s in r["weights"]["onnx_runtime_sessions"]), r["weights"]
    assert r["verification"]["tflite_float32"]["y"]["ok"] and r["weights"]["tflite"].startswith("converted with stand-ins")
    assert os.listdir(src) == ["one.onnx"] and sorted(os.listdir(tmp_path)) == ["out", "src"]
    assert ".export" not in os.listdir(tmp_path / "out")


def mixed_one_file_net() -> onnx.ModelProto:
    """Every kind of tensor a one-file model holds, for the streamed read: large raw_data weights
    (float32, and an int64 table behind a Gather), a small raw_data bias and a small int64 shape
    (inline), a large weight given as float_data (no raw_data: stays in the proto), a large tensor
    inside a Constant node (left where it is)."""
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((64, 128)) * 0.1).astype(np.float32)  # 32 KB raw_data: moved out
    b1 = rng.standard_normal(128).astype(np.float32)  # 512 B: inline
    w2 = (rng.standard_normal((128, 32)) * 0.1).astype(np.float32)  # 16 KB as float_data: inline
    table = rng.integers(-3, 4, (1024, 32)).astype(np.int64)  # 256 KB raw_data: moved out
    const = (rng.standard_normal((32, 32)) * 0.2).astype(np.float32)  # 4 KB in a Constant node
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel().tolist()),
             numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1, 32], np.int64), "shape"),
             numpy_helper.from_array(np.array([5], np.int64), "row")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"), helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"), helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
             helper.make_node("Constant", [], ["k"], name="const", value=numpy_helper.from_array(const, "k")),
             helper.make_node("MatMul", ["m2", "k"], ["m3"], name="fc3"),
             helper.make_node("Gather", ["table", "row"], ["g"], name="lookup", axis=0),
             helper.make_node("Cast", ["g"], ["gf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["m3", "gf"], ["s"], name="plus_row"),
             helper.make_node("Reshape", ["s", "shape"], ["y"], name="reshape")]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], inits, doc_string="one file")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.metadata_props.add(key="k", value="v")
    return model


@pytest.fixture
def one_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(mixed_one_file_net(), src / "mixed.onnx")
    return src / "mixed.onnx"


def test_a_one_file_model_is_read_by_streaming_its_weights_out(one_file, tmp_path, monkeypatch):
    """The shell read from a one-file model holds everything the file holds, field by field: the
    large raw_data weights now refer to the spill folder's data file (each 64-byte aligned, its
    bytes those of the source), everything else as it was; the user's file is not touched."""
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    before = one_file.read_bytes()
    original = onnx.load(str(one_file))
    spill = tmp_path / "spill"
    model = load_model(one_file, spill_to=str(spill))
    assert one_file.read_bytes() == before and sorted(os.listdir(spill)) == ["model.onnx", "weights.data"]
    moved = {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert moved == {"w1", "table"}
    for a, b in zip(original.graph.initializer, model.graph.initializer, strict=True):
        assert (a.name, list(a.dims), a.data_type) == (b.name, list(b.dims), b.data_type)
        if b.name not in moved:
            assert a == b, b.name  # inline as it was (the float_data one included)
            continue
        entries = {e.key: e.value for e in b.external_data}
        assert entries["location"] == str(spill / "weights.data") and int(entries["offset"]) % 64 == 0
        assert not b.HasField("raw_data") and int(entries["length"]) == len(a.raw_data)
        dtype = helper.tensor_dtype_to_np_dtype(a.data_type)
        back = np.fromfile(spill / "weights.data", dtype=dtype, count=int(np.prod(a.dims)), offset=int(entries["offset"]))
        np.testing.assert_array_equal(back.reshape(tuple(a.dims)), numpy_helper.to_array(a))
    assert model.graph.node == original.graph.node  # the Constant node's tensor left where it was
    for f in ("input", "output", "value_info", "sparse_initializer"):
        assert list(getattr(model.graph, f)) == list(getattr(original.graph, f)), f
    assert (model.graph.name, model.graph.doc_string) == (original.graph.name, original.graph.doc_string)
    assert list(model.opset_import) == list(original.opset_import) and list(model.metadata_props) == list(original.metadata_props)
    assert (model.ir_version, model.producer_name) == (original.ir_version, original.producer_name)


def test_a_mixed_one_file_model_converts_and_matches_onnx_runtime(one_file, tmp_path, monkeypatch):
    """The streamed read end to end: the model converts with its weights mapped from the spill
    folder, the rewritten ONNX, the SavedModel and the .tflite give ONNX Runtime's numbers on the
    user's file, and the spill folder is gone with the temporary folder."""
    import tensorflow as tf

    import graph_convert as gc

    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    out = tmp_path / "out"
    r = gc.convert(str(one_file), None, out).report
    assert r["source"]["weights_memory_mapped"] == 2 and "weights_spilled" in r["source"], r["source"]
    assert all(f["ok"] for k in ("rewritten_onnx", "tensorflow", "tflite_float32") for f in r["verification"][k].values()), r["verification"]
    x = np.random.default_rng(8).standard_normal((1, 64)).astype(np.float32)
    want = _source_outputs(one_file, x)
    got = ort.InferenceSession(str(out / "model.rewritten.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    interp = tf.lite.Interpreter(model_path=str(out / "model_float32.tflite"))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    np.testing.assert_allclose(interp.get_tensor(interp.get_output_details()[0]["index"]), want, rtol=1e-4, atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["out", "src"] and os.listdir(one_file.parent) == ["mixed.onnx"]
    assert ".export" not in os.listdir(out)


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


def _cut_inside_a_weight(model: onnx.ModelProto) -> bytes:
    """The model with its first initializer cut in the middle of its raw_data, the lengths of the
    initializer and of the graph made to fit: every field well-formed up to the raw_data, whose
    length runs past its tensor."""
    first = model.graph.initializer[0]
    tensor = first.SerializeToString()
    tensor = tensor[:tensor.index(first.raw_data) + 5000]  # still long enough to be read field by field
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.initializer[0]
    graph_bytes = graph.SerializeToString() + b"\x2a" + _varint(len(tensor)) + tensor  # field 5 (initializer)
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    rest.ClearField("graph")
    return rest.SerializeToString() + b"\x3a" + _varint(len(graph_bytes)) + graph_bytes  # field 7 (graph)


@pytest.mark.parametrize("damage", ["cut inside a weight", "cut inside the graph's header", "initializer past its graph"])
def test_a_damaged_one_file_model_is_one_line(damage, tmp_path):
    """A one-file model cut or corrupted where the streamed read meets it: exit 2, one line naming
    the file as not a valid ONNX model, no traceback, nothing left behind (no output, no temporary
    folder, no spilled weights)."""
    model = mixed_one_file_net()
    data = model.SerializeToString()
    src = tmp_path / "src"
    src.mkdir()
    path = src / "bad.onnx"
    threshold, said = FORCED, "the graph at byte"
    if damage == "cut inside a weight":
        path.write_bytes(data[:data.index(model.graph.initializer[0].raw_data) + 1000])
    elif damage == "cut inside the graph's header":
        path.write_bytes(data[:data.index(b"fc1") + 2])  # inside the first node
        threshold = "1"  # so small a file is read by streaming too
    else:
        path.write_bytes(_cut_inside_a_weight(model))
        said = "a tensor's raw_data at byte"
    env = dict(os.environ, PYTHONPATH=ROOT, **{EXTERNAL_DATA_ENV: threshold})
    r = subprocess.run([sys.executable, "-m", "graph_convert.cli", "convert", str(path), "-o", str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"graph-convert: error: {path}: not a valid ONNX model (truncated or corrupt: {said}"), lines
    assert "past the end of" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["src"] and os.listdir(src) == ["bad.onnx"]


@pytest.mark.parametrize("tail, said", [(b"\xff", "not terminated|cut off"), (b"\x0f", "wire type 7"), (b"\x3a\x80", "cut off")])
def test_bad_wire_format_after_the_graph_is_caught_by_the_streamed_read(tail, said, one_file, tmp_path, monkeypatch):
    """An unterminated varint, a bad wire type, a length cut off at the end of a one-file model: the
    clean error, and the spill folder (with the weights written before it) removed."""
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    path = tmp_path / "tail.onnx"
    path.write_bytes(one_file.read_bytes() + tail)
    with pytest.raises(ConvertError, match=rf"^{path}: not a valid ONNX model \(truncated or corrupt: .*({said})"):
        load_model(path, spill_to=str(tmp_path / "spill"))
    assert not (tmp_path / "spill").exists()


def test_a_large_file_with_external_data_of_its_own_is_read_as_before(external_file, tmp_path, monkeypatch):
    """A file over the threshold that already has external data: nothing is spilled, its weights
    stay in its own data file."""
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "1")
    model = load_model(external_file, spill_to=str(tmp_path / "spill"))
    kept = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert {t.name for t in kept} == {"w", "fc", "head"} and not (tmp_path / "spill").exists()
    assert all(e.value == str(external_file.parent / "m.onnx.data") for t in kept for e in t.external_data if e.key == "location")


MEASURE = """
import sys
from graph_convert.ir.onnx_io import load_model
def kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) counts from here: the imports' peak is not the load's
before = kb("VmRSS")
model = load_model(sys.argv[1], spill_to=sys.argv[2])
print(kb("VmHWM") - before)
"""


def test_a_one_file_model_is_read_without_its_weights_in_memory(tmp_path):
    """The peak memory of reading a 48 MB one-file model (in a process of its own): a few MB, not
    the file's pages nor a parsed copy of its weights (each would be 48 MB: the whole file parsed
    took 96 MB more)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure one step's peak memory")
    weights = [np.full((2048, 2048), i, np.float32) for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"], name=f"fc{i}") for i in range(3)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                              [helper.make_tensor_value_info("h3", TensorProto.FLOAT, [1, 2048])],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "mlp.onnx")
    del weights, graph
    env = dict(os.environ, PYTHONPATH=ROOT, **{EXTERNAL_DATA_ENV: str(16 << 20)})
    r = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "mlp.onnx"), str(tmp_path / "spill")],
                       env=env, capture_output=True, text=True, timeout=600, check=True)
    grown_mb = int(r.stdout.strip()) / 1024
    assert grown_mb < 24, f"reading the model took {grown_mb:.0f} MB more"
    assert os.path.getsize(tmp_path / "spill" / "weights.data") >= 3 * 2048 * 2048 * 4


def test_a_full_disk_is_said_as_such(tmp_path, monkeypatch):
    """A large model's files can fill a disk: one line saying so (not an internal error), nothing left."""
    import errno

    import dataclasses

    import graph_convert as gc
    from graph_convert import backends
    from graph_convert.backends.tensorflow import backend as tf_backend

    def full(c):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    stages = tuple(dataclasses.replace(s, run=full) if s.key == "saved_model" else s for s in tf_backend.BACKEND.stages)
    before = backends.register("graph-convert", dataclasses.replace(tf_backend.BACKEND, stages=stages))
    try:
        with pytest.raises(gc.ConvertError, match=r"^write SavedModel: no space left on the device \(No space left on device\)"):
            gc.convert(conv_mlp(), None, tmp_path / "out", tflite=False)
    finally:
        backends.register("graph-convert", before)
    assert os.listdir(tmp_path) == []



def layer_norm_projections(exporter: str, path) -> str:
    """A transformer block's LayerNorm -> projections, 1024 wide (so that its scale, shift and
    biases are as large as the weights that get stand-ins): LayerNorm -> two Linears (as Q and K)
    -> Linear back to 1024 + residual -> LayerNorm without shift -> Linear; every scale, shift and
    bias random."""
    import contextlib
    import io
    import warnings

    import torch

    torch.manual_seed(5)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(1024), torch.nn.LayerNorm(1024, bias=False)
            self.q, self.k = torch.nn.Linear(1024, 64), torch.nn.Linear(1024, 64)
            self.up, self.head = torch.nn.Linear(128, 1024), torch.nn.Linear(1024, 16)
            for ln in (self.ln1, self.ln2):
                torch.nn.init.uniform_(ln.weight, 0.5, 1.5)
            torch.nn.init.normal_(self.ln1.bias)

        def forward(self, x):
            h = self.ln1(x)
            x = x + self.up(torch.cat([self.q(h), self.k(h)], -1))
            return self.head(self.ln2(x))

    kw = {"dynamo": False, "opset_version": 17} if exporter == "legacy" else {"dynamo": True}
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().eval(), (torch.randn(1, 4, 1024),), str(path), **kw)
    assert sum(n.op_type == "LayerNormalization" for n in onnx.load(str(path)).graph.node) == 2
    return str(path)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_layer_norm_before_projections_converts_with_stand_ins(exporter, tmp_path, monkeypatch):
    """ViT-L's pattern, LayerNorm -> projections: the four weight matrices get stand-ins and the
    file verifies. What it takes: the scales, shifts and biases (vectors) stay real in the stand-in
    trace (a splat there is a scalar to TensorFlow's converter, which folds it into the projections
    after it); the shift is added at full rank (a 1-D one would be folded into the projections'
    biases, computed from the stand-in weights); the converter is told not to fold a scale into the
    FULLY_CONNECTED weights (the LayerNorm without shift)."""
    import graph_convert as gc

    src = tmp_path / "src"
    src.mkdir()
    path = layer_norm_projections(exporter, src / "m.onnx")
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    r = gc.convert(path, None, tmp_path / "out").report
    assert r["weights"]["tflite"].startswith("converted with stand-ins, 4 buffers filled from the SavedModel's variables"), r["weights"]
    assert "verified on LiteRT's builtin kernels" in r["weights"]["tflite"]
    assert all(f["ok"] for f in r["verification"]["tflite_float32"].values()), r["verification"]["tflite_float32"]
    assert r["tflite"]["ops"].get("FULLY_CONNECTED") == 4, r["tflite"]["ops"]


def test_a_large_splat_of_the_models_own_is_written_as_a_constant(tmp_path):
    """A large constant holding one value that is no weight's stand-in (here a ``tf.fill`` of a
    constant shape): the stand-in conversion has the converter write it as a FILL op, and the file
    written has it as a constant buffer again (no FILL), computing what TensorFlow computes."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from graph_convert.backends.tensorflow import large_tflite as L
    from graph_convert.backends.tensorflow.writer import tflite_flatbuffer

    rng = np.random.default_rng(2)
    w = (rng.standard_normal((256, 256)) * 0.1).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([2, 256], tf.float32)])
    def f(x):
        return tf.matmul(x, w) + tf.matmul(tf.nn.relu(x), tf.fill([256, 256], 0.375))

    data = tflite_flatbuffer(f.get_concrete_function(), None, large=True, fuse_mul_and_fc=False, unfold_splats=True)
    p = L.plan(data, L.Placeholders())
    assert [(f.shape, f.value, f.weight) for f in p.fills] == [((256, 256), 0.375, None)], p.fills
    path = str(tmp_path / "m.tflite")
    assert L.write(data, path, p) == 0
    it = Interpreter(model_path=path)
    ops = [d["op_name"] for d in it._get_ops_details()]
    assert "FILL" not in ops and ops.count("FULLY_CONNECTED") == 2, ops
    it.allocate_tensors()
    x = rng.standard_normal((2, 256)).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    got, want = it.get_tensor(it.get_output_details()[0]["index"]), f(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), np.abs(got - want).max()


def test_infinities_are_written_as_the_converter_writes_them(tmp_path):
    """TensorFlow's converter writes a constant's +-inf as the largest finite float, in a pass that
    reads every element of every constant (stand-ins too: most of a large model's conversion
    time), which the stand-in conversion skips; the file written does the same to every float
    buffer. (The emitters build a model's own infinities at run time, see
    ``EmitContext.exact_constant``: this is a function traced by hand.) The file is the one the
    converter writes from the real weight, with its default passes."""
    import tensorflow as tf

    from graph_convert.backends.tensorflow import large_tflite as L
    from graph_convert.backends.tensorflow.writer import tflite_flatbuffer

    rng = np.random.default_rng(6)
    w = (rng.standard_normal((256, 256)) * 0.05).astype(np.float32)  # 256 KB: the converter writes its stand-in as a FILL
    low = np.where(rng.uniform(size=(4, 256)) < 0.3, -np.inf, -0.05).astype(np.float32)
    high = np.where(rng.uniform(size=256) < 0.5, np.inf, 0.05).astype(np.float32)

    def traced(weight):
        @tf.function(input_signature=[tf.TensorSpec([4, 256], tf.float32)])
        def f(x):
            return tf.minimum(tf.maximum(tf.matmul(x, weight()), low), high)
        return f.get_concrete_function()

    ph = L.Placeholders()
    data = tflite_flatbuffer(traced(lambda: ph.make(0, w)), None, large=True, fuse_mul_and_fc=False, unfold_splats=True,
                             inf_to_max=False)
    p = L.plan(data, ph)
    assert [f.weight.shape for f in p.fills] == [(256, 256)]
    assert L.write(data, str(tmp_path / "ours.tflite"), p, lambda i: w) == 1
    with open(tmp_path / "direct.tflite", "wb") as f:
        f.write(tflite_flatbuffer(traced(lambda: tf.constant(w)), None, large=True))
    ours, direct = _tflite_contents(tmp_path / "ours.tflite"), _tflite_contents(tmp_path / "direct.tflite")
    assert ours == direct
    consts = {t[2] for _, ins, _ in ours for t in ins if t is not None and t[1] == 0 and t[2]}
    big = np.finfo(np.float32).max
    assert np.where(low == -np.inf, -big, low).tobytes() in consts and np.where(high == np.inf, big, high).tobytes() in consts


def test_volume_convolutions_convert_with_stand_ins(tmp_path, monkeypatch):
    """Conv3D and its transpose keep TensorFlow's filter layout in TFLite (DHWIO; DHW, out, in):
    both weights get stand-ins, and the file verifies (a wrong layout would not)."""
    import graph_convert as gc

    rng = np.random.default_rng(8)
    inits = {"k": (rng.standard_normal((16, 8, 3, 3, 3)) * 0.1).astype(np.float32),
             "kb": rng.standard_normal(16).astype(np.float32),
             "t": (rng.standard_normal((16, 12, 2, 2, 2)) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv3d", pads=[1] * 6),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "t"], ["y"], name="up3d", strides=[2, 2, 2])]
    model = _model("volume", nodes, inits, ("x", TensorProto.FLOAT, [1, 8, 4, 6, 6]), ("y", TensorProto.FLOAT, [1, 12, 8, 12, 12]))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    r = gc.convert(model, None, tmp_path / "out").report
    assert r["weights"]["tflite"].startswith("converted with stand-ins, 2 buffers filled"), r["weights"]
    assert r["tflite"]["ops"].get("CONV_3D") == 1 and r["tflite"]["ops"].get("CONV_3D_TRANSPOSE") == 1, r["tflite"]["ops"]
    assert r["verification"]["tflite_float32"]["y"]["ok"], r["verification"]["tflite_float32"]


_RESOLVE_AND_MEASURE = """
import gc, sys, tempfile
from graph_convert.conversion.source import resolve_source
resolve_source(sys.argv[1] + ":make", None, [(None, (1, 4096))], tempfile.mkdtemp(dir=sys.argv[2]), free_built=sys.argv[3] == "1")
gc.collect()
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon")))
"""


def test_a_model_built_from_a_spec_is_freed_once_exported(tmp_path):
    """torch's exporter keeps a reference to the last model it exported (its rewrite rules'
    matcher state), so a model built from a spec would stay in memory through the whole run: with
    ``free_source_model`` (the command line sets it) its weights are freed once exported."""
    factory = tmp_path / "wide.py"
    factory.write_text("import torch\n\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(4096, 4096), "
                       "torch.nn.ReLU(), torch.nn.Linear(4096, 4096)).eval()\n")  # 134 MB of weights
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rss_kb = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _RESOLVE_AND_MEASURE, str(factory), str(tmp_path), flag], capture_output=True,
                             text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        rss_kb[flag] = int(out.stdout.split()[-1])
    assert rss_kb["0"] - rss_kb["1"] > 100_000, rss_kb  # KB: most of the 134 MB


def test_a_weight_the_converter_folds_away_is_converted_as_it_is(tmp_path, monkeypatch):
    """BERT's embeddings: a position table and a token-type row added to the gathered word
    embeddings. TensorFlow's converter adds the two constants together first, so the position
    table's stand-in has no buffer of its own (the sum is computed from it); the conversion is
    tried again with that one weight converted as it is, the others stay stand-ins, and the file
    verifies."""
    import graph_convert as gc

    rng = np.random.default_rng(9)
    inits = {"table": (rng.standard_normal((1000, 256)) * 0.5).astype(np.float32),
             "pos": (rng.standard_normal((1, 16, 256)) * 0.5).astype(np.float32),
             "token_type": rng.standard_normal(256).astype(np.float32),
             "gamma": rng.uniform(0.5, 1.5, 256).astype(np.float32), "beta": rng.standard_normal(256).astype(np.float32),
             "w": (rng.standard_normal((256, 128)) * 0.06).astype(np.float32)}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Add", ["e", "pos"], ["q"], name="positions"),
             helper.make_node("Add", ["q", "token_type"], ["p"], name="token_type"),
             helper.make_node("LayerNormalization", ["p", "gamma", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["y"], name="proj")]
    model = _model("embeddings", nodes, inits, ("ids", TensorProto.INT64, [1, 16]), ("y", TensorProto.FLOAT, [1, 16, 128]))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, FORCED)
    r = gc.convert(model, None, tmp_path / "out",
                   inputs={"ids": rng.integers(0, 1000, (1, 16))}).report
    assert r["weights"]["tflite"].startswith("converted with stand-ins, 2 buffers filled from the SavedModel's variables, "
                                             "1 weight(s) that the converter folds converted as they are (0.02 MB)"), r["weights"]
    assert r["verification"]["tflite_float32"]["y"]["ok"], r["verification"]["tflite_float32"]
