"""Control flow: If, Loop and Scan, emitted as TF control flow that TFLite runs as its builtin IF and
WHILE, or unrolled when the number of iterations is a small constant.

A body (an ONNX subgraph) is traced with the same emitter table as the main graph: it becomes an
IR graph of its own (:func:`body_graph`) whose inputs are the body's inputs plus every tensor it
reads from enclosing scopes; those that are known at conversion time (weights, shapes) are its
initializers, so emitters inside read them as constants exactly as in the main graph. Bodies are
never touched by the passes: they see every tensor in the source layout (the layout pass leaves a
Transpose in front of a control-flow node rather than pushing one into a body).

Which form each node takes (the README's "Control flow" section says the same):

- ``If`` with a condition known at conversion time: the taken branch is traced in place (no IF);
  otherwise ``tf.cond`` -> TFLite ``IF`` (branches may give outputs of different shapes).
- ``Loop`` whose trip count is a constant of at most :data:`UNROLL_LIMIT` and which cannot stop
  early (no condition input, or a constant true one the body passes through unchanged): unrolled;
  otherwise ``tf.while_loop`` -> TFLite ``WHILE``.
- ``Scan`` (opset 9+ forms; the opset 8 form with a static batch and no ``sequence_lens``) over a
  sequence of static length at most :data:`UNROLL_LIMIT`: unrolled; otherwise ``WHILE``.

Scan outputs of a WHILE grow by one element per iteration: each is carried flat and reshaped after
the loop (a loop variable whose length changes is what TFLite's WHILE resizes; a TensorArray would
need Flex ops).
"""
from __future__ import annotations

import numpy as np
import onnx
import tensorflow as tf
from onnx import helper, numpy_helper

from graph_convert.errors import ConvertError
from graph_convert.ir import Graph, Node, from_onnx
from graph_convert.backends.tensorflow.emitter import EmitContext, emit_nodes
from graph_convert.backends.tensorflow.ops.core import cast_back, emitter, to_lite, unsupported

UNROLL_LIMIT = 16  # iterations: up to this many a constant-count loop is traced once per iteration
UNROLL_NODES = 2048  # ... and only while iterations x body nodes stays below this


def _static_input(node: Node, x, ctx: EmitContext, j: int) -> np.ndarray | None:
    """Input ``j`` as numpy when known at conversion time (without making it a tensor)."""
    if len(node.inputs) <= j or not node.inputs[j]:
        return None
    v = ctx.const(node.inputs[j])
    if v is None:
        t = x[j]
        v = ctx.exact_value(t)
        v = tf.get_static_value(t) if v is None else v
    return None if v is None else np.asarray(v)


def _onnx_type(t) -> int:
    dt = t.dtype
    if dt == tf.bfloat16:
        return onnx.TensorProto.BFLOAT16
    return helper.np_dtype_to_tensor_dtype(np.dtype(dt.as_numpy_dtype))


def body_graph(node: Node, attr: str, ctx: EmitContext, fed: list | None = None, fed_shapes: list | None = None) -> Graph:
    """The IR graph of subgraph ``attr`` of ``node``: the body's own inputs first, then every
    outer-scope tensor it may read (initializers when known at conversion time, inputs
    otherwise). ``fed``: the tensors the body's own inputs will get, which type inputs the body
    leaves untyped (``fed_shapes``: their shapes when those hold on every iteration)."""
    a = node.attrs.get(attr)
    if a is None or a.type != onnx.AttributeProto.GRAPH:
        raise unsupported(node, f"a missing {attr!r} subgraph")
    g = onnx.GraphProto()
    g.CopyFrom(a.g)
    own = {i.name for i in g.input} | {i.name for i in g.initializer}
    for j, vi in enumerate(g.input):
        if fed is None or j >= len(fed) or fed[j] is None:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.elem_type:
            vi.type.tensor_type.elem_type = _onnx_type(fed[j])
        if fed_shapes is not None and j < len(fed_shapes) and fed_shapes[j] is not None and not tt.HasField("shape"):
            vi.type.tensor_type.shape.CopyFrom(helper.make_tensor_type_proto(1, list(fed_shapes[j])).tensor_type.shape)
    outer = ctx.graph
    for t in node.implicit_inputs:
        if t in own:
            continue  # shadowed by the body's own name
        value = ctx.const(t)
        if value is not None:
            g.initializer.append(numpy_helper.from_array(np.asarray(value), t))
            continue
        dtype = outer.dtype(t) or 0
        shape = outer.shape(t)
        g.input.append(helper.make_tensor_value_info(t, dtype, None if shape is None else list(shape)))
    opsets = outer.model_meta.get("opset_import") or [("", outer.opset)]
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = outer.model_meta.get("ir_version") or 8
    return from_onnx(model)


