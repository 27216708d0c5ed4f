"""The conversion pipeline: source -> IR -> passes (ORT-verified) -> TF -> SavedModel/TFLite (verified).

Output is written to a temporary sibling directory and renamed into place only when every
requested artifact was written and verified, so a failed run leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from graph_convert import __version__
from graph_convert import dynamic as D
from graph_convert import quantize as Q
from graph_convert.errors import ConvertError, GraphConvertError, PassError, StageError, UnsupportedOpsError, VerificationError
from graph_convert.ir import Graph, from_onnx, load_model, to_onnx
from graph_convert.output import OutputDir, protected_paths
from graph_convert.passes import PassManager, builtin_registry
from graph_convert.verify import Draw, Verifier, check_user_inputs, first_diverging_tensor, make_draws, to_rewritten_layout, to_source_layout


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


@contextlib.contextmanager
def stage(name: str):
    """Any exception escaping ``name`` that is not one of ours becomes a StageError naming the
    stage (and the TF node when TensorFlow's message names one): never a raw traceback."""
    try:
        yield
    except GraphConvertError:  # ours, already one clear line with its own exit code
        raise
    except Exception as e:
        # TensorFlow's OpError wraps the reason in a Python call stack (indented lines) between a
        # "Graph execution error:" header and the "[[{{node ...}}]]" trailer: keep the reason
        text = str(getattr(e, "message", None) or e)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln[:1].isspace()]
        reason = [ln for ln in lines if not ln.startswith(("Graph execution error", "Detected at node", "[["))]
        first = (reason or lines or [type(e).__name__])[0]
        node = re.search(r"\{\{node ([^}]+)\}\}", str(e))
        raise StageError(name, f"{type(e).__name__}: {first[:400]}", node.group(1) if node else None) from e


VERIFY_RULE = ("per output and input draw: NaN/+-inf in the same places; max |got - source| <= atol x max |source| "
               "+ 4 x the smallest normal float32; cosine >= 1 - atol; integers and booleans equal")


def check_options(verify: str, atol, seed) -> None:
    """Options both the CLI and the API must refuse with one line."""
    if verify not in ("end", "phase", "each", "none"):
        raise ConvertError(f"--verify {verify!r}: expected one of end, phase, each, none")
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol <= 0:
        raise ConvertError(f"--atol {atol!r}: must be a finite positive number (a tolerance relative to each output's scale)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConvertError(f"--seed {seed!r}: must be a non-negative integer")


def check_weights(model: onnx.ModelProto) -> None:
    """A NaN in a weight or constant makes every check meaningless: refused up front, named.
    (+-inf stays legal: attention masks hold it.)"""
    from onnx import numpy_helper

    def tensors(graph):
        for t in graph.initializer:
            yield "initializer", t.name, t
        for n in graph.node:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and n.op_type == "Constant":
                    yield "Constant node", n.name or n.output[0], a.t
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    yield from tensors(g)

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    for kind, name, t in tensors(model.graph):
        if t.data_type not in floats:
            continue
        try:
            arr = np.asarray(numpy_helper.to_array(t))
        except Exception:
            continue  # unreadable data is reported by the loader / ORT with its own message
        bad = np.isnan(arr.astype(np.float64, copy=False))
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0]) if arr.ndim else ()
            raise ConvertError(f"{kind} {name!r} holds NaN ({int(bad.sum())} of {arr.size} values, first at index {at}): "
                               f"nothing computed from it can be checked; fix the weights")


