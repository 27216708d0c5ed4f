"""The back-end seam: a back end is a folder and one registration line; the conversion runs the
shared stages, then the back end's, and judges every artifact the back end checks."""
from __future__ import annotations

import json
import os

import pytest

import graph_convert as gc
from graph_convert import backends
from graph_convert.backends.base import Backend
from tests.helpers import Builder


def net(act: str = "Relu"):
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    b.output(b.op(act, [y]))
    return b.model()


@pytest.fixture
def demo_backend():
    before = backends.register("onnx-file", "tests.backend_demo:BACKEND")  # the one registration line
    yield
    backends.register("onnx-file", before)


def test_the_registered_back_ends_are_backends():
    for name in backends.BACKENDS:
        b = backends.get(name)
        assert isinstance(b, Backend) and b.name == name and b.stages
    assert backends.names()[-1] == backends.AUTO and backends.names()[0] == backends.DEFAULT


def test_a_new_back_end_is_its_folder_and_one_registration_line(demo_backend, tmp_path):
    r = gc.convert(net(), None, tmp_path / "out", backend="onnx-file")
    files = sorted(os.listdir(tmp_path / "out"))
    assert "model.onnx" in files and "model.rewritten.onnx" in files and "saved_model" not in files
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["backend"] == {"used": "onnx-file", "why": "--backend onnx-file"}
    (figs,) = rep["verification"]["onnx_file"].values()
    assert figs["ok"] is True and figs["cosine"] > 0.9999 and figs["max_abs"] <= 1e-5 * figs["scale"]
    assert set(rep["timings_seconds"]) >= {"load", "check", "rewrite", "onnx_file", "verify_onnx_file", "report"}
    assert r.paths["onnx"].endswith("model.onnx")


def test_a_back_end_whose_artifact_is_wrong_fails_verification(demo_backend, tmp_path, monkeypatch):
    """The seam's check is the conversion's: a back end that writes a wrong file cannot exit 0."""
    import dataclasses

    from tests import backend_demo

    def wrong(c):
        backend_demo.write(c)
        import onnx

        m = onnx.load(c.paths["onnx"])
        relu = next(n for n in m.graph.node if n.op_type == "Relu")
        relu.op_type = "Sigmoid"  # a different function of the same shape
        onnx.save(m, c.paths["onnx"])

    stages = tuple(dataclasses.replace(s, run=wrong) if s.key == "onnx_file" else s for s in backend_demo.BACKEND.stages)
    backends.register("onnx-file", dataclasses.replace(backend_demo.BACKEND, stages=stages))
    with pytest.raises(gc.VerificationError, match="ONNX file"):
        gc.convert(net(), None, tmp_path / "out", backend="onnx-file")
    assert not (tmp_path / "out").exists()


def test_auto_takes_the_first_back_end_that_takes_every_op(demo_backend, tmp_path, monkeypatch):
    """``auto`` walks the table in order: with the test back end first, a model it refuses goes
    to the next one, and the report says why."""
    monkeypatch.setattr(backends, "BACKENDS", {"onnx-file": backends.BACKENDS["onnx-file"], **backends.BACKENDS})
    rep = gc.convert(net("Relu"), None, tmp_path / "a", backend="auto").report
    assert rep["backend"]["used"] == "onnx-file" and "handles every op" in rep["backend"]["why"]
    rep = gc.convert(net("Sigmoid"), None, tmp_path / "b", backend="auto").report
    assert rep["backend"]["used"] == "graph-convert" and "Sigmoid" in rep["backend"]["why"]


def test_an_unknown_back_end_is_refused_naming_the_choices():
    with pytest.raises(gc.ConvertError, match=r"^backend 'tensorflow': expected one of graph-convert, onnx2tf, auto"):
        gc.ConvertOptions(backend="tensorflow")


def test_the_command_lines_choices_are_the_registered_back_ends(demo_backend):
    """The CLI reads --backend's choices from ConvertOptions, which reads the table: a registered
    back end is a choice with no other edit."""
    assert gc.ConvertOptions.choices("backend") == (*backends.BACKENDS, "auto")
    assert "onnx-file" in gc.ConvertOptions.choices("backend")
    gc.ConvertOptions(backend="onnx-file")  # accepted