class _Body:
    """A body ready to trace any number of times (each trace in the TF graph it is called in)."""

    def __init__(self, node: Node, attr: str, ctx: EmitContext, fed: list | None = None, fed_shapes: list | None = None):
        self.node = node
        self.ctx = ctx
        self.graph = body_graph(node, attr, ctx, fed, fed_shapes)
        self.n_own = len(node.attrs[attr].g.input)
        # outer-scope tensors that are not constants, made now in the enclosing scope so that
        # every trace captures the same tensors
        self.outer = {t: ctx.value(t) for t in self.graph.inputs[self.n_own:]}

    def __call__(self, inputs: list) -> list:
        if len(inputs) != self.n_own:
            raise unsupported(self.node, f"a body with {self.n_own} inputs fed {len(inputs)} values")
        sub = self.ctx.nested(self.graph)
        for name, t in zip(self.graph.inputs, inputs):
            sub.env[name] = t
        sub.env.update(self.outer)
        emit_nodes(self.graph.nodes, sub)
        self.ctx.adopt(sub)
        return [sub.value(y) for y in self.graph.outputs]

    def dtype(self, k: int):
        """The TF dtype of body output ``k`` (from shape inference), or None."""
        from graph_convert.backends.tensorflow.emitter import tf_dtype

        et = self.graph.dtype(self.graph.outputs[k])
        return tf_dtype(et) if et else None

    def rank(self, k: int) -> int | None:
        return self.graph.rank(self.graph.outputs[k])

    def static_dims(self, k: int) -> list[int] | None:
        s = self.graph.shape(self.graph.outputs[k])
        return None if s is None else [d if isinstance(d, int) and d >= 0 else None for d in s]


def _moved(node: Node, kinds, fn, *xs):
    """``fn(*xs)`` (data movement) in a dtype TFLite's kernels for ``kinds`` take, cast back."""
    ts, dt = to_lite(node, kinds, *xs)
    return cast_back(fn(*ts), dt)


def _pred(x) -> tf.Tensor:
    return tf.reshape(tf.cast(x, tf.bool), [])


# --- If --------------------------------------------------------------------------------------------
@emitter("If", fold=False)
def if_(node: Node, x, ctx: EmitContext):
    """Both branches traced; a condition known now picks one (no IF op)."""
    cond = _static_input(node, x, ctx, 0)
    if cond is not None:
        if cond.size != 1:
            raise unsupported(node, f"a condition of {cond.size} elements")
        return _Body(node, "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch", ctx)([])
    then_, else_ = _Body(node, "then_branch", ctx), _Body(node, "else_branch", ctx)
    ranks: dict[str, list] = {}

    def branch(body: _Body, key: str):
        outs = body([])
        ranks[key] = [o.shape.rank for o in outs]
        return outs

    outs = tf.cond(_pred(x[0]), lambda: branch(then_, "then"), lambda: branch(else_, "else"))
    for k, (a, b) in enumerate(zip(ranks["then"], ranks["else"])):
        if a is not None and b is not None and a != b:  # shapes may differ, ranks may not: emitters need the rank
            raise unsupported(node, f"output {k} of rank {a} in one branch and {b} in the other")
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


