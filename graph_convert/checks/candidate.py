"""Another converter's file as a candidate: load a .tflite or SavedModel, match its inputs and
outputs (names, dtypes, layouts) to the source's, run it in the source's layout, and judge it by
the verification rule (:mod:`graph_convert.checks.equivalence`). Used by ``graph-convert verify``
(:mod:`graph_convert.checks.foreign`) and by the onnx2tf back end."""
from __future__ import annotations

import itertools
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from onnx import helper

from graph_convert.checks.equivalence import Draw, Figures, Verifier, compare, worst
from graph_convert.errors import ConvertError, VerificationError
from graph_convert.ir import Graph
from graph_convert.ir import perm as P
from graph_convert.process import import_tensorflow

# -- the candidate file ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """One input or output of a model: the key it is fed or read by, shape (None: any size), dtype."""

    name: str
    shape: tuple | None
    dtype: np.dtype


@dataclass
class Candidate:
    """A foreign model: its inputs and outputs and a ``run`` taking and giving arrays by its names."""

    path: str
    kind: str  # "tflite" | "saved_model"
    signature: str | None
    inputs: list[Spec]
    outputs: list[Spec]
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def quiet():
    from graph_convert.process import quiet_fds

    return quiet_fds()


def _tflite_interpreter(path: str, keep_all: bool = False, allocate: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # keep_all: no XNNPACK delegate, whose fused partitions hide the tensors inside them
    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if keep_all else OpResolverType.AUTO
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keeping every tensor "is intended for debugging": that is what it is for here
        it = Interpreter(model_path=path, num_threads=1, experimental_preserve_all_tensors=keep_all,
                         experimental_op_resolver_type=resolver)
        if allocate:
            it.allocate_tensors()
    return it


def _runs(path: str, feeds: Mapping[str, np.ndarray], go):
    """``go()``; a candidate that LiteRT cannot run at these shapes fails verification in one line."""
    try:
        return go()
    except (RuntimeError, ValueError) as e:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
        raise VerificationError(f"candidate {path} does not run in the LiteRT interpreter at {shapes}: {_line(e)[:300]}",
                                "candidate") from None


def _tflite_spec(name: str, d: Mapping[str, Any]) -> Spec:
    sig = d.get("shape_signature")
    dims = [int(v) for v in (sig if sig is not None and len(sig) == len(d["shape"]) else d["shape"])]
    return Spec(name, tuple(None if v < 0 else v for v in dims), np.dtype(d["dtype"]))


def pick_signature(names: Sequence[str], wanted: str | None, path: str) -> str | None:
    """``wanted``, else ``serving_default``, else the only one; None when the file has none."""
    if wanted is not None:
        if wanted not in names:
            raise ConvertError(f"--signature {wanted}: {path} has no such signature (it has: {', '.join(names) or 'none'})")
        return wanted
    if not names:
        return None
    if "serving_default" in names or len(names) == 1:
        return "serving_default" if "serving_default" in names else names[0]
    raise ConvertError(f"{path}: several signatures ({', '.join(names)}) and none is serving_default; choose one with --signature")


def _load_error(path: str, e: Exception) -> ConvertError:
    flex = sorted(set(re.findall(r"\((Flex\w+)\)", str(e))))
    if "Select TensorFlow op" in str(e):
        return ConvertError(f"candidate {path}: uses select TensorFlow ops ({', '.join(flex) or 'Flex'}), which need the Flex "
                            f"delegate: the LiteRT interpreter (and a plain TFLite runtime) cannot run it, so it cannot be "
                            f"checked; check the converter's SavedModel instead")
    return ConvertError(f"candidate {path}: not a TFLite flatbuffer LiteRT can load ({_line(e)[:300]})")


def load_tflite(path: str, signature: str | None = None) -> Candidate:
    try:
        it = _tflite_interpreter(path, allocate=False)
    except Exception as e:
        raise _load_error(path, e) from None
    try:
        it.allocate_tensors()
    except Exception as e:
        if "Select TensorFlow op" in str(e) or "custom op" in str(e):
            raise _load_error(path, e) from None
        # otherwise the file's default shape (a free dim is 1 there) is not one the model takes:
        # the runs at the feeds' shapes decide
    sig = pick_signature(list(it.get_signature_list()), signature, path)
    if sig is None:  # a file without signatures: tensors by name, in the order the file lists them
        ins = [_tflite_spec(d["name"], d) for d in it.get_input_details()]
        outs = [_tflite_spec(d["name"], d) for d in it.get_output_details()]
        return Candidate(path, "tflite", None, ins, outs, lambda feeds: _run_tflite_plain(path, feeds))
    runner = it.get_signature_runner(sig)
    ins = [_tflite_spec(k, d) for k, d in runner.get_input_details().items()]
    outs = [_tflite_spec(k, d) for k, d in runner.get_output_details().items()]
    return Candidate(path, "tflite", sig, ins, outs, lambda feeds: _run_tflite_signature(path, sig, feeds))


def _run_tflite_signature(path: str, sig: str, feeds: Mapping[str, np.ndarray], keep_all: bool = False):
    # allocated by the runner at the feeds' shapes (a free dim is 1 in the file's default shape,
    # which a model may not take)
    it = _tflite_interpreter(path, keep_all, allocate=False)
    runner = it.get_signature_runner(sig)

    def go():
        try:
            return {k: np.array(v) for k, v in runner(**feeds).items()}
        except ValueError as e:
            if "Invalid tensor size" not in str(e):
                raise
        # the Python binding hands out no zero-element tensor (no detection): read those outputs'
        # shapes and dtypes from the interpreter after the run
        return {k: np.zeros([int(v) for v in d["shape"]], d["dtype"]) if 0 in d["shape"] else np.array(it.get_tensor(d["index"]))
                for k, d in runner.get_output_details().items()}

    out = _runs(path, feeds, go)
    return (out, it) if keep_all else out


def _run_tflite_plain(path: str, feeds: Mapping[str, np.ndarray], keep_all: bool = False):
    it = _tflite_interpreter(path, keep_all, allocate=False)

    def go():
        for d in it.get_input_details():
            if tuple(d["shape"]) != feeds[d["name"]].shape:
                it.resize_tensor_input(d["index"], feeds[d["name"]].shape)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], feeds[d["name"]])
        it.invoke()
        return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}

    out = _runs(path, feeds, go)
    return (out, it) if keep_all else out


