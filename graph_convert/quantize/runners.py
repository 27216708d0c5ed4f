"""Run a TFLite model or the ONNX source on many samples (one run per sample, results stacked)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from graph_convert.quantize.data import count_runs
from graph_convert.checks.equivalence import ort_session


def run_tflite_many(model: bytes | str, runs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every sample; int8 inputs are quantized and int8 outputs dequantized with the model's
    own scale/zero point. ``runs``: {signature input name: (runs, *shape)} -> {output: (runs, *shape)}."""
    from graph_convert.backends.tensorflow.runner import interpreter  # loads TensorFlow: only when a model runs

    interp = interpreter(model, allocate=False)
    runner = interp.get_signature_runner("serving_default")
    ins, outs = runner.get_input_details(), runner.get_output_details()
    results: dict[str, list] = {k: [] for k in outs}
    for i in range(count_runs(runs)):
        feed = {}
        for k, d in ins.items():
            x = runs[k][i]
            if d["dtype"] in (np.int8, np.uint8) and x.dtype.kind == "f":
                s, z = d["quantization"]
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / s + z), info.min, info.max).astype(d["dtype"])
            feed[k] = x
        got = runner(**feed)
        for k, d in outs.items():
            y = np.asarray(got[k])
            if d["dtype"] in (np.int8, np.uint8):
                s, z = d["quantization"]
                y = (y.astype(np.float32) - z) * s
            results[k].append(y)
    return {k: np.stack(v) for k, v in results.items()}


def run_ort_many(model, runs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    acc: dict[str, list] = {n: [] for n in names}
    for i in range(count_runs(runs)):
        for n, y in zip(names, sess.run(names, {k: v[i] for k, v in runs.items()})):
            acc[n].append(y)
    return {k: np.stack(v) for k, v in acc.items()}
