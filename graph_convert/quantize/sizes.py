"""A quantized .tflite with free dims, checked at every size its float32 file was checked at.

The accuracy report (:mod:`graph_convert.quantize.variants`) measures a quantized file at the size
of its calibration and evaluation samples. A file that keeps ``-1`` dims claims every size, so it
is also run at each size of report.json ``dynamic.checks`` on that size's draws (the user's
``--inputs`` arrays at theirs) against ONNX Runtime float32, and judged by the rule below.

The rule (per output): the file runs at the size (after ``resize_tensor_input``), each output has
the source's shape, NaN/Inf only where the source has them, and the output's SQNR at that size is
no more than :data:`SIZE_MARGIN_DB` below its best SQNR over the sizes. The quantization noise is
a property of the weights and calibrated ranges, not of the size; a size where it is 2x larger in
amplitude (6 dB) is one where the calibrated ranges do not hold (a sum over a free axis that
saturates its int8 range at a longer sequence) or where the file computes something else.
Integer outputs have no noise: they are compared by the same rule's shape/NaN part only, and their
figures reported. The user's ``--inputs`` arrays are other data than the generated draws (whose
SQNR would differ at one size for that reason alone): they are run by the shape/NaN part, their
figures reported, and left out of the SQNR comparison. The threshold options (``--min-sqnr``, ``--min-top1``) stay on the evaluation
samples, which are the user's data; these draws are random.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from graph_convert.checks.equivalence import Figures, compare
from graph_convert.errors import VerificationError

SIZE_MARGIN_DB = 6.0

Run = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def figures_at(ver, run: Run, what: str) -> dict[str, Figures]:
    """``run`` on every draw of ``ver`` (one size): the worst draw's figures per output; a file
    that does not run, or an output of another shape or with NaN/Inf elsewhere, raises."""
    out: dict[str, Figures] = {}
    for d, ref in zip(ver.draws, ver.references):
        try:
            got = run(d.feeds)
        except Exception as e:
            msg = " ".join(str(e).split())
            raise VerificationError(f"{what}: does not run in the LiteRT interpreter ({type(e).__name__}: {msg[:300]})", what) from None
        for name, r in ref.items():
            f = compare(r, got[name], float("inf"))  # the figures; the only failures: shape, NaN/Inf placement
            if not f.ok:
                raise VerificationError(f"{what}: output {name!r} on the {d.label} inputs: {f.reason}", what)
            if name not in out or f.sqnr_db < out[name].sqnr_db:
                out[name] = f
    return out


def judge(per_size: Sequence[tuple[str, dict[str, Figures]]], float_outputs: set[str], what: str, fix: str = "") -> dict[str, float]:
    """The size rule over ``per_size`` ((sizes text, figures per output), ...): raises at the
    first size whose SQNR falls more than SIZE_MARGIN_DB below the output's best (``fix``: the
    options that fix the dims, for the message); returns each float output's best SQNR."""
    best: dict[str, float] = {}
    for name in float_outputs:
        vals = [(figs[name].sqnr_db, label) for label, figs in per_size if name in figs]
        if not vals:
            continue
        top, top_at = max(vals)
        best[name] = top
        for v, label in vals:
            if v < top - SIZE_MARGIN_DB:
                raise VerificationError(
                    f"{what}: output {name!r} at {label}: SQNR {v:.1f} dB against ONNX Runtime float32, more than "
                    f"{SIZE_MARGIN_DB:g} dB below its {top:.1f} dB at {top_at}: the quantized file does not hold at this "
                    f"size{f'; fix the dims with {fix}' if fix else ''}", what)
    return best


def summary(best: Mapping[str, float], sizes: Sequence[str], user: bool = False) -> dict[str, Any]:
    """report.json ``quantization.variants.<v>.sizes``: what was checked, by which rule (``user``:
    the ``--inputs`` arrays were run too, by the rule's run/shape/NaN part)."""
    out = {"checked_at": list(sizes), "rule": f"runs at every size; per output, SQNR vs ONNX Runtime float32 within "
                                              f"{SIZE_MARGIN_DB:g} dB of its best size",
           "margin_db": SIZE_MARGIN_DB, "best_sqnr_db": {k: round(v, 2) for k, v in best.items()}}
    if user:
        out["inputs"] = ("the --inputs arrays: run at their size, shapes and NaN/Inf checked, figures in their "
                         "dynamic.checks entry; not in the SQNR comparison (other data than the generated draws)")
    return out