def run_tflite_keeping_tensors(c: Candidate, feeds: Mapping[str, np.ndarray]):
    """(outputs, the interpreter with every intermediate tensor still readable)."""
    if c.signature is None:
        return _run_tflite_plain(c.path, feeds, keep_all=True)
    return _run_tflite_signature(c.path, c.signature, feeds, keep_all=True)


def load_saved_model(path: str, signature: str | None = None) -> Candidate:
    import_tensorflow()
    import tensorflow as tf

    try:
        with quiet():
            loaded = tf.saved_model.load(path)
    except Exception as e:
        raise ConvertError(f"{path}: not a SavedModel TensorFlow can load ({_line(e)[:300]})") from None
    sig = pick_signature(list(loaded.signatures.keys()), signature, path)
    if sig is None:
        raise ConvertError(f"{path}: the SavedModel has no signatures (export one, e.g. serving_default)")
    fn = loaded.signatures[sig]
    _, kwargs = fn.structured_input_signature

    def spec(name, s):
        return Spec(name, None if s.shape.rank is None else tuple(s.shape.as_list()), np.dtype(s.dtype.as_numpy_dtype))

    ins = [spec(k, s) for k, s in kwargs.items()]
    outs = [spec(k, s) for k, s in fn.structured_outputs.items()]

    def run(feeds):
        res = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        return {k: v.numpy() for k, v in res.items()}

    # the loaded object owns the variables the signature reads: keep it alive with the runner
    run.loaded = loaded
    return Candidate(path, "saved_model", sig, ins, outs, run)


