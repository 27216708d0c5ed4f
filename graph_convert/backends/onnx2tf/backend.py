"""The onnx2tf back end: onnx2tf makes the SavedModel and the .tflite from the source ONNX (the
passes do not run); both are judged against ONNX Runtime on the same draws as our emitter's
files, or nothing is written."""
from __future__ import annotations

from graph_convert.backends.base import Backend, Stage
from graph_convert.backends.onnx2tf import runner as O
from graph_convert.checks.equivalence import Verifier, make_draws
from graph_convert.conversion.report import figures_dict
from graph_convert.version import __version__


def prepare(c) -> None:
    c.source_info["onnx2tf_python"] = O.find_interpreter(c.options.onnx2tf_python)


def convert(c) -> None:
    draws = make_draws(c.source_graph, c.options.seed, c.shape_overrides, c.user_feeds)
    verifier = Verifier(c.model, draws, c.options.atol, optional=tuple(range(1, len(draws))) if c.user_feeds is not None else ())
    shapes = {n: v.shape for n, v in verifier.draws[0].feeds.items()}
    paths, figures, io = O.convert_and_gate(c.source_info["onnx2tf_python"], c.model, c.source_graph, verifier, shapes, c.work,
                                            c.options.seed, c.say)
    c.paths.update(paths)
    c.figures.update(figures)
    c.report = {"graph_convert_version": __version__, "source": c.source_info, "io": io,
                "verification": {"atol": c.options.atol, "draws": verifier.draw_labels, "notes": verifier.notes,
                                 **{k: figures_dict(f) for k, f in figures.items()}},
                "dynamic": c.dyn_info or {"dims": {}, "note": "every input shape is static in the source"}}


BACKEND = Backend(
    name="onnx2tf",
    summary="onnx2tf makes the files from the source ONNX; they are verified exactly as ours",
    from_rewritten=False,
    prepare=prepare,
    stages=(Stage("convert with onnx2tf", "onnx2tf", convert),),
)
