"""The conformance baseline (per-case outcomes of the last full run), the per-op table of
docs/CONFORMANCE.md, and ``python -m graph_convert.conformance``."""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from graph_convert.conformance.cases import load_cases
from graph_convert.conformance.harness import STATUSES, CaseResult, run_cases

# --- baseline: per-case outcomes of the last full run ---------------------------------------------
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC_PATH = os.path.join(_ROOT, "docs", "CONFORMANCE.md")
BASELINE_PATH = os.path.join(_ROOT, "docs", "conformance_baseline.json")
PASS, PASS_TF_ONLY = "pass", "pass_tf_only"


def outcome(r: CaseResult) -> str:
    """The one word a baseline keeps per case: ``pass`` (TF and TFLite), ``pass_tf_only`` (TF
    passed, TFLite excluded by a declared gap), else the case's status. A case going from ``pass``
    to ``pass_tf_only`` lost its TFLite check, so it counts as a regression too."""
    if r.status == "pass":
        return PASS if r.tflite == "pass" else PASS_TF_ONLY
    return r.status


def _rank(o: str | None) -> int:
    return {PASS: 2, PASS_TF_ONLY: 1}.get(o or "", 0)


def write_baseline(results: Iterable[CaseResult], path: str = BASELINE_PATH) -> None:
    """``{"versions": ..., "cases": {name: outcome}}``, one case per line so a diff reads well."""
    import json

    cases = {r.name: outcome(r) for r in results}
    lines = ["{", f' "versions": {json.dumps(_versions(), sort_keys=True)},', ' "cases": {']
    items = sorted(cases.items())
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}{',' if i < len(items) - 1 else ''}" for i, (k, v) in enumerate(items)]
    lines += [" }", "}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def load_baseline(path: str = BASELINE_PATH) -> dict[str, str]:
    """Case name -> outcome, as :func:`write_baseline` wrote it."""
    import json

    with open(path) as f:
        return dict(json.load(f)["cases"])


@dataclass
class BaselineDiff:
    """``regressed``: (case, baseline outcome, outcome now, reason) for every case that passed in the
    baseline and passes less now (or was not run: a case missing from this onnx version counts);
    ``improved``: (case, baseline outcome, outcome now) for cases that pass more than the baseline
    says (regenerate it: ``python -m graph_convert.conformance``)."""

    regressed: list[tuple[str, str, str, str]] = field(default_factory=list)
    improved: list[tuple[str, str | None, str]] = field(default_factory=list)

    def regressions_text(self) -> str:
        lines = [f"{len(self.regressed)} conformance case(s) passed in the baseline and no longer pass:"]
        lines += [f"  {name}: {was} -> {now}" + (f" ({why})" if why else "") for name, was, now, why in self.regressed]
        return "\n".join(lines)

    def improvements_text(self) -> str:
        lines = [f"{len(self.improved)} conformance case(s) pass beyond the baseline; regenerate it with "
                 "`python -m graph_convert.conformance`:"]
        lines += [f"  {name}: {was or 'not in baseline'} -> {now}" for name, was, now in self.improved]
        return "\n".join(lines)


def compare_with_baseline(results: Iterable[CaseResult], baseline: dict[str, str]) -> BaselineDiff:
    """How ``results`` differ from ``baseline`` (see :class:`BaselineDiff`)."""
    diff = BaselineDiff()
    now = {r.name: r for r in results}
    for name, was in sorted(baseline.items()):
        r = now.get(name)
        if r is None:
            if _rank(was):
                diff.regressed.append((name, was, "not run", "no such case in this run"))
            continue
        o = outcome(r)
        if _rank(o) < _rank(was):
            why = f"{r.reason_class}: {r.reason}" if r.reason else (f"TFLite excluded: {r.tflite_excluded}" if r.tflite_excluded else "")
            diff.regressed.append((name, was, o, why))
        elif _rank(o) > _rank(was):
            diff.improved.append((name, was, o))
    for name in sorted(set(now) - set(baseline)):
        o = outcome(now[name])
        if _rank(o):
            diff.improved.append((name, None, o))
    return diff


# --- report --------------------------------------------------------------------------------------
@dataclass
class OpSummary:
    """One op's cases: ``tf_cases`` ran in TF, ``tflite_cases`` were due in TFLite (not excluded)."""

    op: str
    tf_cases: int = 0
    tf_pass: int = 0
    tflite_cases: int = 0
    tflite_pass: int = 0
    unsupported: int = 0
    excluded: int = 0
    tflite_excluded: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.tf_pass == self.tf_cases and self.tflite_pass == self.tflite_cases


def onnx_ops(emitter_ops: Iterable[str]) -> list[str]:
    """The ONNX ops among the emitters: ops of another domain have no ONNX conformance case (our
    own ``graph_convert::`` ops, written by the fusion passes: tests/test_fused_ops.py; ONNX
    Runtime's ``com.microsoft::`` quantized ops: tests/test_quantized_onnx.py)."""
    return sorted(op for op in emitter_ops if "::" not in op)


def summarize(results: Iterable[CaseResult], emitter_ops: Iterable[str]) -> dict[str, OpSummary]:
    """Per emitter-table op: its claimed cases and how many passed in TF and TFLite."""
    table = {op: OpSummary(op) for op in sorted(emitter_ops)}
    for r in results:
        if r.status == "not_claimed":
            continue
        for op in r.ops:
            s = table.get(op)
            if s is None:
                continue
            if r.status in ("excluded", "unsupported"):
                s.excluded += r.status == "excluded"
                s.unsupported += r.status == "unsupported"
                continue
            s.tf_cases += 1
            s.tf_pass += r.tf == "pass"
            if r.tflite == "excluded":
                s.tflite_excluded += 1
            else:
                s.tflite_cases += 1
                s.tflite_pass += r.tflite == "pass"
            if r.status == "fail":
                s.failed.append(r.name)
    return table


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("onnx", "onnxruntime", "tensorflow-cpu", "tensorflow", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _grouped(pairs) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for why, name in pairs:
        groups[why].append(name)
    return [f"- {why} ({len(names)}): " + ", ".join(f"`{n}`" for n in names) for why, names in sorted(groups.items())] or ["None."]


def _failure_sections(results: list[CaseResult]) -> list[str]:
    """Failures, unsupported forms, exclusions and ops not claimed, as markdown lines."""
    lines = ["", "## Failures", ""]
    fails: dict[str, list[CaseResult]] = defaultdict(list)
    for r in results:
        if r.status == "fail":
            fails[r.reason_class].append(r)
    for cls, rs in sorted(fails.items()):
        lines += [f"### {cls} ({len(rs)})", ""] + [f"- `{r.name}`: {r.reason}" for r in rs] + [""]
    if not fails:
        lines.append("None.")
    lines += ["", "## Unsupported forms (declined by the emitter)", ""]
    lines += [f"- `{r.name}`: {r.reason}" for r in results if r.status == "unsupported"] or ["None."]
    lines += ["", "## Exclusions", "", "Cases of claimed ops that TF cannot express, with the reason.", ""]
    lines += _grouped((r.reason, r.name) for r in results if r.status == "excluded")
    lines += ["", "## TFLite-only exclusions", "", "Checked in TF; not converted to TFLite, for the reason given.", ""]
    lines += _grouped((r.tflite_excluded, r.name) for r in results if r.tflite == "excluded")
    nc = Counter(op for r in results if r.status == "not_claimed" for op in r.reason.split(", "))
    lines += ["", "## Not claimed", "", "Ops without an emitter, with the number of cases that need them:", "",
              ", ".join(f"{op} ({n})" for op, n in sorted(nc.items())) or "None.", ""]
    return lines


def render_markdown(results: list[CaseResult], emitter_ops: Iterable[str], seconds: float, jobs: int) -> str:
    emitter_ops = sorted(emitter_ops)
    table = summarize(results, emitter_ops)
    by_status = Counter(r.status for r in results)
    ran = [r for r in results if r.status in ("pass", "fail")]
    tf_ok = sum(r.tf == "pass" for r in ran)
    lite_due = [r for r in ran if r.tflite != "excluded"]
    lite_ok = sum(r.tflite == "pass" for r in lite_due)
    v = _versions()
    lines = [
        "# ONNX node conformance",
        "",
        "Generated by `python -m graph_convert.conformance` (see `graph_convert/conformance/harness.py`); do not edit by hand.",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- cases: all {len(results)} of `onnx.backend.test.case.node.collect_testcases(None)`; "
        f"full run {seconds:.0f} s with {jobs} worker process(es)",
        "",
        "Each case runs through the pass pipeline (`keep_io_layout`), the TF emitter and the TFLite",
        "converter (in memory, `TFLITE_BUILTINS` only, run in the LiteRT interpreter), and the TF and",
        "TFLite outputs are compared with the case's expected outputs: same dtype, same shape and",
        "`|got - expected| <= atol + rtol * |expected|` with the case's own `rtol`/`atol` (NaN matches NaN).",
        "TFLite is skipped when TF already failed. Graph inputs read only as shapes, axes, pads, sizes,",
        "scales or weights (`CONSTANT_SLOTS` in the harness) are given as initializers holding the",
        "case's data, the way exporters give them.",
        "",
        "## Totals",
        "",
        "| status | cases |",
        "|---|---:|",
    ]
    meaning = {"pass": "pass (TF, and TFLite unless excluded for TFLite)", "fail": "fail (wrong answer or crash)",
               "unsupported": "unsupported form (the emitter declines it with a ConvertError)",
               "excluded": "excluded (TF cannot express it)", "not_claimed": "not claimed (an op without emitter)"}
    for s in STATUSES:
        lines.append(f"| {meaning[s]} | {by_status.get(s, 0)} |")
    lines += ["", f"Claimed cases that ran: {len(ran)}. TF passed {tf_ok}/{len(ran)}; TFLite passed {lite_ok}/{len(lite_due)} "
              f"({len(ran) - len(lite_due)} more are excluded for TFLite only, see below).", ""]

    lines += ["## Per op", "",
              "Every op of the emitter table. A case counts for each op in it (function-expanded `*_expanded`",
              "cases count for all their ops). TF column: passed/ran; TFLite column: passed/due (ran minus",
              "TFLite exclusions). Ops marked **!** have a failing case.", "",
              "| op | TF | TFLite | TFLite-excluded | unsupported | excluded |", "|---|---:|---:|---:|---:|---:|"]
    for op in emitter_ops:
        s = table[op]
        mark = "" if s.clean else " **!**"
        lines.append(f"| {op}{mark} | {s.tf_pass}/{s.tf_cases} | {s.tflite_pass}/{s.tflite_cases} | {s.tflite_excluded} | {s.unsupported} | {s.excluded} |")

    lines += _failure_sections(results)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph_convert.conformance", description=__doc__.splitlines()[0])
    ap.add_argument("--match", help="only cases whose name matches this regex (prints, does not write the doc)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--output", default=DOC_PATH, help="the table to write (full runs only)")
    ap.add_argument("--baseline", default=BASELINE_PATH, help="per-case outcomes to write (full runs) or to check against (--check)")
    ap.add_argument("--check", action="store_true", help="compare with --baseline instead of writing it and the table; "
                    "exit 1 when a case that passed there no longer passes")
    ap.add_argument("--show", default="fail", help="statuses to list per case (comma-separated, or 'all')")
    ap.add_argument("--json", help="also write every case's result to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.perf_counter()
    cases = load_cases(args.match)

    def progress(i, n, r):
        if i % 100 == 0 or i == n:
            print(f"  {i}/{n} cases ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    results = run_cases(cases, jobs=args.jobs, isolate=True, progress=progress)
    seconds = time.perf_counter() - t0
    from graph_convert.plugins import builtin_registry

    emitter_ops = onnx_ops(builtin_registry().emitters)
    show = set(STATUSES) if args.show == "all" else set(args.show.split(","))
    for r in results:
        if r.status in show:
            print(f"{r.status:12s} {r.name}: {r.reason_class}: {r.reason}" if r.reason else f"{r.status:12s} {r.name}")
    counts = Counter(r.status for r in results)
    slow = sorted(results, key=lambda r: -r.seconds)[:10]
    print("slowest: " + ", ".join(f"{r.name} {r.seconds:.1f} s" for r in slow), file=sys.stderr)
    print(f"{len(results)} cases in {seconds:.0f} s: " + ", ".join(f"{s} {counts.get(s, 0)}" for s in STATUSES))
    if args.json:
        import dataclasses
        import json

        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
    if args.check:
        diff = compare_with_baseline(results, load_baseline(args.baseline))
        if args.match is not None:  # only the cases that ran can be judged
            names = {r.name for r in results}
            diff.regressed = [d for d in diff.regressed if d[0] in names]
        if diff.improved:
            print(diff.improvements_text())
        if diff.regressed:
            print(diff.regressions_text())
            return 1
        print(f"no regression against {args.baseline}")
        return 0
    if args.match is None:
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(render_markdown(results, emitter_ops, seconds, args.jobs))
        write_baseline(results, args.baseline)
        print(f"wrote {args.output} and {args.baseline}")
    return 1 if counts.get("fail") else 0