def load_candidate(path: str, signature: str | None = None) -> Candidate:
    if not os.path.exists(path):
        raise ConvertError(f"candidate {path}: no such file or folder")
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            raise ConvertError(f"candidate {path}: a folder without saved_model.pb (expected a SavedModel folder or a .tflite file)")
        return load_saved_model(path, signature)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":
        raise ConvertError(f"candidate {path}: not a .tflite flatbuffer (no TFL3 identifier) and not a SavedModel folder")
    return load_tflite(path, signature)


# -- matching inputs and outputs --------------------------------------------------------------------

def sanitise(name: str) -> str:
    """The forms converters give one ONNX name: ``input.1`` -> ``input_1``, ``x:0`` -> ``x``,
    ``serving_default_x:0`` -> ``x`` (TFLite's signature tensors); case-insensitive."""
    n = re.sub(r":\d+$", "", name)
    n = re.sub(r"^serving_default_", "", n)
    return re.sub(r"[^0-9A-Za-z_]", "_", n).lower()


def layout_perms(src: tuple, cand: tuple | None) -> list[tuple[int, ...]]:
    """Every permutation ``p`` with ``transpose(src_array, p).shape`` fitting ``cand`` (None dims
    fit anything), one per distinct data order (moving size-1 axes changes nothing), the
    identity first, then channels-last, then channels-first, then the rest.

    >>> layout_perms((1, 3, 8, 8), (1, 8, 8, 3))
    [(0, 2, 3, 1)]
    >>> layout_perms((1, 4, 4, 4), (1, 4, 4, 4))[:2]
    [(0, 1, 2, 3), (0, 2, 3, 1)]"""
    if cand is None:
        return [tuple(range(len(src)))]
    if len(cand) != len(src):
        return []
    r = len(src)
    if r > 6:
        return [tuple(range(r))] if all(c is None or c == s for c, s in zip(cand, src)) else []
    prefer = [tuple(range(r)), (0, *range(2, r), 1) if r >= 3 else None, (0, r - 1, *range(1, r - 1)) if r >= 3 else None]
    seen, out = set(), []
    for p in [q for q in prefer if q] + list(itertools.permutations(range(r))):
        if all(c is None or c == src[i] for c, i in zip(cand, p)):
            key = tuple(i for i in p if src[i] != 1)
            if key not in seen:
                seen.add(key)
                out.append(tuple(p))
    return out


@dataclass
class Pair:
    """A source tensor and the candidate tensor it was matched with; ``perms`` are the layouts
    that fit the shapes (candidate array = transpose(source array, perm)), ``perm`` the one used."""

    side: str  # "input" | "output"
    source: Spec
    cand: Spec
    how: str
    perms: list[tuple[int, ...]]
    perm: tuple[int, ...] = ()
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {"source": self.source.name, "candidate": self.cand.name, "matched_by": self.how,
             "source_shape": list(self.source.shape or []), "candidate_shape": [d if d is not None else -1 for d in self.cand.shape or []],
             "layout_perm": list(self.perm), "layouts_fitting_the_shape": [list(p) for p in self.perms]}
        if self.note:
            d["note"] = self.note
        return d


def parse_map(text: str) -> tuple[str, str, tuple[int, ...] | None]:
    """``CAND=SRC`` or ``CAND=SRC:0,2,3,1`` -> (candidate name, source name, perm or None)."""
    cand, eq, rest = text.partition("=")
    if not eq or not cand or not rest:
        raise ConvertError(f"--map {text!r}: expected CANDIDATE_NAME=SOURCE_NAME[:perm], e.g. out_0=logits or x=input:0,2,3,1")
    src, colon, tail = rest.rpartition(":")
    # a single number is a TF tensor-name suffix (``x:0``); a rank-1 layout needs no mapping
    if colon and re.fullmatch(r"\d+(,\d+)+", tail):
        p = tuple(int(v) for v in tail.split(","))
        if sorted(p) != list(range(len(p))):
            raise ConvertError(f"--map {text!r}: {tail} is not a permutation of 0..{len(p) - 1}")
        return cand, src, p
    return cand, rest, None


