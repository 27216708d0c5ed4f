"""Equivalence checks: the source model in ONNX Runtime is the reference for every later stage
(rewritten ONNX, TF, TFLite); inputs and outputs are mapped through the recorded layout perms."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import onnx
from onnx import helper

from graph_convert.ir import perm as P
from graph_convert.checks.selection import find_key_column, forced_selection, judge as judge_selection, keys_of, trace as trace_selection
from graph_convert.errors import ConvertError, VerificationError
from graph_convert.ir import Graph, to_onnx
from graph_convert.ir.onnx_io import model_shell, placeholder_tensor
from graph_convert.ir.tensors import PLACEHOLDER_BYTES, external_data_threshold, file_location, tensor_array


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Size of a tensor's data from its dims and type (no data read)."""
    n = 1
    for d in t.dims:
        n *= int(d)
    try:
        return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        return 0


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) >= external_data_threshold()


def ort_session(model: onnx.ModelProto, arrays: Callable[[str], np.ndarray | None] | None = None):
    """An ONNX Runtime session of ``model``. A large model (:func:`is_large`) never goes over as
    one serialized proto with its weights: a weight still in the source's external data file is
    read by ORT from that file (memory-mapped: no copy of ours, none of ORT's), any other weight is
    handed over as an OrtValue (``arrays(name)`` may supply arrays already decoded, else each is
    decoded for the session's lifetime only; ORT copies it). ``session.graph_convert_weights``
    says which way it went."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors reach the user through our own message, once
    # reference numbers must come from the graph as written, not from ORT's own rewrites
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not is_large(model):
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.graph_convert_weights = "in the serialized model"
        return sess
    # pre-packing would keep a second, re-laid-out copy of every MatMul/Conv weight
    opts.add_session_config_entry("session.disable_prepacking", "1")
    folder, mapped, names, values = None, {}, [], []
    for t in model.graph.initializer:
        loc = file_location(t)
        if loc is not None and (folder is None or os.path.dirname(loc) == folder):
            folder = os.path.dirname(loc)
            mapped[t.name] = os.path.basename(loc)
            continue
        if tensor_bytes(t) < PLACEHOLDER_BYTES and loc is None:
            continue
        arr = arrays(t.name) if arrays is not None else None
        if arr is None:
            arr = tensor_array(t)
        names.append(t.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
        del arr
    handed = set(names)
    shell = model_shell(model, lambda t: t.name not in handed)  # its own copies of the (data-less) protos
    for t in shell.graph.initializer:
        if t.name in handed and file_location(t) is not None:  # from another folder: an OrtValue
            t.CopyFrom(placeholder_tensor(t.name, t.data_type, t.dims, tensor_bytes(t)))
        elif t.name in mapped:  # relative to the folder ORT is told about
            for e in t.external_data:
                if e.key == "location":
                    e.value = mapped[t.name]
    if folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    if names:
        opts.add_external_initializers(names, values)
    sess = ort.InferenceSession(shell.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess.graph_convert_ortvalues = values  # they must outlive the session
    how = [f"{len(mapped)} initializers read by ONNX Runtime from the external data file"] if mapped else []
    how += [f"{len(names)} initializers as OrtValues"] if names else []
    sess.graph_convert_weights = f"{' and '.join(how) or 'no large initializer'} (model of {weight_bytes(model)} bytes)"
    return sess


def source_session(model: onnx.ModelProto, edit: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None):
    """An ORT session of a model held with its weights, optionally edited first (``edit`` sees a
    weightless shell when the model is large, so no weight is copied for the edit)."""
    if not is_large(model) or edit is None:
        return ort_session(model if edit is None else edit(model))
    protos = {t.name: t for t in model.graph.initializer}
    shell = model_shell(model, lambda t: tensor_bytes(t) < PLACEHOLDER_BYTES)
    return ort_session(edit(shell), lambda name: tensor_array(protos[name]))


def graph_session(graph: Graph, *, with_value_info: bool = True, edit: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None):
    """An ORT session of the lowered ``graph``; a large graph is lowered without its weights and
    they go over as OrtValues (decoded for this session only when the graph has not decoded them)."""
    large = graph.weight_bytes >= external_data_threshold()
    model = to_onnx(graph, with_value_info=with_value_info, weights=not large)
    if edit is not None:
        model = edit(model)
    return ort_session(model, graph.initializer_uncached if large else None)


def _concrete_shape(name: str, shape: tuple | None, overrides: Mapping[str, tuple]) -> tuple[int, ...]:
    if name in overrides:
        return tuple(overrides[name])
    if shape is None:
        raise ConvertError(f"input {name!r} has no known shape; give one with --input-shape {name}=d0,d1,...")
    # symbolic dims (batch, sequence) are given size 1 unless overridden
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


@dataclass
class Draw:
    """One set of verification inputs, in the source layout, and how it was made."""

    label: str
    feeds: dict[str, np.ndarray]


def make_inputs(graph: Graph, seed: int = 0, shapes: Mapping[str, tuple] | None = None, kind: str = "normal") -> dict[str, np.ndarray]:
    """Seeded random inputs in the *source* layout for every graph input: float inputs standard
    normal (``kind="normal"``) or uniform in [0, 1) (``kind="uniform"``), integers in [0, 8),
    booleans either way."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        shape = _concrete_shape(name, graph.shape(name), shapes or {})
        dt = helper.tensor_dtype_to_np_dtype(graph.dtype(name))
        if dt.kind == "f":
            x = rng.standard_normal(shape) if kind == "normal" else rng.random(shape)
            feeds[name] = x.astype(dt)
        elif dt.kind == "b":
            feeds[name] = rng.integers(0, 2, shape).astype(bool)
        elif dt.kind in "iu":
            feeds[name] = rng.integers(0, 8, shape).astype(dt)
        else:
            raise ConvertError(f"input {name!r}: cannot make random data of type {dt}; pass --inputs data.npz")
    return feeds


