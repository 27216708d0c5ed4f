"""Transformers (ViT, Swin-like windowed attention with roll and relative-position gathers, a
BERT-like encoder with int64 ids and an attention mask) convert and verify in TF and TFLite, and
the .tflite holds no TRANSPOSE beyond the Transpose nodes the exported model itself contains."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import graph_convert_models as models
from graph_convert import convert
from graph_convert.conversion.export import export


@pytest.fixture(scope="module", params=models.TRANSFORMERS)
def converted(request, tmp_path_factory):
    name = request.param
    module, _ = models.load(name)
    ex = models.example_inputs(name)
    d = tmp_path_factory.mktemp(name)
    src = str(d / "source.onnx")
    export(module, ex, src)
    source = onnx.load(src)
    feeds = {i.name: t.numpy() for i, t in zip([i for i in source.graph.input if i.name not in {x.name for x in source.graph.initializer}], ex)}
    result = convert(src, None, d / "out", inputs=feeds)
    return name, module, ex, source, result


def test_verified(converted):
    name, _, _, _, result = converted
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        for out, fig in result.report["verification"][stage].items():
            assert fig["ok"] and fig["max_abs"] <= 1e-4 * max(1.0, fig["scale"]), (name, stage, out, fig)


def test_no_transposes_beyond_the_models_own(converted):
    name, _, _, source, result = converted
    own = sum(n.op_type == "Transpose" for n in source.graph.node)
    assert result.report["tflite"]["transpose_ops"] <= own, (name, result.report["tflite"]["ops"])


def test_tflite_matches_pytorch(converted):
    import torch
    from ai_edge_litert.interpreter import Interpreter

    name, module, ex, source, result = converted
    runner = Interpreter(model_path=result.tflite).get_signature_runner("serving_default")
    io = result.report["io"]
    feeds = {i["tf_name"]: t.numpy().transpose(i["layout_perm"]) if i["layout_perm"] else t.numpy() for i, t in zip(io["inputs"], ex)}
    got = runner(**feeds)
    with torch.no_grad():
        ref = module(*ex)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for o, r in zip(io["outputs"], ref):
        r = r.numpy()
        g = got[o["tf_name"]]
        if o["layout_perm"]:
            g = g.transpose(np.argsort(o["layout_perm"]))
        np.testing.assert_allclose(g, r, atol=1e-4 * max(1.0, float(np.abs(r).max())), rtol=0)
