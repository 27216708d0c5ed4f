"""Where a foreign .tflite goes wrong: its intermediate tensors (LiteRT, all kept) paired with the
ONNX model's (ORT, all exposed) by name or by value up to a layout permutation; the last agreeing
and the first disagreeing pair, with their ops."""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx

from graph_convert.ir import perm as P
from graph_convert.checks.candidate import feed_candidate, layout_perms, load_tflite, quiet, run_tflite_keeping_tensors
from graph_convert.checks.equivalence import FLOAT32_FLOOR, compare, ort_session


@dataclass
class Tensor:
    """One intermediate value on either side, squeezed to its non-unit dims for pairing."""

    name: str
    op: str  # "Conv (node /conv1/Conv)" or "CONV_2D (op 3)"
    position: int  # topological (ONNX) or execution (TFLite) order
    value: np.ndarray
    ordered: np.ndarray  # sorted values: a layout permutation does not change them
    scale: float


def _tensor(name: str, op: str, position: int, arr: np.ndarray) -> Tensor:
    a = np.asarray(arr, dtype=np.float64)
    core = a.reshape([d for d in a.shape if d != 1])
    flat = np.sort(core.ravel())
    finite = np.isfinite(core)
    return Tensor(name, op, position, core, flat, float(np.abs(core[finite]).max()) if finite.any() else 0.0)


