"""Multi-head attention without head transposes: projections' weights go head-major.

Into heads. A projection ``Y = X @ W [+ b]`` (MatMul or Gemm with constant weights) whose output
is only rearranged — any tree of Reshape / Transpose / Gather / Split / Slice / Squeeze /
Unsqueeze, and Mul/Div by a scalar constant, as exporters write ``view + transpose(1, 2)``,
timm's ``reshape + permute(2, 0, 3, 1, 4) + unbind``, ``nn.MultiheadAttention``'s packed
``in_proj`` with its ``(T, B*H, D)`` reshapes, or a scaled key transposed for ``Q @ Kᵀ`` — is
followed element by element (:mod:`movement`). Each tensor where the rearranging ends (a leaf)
whose elements split into token axes (from ``X``'s rows) and feature axes (from ``W``'s
columns), ending in ``(T, D)``, is one broadcast MatMul: ``Xa @ Wa + ba`` with ``Xa`` the rows
of ``X`` reshaped to ``(.., 1 per feature axis, .., T, C)`` and ``Wa`` the columns of ``W``
gathered to ``(.., feature axes, .., C, D)`` (times the scalars). A leaf ending in ``(D, T)``
(a key already transposed) is the ``(T, D)`` form followed by a swap of the last two axes, which
TFLite folds into BATCH_MATMUL (``adj_y``).

Out of heads. ``Z @ Wo`` with ``Z`` a rearrangement (Reshape / Transpose / Squeeze /
Unsqueeze) of ``O`` whose last axis is a feature axis of ``Z`` and second-last a token axis is
``ReduceSum(O @ Wo', head axes)`` with ``Wo'`` the rows of ``Wo`` split per head, brought back
to ``Z``'s token order.

Exact in real arithmetic (the same products, summed in another order); ONNX Runtime checks it.
Nothing is matched by name, only by structure and the index maps.

Opt-in (``heads_first`` option, ``--heads-first``): ViT-B/16 and BERT-base lose all 48
TRANSPOSE, but on XNNPACK (1 thread) the broadcast BATCH_MATMULs and the SUM over heads ran
within ±3% of FULLY_CONNECTED + TRANSPOSE (benchmarks/heads_first.py, benchmarks/README.md);
GPU/NPU delegates, where a TRANSPOSE is a real copy, are where it pays.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.lib.movement import MAX_ELEMENTS, follow, grid_perm, plain, static

# pure rearrangements that keep every element once (the out-of-heads chain)
_BIJECTIVE = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Transpose")
_UNARY = ("Gelu", "Relu", "Erf", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Softplus",
          "Mish", "Abs", "Neg", "Exp", "Mul", "Div", "Add", "Sub", "Clip")
# the activations fuse_activations writes as local functions below their ONNX opset (fused_ops.py)
_LOCAL_UNARY = ("Gelu", "GeluTanh", "Swish", "HardSwish", "Mish")


class Projection:
    """``y = x @ w + b`` found at a MatMul (+ constant Add) or Gemm; ``nodes`` compute it."""

    def __init__(self, x: str, w: np.ndarray, b: np.ndarray | None, y: str, nodes: list[Node]):
        self.x, self.w, self.b, self.y, self.nodes = x, w, b, y, nodes


def _conv_1x1(graph: Graph, node: Node) -> Projection | None:
    """A channels-last 1x1 Conv (stride 1, no padding, one group): a projection over the NHWC rows."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    cl = (0, 2, 3, 1)
    if node.in_perm(0) != cl or node.in_perm(1) != (2, 3, 1, 0) or (node.out_perms or [None])[0] != cl:
        return None
    w = graph.constant_value(node.inputs[1])
    if w is None or w.shape[:2] != (1, 1) or w.dtype.kind != "f" or node.attr("group", 1) != 1:
        return None
    if any(v != 1 for v in [*node.attr("strides", []), *node.attr("dilations", [])]) or any(node.attr("pads", [])):
        return None
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    b = graph.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and b is None:
        return None
    return Projection(node.inputs[0], w[0, 0], None if b is None else b.reshape(-1), node.outputs[0], [node])


def constant_weight(graph: Graph, t: str) -> np.ndarray | None:
    """A constant, also behind Identity (exporters share one weight between layers that way)."""
    p = graph.producer(t)
    while plain(p, "Identity"):
        t, p = p.inputs[0], graph.producer(p.inputs[0])
    return graph.constant_value(t)


