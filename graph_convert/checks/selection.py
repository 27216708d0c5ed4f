"""The selection rule: how an output made by a discrete selection (NonMaxSuppression's selected
indices, TopK's indices, and whatever is gathered by them downstream) is judged against the
reference. Two runtimes whose scores differ by float rounding may order tied candidates
differently, keep the other of two tied overlapping boxes, or cut a list at another of two tied
scores; the rule accepts those differences and nothing else (README "Verification").

Which outputs are selection outputs is traced from the graph (the outputs reachable from a
NonMaxSuppression's output or a TopK's indices), never guessed from names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# the selection ops and the output of each that carries the selection
SELECTION_OUTPUT = {"NonMaxSuppression": 0, "TopK": 1}


@dataclass(frozen=True)
class SelectionOp:
    """One selection node of the source and what the reference must expose to judge it."""

    op_type: str
    node: str  # node name (or its first output when unnamed)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axis: int = -1  # TopK
    largest: bool = True  # TopK

    @property
    def selection(self) -> str:
        return self.outputs[SELECTION_OUTPUT[self.op_type]]

    def exposed(self) -> list[str]:
        """Tensors the reference run must expose: the scores (NMS) or values (TopK) and the selection."""
        if self.op_type == "NonMaxSuppression":
            names = [self.inputs[1], self.outputs[0]] + ([self.inputs[4]] if len(self.inputs) > 4 and self.inputs[4] else [])
        else:
            names = [self.inputs[0], self.outputs[1]]
        return [n for n in names if n]


def trace(model: onnx.ModelProto) -> dict[str, list[SelectionOp]]:
    """Graph output -> the selection ops it depends on (outputs that depend on none are absent).
    Only the main graph is traced: a selection inside a control-flow body makes its outputs
    judged by the ordinary rule (the stricter one)."""
    g = model.graph
    ops: list[SelectionOp] = []
    reach: dict[str, set[int]] = {}  # tensor -> indices of the selection ops it depends on
    for n in g.node:  # nodes are in topological order in a valid ONNX graph
        deps = set().union(*(reach.get(t, set()) for t in n.input if t))
        if n.op_type in SELECTION_OUTPUT and n.domain in ("", "ai.onnx"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            ops.append(SelectionOp(n.op_type, n.name or n.output[0], tuple(n.input), tuple(n.output),
                                   int(attrs.get("axis", -1)), bool(attrs.get("largest", 1))))
            k = SELECTION_OUTPUT[n.op_type]
            if len(n.output) > k and n.output[k]:
                reach.setdefault(n.output[k], set()).add(len(ops) - 1)
            others = [o for i, o in enumerate(n.output) if i != k and o]
        else:
            others = [o for o in n.output if o]
        if deps:
            for o in others:
                reach.setdefault(o, set()).update(deps)
    return {o.name: [ops[i] for i in sorted(reach[o.name])] for o in g.output if reach.get(o.name)}


def forced_selection(model: onnx.ModelProto, selected: str) -> onnx.ModelProto:
    """``model`` with the node making ``selected`` removed and ``selected`` a graph input: the
    reference's rows for any candidates, to tell a real candidate's row from a wrong one."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [n for n in m.graph.node if selected not in n.output]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.input.append(onnx.helper.make_tensor_value_info(selected, onnx.TensorProto.INT64, [None, 3]))
    return m


@dataclass
class Keys:
    """The reference's selection: every candidate (as a row of the selection tensor: NMS's
    (batch, class, box), TopK's (index,)), its sort key (larger first) and group (rows are ordered
    within a group: NMS's (batch, class), TopK's one list); which candidates were selected, in
    order; the key tolerance."""

    cand_rows: np.ndarray  # (m, w) int64
    cand_keys: np.ndarray  # (m,) float64
    cand_groups: np.ndarray  # (m,) int64
    sel_ids: np.ndarray  # (n,) candidate ids of the reference's selection, in its order
    tol: float  # how far one runtime's key may sit from the other's
    threshold: float | None = None  # NMS's score_threshold
    rows_axis: int = 0  # the row axis of the selection tensor itself

    @property
    def keys(self) -> np.ndarray:
        return self.cand_keys[self.sel_ids]

    @property
    def groups(self) -> np.ndarray:
        return self.cand_groups[self.sel_ids]

    def id_of(self, row: np.ndarray) -> int | None:
        """The candidate a row of the selection tensor names, or None."""
        hit = np.flatnonzero(np.all(self.cand_rows == np.asarray(row, np.float64)[None, :], axis=1))
        return int(hit[0]) if hit.size else None


