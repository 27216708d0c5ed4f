"""The conversion pipeline as named stages over one per-conversion context:

    load plugins -> load source -> check -> rewrite (ORT proof) -> write rewritten ONNX -> emit TF
    -> verify TF -> write SavedModel -> write TFLite -> verify TFLite -> quantize -> report

Each stage is a small function that reads and fills a :class:`Conversion`. Output is written to a
locked temporary sibling of the output folder and moved into place only when every requested
artifact was written and verified (:mod:`graph_convert.conversion.output`), so a failed run leaves nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
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

from graph_convert.conversion import dims as DM
from graph_convert.conversion import dynamic_run as DR
from graph_convert.errors import ConvertError, GraphConvertError, PassError, StageError, UnsupportedOpsError, VerificationError
from graph_convert.ir import Graph, from_onnx, to_onnx
from graph_convert.ir.onnx_io import save_with_external_data
from graph_convert.options import ConvertOptions
from graph_convert.conversion.output import OutputDir, protected_paths
from graph_convert.pass_manager import Registry, builtin_registry
from graph_convert.conversion.rewrite import Rewritten, rewrite
from graph_convert.conversion.source import EXPORT_DIR, check_input_types, check_weights, input_shape_overrides, resolve_source
from graph_convert.conversion.report import build_report, figures_dict, json_safe
from graph_convert.checks.equivalence import Draw, Figures, Verifier, check_user_inputs, external_data_threshold, read_npz, to_rewritten_layout, to_source_layout

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
class Traced:
    """The emitted TensorFlow: the module holding the weights, its concrete function, the TF
    names of the graph inputs/outputs, and (when quantizing) the TF scope of every node."""

    module: Any
    concrete: Any
    in_names: list[str]
    out_names: list[str]
    scopes: dict[str, str]


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
    quant_plan: Any = None
    dims: dict[str, Any] = field(default_factory=dict)  # dims.Dim by name: every named size of the inputs
    dynamic: bool = False  # some dims stay free: converted at two sizes, checked at more
    size_plan: list[dict[str, int]] = field(default_factory=list)  # sizes converted at (first two) and checked at
    rewritten: Rewritten | None = None
    view: Any = None  # dynamic.DimView when some dims are dynamic
    other_sizes: list[tuple[dict[str, int], Verifier]] = field(default_factory=list)
    dyn_info: dict[str, Any] | None = None
    traced: Traced | None = None
    gaps: list[dict[str, str]] = field(default_factory=list)
    figures: dict[str, dict[str, Figures]] = field(default_factory=dict)  # stage -> output -> figures
    paths: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    backend: str = "graph-convert"  # the back end that makes the files (``auto`` resolves to one)
    backend_why: str = ""
    progress: Callable[[str, str], None] | None = None  # told ("start" | "end", stage name) around each stage

    @property
    def ours(self) -> bool:
        return self.backend == "graph-convert"

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
    from graph_convert.backends.tensorflow.emitter import missing_emitters

    graph, opts = c.source_graph, c.options
    check_input_types(graph)
    _choose_backend(c, missing_emitters(graph, c.registry.emitters))
    if c.source_info["kind"] != "pytorch":
        c.shape_overrides = input_shape_overrides(graph, opts.input_shapes)
    if isinstance(opts.inputs, (str, os.PathLike)):
        path = os.fspath(opts.inputs)
        c.user_feeds = check_user_inputs(graph, read_npz(path, "--inputs"), f"--inputs {path}")
    elif opts.inputs is not None:
        c.user_feeds = check_user_inputs(graph, opts.inputs, "inputs")
    _check_tflite_size(c)
    _plan_dims(c)
    if opts.quant is not None:  # quantization data and names are checked before any conversion work
        c.quant_plan = Q.prepare(opts.quant, c.source_graph, c.shape_overrides, opts.seed)


def _plan_dims(c: Conversion) -> None:
    """Which input dims are fixed (``--input-shape``, ``--dim N=V``, ``--inputs``) and which stay
    free (a symbolic dim of the source, ``--dynamic-batch``, ``--dim N=MIN..MAX``): a model whose
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
    asked = {n for n, d in c.dims.items() if d.free and d.requested != "symbolic dim in the source model"}
    for clash, what in ((c.user_feeds is not None, "--inputs"), (opts.quant is not None, "--quantize")):
        if clash and asked:
            raise ConvertError(f"{'--dynamic-batch' if opts.dynamic_batch else 'a free --dim'} cannot be combined with {what} "
                               f"(verification runs on generated inputs at several sizes; quantized models are written with "
                               f"static shapes)")
    if c.user_feeds is not None:  # the user's arrays fix every dim they carry
        for n, d in c.dims.items():
            if d.free:
                x, a = d.axes[0]
                DM.fix_dim(d, int(np.asarray(c.user_feeds[x]).shape[a]), "--inputs")
    if opts.quant is not None:  # quantized files are static: a free batch is 1, other dims must be given
        for d in c.dims.values():
            if d.free and d.role == "batch":
                DM.fix_dim(d, 1, "--quantize (static batch)")
        free = [n for n, d in c.dims.items() if d.free]
        if free:
            raise ConvertError(f"--quantize writes static files: {DM.describe(c.dims, free)} "
                               f"{'is' if len(free) == 1 else 'are'} symbolic; fix {'it' if len(free) == 1 else 'them'} with "
                               f"{DM.fix_hint(c.model, c.dims, free)}")
    c.dynamic = any(d.free for d in c.dims.values())
    fixed = {n: d.fixed for n, d in c.dims.items() if not d.free}
    if fixed and not c.dynamic:  # every symbolic dim has its value: every shape is static from here on
        c.model = DM.with_shapes(c.model, DM.input_shapes(c.model, c.dims, fixed))
        c.source_graph = from_onnx(c.model)
        c.dyn_info = DR.report_dims(c)


