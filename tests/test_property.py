"""Property: any random small conv network (ranks 3-5, strides, paddings, groups, dilations,
branches, shuffles, pooling, depth/space moves) converts, verifies against ONNX Runtime in the
rewritten ONNX, in TF and in TFLite, and never has more TRANSPOSE ops in the .tflite than the
source model itself had Transpose nodes (only explicit data permutations may remain).

CI runs a small fixed sample; ``benchmarks/property_layout.py`` runs hundreds."""
from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings

from graph_convert.conversion.pipeline import convert
from tests.netgen import build, networks


def check_network(net) -> dict:
    model = build(net)
    source_transposes = sum(1 for n in model.graph.node if n.op_type == "Transpose")
    with tempfile.TemporaryDirectory() as d:
        result = convert(model, None, os.path.join(d, "out"))
    rep = result.report
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        for name, fig in rep["verification"][stage].items():
            assert fig["ok"], (stage, name, fig)
    assert rep["tflite"]["transpose_ops"] <= source_transposes, (rep["tflite"]["ops"], rep["rewritten_graph"]["transposes_left"])
    return rep


@settings(max_examples=int(os.environ.get("GC_PROPERTY_EXAMPLES", "6")), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(networks())
def test_random_networks_convert_and_verify(net):
    check_network(net)