def keys_of(op: SelectionOp, tensors: dict[str, np.ndarray], atol: float, floor: float) -> Keys | None:
    """The reference's keys for ``op`` from its exposed tensors; None when the rule cannot map it
    (a TopK over more than one list)."""
    if op.op_type == "NonMaxSuppression":
        scores = np.asarray(tensors[op.inputs[1]], np.float64)  # (batch, class, box)
        nb, nc, nx = scores.shape
        grid = np.stack(np.meshgrid(np.arange(nb), np.arange(nc), np.arange(nx), indexing="ij"), -1).reshape(-1, 3)
        sel = np.asarray(tensors[op.outputs[0]]).reshape(-1, 3).astype(np.int64)
        ids = (sel[:, 0] * nc + sel[:, 1]) * nx + sel[:, 2]
        thr = op.inputs[4] if len(op.inputs) > 4 and op.inputs[4] else None
        return Keys(grid, scores.ravel(), grid[:, 0] * nc + grid[:, 1], ids, atol * float(np.abs(scores).max(initial=0.0)) + floor,
                    float(np.asarray(tensors[thr]).ravel()[0]) if thr else None, 0)
    x = np.asarray(tensors[op.inputs[0]], np.float64)
    axis = op.axis % x.ndim
    if x.size == 0 or x.size != x.shape[axis]:  # one list only: the rows of the output are that list's
        return None
    xs = x.ravel() if op.largest else -x.ravel()
    ids = np.asarray(tensors[op.outputs[1]]).ravel().astype(np.int64)
    return Keys(np.arange(xs.size)[:, None], xs, np.zeros(xs.size, np.int64), ids,
                atol * float(np.abs(x).max(initial=0.0)) + floor, None, axis)


@dataclass
class Verdict:
    """How a selection output compares: ``reason`` empty when it passes."""

    reason: str
    rows: int = 0  # rows compared
    permuted: int = 0  # rows of the candidate at another place than in the reference
    flipped: int = 0  # rows in one and not in the other (ties at the boundary or between tied boxes)
    max_abs: float = 0.0
    cosine: float = 1.0
    sqnr_db: float = 200.0
    elem_tol: float = 0.0


