"""Dynamic batch: ``--dynamic-batch`` (or a symbolic batch dim in the ONNX source) gives a
SavedModel and a .tflite that take any batch size. The pipeline verifies them at batch 2, 3, 1
and 5 (report.json ``dynamic.checks``); here they are also run at batch 4 (a size the conversion
never saw) against PyTorch itself."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch

import graph_convert_models as models
from graph_convert import convert
from graph_convert.cli import EXIT_USAGE, main
from graph_convert.conversion.export import export
from tests.helpers import Builder


def _batch(name: str, n: int) -> tuple:
    """The model's example inputs repeated/cut to batch ``n`` (different samples per row)."""
    out = []
    for i, t in enumerate(models.example_inputs(name)):
        g = torch.Generator().manual_seed(11 + i)
        if t.dtype.is_floating_point:
            out.append(torch.randn(n, *t.shape[1:], generator=g))
        else:  # token ids / masks: rows taken from the example, cycled
            out.append(t[torch.arange(n) % t.shape[0]].clone())
    return tuple(out)


def _batch_checks(report: dict) -> list[dict]:
    """The sizes the batch was checked at, each with its verdict (every batch-role dim kept)."""
    dims = report["dynamic"]["dims"]
    batch = [n for n, d in dims.items() if d["role"] == "batch"]
    assert batch and all(dims[n]["kept"] for n in batch)
    return report["dynamic"]["checks"]


def _all_ok(checks: list[dict]) -> bool:
    return all(e["verdict"] == "ok" and all(f["ok"] for k in ("tensorflow", "tflite_float32") for f in e[k].values()) for e in checks)


def _tf_run(saved_model: str, feeds: dict) -> dict:
    import tensorflow as tf

    fn = tf.saved_model.load(saved_model).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


def _tflite_run(path: str, feeds: dict) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    return {k: np.array(v) for k, v in runner(**feeds).items()}


@pytest.mark.parametrize("name", ["channel_shuffle", "vit_tiny", "bert_tiny"])
def test_pytorch_model_runs_at_an_unseen_batch_size(name, tmp_path):
    """channel_shuffle: layout-rewritten reshapes with the batch inside; vit_tiny: a class token
    expanded over the batch (a folded constant, tiled at run time); bert_tiny: int64 ids and mask."""
    module, _ = models.load(name)
    result = convert(module, models.example_inputs(name), tmp_path / "out", dynamic_batch=True)
    checks = _batch_checks(result.report)
    assert [e["sizes"]["batch"] for e in checks] == [2, 3, 1, 5] and _all_ok(checks)
    assert all(io["shape"][0] == "batch" for io in result.report["io"]["inputs"])

    args = _batch(name, 4)
    with torch.no_grad():
        ref = module(*args)
    ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    ins, outs = result.report["io"]["inputs"], result.report["io"]["outputs"]
    feeds = {}
    for io, a in zip(ins, args):
        v = a.numpy()
        feeds[io["tf_name"]] = np.transpose(v, io["layout_perm"]) if io["layout_perm"] else v
    for got in (_tf_run(result.paths["saved_model"], feeds), _tflite_run(result.paths["tflite_float32"], feeds)):
        for io, r in zip(outs, ref):
            y = got[io["tf_name"]]
            if io["layout_perm"]:
                y = np.transpose(y, np.argsort(io["layout_perm"]))
            assert y.shape == r.shape
            np.testing.assert_allclose(y, r, atol=1e-4 * max(1.0, float(np.abs(r).max())), rtol=0)