def find_projection(graph: Graph, node: Node) -> Projection | None:
    if node.op_type == "Conv":
        return _conv_1x1(graph, node)
    w = constant_weight(graph, node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim != 2 or w.dtype.kind != "f" or graph.constant_value(node.inputs[0]) is not None:
        return None
    b = None
    if node.op_type == "Gemm":
        if node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0 or node.attr("transA", 0):
            return None
        w = w.T if node.attr("transB", 0) else w
        if len(node.inputs) > 2 and node.inputs[2]:
            b = graph.constant_value(node.inputs[2])
            if b is None or b.size != w.shape[1] or b.shape[-1] != w.shape[1]:
                return None
            b = b.reshape(-1)
    y, nodes = node.outputs[0], [node]
    users = graph.consumers(y)
    if b is None and len(users) == 1 and plain(users[0], "Add") and not graph.is_graph_output(y):
        other = [t for t in users[0].inputs if t != y]
        bv = graph.constant_value(other[0]) if len(other) == 1 else None
        if bv is not None and bv.size == w.shape[1] and bv.shape[-1] == w.shape[1] and bv.dtype == w.dtype:
            b, y, nodes = bv.reshape(-1), users[0].outputs[0], [node, users[0]]
    return Projection(node.inputs[0], w, b, y, nodes)


def scalar_scale(graph: Graph, node: Node, t: str) -> float | None:
    """The factor of ``Mul(t, s)`` / ``Mul(s, t)`` / ``Div(t, s)`` with ``s`` a one-element constant."""
    if not plain(node, "Mul", "Div") or len(node.inputs) != 2 or node.inputs.count(t) != 1:
        return None
    j = 1 - node.inputs.index(t)
    s = graph.constant_value(node.inputs[j])
    if s is None or s.size != 1 or s.dtype.kind != "f" or (node.op_type == "Div" and j == 0):
        return None
    rank = graph.rank(t)
    if rank is None or s.ndim > rank:
        return None
    v = float(s.reshape(-1)[0])
    return v if node.op_type == "Mul" else (1.0 / v if v != 0 else None)


class _Tree:
    """Every rearrangement of a projection's output down to its leaves."""

    def __init__(self):
        self.leaves: list[tuple[str, np.ndarray, float]] = []
        self.nodes: list[Node] = []
        self.transposes = 0


def _tree(graph: Graph, y: str, shape: tuple) -> _Tree | None:
    tree = _Tree()
    stack = [(y, np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape), 1.0)]
    while stack:
        t, idx, s = stack.pop()
        if graph.is_graph_output(t) or len(tree.nodes) > 64:
            return None
        leaf = False
        for c in graph.consumers(t):
            f = scalar_scale(graph, c, t)
            data_only = c.inputs[0] == t and t not in c.inputs[1:]  # t is what c moves, not its indices or shape
            outs = follow(graph, c, idx) if f is None and data_only else None
            if f is not None:
                stack.append((c.outputs[0], idx, s * f))
            elif outs is not None:
                stack.extend((o, i, s) for o, i in zip(c.outputs, outs))
                tree.transposes += c.op_type == "Transpose"
            else:
                leaf = True
                continue
            tree.nodes.append(c)
        if leaf:
            tree.leaves.append((t, idx, s))
    return tree


def _varies(a: np.ndarray) -> list[bool]:
    return [a.shape[k] > 1 and bool(np.any(np.diff(a, axis=k))) for k in range(a.ndim)]


class _LeafPlan:
    """How one leaf is computed: ``Reshape(Transpose(Reshape(x, g), p), xa_shape) @ wa + ba`` with
    ``grid = (g, p)`` from :func:`movement.grid_perm`, then the last two axes swapped if ``swapped``."""

    def __init__(self, swapped, grid, xa_shape, wa, ba, shape):
        self.swapped, self.grid, self.xa_shape, self.wa, self.ba, self.shape = swapped, grid, xa_shape, wa, ba, shape