def _choose_backend(c: Conversion, missing) -> None:
    """``--backend``: ours refuses unsupported ops up front; ``auto`` hands them to onnx2tf."""
    from graph_convert.backends.onnx2tf import runner as O
    wanted = c.options.backend
    c.backend = "onnx2tf" if wanted == "onnx2tf" else "graph-convert"
    if wanted == "onnx2tf":
        c.backend_why = "--backend onnx2tf"
    elif missing and wanted == "auto":
        c.backend = "onnx2tf"
        c.backend_why = f"our emitter has no translation for {UnsupportedOpsError(missing)}".replace("unsupported ops for the TF emitter: ", "")
        c.say(f"backend: onnx2tf ({c.backend_why})")
    elif missing:
        raise UnsupportedOpsError(missing)
    else:
        c.backend_why = "default" if wanted == "graph-convert" else "--backend auto: our emitter handles every op"
    if c.backend == "onnx2tf":
        c.source_info["onnx2tf_python"] = O.find_interpreter(c.options.onnx2tf_python)


def convert_onnx2tf(c: Conversion) -> None:
    """onnx2tf makes the SavedModel and the .tflite from the source ONNX; both are verified
    against ONNX Runtime on the same draws as our emitter's files, or nothing is written."""
    from graph_convert import __version__
    from graph_convert.backends.onnx2tf import runner as O
    from graph_convert.checks.equivalence import make_draws

    draws = make_draws(c.source_graph, c.options.seed, c.shape_overrides, c.user_feeds)
    verifier = Verifier(c.model, draws, c.options.atol, optional=tuple(range(1, len(draws))) if c.user_feeds is not None else ())
    shapes = {n: v.shape for n, v in verifier.draws[0].feeds.items()}
    paths, figures, io = O.convert_and_gate(c.source_info["onnx2tf_python"], c.model, c.source_graph, verifier, shapes, c.work,
                                            c.options.seed, c.say)
    c.paths.update(paths)
    c.figures.update(figures)
    c.report = {"graph_convert_version": __version__, "source": c.source_info,
                "backend": {"used": "onnx2tf", "why": c.backend_why}, "io": io,
                "verification": {"atol": c.options.atol, "draws": verifier.draw_labels, "notes": verifier.notes,
                                 **{k: figures_dict(f) for k, f in figures.items()}}}