# --- loops -----------------------------------------------------------------------------------------
def _passes_condition_through(body: Graph) -> bool:
    """The body's condition output is its condition input (or constant true): the loop never stops early."""
    cond_in, cond_out = body.inputs[1], body.outputs[0]
    seen = 0
    while seen < 8:
        if cond_out == cond_in:
            return True
        v = body.constant_value(cond_out)
        if v is not None:
            return bool(np.all(v))
        prod = body.producer(cond_out)
        if prod is None or prod.op_type != "Identity":
            return False
        cond_out = prod.inputs[0]
        seen += 1
    return False


def _while(cond_fn, body_fn, loop_vars: list, ctx: EmitContext) -> list:
    """``tf.while_loop`` with the loop variables at their first shapes; when the body changes a
    variable's shape (ONNX lets it: a scan buffer grows, a carried value may too), traced again
    with that variable's shape relaxed to what both have in common (the weights the first trace
    made are reused: :meth:`EmitContext.rewind`)."""
    start = ctx.weight_count()
    invariants = [v.shape for v in loop_vars]
    for _ in range(4):
        seen: list = []

        def traced(*vs):
            outs = body_fn(*vs)
            seen[:] = [tf.convert_to_tensor(o).shape for o in outs]
            return outs

        try:
            return list(tf.while_loop(cond_fn, traced, loop_vars, shape_invariants=invariants))
        except ValueError:
            if len(seen) != len(invariants):
                raise
            relaxed = [a.most_specific_compatible_shape(b) for a, b in zip(invariants, seen)]
            if relaxed == invariants:
                raise
            invariants = relaxed
            ctx.rewind(start)
    raise ConvertError("a loop's variables kept changing shape between traces")


class _Stacker:
    """Scan outputs of a WHILE: each iteration's value appended to a flat buffer, its shape kept,
    reshaped to ``[iterations, *shape]`` after the loop."""

    def __init__(self, node: Node, body: _Body, k: int, dtype=None):
        self.node = node
        self.dtype = dtype or body.dtype(k)
        if self.dtype is None:
            raise unsupported(node, f"scan output {k} of unknown type")
        self.dims = body.static_dims(k)  # None: rank unknown (the shape is read off the last iteration)
        # the buffer is kept in a dtype TFLite's CONCATENATION and STRIDED_SLICE take (float16 in float32)
        self.store = to_lite(node, ("concat", "slice"), tf.zeros([0], self.dtype))[0][0].dtype

    def initial(self) -> list:
        # before the first iteration the shape is what shape inference knows (0 where it does
        # not): a loop that runs 0 times gives [0, *those dims], as ONNX Runtime does
        # both start with one element dropped after the loop: TFLite's WHILE fails on a loop
        # variable that starts empty and grows by one element (LiteRT 2.21; by 2+ it runs)
        return [tf.zeros([1], self.store), tf.constant([1, *[d or 0 for d in self.dims or []]], tf.int32)]

    def append(self, buf, y) -> list:
        return [tf.concat([buf, cast_back(tf.reshape(y, [-1]), self.store)], 0), tf.concat([[1], tf.shape(y, out_type=tf.int32)], 0)]

    def final(self, buf, shape, count) -> tf.Tensor:
        buf = buf[1:]
        if self.dims is not None and all(d is not None and d > 0 for d in self.dims):  # static element shape: the count is the only open dim
            return cast_back(tf.reshape(buf, [-1, *self.dims]), self.dtype)
        return cast_back(tf.reshape(buf, tf.concat([tf.reshape(tf.cast(count, tf.int32), [1]), shape[1:]], 0)), self.dtype)


def _stack(node: Node, body: _Body, k: int, values: list) -> tf.Tensor:
    """Unrolled scan output ``k``: the iterations' values stacked on a new first axis."""
    if values:
        return _moved(node, "concat", lambda *v: tf.stack(v, 0), *values)
    dims, dtype = body.static_dims(k), body.dtype(k)
    if dims is None or dtype is None or None in dims:
        raise unsupported(node, "an unrolled loop of 0 iterations with a scan output of unknown shape")
    return tf.zeros([0, *dims], dtype)


