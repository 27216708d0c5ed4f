"""Accuracy figures of a quantized model against the float32 reference: SQNR, errors, cosine, top-1."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from graph_convert.errors import VerificationError
from graph_convert.quantize.runners import run_tflite_many
from graph_convert.checks.equivalence import to_source_layout

SQNR_CAP_DB = 200.0  # an exact match has infinite SQNR; the report caps it here


def sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power <= 0:
        return SQNR_CAP_DB
    if signal_power <= 0:
        return -SQNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal_power / noise_power), -SQNR_CAP_DB, SQNR_CAP_DB))


def is_classifier(y: np.ndarray) -> bool:
    """(runs, batch, classes) with more than one class: a 2-D model output read by argmax."""
    return y.ndim == 3 and y.shape[-1] > 1


def output_figures(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    if r.shape != g.shape:
        raise VerificationError(f"quantized output shape {g.shape[1:]} differs from the source's {r.shape[1:]}", "quantization")
    d = np.abs(r - g)
    den = float(np.linalg.norm(r) * np.linalg.norm(g))
    out = {
        "max_abs": float(d.max()) if d.size else 0.0,
        "mean_abs": float(d.mean()) if d.size else 0.0,
        "cosine": float(np.dot(r.ravel(), g.ravel()) / den) if den > 0 else (1.0 if not d.any() else 0.0),
        "sqnr_db": sqnr_db(float(np.sum(r * r)), float(np.sum(d * d))),
        "finite": bool(np.isfinite(g).all()),
    }
    if is_classifier(ref):
        out["top1_agreement_pct"] = float(np.mean(np.argmax(r, -1) == np.argmax(g, -1)) * 100.0)
    return out


def lite_figures(path_or_bytes, eval_rw_by_tf, reference, graph, in_names, out_names, what: str) -> dict[str, dict[str, Any]]:
    try:
        got = run_tflite_many(path_or_bytes, eval_rw_by_tf)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise VerificationError(f"TFLite {what}: the model does not run in the LiteRT interpreter ({msg[:300]})", f"TFLite {what}") from None
    by_onnx = {y: got[n] for y, n in zip(graph.outputs, out_names)}
    by_onnx = to_source_layout(by_onnx, graph.io_perms, batched=True)
    return {y: output_figures(reference[y], by_onnx[y]) for y in graph.outputs}