def make_draws(graph: Graph, seed: int = 0, shapes: Mapping[str, tuple] | None = None,
               user: Mapping[str, np.ndarray] | None = None) -> list[Draw]:
    """The input draws every stage is checked on: the user's arrays (when given), a standard
    normal draw (seed) and a uniform [0, 1) draw (seed + 1): one draw can hide a wrong model
    (a sign error in a ReLU network fed only positive values, say), two rarely do."""
    draws = [Draw("user (--inputs)", dict(user))] if user is not None else []
    draws.append(Draw(f"normal(0, 1), seed {seed}", make_inputs(graph, seed, shapes, "normal")))
    draws.append(Draw(f"uniform[0, 1), seed {seed + 1}", make_inputs(graph, seed + 1, shapes, "uniform")))
    return draws


def read_npz(path: str, option: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive, or one line saying why it cannot be read."""
    if not os.path.exists(path):
        raise ConvertError(f"{option} {path}: no such file")
    if os.path.isdir(path):
        raise ConvertError(f"{option} {path}: is a folder, expected an .npz file (numpy.savez)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConvertError(f"{option} {path}: cannot read it ({e.strerror})") from None
    if magic != b"PK\x03\x04":
        what = "a single .npy array" if magic.startswith(b"\x93NUM") else "an empty file" if not magic else "not a zip archive"
        raise ConvertError(f"{option} {path}: not an .npz archive ({what}); write one with numpy.savez(path, name=array, ...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise ConvertError(f"{option} {path}: holds object arrays (pickled data), which are not read for safety; "
                               f"save plain numeric arrays") from None
        raise ConvertError(f"{option} {path}: cannot read it as .npz ({e})") from None
    except Exception as e:
        raise ConvertError(f"{option} {path}: cannot read it as .npz ({type(e).__name__}: {e})") from None


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


def _past_run_axis(p: tuple, batched: bool) -> tuple:
    """``batched``: the arrays hold one model input per entry of a new leading axis 0, which stays
    put; the perm moves past it. ``(0, 2, 3, 1)`` -> ``(0, 1, 3, 4, 2)``."""
    return (0,) + tuple(d + 1 for d in p) if batched else tuple(p)


def to_rewritten_layout(feeds: Mapping[str, np.ndarray], io_perms: Mapping[str, tuple], batched: bool = False) -> dict[str, np.ndarray]:
    """Source-layout arrays -> the rewritten graph's layout (``batched``: ``(runs, *input shape)``)."""
    return {k: np.ascontiguousarray(np.transpose(v, _past_run_axis(io_perms[k], batched))) if k in io_perms else v
            for k, v in feeds.items()}


def to_source_layout(outputs: Mapping[str, np.ndarray], io_perms: Mapping[str, tuple], batched: bool = False) -> dict[str, np.ndarray]:
    """Rewritten-layout arrays -> the source's layout (``batched``: ``(runs, *output shape)``)."""
    return {k: np.transpose(v, _past_run_axis(P.invert(io_perms[k]), batched)) if k in io_perms else v for k, v in outputs.items()}


# Below this an absolute difference is float32 noise whatever the output's scale: 4x the
# smallest normal float32 (TFLite/XNNPack flush denormals to zero).
FLOAT32_FLOOR = 4 * float(np.finfo(np.float32).tiny)


@dataclass
class Figures:
    """How one output compares with the reference, over every draw (the worst draw counts)."""

    max_abs: float
    max_rel: float  # max_abs / scale
    cosine: float
    scale: float  # max |reference| over the finite entries
    ok: bool
    sqnr_db: float = 200.0
    reason: str = ""  # why it failed, in words
    per_draw: tuple = ()  # ((draw label, Figures of that draw alone), ...) when checked on several draws
    steps: float | None = None  # max_abs in quantization steps of the output (the int8 rule)
    rule: str = "elementwise"  # the rule that judged it: elementwise, int8 or selection (README "Verification")
    selection: dict | None = None  # the selection rule's figures (op, rows permuted / flipped)

    def as_dict(self) -> dict[str, Any]:
        d = {"max_abs": self.max_abs, "max_rel": self.max_rel, "cosine": self.cosine, "sqnr_db": self.sqnr_db,
             "scale": self.scale, "ok": self.ok, "rule": self.rule}
        if self.selection is not None:
            d["selection"] = self.selection
        if self.steps is not None:
            d["max_steps"] = self.steps
        if self.reason:
            d["reason"] = self.reason
        if self.per_draw:  # report.html's table shows every draw, not only the worst
            d["per_draw"] = [{"draw": label, "max_abs": f.max_abs, "max_rel": f.max_rel, "cosine": f.cosine, "sqnr_db": f.sqnr_db,
                              "ok": f.ok, **({"selection": f.selection} if f.selection else {})} for label, f in self.per_draw]
        return d


def _nonfinite_mismatch(r: np.ndarray, g: np.ndarray) -> str:
    """'' when NaN and +-inf sit in the same places with the same signs, else what differs."""
    for what, a, b in (("NaN", np.isnan(g), np.isnan(r)), ("+inf", np.isposinf(g), np.isposinf(r)),
                       ("-inf", np.isneginf(g), np.isneginf(r))):
        extra, missing = a & ~b, b & ~a
        if extra.any():
            at = tuple(int(i) for i in np.argwhere(extra)[0])
            return f"{what} at {int(extra.sum())} position(s) where the source has {'a finite value' if np.isfinite(r[at]) else r[at]} (first at index {at})"
        if missing.any():
            at = tuple(int(i) for i in np.argwhere(missing)[0])
            return f"the source has {what} at {int(missing.sum())} position(s) where this has {g[at]} (first at index {at})"
    return ""


def compare(ref: np.ndarray, got: np.ndarray, tol: float) -> Figures:
    """Figures for one output, judged against the output's own scale. Passes when NaN/+-inf sit
    in exactly the same places, ``max_abs <= tol * max|ref| + FLOAT32_FLOOR`` over the finite
    entries, and the two point the same way (``cosine >= 1 - tol``). Integers and booleans
    must be equal."""
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        return Figures(float("inf"), float("inf"), 0.0, 0.0, False, 0.0, f"shape {got.shape}, the source gives {ref.shape}")
    if ref.dtype.kind in "biu" and got.dtype.kind in "biu":
        bad = float(np.max(np.abs(ref.astype(np.int64) - got.astype(np.int64)))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref.astype(np.int64)))) if ref.size else 0.0
        return Figures(bad, bad / max(scale, 1.0), 1.0 if bad == 0 else 0.0, scale, bad == 0, 200.0 if bad == 0 else 0.0,
                       "" if bad == 0 else f"integers differ by up to {bad:g}")
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    fin_r, fin_g = np.isfinite(r), np.isfinite(g)
    if fin_r.all() and fin_g.all():  # the usual case: no NaN/inf to place, every entry counts
        reason, r_f, g_f = "", r, g
    else:
        reason = _nonfinite_mismatch(r.reshape(ref.shape), g.reshape(got.shape))
        both = fin_r & fin_g
        r_f, g_f = r[both], g[both]
    diff = np.abs(r_f - g_f)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r_f).max()) if r_f.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    # sums rather than BLAS (np.linalg.norm, np.dot): a multi-threaded BLAS on a busy machine took
    # ~20 ms per call on a 200k-element output (threads woken for a memory-bound loop), numpy's
    # pairwise sums well under 1 ms; as accurate, the same within float64 rounding
    nr, ng = float(np.sqrt(np.sum(r_f * r_f))), float(np.sqrt(np.sum(g_f * g_f)))
    # identical outputs point the same way (the sums' rounding would put the cosine a hair under 1)
    cosine = 1.0 if max_abs == 0 or nr == ng == 0 else min(1.0, float(np.sum(r_f * g_f) / (nr * ng))) if nr and ng else 0.0
    err = float(np.sum(diff * diff))
    sqnr = 200.0 if err == 0 else (min(200.0, 10 * np.log10(nr * nr / err)) if nr > 0 else -200.0)
    bound = tol * scale + FLOAT32_FLOOR
    if not reason and max_abs > bound:
        reason = f"max abs {max_abs:.3g} > {tol:g} x scale {scale:.3g} (max |source|)"
    if not reason and cosine < 1 - tol:
        reason = f"points another way (cosine {cosine:.6f})"
    return Figures(max_abs, max_rel, cosine, scale, not reason, float(sqnr), reason)