def _dtype_fits(src: np.dtype, cand: np.dtype) -> bool:
    kinds = {"f": "f", "i": "iu", "u": "iu", "b": "b"}
    return cand.kind in kinds.get(src.kind, src.kind)


def _pair(side: str, s: Spec, c: Spec, how: str, forced: tuple | None = None) -> Pair:
    what = f"{side} {c.name!r} of the candidate and {s.name!r} of the source"
    if side == "output" and c.shape == () and s.shape:
        # a .tflite writes a data-dependent output (a detector's boxes) with no shape at all, as
        # it writes a scalar: its rank is unknown until it runs, where the values are compared
        c = Spec(c.name, None, c.dtype)
    if not _dtype_fits(s.dtype, c.dtype):
        raise ConvertError(f"{what}: dtype {c.dtype} vs {s.dtype}")
    src_shape = s.shape or ()
    if c.shape is not None and all(d is not None for d in c.shape) and int(np.prod(c.shape)) != int(np.prod(src_shape)):
        raise ConvertError(f"{what}: shape {tuple(c.shape)} vs {tuple(src_shape)}: element counts differ")
    if forced is not None:
        if len(forced) != len(src_shape) or not all(d is None or d == src_shape[i] for d, i in zip(c.shape or [], forced)):
            raise ConvertError(f"--map {c.name}={s.name}:{','.join(map(str, forced))}: the source shape {tuple(src_shape)} "
                               f"so permuted does not give the candidate's {tuple(c.shape or ())}")
        return Pair(side, s, c, how, [forced], forced)
    perms = layout_perms(src_shape, c.shape)
    if not perms:
        raise ConvertError(f"{what}: shape {tuple(c.shape or ())} is no permutation of {tuple(src_shape)}")
    return Pair(side, s, c, how, perms, perms[0])


def _fits(s: Spec, c: Spec) -> bool:
    return _dtype_fits(s.dtype, c.dtype) and bool(layout_perms(s.shape or (), c.shape))


def match(side: str, src: list[Spec], cand: list[Spec], maps: Mapping[str, tuple[str, tuple | None]]) -> list[Pair]:
    """Pair every source tensor with one candidate tensor: ``--map`` first, then equal names
    (sanitised), then the rest in order, each with the first left whose shape fits."""
    if len(src) != len(cand):
        raise ConvertError(f"the candidate has {len(cand)} {side}s ({', '.join(c.name for c in cand)}), the source "
                           f"{len(src)} ({', '.join(s.name for s in src)})")
    by_name = {s.name: s for s in src}
    left_src, left_cand, pairs = list(src), list(cand), {}
    for c in cand:
        if c.name in maps:
            sname, p = maps[c.name]
            if sname not in by_name:
                raise ConvertError(f"--map {c.name}={sname}: the source has no {side} {sname!r} ({', '.join(by_name)})")
            pairs[sname] = _pair(side, by_name[sname], c, "--map", p)
            left_src.remove(by_name[sname]), left_cand.remove(c)
    for s in list(left_src):
        same = [c for c in left_cand if sanitise(c.name) == sanitise(s.name)]
        if same:
            pairs[s.name] = _pair(side, s, same[0], "name")
            left_src.remove(s), left_cand.remove(same[0])
    for s in list(left_src):
        fit = [c for c in left_cand if _fits(s, c)] or left_cand[:1]
        pairs[s.name] = _pair(side, s, fit[0], "order and shape")
        left_cand.remove(fit[0])
    return [pairs[s.name] for s in src]


def source_specs(graph: Graph, names: Sequence[str], shapes: Mapping[str, tuple]) -> list[Spec]:
    out = []
    for n in names:
        shape = shapes.get(n)
        if shape is None:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in (graph.shape(n) or ()))
        out.append(Spec(n, tuple(shape), np.dtype(helper.tensor_dtype_to_np_dtype(graph.dtype(n)))))
    return out