# TensorFlow's converter holds about this many copies of the weights at its peak (frozen
# constants, MLIR constants, the flatbuffer; the whole run peaked at 5.4-5.5x the weights on
# 1.6 and 2.4 GB MLPs): erring high, since running out of memory there loses minutes of work
TFLITE_CONVERTER_COPIES = 6
# ... and this many when it converts splat stand-ins (tf/large_tflite.py): the converter then holds
# no weight (its large stand-ins come back as FILL ops), the run's peak is the stages before it,
# about the weights once on top of the process (whole runs measured at 1.3x the weights at 4 GB,
# 1.5x at 2.4 GB): one copy, erring high
TFLITE_STANDIN_COPIES = 1


def _check_tflite_size(c: Conversion) -> None:
    """A .tflite past the flatbuffer's 2 GiB: written with buffer offsets when this TensorFlow's
    converter has them and the machine has the memory the converter needs; otherwise the run
    stops now with one line saying why (exit 2; --no-tflite writes the SavedModel only) rather
    than failing (or being killed) after minutes of work."""
    from graph_convert.backends.tensorflow.writer import FLATBUFFER_LIMIT, buffer_offsets_supported

    size = c.source_graph.weight_bytes
    if not c.options.tflite or size < FLATBUFFER_LIMIT:
        return
    if not buffer_offsets_supported():
        why = "this TensorFlow's converter cannot place weights after the flatbuffer (buffer offsets)"
    elif not _converter_memory_ok(TFLITE_STANDIN_COPIES, size):
        why = (f"writing it needs about {(TFLITE_STANDIN_COPIES + 1) * size / 1e9:.0f} GB for them and "
               f"{_available_memory() / 1e9:.0f} GB is available")
    else:
        return
    # refused up front like a TFLite gap: exit 0 means every requested artifact was written
    raise ConvertError(f"no .tflite can be written here: the weights ({size / 1e9:.2f} GB) exceed the 2 GiB of one "
                       f"flatbuffer and {why} (--no-tflite writes the SavedModel only)")


def _converter_memory_ok(copies: int, size: int) -> bool:
    """Whether the machine has memory for ``copies`` + 1 times ``size`` bytes (unknown: yes)."""
    avail = _available_memory()
    return avail is None or (copies + 1) * size <= avail


def _available_memory() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tflite_wanted(c: Conversion) -> bool:
    return c.options.tflite and c.tflite_note is None


def _rewrite(c: Conversion, model: onnx.ModelProto, user_feeds=None, graph: Graph | None = None) -> Rewritten:
    return rewrite(model, c.registry, c.options, shape_overrides=c.shape_overrides, user_feeds=user_feeds, timings=c.timings,
                   graph=graph)


def rewrite_graph(c: Conversion) -> None:
    if not c.dynamic:
        c.rewritten = _rewrite(c, c.model, c.user_feeds, c.source_graph)
    else:
        DR.rewrite_dynamic(c, lambda c, m: _rewrite(c, m))
    from graph_convert.backends.tensorflow.emitter import missing_emitters

    missing = missing_emitters(c.graph, c.registry.emitters)
    if missing:  # a pass made an op no emitter knows
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


def _emitters(c: Conversion) -> tuple[dict[str, Any], dict[str, str]]:
    """The emitter table (and the TF scope of every node when quantizing: TF op names then carry
    their node's name, so TFLite layers map back to nodes)."""
    from graph_convert import quantize as Q

    if c.quant_plan is not None:
        return Q.scoped_emitters(c.registry.emitters, c.graph)
    return c.registry.emitters, {}


def emit(c: Conversion) -> None:
    from graph_convert.backends.tensorflow.emitter import build_function

    emitters, scopes = _emitters(c)
    t = build_function(c.graph, emitters, batch=c.view, layout_aware=c.registry.layout_aware)
    c.traced = Traced(t.module, t.concrete, t.in_names, t.out_names, scopes)
    c.graph.drop_decoded()  # the TF variables hold the weights now
    # forms TF runs but TFLite has no builtin kernel for: named now, not as a converter crash later
    c.gaps = [{"node": n, "op_type": op, "reason": why} for n, op, why in t.gaps]
    if c.gaps and _tflite_wanted(c):
        shown = "; ".join(f"node {g['node']!r} ({g['op_type']}): {g['reason']}" for g in c.gaps[:10])
        more = f" and {len(c.gaps) - 10} more" if len(c.gaps) > 10 else ""
        raise ConvertError(f"TFLite has no builtin kernel for {len(c.gaps)} node(s): {shown}{more} "
                           f"(--no-tflite writes the SavedModel only)")


