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

import os
import re
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from graph_convert.conformance.cases import (case_arrays, case_dtypes, case_ops, exclusion, expanded_constant_inputs,
                                             freeze_constant_inputs, load_cases)

CASE_TIMEOUT = 300  # seconds one case may take in a worker process

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


# --- running one case ----------------------------------------------------------------------------
class Runner:
    """Holds what every case shares: the registry (built once) and TensorFlow (imported once).

    ``options`` are extra pass options (``keep_io_layout`` is always on), ``disable`` names passes
    not to run; ``freeze`` turns inputs
    read only at :data:`CONSTANT_SLOTS` into initializers (off: they stay runtime inputs);
    ``last_graph``/``last_tflite`` keep the rewritten IR and the flatbuffer of the last case, for
    tests that look at them."""

    def __init__(self, registry=None, options: dict | None = None, freeze: bool = True, disable: Sequence[str] = ()):
        from graph_convert.plugins import builtin_registry

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
        why = exclusion(case, case_dtypes(case.model)) if missing and all(_holds_sequences(op) for op in missing) else None
        if why and ("sequence" in why or "optional" in why):
            # the ops without an emitter only make or read sequence/optional values, which the case's
            # own inputs/outputs already are: excluded for that (e.g. Loop over a sequence, SequenceMap expanded)
            res = CaseResult(case.name, ops, "excluded", reason_class=why.split(":")[0], reason=why)
        elif missing:
            res = CaseResult(case.name, ops, "not_claimed", reason_class="no emitter", reason=", ".join(missing))
        else:
            dtypes = case_dtypes(case.model)
            why = exclusion(case, dtypes)
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
        from graph_convert.backends.tensorflow.emitter import build_function, tf_name

        m = case.model
        inputs, outputs = (case_arrays(v) for v in case.data_sets[0])
        feeds = dict(zip([vi.name for vi in m.graph.input], inputs))
        if self.freeze:
            m, feeds = freeze_constant_inputs(m, feeds, expanded_constant_inputs(case))
        graph = from_onnx(m)
        PassManager(self.registry, disabled=self.disable, options=self.options).run(graph)
        self.last_graph = graph
        traced = build_function(graph, self.registry.emitters, layout_aware=self.registry.layout_aware)
        module, concrete, gaps = traced.module, traced.concrete, traced.gaps
        expected = dict(zip([vi.name for vi in case.model.graph.output], outputs))
        tf_names = {tf_name(y): y for y in graph.outputs}
        return concrete, module, {tf_name(k): np.asarray(v) for k, v in feeds.items()}, expected, tf_names, gaps

    def _tflite(self, concrete, module) -> bytes:
        from graph_convert.backends.tensorflow.writer import tflite_flatbuffer

        try:
            return tflite_flatbuffer(concrete, module)
        except Exception as e:
            raise _Fail("tflite", "TFLite conversion failed", _tflite_reason(e)) from None

    def _run_tflite(self, data: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from graph_convert.backends.tensorflow.runner import run_tflite

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




def _holds_sequences(op: str) -> bool:
    """An op whose inputs or outputs are sequence or optional values (no TF/TFLite tensor holds one)."""
    return op.startswith(("Sequence", "Optional")) or op in ("ConcatFromSequence", "SplitToSequence")
