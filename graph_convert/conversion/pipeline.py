"""The conversion pipeline as named stages over one per-conversion context:

    load plugins -> load source -> check -> rewrite (ORT proof) -> write rewritten ONNX -> emit TF
    -> verify TF -> write SavedModel -> write TFLite -> verify TFLite -> quantize -> report

Each stage is a small function that reads and fills a :class:`Conversion`. Output is written to a
locked temporary sibling of the output folder and moved into place only when every requested
artifact was written and verified (:mod:`graph_convert.conversion.output`), so a failed run leaves nothing.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from graph_convert import backends as B
from graph_convert.backends.base import Backend, Stage
from graph_convert.conversion import dims as DM
from graph_convert.conversion import dynamic_run as DR
from graph_convert.errors import ConvertError, GraphConvertError, PassError, StageError, UnsupportedOpsError, VerificationError
from graph_convert.ir import Graph, from_onnx, to_onnx
from graph_convert.ir.onnx_io import save_with_external_data
from graph_convert.options import ConvertOptions
from graph_convert.conversion.output import OutputDir, protected_paths
from graph_convert.pass_manager import Registry
from graph_convert.plugins import builtin_registry
from graph_convert.conversion.rewrite import Rewritten, rewrite
from graph_convert.conversion.source import (EXPORT_DIR, check_input_types, check_weights, input_shape_overrides, resolve_source,
                                             training_dropout_warning)
from graph_convert.conversion.report import figures_dict, json_safe
from graph_convert.conversion.report_html import render_report
from graph_convert.checks.equivalence import Draw, Figures, Verifier, check_user_inputs, external_data_threshold, read_npz

@dataclass
class ConvertResult:
    """What a conversion produced: paths, verification figures, the report as a dict."""

    output_dir: str
    report: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def saved_model(self) -> str:
        return self.paths["saved_model"]

    @property
    def tflite(self) -> str | None:
        return self.paths.get("tflite_float32")

    @property
    def rewritten_onnx(self) -> str:
        return self.paths["rewritten_onnx"]

    @property
    def transposes_left(self) -> int | None:
        return self.report.get("tflite", {}).get("transpose_ops")

    def max_abs_error(self, stage: str) -> float:
        return max(v["max_abs"] for v in self.report["verification"][stage].values())


@dataclass
class Conversion:
    """One conversion's state: the stages read and fill it in order. Nothing here is shared
    with another conversion (two may run in one process)."""

    source: Any
    example_inputs: Any
    options: ConvertOptions
    work: str  # the temporary output folder
    say: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float] = field(default_factory=dict)  # stage key -> peak RSS (GB) when it ended
    tflite_note: str | None = None  # why the .tflite was not written (a model past the flatbuffer limit)
    tflite_weights: str | None = None  # how a large model's .tflite got its weights
    registry: Registry | None = None
    model: onnx.ModelProto | None = None  # the source model (static shapes unless the batch is dynamic)
    source_graph: Graph | None = None
    source_info: dict[str, Any] = field(default_factory=dict)
    shape_overrides: dict[str, tuple] = field(default_factory=dict)
    user_feeds: dict[str, np.ndarray] | None = None
    user_sizes: dict[str, int] = field(default_factory=dict)  # each free dim's size in the user's --inputs arrays
    quant_plan: Any = None
    dims: dict[str, Any] = field(default_factory=dict)  # dims.Dim by name: every named size of the inputs
    dynamic: bool = False  # some dims stay free: converted at two sizes, checked at more
    size_plan: list[dict[str, int]] = field(default_factory=list)  # sizes converted at (first two) and checked at
    rewritten: Rewritten | None = None
    view: Any = None  # dynamic.DimView when some dims are dynamic
    # every size checked besides the first: (sizes, its ONNX Runtime reference, its report.json dynamic.checks entry)
    other_sizes: list[tuple[dict[str, int], Verifier, dict[str, Any]]] = field(default_factory=list)
    dyn_info: dict[str, Any] | None = None
    traced: Any = None  # what the back end built (the TF back end: emitter.Traced)
    io_names: tuple[list[str], list[str]] | None = None  # the artifacts' names of the graph's inputs and outputs
    gaps: list[dict[str, str]] = field(default_factory=list)
    figures: dict[str, dict[str, Figures]] = field(default_factory=dict)  # stage -> output -> figures
    paths: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    backend: Backend | None = None  # the back end that makes the files (``auto`` resolves to one)
    backend_why: str = ""
    progress: Callable[[str, str], None] | None = None  # told ("start" | "end", stage name) around each stage

    def check(self, key: str, label: str, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
              steps: dict[str, tuple[float | None, float | None]] | None = None) -> None:
        """Judge one artifact against ONNX Runtime on every draw (and at the other sizes of its
        dynamic dims): ``run`` maps source-layout feeds keyed by ONNX input names to outputs keyed
        by ONNX output names. Figures go to ``figures[key]``; a mismatch raises VerificationError.
        ``steps``: judge by the int8 rule (``checks.equivalence.compare_int8``), per output."""
        def go(feeds):
            with stage(f"run {label}"):
                return run(feeds)
        self.figures[key] = self.verifier.check(go, label, steps)
        DR.check_other_sizes(self, key, label, go, steps)

    def dynamic_verdicts(self, stages: list[str]) -> None:
        """Once the artifacts of ``stages`` were checked: each size's verdict, and each free dim
        refused unless checked at enough sizes (see :mod:`graph_convert.conversion.dynamic_run`)."""
        DR.finish_checks(self, stages)

    def dynamic_dims_hint(self) -> str:
        """``h, w; fix them with --input-shape x=1,3,H,W``: the free dims and how to fix them."""
        free = [n for n, d in self.dims.items() if d.free]
        return f"{', '.join(free)}; fix them with {self.fix_free_dims_hint()}"

    def fix_free_dims_hint(self) -> str:
        """``--input-shape x=1,3,H,W``: the options that fix every free dim."""
        return DM.fix_hint(self.model, self.dims, [n for n, d in self.dims.items() if d.free])

    @property
    def graph(self) -> Graph:
        return self.rewritten.graph

    @property
    def verifier(self) -> Verifier:
        return self.rewritten.verifier


@contextlib.contextmanager
def stage(name: str):
    """Any exception escaping ``name`` that is not one of ours becomes a StageError naming the
    stage (and the TF node when TensorFlow's message names one): never a raw traceback."""
    try:
        yield
    except GraphConvertError:  # ours, already one clear line with its own exit code
        raise
    except Exception as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a large model's files filled a disk
            raise ConvertError(f"{name}: no space left on the device ({e.strerror}) for the output folder's files") from None
        # TensorFlow's OpError wraps the reason in a Python call stack (indented lines) between a
        # "Graph execution error:" header and the "[[{{node ...}}]]" trailer: keep the reason
        text = str(getattr(e, "message", None) or e)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln[:1].isspace()]
        reason = [ln for ln in lines if not ln.startswith(("Graph execution error", "Detected at node", "[["))]
        first = (reason or lines or [type(e).__name__])[0]
        node = re.search(r"\{\{node ([^}]+)\}\}", str(e))
        raise StageError(name, f"{type(e).__name__}: {first[:400]}", node.group(1) if node else None) from e


