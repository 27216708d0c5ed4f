"""The TensorFlow back end (ours, the default): the rewritten graph is emitted as one
``tf.function`` (:mod:`emitter`), checked in TensorFlow, written as a SavedModel and converted to
a .tflite (:mod:`writer`, :mod:`large_tflite` past the flatbuffer's reach), which is checked in
LiteRT; quantized variants follow (:mod:`graph_convert.quantize`)."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from graph_convert.backends.base import Backend, Stage
from graph_convert.checks.equivalence import external_data_threshold, to_rewritten_layout, to_source_layout
from graph_convert.errors import ConvertError, UnsupportedOpsError

# TensorFlow's converter holds about this many copies of the weights at its peak (frozen
# constants, MLIR constants, the flatbuffer; the whole run peaked at 5.4-5.5x the weights on
# 1.6 and 2.4 GB MLPs): erring high, since running out of memory there loses minutes of work
TFLITE_CONVERTER_COPIES = 6
# ... and this many when it converts splat stand-ins (large_tflite): the converter then holds
# no weight (its large stand-ins come back as FILL ops), the run's peak is the stages before it,
# about the weights once on top of the process (whole runs measured at 1.3x the weights at 4 GB,
# 1.5x at 2.4 GB): one copy, erring high
TFLITE_STANDIN_COPIES = 1


def unsupported(c, graph) -> list[tuple[str, str]]:
    from graph_convert.backends.tensorflow.emitter import missing_emitters

    return missing_emitters(graph, c.registry.emitters)


def prepare(c) -> None:
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
    elif not converter_memory_ok(TFLITE_STANDIN_COPIES, size):
        why = (f"writing it needs about {(TFLITE_STANDIN_COPIES + 1) * size / 1e9:.0f} GB for them and "
               f"{available_memory() / 1e9:.0f} GB is available")
    else:
        return
    # refused up front like a TFLite gap: exit 0 means every requested artifact was written
    raise ConvertError(f"no .tflite can be written here: the weights ({size / 1e9:.2f} GB) exceed the 2 GiB of one "
                       f"flatbuffer and {why} (--no-tflite writes the SavedModel only)")


def converter_memory_ok(copies: int, size: int) -> bool:
    """Whether the machine has memory for ``copies`` + 1 times ``size`` bytes (unknown: yes)."""
    avail = available_memory()
    return avail is None or (copies + 1) * size <= avail


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def tflite_wanted(c) -> bool:
    return c.options.tflite and c.tflite_note is None


def emitter_table(c) -> tuple[dict, dict[str, str]]:
    """The emitter table (and the TF scope of every node when quantizing: TF op names then carry
    their node's name, so TFLite layers map back to nodes)."""
    from graph_convert import quantize as Q

    if c.quant_plan is not None:
        return Q.scoped_emitters(c.registry.emitters, c.graph)
    return c.registry.emitters, {}


def emit(c) -> None:
    from graph_convert.backends.tensorflow.emitter import build_function

    emitters, scopes = emitter_table(c)
    try:
        t = build_function(c.graph, emitters, batch=c.view, layout_aware=c.registry.layout_aware)
    except ConvertError as e:
        if c.view is None or isinstance(e, UnsupportedOpsError):
            raise
        raise ConvertError(f"{e}, with the dynamic dims {c.dynamic_dims_hint()}") from None  # a form emitted for static sizes only
    c.traced = t._replace(scopes=scopes)
    c.io_names = (t.in_names, t.out_names)
    c.graph.drop_decoded()  # the TF variables hold the weights now
    # forms TF runs but TFLite has no builtin kernel for: named now, not as a converter crash later
    c.gaps = [{"node": n, "op_type": op, "reason": why} for n, op, why in t.gaps]
    c.report["tflite_gaps"] = c.gaps
    if c.gaps and tflite_wanted(c):
        shown = "; ".join(f"node {g['node']!r} ({g['op_type']}): {g['reason']}" for g in c.gaps[:10])
        more = f" and {len(c.gaps) - 10} more" if len(c.gaps) > 10 else ""
        raise ConvertError(f"TFLite has no builtin kernel for {len(c.gaps)} node(s): {shown}{more} "
                           f"(--no-tflite writes the SavedModel only)")


def runner(c, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
    """Source-layout feeds -> source-layout outputs, keyed by ONNX names, for ``run`` that takes
    and gives rewritten-layout arrays keyed by TF names."""
    g, t = c.graph, c.traced

    def go(feeds):
        rw = to_rewritten_layout(feeds, g.io_perms)
        out = run({n: rw[x] for x, n in zip(g.inputs, t.in_names)})
        return to_source_layout({y: out[n] for y, n in zip(g.outputs, t.out_names)}, g.io_perms)
    return go


def verify_tf(c) -> None:
    from graph_convert.backends.tensorflow.runner import run_tf

    t = c.traced
    c.check("tensorflow", "TensorFlow", runner(c, lambda feeds: run_tf(t.concrete, t.in_names, feeds, t.in_names)),
            steps=quantized_steps(c))


def quantized_steps(c):
    """A quantized source's float artifacts are judged by the int8 rule too (None otherwise): the
    reference is ONNX Runtime's integer kernels (QDQ groups fused into QLinear kernels, sigmoid by
    a lookup table, requantization by its own multipliers), which round every intermediate tensor
    at their own boundaries; a float emulation of ONNX's arithmetic lands one step away wherever
    a value sits on a rounding boundary, and the layers after it carry that step on."""
    from graph_convert.backends.tensorflow import quantized_source as QS

    return QS.output_steps(c.model) if QS.is_quantized(c.model) else None


def write_saved_model(c) -> None:
    from graph_convert.backends.tensorflow.writer import save_saved_model

    path = os.path.join(c.work, "saved_model")
    save_saved_model(c.traced.module, c.traced.concrete, path)
    c.paths["saved_model"] = path


def release_memory() -> None:
    """Collect garbage and hand the C heap's free memory back to the system (glibc keeps it)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def write_tflite(c) -> None:
    from graph_convert.backends.tensorflow.writer import convert_tflite

    path = os.path.join(c.work, "model_float32.tflite")
    if c.graph.weight_bytes < external_data_threshold():
        convert_tflite(c.traced.concrete, c.traced.module, path)
    else:
        # a large model: nothing after this stage runs the traced function (quantization reads
        # the SavedModel), so its TF variables go before TensorFlow's converter starts
        c.traced = c.traced._replace(module=None, concrete=None)
        release_memory()
        write_large_tflite(c, path)
    c.paths["tflite_float32"] = path


def write_large_tflite(c, path: str) -> None:
    """Converted with splat stand-ins for the large weights, then filled from the SavedModel
    (:mod:`graph_convert.backends.tensorflow.large_tflite`); when the stand-ins cannot be matched with certainty,
    TensorFlow's converter converts the SavedModel itself (several copies of the weights). Either
    way the buffers are written in buffer order (the converter's order changes from run to run)."""
    from graph_convert.backends.tensorflow import large_tflite as L
    from graph_convert.backends.tensorflow.writer import tflite_flatbuffer_checked

    emitters = emitter_table(c)[0]
    try:
        done = L.convert(c.graph, emitters, path, c.paths["saved_model"], batch=c.view, layout_aware=c.registry.layout_aware)
        c.tflite_weights = f"converted with stand-ins, {done.filled} buffers filled from the SavedModel's variables"
        if done.kept:
            c.tflite_weights += (f", {len(done.kept)} weight(s) that the converter folds converted as they are "
                                 f"({sum(done.kept.values()) / 1e6:.2f} MB)")
        return
    except L.NotPlaceable as e:
        c.tflite_weights = f"converted from the SavedModel with its weights (stand-ins not usable: {e})"
    release_memory()
    if not converter_memory_ok(TFLITE_CONVERTER_COPIES, c.graph.weight_bytes):
        raise ConvertError(f"no .tflite can be written here: {c.tflite_weights}, and TensorFlow's converter needs about "
                           f"{(TFLITE_CONVERTER_COPIES + 1) * c.graph.weight_bytes / 1e9:.0f} GB for the weights "
                           f"(--no-tflite writes the SavedModel only)")
    L.write(tflite_flatbuffer_checked(None, None, large=True, saved_model=c.paths["saved_model"]), path)


def verify_tflite(c) -> None:
    from graph_convert.backends.tensorflow.runner import tflite_op_counts, tflite_runner

    path = c.paths["tflite_float32"]
    # a large model's file runs on LiteRT's builtin kernels: XNNPACK would pack a second copy of
    # every weight (the stage's peak), and the builtin kernels read the same file
    delegate = c.graph.weight_bytes < external_data_threshold()
    if not delegate:
        c.tflite_weights = f"{c.tflite_weights}; verified on LiteRT's builtin kernels (without XNNPACK)"
    # one interpreter for every draw and size (resized between sizes, as a user resizes it)
    run = tflite_runner(path, delegate=delegate)
    c.check("tflite_float32", "TFLite float32", runner(c, run), steps=quantized_steps(c))
    del run
    ops = tflite_op_counts(path)
    c.report["tflite"] = {"path": "model_float32.tflite", "bytes": os.path.getsize(path), "transpose_ops": ops.get("TRANSPOSE", 0),
                          "total_ops": sum(ops.values()), "ops": dict(sorted(ops.items()))}


def write_int8_tflite(c) -> None:
    """A quantized source's int8 .tflite with the source's own scales, judged by the int8 rule."""
    from graph_convert.backends.tensorflow import quantized_source as QS
    from graph_convert.backends.tensorflow.emitter import build_function
    from graph_convert.backends.tensorflow.runner import tflite_runner
    from graph_convert.backends.tensorflow.writer import tflite_flatbuffer_checked

    # a trace of its own, where the emitters declare the source's scales as fake-quant ops
    t = build_function(c.graph, emitter_table(c)[0], batch=c.view, layout_aware=c.registry.layout_aware,
                       declare_quantization=True)
    path = os.path.join(c.work, "model_int8.tflite")
    with open(path, "wb") as f:
        f.write(tflite_flatbuffer_checked(t.concrete, t.module, optimize=True))
    c.paths["tflite_int8"] = path
    c.check("tflite_int8", "TFLite int8", runner(c, tflite_runner(path)), steps=QS.output_steps(c.model))
    c.report["tflite_int8"] = QS.describe(path, c.model)


def int8_wanted(c) -> bool:
    from graph_convert.backends.tensorflow.quantized_source import is_quantized

    return tflite_wanted(c) and is_quantized(c.model)


def quantize(c) -> None:
    from graph_convert import quantize as Q

    t = c.traced
    c.report["quantization"], qpaths = Q.run(c.quant_plan, out_dir=c.work, sm_dir=c.paths["saved_model"],
                                             float_tflite=c.paths["tflite_float32"], source_model=c.model, graph=c.graph,
                                             in_names=t.in_names, out_names=t.out_names, scopes=t.scopes, say=c.say)
    c.paths.update(qpaths)
    if c.dyn_info is not None and "checks" in c.dyn_info:
        for variant, entry in c.report["quantization"]["variants"].items():
            check_quantized_sizes(c, variant, entry)


def check_quantized_sizes(c, variant: str, entry: dict) -> None:
    """A quantized file that keeps free dims, at every size the float32 file was checked at
    (:mod:`graph_convert.quantize.sizes`); figures to each size's report.json entry."""
    from graph_convert import quantize as Q
    from graph_convert.quantize import sizes as QS

    path = os.path.join(c.work, entry["path"])
    key = Q.VARIANTS[variant][1]

    def run(feeds):  # one sample; int8 inputs/outputs (--int8-io) go through the file's own scales
        return {k: v[0] for k, v in Q.run_tflite_many(path, {k: np.asarray(v)[None] for k, v in feeds.items()}).items()}

    free = [n for n, d in c.dims.items() if d.free]
    per_size, labels = [], []
    first = c.dyn_info["checks"][0]
    for sizes, ver, rep in [(first["sizes"], c.verifier, first)] + list(c.other_sizes):
        label = ", ".join(f"{n}={sizes[n]}" for n in free) + (" (--inputs)" if rep.get("inputs") else "")
        figs = QS.figures_at(ver, runner(c, run), f"TFLite {variant} at {label}")
        rep[key] = {y: f.as_dict() for y, f in figs.items()}
        labels.append(label)
        if not rep.get("inputs"):  # the user's arrays are other data than the draws: their SQNR is not comparable
            per_size.append((label, figs))
    floats = {y for y, r in c.verifier.references[0].items() if np.asarray(r).dtype.kind == "f"}
    best = QS.judge(per_size, floats, f"TFLite {variant}", c.fix_free_dims_hint())
    entry["sizes"] = {"key": key} | QS.summary(best, labels, c.user_feeds is not None)


def report(c) -> None:
    from graph_convert.conversion.report import build_report

    from graph_convert import quantize as Q

    stages = ["tensorflow"] + (["tflite_float32"] if tflite_wanted(c) else []) + (["tflite_int8"] if "tflite_int8" in c.paths else [])
    stages += [Q.VARIANTS[v][1] for v in (c.report.get("quantization") or {}).get("variants", {})]
    c.dynamic_verdicts(stages)
    build_report(c)


BACKEND = Backend(
    name="graph-convert",
    label="our emitter",
    summary="our emitter: a SavedModel and a .tflite (and quantized variants), each checked against ONNX Runtime",
    unsupported=unsupported,
    prepare=prepare,
    stages=(
        Stage("emit TensorFlow", "tf_trace", emit),
        Stage("verify TensorFlow", "verify_tf", verify_tf),
        Stage("write SavedModel", "saved_model", write_saved_model),
        Stage("convert to TFLite", "tflite_convert", write_tflite, tflite_wanted),
        Stage("verify TFLite", "verify_tflite", verify_tflite, tflite_wanted),
        Stage("convert to int8 TFLite", "tflite_int8", write_int8_tflite, int8_wanted),
        Stage("quantize", "quantize", quantize, lambda c: tflite_wanted(c) and c.quant_plan is not None),
        Stage("report", "report", report),
    ),
)
