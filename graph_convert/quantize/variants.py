"""The quantize stage: write every requested variant and measure it against ONNX Runtime float32."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from graph_convert.errors import ConvertError, VerificationError
from graph_convert.quantize.converter import convert_model, make_converter
from graph_convert.quantize.data import count_runs
from graph_convert.quantize.full_integer import full_integer
from graph_convert.quantize.metrics import is_classifier, lite_figures
from graph_convert.quantize.options import VARIANTS
from graph_convert.quantize.plan import QuantPlan
from graph_convert.quantize.runners import run_ort_many
from graph_convert.quantize.scopes import NodeNames
from graph_convert.quantize.thresholds import QuantizationThresholdError, check_thresholds
from graph_convert.quantize.tflite_info import io_dtypes, op_counts, output_tensor_names
from graph_convert.checks.equivalence import to_rewritten_layout


def run(plan: QuantPlan, *, out_dir: str, sm_dir: str, float_tflite: str, source_model, graph, in_names: Sequence[str],
        out_names: Sequence[str], scopes: Mapping[str, str], say=lambda m: None) -> tuple[dict[str, Any], dict[str, str]]:
    """Write the requested variants into ``out_dir``, evaluate them against ORT float32 on the
    held-out samples, and return ``(report section, {paths key: path})``. Raises
    :class:`QuantizationThresholdError` when a variant misses ``--min-sqnr`` / ``--min-top1``."""
    import tensorflow as tf

    opts = plan.options
    rewritten_nodes = {n.name for n in graph.nodes}
    for name in opts.float_ops:
        if name not in rewritten_nodes:
            raise ConvertError(f"--float-ops {name!r}: the rewrite passes folded this node into its neighbours; "
                               "name a node of model.rewritten.onnx instead")

    reference = run_ort_many(source_model, plan.evaluation)
    eval_rw = _signature_feeds(plan.evaluation, graph, in_names)
    calib_rw = None if plan.calibration is None else _signature_feeds(plan.calibration, graph, in_names)

    def representative():
        for i in range(count_runs(calib_rw)):
            yield {k: v[i] for k, v in calib_rw.items()}

    outputs_known = {y: ("classifier" if is_classifier(reference[y]) else "tensor") for y in graph.outputs}
    if opts.min_top1 is not None and "classifier" not in outputs_known.values():
        raise ConvertError(f"--min-top1: the model has no classifier output (a 2-D output of class scores); outputs: "
                           f"{', '.join(f'{y} {tuple(reference[y].shape[1:])}' for y in graph.outputs)}")

    section: dict[str, Any] = {
        "quantizer": f"TensorFlow {tf.__version__} post-training quantization (tf.lite.TFLiteConverter)",
        "calibration": plan.calibration_info,
        "evaluation": plan.evaluation_info,
        "reference": "source model in ONNX Runtime, float32",
        "variants": {},
    }
    paths: dict[str, str] = {}
    section["float32"] = {"path": os.path.basename(float_tflite), "bytes": os.path.getsize(float_tflite),
                          "outputs": lite_figures(float_tflite, eval_rw, reference, graph, in_names, out_names, "float32")}
    names = NodeNames(scopes, output_tensor_names(float_tflite, graph, out_names))

    for variant in opts.variants:
        fname, key, what = VARIANTS[variant]
        path = os.path.join(out_dir, fname)
        say(f"quantizing: {variant} ({what})")
        entry: dict[str, Any] = {"path": fname, "what": what}
        if variant == "int8-full":
            data, extra = full_integer(plan, sm_dir, representative, eval_rw, reference, graph, in_names, out_names, names)
            entry.update(extra)
        else:
            data = convert_model(make_converter(sm_dir, variant, None, False), variant)
        with open(path, "wb") as f:
            f.write(data)
        entry["bytes"] = len(data)
        entry["bytes_vs_float32"] = round(len(data) / max(1, section["float32"]["bytes"]), 4)
        entry["io_dtypes"] = io_dtypes(path)
        entry["ops"] = op_counts(path)
        entry["outputs"] = lite_figures(path, eval_rw, reference, graph, in_names, out_names, variant)
        bad = [y for y, f in entry["outputs"].items() if not f["finite"] and np.isfinite(reference[y]).all()]
        if bad:
            raise VerificationError(f"TFLite {variant}: output {bad[0]!r} holds NaN/Inf where the source model's is finite", f"TFLite {variant}")
        section["variants"][variant] = entry
        paths[key] = path

    section["thresholds"] = {"min_sqnr_db": opts.min_sqnr, "min_top1_pct": opts.min_top1}
    failures = check_thresholds(section["variants"], opts.min_sqnr, opts.min_top1)
    section["thresholds"]["failures"] = failures
    if failures:
        raise QuantizationThresholdError(failures)
    return section, paths


def _signature_feeds(runs: Mapping[str, np.ndarray], graph, in_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Samples in the source layout keyed by ONNX input -> the rewritten layout keyed by TFLite signature input."""
    tf_of = dict(zip(graph.inputs, in_names))
    return {tf_of[k]: v for k, v in to_rewritten_layout(runs, graph.io_perms, batched=True).items()}