def _as_rows(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(np.asarray(a), axis, 0)
    return a.reshape(a.shape[0], -1)


def find_key_column(ref: np.ndarray, keys: Keys, floor: float) -> tuple[int, int] | None:
    """(row axis, column) of the reference output that holds the selection's keys in selection
    order (the output carries the scores, row r from the r-th selected element); None if none.
    The axis matching the most rows wins (a size-1 axis matches one row whatever it holds)."""
    n = keys.keys.size
    best = None
    for axis in range(ref.ndim):
        rows = _as_rows(ref, axis).astype(np.float64)
        m = min(rows.shape[0], n)
        if m < 1 or (best is not None and m <= best[0]):
            continue
        for col in range(rows.shape[1]):
            if np.all(np.abs(rows[:m, col] - keys.keys[:m]) <= floor + 1e-7 * np.abs(keys.keys[:m])):
                best = (m, axis, col)
                break
    return None if best is None else (best[1], best[2])


def judge(ref: np.ndarray, got: np.ndarray, keys: Keys, axis: int, elem_tol: float, rows_for=None) -> Verdict:
    """Judge ``got`` against ``ref`` by the selection rule (README "Verification"): rows along
    ``axis``, row r of the reference from the r-th selected candidate; ``elem_tol``: the ordinary
    per-element bound; ``rows_for``: candidate ids -> their rows as this output lays them (None
    when they cannot be had: then no row may be only on one side)."""
    r_shape, g_shape = list(np.shape(ref)), list(np.shape(got))
    if len(r_shape) != len(g_shape) or r_shape[:axis] + r_shape[axis + 1:] != g_shape[:axis] + g_shape[axis + 1:]:
        return Verdict(f"shape {tuple(g_shape)}, the source gives {tuple(r_shape)}")
    R, G = _as_rows(ref, axis).astype(np.float64), _as_rows(got, axis).astype(np.float64)
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(G))):
        return Verdict("non-finite values (the selection rule judges finite rows only)")
    n_sel = min(R.shape[0], keys.keys.size)
    match, used, is_pad = _match_rows(R, G, n_sel, elem_tol)
    v = Verdict("", rows=int(G.shape[0]), elem_tol=elem_tol)
    js = np.flatnonzero(match >= 0)
    I = match[js]
    v.permuted = int(np.sum(I != js))
    v.reason = _order_reason(js, I, keys.keys[:n_sel], keys.groups[:n_sel], keys.tol)
    if not v.reason:
        v.reason = _membership_reason(v, R, G, match, used, is_pad, keys, n_sel, rows_for)
    if js.size:
        diff = np.abs(G[js] - R[I])
        v.max_abs = float(diff.max()) if diff.size else 0.0
        a, b = R[I].ravel(), G[js].ravel()
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        v.cosine = float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
        err = float(np.sum(diff * diff))
        v.sqnr_db = 200.0 if err == 0 else (min(200.0, 10 * float(np.log10(na * na / err))) if na > 0 else -200.0)
    return v


def _match_rows(R: np.ndarray, G: np.ndarray, n_sel: int, elem_tol: float):
    """Each candidate row matched to an unused selected reference row that agrees elementwise
    (the same place first, else the closest); rows matching none that equal a padding row of the
    reference (rows past the selection) count as padding."""
    pad = R[n_sel:]
    match = np.full(G.shape[0], -1)
    used = np.zeros(n_sel, bool)
    for j in range(G.shape[0]):
        d = np.max(np.abs(R[:n_sel] - G[j]), axis=1) if n_sel and G.shape[1] else np.zeros(n_sel)
        ok = (d <= elem_tol) & ~used
        if j < n_sel and ok[j]:
            match[j] = j
        elif ok.any():
            cand = np.flatnonzero(ok)
            match[j] = cand[np.argmin(d[cand])]
        if match[j] >= 0:
            used[match[j]] = True
    is_pad = np.array([match[j] < 0 and pad.shape[0] > 0 and bool(np.any(np.max(np.abs(pad - G[j]), axis=1) <= elem_tol))
                       for j in range(G.shape[0])], bool)
    return match, used, is_pad


def _order_reason(js: np.ndarray, I: np.ndarray, kr: np.ndarray, gr: np.ndarray, tol: float) -> str:
    """A row before another in the candidate but after it in the reference (same group) is a
    legitimate difference only when their reference keys differ by at most 2 tolerances (each
    runtime's key may sit one tolerance from the true one)."""
    K, Gp = kr[I], gr[I]
    later = np.triu(np.ones((I.size, I.size), bool), 1)
    inv = later & (I[None, :] < I[:, None]) & (Gp[None, :] == Gp[:, None]) & (np.abs(K[None, :] - K[:, None]) > 2 * tol)
    if not inv.any():
        return ""
    p, q = (int(t) for t in np.argwhere(inv)[0])
    return (f"rows {int(js[p])} and {int(js[q])} are in the other order than in the source (source rows {int(I[p])} and "
            f"{int(I[q])}), and their scores {K[p]:.7g} and {K[q]:.7g} differ by more than 2 x the score tolerance {tol:.3g}")