# -- stages ----------------------------------------------------------------------------------------

def load_plugins(c: Conversion) -> None:
    c.registry = builtin_registry(c.options.plugins)


def load_source(c: Conversion) -> None:
    c.model, c.source_info = resolve_source(c.source, c.example_inputs, c.options.input_shapes, c.work, c.options.dynamic_batch,
                                            dim_specs=c.options.dims,
                                            free_built=c.options.free_source_model)
    check_weights(c.model)
    if (warning := training_dropout_warning(c.source_info)) is not None:
        c.say(warning)
    c.source_graph = from_onnx(c.model)
    opsets = dict(c.source_graph.model_meta.get("opset_import", []))
    c.source_info["opset"] = opsets.get("", opsets.get("ai.onnx"))
    # older opsets (attribute axes, Upsample, spatial BN, ...) are read by the emitters and
    # transpose handlers themselves rather than rewritten by onnx.version_converter
    c.source_info["old_forms"] = "handled directly (no version conversion)"
    c.say(f"source: {c.source_info.get('path') or c.source_info.get('spec') or c.source_info['kind']} ({len(c.source_graph)} nodes)")


def check_source(c: Conversion) -> None:
    """Everything that can be refused is refused here, before any conversion work."""
    from graph_convert import quantize as Q

    graph, opts = c.source_graph, c.options
    check_input_types(graph)
    _choose_backend(c)
    if c.source_info["kind"] != "pytorch":
        c.shape_overrides = input_shape_overrides(graph, opts.input_shapes)
    if isinstance(opts.inputs, (str, os.PathLike)):
        path = os.fspath(opts.inputs)
        c.user_feeds = check_user_inputs(graph, read_npz(path, "--inputs"), f"--inputs {path}")
    elif opts.inputs is not None:
        c.user_feeds = check_user_inputs(graph, opts.inputs, "inputs")
    _plan_dims(c)
    if opts.quant is not None:  # quantization data and names are checked before any conversion work
        # random samples of a free dim are drawn at the first size the model is converted at
        at = DM.input_shapes(c.model, c.dims, DM.assignments(c.dims)[0]) if c.dynamic else None
        c.quant_plan = Q.prepare(opts.quant, c.source_graph, c.shape_overrides, opts.seed, random_shapes=at)


