"""The ONNX node conformance cases in CI: *every* case runs (about two minutes with two worker
processes on two cores) and is compared with the committed per-case baseline
``docs/conformance_baseline.json``. A case that passed there and no longer passes (or lost its
TFLite check) fails the run, named with its reason; a case that passes beyond the baseline is
reported as a warning, so the baseline can be regenerated (``python -m graph_convert.conformance``
rewrites it together with ``docs/CONFORMANCE.md``). Locally, ``-m "not full_conformance"`` skips
the full run; ``python -m graph_convert.conformance --check --match REGEX`` checks a few cases.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from graph_convert import conformance as C
from graph_convert.backends.tensorflow import ops

DOC = C.DOC_PATH


@pytest.fixture(scope="module")
def full_run() -> list[C.CaseResult]:
    return C.run_cases(jobs=2)


@pytest.mark.full_conformance
def test_no_case_that_passed_in_the_baseline_stops_passing(full_run):
    diff = C.compare_with_baseline(full_run, C.load_baseline())
    if diff.improved:
        warnings.warn(diff.improvements_text())
    if diff.regressed:
        pytest.fail(diff.regressions_text(), pytrace=False)


@pytest.mark.full_conformance
def test_every_emitter_op_has_a_passing_case(full_run):
    passing = {op for r in full_run if r.status == "pass" for op in r.ops}
    assert sorted(set(C.onnx_ops(ops.EMITTERS)) - passing) == []


def _result(name: str, status: str, tflite: str | None = None, reason: str = "") -> C.CaseResult:
    return C.CaseResult(name, ("Op",), status, tf="pass" if status == "pass" else "fail", tflite=tflite,
                        reason_class="TF: TF runtime error" if reason else "", reason=reason,
                        tflite_excluded="Op: no kernel" if tflite == "excluded" else "")


def test_baseline_comparison_names_every_regression_and_reports_improvements():
    baseline = {"kept": "pass", "broke": "pass", "lost_tflite": "pass", "tf_only_broke": "pass_tf_only",
                "gone": "pass", "fixed": "fail", "now_tflite": "pass_tf_only", "still_excluded": "excluded",
                "gone_excluded": "excluded"}
    results = [_result("kept", "pass", "pass"), _result("broke", "fail", reason="bias must be 1-dimensional"),
               _result("lost_tflite", "pass", "excluded"), _result("tf_only_broke", "unsupported"),
               _result("fixed", "pass", "pass"), _result("now_tflite", "pass", "pass"),
               _result("still_excluded", "excluded"), _result("brand_new", "pass", "excluded")]
    diff = C.compare_with_baseline(results, baseline)
    assert [(n, was, now) for n, was, now, _ in diff.regressed] == [
        ("broke", "pass", "fail"), ("gone", "pass", "not run"), ("lost_tflite", "pass", "pass_tf_only"),
        ("tf_only_broke", "pass_tf_only", "unsupported")]
    text = diff.regressions_text()
    assert text.startswith("4 conformance case(s) passed in the baseline and no longer pass:")
    assert "broke: pass -> fail (TF: TF runtime error: bias must be 1-dimensional)" in text
    assert "lost_tflite: pass -> pass_tf_only (TFLite excluded: Op: no kernel)" in text
    assert diff.improved == [("fixed", "fail", "pass"), ("now_tflite", "pass_tf_only", "pass"), ("brand_new", None, "pass_tf_only")]
    assert "regenerate" in diff.improvements_text() and "brand_new: not in baseline -> pass_tf_only" in diff.improvements_text()
    assert C.compare_with_baseline(results[:1], {"kept": "pass"}) == C.BaselineDiff()


def test_baseline_round_trip(tmp_path):
    results = [_result("a", "pass", "pass"), _result("b", "pass", "excluded"), _result("c", "not_claimed")]
    path = tmp_path / "baseline.json"
    C.write_baseline(results, str(path))
    assert C.load_baseline(str(path)) == {"a": "pass", "b": "pass_tf_only", "c": "not_claimed"}


def test_committed_baseline_and_table_agree():
    """Both come from one full run: the table's totals are the baseline's counts."""
    with open(DOC) as f:
        doc = f.read()
    totals = {m.group(1).split(" (")[0]: int(m.group(2)) for m in re.finditer(r"^\| ([a-z][^|]*?) \| (\d+) \|$", doc, flags=re.M)}
    outcomes = list(C.load_baseline().values())
    assert totals["pass"] == outcomes.count("pass") + outcomes.count("pass_tf_only")
    for status in ("fail", "excluded"):
        assert totals[status] == outcomes.count(status), status
    assert totals["unsupported form"] == outcomes.count("unsupported")
    assert totals["not claimed"] == outcomes.count("not_claimed")
    assert "test_gemm_transposeA" in C.load_baseline() and C.load_baseline()["test_gemm_transposeA"] == "pass"


def test_generated_table_lists_every_op_and_no_failure():
    with open(DOC) as f:
        doc = f.read()
    rows = dict(re.findall(r"^\| ([A-Za-z0-9_.:]+)( \*\*!\*\*)? \|", doc, flags=re.M))
    assert sorted(set(C.onnx_ops(ops.EMITTERS)) - set(rows)) == [], "regenerate docs/CONFORMANCE.md (python -m graph_convert.conformance)"
    assert [op for op, bad in rows.items() if bad] == []


def test_classification_before_running():
    runner = C.Runner()
    by = {c.name: c for c in C.load_cases(r"^(test_training_dropout|test_det_2d|test_cast_FLOAT_to_FLOAT8E4M3FN|test_identity_sequence)$")}
    assert runner.run(by["test_training_dropout"]).status == "excluded"
    assert runner.run(by["test_cast_FLOAT_to_FLOAT8E4M3FN"]).reason.startswith("FLOAT8E4M3FN")
    assert runner.run(by["test_identity_sequence"]).reason.startswith("sequence")
    r = runner.run(by["test_det_2d"])
    assert (r.status, r.reason) == ("not_claimed", "Det")


def test_compare_to_expected():
    e = np.array([1.0, 2.0, np.nan], np.float32)
    assert C.compare_to_expected(e.copy(), e, 1e-3, 1e-7) is None
    assert C.compare_to_expected(e * 1.01, e, 1e-3, 1e-7)[0] == "wrong values"
    assert C.compare_to_expected(e.astype(np.float64), e, 1e-3, 1e-7)[0] == "wrong dtype"
    assert C.compare_to_expected(e[:2], e, 1e-3, 1e-7)[0] == "wrong shape"
    assert C.compare_to_expected(np.array([1, 2]), np.array([1, 3]), 0, 0)[0] == "wrong values"