# The int8 rule, for an int8 .tflite made from a quantized ONNX model and judged against ONNX
# Runtime running that quantized model: two int8 engines round their requantizations differently
# (TFLite by fixed-point multipliers, ORT in float), so an element may land one step away. An
# output the source quantizes (made by a DequantizeLinear with scale s) passes when every element
# is within INT8_MAX_STEPS * s (plus the float32 floor) and the SQNR is at least INT8_MIN_SQNR_DB;
# a float output of a quantized model (dynamic quantization, float ops after the last
# DequantizeLinear) has no step and passes on the SQNR and cosine alone.
# TFLite's int8 SOFTMAX fixes its output scale at 1/256 (ONNX Runtime's Q after a softmax uses the
# model's, e.g. 1/255) and reads exp from a table: it is another function, whose differences the
# layers after it sum up (2-3 steps measured on a small attention block), so a model holding a
# softmax is judged on SQNR and cosine only, its max_steps reported (INT8_MAX_STEPS_SOFTMAX None).
INT8_MAX_STEPS = 1.0
INT8_MAX_STEPS_SOFTMAX: float | None = None
INT8_MIN_SQNR_DB = 30.0
INT8_MIN_COSINE = 0.999


def compare_int8(ref: np.ndarray, got: np.ndarray, step: float | None, max_steps: float | None = INT8_MAX_STEPS) -> Figures:
    """Figures for one output of an int8 .tflite by the int8 rule (``step``: the source's
    quantization step of this output, None for a float output; ``max_steps``: the bound, None
    for none)."""
    f = compare(ref, got, float("inf"))
    if f.reason and "abs" not in f.reason:  # shape, NaN/inf placement or integer mismatch
        return f
    steps = f.max_abs / step if step else None
    reason = ""
    # (1 + 1e-5): an element exactly one step away differs by the step's float32 rounding
    if steps is not None and max_steps is not None and f.max_abs > max_steps * step * (1 + 1e-5) + FLOAT32_FLOOR:
        reason = f"max abs {f.max_abs:.3g} = {steps:.2f} quantization steps of {step:.3g} (more than {max_steps:g})"
    elif f.sqnr_db < INT8_MIN_SQNR_DB:
        reason = f"SQNR {f.sqnr_db:.1f} dB < {INT8_MIN_SQNR_DB:g} dB"
    elif f.cosine < INT8_MIN_COSINE:
        reason = f"points another way (cosine {f.cosine:.6f} < {INT8_MIN_COSINE})"
    return Figures(f.max_abs, f.max_rel, f.cosine, f.scale, not reason, f.sqnr_db, reason, steps=steps, rule="int8")


