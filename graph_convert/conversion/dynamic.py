"""Dynamic dims: one size-polymorphic TF function from two static conversions.

The passes, the layout algorithm and constant folding all work on static shapes. For dynamic
dims (see :mod:`graph_convert.conversion.dims`) the model is converted twice, at two size assignments in
which every free dim differs (batch 2 and 3, image 160x128 and 224x192, sequence 16 and 24; none
is 1, so no rewrite that only holds for size-1 axes is taken in one run and not the other). The
two rewritten graphs must be the same graph up to values; what differs between them is what
depends on the free dims:

- a tensor dim that differs is dynamic: the emitter sees it as unknown (``None``);
- an integer constant whose entries differ (a Reshape target ``[B*nW, 16, 32]``, a Resize's
  sizes, a Slice end, a Range limit) has each moving entry matched to a run-time expression
  ``p/q * d1 [* d2]``, where ``d1``, ``d2`` are run-time dims of a graph input or of a tensor
  computed before the constant is read (the Reshape's own input first), and ``p/q`` a ratio that
  holds at both sizes. As the only moving entry of a Reshape target it becomes ``-1`` (static
  everywhere else, as TFLite likes); otherwise it is computed at run time from those dims;
- a constant that differs in size along one axis and is the same block repeated (a class token
  expanded over the batch, then folded) is that block tiled at run time;
- an integer constant that differs in size along one axis and steps by the same amount along it
  (``torch.arange(n)``, then folded) is a run-time range.

- a constant the source computes from shapes alone (a detector's anchor grid and stride table) is
  that computation replayed at run time (:mod:`graph_convert.conversion.shape_program`), when the
  replay gives its values at both sizes.

Anything else (a float table computed through other ops, such as a Sin position table) is
refused with the constant, its readers, the dims and why the replay does not take it named; the
caller then asks for the dims to be fixed. Whatever was matched, the result is only trusted after the TF function and the .tflite
ran against ONNX Runtime at further sizes (the pipeline does that), sizes never used to convert.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

import graph_convert.conversion.shape_program as SP
from graph_convert.errors import ConvertError
from graph_convert.ir import Graph

MAX_CANDIDATE_TENSORS = 400  # tensors searched for a matching run-time dim (nearest first)


class DynamicDimsError(ConvertError):
    """The conversion cannot be made size-polymorphic; says what depends on the free dims."""


DynamicBatchError = DynamicDimsError  # the name of the batch-only days


@dataclass(frozen=True)
class DimExpr:
    """``num/den * prod(dims)``, each dim ``(tensor, axis)`` read at run time (floor division)."""

    factors: tuple[tuple[str, int], ...]
    num: int = 1
    den: int = 1

    def text(self) -> str:
        f = " * ".join(f"{t}[{a}]" for t, a in self.factors)
        return f if (self.num, self.den) == (1, 1) else f"{self.num}/{self.den} * {f}" if self.den != 1 else f"{self.num} * {f}"


@dataclass
class DimView:
    """What differs between the graphs converted at the two size assignments (``graph`` the first)."""

    graph: Graph
    dims: dict[str, tuple] = field(default_factory=dict)  # tensor -> shape with None at dynamic dims
    exprs: dict[str, list] = field(default_factory=dict)  # 1-D int const -> per entry: int or DimExpr
    tiled: dict[str, tuple[np.ndarray, int, DimExpr]] = field(default_factory=dict)  # const -> (block, axis, repeats)
    ranged: dict[str, tuple[np.ndarray, np.ndarray, int, DimExpr]] = field(default_factory=dict)  # (first, step, axis, length)
    spread: dict[str, tuple[np.ndarray, list]] = field(default_factory=dict)  # const -> (block, per axis: int or DimExpr)
    prefix: dict[str, tuple[np.ndarray, int, DimExpr]] = field(default_factory=dict)  # const -> (source table, axis, length)
    affine: dict[str, tuple[int, list, list]] = field(default_factory=dict)  # const -> (c, per axis size, per axis step): c + sum step*i
    coords: dict[str, list] = field(default_factory=dict)  # const -> one affine form per entry of its last axis
    programs: dict[str, tuple] = field(default_factory=dict)  # const -> (shape_program.Program, leaf -> entries, layout)
    stats: dict[str, int] = field(default_factory=dict)

    # -- what the emitter asks ---------------------------------------------------------------
    def shape(self, tensor: str):
        return self.dims.get(tensor, self.graph.shape(tensor))

    def is_dynamic_const(self, tensor: str) -> bool:
        return tensor in self.exprs or tensor in self.tiled or tensor in self.ranged or tensor in self.spread or tensor in self.prefix \
            or tensor in self.affine or tensor in self.coords or tensor in self.programs

    def minus_one_target(self, tensor: str) -> np.ndarray | None:
        """The constant as a Reshape target with -1 at its one dynamic entry, when that is exact."""
        if tensor not in self.exprs:
            return None
        entries = self.exprs[tensor]
        dyn = [i for i, e in enumerate(entries) if isinstance(e, DimExpr)]
        if len(dyn) != 1 or any(not isinstance(e, DimExpr) and e <= 0 for e in entries):
            return None  # a 0 (copy) or -1 elsewhere: not expressible as one -1
        readers = self.graph.consumers(tensor)
        if self.graph.is_graph_output(tensor) or not readers or any(
                r.op_type != "Reshape" or r.inputs[1:] != [tensor] or r.attr("allowzero", 0) for r in readers):
            return None
        c = self.graph.constant_value(tensor)
        out = np.array([-1 if isinstance(e, DimExpr) else e for e in entries], dtype=c.dtype)
        return out

    def entries(self, tensor: str, env: dict) -> list | None:
        """A 1-D run-time shape constant (a Resize's sizes) entry by entry, or None when ``tensor``
        is not one: an int per static entry, an int32 scalar tensor per run-time one (no int64
        pack cast back and forth)."""
        if tensor not in self.exprs:
            return None
        return [int(e) if not isinstance(e, DimExpr) else _eval(e, env) for e in self.exprs[tensor]]

    def reshape_target(self, tensor: str, env: dict, x) -> Any:
        """A run-time Reshape target (int32) built from its entries as known here, or None when
        ``tensor`` is not such a constant: a static entry stays a constant (TF's shape inference
        keeps it, so the heads and head size of an attention reshape stay static), a 0 copies
        ``x``'s dim, a moving entry is its dims product (positive). No run-time test for 0s, no
        int64 round trip: the generic run-time target costs EQUAL + CONCATENATION + SELECT + CAST
        per Reshape and loses every static entry."""
        import tensorflow as tf

        if tensor not in self.exprs:
            return None
        vals = []
        for i, e in enumerate(self.exprs[tensor]):
            if isinstance(e, DimExpr):
                vals.append(_eval(e, env))
            elif int(e) == 0:
                d = x.shape[i] if i < len(x.shape) else None
                vals.append(tf.constant(int(d), tf.int32) if d is not None else tf.shape(x, out_type=tf.int32)[i])
            else:
                vals.append(tf.constant(int(e), tf.int32))
        return tf.stack(vals)

    def tensor(self, tensor: str, env: dict, weight=None) -> Any:
        """The run-time value of a dynamic constant; ``env`` maps graph tensors to TF tensors,
        ``weight`` makes a (large) array a TF constant or variable."""
        import tensorflow as tf

        if tensor in self.spread:  # the same values along every moving axis: the block tiled
            block, reps = self.spread[tensor]
            mult = [tf.constant(r, tf.int32) if not isinstance(r, DimExpr) else _eval(r, env) for r in reps]
            return tf.tile(tf.constant(block), tf.stack(mult))
        if tensor in self.prefix:  # the first n entries of a weight of the source (a position table)
            table, axis, n = self.prefix[tensor]
            t = weight(table) if weight is not None else tf.constant(table)
            size = [tf.constant(-1, tf.int32)] * table.ndim
            size[axis] = _eval(n, env)
            return tf.slice(t, [0] * table.ndim, tf.stack(size))
        if tensor in self.programs:  # a table the source computes from shapes: that computation replayed
            prog, leaves, how = self.programs[tensor]
            vals = {k: tf.stack([tf.constant(int(e), tf.int64) if not isinstance(e, DimExpr) else tf.cast(_eval(e, env), tf.int64)
                                 for e in entries]) if entries else tf.zeros([0], tf.int64) for k, entries in leaves.items()}
            return SP.apply_layout(SP.evaluate(prog, vals), how)
        c = self.graph.constant_value(tensor)
        dt = tf.as_dtype(c.dtype)
        if tensor in self.affine:  # flattened indices over several moving axes: c + sum_a step_a * i_a
            return _affine_value(self.affine[tensor], c.ndim, dt, env)
        if tensor in self.coords:  # index tuples along the last axis (GatherND): one affine form each
            parts = [_affine_value(f, c.ndim - 1, dt, env) for f in self.coords[tensor]]
            full = parts[0]
            for p in parts[1:]:
                full = full + tf.zeros_like(p)  # every part to the full shape
            return tf.stack([p + tf.zeros_like(full) for p in parts], axis=-1)
        if tensor in self.exprs:  # a Pack of scalars: TF's shape inference keeps the static entries
            vals = [tf.constant(int(e), dt) if not isinstance(e, DimExpr) else tf.cast(_eval(e, env), dt) for e in self.exprs[tensor]]
            return tf.stack(vals) if c.ndim == 1 else tf.reshape(tf.stack(vals), c.shape)  # a bare Pack stays partly static
        if tensor in self.ranged:
            first, step, axis, n = self.ranged[tensor]
            shape = [1] * (first.ndim + 1)
            shape[axis] = -1
            i = tf.reshape(tf.cast(tf.range(_eval(n, env)), dt), shape)
            return tf.constant(np.expand_dims(first, axis)) + i * tf.constant(np.expand_dims(step, axis))
        block, axis, reps = self.tiled[tensor]
        mult = [tf.constant(1, tf.int32)] * block.ndim
        mult[axis] = _eval(reps, env)
        return tf.tile(tf.constant(block), tf.stack(mult))


def _eval(e: DimExpr, env: dict):
    """A DimExpr as an int32 scalar tensor."""
    v = None
    for t, a in e.factors:
        d = run_time_dim(env, t, a)
        v = d if v is None else v * d
    if e.num != 1:
        v = v * e.num
    if e.den != 1:
        v = v // e.den
    return v


def run_time_dim(env: dict, tensor: str, axis: int):
    """Dim ``axis`` of ``tensor`` as an int32 scalar tensor, made once per trace: every constant
    read at run time from that dim shares one SHAPE + STRIDED_SLICE (the TFLite converter does not
    merge repeated ones: 31 SHAPE ops in a 2-layer BERT). Kept in ``env`` under a tuple key, which
    no ONNX tensor name (a string) can take."""
    import tensorflow as tf

    key = ("run-time dim", tensor, axis)
    if key not in env:
        env[key] = tf.shape(env[tensor], out_type=tf.int32)[axis]
    return env[key]


def same_structure(g1: Graph, g2: Graph, at: tuple[str, str]) -> None:
    """The two rewritten graphs are one graph up to values, or DynamicDimsError naming where not."""
    n1, n2 = g1.nodes, g2.nodes
    if [n.name for n in n1] != [n.name for n in n2]:
        a, b = [n.name for n in n1], [n.name for n in n2]
        first = next((x for x, y in zip(a, b) if x != y), None)
        raise DynamicDimsError(f"the rewritten graph at {at[0]} differs from the one at {at[1]} "
                               f"(node {first!r}: {len(a)} vs {len(b)} nodes): the conversion depends on the sizes")
    for a, b in zip(n1, n2):
        if (a.op_type, a.inputs, a.outputs, a.in_perms, a.out_perms) != (b.op_type, b.inputs, b.outputs, b.in_perms, b.out_perms):
            raise DynamicDimsError(f"node {a.name!r} ({a.op_type}) is rewritten differently at {at[0]} and {at[1]}")
        for key in set(a.attrs) | set(b.attrs):
            if a.attr(key) != b.attr(key):
                raise DynamicDimsError(f"attribute {key!r} of node {a.name!r} ({a.op_type}) depends on the sizes "
                                       f"({a.attr(key)} at {at[0]}, {b.attr(key)} at {at[1]})")
    if sorted(g1.initializer_names) != sorted(g2.initializer_names) or g1.inputs != g2.inputs or g1.outputs != g2.outputs:
        raise DynamicDimsError(f"the rewritten graphs at {at[0]} and {at[1]} have different constants or I/O")


class _Matcher:
    """Finds run-time dims that explain a moving integer: candidates are the dynamic dims of the
    graph inputs, then of the reader's inputs, then of tensors computed before the reader."""

    def __init__(self, g1: Graph, g2: Graph, dims: dict[str, tuple]):
        self.g1, self.g2, self.dyn = g1, g2, dims
        self.order = {t: i for i, n in enumerate(g1.nodes) for t in n.outputs}
        self.nodes = g1.nodes

    def _dims_of(self, t: str) -> list[tuple[str, int, int, int]]:
        s = self.dyn.get(t)
        if s is None:
            return []
        s1, s2 = self.g1.shape(t), self.g2.shape(t)
        return [(t, a, s1[a], s2[a]) for a, d in enumerate(s) if d is None]

    def candidates_of(self, tensor: str, const: str) -> list[tuple[str, int, int, int]]:
        """The dynamic dims of ``tensor`` when it is there to read before ``const`` is (a graph
        input, or computed before the constant's first reader)."""
        if tensor in self.g1.inputs:
            return self._dims_of(tensor)
        readers = self.g1.consumers(const)
        first = min((self.nodes.index(r) for r in readers), default=len(self.nodes))
        made = self.order.get(tensor)
        return self._dims_of(tensor) if made is not None and made < first else []

    def candidates(self, const: str) -> list[tuple[str, int, int, int]]:
        readers = self.g1.consumers(const)
        first = min((self.nodes.index(r) for r in readers), default=len(self.nodes))
        # the reader's own inputs first (a Reshape target is made of its input's dims), then the
        # graph inputs, then tensors computed before the reader, nearest first
        near = [t for r in readers for t in r.inputs if t and t != const]
        before = [t for n in reversed(self.nodes[:first]) for t in n.outputs if t]
        out: list = []
        seen: set = set()
        for t in near + list(self.g1.inputs) + before[:MAX_CANDIDATE_TENSORS]:
            for d in self._dims_of(t):
                if (d[0], d[1]) not in seen:
                    seen.add((d[0], d[1]))
                    out.append(d)
        return out

    def match(self, v1: int, v2: int, cands) -> DimExpr | None:
        # exact single dims, then products of two dims of one tensor (a flatten), then ratios
        for t, a, d1, d2 in cands:
            if (d1, d2) == (v1, v2):
                return DimExpr(((t, a),))
        for adjacent in (True, False):  # a flatten joins neighbouring axes
            for i, (t, a, d1, d2) in enumerate(cands):
                for t_, b, e1, e2 in cands[i + 1:]:
                    if t_ == t and (abs(a - b) == 1 or not adjacent) and (d1 * e1, d2 * e2) == (v1, v2):
                        return DimExpr(((t, a), (t, b)))
        for single in (True, False):
            for i, (t, a, d1, d2) in enumerate(cands):
                pairs = [((t, a), d1, d2)] if single else [((t, a), (t_, b), d1 * e1, d2 * e2)
                                                             for t_, b, e1, e2 in cands[i + 1:] if t_ == t]
                for p in pairs:
                    f, p1, p2 = (p[:-2], p[-2], p[-1])
                    r = Fraction(v1, p1)
                    if r > 0 and r.denominator <= 64 and r.numerator <= 4096 and (p2 * r.numerator) // r.denominator == v2 \
                            and (p1 * r.numerator) // r.denominator == v1:
                        return DimExpr(tuple(f), r.numerator, r.denominator)
        return None


def dim_view(g1: Graph, g2: Graph, at: tuple[str, str], source_weights=None, sources: SP.Sources | None = None) -> DimView:
    """Compare the graphs converted at two size assignments (``at``: how to name them); raise
    DynamicDimsError naming what cannot be made size-polymorphic. ``source_weights``: a callable
    giving the source model's float initializers of a given element count or more, as
    ``(name, array)`` (a constant that is the start of one of them is read from it). ``sources``:
    the source model at both sizes, whose shape-only subgraphs may explain a moving table."""
    same_structure(g1, g2, at)
    view = DimView(g1)
    for t in set(g1.info) & set(g2.info):
        s1, s2 = g1.shape(t), g2.shape(t)
        if s1 is None or s2 is None or len(s1) != len(s2) or s1 == s2:
            continue
        view.dims[t] = tuple(None if p != q else p for p, q in zip(s1, s2))
    if not any(view.dims.get(x) for x in g1.inputs):
        raise DynamicDimsError("no graph input has a dim that differs between the two conversions")
    matcher = _Matcher(g1, g2, view.dims)
    for name in g1.initializer_names:
        v1, v2 = g1.initializer(name), g2.initializer(name)
        if v1.shape == v2.shape and v1.dtype == v2.dtype and np.array_equal(v1, v2):
            continue
        cands = matcher.candidates(name)
        # each form in turn, the first that matches wins; a form gives None when the constant is not of it
        forms = ((view.exprs, lambda: _as_exprs(v1, v2, cands, matcher)),
                 (view.tiled, lambda: _as_tiled(v1, v2, cands, matcher)),
                 (view.ranged, lambda: _as_range(v1, v2, cands, matcher)),
                 (view.affine, lambda: _as_affine(v1, v2, cands, matcher)),
                 (view.coords, lambda: _as_coords(v1, v2, cands, matcher)),
                 (view.spread, lambda: _as_spread(v1, v2, cands, matcher)),
                 (view.prefix, lambda: _as_prefix(v1, v2, cands, matcher, source_weights)))
        found = next(((where, got) for where, form in forms if (got := form()) is not None), None)
        if found is not None:
            found[0][name] = found[1]
            continue
        prog = _as_program(name, v1, v2, cands, matcher, sources)
        if isinstance(prog, tuple):
            view.programs[name] = prog
            continue
        readers = ", ".join(f"{n.name!r} ({n.op_type})" for n in g1.consumers(name)) or "none"
        what = "a table of values computed from the sizes" if v1.dtype.kind == "f" else "neither a run-time dim nor a repeat or range"
        raise DynamicDimsError(f"constant {name!r} (read by node {readers}) depends on the sizes as {what}: "
                               f"shape {v1.shape} at {at[0]}, {v2.shape} at {at[1]}{f' ({prog})' if prog else ''}")
    view.stats = {"dynamic_tensor_dims": len(view.dims), "run_time_shape_constants": len(view.exprs),
                  "tiled_constants": len(view.tiled) + len(view.spread), "ranged_constants": len(view.ranged),
                  "source_table_slices": len(view.prefix), "index_constants": len(view.affine) + len(view.coords),
                  "shape_programs": len(view.programs)}
    return view


def _as_coords(v1: np.ndarray, v2: np.ndarray, cands, matcher: _Matcher) -> list | None:
    """Index tuples (a GatherND's last axis of 2..8 coordinates): each coordinate affine in its
    indices, or None."""
    if not (v1.ndim >= 2 and v1.shape[-1] == v2.shape[-1] and 1 < v1.shape[-1] <= 8 and v1.dtype.kind in "iu"):
        return None
    forms = [_as_affine(v1[..., j], v2[..., j], cands, matcher, allow_static=True) for j in range(v1.shape[-1])]
    return forms if all(f is not None for f in forms) else None


def _as_exprs(v1: np.ndarray, v2: np.ndarray, cands, matcher: _Matcher) -> list | None:
    if v1.shape != v2.shape or v1.dtype.kind not in "iu" or v1.ndim > 1:
        return None
    out = []
    for a, b in zip(v1.reshape(-1).tolist(), v2.reshape(-1).tolist()):
        if a == b:
            out.append(int(a))
            continue
        e = matcher.match(int(a), int(b), cands)
        if e is None:
            return None
        out.append(e)
    return out


def _moving_axis(v1: np.ndarray, v2: np.ndarray) -> int | None:
    if v1.ndim != v2.ndim or v1.dtype != v2.dtype:
        return None
    diff = [a for a in range(v1.ndim) if v1.shape[a] != v2.shape[a]]
    return diff[0] if len(diff) == 1 else None


def _as_tiled(v1, v2, cands, matcher: _Matcher):
    a = _moving_axis(v1, v2)
    if a is None:
        return None
    g = np.gcd(v1.shape[a], v2.shape[a])
    for m in sorted(d for d in range(1, g + 1) if g % d == 0):
        block = np.take(v1, range(m), axis=a)
        r1, r2 = v1.shape[a] // m, v2.shape[a] // m
        if np.array_equal(np.concatenate([block] * r1, axis=a), v1) and np.array_equal(np.concatenate([block] * r2, axis=a), v2):
            reps = matcher.match(r1, r2, cands)
            return None if reps is None else (block, a, reps)
    return None


def _as_range(v1, v2, cands, matcher: _Matcher):
    """``(first, step, axis, length)`` when both integer constants are ``first + i*step`` along
    their one moving axis (exactly, at both sizes)."""
    a = _moving_axis(v1, v2) if v1.dtype.kind in "iu" else None
    if a is None or v1.shape[a] < 2:
        return None
    first = np.take(v1, 0, axis=a)
    step = np.take(v1, 1, axis=a) - first

    def ramp(n):
        shape = [1] * v1.ndim
        shape[a] = n
        return np.expand_dims(first, a) + np.arange(n, dtype=v1.dtype).reshape(shape) * np.expand_dims(step, a)

    if not (np.array_equal(ramp(v1.shape[a]), v1) and np.array_equal(ramp(v2.shape[a]), v2)):
        return None
    n = matcher.match(v1.shape[a], v2.shape[a], cands)
    return None if n is None else (first, step, a, n)


def _as_spread(v1, v2, cands, matcher: _Matcher):
    """``(block, repeats)`` when both constants hold the same values along every axis whose size
    moves (zeros of the input's shape, a token-type row over batch and sequence)."""
    if v1.ndim != v2.ndim or v1.dtype != v2.dtype or v1.size == 0:
        return None
    moving = [a for a in range(v1.ndim) if v1.shape[a] != v2.shape[a]]
    if not moving:
        return None
    block = v1
    for a in moving:
        block = np.take(block, [0], axis=a)
    if not (np.array_equal(np.broadcast_to(block, v1.shape), v1) and np.array_equal(np.broadcast_to(block, v2.shape), v2)):
        return None
    reps: list = [1] * v1.ndim
    for a in moving:
        e = matcher.match(v1.shape[a], v2.shape[a], cands)
        if e is None:
            return None
        reps[a] = e
    return block, reps


def _as_prefix(v1, v2, cands, matcher: _Matcher, source_weights):
    """``(table, axis, length)`` when both constants are the first entries, along their one moving
    axis, of the same weight of the source model (``pos_embedding[:, :seq]``, an embedding row per
    ``arange(seq)``), unit dims aside."""
    a = _moving_axis(v1, v2)
    if a is None or source_weights is None or v1.dtype.kind != "f" or v2.shape[a] <= v1.shape[a]:
        return None
    core = [d for i, d in enumerate(v2.shape) if d != 1 or i == a]
    ax = sum(1 for i in range(a) if v2.shape[i] != 1)
    for _, w in source_weights(v2.size):
        ws = [d for d in w.shape if d != 1]
        if len(ws) != len(core) or w.dtype != v2.dtype or ws[ax] < core[ax] or ws[:ax] != core[:ax] or ws[ax + 1:] != core[ax + 1:]:
            continue
        flat = w.reshape(ws)
        if not (np.array_equal(np.take(flat, range(v2.shape[a]), axis=ax).reshape(v2.shape), v2)
                and np.array_equal(np.take(flat, range(v1.shape[a]), axis=ax).reshape(v1.shape), v1)):
            continue
        n = matcher.match(v1.shape[a], v2.shape[a], cands)
        if n is None:
            return None
        shape = list(v2.shape)
        shape[a] = ws[ax]
        return flat.reshape(shape), a, n
    return None


def _affine_value(form, ndim: int, dt, env):
    """``c + sum_a step_a * i_a`` as a tensor (broadcast over every axis of size > 1)."""
    import tensorflow as tf

    c0, sizes, steps = form
    out = tf.reshape(tf.constant(c0, dt), [1] * ndim)
    for a, (n, k) in enumerate(zip(sizes, steps)):
        if not isinstance(n, DimExpr) and n == 1:
            continue
        shape = [1] * ndim
        shape[a] = -1
        i = tf.reshape(tf.cast(tf.range(n if not isinstance(n, DimExpr) else _eval(n, env)), dt), shape)
        out = out + i * (tf.constant(k, dt) if not isinstance(k, DimExpr) else tf.cast(_eval(k, env), dt))
    return out


def _as_affine(v1, v2, cands, matcher: _Matcher, allow_static: bool = False):
    """``(c, sizes, steps)`` when both integer constants are ``c + sum_a step_a * i_a`` over their
    indices (an index flattened over batch and sequence: ``arange(b)[:, None] * s + arange(s)``),
    each moving size and moving step a run-time dim expression."""
    if v1.ndim != v2.ndim or v1.dtype != v2.dtype or v1.dtype.kind not in "iu" or v1.size == 0 or v1.ndim == 0:
        return None
    a1, a2 = v1.astype(np.int64), v2.astype(np.int64)
    if a1.flat[0] != a2.flat[0]:
        return None
    sizes, steps = [], []
    for a in range(v1.ndim):
        ks = []
        for v in (a1, a2):
            ks.append(int(np.take(v, 1, axis=a).flat[0] - v.flat[0]) if v.shape[a] > 1 else None)
        n1, n2 = v1.shape[a], v2.shape[a]
        n = n1 if n1 == n2 else matcher.match(n1, n2, cands)
        k1, k2 = ks
        if k1 is None or k2 is None:
            k = k1 if k2 is None else k2
            k = 0 if k is None else k
        elif k1 == k2:
            k = k1
        else:
            k = matcher.match(k1, k2, cands) if k1 > 0 and k2 > 0 else None
        if n is None or k is None:
            return None
        sizes.append(n)
        steps.append(k)
    for v, vals in ((a1, (v1.shape, 0)), (a2, (v2.shape, 1))):
        shape = vals[0]
        want = np.full(shape, v.flat[0], np.int64)
        for a in range(v.ndim):
            k = steps[a]
            kv = k if not isinstance(k, DimExpr) else None
            if kv is None:  # the step at this conversion: read from the values themselves
                kv = int(np.take(v, 1, axis=a).flat[0] - v.flat[0])
            idx = np.arange(shape[a]).reshape([-1 if i == a else 1 for i in range(v.ndim)])
            want = want + idx * kv
        if not np.array_equal(want, v):
            return None
    if not allow_static and not any(isinstance(x, DimExpr) for x in sizes + steps):
        return None
    return int(a1.flat[0]), sizes, steps


def _as_program(name: str, v1, v2, cands, matcher: _Matcher, sources: SP.Sources | None):
    """``(program, leaf -> entries, layout)`` when the source computes ``name`` from shapes alone
    and replaying that computation gives the rewritten constant at both sizes; else why not (a
    sentence, or ``""`` when there is nothing to say)."""
    if sources is None:
        return ""
    origin = sources.origin(name)
    prog = sources.trace(origin) if origin else "the rewritten graph made it (no tensor of the source has its name)"
    if isinstance(prog, str):
        return f"not replayable: {prog}"
    at = [sources.leaf_values(prog, k) for k in (0, 1)]
    if at[0] is None or at[1] is None:
        return "not replayable: a shape it reads is not known at the converted sizes"
    leaves = {}
    for leaf, (x, start, _) in prog.leaves.items():
        own = [d for d in matcher.candidates_of(x, name)]  # the tensor the Shape reads, where it survives
        entries = []
        for j, (a, b) in enumerate(zip(at[0][leaf].tolist(), at[1][leaf].tolist())):
            e = a if a == b else matcher.match(a, b, own + [c for c in cands if c not in own])
            if e is None:
                return f"not replayable: dim {start + j} of {x!r} ({a}, then {b}) matches no run-time dim"
            entries.append(e)
        leaves[leaf] = entries
    try:
        seen: list[dict] = [{}, {}]
        p1, p2 = (np.asarray(SP.evaluate(prog, vals, seen[k])) for k, vals in enumerate(at))
        SP.learn_static(prog, *seen)
    except Exception as e:  # an op form the replay does not take: refused as before
        return f"not replayable: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    how = SP.layout(p1, p2, v1, v2)
    if how is None:
        return "the source's tensor of that name does not give these values at both sizes"
    return prog, leaves, how