def _plan_leaf(proj: Projection, idx: np.ndarray, scale: float, grid: tuple) -> _LeafPlan | None:
    n = proj.w.shape[1]
    if idx.ndim < 2:
        return None
    swapped = False
    for attempt in range(2):
        tok, feat = idx // n, idx % n
        tv, fv = _varies(tok), _varies(feat)
        if any(a and b for a, b in zip(tv, fv)) or any(s > 1 and not (a or b) for s, a, b in zip(idx.shape, tv, fv)):
            return None
        if not tv[-1] and not fv[-2]:
            break
        if attempt or fv[-1] or tv[-2]:
            return None
        idx, swapped = np.swapaxes(idx, -1, -2), True
    r = idx.ndim
    tok_sl = tuple(slice(0, 1) if fv[a] else slice(None) for a in range(r))
    gp = grid_perm(tok[tok_sl])
    if gp is None or tok[tok_sl].size != int(np.prod(grid)):
        return None
    f = feat[tuple(slice(0, 1) if tv[a] or a == r - 2 else slice(None) for a in range(r))]
    wa = np.moveaxis(proj.w[:, f[..., 0, :]], 0, -2) * np.asarray(scale, proj.w.dtype)
    if all(d == 1 for d in wa.shape[:-2]):
        wa = wa.reshape(wa.shape[-2:])
    ba = None if proj.b is None else proj.b[f] * np.asarray(scale, proj.b.dtype)
    xa_shape = [idx.shape[a] if tv[a] else 1 for a in range(r - 2)] + [idx.shape[-2], proj.w.shape[0]]
    return _LeafPlan(swapped, gp, xa_shape, np.ascontiguousarray(wa), ba, idx.shape)


def _const(graph: Graph, base: str, value: np.ndarray) -> str:
    return graph.add_initializer(base, value)


def _reshape(graph: Graph, t: str, shape, by: str) -> str:
    if static(graph, t) == tuple(shape):
        return t
    y = graph.add_node("Reshape", [t, _const(graph, f"{t}_shape", np.array(shape, np.int64))], created_by=by).outputs[0]
    graph.set_info(y, graph.dtype(t), tuple(shape))
    return y


def _regrid(graph: Graph, x: str, gp: tuple[list[int], list[int]], shape: list[int], by: str) -> str:
    """``x``'s rows (all axes but the last) as grid ``g`` moved by ``p``, reshaped to ``shape``."""
    g, p = gp
    if p != sorted(p):
        x = _reshape(graph, x, g + [static(graph, x)[-1]], by)
        x = graph.add_transpose(x, p + [len(g)], created_by=by)
    return _reshape(graph, x, shape, by)


def _rows(graph: Graph, x: str, gp: tuple, shape: list[int], by: str, cache: dict) -> str:
    key = (tuple(gp[0]), tuple(gp[1]), tuple(shape))
    if key not in cache:
        cache[key] = _regrid(graph, x, gp, shape, by)
    return cache[key]


def _emit_leaf(graph: Graph, proj: Projection, plan: _LeafPlan, xa: str, by: str) -> str:
    dtype = graph.dtype(proj.y)
    y = graph.add_node("MatMul", [xa, _const(graph, f"{proj.y}_w_heads", plan.wa)], created_by=by).outputs[0]
    graph.set_info(y, dtype, plan.shape)
    if plan.ba is not None:
        y = graph.add_node("Add", [y, _const(graph, f"{proj.y}_b_heads", np.ascontiguousarray(plan.ba))], created_by=by).outputs[0]
        graph.set_info(y, dtype, plan.shape)
    if plan.swapped:
        r = len(plan.shape)
        y = graph.add_transpose(y, list(range(r - 2)) + [r - 1, r - 2], created_by=by)
    return y


def _into_heads(graph: Graph, node: Node, by: str) -> int:
    """Rewrite the projection at ``node`` leaf by leaf; the number of leaves rewritten (0: none)."""
    proj = find_projection(graph, node)
    if proj is None:
        return 0
    xs, ys = static(graph, proj.x), static(graph, proj.y)
    if xs is None or ys is None or xs[:-1] != ys[:-1] or int(np.prod(ys)) > MAX_ELEMENTS:
        return 0
    tree = _tree(graph, proj.y, ys)
    if tree is None or not tree.transposes:
        return 0
    plans = [_plan_leaf(proj, idx, s, ys[:-1]) for _, idx, s in tree.leaves]
    if any(p is None for p in plans):
        return 0  # some leaf is no head split
    inside = {n.name for n in tree.nodes}
    # a swap of the last two axes read only by MatMuls is free (BATCH_MATMUL's adjoint flags)
    swaps = sum(p.swapped and any(not plain(c, "MatMul") for c in graph.consumers(t) if c.name not in inside)
                for (t, _, _), p in zip(tree.leaves, plans))
    if swaps >= tree.transposes:
        return 0  # nothing would be gained
    cache: dict = {}
    for (t, _, _), plan in zip(tree.leaves, plans):
        y = _emit_leaf(graph, proj, plan, _rows(graph, proj.x, plan.grid, plan.xa_shape, by, cache), by)
        for c in graph.consumers(t):
            if c.name not in inside:
                for j, u in enumerate(c.inputs):
                    if u == t:
                        graph.set_input(c, j, y)
    for n in reversed([*proj.nodes, *tree.nodes]):
        graph.remove_node(n, force=True)
    return len(plans)


