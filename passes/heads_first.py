"""Multi-head attention without head transposes: the projections' weights go head-major.

Into heads. ``Transpose(Reshape(MatMul(X, W) [+ b], [L..., T, F1..Fk]), P)`` — a projection
whose output features are split into factors (heads, head size; or 3, heads, head size for a
packed QKV) and the factors moved in front of the tokens — is one broadcast MatMul:
``Reshape(X, [.., 1 per factor, .., T, C]) @ W'`` with ``W'`` the weight reshaped to
``(F..., C, Fk)`` in the transpose's order (and ``b'`` likewise). It needs the transpose to keep
the leading dims in order and to end in ``(T, Fk)``; when it ends in ``(Fk, T)`` (a key already
transposed for ``Q @ Kᵀ``) the result is the ``(T, Fk)`` form followed by a swap of the last two
axes, which TFLite folds into BATCH_MATMUL (``adj_y``).

Out of heads. ``MatMul(Reshape(Transpose(O, Q), [L..., T, C]), Wo)`` — heads moved back behind
the tokens and merged — is ``ReduceSum(O @ Wo', head axes)`` with ``Wo'`` the weight split per
head, when ``O`` ends in ``(T, Fk)``.

Exact in real arithmetic (the same products, summed in another order); ONNX Runtime checks it.

Opt-in (``heads_first`` option, ``--heads-first``): the TFLite graph has no attention TRANSPOSE
left, which GPU/NPU delegates reward, but on XNNPACK (CPU) the broadcast BATCH_MATMULs and the
SUM over heads measured 10-20% slower than FULLY_CONNECTED + TRANSPOSE on the bundled small
transformers (vit_tiny 29.5 vs 24.4 us per invoke, 1 thread).
"""
from __future__ import annotations

import math

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult


def _plain(node: Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx") and not node.is_layout_marked


def _sole_reader(graph: Graph, tensor: str) -> bool:
    return graph.num_uses(tensor) == 1 and not graph.is_graph_output(tensor)


def _static(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    s = graph.shape(tensor)
    return tuple(s) if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None


def _perm(node: Node, rank: int) -> list[int]:
    p = node.attr("perm")
    return list(p) if p is not None else list(reversed(range(rank)))


def _const_matmul(graph: Graph, node: Node | None) -> tuple[str, np.ndarray] | None:
    """(activation input, 2-D float weight) of ``MatMul(X, W)`` with W constant."""
    if not _plain(node, "MatMul"):
        return None
    w = graph.constant_value(node.inputs[1])
    if w is None or w.ndim != 2 or w.dtype.kind != "f" or graph.constant_value(node.inputs[0]) is not None:
        return None
    return node.inputs[0], w


def _take_over(graph: Graph, old: str, new: str, dead: list) -> None:
    """``new`` replaces ``old`` (keeping the name when ``old`` is a graph output); the old chain goes."""
    if graph.is_graph_output(old):
        prod = graph.producer(new)
        for n in dead:
            if n is not None:
                graph.remove_node(n, force=True)
        graph.set_output(prod, prod.outputs.index(new), old)
        return
    graph.replace_all_uses(old, new)
    for n in dead:
        if n is not None:
            graph.remove_node(n)


class HeadsFirst(Pass):
    name = "heads_first"
    phase = "optimize"
    after = ("push_transposes",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not ctx.options.get("heads_first"):
            return PassResult(False, {})  # opt-in: see the module docstring
        into = out_of = 0
        for node in graph.nodes:
            if not graph.has_node(node.name):
                continue
            if _plain(node, "Transpose") and self._into_heads(graph, node):
                into += 1
            elif _plain(node, "MatMul") and self._out_of_heads(graph, node):
                out_of += 1
        details = {k: v for k, v in (("into_heads", into), ("out_of_heads", out_of)) if v}
        return PassResult(bool(details), details)

    # -- projections into heads ------------------------------------------------------------
    def _into_heads(self, graph: Graph, tr: Node) -> bool:
        reshape = graph.producer(tr.inputs[0])
        if not _plain(reshape, "Reshape") or not _sole_reader(graph, reshape.outputs[0]):
            return False
        bias_node, bias = None, None
        src = graph.producer(reshape.inputs[0])
        if _plain(src, "Add") and _sole_reader(graph, src.outputs[0]):
            for j in (0, 1):
                v = graph.constant_value(src.inputs[j])
                if v is not None:
                    bias_node, bias, src = src, v, graph.producer(src.inputs[1 - j])
                    break
        mm = _const_matmul(graph, src)
        if mm is None or not _sole_reader(graph, src.outputs[0]):
            return False
        x, w = mm
        xs, rs = _static(graph, x), _static(graph, reshape.outputs[0])
        if xs is None or rs is None or len(xs) < 2:
            return False
        c, n = w.shape
        nl = len(xs) - 2  # leading dims
        k = len(rs) - nl - 1  # feature factors
        if xs[-1] != c or k < 2 or rs[:nl + 1] != xs[:-1] or math.prod(rs[nl + 1:]) != n:
            return False
        if bias is not None and (bias.size != n or bias.dtype != w.dtype or (bias.ndim and bias.shape[-1] != n)):
            return False
        p = _perm(tr, len(rs))
        t_ax, last = nl, nl + k  # T and the last factor (head size)
        if p[-2:] == [t_ax, last]:
            swapped = False
        elif p[-2:] == [last, t_ax]:
            swapped = True
        else:
            return False
        batch = p[:-2]
        lead = [a for a in batch if a < nl]
        if lead != sorted(lead):
            return False
        facs = [a - nl - 1 for a in batch if a > nl]  # factor indices in batch order
        # X as [.., 1 per factor, .., T, C]
        x_shape = [rs[a] if a < nl else 1 for a in batch] + [xs[-2], c]
        # W (C, F1..Fk) -> (F in batch order..., C, Fk), with 1s where the leading dims go
        wf = w.reshape(c, *rs[nl + 1:])
        wp = np.transpose(wf, [1 + f for f in facs] + [0, k])
        w_shape = [rs[a] if a > nl else 1 for a in batch] + [c, rs[-1]]
        wp = np.ascontiguousarray(wp).reshape(w_shape)
        xr = graph.add_node("Reshape", [x, graph.add_initializer(f"{tr.name}_x_shape", np.array(x_shape, np.int64))],
                            name=f"{tr.name}_heads_x", created_by=self.name).outputs[0]
        y = graph.add_node("MatMul", [xr, graph.add_initializer(f"{tr.name}_w_heads", wp)],
                           name=f"{tr.name}_heads_matmul", created_by=self.name).outputs[0]
        if bias is not None:
            bf = bias.reshape(rs[nl + 1:])
            bp = np.transpose(bf, facs + [k - 1])
            b_shape = [rs[a] if a > nl else 1 for a in batch] + [1, rs[-1]]
            bp = np.ascontiguousarray(bp).reshape(b_shape)
            y = graph.add_node("Add", [y, graph.add_initializer(f"{tr.name}_b_heads", bp)],
                               name=f"{tr.name}_heads_bias", created_by=self.name).outputs[0]
        out_shape = tuple(rs[a] for a in batch) + (xs[-2], rs[-1])
        dtype = graph.dtype(tr.outputs[0])
        for t, shape in ((xr, tuple(x_shape)), (y, out_shape)):
            graph.set_info(t, dtype, shape)
        if swapped:
            r = len(out_shape)
            y = graph.add_node("Transpose", [y], name=f"{tr.name}_kt", attrs={"perm": list(range(r - 2)) + [r - 1, r - 2]},
                               created_by=self.name).outputs[0]
            graph.set_info(y, dtype, out_shape[:-2] + (out_shape[-1], out_shape[-2]))
        _take_over(graph, tr.outputs[0], y, [tr, reshape, bias_node, src])
        return True

    # -- heads back to tokens ----------------------------------------------------------------
    def _out_of_heads(self, graph: Graph, mm: Node) -> bool:
        got = _const_matmul(graph, mm)
        if got is None:
            return False
        merged, w = got
        reshape = graph.producer(merged)
        if not _plain(reshape, "Reshape") or not _sole_reader(graph, merged):
            return False
        tr = graph.producer(reshape.inputs[0])
        if not _plain(tr, "Transpose") or not _sole_reader(graph, tr.outputs[0]):
            return False
        o = tr.inputs[0]
        os_, ts, ms = _static(graph, o), _static(graph, tr.outputs[0]), _static(graph, merged)
        if os_ is None or ts is None or ms is None or len(ms) < 2:
            return False
        c, cout = w.shape
        nl = len(ms) - 2
        k = len(ts) - nl - 1
        if ms[-1] != c or k < 2 or ts[:nl + 1] != ms[:-1] or math.prod(ts[nl + 1:]) != c:
            return False
        q = _perm(tr, len(ts))  # transposed axis i comes from O's axis q[i]
        # O's own axes, named by where they land: the leading dims, T (nl), the factors
        where = {q[i]: i for i in range(len(q))}  # O axis -> transposed axis
        names = [where[a] for a in range(len(os_))]
        t_ax, last = nl, nl + k
        if names[-2:] != [t_ax, last]:
            return False
        batch = names[:-2]
        lead = [a for a in batch if a < nl]
        if lead != sorted(lead):
            return False
        facs = [a - nl - 1 for a in batch if a > nl]
        wf = w.reshape(*ts[nl + 1:], cout)
        wp = np.transpose(wf, facs + [k - 1, k])
        w_shape = [ts[a] if a > nl else 1 for a in batch] + [ts[-1], cout]
        wp = np.ascontiguousarray(wp).reshape(w_shape)
        dtype = graph.dtype(mm.outputs[0])
        y = graph.add_node("MatMul", [o, graph.add_initializer(f"{mm.name}_w_heads", wp)], name=f"{mm.name}_per_head",
                           created_by=self.name).outputs[0]
        graph.set_info(y, dtype, tuple(os_[:-1]) + (cout,))
        axes = [i for i, a in enumerate(batch) if a > nl]
        opset = graph.opset
        if opset >= 13:  # axes became an input in opset 13
            s = graph.add_node("ReduceSum", [y, graph.add_initializer(f"{mm.name}_head_axes", np.array(axes, np.int64))],
                               name=f"{mm.name}_sum_heads", attrs={"keepdims": 0}, created_by=self.name).outputs[0]
        else:
            s = graph.add_node("ReduceSum", [y], name=f"{mm.name}_sum_heads", attrs={"keepdims": 0, "axes": axes},
                               created_by=self.name).outputs[0]
        graph.set_info(s, dtype, tuple(ms[:-1]) + (cout,))
        _take_over(graph, mm.outputs[0], s, [mm, reshape, tr])
        return True


PASS = HeadsFirst