@emitter("Loop", fold=False)
def loop(node: Node, x, ctx: EmitContext):
    n_state = len(node.inputs) - 2
    v0 = [x[2 + j] for j in range(n_state)]
    has_m, has_c = len(node.inputs) > 0 and bool(node.inputs[0]), len(node.inputs) > 1 and bool(node.inputs[1])
    if not has_m and not has_c:
        raise unsupported(node, "a loop with neither trip count nor condition (it never ends)")
    m_static = _static_input(node, x, ctx, 0) if has_m else None
    c_static = _static_input(node, x, ctx, 1) if has_c else None
    if c_static is not None and not bool(c_static.reshape(-1)[0]):
        return v0 + [_stack(node, _Body(node, "body", ctx, [None, None, *v0]), 1 + n_state + k, [])
                     for k in range(len(node.attrs["body"].g.output) - 1 - n_state)]
    body = _Body(node, "body", ctx, [tf.constant(0, tf.int64), tf.constant(True), *v0], [[], [], *[None] * n_state])
    n_scan = len(body.graph.outputs) - 1 - n_state
    if n_scan < 0:
        raise unsupported(node, "a body with fewer outputs than loop-carried values")
    if (m_static is not None and (not has_c or c_static is not None) and int(m_static) <= UNROLL_LIMIT
            and int(m_static) * max(1, len(body.graph)) <= UNROLL_NODES
            and (not has_c or _passes_condition_through(body.graph))):
        return _unrolled_loop(node, body, int(m_static), v0, n_scan)
    i0 = tf.constant(0, tf.int64)
    m = tf.reshape(tf.cast(x[0], tf.int64), []) if has_m else None
    c0 = _pred(x[1]) if has_c else tf.constant(True)
    stackers = [_Stacker(node, body, 1 + n_state + k) for k in range(n_scan)]
    init = [i0, c0, *v0]
    for s in stackers:
        init += s.initial()

    def cond_fn(i, c, *rest):
        return tf.logical_and(i < m, c) if m is not None else c

    def body_fn(i, c, *rest):
        outs = body([i, c, *rest[:n_state]])
        new = [i + 1, _pred(outs[0]) if has_c else c, *outs[1:1 + n_state]]
        for k in range(n_scan):
            new += stackers[k].append(rest[n_state + 2 * k], outs[1 + n_state + k])
        return new

    res = _while(cond_fn, body_fn, init, ctx)
    out = res[2:2 + n_state]
    for k, s in enumerate(stackers):
        out.append(s.final(res[2 + n_state + 2 * k], res[3 + n_state + 2 * k], res[0]))
    return out


def _unrolled_loop(node: Node, body: _Body, trips: int, v: list, n_scan: int) -> list:
    n_state = len(v)
    scans: list[list] = [[] for _ in range(n_scan)]
    true = tf.constant(True)
    for i in range(trips):
        outs = body([tf.constant(i, tf.int64), true, *v])
        v = outs[1:1 + n_state]
        for k in range(n_scan):
            scans[k].append(outs[1 + n_state + k])
    return v + [_stack(node, body, 1 + n_state + k, scans[k]) for k in range(n_scan)]


# --- Scan ------------------------------------------------------------------------------------------
def _norm_axes(node: Node, key: str, n: int, ranks: list) -> list[int]:
    axes = list(node.attr(key) or [0] * n)
    if len(axes) != n:
        raise unsupported(node, f"{key} of length {len(axes)} for {n} tensors")
    out = []
    for a, r in zip(axes, ranks):
        if r is None and a < 0:
            raise unsupported(node, f"a negative {key} entry on a tensor of unknown rank")
        out.append(a + r if a < 0 else a)
    return out


