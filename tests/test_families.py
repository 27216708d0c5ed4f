"""Every CNN layout family in models/ converts, verifies in TF and TFLite, and leaves the minimum
number of TRANSPOSE ops in the float32 .tflite (zero unless the model itself moves data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graph_convert_models as models
from graph_convert import convert

# Minimum TRANSPOSE count per model, with the argument for every non-zero entry.
EXPECTED_TRANSPOSES = {
    "se_block": 0, "dense_block": 0, "inception": 0, "convnext_block": 0, "seg_head": 0,
    "flatten_head": 0, "pixel_shuffle": 0, "unet": 0, "conv1d_audio": 0, "conv3d_net": 0,
    "channel_shuffle": 3,
}


def test_channel_shuffle_minimum_is_one_move_per_shuffle(tmp_path):
    """Why channel_shuffle keeps 3: it has 3 channel shuffles. A shuffle sends channel
    g*(C/g)+j to j*g+g, a non-identity permutation of the channel axis for g, C/g > 1, so in any
    memory layout the elements must move. The move cannot be folded into weights: each shuffled
    tensor feeds a Split whose first half passes weight-free into the next Concat (and the last
    into a mean). So at least one data move per shuffle; we emit exactly one (a 5-D TRANSPOSE
    swapping the two channel factors, batch and spatial axes untouched). The exported source
    model has exactly one Transpose per shuffle, which is what we compare against."""
    import onnx

    from graph_convert.conversion.export import export

    module, shape = models.load("channel_shuffle")
    path = str(tmp_path / "shuffle.onnx")
    export(module, (torch.randn(*shape),), path)
    source = onnx.load(path)
    assert sum(n.op_type == "Transpose" for n in source.graph.node) == EXPECTED_TRANSPOSES["channel_shuffle"]


@pytest.fixture(scope="module", params=models.FAMILIES)
def family(request, tmp_path_factory):
    module, shape = models.load(request.param)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    result = convert(module, (x,), tmp_path_factory.mktemp(request.param) / "out")
    return request.param, module, x, result


def test_minimum_transposes(family):
    name, _, _, result = family
    rep = result.report
    assert rep["rewritten_graph"]["transposes"] == EXPECTED_TRANSPOSES[name], rep["rewritten_graph"]["transposes_left"]
    # in the .tflite a channel shuffle's transpose is two row-moving TRANSPOSE ops: XNNPACK moves
    # the single [H*W, g, C/g] -> [H*W, C/g, g] one element at a time, 2-3x slower (test_ops)
    tflite_expected = 2 * EXPECTED_TRANSPOSES[name] if name == "channel_shuffle" else EXPECTED_TRANSPOSES[name]
    assert rep["tflite"]["transpose_ops"] == tflite_expected, (rep["tflite"]["ops"], rep["rewritten_graph"]["transposes_left"])
    # every Transpose left is reported with the node that forced it
    assert len(rep["rewritten_graph"]["transposes_left"]) == rep["rewritten_graph"]["transposes"]
    for t in rep["rewritten_graph"]["transposes_left"]:
        assert t["input_from"] and t["read_by"]


def test_verified_in_tf_and_tflite(family):
    name, _, _, result = family
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        for out, fig in result.report["verification"][stage].items():
            assert fig["ok"] and fig["max_abs"] <= 1e-4 * max(1.0, fig["scale"]), (name, stage, out, fig)


def test_tflite_matches_pytorch(family):
    """Independent of our verifier: feed the TFLite model the channels-last input, compare with
    PyTorch itself."""
    from ai_edge_litert.interpreter import Interpreter

    name, module, x, result = family
    runner = Interpreter(model_path=result.tflite).get_signature_runner("serving_default")
    (in_name,) = runner.get_input_details().keys()
    xin = x.numpy()
    perm = result.report["io"]["inputs"][0]["layout_perm"]
    if perm:
        xin = xin.transpose(perm)
    (got,) = runner(**{in_name: xin}).values()
    operm = result.report["io"]["outputs"][0]["layout_perm"]
    if operm:
        got = got.transpose(np.argsort(operm))
    with torch.no_grad():
        ref = module(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())), rtol=0)
