"""The quantization plan: options plus checked samples, with evaluation samples held out, before any conversion work."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from graph_convert.errors import ConvertError
from graph_convert.quantize.data import InputSpec, count_runs, input_specs, load_samples, random_samples, take_runs
from graph_convert.quantize.options import QuantOptions

HOLDOUT_SHARE = 0.2  # of the calibration samples, kept out of calibration for the accuracy report
RANDOM_CALIBRATION_SAMPLES = 64
RANDOM_EVAL_SAMPLES = 32


@dataclass
class QuantPlan:
    """Options plus the checked samples (source layout, ``{name: (runs, *input_shape)}``)."""

    options: QuantOptions
    specs: list[InputSpec]
    calibration: dict[str, np.ndarray] | None
    evaluation: dict[str, np.ndarray]
    calibration_info: dict[str, Any]
    evaluation_info: dict[str, Any]
    source_nodes: set[str]


def prepare(opts: QuantOptions, graph, shape_overrides: Mapping[str, tuple] | None = None, seed: int = 0,
            random_shapes: Mapping[str, tuple] | None = None) -> QuantPlan:
    """Everything that can be checked before conversion work: node names, calibration and
    evaluation data (loaded, checked, split). ``graph`` is the source graph, before any pass.
    ``random_shapes``: the input shapes random samples take where the inputs have free dims (the
    user's samples may have any size there, one size per input)."""
    specs = input_specs(graph, shape_overrides)
    random_specs = input_specs(graph, random_shapes) if random_shapes else specs
    nodes = {n.name for n in graph.nodes}
    for name in opts.float_ops:
        if name not in nodes:
            close = sorted(n for n in nodes if name.lower() in n.lower())[:5]
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ConvertError(f"--float-ops {name!r}: no node of that name in the model{hint}")
    calib, cinfo = None, {"source": None}
    if isinstance(opts.calibration, str) and opts.calibration == "random":
        calib = random_samples(random_specs, RANDOM_CALIBRATION_SAMPLES, seed + 1)
        cinfo = {"source": "random", "warning": "calibrated on random data: int8-full ranges do not reflect real inputs"}
    elif opts.calibration is not None:
        calib, cinfo = load_samples(opts.calibration, specs, opts, "--calibration")
    if opts.eval_data is not None:
        evals, einfo = load_samples(opts.eval_data, specs, opts, "--eval-data")
        einfo["meaningful"] = True
    elif calib is not None and cinfo["source"] != "random" and "int8-full" not in opts.variants:
        evals = calib  # no variant calibrates, so no sample was seen by the quantizer
        einfo = {"source": "the --calibration samples (no requested variant calibrates)", "meaningful": True}
    elif calib is not None and cinfo["source"] != "random":
        n = count_runs(calib)
        if n < 2:
            raise ConvertError(f"--calibration: {n} sample — too few to hold some out for the accuracy report; "
                               "give at least 2 samples or pass --eval-data")
        k = max(1, int(round(n * HOLDOUT_SHARE)))
        order = np.random.default_rng(seed).permutation(n)
        evals, calib = take_runs(calib, np.sort(order[:k])), take_runs(calib, np.sort(order[k:]))
        einfo = {"source": f"held out from --calibration ({k} of {n} samples, seed {seed}; not used for calibration)", "meaningful": True}
    else:
        evals = random_samples(random_specs, RANDOM_EVAL_SAMPLES, seed + 2)
        einfo = {"source": "random", "meaningful": False}
    if calib is not None:
        cinfo["samples"] = count_runs(calib)
    einfo["samples"] = count_runs(evals)
    if not einfo["meaningful"]:
        einfo["warning"] = "accuracy figures are MEANINGLESS: evaluated on random inputs, not real data (pass --eval-data)"
    elif cinfo.get("source") == "random" and "int8-full" in opts.variants:
        einfo["meaningful"] = False
        einfo["warning"] = "int8-full figures are MEANINGLESS: calibrated on random data (--calibration random)"
    return QuantPlan(opts, specs, calib, evals, cinfo, einfo, nodes)
