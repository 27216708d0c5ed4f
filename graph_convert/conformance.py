"""ONNX node conformance: the official backend node test cases through passes -> TF -> TFLite.

Every case of ``onnx.backend.test.case.node.collect_testcases(None)`` is loaded into the IR, run
through the pass pipeline with its I/O layout kept, emitted as a ``tf.function`` and converted
in memory to TFLite (builtin ops only); both are compared with the case's expected outputs using
its own tolerances (``|got - expected| <= atol + rtol * |expected|``, dtypes and shapes exact).

A case is *excluded* when TF cannot express it (a dtype TF lacks, sequence/optional values, a
training-mode output, or a reason in :data:`KNOWN_EXCLUSIONS`); it is checked in TF only when the
emitters declare a *TFLite gap* for it (a dtype without TFLite kernel, +-inf constants), and it is
*unsupported* when an emitter declines the form with a ConvertError. Everything else must pass.

``python -m graph_convert.conformance`` runs all of them in worker processes and writes
``docs/CONFORMANCE.md`` and the per-case baseline ``docs/conformance_baseline.json``; ``--check``
runs all of them and compares with that baseline instead (exit 1 when a case that passed no
longer passes); ``--match REGEX`` runs a subset and prints it. :class:`Runner`,
:func:`run_cases` and :func:`compare_with_baseline` are what the tests use.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Inputs that exporters (torch.onnx, and our constant folding) give as constants: shapes, axes,
# pads, sizes, weights. A graph input read *only* at these (op, input index) slots is turned into
# an initializer holding the case's data, so the case exercises the path real models take.
CONSTANT_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
    "TopK": (1,), "CumSum": (1,), "Trilu": (1,), "Dropout": (1, 2), "OneHot": (1, 2),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
    "Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2, 3, 4),
    "CenterCropPad": (1,), "Col2Im": (1, 2),
}

# Element types the case cannot be expressed with in TF/TFLite (reason per type).
_NO_TF = "no such dtype in TensorFlow"
UNSUPPORTED_DTYPES: dict[int, str] = {
    TensorProto.FLOAT8E4M3FN: _NO_TF, TensorProto.FLOAT8E4M3FNUZ: _NO_TF, TensorProto.FLOAT8E5M2: _NO_TF,
    TensorProto.FLOAT8E5M2FNUZ: _NO_TF, TensorProto.UINT4: _NO_TF, TensorProto.INT4: _NO_TF,
    TensorProto.STRING: "string tensors: no TFLite builtin takes them (the emitters handle numbers only)",
    TensorProto.COMPLEX64: "complex tensors: TFLite builtin kernels do not take them",
    TensorProto.COMPLEX128: "complex tensors: TFLite builtin kernels do not take them",
}
for _name, _reason in (("FLOAT4E2M1", _NO_TF), ("FLOAT8E8M0", _NO_TF), ("UINT2", _NO_TF), ("INT2", _NO_TF)):
    if hasattr(TensorProto, _name):
        UNSUPPORTED_DTYPES[getattr(TensorProto, _name)] = _reason

CASE_TIMEOUT = 300  # seconds one case may take in a worker process
# Cases whose expected outputs TF/TFLite cannot reproduce for a reason verified case by case.
KNOWN_EXCLUSIONS: dict[str, str] = {
    "test_attention_4d_causal_fp16_expanded": (
        "float16 rounding: the expected values keep float32 precision between the expanded ops "
        "(ONNX Runtime matches them only because its CPU kernels run float16 graphs in float32); "
        "rounding every intermediate to float16, as the graph's types say, lands 1 float16 ulp "
        "away in 2 of 192 elements (the first differing op, Mul, equals numpy's float16 product)"),
}

STATUSES = ("pass", "fail", "unsupported", "excluded", "not_claimed")


@dataclass
class CaseResult:
    """Outcome of one conformance case.

    ``status``: ``pass`` (every target that applies matches), ``fail`` (a wrong answer or a
    crash), ``unsupported`` (an emitter declined the form with a ConvertError), ``excluded`` (the
    case needs what TF cannot express: see ``reason``) or ``not_claimed`` (an op without emitter).
    ``tf``/``tflite``: ``pass``, ``fail``, ``excluded`` (``tflite_excluded`` says why), ``skipped``
    (TF failed first) or ``None`` (not run)."""

    name: str
    ops: tuple[str, ...]
    status: str
    tf: str | None = None
    tflite: str | None = None
    reason_class: str = ""
    reason: str = ""
    tflite_excluded: str = ""
    seconds: float = 0.0


class _Fail(Exception):
    def __init__(self, stage: str, reason_class: str, reason: str):
        super().__init__(reason)
        self.stage, self.reason_class, self.reason = stage, reason_class, reason


# --- cases ---------------------------------------------------------------------------------------
_CASES: list | None = None


def load_cases(match: str | None = None) -> list:
    """The ONNX node test cases (collected once per process), optionally filtered by a regex on the name."""
    global _CASES
    if _CASES is None:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            _CASES = list(collect_testcases(None))
    if match is None:
        return list(_CASES)
    rx = re.compile(match)
    return [c for c in _CASES if rx.search(c.name)]


def case_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """Emitter-table keys of the nodes in the case's main graph (sorted, unique)."""
    return tuple(sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node}))