def onnx_tensors(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> tuple[list[Tensor], dict[str, list[str]], dict[str, list[str]]]:
    """Every float node output that depends on a graph input, in topological order, with ORT's
    values; and each tensor's producer inputs and consumers' outputs (names) for the graph walk."""
    inits = {i.name for i in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    names, ops, parents, children = [], {}, {}, {}
    for node in model.graph.node:
        if not any(i in live for i in node.input):
            continue
        for o in node.output:
            if o:
                live.add(o)
                names.append(o)
                ops[o] = f"{node.op_type} (node {node.name or o})"
                parents[o] = [i for i in node.input if i in live]
                for i in parents[o]:
                    children.setdefault(i, []).append(o)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in have)
    sess = ort_session(m)
    keys = [o.name for o in sess.get_outputs()]
    vals = dict(zip(keys, sess.run(keys, dict(feeds))))
    out = [_tensor(n, ops[n], k, vals[n]) for k, n in enumerate(names)
           if n in vals and np.asarray(vals[n]).dtype.kind == "f" and np.asarray(vals[n]).size > 1]
    return out, parents, children


def tflite_tensors(it) -> list[Tensor]:
    """Every float op output of an interpreter run with ``experimental_preserve_all_tensors``,
    in execution order."""
    details = {d["index"]: d for d in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        for t in op["outputs"]:
            d = details.get(int(t))
            if d is None or np.dtype(d["dtype"]).kind != "f":
                continue
            try:
                arr = it.get_tensor(int(t))
            except ValueError:  # a tensor the runtime did not keep
                continue
            if arr.size > 1:
                out.append(_tensor(d["name"], f"{op['op_name']} (op {op['index']})", int(op["index"]), arr))
    return out


def _perms(a: Tensor, b: Tensor) -> list[tuple[int, ...]]:

    if a.value.size != b.value.size:
        return []
    return layout_perms(a.value.shape, b.value.shape)


def _agrees(a: Tensor, b: Tensor, tol: float) -> tuple[bool, tuple | None, Any]:
    """Whether ``b`` (TFLite) holds ``a``'s (ONNX) values in some layout: sorted values first
    (cheap, layout-free), then each fitting permutation."""
    bound = tol * a.scale + FLOAT32_FLOOR
    if not np.all(np.isfinite(a.ordered) == np.isfinite(b.ordered)):
        return False, None, None
    fin = np.isfinite(a.ordered)
    if fin.any() and np.max(np.abs(a.ordered[fin] - b.ordered[fin])) > bound:
        return False, None, None
    for p in _perms(a, b):
        f = compare(a.value, np.transpose(b.value, P.invert(p)), tol)
        if f.ok:
            return True, p, f
    return False, None, None


def _closest(a: Tensor, pool: list[Tensor], tol: float):
    best = None
    for b in pool:
        for p in _perms(a, b):
            f = compare(a.value, np.transpose(b.value, P.invert(p)), tol)
            if best is None or f.max_rel < best[2].max_rel:
                best = (b, p, f)
    return best


def _name_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "_", name.lower()).strip("_")


def pair_by_value(src: list[Tensor], tfl: list[Tensor], tol: float) -> dict[str, tuple[Tensor, tuple, str]]:
    """ONNX tensor name -> (the TFLite tensor holding its values, layout perm, how it was paired)."""
    by_size: dict[int, list[Tensor]] = {}
    for b in tfl:
        by_size.setdefault(b.value.size, []).append(b)
    agree = {}
    for a in src:
        pool = by_size.get(a.value.size, [])
        key = _name_key(a.name)
        named = [b for b in pool if key and key in _name_key(b.name)]
        for b, how in [(b, "name") for b in named] + [(b, "value") for b in pool if b not in named]:
            ok, p, _ = _agrees(a, b, tol)
            if ok:
                agree[a.name] = (b, p, how)
                break
    return agree


def locate_in(src: list[Tensor], tfl: list[Tensor], parents: dict[str, list[str]], children: dict[str, list[str]],
              tol: float) -> dict[str, Any]:
    """The first ONNX tensor that some TFLite tensor could hold (same size, a fitting layout),
    that none holds, and after which nothing agrees again; and its last agreeing ancestor."""
    agree = pair_by_value(src, tfl, tol)
    order = {t.name: t.position for t in src}
    # does anything downstream of t agree? (reverse topological order)
    downstream: dict[str, bool] = {}
    for t in reversed(src):
        downstream[t.name] = any(c in agree or downstream.get(c, False) for c in children.get(t.name, []))
    first = next((t for t in src if t.name not in agree and not downstream[t.name]
                  and any(_perms(t, b) for b in tfl)), None)
    summary = {"onnx_tensors_compared": len(src), "tflite_tensors_compared": len(tfl), "onnx_tensors_found_in_tflite": len(agree),
               "intermediate_tolerance": tol}
    if first is None:
        return {**summary, "found": False, "summary": "no intermediate tensor could be singled out (the outputs differ; "
                                                      "every tensor that has a counterpart in the .tflite agrees with it)"}
    last = _last_agreeing_ancestor(first.name, parents, agree, order)
    after = agree[last][0].position if last is not None else -1
    pool = [b for b in tfl if b.position >= after] or tfl
    near = _closest(first, pool, tol)
    bad = {"onnx_tensor": first.name, "onnx_op": first.op}
    if near is not None:
        b, p, f = near
        bad.update(tflite_tensor=b.name, tflite_op=b.op, layout_perm_non_unit_axes=list(p), max_abs=f.max_abs, max_rel=f.max_rel, cosine=f.cosine,
                   reason=f.reason)
    good = None
    if last is not None:
        b, p, how = agree[last]
        good = {"onnx_tensor": last, "onnx_op": next(t.op for t in src if t.name == last), "tflite_tensor": b.name,
                "tflite_op": b.op, "layout_perm_non_unit_axes": list(p), "paired_by": how}
    text = (f"last agreeing: {good['onnx_op']} -> {good['tflite_op']}; " if good else "nothing agrees before it; ") + \
           f"first disagreeing: {first.op}, tensor {first.name!r}" + \
           (f" (closest in the .tflite: {bad['tflite_op']}, {bad['reason']})" if near else "")
    return {**summary, "found": True, "last_agreeing": good, "first_disagreeing": bad, "summary": text}


def _last_agreeing_ancestor(name: str, parents: dict[str, list[str]], agree: Mapping, order: Mapping[str, int]) -> str | None:
    seen, stack, found = set(), list(parents.get(name, [])), []
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in agree:
            found.append(t)
        else:
            stack.extend(parents.get(t, []))
    return max(found, key=lambda t: order.get(t, -1)) if found else None


def locate(model: onnx.ModelProto, cand, ins, feeds: Mapping[str, np.ndarray], atol: float) -> dict[str, Any]:
    """The divergence report for ``cand`` (a :class:`graph_convert.checks.candidate.Candidate`) on ``feeds``."""
    tol = max(10 * atol, 1e-3)  # intermediate values drift more than outputs' figures allow; a wrong op is far off
    try:
        if cand.kind == "tflite":
            return _search(model, cand, ins, feeds, tol)
        return _search_saved_model(model, cand, ins, feeds, tol)
    except Exception as e:  # the search is a diagnosis: its failure must not hide the verdict
        return {"found": False, "summary": f"the intermediate tensors could not be compared ({type(e).__name__}: {str(e)[:200]})"}


def _search(model: onnx.ModelProto, cand, ins, feeds: Mapping[str, np.ndarray], tol: float) -> dict[str, Any]:

    src, parents, children = onnx_tensors(model, feeds)
    _, it = run_tflite_keeping_tensors(cand, feed_candidate(cand, ins, feeds))
    return locate_in(src, tflite_tensors(it), parents, children, tol)


SAVED_MODEL_ONLY = "only the outputs were compared (a SavedModel's intermediate tensors are not searched)"


def _search_saved_model(model: onnx.ModelProto, cand, ins, feeds: Mapping[str, np.ndarray], tol: float) -> dict[str, Any]:
    """A SavedModel has no kept intermediate tensors, but TensorFlow's own TFLite converter turns
    it into a .tflite that does: searched when that file gives the SavedModel's outputs."""
    import tensorflow as tf


    with tempfile.TemporaryDirectory(prefix="graph-convert-verify-") as d:
        path = os.path.join(d, "from_saved_model.tflite")
        try:
            with quiet():
                data = tf.lite.TFLiteConverter.from_saved_model(cand.path, signature_keys=[cand.signature]).convert()
            with open(path, "wb") as f:
                f.write(data)
            derived = load_tflite(path, cand.signature)
            fed = feed_candidate(cand, ins, feeds)
            a, b = cand.run(fed), derived.run(fed)
        except Exception as e:
            return {"found": False, "summary": f"{SAVED_MODEL_ONLY}: TF's TFLite converter could not make a searchable copy "
                                               f"({type(e).__name__}: {' '.join(str(e).split())[:160]})"}
        if set(a) != set(b) or any(not compare(a[k], b[k], tol).ok for k in a):
            return {"found": False, "summary": f"{SAVED_MODEL_ONLY}: the .tflite TF's converter made from it computes "
                                               f"something else, so its tensors say nothing about the SavedModel"}
        out = _search(model, derived, ins, feeds, tol)
    out["searched_in"] = "a .tflite made from the SavedModel by TensorFlow's TFLiteConverter (its outputs equal the SavedModel's)"
    out["summary"] = f"{out['summary']} [in the SavedModel's TFLite conversion]"
    return out