def read_npz(path: str, option: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive, or one line saying why it cannot be read."""
    if not os.path.exists(path):
        raise ConvertError(f"{option} {path}: no such file")
    if os.path.isdir(path):
        raise ConvertError(f"{option} {path}: is a folder, expected an .npz file (numpy.savez)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConvertError(f"{option} {path}: cannot read it ({e.strerror})") from None
    if magic != b"PK\x03\x04":
        what = "a single .npy array" if magic.startswith(b"\x93NUM") else "an empty file" if not magic else "not a zip archive"
        raise ConvertError(f"{option} {path}: not an .npz archive ({what}); write one with numpy.savez(path, name=array, ...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise ConvertError(f"{option} {path}: holds object arrays (pickled data), which are not read for safety; "
                               f"save plain numeric arrays") from None
        raise ConvertError(f"{option} {path}: cannot read it as .npz ({e})") from None
    except Exception as e:
        raise ConvertError(f"{option} {path}: cannot read it as .npz ({type(e).__name__}: {e})") from None


def _json_safe(x):
    """The report as strict JSON: numpy scalars as numbers, non-finite floats as strings."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else repr(float(x))
    return x


def _resolve_source(source, example_inputs, input_shapes, work: str, dynamic_batch: bool = False) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Any accepted source -> (ONNX model, provenance facts for the report)."""
    from graph_convert import export as ex

    info: dict[str, Any] = {}
    if isinstance(source, onnx.ModelProto):
        return source, {"kind": "onnx-model"}
    if isinstance(source, (str, os.PathLike)) and not ex.is_torch_spec(os.fspath(source)):
        path = os.fspath(source)
        return load_model(path), {"kind": "onnx-file", "path": os.path.abspath(path)}
    import torch

    if isinstance(source, str):
        module = ex.load_torch_model(source)
        info.update(kind="pytorch", spec=source)
    elif isinstance(source, torch.nn.Module):
        module = source.eval()
        info.update(kind="pytorch", spec=type(source).__name__)
    else:
        raise ConvertError(f"source: expected an .onnx path, a 'file.py:factory' spec or an nn.Module, got {type(source).__name__}")
    if example_inputs is None:
        if not input_shapes:
            raise ConvertError("a PyTorch model needs --input-shape (or example_inputs=...) to be exported")
        unnamed = [s for n, s in input_shapes if n is None]
        if len(unnamed) != len(input_shapes):
            raise ConvertError("--input-shape for a PyTorch model: give shapes in argument order without names")
        example_inputs = tuple(torch.randn(*s) for s in unnamed)
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    export_dir = os.path.join(work, ".export")  # the exporter may write external data next to the file
    os.makedirs(export_dir, exist_ok=True)
    path = os.path.join(export_dir, "source.onnx")
    t0 = time.perf_counter()
    try:
        info["exporter"] = ex.export(module, example_inputs, path, dynamic_batch=dynamic_batch)
        info["export_seconds"] = round(time.perf_counter() - t0, 3)
        model = onnx.load(path)  # external data read in
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    return model, info


def _io_shape(graph: Graph, view, name: str) -> list:
    shape = view.shape(name) if view is not None else graph.shape(name)
    return ["batch" if d is None else d for d in (shape or [])]


def _figs(figs) -> dict[str, Any]:
    return {k: v.as_dict() for k, v in figs.items()}


def convert(
    source,
    example_inputs=None,
    output_dir: str | os.PathLike = "converted",
    *,
    input_shapes: Sequence[tuple[str | None, tuple[int, ...]]] | None = None,
    inputs: Mapping[str, np.ndarray] | str | None = None,
    keep_io_layout: bool = False,
    dynamic_batch: bool = False,
    heads_first: bool = False,
    plugins: Sequence[str] = (),
    disable_passes: Sequence[str] = (),
    verify: str = "end",
    atol: float = 1e-4,
    seed: int = 0,
    tflite: bool = True,
    overwrite: bool = False,
    log=None,
    quantize: str | Sequence[str] | None = None,
    calibration=None,
    eval_data=None,
    int8_io: bool = False,
    quant_debug: bool = False,
    float_ops: str | Sequence[str] = (),
    min_sqnr: float | None = None,
    min_top1: float | None = None,
    mean=None,
    std=None,
    size=None,
) -> ConvertResult:
    """Convert ``source`` (an ``nn.Module``, ``file.py:factory``, ``module:attr``, an .onnx path or
    ModelProto) and write the verified artifacts to ``output_dir``. Raises ConvertError (bad input),
    UnsupportedOpsError, PassError or VerificationError; nothing is written on failure.

    Quantization (see :mod:`graph_convert.quantize`): ``quantize`` any of ``fp16``, ``int8``,
    ``int8-full``; ``calibration`` an .npz path, an image folder (with ``mean``/``std``/``size``),
    ``"random"`` or ``{input name: array}`` (source layout, samples on axis 0); ``eval_data`` likewise
    (default: a held-out share of the calibration data); ``int8_io``, ``quant_debug``, ``float_ops``;
    ``min_sqnr``/``min_top1`` raise :class:`graph_convert.quantize.QuantizationThresholdError`."""
    check_options(verify, atol, seed)
    qopts = Q.make_options(quantize, calibration=calibration, eval_data=eval_data, int8_io=int8_io, quant_debug=quant_debug,
                           float_ops=float_ops, min_sqnr=min_sqnr, min_top1=min_top1, mean=mean, std=std, size=size, tflite=tflite)
    say = log or (lambda msg: None)
    output_dir = os.fspath(output_dir)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = OutputDir(output_dir, overwrite=overwrite, protected=protected_paths(source, plugins))
    tmp = out.prepare()
    try:
        result = _convert_into(tmp, source, example_inputs, output_dir, input_shapes or [], inputs, keep_io_layout,
                               list(plugins), list(disable_passes), verify, atol, seed, tflite, say, timings, qopts, dynamic_batch,
                               heads_first)
        timings["total"] = time.perf_counter() - t_start
        result.report["timings_seconds"] = {k: round(v, 4) for k, v in timings.items()}
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump(_json_safe(result.report), f, indent=2, allow_nan=False)
        out.commit(os.listdir(tmp))
        where = os.path.abspath(output_dir)
        result.paths = {k: os.path.join(where, os.path.basename(v)) for k, v in result.paths.items()}
        result.paths["report"] = os.path.join(where, "report.json")
        return result
    finally:
        out.discard()


def _convert_into(tmp, source, example_inputs, output_dir, input_shapes, inputs, keep_io_layout, plugins,
                  disable_passes, verify, atol, seed, want_tflite, say, timings, qopts=None, dynamic_batch=False,
                  heads_first=False) -> ConvertResult:
    t = time.perf_counter()
    registry = builtin_registry(plugins)
    timings["load_plugins"] = time.perf_counter() - t

    t = time.perf_counter()
    with stage("load source"):
        model, src_info = _resolve_source(source, example_inputs, input_shapes, tmp, dynamic_batch)
        check_weights(model)
        graph = from_onnx(model)
    src_info["opset"] = dict(graph.model_meta.get("opset_import", [])).get("", dict(graph.model_meta.get("opset_import", [])).get("ai.onnx"))
    # older opsets (attribute axes, Upsample, spatial BN, ...) are read by the emitters and
    # transpose handlers themselves rather than rewritten by onnx.version_converter
    src_info["old_forms"] = "handled directly (no version conversion)"
    timings["load"] = time.perf_counter() - t
    say(f"source: {src_info.get('path') or src_info.get('spec') or src_info['kind']} ({len(graph)} nodes)")

    # every op must be emittable before any work is done
    from graph_convert.tf.emitter import missing_emitters

    missing = missing_emitters(graph, registry.emitters)
    if missing:
        raise UnsupportedOpsError(missing)

    shape_overrides = {}
    if src_info["kind"] != "pytorch":
        for name, dims in input_shapes:
            target = name if name is not None else (graph.inputs[0] if len(graph.inputs) == 1 else None)
            if target is None or target not in graph.inputs:
                raise ConvertError(f"--input-shape: {'name the input' if target is None else f'no model input named {target!r}'} (inputs: {graph.inputs})")
            have = graph.shape(target)
            if have is not None and (len(have) != len(dims) or any(isinstance(h, int) and h > 0 and h != d for h, d in zip(have, dims))):
                shown = ",".join(str(h) if isinstance(h, int) and h > 0 else str(h or "?") for h in have)
                raise ConvertError(f"--input-shape {target}={','.join(map(str, dims))}: the model's input {target!r} has shape "
                                   f"[{shown}]; only its symbolic dims can be set")
            shape_overrides[target] = dims
    user_feeds = None
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        user_feeds = check_user_inputs(graph, read_npz(path, "--inputs"), f"--inputs {path}")
    elif inputs is not None:
        user_feeds = check_user_inputs(graph, inputs, "inputs")

    qplan = None
    if qopts is not None:  # quantization data and names are checked before any conversion work
        qplan = Q.prepare(qopts, graph, shape_overrides, seed)

    # dynamic batch: asked for, or the source's own symbolic batch dim (then kept when it can be)
    batch_names = D.batch_inputs(model, force=dynamic_batch)
    if dynamic_batch:
        if not batch_names:
            raise ConvertError("--dynamic-batch: the model has no input with a batch dim (every input is a scalar)")
        for clash, what in ((user_feeds is not None, "--inputs"), (qopts is not None, "--quantize")):
            if clash:
                raise ConvertError(f"--dynamic-batch cannot be combined with {what} (verification runs on generated batches "
                                   f"of {D.B1} and {D.B2}; quantized models are written with a static batch)")
    auto_dynamic = (not dynamic_batch and batch_names and user_feeds is None and qopts is None
                    and not any(n in shape_overrides for n in batch_names))
    dyn_info: dict[str, Any] | None = None
    view = None
    options = {"keep_io_layout": keep_io_layout, "heads_first": heads_first}

    def rewrite(static_model, feeds=None, graph=None):
        return _rewrite(static_model, registry, disable_passes, options, verify, atol, seed, shape_overrides, feeds, timings, graph)

    if dynamic_batch or auto_dynamic:
        def at_batch(b):
            try:
                return rewrite(D.with_batch(model, batch_names, b, shape_overrides))
            except (VerificationError, PassError, UnsupportedOpsError):
                raise
            except ConvertError as e:  # the source itself fails at this batch size
                raise D.DynamicBatchError(f"at batch {b}: {e} (is the batch size fixed inside the model, e.g. a Reshape "
                                          f"to a constant shape? export it with a dynamic batch)") from None

        try:
            graph, verifier, records, checked = at_batch(D.B1)
            graph2, verifier2, _, _ = at_batch(D.B2)
            view = D.batch_view(graph, graph2, batch_names)
            dyn_info = {"inputs": batch_names, "requested": "--dynamic-batch" if dynamic_batch else "symbolic batch dim in the source model",
                        "kept": True, "converted_at": [D.B1, D.B2], **view.stats}
        except D.DynamicBatchError as e:
            if dynamic_batch:
                raise
            say(f"warning: the batch stays static (1): {e}")
            dyn_info = {"inputs": batch_names, "requested": "symbolic batch dim in the source model", "kept": False, "reason": str(e)}
            graph, verifier, records, checked = rewrite(D.with_batch(model, batch_names, 1, shape_overrides))
            view = None
    else:
        graph, verifier, records, checked = rewrite(model, user_feeds, graph)

    missing = missing_emitters(graph, registry.emitters)
    if missing:
        raise UnsupportedOpsError(missing)

    t = time.perf_counter()
    with stage("write model.rewritten.onnx"):
        rewritten = to_onnx(graph)
        rewritten_path = os.path.join(tmp, "model.rewritten.onnx")
        onnx.save(rewritten, rewritten_path)
        try:
            onnx.checker.check_model(rewritten_path)
        except onnx.checker.ValidationError as e:
            raise VerificationError(f"model.rewritten.onnx fails onnx.checker: {str(e).splitlines()[0]}", "rewritten-onnx") from None
    # the same lowering was checked at the end of the passes (unless nothing changed or --verify none)
    rewritten_figs = checked if checked is not None else verifier.check_graph(graph, "rewritten ONNX")
    timings["verify_rewritten"] = time.perf_counter() - t

    # TF
    from graph_convert.tf.emitter import build_function
    from graph_convert.tf.writer import convert_tflite, run_tf, run_tflite, save_saved_model, tflite_op_counts

    t = time.perf_counter()
    emitters, scopes = registry.emitters, {}
    if qplan is not None:  # TF op names carry their node's name, so TFLite layers map back to nodes
        emitters, scopes = Q.scoped_emitters(registry.emitters, graph)
    from graph_convert.tf.ops import take_tflite_gaps

    take_tflite_gaps()  # forget forms traced by earlier conversions in this process
    with stage("emit TensorFlow"):
        module, concrete, in_names, out_names = build_function(graph, emitters, batch=view)
    timings["tf_trace"] = time.perf_counter() - t
    # forms TF runs but TFLite has no builtin kernel for: named now, not as a converter crash later
    gaps = [{"node": n, "op_type": op, "reason": why} for n, op, why in take_tflite_gaps()]
    if gaps and want_tflite:
        shown = "; ".join(f"node {g['node']!r} ({g['op_type']}): {g['reason']}" for g in gaps[:10])
        more = f" and {len(gaps) - 10} more" if len(gaps) > 10 else ""
        raise ConvertError(f"TFLite has no builtin kernel for {len(gaps)} node(s): {shown}{more} "
                           f"(--no-tflite writes the SavedModel only)")

    def tf_run(feeds):
        with stage("run TensorFlow"):
            out = run_tf(concrete, in_names, to_rewritten_layout(feeds, graph.io_perms), graph.inputs)
        return to_source_layout({y: out[n] for y, n in zip(graph.outputs, out_names)}, graph.io_perms)

    t = time.perf_counter()
    tf_figs = verifier.check(tf_run, "TensorFlow")
    # a dynamic batch is proven at the other batch sizes too: B2 (the second conversion) and 1
    extra = []
    if view is not None:
        draws1 = [Draw(d.label, {k: (v[:1] if k in batch_names else v) for k, v in d.feeds.items()}) for d in verifier.draws]
        verifier1 = Verifier(D.with_batch(model, batch_names, 1, shape_overrides), draws1, atol)
        extra = [(D.B2, verifier2), (1, verifier1)]
        dyn_info["verification"] = {}
    for b, ver in extra:
        dyn_info["verification"][f"batch {b}"] = {"tensorflow": _figs(ver.check(tf_run, f"TensorFlow at batch {b}"))}
    timings["verify_tf"] = time.perf_counter() - t
    sm_dir = os.path.join(tmp, "saved_model")
    t = time.perf_counter()
    with stage("write SavedModel"):
        save_saved_model(module, concrete, sm_dir)
    timings["saved_model"] = time.perf_counter() - t
    paths = {"saved_model": sm_dir, "rewritten_onnx": rewritten_path}

    warnings = [{"output": name, "warning": f"{why}: the check on it proves little"}
                for name, why in verifier.input_independent_outputs().items()]
    for w in warnings:
        say(f"warning: output {w['output']!r}: {w['warning']}")
    report: dict[str, Any] = {
        "graph_convert_version": __version__,
        "source": src_info,
        "io": {
            "inputs": [{"name": x, "tf_name": n, "shape": _io_shape(graph, view, x), "layout_perm": list(graph.io_perms.get(x, [])) or None} for x, n in zip(graph.inputs, in_names)],
            "outputs": [{"name": y, "tf_name": n, "shape": _io_shape(graph, view, y), "layout_perm": list(graph.io_perms.get(y, [])) or None} for y, n in zip(graph.outputs, out_names)],
            "keep_io_layout": keep_io_layout,
        },
        "plugins": registry.sources,
        "passes": [r.as_dict() for r in records],
        "rewritten_graph": {"nodes": len(graph), "transposes": graph.count("Transpose"), "transposes_left": _transposes_left(graph)},
        "verification": {"rule": VERIFY_RULE, "atol": atol, "draws": verifier.draw_labels, "notes": verifier.notes,
                         "warnings": warnings, "rewritten_onnx": _figs(rewritten_figs), "tensorflow": _figs(tf_figs)},
        "tflite_gaps": gaps,
        "dynamic_batch": dyn_info if dyn_info is not None else {"kept": False, "reason": "static batch (no --dynamic-batch, no symbolic batch dim)"},
    }
    if want_tflite:
        tfl = os.path.join(tmp, "model_float32.tflite")
        t = time.perf_counter()
        with stage("convert to TFLite"):
            convert_tflite(concrete, module, tfl)
        timings["tflite_convert"] = time.perf_counter() - t

        def lite_run(feeds):
            rw = to_rewritten_layout(feeds, graph.io_perms)
            with stage("run TFLite"):
                out = run_tflite(tfl, {n: rw[x] for x, n in zip(graph.inputs, in_names)})
            return to_source_layout({y: out[n] for y, n in zip(graph.outputs, out_names)}, graph.io_perms)

        t = time.perf_counter()
        lite_figs = verifier.check(lite_run, "TFLite float32")
        for b, ver in extra:
            dyn_info["verification"][f"batch {b}"]["tflite_float32"] = _figs(ver.check(lite_run, f"TFLite float32 at batch {b}"))
        timings["verify_tflite"] = time.perf_counter() - t
        with stage("read TFLite ops"):
            ops = tflite_op_counts(tfl)
        report["verification"]["tflite_float32"] = _figs(lite_figs)
        report["tflite"] = {"path": "model_float32.tflite", "bytes": os.path.getsize(tfl), "transpose_ops": ops.get("TRANSPOSE", 0),
                            "total_ops": sum(ops.values()), "ops": dict(sorted(ops.items()))}
        paths["tflite_float32"] = tfl
        if qplan is not None:
            t = time.perf_counter()
            with stage("quantize"):
                report["quantization"], qpaths = Q.run(qplan, out_dir=tmp, sm_dir=sm_dir, float_tflite=tfl, source_model=model, graph=graph,
                                                       in_names=in_names, out_names=out_names, scopes=scopes, say=say)
            paths.update(qpaths)
            timings["quantize"] = time.perf_counter() - t
    return ConvertResult(output_dir, report, paths)


def _rewrite(model, registry, disable_passes, options, verify, atol, seed, shape_overrides, user_feeds, timings, graph=None):
    """Run the passes on ``model`` (or its already loaded ``graph``) with ORT verification;
    returns (graph, verifier, records, the final graph's figures when they were checked already)."""
    graph = from_onnx(model) if graph is None else graph
    draws = make_draws(graph, seed, shape_overrides, user_feeds)
    t = time.perf_counter()
    # with the user's arrays, a random draw the source itself cannot run on (indices out of
    # range, say) is dropped with a note; without them every draw must run
    verifier = Verifier(model, draws, atol, optional=tuple(range(1, len(draws))) if user_feeds is not None else ())
    timings["reference_ort"] = timings.get("reference_ort", 0.0) + time.perf_counter() - t
    pm = PassManager(registry, disabled=tuple(disable_passes), options=options)
    pristine = graph.copy()
    t = time.perf_counter()
    last: dict[str, Any] = {}  # figures of the latest check: of the final graph when nothing changed after it

    def check(stage):
        return lambda g, name: last.update(figs=verifier.check_graph(g, f"{stage} {name}"))

    check_phase = check("after phase") if verify == "phase" else None
    check_each = check("after pass") if verify == "each" else None
    try:
        records = pm.run(graph, check_each=check_each, check_phase=check_phase)
        if verify == "end" or (verify != "none" and "figs" not in last and any(r.changed for r in records)):
            last["figs"] = verifier.check_graph(graph, "rewritten graph")
    except VerificationError as e:
        if verify == "each":
            culprit = e.stage.replace("after pass ", "")
        else:  # bisect: replay from the source graph, checking after every pass
            culprit = _find_culprit(pristine, registry, disable_passes, options, verifier)
        detail = ""
        if culprit:
            g2 = pristine.copy()
            try:
                PassManager(registry, disabled=tuple(disable_passes), options=options).run(g2, check_each=_stop_after(culprit))
            except _Stop:
                pass
            tensor = first_diverging_tensor(model, g2, (verifier.failed_draw or verifier.draws[0]).feeds, atol)
            detail = f"; first diverging tensor: {tensor!r}" if tensor else ""
        raise VerificationError(f"{e} — first diverging pass: {culprit!r}{detail}", e.stage, culprit) from None
    timings["passes"] = timings.get("passes", 0.0) + time.perf_counter() - t
    return graph, verifier, records, last.get("figs")  # the rewritten graph's figures, when checked already


def _transposes_left(graph: Graph) -> list[dict[str, Any]]:
    """Each Transpose still in the graph, with the node that forced it (its reader or writer)."""
    out = []
    for n in graph.nodes:
        if n.op_type != "Transpose":
            continue
        users = [c.name + f" ({c.op_type})" for c in graph.consumers(n.outputs[0])]
        prod = graph.producer(n.inputs[0])
        out.append({"node": n.name, "perm": n.attr("perm"), "input_from": None if prod is None else f"{prod.name} ({prod.op_type})",
                    "read_by": users + (["graph output"] if graph.is_graph_output(n.outputs[0]) else [])})
    return out


class _Stop(Exception):
    pass


def _stop_after(name: str):
    def check(g, pass_name):
        if pass_name == name:
            raise _Stop()
    return check


def _find_culprit(pristine: Graph, registry, disable_passes, options, verifier: Verifier) -> str | None:
    g = pristine.copy()
    try:
        PassManager(registry, disabled=tuple(disable_passes), options=options).run(
            g, check_each=lambda gg, name: verifier.check_graph(gg, f"after pass {name}"))
    except VerificationError as e:
        return e.stage.replace("after pass ", "")
    except PassError as e:
        return e.pass_name
    return None
