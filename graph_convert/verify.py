"""Equivalence checks: the source model in ONNX Runtime is the reference for every later stage
(rewritten ONNX, TF, TFLite); inputs and outputs are mapped through the recorded layout perms."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import onnx
from onnx import helper

from graph_convert import perm as P
from graph_convert.errors import ConvertError, VerificationError
from graph_convert.ir import Graph, to_onnx


def ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors reach the user through our own message, once
    # reference numbers must come from the graph as written, not from ORT's own rewrites
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _concrete_shape(name: str, shape: tuple | None, overrides: Mapping[str, tuple]) -> tuple[int, ...]:
    if name in overrides:
        return tuple(overrides[name])
    if shape is None:
        raise ConvertError(f"input {name!r} has no known shape; give one with --input-shape {name}=d0,d1,...")
    # symbolic dims (batch, sequence) are given size 1 unless overridden
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def make_inputs(graph: Graph, seed: int = 0, shapes: Mapping[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs in the *source* layout for every graph input."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        shape = _concrete_shape(name, graph.shape(name), shapes or {})
        dt = helper.tensor_dtype_to_np_dtype(graph.dtype(name))
        if dt.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feeds[name] = rng.integers(0, 2, shape).astype(bool)
        elif dt.kind in "iu":
            feeds[name] = rng.integers(0, 8, shape).astype(dt)
        else:
            raise ConvertError(f"input {name!r}: cannot make random data of type {dt}; pass --inputs data.npz")
    return feeds


def check_user_inputs(graph: Graph, data: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    out = {}
    missing = [n for n in graph.inputs if n not in data]
    if missing:
        raise ConvertError(f"{source}: no array for model input(s) {missing} (has: {sorted(data)})")
    for name in graph.inputs:
        arr = np.asarray(data[name])
        want = graph.shape(name)
        dt = helper.tensor_dtype_to_np_dtype(graph.dtype(name))
        if want is not None and (len(want) != arr.ndim or any(isinstance(d, int) and d != s for d, s in zip(want, arr.shape))):
            raise ConvertError(f"{source}: array {name!r} has shape {arr.shape}, model input wants {want}")
        if arr.dtype != dt:
            if arr.dtype.kind != dt.kind:
                raise ConvertError(f"{source}: array {name!r} has dtype {arr.dtype}, model input wants {dt}")
            arr = arr.astype(dt)
        out[name] = arr
    return out


def to_rewritten_layout(feeds: Mapping[str, np.ndarray], io_perms: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.transpose(v, io_perms[k])) if k in io_perms else v for k, v in feeds.items()}


def to_source_layout(outputs: Mapping[str, np.ndarray], io_perms: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    return {k: np.transpose(v, P.invert(io_perms[k])) if k in io_perms else v for k, v in outputs.items()}


@dataclass
class Figures:
    max_abs: float
    max_rel: float
    cosine: float
    scale: float
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "cosine": self.cosine, "scale": self.scale, "ok": self.ok}


def compare(ref: np.ndarray, got: np.ndarray, atol: float) -> Figures:
    """Figures for one output. Passes when max_abs <= atol * max(1, max|ref|)."""
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        return Figures(float("inf"), float("inf"), 0.0, 0.0, False)
    if ref.dtype.kind in "biu" and got.dtype.kind in "biu":
        bad = float(np.max(np.abs(ref.astype(np.int64) - got.astype(np.int64)))) if ref.size else 0.0
        return Figures(bad, bad, 1.0 if bad == 0 else 0.0, 0.0, bad == 0)
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    finite = np.isfinite(r)
    same_nonfinite = bool(np.all((np.isnan(r) & np.isnan(g)) | (r == g) | finite))
    r_f, g_f = r[finite], g[finite]
    diff = np.abs(r_f - g_f)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r_f).max()) if r_f.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r_f), 1e-12)).max()) if diff.size else 0.0
    den = float(np.linalg.norm(r_f) * np.linalg.norm(g_f))
    cosine = float(np.dot(r_f.ravel(), g_f.ravel()) / den) if den > 0 else (1.0 if max_abs == 0 else 0.0)
    ok = same_nonfinite and np.isfinite(g_f).all() and max_abs <= atol * max(1.0, scale)
    return Figures(max_abs, max_rel, cosine, scale, bool(ok))


def compare_all(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], atol: float) -> dict[str, Figures]:
    return {name: compare(ref[name], got[name], atol) for name in ref}


class Verifier:
    """Reference outputs of the source model, computed once; checks rewritten graphs against them."""

    def __init__(self, source: onnx.ModelProto, feeds: Mapping[str, np.ndarray], atol: float = 1e-4):
        self.feeds = dict(feeds)
        self.atol = atol
        self.final_figs: dict[str, Figures] | None = None  # set by the pipeline once the rewritten graph is checked
        try:
            sess = ort_session(source)
            names = [o.name for o in sess.get_outputs()]
            self.reference = dict(zip(names, sess.run(names, self.feeds)))
        except Exception as e:  # the source itself is the reference: without it nothing can be proven
            msg = " ".join(str(e).split())
            raise ConvertError(f"source model does not run in ONNX Runtime, so it cannot serve as the reference: {msg[:400]}") from None

    def check_graph(self, graph: Graph, stage: str) -> dict[str, Figures]:
        """Lower ``graph``, run it in ORT, compare; raises VerificationError on mismatch."""
        try:
            sess = ort_session(to_onnx(graph))
            names = [o.name for o in sess.get_outputs()]
            got = dict(zip(names, sess.run(names, to_rewritten_layout(self.feeds, graph.io_perms))))
        except Exception as e:
            raise VerificationError(f"{stage}: rewritten graph does not run in ONNX Runtime: {str(e).splitlines()[0]}", stage) from None
        return self.check_outputs(to_source_layout(got, graph.io_perms), stage)

    def check_outputs(self, got: Mapping[str, np.ndarray], stage: str) -> dict[str, Figures]:
        missing = [n for n in self.reference if n not in got]
        if missing:
            raise VerificationError(f"{stage}: outputs {missing} missing", stage)
        figs = compare_all(self.reference, got, self.atol)
        bad = {n: f for n, f in figs.items() if not f.ok}
        if bad:
            n, f = next(iter(bad.items()))
            raise VerificationError(
                f"{stage}: output {n!r} differs from the source model in ONNX Runtime "
                f"(max abs {f.max_abs:.3g}, max rel {f.max_rel:.3g}, tolerance {self.atol:g} x max(1, {f.scale:.3g}))", stage)
        return figs


def first_diverging_tensor(source: onnx.ModelProto, graph: Graph, feeds: Mapping[str, np.ndarray], atol: float) -> str | None:
    """Name of the first tensor (in topological order) shared by both models whose values differ."""
    common = [t for n in graph.nodes for t in n.outputs if t]
    src_names = {t for n in source.graph.node for t in n.output}
    common = [t for t in common if t in src_names and t not in graph.io_perms]
    if not common:
        return None

    def expose(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        for t in names:
            if t not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=t))
        return m

    try:
        a = ort_session(expose(source, common))
        b = ort_session(expose(to_onnx(graph, with_value_info=False), common))
        ra = dict(zip([o.name for o in a.get_outputs()], a.run(None, dict(feeds))))
        rb = dict(zip([o.name for o in b.get_outputs()], b.run(None, to_rewritten_layout(feeds, graph.io_perms))))
    except Exception:
        return None
    for t in common:
        if t in ra and t in rb and not compare(ra[t], rb[t], atol).ok:
            return t
    return None


Check = Callable[[Graph, str], None]
