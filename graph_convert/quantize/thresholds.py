"""--min-sqnr / --min-top1: the failures of a report's variants, and the error that stops the conversion."""
from __future__ import annotations

from typing import Any, Mapping

from graph_convert.errors import GraphConvertError


class QuantizationThresholdError(GraphConvertError):
    """A quantized variant fell below ``--min-sqnr`` / ``--min-top1`` (the CLI exits 5)."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("quantized model below threshold: " + "; ".join(failures))


def check_thresholds(variants: Mapping[str, Any], min_sqnr: float | None, min_top1: float | None) -> list[str]:
    out = []
    for v, entry in variants.items():
        for y, f in entry["outputs"].items():
            if min_sqnr is not None and f["sqnr_db"] < min_sqnr:
                out.append(f"{v} output {y!r} SQNR {f['sqnr_db']:.1f} dB < --min-sqnr {min_sqnr:g}")
            if min_top1 is not None and "top1_agreement_pct" in f and f["top1_agreement_pct"] < min_top1:
                out.append(f"{v} output {y!r} top-1 agreement {f['top1_agreement_pct']:.1f}% < --min-top1 {min_top1:g}")
    return out