def _runner(c: Conversion, label: str, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
    """Source-layout feeds -> source-layout outputs, keyed by ONNX names, for ``run`` that takes
    and gives rewritten-layout arrays keyed by TF names."""
    g, t = c.graph, c.traced

    def go(feeds):
        rw = to_rewritten_layout(feeds, g.io_perms)
        with stage(label):
            out = run({n: rw[x] for x, n in zip(g.inputs, t.in_names)})
        return to_source_layout({y: out[n] for y, n in zip(g.outputs, t.out_names)}, g.io_perms)
    return go


def _verify(c: Conversion, key: str, label: str, run) -> None:
    go = _runner(c, f"run {label}", run)
    c.figures[key] = c.verifier.check(go, label)
    DR.check_other_sizes(c, key, label, go)


def verify_tf(c: Conversion) -> None:
    from graph_convert.backends.tensorflow.runner import run_tf

    t = c.traced
    _verify(c, "tensorflow", "TensorFlow", lambda feeds: run_tf(t.concrete, t.in_names, feeds, t.in_names))


def write_saved_model(c: Conversion) -> None:
    from graph_convert.backends.tensorflow.writer import save_saved_model

    path = os.path.join(c.work, "saved_model")
    save_saved_model(c.traced.module, c.traced.concrete, path)
    c.paths["saved_model"] = path


def _release_memory() -> None:
    """Collect garbage and hand the C heap's free memory back to the system (glibc keeps it)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def write_tflite(c: Conversion) -> None:
    from graph_convert.backends.tensorflow.writer import convert_tflite

    path = os.path.join(c.work, "model_float32.tflite")
    if c.graph.weight_bytes < external_data_threshold():
        convert_tflite(c.traced.concrete, c.traced.module, path)
    else:
        # a large model: nothing after this stage runs the traced function (quantization reads
        # the SavedModel), so its TF variables go before TensorFlow's converter starts
        c.traced = dataclasses.replace(c.traced, module=None, concrete=None)
        _release_memory()
        _write_large_tflite(c, path)
    c.paths["tflite_float32"] = path


def _write_large_tflite(c: Conversion, path: str) -> None:
    """Converted with splat stand-ins for the large weights, then filled from the SavedModel
    (:mod:`graph_convert.backends.tensorflow.large_tflite`); when the stand-ins cannot be matched with certainty,
    TensorFlow's converter converts the SavedModel itself (several copies of the weights). Either
    way the buffers are written in buffer order (the converter's order changes from run to run)."""
    from graph_convert.backends.tensorflow import large_tflite as L
    from graph_convert.backends.tensorflow.writer import tflite_flatbuffer_checked

    emitters = _emitters(c)[0]
    try:
        done = L.convert(c.graph, emitters, path, c.paths["saved_model"], batch=c.view, layout_aware=c.registry.layout_aware)
        c.tflite_weights = f"converted with stand-ins, {done.filled} buffers filled from the SavedModel's variables"
        if done.kept:
            c.tflite_weights += (f", {len(done.kept)} weight(s) that the converter folds converted as they are "
                                 f"({sum(done.kept.values()) / 1e6:.2f} MB)")
        return
    except L.NotPlaceable as e:
        c.tflite_weights = f"converted from the SavedModel with its weights (stand-ins not usable: {e})"
    _release_memory()
    if not _converter_memory_ok(TFLITE_CONVERTER_COPIES, c.graph.weight_bytes):
        raise ConvertError(f"no .tflite can be written here: {c.tflite_weights}, and TensorFlow's converter needs about "
                           f"{(TFLITE_CONVERTER_COPIES + 1) * c.graph.weight_bytes / 1e9:.0f} GB for the weights "
                           f"(--no-tflite writes the SavedModel only)")
    L.write(tflite_flatbuffer_checked(None, None, large=True, saved_model=c.paths["saved_model"]), path)


def verify_tflite(c: Conversion) -> None:
    from graph_convert.backends.tensorflow.runner import run_tflite, tflite_op_counts

    path = c.paths["tflite_float32"]
    # a large model's file runs on LiteRT's builtin kernels: XNNPACK would pack a second copy of
    # every weight (the stage's peak), and the builtin kernels read the same file
    delegate = c.graph.weight_bytes < external_data_threshold()
    if not delegate:
        c.tflite_weights = f"{c.tflite_weights}; verified on LiteRT's builtin kernels (without XNNPACK)"
    _verify(c, "tflite_float32", "TFLite float32", lambda feeds: run_tflite(path, feeds, delegate=delegate))
    ops = tflite_op_counts(path)
    c.report["tflite"] = {"path": "model_float32.tflite", "bytes": os.path.getsize(path), "transpose_ops": ops.get("TRANSPOSE", 0),
                          "total_ops": sum(ops.values()), "ops": dict(sorted(ops.items()))}


def quantize(c: Conversion) -> None:
    from graph_convert import quantize as Q

    t = c.traced
    c.report["quantization"], qpaths = Q.run(c.quant_plan, out_dir=c.work, sm_dir=c.paths["saved_model"],
                                             float_tflite=c.paths["tflite_float32"], source_model=c.model, graph=c.graph,
                                             in_names=t.in_names, out_names=t.out_names, scopes=t.scopes, say=c.say)
    c.paths.update(qpaths)


def _report(c: Conversion) -> None:
    DR.finish_checks(c, ["tensorflow"] + (["tflite_float32"] if _tflite_wanted(c) else []))
    build_report(c)


# (name in the error message, key in report.json's timings, function, runs when)
STAGES: tuple[tuple[str, str, Callable[[Conversion], None], Callable[[Conversion], bool]], ...] = (
    ("load plugins", "load_plugins", load_plugins, lambda c: True),
    ("load source", "load", load_source, lambda c: True),
    ("check source", "check", check_source, lambda c: True),
    ("rewrite", "rewrite", rewrite_graph, lambda c: c.ours),
    ("write model.rewritten.onnx", "verify_rewritten", write_rewritten, lambda c: c.ours),
    ("emit TensorFlow", "tf_trace", emit, lambda c: c.ours),
    ("verify TensorFlow", "verify_tf", verify_tf, lambda c: c.ours),
    ("write SavedModel", "saved_model", write_saved_model, lambda c: c.ours),
    ("convert to TFLite", "tflite_convert", write_tflite, lambda c: c.ours and _tflite_wanted(c)),
    ("verify TFLite", "verify_tflite", verify_tflite, lambda c: c.ours and _tflite_wanted(c)),
    ("quantize", "quantize", quantize, lambda c: c.ours and _tflite_wanted(c) and c.quant_plan is not None),
    ("convert with onnx2tf", "onnx2tf", convert_onnx2tf, lambda c: not c.ours),
    ("report", "report", _report, lambda c: c.ours),
)


def run_stages(c: Conversion) -> None:
    for name, key, fn, wanted in STAGES:
        if not wanted(c):
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
        if c.ours:
            c.report["backend"] = {"used": "graph-convert", "why": c.backend_why}
        c.timings["total"] = time.perf_counter() - t_start
        c.report["timings_seconds"] = {k: round(v, 4) for k, v in c.timings.items()}
        c.report["peak_rss_gb_after_stage"] = dict(c.peak_rss)
        c.report["weights"] = _weights_report(c)
        with open(os.path.join(work, "report.json"), "w") as f:
            json.dump(json_safe(c.report), f, indent=2, allow_nan=False)
        shutil.rmtree(os.path.join(work, EXPORT_DIR), ignore_errors=True)  # a large export's weights, read until now
        out.commit(os.listdir(work))
        where = os.path.abspath(os.fspath(output_dir))
        paths = {k: os.path.join(where, os.path.basename(v)) for k, v in c.paths.items()}
        paths["report"] = os.path.join(where, "report.json")
        return ConvertResult(os.fspath(output_dir), c.report, paths)
    finally:
        out.discard()