def _arrays(values) -> list:
    """Case data as numpy arrays (some cases store TensorProtos, e.g. bfloat16)."""
    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def _dtype_name(et: int) -> str:
    return TensorProto.DataType.Name(et)


def _case_dtypes(model: onnx.ModelProto) -> set[int]:
    """Element types of every tensor the case touches (I/O, inferred intermediates, constants, casts)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    g = inferred.graph
    out = set()
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.WhichOneof("value") == "tensor_type":
            out.add(vi.type.tensor_type.elem_type)
    out.update(t.data_type for t in g.initializer)
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.type == onnx.AttributeProto.INT:
                out.add(a.i)
            if a.type == onnx.AttributeProto.TENSOR:
                out.add(a.t.data_type)
    out.discard(0)
    return out


def _exclusion(case, dtypes: set[int]) -> str | None:
    """Why the case cannot be expressed in TF at all, or None."""
    if case.name in KNOWN_EXCLUSIONS:
        return KNOWN_EXCLUSIONS[case.name]
    m = case.model
    for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            return f"{kind.replace('_type', '')} values: TF/TFLite functions take and return plain tensors only"
    for et in sorted(dtypes):
        if et in UNSUPPORTED_DTYPES:
            return f"{_dtype_name(et)}: {UNSUPPORTED_DTYPES[et]}"
    inputs, outputs = case.data_sets[0]
    for v in [*inputs, *outputs]:
        if v is None or isinstance(v, (list, dict)):
            return "sequence/optional values: TF/TFLite functions take and return plain tensors only"
    feeds = dict(zip([vi.name for vi in m.graph.input], _arrays(inputs)))
    for n in m.graph.node:
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2] in feeds and bool(np.asarray(feeds[n.input[2]])):
            return "training-mode output: Dropout with training_mode=True is random"
        if n.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i for a in n.attribute):
            return "training-mode output: BatchNormalization running statistics are a training feature"
    return None


def freeze_constant_inputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Copy of ``model`` whose inputs read only at :data:`CONSTANT_SLOTS` are initializers."""
    slots: dict[str, list[bool]] = defaultdict(list)
    for n in model.graph.node:
        for j, t in enumerate(n.input):
            if t:
                slots[t].append(j in CONSTANT_SLOTS.get(n.op_type, ()) and n.domain in ("", "ai.onnx"))
    outputs = {o.name for o in model.graph.output}
    frozen = [vi.name for vi in model.graph.input if slots.get(vi.name) and all(slots[vi.name]) and vi.name not in outputs]
    if not frozen:
        return model, feeds
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [vi for vi in m.graph.input if vi.name not in frozen]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name in frozen:
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(feeds[name]), name))
    return m, {k: v for k, v in feeds.items() if k not in frozen}


