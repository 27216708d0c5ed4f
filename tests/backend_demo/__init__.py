"""A back end of the tests' own, to show what adding one takes: this folder and one registration
line (``graph_convert.backends.register("onnx-file", "tests.backend_demo:BACKEND")``).

It writes the rewritten graph as ``model.onnx`` with its layouts lowered (an ONNX file anyone can
run), runs that file in ONNX Runtime on the conversion's draws as its artifact check, and puts its
op count in the report."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from graph_convert.backends.base import Backend, Stage
from graph_convert.checks.equivalence import to_rewritten_layout, to_source_layout
from graph_convert.conversion.report import figures_dict
from graph_convert.ir import to_onnx


def write(c) -> None:
    path = os.path.join(c.work, "model.onnx")
    onnx.save(to_onnx(c.graph), path)
    c.paths["onnx"] = path


def verify(c) -> None:
    g = c.graph
    session = ort.InferenceSession(c.paths["onnx"], providers=["CPUExecutionProvider"])

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rw = to_rewritten_layout(feeds, g.io_perms)
        out = session.run(list(g.outputs), {x: rw[x] for x in g.inputs})
        return to_source_layout(dict(zip(g.outputs, out)), g.io_perms)

    c.check("onnx_file", "ONNX file", run)


def report(c) -> None:
    c.report.update({"source": c.source_info, "onnx_file": {"path": "model.onnx", "nodes": len(c.graph)},
                     "verification": {k: figures_dict(f) for k, f in c.figures.items()}})


BACKEND = Backend(
    name="onnx-file",
    summary="the rewritten graph as a plain ONNX file (a test back end)",
    unsupported=lambda c, graph: [(n.op_type, n.name) for n in graph.nodes if n.op_type == "Sigmoid"],  # to test --backend auto
    stages=(Stage("write model.onnx", "onnx_file", write), Stage("verify model.onnx", "verify_onnx_file", verify),
            Stage("report", "report", report)),
)
