"""The rewrite stage: run the pass pipeline on the IR with ONNX Runtime proof. On a mismatch the
passes are replayed from the source graph with a check after each, so the error names the first
pass after which the graph computes something else, and the first tensor that differs."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import onnx

from graph_convert.errors import PassError, VerificationError
from graph_convert.ir import Graph, from_onnx
from graph_convert.options import ConvertOptions
from graph_convert.pass_manager import PassManager, PassRecord, Registry
from graph_convert.checks.equivalence import Figures, Verifier, first_diverging_tensor, make_draws


@dataclass
class Rewritten:
    """The outcome of the rewrite stage for one (static-shape) model."""

    graph: Graph
    verifier: Verifier
    records: list[PassRecord]
    figures: dict[str, Figures] | None  # the final graph's, when the stage checked it already


class _Stop(Exception):
    pass


class _PassDiverged(VerificationError):
    """A per-pass check failed: carries the pass that ran just before it."""

    def __init__(self, error: VerificationError, pass_name: str):
        super().__init__(str(error), error.stage, pass_name)


class _Check:
    """A check run by the pass manager after a pass (``label`` "after pass") or a phase; keeps
    the latest figures, and names the pass when a per-pass check fails."""

    def __init__(self, verifier: Verifier, label: str):
        self.verifier, self.label = verifier, label
        self.last: dict[str, Figures] | None = None

    def __call__(self, graph: Graph, name: str) -> None:
        try:
            self.last = self.verifier.check_graph(graph, f"{self.label} {name}")
        except VerificationError as e:
            if self.label == "after pass":
                raise _PassDiverged(e, name) from None
            raise


def rewrite(model: onnx.ModelProto, registry: Registry, options: ConvertOptions, *, shape_overrides: Mapping[str, tuple],
            user_feeds: Mapping[str, np.ndarray] | None, timings: dict[str, float], graph: Graph | None = None) -> Rewritten:
    """Run the passes on ``model`` (or its already loaded ``graph``), proven against ``model`` in
    ONNX Runtime as ``options.verify`` says: at the end (default), after every phase, after every
    pass, or not."""
    verify, atol = options.verify, options.atol
    graph = from_onnx(model) if graph is None else graph
    draws = make_draws(graph, options.seed, shape_overrides, user_feeds)
    t = time.perf_counter()
    # with the user's arrays, a random draw the source itself cannot run on (indices out of
    # range, say) is dropped with a note; without them every draw must run
    verifier = Verifier(model, draws, atol, optional=tuple(range(1, len(draws))) if user_feeds is not None else ())
    timings["reference_ort"] = timings.get("reference_ort", 0.0) + time.perf_counter() - t

    def manager() -> PassManager:
        return PassManager(registry, disabled=options.disable_passes, options=options.pass_options)

    pristine = graph.copy()
    t = time.perf_counter()
    each, phase = _Check(verifier, "after pass"), _Check(verifier, "after phase")
    try:
        records = manager().run(graph, check_each=each if verify == "each" else None, check_phase=phase if verify == "phase" else None)
        figures = each.last or phase.last
        if verify == "end" or (verify != "none" and figures is None and any(r.changed for r in records)):
            figures = verifier.check_graph(graph, "rewritten graph")
    except VerificationError as e:
        culprit = e.culprit if verify == "each" else _find_culprit(pristine, manager, verifier)
        raise VerificationError(f"{e} — first diverging pass: {culprit!r}{_diverging_tensor(model, pristine, manager, culprit, verifier)}",
                                e.stage, culprit) from None
    timings["passes"] = timings.get("passes", 0.0) + time.perf_counter() - t
    return Rewritten(graph, verifier, records, figures)


def _find_culprit(pristine: Graph, manager: Callable[[], PassManager], verifier: Verifier) -> str | None:
    """Replay from the source graph, checking after every pass: the first pass that diverges."""
    try:
        manager().run(pristine.copy(), check_each=_Check(verifier, "after pass"))
    except VerificationError as e:
        return e.culprit
    except PassError as e:
        return e.pass_name
    return None


def _diverging_tensor(model: onnx.ModelProto, pristine: Graph, manager: Callable[[], PassManager], culprit: str | None,
                      verifier: Verifier) -> str:
    if not culprit:
        return ""

    def stop_after(graph: Graph, name: str) -> None:
        if name == culprit:
            raise _Stop()

    graph = pristine.copy()
    try:
        manager().run(graph, check_each=stop_after)
    except _Stop:
        pass
    tensor = first_diverging_tensor(model, graph, (verifier.failed_draw or verifier.draws[0]).feeds, verifier.atol)
    return f"; first diverging tensor: {tensor!r}" if tensor else ""