# -- running and judging ------------------------------------------------------------------------------

def feed_candidate(c: Candidate, pairs: list[Pair], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {p.cand.name: np.ascontiguousarray(np.transpose(feeds[p.source.name], p.perm)).astype(p.cand.dtype, copy=False)
            for p in pairs}


def to_source(pair: Pair, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != len(pair.perm):
        return arr  # compare() names the shape difference
    return np.transpose(arr, P.invert(pair.perm))


def run_in_source_layout(c: Candidate, ins: list[Pair], outs: list[Pair], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        got = c.run(feed_candidate(c, ins, feeds))
    except VerificationError:
        raise  # LiteRT could not run it at these shapes: it fails verification, as it says
    except Exception as e:
        raise ConvertError(f"candidate {c.path} does not run on the source's inputs: {_line(e)[:300]}") from None
    return {p.source.name: to_source(p, got[p.cand.name]) for p in outs}


def _score(figs: Sequence[Figures]) -> tuple:
    return (sum(f.ok for f in figs), -sum(min(f.max_rel, 1e30) for f in figs))


def resolve_layouts(c: Candidate, ins: list[Pair], outs: list[Pair], verifier: Verifier, limit: int = 64) -> None:
    """Where a shape fits several layouts (H == W == C, square matrices), try them on the first
    draw: every combination of the ambiguous inputs' layouts, each output's best layout for it."""
    if all(len(p.perms) == 1 for p in ins + outs):
        return
    feeds, ref = verifier.draws[0].feeds, verifier.references[0]
    best, error = None, None
    for combo in itertools.islice(itertools.product(*[p.perms for p in ins]), limit):
        for p, q in zip(ins, combo):
            p.perm = q
        try:
            got = c.run(feed_candidate(c, ins, feeds))
        except Exception as e:  # a wrong layout of a free-size input can make the candidate fail: not this one
            error = e
            continue
        choice, figs = [], []
        for p in outs:
            tried = [(compare(ref[p.source.name], _inverse(got[p.cand.name], q), verifier.atol), q) for q in p.perms]
            f, q = max(tried, key=lambda t: _score([t[0]]))
            choice.append(q), figs.append(f)
        if best is None or _score(figs) > best[0]:
            best = (_score(figs), combo, choice)
    if best is None:
        raise error
    _, combo, choice = best
    for p, q in list(zip(ins, combo)) + list(zip(outs, choice)):
        p.perm = q
        if len(p.perms) > 1:
            verdict = "matched on the data" if best[0][0] == len(outs) else "fit best on the data (nothing matched exactly)"
            p.note = (f"shape {tuple(p.source.shape)} -> {tuple(p.cand.shape)} fits {len(p.perms)} layouts "
                      f"({', '.join(str(x) for x in p.perms[:6])}{', ...' if len(p.perms) > 6 else ''}); {q} {verdict}")


def _inverse(arr: np.ndarray, q: tuple) -> np.ndarray:
    arr = np.asarray(arr)
    return np.transpose(arr, P.invert(q)) if arr.ndim == len(q) else arr


def judge(c: Candidate, ins: list[Pair], outs: list[Pair], verifier: Verifier) -> tuple[dict[str, Figures], Draw | None, dict]:
    """Figures per output (worst draw), the first draw on which something differs, and the
    candidate's outputs on it."""
    figures: dict[str, Figures] = {}
    failed, failed_got = None, {}
    for k, (d, ref) in enumerate(zip(verifier.draws, verifier.references)):
        got = run_in_source_layout(c, ins, outs, d.feeds)
        for p in outs:
            f = verifier.compare_output(p.source.name, ref[p.source.name], got[p.source.name], k)
            if not f.ok and failed is None:
                failed, failed_got = d, got
                f.reason = f"{f.reason} (on the {d.label} inputs)"
            figures[p.source.name] = worst(figures.get(p.source.name), f)
    return figures, failed, failed_got


# -- the API ------------------------------------------------------------------------------------------

def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
