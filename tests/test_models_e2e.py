"""End to end on the bundled models: PyTorch -> verified SavedModel + TFLite with 0 TRANSPOSE."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch

import graph_convert_models as models
from graph_convert import convert
from graph_convert.checks.equivalence import ort_session

ATOL = 1e-4


@pytest.fixture(scope="module", params=models.MODELS)
def converted(request, tmp_path_factory):
    module, shape = models.load(request.param)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    out = tmp_path_factory.mktemp(request.param) / "out"
    result = convert(module, (x,), out)
    return request.param, module, x, result


def test_artifacts_written(converted):
    _, _, _, result = converted
    names = set(os.listdir(result.output_dir))
    assert {"saved_model", "model_float32.tflite", "model.rewritten.onnx", "report.json"} <= names
    assert not [n for n in os.listdir(os.path.dirname(result.output_dir)) if ".tmp-" in n]


def test_saved_model_keeps_weights_in_variables(converted):
    """Weights go to saved_model/variables/, not into the graph (protobuf caps a graph at 2 GB):
    every float weight of 1024+ values of the source is in the checkpoint, none twice."""
    import tensorflow as tf

    name, module, _, result = converted
    sm = result.paths["saved_model"]
    reader = tf.train.load_checkpoint(os.path.join(sm, "variables", "variables"))
    stored = sorted(int(np.prod(s)) for k, s in reader.get_variable_to_shape_map().items() if "VARIABLE_VALUE" in k)
    big = sum(p.numel() for p in module.parameters() if p.numel() >= 1024)
    assert sum(stored) >= big > 0  # (BatchNorm folding changes weights, never their count)
    assert sum(stored) < 1.5 * sum(p.numel() for p in module.parameters())  # nothing stored twice
    assert os.path.getsize(os.path.join(sm, "saved_model.pb")) < 4 * sum(stored)


def test_zero_transposes_and_small_error(converted):
    name, _, _, result = converted
    rep = result.report
    assert rep["tflite"]["transpose_ops"] == 0, rep["tflite"]["ops"]
    assert rep["rewritten_graph"]["transposes"] == 0
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        for out, fig in rep["verification"][stage].items():
            assert fig["ok"] and fig["max_abs"] <= ATOL, (name, stage, out, fig)


def test_report_json_matches_result(converted):
    _, _, _, result = converted
    with open(result.paths["report"]) as f:
        rep = json.load(f)
    assert rep["source"]["exporter"] in ("dynamo", "legacy")
    assert rep["passes"] and all({"name", "seconds", "changed"} <= set(p) for p in rep["passes"])
    assert any(p["name"] == "to_channels_last" and p["changed"] for p in rep["passes"])
    assert rep["tflite"]["transpose_ops"] == result.transposes_left


def test_saved_model_matches_pytorch(converted):
    """Independent of our own verifier: PyTorch's output vs the SavedModel's serving_default,
    fed the NHWC input by its signature name."""
    import tensorflow as tf

    _, module, x, result = converted
    loaded = tf.saved_model.load(result.saved_model)
    fn = loaded.signatures["serving_default"]
    (in_name,) = fn.structured_input_signature[1].keys()
    outs = fn(**{in_name: tf.constant(x.numpy().transpose(0, 2, 3, 1))})
    (out,) = outs.values()
    with torch.no_grad():
        ref = module(x).numpy()
    got = out.numpy()
    if ref.ndim == 4:
        got = got.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, atol=ATOL * max(1, np.abs(ref).max()), rtol=0)


def test_tflite_matches_pytorch(converted):
    from ai_edge_litert.interpreter import Interpreter

    _, module, x, result = converted
    interp = Interpreter(model_path=result.tflite)
    runner = interp.get_signature_runner("serving_default")
    (in_name,) = runner.get_input_details().keys()
    (got,) = runner(**{in_name: x.numpy().transpose(0, 2, 3, 1)}).values()
    with torch.no_grad():
        ref = module(x).numpy()
    if ref.ndim == 4:
        got = got.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, atol=ATOL * max(1, np.abs(ref).max()), rtol=0)


def test_rewritten_onnx_is_standard(converted):
    _, module, x, result = converted
    m = onnx.load(result.rewritten_onnx)
    onnx.checker.check_model(m, full_check=True)
    sess = ort_session(m)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy().transpose(0, 2, 3, 1)})
    with torch.no_grad():
        ref = module(x).numpy()
    if ref.ndim == 4:
        got = got.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, atol=ATOL * max(1, np.abs(ref).max()), rtol=0)
