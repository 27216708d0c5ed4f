"""The onnx2tf back end: onnx2tf makes the SavedModel and the .tflite from the source ONNX (the
passes do not run); both are judged against ONNX Runtime on the same draws as our emitter's
files, or nothing is written.

The source's own symbolic batch (the only free dim this back end takes) is handed to onnx2tf as it
is; onnx2tf writes it as ``-1``, and both files are then judged at every batch size of
:func:`graph_convert.conversion.dims.assignments` (report.json ``dynamic.checks``, as our back end's).
A file that comes back with a static batch is judged at that batch alone, and report.json says so
(``dynamic.reason``)."""
from __future__ import annotations

from typing import Any

import graph_convert.conversion.dims as DM
from graph_convert.backends.base import Backend, Stage
from graph_convert.backends.onnx2tf import runner as O
from graph_convert.checks.equivalence import Draw, Verifier, make_draws
from graph_convert.conversion.report import figures_dict
from graph_convert.errors import ConvertError
from graph_convert.ir import from_onnx
from graph_convert.version import __version__

STAGES = (("tensorflow", "SavedModel", "saved_model"), ("tflite_float32", "TFLite float32", "tflite_float32"))


def prepare(c) -> None:
    c.source_info["onnx2tf_python"] = O.find_interpreter(c.options.onnx2tf_python)


def convert(c) -> None:
    if c.dynamic:
        return _convert_free_batch(c)
    draws = make_draws(c.source_graph, c.options.seed, c.shape_overrides, c.user_feeds)
    verifier = Verifier(c.model, draws, c.options.atol, optional=tuple(range(1, len(draws))) if c.user_feeds is not None else ())
    shapes = {n: v.shape for n, v in verifier.draws[0].feeds.items()}
    paths, figures, io = O.convert_and_gate(c.source_info["onnx2tf_python"], c.model, c.source_graph, verifier, shapes, c.work,
                                            c.options.seed, c.say)
    _fill(c, paths, figures, io, verifier)


def _fill(c, paths, figures, io, verifier) -> None:
    c.paths.update(paths)
    c.figures.update(figures)
    c.report = {"graph_convert_version": __version__, "source": c.source_info, "io": io,
                "verification": {"atol": c.options.atol, "draws": verifier.draw_labels, "notes": verifier.notes,
                                 **{k: figures_dict(f) for k, f in figures.items()}},
                "dynamic": c.dyn_info or {"dims": {}, "note": "every input shape is static in the source"}}


def _convert_free_batch(c) -> None:
    """onnx2tf converts the source with its symbolic batch; each file is judged at every batch
    size it takes (see the module docstring)."""
    c.say(f"converting with onnx2tf ({c.source_info['onnx2tf_python']}) ...")
    paths = O.run_onnx2tf(c.source_info["onnx2tf_python"], c.model, c.work, c.options.seed)
    cands = {key: O.load_for_gate(paths[p]) for key, _, p in STAGES}
    (free,) = [n for n, d in c.dims.items() if d.free]
    static = {O.static_batch(cand) for cand in cands.values()} - {None}
    if static:  # onnx2tf wrote a fixed batch: judged there only
        DM.fix_dim(c.dims[free], min(static), "onnx2tf (its files have a static batch)")
        c.dyn_info["reason"] = f"onnx2tf wrote a static batch ({min(static)}): the files are judged at that batch alone"
        c.dyn_info["dims"][free].update(kept=False, fixed=min(static), fixed_by="onnx2tf")
        c.say(f"warning: {c.dyn_info['reason']}")
        if c.user_feeds is not None:  # the user's arrays must have that batch now
            DM.sizes_of_arrays(c.dims, {x: v.shape for x, v in c.user_feeds.items()}, "--inputs")
    plan = DM.assignments(c.dims)
    if c.user_feeds is not None:
        plan.append({free: c.user_sizes.get(free, plan[0][free])})
    checks: list[dict[str, Any]] = []
    first = None
    for i, sizes in enumerate(plan):
        user = c.user_feeds is not None and i == len(plan) - 1
        shapes = DM.input_shapes(c.model, c.dims, sizes)
        model = DM.with_shapes(c.model, shapes)
        graph = from_onnx(model)
        entry: dict[str, Any] = {"sizes": sizes, **({"inputs": "--inputs"} if user else {}), "verdict": None}
        checks.append(entry)
        try:
            verifier = Verifier(model, [Draw("user (--inputs)", dict(c.user_feeds))] if user else
                                make_draws(graph, c.options.seed, shapes), c.options.atol)
        except ConvertError as e:
            if user:
                raise ConvertError(f"--inputs: {e}") from None
            entry["verdict"] = f"the source model fails in ONNX Runtime at these sizes: {e}"
            continue
        at = f" at {free}={sizes[free]}" + (" on the --inputs arrays" if user else "")
        figures, io = {}, {}
        for key, label, _ in STAGES:
            figures[key], pairs = O.gate(cands[key], verifier, graph, shapes, model, label + at)
            io[key] = [p.as_dict() for p in pairs]
            entry[key] = figures_dict(figures[key])
        entry["verdict"] = "ok"
        if first is None:
            first = (figures, io, verifier)
    if first is None:
        raise ConvertError(f"the source model fails in ONNX Runtime at every batch size tried ({checks[0]['verdict'][:300]})")
    if c.dims[free].free:
        ok = sorted({e["sizes"][free] for e in checks if e["verdict"] == "ok"})
        c.dyn_info["dims"][free]["checked_sizes"] = ok
        if len(ok) < DM.MIN_CHECKED:
            raise ConvertError(f"{DM.describe(c.dims, [free])}: onnx2tf's files checked at only {len(ok)} batch size(s); "
                               f"fix it with {DM.fix_hint(c.model, c.dims, [free])}")
    c.dyn_info["checks"] = checks
    _fill(c, paths, first[0], first[1], first[2])


BACKEND = Backend(
    name="onnx2tf",
    summary="onnx2tf makes the files from the source ONNX; they are verified exactly as ours",
    from_rewritten=False,
    prepare=prepare,
    stages=(Stage("convert with onnx2tf", "onnx2tf", convert),),
)
