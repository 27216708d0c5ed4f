"""``graph-convert verify`` with a source whose inputs have symbolic dims: the candidate says which
sizes to check. A dim the candidate has fixed (a static .tflite or SavedModel) is checked at that
size; a dim the candidate leaves free (``-1`` / ``None``) is checked at several sizes (those of
:mod:`graph_convert.conversion.dims`), each reported with its verdict. ``--input-shape`` wins
over both."""
from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import onnx

import graph_convert.conversion.dims as DM
from graph_convert.errors import ConvertError


def _candidate_for(name: str, cands: Sequence[Any], sanitise) -> Any | None:
    same = [c for c in cands if sanitise(c.name) == sanitise(name)]
    return same[0] if same else (cands[0] if len(cands) == 1 else None)


def _fit(src: list, cand: tuple) -> dict[int, int | None] | None:
    """Source axis -> candidate size (None: free there) under the permutation whose static sizes
    agree and that puts most of the source's static sizes on equal candidate sizes (identity,
    then channels-last, then any on a tie); None when none fits."""
    r = len(src)
    if len(cand) != r:
        return None
    prefer = [tuple(range(r)), (0, *range(2, r), 1) if r >= 3 else None]
    perms = [p for p in prefer if p] + (list(itertools.permutations(range(r))) if r <= 5 else [])
    best, score = None, -1
    for p in perms:  # candidate position i holds source axis p[i]
        if not all(cand[i] is None or not isinstance(src[p[i]], int) or cand[i] == src[p[i]] for i in range(r)):
            continue
        n = sum(1 for i in range(r) if isinstance(src[p[i]], int) and cand[i] == src[p[i]])
        if n > score:
            best, score = p, n
    return None if best is None else {best[i]: cand[i] for i in range(r)}


def plan(model: onnx.ModelProto, candidate_inputs: Sequence[Any], overrides: Mapping[str, tuple], sanitise) -> tuple[dict, list[dict]]:
    """(dims by name, size assignments to check): the dims fixed by ``overrides`` or by the
    candidate, the free ones at several sizes."""
    dims = DM.find_dims(model)
    DM.apply_fixes(dims, dict(overrides), ())
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]
              for vi in model.graph.input}
    for name, dim in dims.items():
        if not dim.free:
            continue
        for x, a in dim.axes:
            c = _candidate_for(x, candidate_inputs, sanitise)
            if c is None or c.shape is None:
                continue
            fit = _fit(shapes[x], tuple(c.shape))
            if fit is not None and fit.get(a) is not None:
                DM.fix_dim(dim, int(fit[a]), f"the candidate's input {c.name!r}")
                break
    for dim in dims.values():  # free in the candidate, and nothing says which sizes: the usual ones
        if dim.free:
            dim.requested = "free in the candidate"
    return dims, DM.assignments(dims)


def shapes_at(model: onnx.ModelProto, dims: dict, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
    return DM.input_shapes(model, dims, sizes)


def with_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The source with its inputs at ``shapes`` (every shape downstream inferred at those sizes)."""
    return DM.with_shapes(model, shapes)


def summary(dims: dict, checks: list[dict]) -> dict[str, Any]:
    """report.json ``dims``: each dim fixed (and by what) or checked at which sizes."""
    out: dict[str, Any] = {}
    for n, d in dims.items():
        if d.free:
            out[n] = {"free_in_candidate": True, "checked_sizes": sorted({e["sizes"][n] for e in checks if e["verdict"] == "equivalent"})}
        else:
            out[n] = {"fixed": d.fixed, "by": d.fixed_by}
    return out


def too_few(dims: dict, checks: list[dict]) -> str | None:
    """A note when a free dim passed at fewer than MIN_CHECKED sizes the source takes."""
    for n, d in dims.items():
        if d.free:
            ok = {e["sizes"][n] for e in checks if e["verdict"] == "equivalent"}
            if len(ok) < DM.MIN_CHECKED:
                return f"dim {n!r} is free in the candidate but was proven at only {len(ok)} size(s)"
    return None


def source_fails(sizes: dict[str, int], free: list[str], e: ConvertError) -> dict[str, Any]:
    return {"sizes": sizes, "verdict": f"the source model fails in ONNX Runtime at {', '.join(f'{n}={sizes[n]}' for n in free)}: "
                                       f"{str(e)[:300]}"}