def _consumer(graph: Graph, node: Node) -> tuple[str, np.ndarray, np.ndarray | None] | None:
    """(input, weight (C, N), Gemm's bias) of a projection reading a rearranged tensor."""
    proj = find_projection(graph, node)
    if proj is None:
        return None
    if node.op_type == "MatMul":  # a following bias Add stays where it is
        return node.inputs[0], proj.w, None
    if node.op_type == "Conv":
        return node.inputs[0], proj.w, proj.b
    return node.inputs[0], proj.w, proj.b


def _elementwise(graph: Graph, node: Node | None) -> bool:
    """An elementwise op on its first input alone (other inputs one-element constants): it
    commutes with any rearrangement, so it can be applied before one instead of after."""
    local = node is not None and node.domain == "graph_convert" and node.op_type in _LOCAL_UNARY and not node.is_layout_marked
    if not (plain(node, *_UNARY) or local) or len(node.outputs) != 1 \
            or static(graph, node.inputs[0]) != static(graph, node.outputs[0]):
        return False
    return all(not t or ((v := graph.constant_value(t)) is not None and v.size == 1) for t in node.inputs[1:])


def _chain_up(graph: Graph, z: str) -> tuple[str, list[Node], list[Node]] | None:
    """(O, the rearrangements from O to ``z``, the elementwise ops among them, in order)."""
    chain, ew, t = [], [], z
    while True:
        p = graph.producer(t)
        if p is None or graph.num_uses(t) != 1 or static(graph, p.inputs[0]) is None:
            break
        if plain(p, *_BIJECTIVE):
            chain.append(p)
        elif _elementwise(graph, p):
            ew.append(p)
        else:
            break
        t = p.inputs[0]
    if not any(n.op_type == "Transpose" for n in chain):
        return None
    return t, chain[::-1], ew[::-1]


def _out_plan(os_: tuple, zidx: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, list[int], list[int], list[int]] | None:
    """(``Wo'``, head axes summed, kept O dims, token perm) for ``Z @ w`` with ``Z = zidx`` over O."""
    r = len(os_)
    coords = np.unravel_index(zidx, os_)
    zr = zidx.ndim
    fv = [c.shape[-1] > 1 and bool(np.any(np.diff(c, axis=-1))) for c in coords]
    tv = [any(_varies(c)[:-1]) for c in coords]
    if r < 2 or any(a and b for a, b in zip(fv, tv)) or not fv[-1] or fv[-2]:
        return None
    heads = [j for j in range(r - 2) if fv[j]]
    if not heads:
        return None  # no heads to sum: a plain transpose in front of a projection is push_transposes' job
    c0 = [c[(0,) * (zr - 1)] for c in coords]  # the feature coordinates of token 0, per input channel
    wshape = [os_[j] if fv[j] else 1 for j in range(r - 2)] + [os_[-1], w.shape[1]]
    if int(np.prod(wshape[:-1])) != w.shape[0]:
        return None
    wo = np.zeros(wshape, w.dtype)
    where = tuple(c0[j] if fv[j] else np.zeros_like(c0[j]) for j in range(r - 2)) + (c0[-1],)
    if len(np.unique(np.ravel_multi_index(where, wshape[:-1]))) != w.shape[0]:
        return None
    wo[where] = w
    kept = [j for j in range(r - 1) if j not in heads]
    tok = np.ravel_multi_index(tuple(coords[j][..., 0] for j in kept), [os_[j] for j in kept])
    gp = grid_perm(tok)
    return None if gp is None else (wo, heads, kept, gp)


def _index_map(graph: Graph, os_: tuple, chain: list[Node]) -> np.ndarray | None:
    idx = np.arange(int(np.prod(os_)), dtype=np.int64).reshape(os_)
    for n in chain:
        outs = follow(graph, n, idx)
        if outs is None:
            return None
        idx = outs[0]
    return idx


def _swap_last(os_: tuple, idx: np.ndarray) -> tuple[tuple, np.ndarray]:
    """The same map over O with its last two axes swapped."""
    coords = list(np.unravel_index(idx, os_))
    coords[-1], coords[-2] = coords[-2], coords[-1]
    sw = os_[:-2] + (os_[-1], os_[-2])
    return sw, np.ravel_multi_index(tuple(coords), sw)