def _plan_dims(c: Conversion) -> None:
    """Which input dims are fixed (``--input-shape``, ``--dim N=V``) and which stay free (a
    symbolic dim of the source, ``--dynamic-batch``, ``--dim N=MIN..MAX``; ``--inputs`` fixes
    none, its arrays are one more size to check): a model whose
    every dim is fixed is converted once with every shape static; free dims make the conversion
    dynamic (converted at two sizes, checked at more, see :mod:`graph_convert.conversion.dynamic`)."""
    opts = c.options
    overrides = c.shape_overrides
    named = {(x, a): d for x, shape in overrides.items() for a, d in enumerate(shape) if isinstance(d, str)}
    c.dims = DM.find_dims(c.model, force_batch=opts.dynamic_batch, named=named)
    # from here on, every input shape comes from the model at the sizes of each conversion
    c.shape_overrides = {}
    if opts.dynamic_batch and not any(d.role == "batch" for d in c.dims.values()):
        raise ConvertError("--dynamic-batch: the model has no input with a batch dim (every input is a scalar)")
    if c.source_info["kind"] == "pytorch":  # dims --input-shape named: exported symbolic under those names
        for n in {d for _, shape in opts.input_shapes for d in shape if isinstance(d, str)} & set(c.dims):
            c.dims[n].requested = "--input-shape"
    DM.apply_fixes(c.dims, overrides, opts.dims)
    reason = None
    if not c.backend.from_rewritten:  # another back end converts the source as it is, at static sizes
        reason = _static_backend_dims(c)
    if c.user_feeds is not None:  # the user's arrays fix no dim: checked at their own sizes besides the generated ones
        c.user_sizes = DM.sizes_of_arrays(c.dims, {x: np.shape(v) for x, v in c.user_feeds.items()}, "--inputs")
    c.dynamic = any(d.free for d in c.dims.values())
    fixed = {n: d.fixed for n, d in c.dims.items() if not d.free}
    if fixed and not c.dynamic:  # every symbolic dim has its value: every shape is static from here on
        c.model = DM.with_shapes(c.model, DM.input_shapes(c.model, c.dims, fixed))
        c.source_graph = from_onnx(c.model)
        c.dyn_info = DR.report_dims(c, reason=reason)
    elif c.dynamic and not c.backend.from_rewritten:  # the back end checks its free batch (its dynamic.checks)
        c.dyn_info = DR.report_dims(c)


def _static_backend_dims(c: Conversion) -> str | None:
    """A back end that converts the source as it is (onnx2tf) keeps at most the source's own
    symbolic batch (onnx2tf writes it as -1; the back end checks it at several sizes or falls
    back to 1 itself): any other free dim is refused in one line. A batch beside fixed dims is
    fixed to 1, with a warning and report.json ``dynamic.reason``."""
    name = c.backend.name
    free = [n for n, d in c.dims.items() if d.free]
    refused = [n for n in free if c.dims[n].role != "batch" or c.dims[n].requested != "symbolic dim in the source model"]
    if refused:
        raise ConvertError(f"--backend {name} converts static shapes: {DM.describe(c.dims, refused)} cannot stay free "
                           f"(our back end keeps and checks free dims); fix "
                           f"{'it' if len(refused) == 1 else 'them'} with {DM.fix_hint(c.model, c.dims, refused)}")
    if not free or len(free) == len(c.dims):
        return None
    for n in free:
        DM.fix_dim(c.dims[n], 1, f"--backend {name} (static batch)")
    reason = (f"--backend {name}: {DM.describe(c.dims, free)} fixed to 1 beside the dims fixed by "
              f"{', '.join(sorted({d.fixed_by for d in c.dims.values() if d.fixed_by and d.name not in free}))}")
    c.say(f"warning: {reason}")
    return reason