# --- running one case ----------------------------------------------------------------------------
class Runner:
    """Holds what every case shares: the registry (built once) and TensorFlow (imported once).

    ``options`` are extra pass options (``keep_io_layout`` is always on), ``disable`` names passes
    not to run; ``freeze`` turns inputs
    read only at :data:`CONSTANT_SLOTS` into initializers (off: they stay runtime inputs);
    ``last_graph``/``last_tflite`` keep the rewritten IR and the flatbuffer of the last case, for
    tests that look at them."""

    def __init__(self, registry=None, options: dict | None = None, freeze: bool = True, disable: Sequence[str] = ()):
        from graph_convert.pass_manager import builtin_registry

        self.registry = registry if registry is not None else builtin_registry()
        self.options = {**(options or {}), "keep_io_layout": True}
        self.freeze = freeze
        self.disable = tuple(disable)
        self.last_graph = None
        self.last_tflite: bytes | None = None
        import tensorflow as tf

        self.tf = tf

    def run(self, case) -> CaseResult:
        t0 = time.perf_counter()
        ops = case_ops(case.model)
        missing = [op for op in ops if op not in self.registry.emitters]
        if missing:
            res = CaseResult(case.name, ops, "not_claimed", reason_class="no emitter", reason=", ".join(missing))
        else:
            dtypes = _case_dtypes(case.model)
            why = _exclusion(case, dtypes)
            if why:
                res = CaseResult(case.name, ops, "excluded", reason_class=why.split(":")[0], reason=why)
            else:
                res = self._run(case, ops)
        res.seconds = time.perf_counter() - t0
        return res

    def _run(self, case, ops) -> CaseResult:
        from graph_convert.errors import ConvertError, PassError

        res = CaseResult(case.name, ops, "fail")
        self.last_graph = self.last_tflite = None
        try:
            try:
                concrete, module, feeds, expected, tf_names, gaps = self._build(case)
            except ConvertError as e:
                if e.__cause__ is None:  # an emitter declined this form on purpose
                    res.status, res.reason_class, res.reason = "unsupported", "declined by emitter", _line(e)
                    return res
                raise _Fail("tf", "TF emission crashed", _line(e)) from None
            except PassError as e:
                raise _Fail("tf", "pass failed", _line(e)) from None
            try:
                out = concrete(*[self.tf.constant(v) for v in feeds.values()])
                got = {k: np.asarray(v.numpy()) for k, v in out.items()}
            except Exception as e:
                raise _Fail("tf", "TF runtime error", _line(e)) from None
            _check(got, expected, tf_names, case, "tf")
            res.tf = "pass"
            if gaps:  # the emitters said TFLite has no builtin kernel for a form in this graph
                res.tflite = "excluded"
                res.tflite_excluded = "; ".join(sorted({f"{op}: {why}" for _, op, why in gaps}))
            else:
                data = self.last_tflite = self._tflite(concrete, module)
                got = self._run_tflite(data, feeds)
                _check(got, expected, tf_names, case, "tflite")
                res.tflite = "pass"
            res.status = "pass"
        except _Fail as f:
            setattr(res, f.stage, "fail")
            if f.stage == "tf":
                res.tflite = "skipped"
            res.reason_class = ("TF: " if f.stage == "tf" else "TFLite: ") + f.reason_class
            res.reason = f.reason
        return res

    def _build(self, case):
        from graph_convert.ir import from_onnx
        from graph_convert.pass_manager import PassManager
        from graph_convert.tf.emitter import build_function, tf_name

        m = case.model
        inputs, outputs = (_arrays(v) for v in case.data_sets[0])
        feeds = dict(zip([vi.name for vi in m.graph.input], inputs))
        if self.freeze:
            m, feeds = freeze_constant_inputs(m, feeds)
        graph = from_onnx(m)
        PassManager(self.registry, disabled=self.disable, options=self.options).run(graph)
        self.last_graph = graph
        module, concrete, in_names, out_names, gaps = build_function(graph, self.registry.emitters,
                                                                     layout_aware=self.registry.layout_aware)
        expected = dict(zip([vi.name for vi in case.model.graph.output], outputs))
        tf_names = {tf_name(y): y for y in graph.outputs}
        return concrete, module, {tf_name(k): np.asarray(v) for k, v in feeds.items()}, expected, tf_names, gaps

    def _tflite(self, concrete, module) -> bytes:
        from graph_convert.tf.writer import tflite_flatbuffer

        try:
            return tflite_flatbuffer(concrete, module)
        except Exception as e:
            raise _Fail("tflite", "TFLite conversion failed", _tflite_reason(e)) from None

    def _run_tflite(self, data: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from graph_convert.tf.runner import run_tflite

        try:
            return run_tflite(data, feeds)
        except Exception as e:
            raise _Fail("tflite", "TFLite runtime error", _line(e)) from None


def _line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return (f"{type(e).__name__}: " if not isinstance(e, _Fail) else "") + (s[:300] + "..." if len(s) > 300 else s)


def _tflite_reason(e: BaseException) -> str:
    s = " ".join(str(e).split())
    m = re.search(r"'(tf\.[A-Za-z0-9_]+)' op is neither a custom op nor a flex op", s) or re.search(r"failed to legalize operation '([^']+)'", s)
    if m:
        return f"needs {m.group(1)} (not a TFLite builtin)"
    m = re.search(r"error: ([^\n]{0,200})", s)
    return m.group(1) if m else s[:300]


def _check(got: dict, expected: dict, tf_names: dict, case, stage: str) -> None:
    for tfn, y in tf_names.items():
        if tfn not in got:
            raise _Fail(stage, "missing output", f"output {y!r} missing")
        bad = compare_to_expected(got[tfn], np.asarray(expected[y]), case.rtol, case.atol)
        if bad:
            raise _Fail(stage, bad[0], f"output {y!r}: {bad[1]}")


def compare_to_expected(got: np.ndarray, exp: np.ndarray, rtol: float, atol: float) -> tuple[str, str] | None:
    """(reason class, detail) when ``got`` does not match ``exp``, else None."""
    got = np.asarray(got)
    if got.dtype != exp.dtype:
        return "wrong dtype", f"dtype {got.dtype}, expected {exp.dtype}"
    if got.shape != exp.shape:
        return "wrong shape", f"shape {got.shape}, expected {exp.shape}"
    if exp.dtype.kind in "biuUSO":
        bad = got != exp
        if np.any(bad):
            return "wrong values", f"{int(bad.sum())}/{exp.size} elements differ"
        return None
    if exp.dtype.name == "bfloat16":  # as onnx.backend.test.runner: rtol of at least two bfloat16 ulps
        rtol = max(rtol, 2**-6)
    g, e = got.astype(np.float64), exp.astype(np.float64)
    ok = np.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    if not np.all(ok):
        diff = np.abs(g - e)[~ok]
        return "wrong values", f"{int((~ok).sum())}/{exp.size} elements off, max abs diff {np.nanmax(diff) if diff.size else float('nan'):.3g} (rtol {rtol:g}, atol {atol:g})"
    return None


# --- many cases, in worker processes -------------------------------------------------------------
def _worker_main(conn, threads: int) -> None:
    """Worker loop: receive a case name, send back its CaseResult; ``None`` ends the loop."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    runner = Runner()
    by_name = {c.name: c for c in load_cases()}
    conn.send("ready")
    while True:
        name = conn.recv()
        if name is None:
            return
        conn.send(runner.run(by_name[name]))


class _Worker:
    def __init__(self, ctx, threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, threads), daemon=True)
        self.proc.start()
        child.close()
        self.case: str | None = None
        self.started = 0.0
        self.ready = False


def run_cases(cases: Sequence | None = None, *, match: str | None = None, jobs: int = 1, runner: Runner | None = None,
              isolate: bool | None = None, progress=None) -> list[CaseResult]:
    """Run ``cases`` (default: all, or those whose name matches ``match``) and return their results.

    With ``isolate`` (the default when ``jobs > 1``) cases run in worker processes, so a case that
    kills its process (a crash inside a native kernel) is reported as a failure of that case."""
    cases = list(cases) if cases is not None else load_cases(match)
    if not (isolate if isolate is not None else jobs > 1):
        r = runner or Runner()
        out = []
        for i, c in enumerate(cases):
            out.append(r.run(c))
            if progress:
                progress(i + 1, len(cases), out[-1])
        return out
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    ops = {c.name: case_ops(c.model) for c in cases}
    todo = [c.name for c in cases]
    todo.reverse()
    results: dict[str, CaseResult] = {}
    workers = [_Worker(ctx, 1 if jobs > 1 else 0) for _ in range(max(1, min(jobs, len(todo))))]

    def feed(w: _Worker) -> None:
        if todo:
            w.case, w.started = todo.pop(), time.perf_counter()
            w.conn.send(w.case)
        else:
            w.case = None
            w.conn.send(None)

    try:
        while len(results) < len(cases):
            ready = wait([w.conn for w in workers] + [w.proc.sentinel for w in workers], timeout=60)
            for w in list(workers):
                if w.conn in ready or w.conn.poll():
                    try:
                        msg = w.conn.recv()
                    except EOFError:
                        msg = None
                    if msg == "ready":
                        w.ready = True
                        feed(w)
                        continue
                    if isinstance(msg, CaseResult):
                        results[msg.name] = msg
                        if progress:
                            progress(len(results), len(cases), msg)
                        feed(w)
                        continue
                if not w.proc.is_alive():
                    if w.case is not None:  # the case killed its worker
                        late = time.perf_counter() - w.started > CASE_TIMEOUT
                        r = CaseResult(w.case, ops[w.case], "fail", reason_class="timeout" if late else "process crashed",
                                       reason=f"no result after {CASE_TIMEOUT} s" if late else f"worker exited with code {w.proc.exitcode} while running the case",
                                       seconds=time.perf_counter() - w.started)
                        r.tf = "fail"
                        results[w.case] = r
                        if progress:
                            progress(len(results), len(cases), r)
                    elif not w.ready:
                        raise RuntimeError(f"conformance worker failed to start (exit code {w.proc.exitcode})")
                    workers.remove(w)
                    if todo:
                        workers.append(_Worker(ctx, 1 if jobs > 1 else 0))
            for w in workers:
                if w.case is not None and time.perf_counter() - w.started > CASE_TIMEOUT:
                    w.proc.kill()  # reported as a crash of this case on the next round
                    w.proc.join(5)
    finally:
        for w in workers:
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join(5)
    return [results[c.name] for c in cases]


# --- baseline: per-case outcomes of the last full run ---------------------------------------------
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
        "Generated by `python -m graph_convert.conformance` (see `graph_convert/conformance.py`); do not edit by hand.",
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
    from graph_convert.pass_manager import builtin_registry

    emitter_ops = builtin_registry().emitters
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


if __name__ == "__main__":
    sys.exit(main())