def test_symbolic_batch_in_an_onnx_file_is_kept(tmp_path, capsys):
    module, _ = models.load("flatten_head")
    path = str(tmp_path / "m.onnx")
    export(module, models.example_inputs("flatten_head"), path, dynamic_batch=True)
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic in the file
    out = tmp_path / "out"
    assert main(["convert", path, "-o", str(out), "-q"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert _all_ok(_batch_checks(rep)) and rep["dynamic"]["dims"]["batch"]["requested"] == "symbolic dim in the source model"
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)  # NHWC at batch 4
    got = _tf_run(str(out / "saved_model"), {rep["io"]["inputs"][0]["tf_name"]: x})
    with torch.no_grad():
        ref = module(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())).numpy()
    np.testing.assert_allclose(next(iter(got.values())), ref, atol=1e-4, rtol=0)


def _fixed_inside() -> onnx.ModelProto:
    """A symbolic batch on the input, but a Reshape to the constant shape [1, 12] inside."""
    b = Builder(opset=17)
    x = b.input("x", ["N", 3, 4])
    y = b.op("Reshape", [x, b.const(np.array([1, 12], np.int64), dtype=np.int64)])
    b.output(b.op("Relu", [y]))
    return b.model()


def test_batch_fixed_inside_the_model_falls_back_to_static(tmp_path):
    result = convert(_fixed_inside(), output_dir=tmp_path / "out")
    dyn = result.report["dynamic"]
    assert dyn["dims"]["N"]["kept"] is False and "at N=2" in dyn["reason"] and "Reshape" in dyn["reason"]
    assert result.report["io"]["inputs"][0]["shape"] == [1, 3, 4]


def test_dynamic_batch_flag_on_a_fixed_batch_model_fails_clearly(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_fixed_inside(), path)
    out = tmp_path / "out"
    code = main(["convert", str(path), "-o", str(out), "--dynamic-batch"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "input 'x' dim N (axis 0)" in err and "at N=2" in err and "--input-shape x=1,3,4" in err and "Reshape" in err and "Traceback" not in err
    assert not os.path.exists(out)


def test_dynamic_batch_with_quantize_that_cannot_be_kept_is_refused(tmp_path, capsys):
    """--quantize no longer fixes the batch (quantized files keep free dims): a batch asked for
    and fixed inside the model is refused as without --quantize, nothing written."""
    path = tmp_path / "m.onnx"
    onnx.save(_fixed_inside(), path)
    code = main(["convert", str(path), "-o", str(tmp_path / "out"), "--dynamic-batch", "--quantize", "fp16"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "cannot be kept dynamic" in err and "Reshape" in err
    assert not os.path.exists(tmp_path / "out")


def test_gather_nd_over_leading_axes_with_the_batch_inside(tmp_path):
    """GatherND (as exported for non-uniform adaptive pooling) indexing the two leading axes of a
    tensor whose run-time batch sits behind them: only the indexed dims must be known (negative
    indices count from them)."""
    b = Builder(opset=17)
    x = b.input("x", ["N", 2, 4, 3])
    t = b.op("Transpose", [x], perm=[1, 2, 0, 3])  # (2, 4, N, 3)
    idx = b.const(np.array([[[1, -1], [0, 2]], [[0, 0], [1, 3]]], np.int64), dtype=np.int64)
    g = b.op("GatherND", [t, idx])  # (2, 2, N, 3)
    b.output(b.op("Transpose", [g], perm=[2, 0, 1, 3]))
    result = convert(b.model(), output_dir=tmp_path / "out")
    assert _all_ok(_batch_checks(result.report))


class _PickRow(torch.nn.Module):
    """CLIP-style pooling: per batch row, the position of the largest token id (``arange(batch)``
    and the argmax index the rows; the exporter folds the arange into a batch-sized constant)."""

    def forward(self, ids, x):
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] * 2.0


def test_arange_over_the_batch_becomes_a_run_time_range(tmp_path):
    ids = torch.tensor([[3, 9, 1, 0, 2, 5], [7, 1, 2, 8, 0, 0]], dtype=torch.long)
    x = torch.randn(2, 6, 4)
    result = convert(_PickRow().eval(), (ids, x), str(tmp_path / "out"), dynamic_batch=True)
    assert _all_ok(_batch_checks(result.report))