@emitter("Scan", fold=False)
def scan(node: Node, x, ctx: EmitContext):
    n_scan = int(node.attr("num_scan_inputs"))
    if ctx.opset >= 9:
        n_state = len(node.inputs) - n_scan
        return _scan(node, [x[j] for j in range(n_state)], [x[n_state + j] for j in range(n_scan)], ctx,
                     list(node.attr("scan_input_directions") or [0] * n_scan))
    # opset 8: a batch axis first, the sequence axis second, optional sequence_lens first
    if node.inputs[0]:
        lens = _static_input(node, x, ctx, 0)
        full = x[len(node.inputs) - 1].shape[1] if len(node.inputs) > 1 else None
        if lens is None or full is None or not np.all(lens == full):
            raise unsupported(node, "sequence_lens shorter than the sequence (opset 8)")
    n_state = len(node.inputs) - 1 - n_scan
    states = [x[1 + j] for j in range(n_state)]
    seqs = [x[1 + n_state + j] for j in range(n_scan)]
    batch = seqs[0].shape[0] if seqs else None
    if batch is None:
        raise unsupported(node, "an opset 8 Scan over a batch of unknown size")
    directions = list(node.attr("directions") or [0] * n_scan)
    per = [_scan(node, [s[b] for s in states], [q[b] for q in seqs], ctx, directions) for b in range(batch)]
    return [tf.stack([p[k] for p in per], 0) for k in range(len(per[0]))]


def _scan(node: Node, states: list, seqs: list, ctx: EmitContext, in_dirs: list[int]) -> list:
    n_state, n_scan = len(states), len(seqs)
    in_axes = _norm_axes(node, "scan_input_axes", n_scan, [s.shape.rank for s in seqs])
    moved = []
    for s, a, d in zip(seqs, in_axes, in_dirs):
        if a:
            r = s.shape.rank
            s = _moved(node, "transpose", lambda t: tf.transpose(t, [a, *[k for k in range(r) if k != a]]), s)
        moved.append(_moved(node, "reverse", lambda t: tf.reverse(t, [0]), s) if d else s)
    elems = [tf.TensorShape(s.shape[1:]) for s in moved]
    fed = [*states, *moved]  # (only their dtypes are read)
    shapes = [None] * n_state + [e.as_list() if e.rank is not None and e.is_fully_defined() else None for e in elems]
    body = _Body(node, "body", ctx, fed, shapes)
    n_out = len(body.graph.outputs) - n_state
    length = moved[0].shape[0] if moved else None
    if length is not None and length <= UNROLL_LIMIT and length * max(1, len(body.graph)) <= UNROLL_NODES:
        v, outs = list(states), [[] for _ in range(n_out)]
        for i in range(length):
            res = body([*v, *[_moved(node, "slice", lambda t: t[i], s) for s in moved]])
            v = res[:n_state]
            for k in range(n_out):
                outs[k].append(res[n_state + k])
        stacked = [_stack(node, body, n_state + k, outs[k]) for k in range(n_out)]
    else:
        n = tf.shape(moved[0], out_type=tf.int64)[0]
        stackers = [_Stacker(node, body, n_state + k) for k in range(n_out)]
        init = [tf.constant(0, tf.int64), *states]
        for s in stackers:
            init += s.initial()

        def cond_fn(i, *rest):
            return i < n

        def body_fn(i, *rest):
            res = body([*rest[:n_state], *[_moved(node, "gather", lambda t: tf.gather(t, i), s) for s in moved]])
            new = [i + 1, *res[:n_state]]
            for k in range(n_out):
                new += stackers[k].append(rest[n_state + 2 * k], res[n_state + k])
            return new

        done = _while(cond_fn, body_fn, init, ctx)
        v = done[1:1 + n_state]
        stacked = [s.final(done[1 + n_state + 2 * k], done[2 + n_state + 2 * k], done[0]) for k, s in enumerate(stackers)]
    out_dirs = list(node.attr("scan_output_directions") or [0] * n_out)
    out_axes = _norm_axes(node, "scan_output_axes", n_out, [y.shape.rank for y in stacked])
    final = []
    for y, a, d in zip(stacked, out_axes, out_dirs):
        if d:
            y = _moved(node, "reverse", lambda t: tf.reverse(t, [0]), y)
        if a:
            rest = list(range(1, y.shape.rank))
            y = _moved(node, "transpose", lambda t: tf.transpose(t, [*rest[:a], 0, *rest[a:]]), y)
        final.append(y)
    return list(v) + final
