"""ONNX node conformance (a developer tool): every official node test case through passes -> TF ->
TFLite, compared with the case's expected outputs. :mod:`cases` loads the cases and says which are
excluded and why, :mod:`harness` runs them (in worker processes), :mod:`table` keeps the baseline
and writes docs/CONFORMANCE.md; ``python -m graph_convert.conformance`` runs them all."""
from __future__ import annotations

from graph_convert.conformance.cases import CONSTANT_SLOTS, KNOWN_EXCLUSIONS, UNSUPPORTED_DTYPES, case_ops, freeze_constant_inputs, load_cases
from graph_convert.conformance.harness import STATUSES, CaseResult, Runner, compare_to_expected, run_cases
from graph_convert.conformance.table import (
    BASELINE_PATH,
    DOC_PATH,
    BaselineDiff,
    compare_with_baseline,
    load_baseline,
    main,
    onnx_ops,
    outcome,
    render_markdown,
    summarize,
    write_baseline,
)

__all__ = ["CONSTANT_SLOTS", "KNOWN_EXCLUSIONS", "UNSUPPORTED_DTYPES", "case_ops", "freeze_constant_inputs", "load_cases", "STATUSES",
           "CaseResult", "Runner", "compare_to_expected", "run_cases", "BASELINE_PATH", "DOC_PATH", "BaselineDiff",
           "compare_with_baseline", "load_baseline", "main", "onnx_ops", "outcome", "render_markdown", "summarize", "write_baseline"]
