"""Plugins: loaded by module name and through the entry-point group, exactly like built-ins."""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graph_convert import convert
from graph_convert.errors import ConvertError, VerificationError
from graph_convert.passes import builtin_registry
from tests.helpers import Builder, finish_model

PLUGIN_DIR = os.path.join(os.path.dirname(__file__), "plugin_demo")


@pytest.fixture(autouse=True)
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(PLUGIN_DIR)


def _swish_function() -> onnx.FunctionProto:
    return helper.make_function(
        "demo.ops", "Swish", ["X"], ["Y"],
        [helper.make_node("Sigmoid", ["X"], ["S"]), helper.make_node("Mul", ["X", "S"], ["Y"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )


def double_neg_swish_model() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", [1, 4, 8, 8])
    y = b.op("Conv", [x, b.weight([6, 4, 3, 3]), b.weight([6])], pads=[1, 1, 1, 1])
    y = b.op("Neg", [b.op("Neg", [y])])
    sw = b._name("swish")
    b.nodes.append(helper.make_node("Swish", [y], [sw], name="swish_node", domain="demo.ops"))
    y = b.op("Conv", [sw, b.weight([3, 6, 1, 1])])
    b.output(y)
    g = helper.make_graph(b.nodes, "plugin", b.inputs, [], b.inits)
    g.output.extend(b.outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("demo.ops", 1)], functions=[_swish_function()])
    m.ir_version = 8
    return finish_model(m)


def _check_plugin_ran(result):
    recs = [p for p in result.report["passes"] if p["name"] == "fold_double_neg"]
    assert recs and recs[0]["changed"] and "gc_demo_plugin" in recs[0]["source"]
    assert result.report["tflite"]["transpose_ops"] == 0
    assert result.report["verification"]["tflite_float32"]
    assert all(f["ok"] for f in result.report["verification"]["tflite_float32"].values())
    ops = result.report["tflite"]["ops"]
    assert "NEG" not in ops and "LOGISTIC" in ops


def test_plugin_by_module_name(tmp_path):
    result = convert(double_neg_swish_model(), None, tmp_path / "out", plugins=["gc_demo_plugin"])
    _check_plugin_ran(result)


def test_without_plugin_custom_op_is_reported_up_front(tmp_path):
    with pytest.raises(ConvertError, match=r"demo\.ops::Swish \(node 'swish_node'\)"):
        convert(double_neg_swish_model(), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plugin_through_entry_point(tmp_path, monkeypatch):
    """An installed distribution advertising the plugin in the graph_convert.plugins group."""
    site = tmp_path / "site"
    dist = site / "gc_demo_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gc-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[graph_convert.plugins]\ndemo = gc_demo_plugin:register\n")
    monkeypatch.syspath_prepend(str(site))
    reg = builtin_registry()
    assert "fold_double_neg" in reg.passes and "entry point demo" in reg.passes["fold_double_neg"][1]
    assert "to_channels_last" in reg.passes  # built-ins came through the same mechanism
    result = convert(double_neg_swish_model(), None, tmp_path / "out")
    _check_plugin_ran(result)


def test_breaking_plugin_is_named_and_nothing_written(tmp_path):
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.op("Relu", [b.op("Conv", [x, b.weight([4, 3, 3, 3])])]))
    with pytest.raises(VerificationError, match="break_relu") as e:
        convert(b.model(), None, tmp_path / "out", plugins=["bad_plugin"])
    assert e.value.culprit == "break_relu"
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("verify", ["end", "phase", "each"])
def test_every_verify_mode_names_the_breaking_pass(verify, tmp_path):
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.op("Relu", [b.op("Conv", [x, b.weight([4, 3, 3, 3])])]))
    with pytest.raises(VerificationError, match="break_relu") as e:
        convert(b.model(), None, tmp_path / "out", plugins=["bad_plugin"], verify=verify)
    assert e.value.culprit == "break_relu"
    assert not (tmp_path / "out").exists()


def test_unknown_plugin_module(tmp_path):
    with pytest.raises(ConvertError, match="no_such_plugin_xyz"):
        builtin_registry(["no_such_plugin_xyz"])