def _choose_backend(c: Conversion) -> None:
    """``--backend``: the named back end refuses what it cannot take up front; ``auto`` takes the
    first back end (in the table's order) that takes every op."""
    wanted = c.options.backend
    tried: list[tuple[str, list]] = []
    for name in (B.BACKENDS if wanted == B.AUTO else (wanted,)):
        backend = B.get(name)
        missing = backend.unsupported(c, c.source_graph)
        if not missing:
            c.backend = backend
            break
        tried.append((name, missing))
    else:
        raise UnsupportedOpsError(tried[0][1], _auto_hint(wanted, tried[0][1]))
    if wanted != B.AUTO:
        c.backend_why = "default" if wanted == B.DEFAULT else f"--backend {wanted}"
    elif tried:
        c.backend_why = f"{B.get(tried[0][0]).label} has no translation for {UnsupportedOpsError(tried[0][1])}".replace(
            "unsupported ops for the TF emitter: ", "")
        c.say(f"backend: {c.backend.name} ({c.backend_why})")
    else:
        c.backend_why = f"--backend auto: {c.backend.label} handles every op"
    c.backend.prepare(c)


def _auto_hint(wanted: str, missing: list[tuple[str, str]]) -> str:
    """With the default back end: point at ``--backend auto`` when onnx2tf converts every op
    ours lacks (never for an op of a custom domain, which no converter knows)."""
    if wanted != B.DEFAULT:
        return ""
    from graph_convert.backends.onnx2tf.runner import auto_hint

    return auto_hint([op for op, _ in missing])


def _rewrite(c: Conversion, model: onnx.ModelProto, user_feeds=None, graph: Graph | None = None) -> Rewritten:
    return rewrite(model, c.registry, c.options, shape_overrides=c.shape_overrides, user_feeds=user_feeds, timings=c.timings,
                   graph=graph)


def rewrite_graph(c: Conversion) -> None:
    if not c.dynamic:
        c.rewritten = _rewrite(c, c.model, c.user_feeds, c.source_graph)
    else:
        DR.rewrite_dynamic(c, lambda c, m, feeds: _rewrite(c, m, feeds))
    missing = c.backend.unsupported(c, c.graph)
    if missing:  # a pass made an op the back end does not know
        raise UnsupportedOpsError(missing)


def write_rewritten(c: Conversion) -> None:
    path = os.path.join(c.work, "model.rewritten.onnx")
    if c.graph.weight_bytes >= external_data_threshold():  # the weights beside it, written one at a time
        data = save_with_external_data(c.graph, path)
        c.paths["rewritten_onnx_data"] = os.path.join(c.work, data)
    else:
        onnx.save(to_onnx(c.graph), path)
    try:
        onnx.checker.check_model(path)
    except onnx.checker.ValidationError as e:
        raise VerificationError(f"model.rewritten.onnx fails onnx.checker: {str(e).splitlines()[0]}", "rewritten-onnx") from None
    c.paths["rewritten_onnx"] = path
    # the same lowering was checked at the end of the passes (unless nothing changed or --verify none)
    c.figures["rewritten_onnx"] = c.rewritten.figures or c.verifier.check_graph(c.graph, "rewritten ONNX")


# (the stages every back end shares; the back end's own follow: graph_convert.backends)
SOURCE_STAGES: tuple[Stage, ...] = (
    Stage("load plugins", "load_plugins", load_plugins),
    Stage("load source", "load", load_source),
    Stage("check source", "check", check_source),
)
REWRITE_STAGES: tuple[Stage, ...] = (
    Stage("rewrite", "rewrite", rewrite_graph),
    Stage("write model.rewritten.onnx", "verify_rewritten", write_rewritten),
)


def write_explorer(c: Conversion) -> None:
    from graph_convert.checks.explorer import write_for_conversion

    write_for_conversion(c)