def _out_of_heads(graph: Graph, node: Node, by: str) -> bool:
    got = _consumer(graph, node)
    if got is None:
        return False
    z, w, b = got
    up = _chain_up(graph, z)
    zs = static(graph, z)
    if up is None or zs is None or static(graph, node.outputs[0]) is None:
        return False
    o, chain, ew = up
    os_ = static(graph, o)
    idx = _index_map(graph, os_, chain) if int(np.prod(os_)) <= MAX_ELEMENTS and len(os_) >= 2 else None
    if idx is None:
        return False
    plan, swapped = _out_plan(os_, idx, w), False
    if plan is None:  # O as (.., D, T), e.g. v @ attnᵀ: swapped, which BATCH_MATMUL folds (adj_x)
        os_, idx = _swap_last(os_, idx)
        plan, swapped = _out_plan(os_, idx, w), True
    if plan is None:
        return False
    for e in ew:  # the elementwise ops move in front of the rearrangement
        o = _clone(graph, e, o, by)
    if swapped:
        r = len(os_)
        o = graph.add_transpose(o, list(range(r - 2)) + [r - 1, r - 2], created_by=by)
    y = _emit_out(graph, node, o, os_, zs, plan, b, by)
    out = node.outputs[0]
    if not graph.is_graph_output(out):
        graph.replace_all_uses(out, y)
    for n in [node, *reversed(chain), *reversed(ew)]:
        graph.remove_node(n, force=True)
    if graph.is_graph_output(out):  # the graph output keeps its name
        prod = graph.producer(y)
        graph.set_output(prod, prod.outputs.index(y), out)
    return True


def _clone(graph: Graph, e: Node, x: str, by: str) -> str:
    attrs = {k: v for k, v in e.attrs.items()}
    y = graph.add_node(e.op_type, [x, *e.inputs[1:]], attrs=attrs, domain=e.domain, created_by=by).outputs[0]
    graph.set_info(y, graph.dtype(e.outputs[0]), static(graph, x))
    return y


def _emit_out(graph: Graph, node: Node, o: str, os_: tuple, zs: tuple, plan, b, by: str) -> str:
    wo, heads, kept, gp = plan
    dtype, cout = graph.dtype(node.outputs[0]), wo.shape[-1]
    y = graph.add_node("MatMul", [o, _const(graph, f"{node.name}_w_heads", wo)], created_by=by).outputs[0]
    graph.set_info(y, dtype, tuple(os_[:-1]) + (cout,))
    y = _sum(graph, y, heads, tuple(os_[j] for j in kept) + (cout,), by)
    y = _regrid(graph, y, gp, list(zs[:-1]) + [cout], by)
    if b is not None:
        y = graph.add_node("Add", [y, _const(graph, f"{node.name}_bias", b)], created_by=by).outputs[0]
        graph.set_info(y, dtype, tuple(zs[:-1]) + (cout,))
    return y


def _sum(graph: Graph, y: str, axes: list[int], shape: tuple, by: str) -> str:
    if graph.opset >= 13:  # axes became an input in opset 13
        s = graph.add_node("ReduceSum", [y, _const(graph, f"{y}_head_axes", np.array(axes, np.int64))],
                           attrs={"keepdims": 0}, created_by=by).outputs[0]
    else:
        s = graph.add_node("ReduceSum", [y], attrs={"keepdims": 0, "axes": axes}, created_by=by).outputs[0]
    graph.set_info(s, graph.dtype(y), shape)
    return s


class HeadsFirst(Pass):
    name = "heads_first"
    opt_in = "heads_first"  # runs only with --heads-first / heads_first=True
    phase = "optimize"
    before = ("push_transposes",)  # on the exporter's own chains; pushing then cancels what is left

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not ctx.options.get("heads_first"):
            return PassResult(False, {})  # opt-in: see the module docstring
        into = out_of = 0
        for node in graph.nodes:
            if not graph.has_node(node.name) or not (plain(node, "MatMul", "Gemm") or node.op_type == "Conv"):
                continue
            if _out_of_heads(graph, node, self.name):
                out_of += 1
            else:
                into += _into_heads(graph, node, self.name)
        details = {k: v for k, v in (("into_heads", into), ("out_of_heads", out_of)) if v}
        return PassResult(bool(details), details)


PASS = HeadsFirst