def _membership_reason(v: Verdict, R: np.ndarray, G: np.ndarray, match: np.ndarray, used: np.ndarray, is_pad: np.ndarray,
                       keys: Keys, n_sel: int, rows_for) -> str:
    """A row only one side has. One the candidate has must be a real candidate's row (``rows_for``:
    candidate ids -> their rows as this output lays them, computed by the reference) and either the
    other of two tied candidates (same group, keys within 2 tolerances of a row the reference has
    and the candidate lacks: the kernel kept the other one) or at the boundary of the kept set
    (within 2 tolerances of the reference's lowest kept key of its group, or of NMS's
    score_threshold). One the reference has and the candidate lacks must be paired so, or sit at
    the boundary of the candidate's kept set."""
    kr, gr = keys.keys[:n_sel], keys.groups[:n_sel]
    tol2 = 2 * keys.tol
    extra = [int(j) for j in np.flatnonzero((match < 0) & ~is_pad)]
    missing = [int(i) for i in np.flatnonzero(~used)]
    if not extra and not missing:
        return ""
    if rows_for is None:
        which = (f"row {extra[0]} ({_row_text(G[extra[0]])}) matches no row of the source" if extra else
                 f"the source's row {missing[0]} ({_row_text(R[missing[0]])}) is missing")
        return f"{which}, and this output's rows cannot be traced to their candidates (only tied rows may be reordered)"
    low_ref = {int(g): float(kr[gr == g].min()) for g in np.unique(gr)} if n_sel else {}
    ck, cg = keys.cand_keys, keys.cand_groups
    near = np.zeros(ck.size, bool)
    for i in missing:
        near |= (cg == gr[i]) & (np.abs(ck - kr[i]) <= tol2)
    for g, low in low_ref.items():
        near |= (cg == g) & (np.abs(ck - low) <= tol2)
    if keys.threshold is not None:
        near |= np.abs(ck - keys.threshold) <= tol2
    near[keys.sel_ids[:n_sel]] = False
    ids = np.flatnonzero(near)
    table = rows_for(ids) if ids.size else np.zeros((0, G.shape[1]))
    if isinstance(table, str):
        return table
    taken = np.zeros(ids.size, bool)
    for j in extra:
        d = np.max(np.abs(table - G[j]), axis=1) if ids.size else np.zeros(0)
        ok = np.flatnonzero((d <= v.elem_tol) & ~taken)
        if not ok.size:
            return (f"row {j} ({_row_text(G[j])}) matches no row of the source nor any candidate whose score is tied "
                    f"(within 2 x the score tolerance {keys.tol:.3g}) with a row it replaces or with the boundary of the kept set")
        taken[ok[0]] = True
        t = int(ids[ok[0]])
        i = next((i for i in missing if cg[t] == gr[i] and abs(ck[t] - kr[i]) <= tol2), None)
        if i is not None:
            missing.remove(i)
            v.flipped += 2
            continue
        if not any(abs(ck[t] - b) <= tol2 for b in (low_ref.get(int(cg[t])), keys.threshold) if b is not None):
            return (f"row {j} ({_row_text(G[j])}, score {ck[t]:.7g}) is not in the source, and its score is not within "
                    f"2 x the score tolerance {keys.tol:.3g} of the lowest kept score or of the score threshold")
        v.flipped += 1
    matched = match[match >= 0]
    low_got = {int(g): float(kr[matched][gr[matched] == g].min()) for g in np.unique(gr[matched])} if matched.size else {}
    for i in missing:
        if not any(abs(kr[i] - b) <= tol2 for b in (low_got.get(int(gr[i])), keys.threshold) if b is not None):
            return (f"the source's row {i} ({_row_text(R[i])}, score {kr[i]:.7g}) is missing, and its score is not within "
                    f"2 x the score tolerance {keys.tol:.3g} of the lowest kept score of its group or of the score threshold")
        v.flipped += 1
    return ""


def _row_text(row: np.ndarray) -> str:
    vals = ", ".join(f"{x:.6g}" for x in row[:8])
    return f"[{vals}{', ...' if row.size > 8 else ''}]"