# --explorer: Model Explorer node data from what the stages before it kept (checks/explorer.py)
EXPLORER_STAGE = Stage("write Model Explorer node data", "explorer", write_explorer, lambda c: c.options.explorer)


def stages(c: Conversion):
    """The stages of ``c`` in order; the back end (chosen while checking the source) adds its own."""
    yield from SOURCE_STAGES
    if c.backend.from_rewritten:
        yield from REWRITE_STAGES
    yield from c.backend.stages
    yield EXPLORER_STAGE


def run_stages(c: Conversion) -> None:
    for st in stages(c):
        name, key, fn = st.name, st.key, st.run
        if not st.when(c):
            continue
        t = time.perf_counter()
        if c.progress is not None:
            c.progress("start", name)
        with stage(name):
            fn(c)
        if c.progress is not None:
            c.progress("end", name)
        c.timings[key] = c.timings.get(key, 0.0) + time.perf_counter() - t
        c.peak_rss[key] = _peak_rss_gb()


def _peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (ORT and TensorFlow run in-process)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


def _weights_report(c: Conversion) -> dict[str, Any]:
    """How a large model's weights went through the conversion (report.json ``weights``)."""
    return {"bytes": c.source_graph.weight_bytes if c.source_graph is not None else None,
            "external_data_threshold_bytes": external_data_threshold(),
            "onnx_runtime_sessions": list(c.verifier.sessions) if c.rewritten is not None else [],
            "rewritten_onnx_data": os.path.basename(c.paths["rewritten_onnx_data"]) if "rewritten_onnx_data" in c.paths else None,
            "tflite": c.tflite_note or c.tflite_weights}


def convert(source, example_inputs=None, output_dir: str | os.PathLike = "converted", options: ConvertOptions | None = None,
            *, log: Callable[[str], None] | None = None, progress: Callable[[str, str], None] | None = None,
            **kwargs) -> ConvertResult:
    """Convert ``source`` (an ``nn.Module``, ``file.py:factory``, ``module:attr``, an .onnx path or
    ModelProto) and write the verified artifacts to ``output_dir``. Options: a
    :class:`~graph_convert.options.ConvertOptions`, or its fields as keyword arguments. Raises
    ConvertError (bad input), UnsupportedOpsError, PassError, VerificationError, StageError or
    :class:`graph_convert.quantize.QuantizationThresholdError`; nothing is written on failure.
    ``log`` gets the run's messages, ``progress`` ("start" | "end", stage name) around each stage
    (:func:`graph_convert.stage_progress` makes one that shows them)."""
    if options is None:
        options = ConvertOptions.from_kwargs(**kwargs)
    elif kwargs:
        raise ConvertError(f"convert(): give options either as ConvertOptions or as keywords, not both ({', '.join(kwargs)})")
    t_start = time.perf_counter()
    out = OutputDir(output_dir, overwrite=options.overwrite, protected=protected_paths(source, options.plugins))
    work = out.prepare()
    try:
        c = Conversion(source, example_inputs, options, work, log or (lambda msg: None), progress=progress)
        run_stages(c)
        c.report["backend"] = {"used": c.backend.name, "why": c.backend_why}
        c.timings["total"] = time.perf_counter() - t_start
        c.report["timings_seconds"] = {k: round(v, 4) for k, v in c.timings.items()}
        c.report["peak_rss_gb_after_stage"] = dict(c.peak_rss)
        c.report["weights"] = _weights_report(c)
        with open(os.path.join(work, "report.json"), "w") as f:
            json.dump(json_safe(c.report), f, indent=2, allow_nan=False)
        with open(os.path.join(work, "report.html"), "w", encoding="utf-8") as f:  # the same report as a page, for people
            f.write(render_report(json_safe(c.report)))
        shutil.rmtree(os.path.join(work, EXPORT_DIR), ignore_errors=True)  # a large export's weights, read until now
        out.commit(os.listdir(work))
        where = os.path.abspath(os.fspath(output_dir))
        paths = {k: os.path.join(where, os.path.basename(v)) for k, v in c.paths.items()}
        paths["report"] = os.path.join(where, "report.json")
        paths["report_html"] = os.path.join(where, "report.html")
        return ConvertResult(os.fspath(output_dir), c.report, paths)
    finally:
        out.discard()