def compare_all(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], atol: float) -> dict[str, Figures]:
    return {name: compare(ref[name], got[name], atol) for name in ref}


def worst(a: Figures | None, b: Figures) -> Figures:
    """The worse of two figures of one output (a failure first, then the larger max_rel)."""
    if a is None:
        return b
    if a.ok != b.ok:
        return a if not a.ok else b
    return a if a.max_rel >= b.max_rel else b


Run = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class Verifier:
    """Reference outputs of the source model on every draw, computed once; checks later stages
    (a rewritten graph, TensorFlow, TFLite) against them, output by output, draw by draw."""

    def __init__(self, source: onnx.ModelProto, draws: list[Draw] | Mapping[str, np.ndarray], atol: float = 1e-4,
                 *, optional: tuple[int, ...] = ()):
        """``draws``: a list of :class:`Draw` (or one feed dict); a draw whose index is in
        ``optional`` is dropped, with a note, when the source model fails on it."""
        if not isinstance(draws, list):
            draws = [Draw("given", dict(draws))]
        self.atol = atol
        self.notes: list[str] = []
        # per output (step, bound): judge by the int8 rule (set by ``graph-convert verify`` for a quantized source)
        self.int8_steps: dict[str, tuple[float | None, float | None]] | None = None
        # outputs made by a discrete selection (traced from the graph) and the selection tensors the
        # reference exposes to judge them (checks/selection.py)
        self.selection = trace_selection(source)
        have = {o.name for o in source.graph.output}
        exposed = list(dict.fromkeys(t for ops in self.selection.values() for op in ops for t in op.exposed() if t not in have))
        self.selection_tensors: list[dict[str, np.ndarray]] = []
        try:
            sess = source_session(source, edit=(lambda m: _with_outputs(m, exposed)) if exposed else None)
        except Exception as e:  # the source itself is the reference: without it nothing can be proven
            raise ConvertError(f"source model does not load in ONNX Runtime, so it cannot serve as the reference: {ort_error_line(e)}") from None
        # how every ORT session of this verifier got its weights (report.json "big_model")
        self.sessions: list[str] = [f"source: {sess.graph_convert_weights}"]
        names = [o.name for o in source.graph.output]
        self.draws: list[Draw] = []
        self.references: list[dict[str, np.ndarray]] = []
        for i, d in enumerate(draws):
            try:
                got = dict(zip(names + exposed, sess.run(names + exposed, d.feeds)))
                self.references.append({n: got[n] for n in names})
                self.selection_tensors.append(got)
                self.draws.append(d)
            except Exception as e:
                if i in optional:
                    self.notes.append(f"draw {d.label!r} dropped: the source model fails on it in ONNX Runtime ({ort_error_line(e)[:200]})")
                    continue
                raise ConvertError(f"source model does not run in ONNX Runtime on the {d.label} inputs, so it cannot serve "
                                   f"as the reference: {ort_error_line(e)[:400]}") from None
        del sess  # its copy of the weights (decoded for it alone when the model is large) goes now
        self.failed_draw: Draw | None = None
        self._source = source if self.selection else None
        self._forced: dict[str, Any] = {}

    def _forced_rows(self, op, name: str, axis: int, col: int, keys, ids: np.ndarray, draw: int):
        """Output ``name``'s rows for the candidates ``ids``, by the source in ONNX Runtime with the
        NMS's selection fed instead of computed (as many rows at a time as the output holds), or why not."""
        if op.node not in self._forced:
            try:
                self._forced[op.node] = source_session(self._source, edit=lambda m: forced_selection(m, op.outputs[0]))
            except Exception as e:
                self._forced[op.node] = f"the source with the selection fed does not load in ONNX Runtime: {ort_error_line(e)[:200]}"
        sess = self._forced[op.node]
        if isinstance(sess, str):
            return sess
        per_run = max(1, int(np.shape(self.references[draw][name])[axis]))
        rows = []
        for k in range(0, ids.size, per_run):
            sel = keys.cand_rows[ids[k:k + per_run]].astype(np.int64)
            out = sess.run([name], {**self.draws[draw].feeds, op.outputs[0]: sel})[0]
            rows.append(np.moveaxis(np.asarray(out, np.float64), axis, 0).reshape(np.shape(out)[axis], -1)[:sel.shape[0]])
        table = np.concatenate(rows) if rows else np.zeros((0, 1))
        if table.shape[0] != ids.size or not np.allclose(table[:, col], keys.cand_keys[ids], rtol=1e-6, atol=FLOAT32_FLOOR):
            return "the output's rows do not follow a fed selection row by row"
        return table

    def compare_output(self, name: str, ref: np.ndarray, got: np.ndarray, draw: int) -> Figures:
        """One output on one draw by its rule: the selection rule for an output traced to a
        NonMaxSuppression / TopK selection (README "Verification"), else the elementwise rule."""
        if self.int8_steps is not None:  # a quantized source: the int8 rule (``checks.int8_steps``)
            return compare_int8(ref, got, *self.int8_steps.get(name, (None, INT8_MAX_STEPS)))
        f = compare(ref, got, self.atol)
        ops = self.selection.get(name)
        if not ops:
            return f
        info: dict[str, Any] = {"ops": [f"{op.op_type} (node {op.node})" for op in ops], "permuted_rows": 0, "flipped_rows": 0}
        if f.ok:
            return dataclasses.replace(f, rule="selection", selection=info)
        why = _selection_mapping(ops, name, np.asarray(ref), self.selection_tensors[draw], self.atol)
        if isinstance(why, str):  # the rule cannot map this output: the elementwise verdict stands
            info["not_applied"] = why
            return dataclasses.replace(f, rule="selection", selection=info, reason=f"{f.reason} (selection rule not applied: {why})")
        keys, axis, col = why
        integer = np.asarray(ref).dtype.kind in "biu"
        if col is None:  # the selection tensor: a candidate's row is its index
            rows_for = lambda ids: keys.cand_rows[ids].astype(np.float64)  # noqa: E731
        elif ops[0].op_type == "NonMaxSuppression":
            rows_for = lambda ids: self._forced_rows(ops[0], name, axis, col, keys, ids, draw)  # noqa: E731
        else:
            rows_for = None
        v = judge_selection(ref, got, keys, axis, 0.0 if integer else self.atol * f.scale + FLOAT32_FLOOR, rows_for)
        info.update(permuted_rows=v.permuted, flipped_rows=v.flipped, row_axis=axis, score_tolerance=keys.tol)
        if not v.reason and v.cosine < 1 - self.atol:
            v.reason = f"matched rows point another way (cosine {v.cosine:.6f})"
        if v.reason:
            return dataclasses.replace(f, rule="selection", selection=info, reason=f"by the selection rule: {v.reason}")
        return Figures(v.max_abs, v.max_abs / f.scale if f.scale > 0 else 0.0, v.cosine, f.scale, True, v.sqnr_db,
                       rule="selection", selection=info)

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The first draw (the user's, when given)."""
        return self.draws[0].feeds

    @property
    def draw_labels(self) -> list[str]:
        return [d.label for d in self.draws]

    def input_independent_outputs(self) -> dict[str, str]:
        """Outputs the check proves little about: the same on every draw, or all zero."""
        out = {}
        for name in self.references[0]:
            vals = [np.asarray(r[name]) for r in self.references]
            if vals[0].size and not np.any(vals[0]) and all(not np.any(v) for v in vals):
                out[name] = "all zero on every draw"
            elif len(vals) > 1 and all(v.shape == vals[0].shape and np.array_equal(v, vals[0], equal_nan=True) for v in vals[1:]):
                out[name] = "the same on every draw (it does not depend on the inputs)"
        return out

    def check(self, run: Run, stage: str, steps: Mapping[str, tuple[float | None, float | None]] | None = None) -> dict[str, Figures]:
        """Run ``run`` (source-layout feeds -> source-layout outputs) on every draw and compare;
        raises VerificationError naming the output, the draw and what differs. ``steps``: judge
        by the int8 rule (:func:`compare_int8`) with these (quantization step, bound in steps)
        per output."""
        figures: dict[str, Figures] = {}
        per_draw: dict[str, list] = {}
        for k, (d, ref) in enumerate(zip(self.draws, self.references)):
            got = run(d.feeds)
            missing = [n for n in ref if n not in got]
            if missing:
                raise VerificationError(f"{stage}: outputs {missing} missing", stage)
            for name in ref:
                f = self.compare_output(name, ref[name], got[name], k) if steps is None else compare_int8(ref[name], got[name], *steps.get(name, (None, INT8_MAX_STEPS)))
                if not f.ok:
                    self.failed_draw = d
                    raise VerificationError(f"{stage}: output {name!r} differs from the source model in ONNX Runtime "
                                            f"on the {d.label} inputs: {f.reason}", stage)
                figures[name] = worst(figures.get(name), f)
                per_draw.setdefault(name, []).append((d.label, f))
        return {name: dataclasses.replace(f, per_draw=tuple(per_draw[name])) for name, f in figures.items()}

    def check_graph(self, graph: Graph, stage: str) -> dict[str, Figures]:
        """Lower ``graph``, run it in ORT on every draw, compare; raises VerificationError on mismatch."""
        try:
            sess = graph_session(graph)
            names = [o.name for o in sess.get_outputs()]
            self.sessions.append(f"{stage}: {sess.graph_convert_weights}")
        except Exception as e:
            raise VerificationError(f"{stage}: rewritten graph does not load in ONNX Runtime: {ort_error_line(e)}", stage) from None

        def run(feeds):
            try:
                got = dict(zip(names, sess.run(names, to_rewritten_layout(feeds, graph.io_perms))))
            except Exception as e:
                raise VerificationError(f"{stage}: rewritten graph does not run in ONNX Runtime: {ort_error_line(e)}", stage) from None
            return to_source_layout(got, graph.io_perms)

        return self.check(run, stage)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in names:
        m.graph.output.append(onnx.ValueInfoProto(name=t))
    return m


def _selection_mapping(ops: list, name: str, ref: np.ndarray, tensors: Mapping[str, np.ndarray], atol: float):
    """(keys, row axis, key column) to judge output ``name`` by the selection rule, or why not."""
    if len(ops) != 1:
        return f"it depends on {len(ops)} selections"
    op = ops[0]
    keys = keys_of(op, dict(tensors), atol, FLOAT32_FLOOR)
    if keys is None:
        return f"{op.op_type} {op.node} selects from more than one list"
    if name == op.selection:  # the selected indices themselves: a row names its candidate
        return keys, keys.rows_axis, None
    found = find_key_column(ref, keys, FLOAT32_FLOOR)
    if found is None:
        return "no row axis of the output carries the selection's scores in selection order"
    return keys, found[0], found[1]


def ort_error_line(e: BaseException) -> str:
    """An ONNX Runtime error on one line; protobuf's own 2 GB limit said as such (not a broken model)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if any(k in text for k in ("Failed to serialize proto", "exceeds maximum protobuf size", "2GB", "2 GB")):
        # protobuf's own limit, not a fault of the model
        return f"the model is too large for one protobuf message (2 GB limit), not broken: {text[:200]}"
    return text


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
        a = source_session(source, edit=lambda m: expose(m, common))
        b = graph_session(graph, with_value_info=False, edit=lambda m: expose(m, common))
        ra = dict(zip([o.name for o in a.get_outputs()], a.run(None, dict(feeds))))
        rb = dict(zip([o.name for o in b.get_outputs()], b.run(None, to_rewritten_layout(feeds, graph.io_perms))))
    except Exception:
        return None
    for t in common:
        if t in ra and t in rb and not compare(ra[t], rb[t], atol).ok:
            return t
    return None


Check = Callable[[Graph, str], None]
