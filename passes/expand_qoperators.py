"""Expand QOperator nodes into DequantizeLinear -> float op -> QuantizeLinear.

The ops: QLinearConv and QLinearMatMul (ONNX), and the com.microsoft ops ONNX Runtime's
quantizer writes in its QOperator format: QGemm, QLinearAdd, QLinearMul, QLinearSoftmax,
QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid, QLinearLeakyRelu, QLinearConcat and
QLinearWhere. A node in a form this pass does not know (a channels-last QLinearAveragePool, an
opset < 13 QLinearSoftmax over more than the last axis) stays and is named as unsupported.

ONNX Runtime's QOperator format computes ``Q(op(DQ(a), DQ(b)) + DQ(bias))`` in one integer
kernel; written as its QDQ form the float op (Conv, MatMul, Gemm) is an ordinary node that the
layout pass switches to channels-last and the TF emitter turns into one int8 CONV_2D /
FULLY_CONNECTED with the node's own scales (graph_convert/backends/tensorflow/ops/quantized.py). The int32 bias
is dequantized with scale ``a_scale * b_scale`` (QLinearConv's definition). ONNX Runtime runs the
expanded form with the same integer kernels (it fuses DQ -> op -> Q back), which the
equivalence check confirms.
"""
from __future__ import annotations

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult

_MS = "com.microsoft"


def _dq(graph: Graph, x: str, s: str, z: str, created_by: str, axis: int | None = None) -> str:
    attrs = {} if axis is None else {"axis": axis}
    inputs = [x, s, z] if z else [x, s]
    out = graph.add_node("DequantizeLinear", inputs, 1, attrs=attrs, created_by=created_by)
    shape = graph.shape(x)
    graph.set_info(out.outputs[0], graph.dtype(s), shape)
    return out.outputs[0]


def _bias(graph: Graph, b: str, a_s: str, w_s: str, created_by: str) -> str | None:
    """The int32 bias dequantized with ``a_scale * w_scale`` (constants only), or None."""
    sa, sw, bv = graph.constant_value(a_s), graph.constant_value(w_s), graph.constant_value(b)
    if sa is None or sw is None or bv is None:
        return None
    scale = (sa.astype(np.float32).reshape(()) * sw.astype(np.float32).reshape(-1)).astype(np.float32)
    scale_name = graph.add_initializer(f"{b}_scale", scale if scale.size > 1 else scale.reshape(()))
    return _dq(graph, b, scale_name, "", created_by, 0 if scale.size > 1 else None)


def _weight_axis(graph: Graph, s: str, axis: int) -> int | None:
    r = graph.rank(s)
    shape = graph.shape(s)
    return axis if r == 1 and shape is not None and shape[0] != 1 else None


_UNARY = ("QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu")
_POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")


def _unary(graph: Graph, node: Node, i: list[str], created_by: str):
    """``(inputs, float op, attrs, y_scale, y_zp)`` of a one-input com.microsoft QLinear op, or None."""
    channels_last = node.attr("channels_last", 0)
    rank = graph.rank(i[0])
    if node.op_type == "QLinearGlobalAveragePool":
        if channels_last:  # NHWC: the mean over the spatial axes, written as such
            if rank is None:
                return None
            op, attrs = "ReduceMean", {"axes": list(range(1, rank - 1)), "keepdims": 1}
        else:
            op, attrs = "GlobalAveragePool", {}
    elif node.op_type == "QLinearAveragePool":
        if channels_last:
            return None
        op, attrs = "AveragePool", {k: v for k, v in node.attrs.items() if k in _POOL_ATTRS}
    elif node.op_type == "QLinearLeakyRelu":
        op, attrs = "LeakyRelu", {"alpha": node.attr("alpha", 0.01)}
    else:
        op, attrs = "Sigmoid", {}
    if op == "ReduceMean" and graph.opset >= 18:  # axes became an input in opset 18
        axes = graph.add_initializer(f"{node.name}_axes", np.asarray(attrs.pop("axes"), np.int64))
        return [_dq(graph, i[0], i[1], i[2], created_by), axes], op, attrs, i[3], i[4]
    return [_dq(graph, i[0], i[1], i[2], created_by)], op, attrs, i[3], i[4]


def expand(graph: Graph, node: Node, created_by: str) -> bool:
    i = list(node.inputs) + [""] * 9
    if node.op_type == "QLinearConv":
        a = _dq(graph, i[0], i[1], i[2], created_by)
        w = _dq(graph, i[3], i[4], i[5], created_by, _weight_axis(graph, i[4], 0))
        ins = [a, w]
        if i[8]:
            b = _bias(graph, i[8], i[1], i[4], created_by)
            if b is None:
                return False
            ins.append(b)
        op, attrs, y_s, y_z = "Conv", dict(node.attrs), i[6], i[7]
    elif node.op_type == "QLinearMatMul":
        a = _dq(graph, i[0], i[1], i[2], created_by)
        w = _dq(graph, i[3], i[4], i[5], created_by, _weight_axis(graph, i[4], -1))
        ins, op, attrs, y_s, y_z = [a, w], "MatMul", {}, i[6], i[7]
    elif node.op_type in ("QLinearAdd", "QLinearMul"):  # com.microsoft: A, As, Azp, B, Bs, Bzp, Cs, Czp
        a = _dq(graph, i[0], i[1], i[2], created_by)
        b = _dq(graph, i[3], i[4], i[5], created_by)
        ins, op, attrs, y_s, y_z = [a, b], node.op_type[len("QLinear"):], {}, i[6], i[7]
    elif node.op_type == "QLinearSoftmax":  # com.microsoft: X, Xs, Xzp, Ys, Yzp; axis, opset
        rank = graph.rank(i[0])
        axis = node.attr("axis", -1)
        if node.attr("opset", 13) < 13 and (rank is None or axis % rank != rank - 1):
            return False  # the flattening Softmax of opset < 13 over more than the last axis
        ins, op, attrs, y_s, y_z = [_dq(graph, i[0], i[1], i[2], created_by)], "Softmax", {"axis": axis}, i[3], i[4]
    elif node.op_type in _UNARY:  # com.microsoft: X, X_scale, X_zp, Y_scale, Y_zp
        got = _unary(graph, node, i, created_by)
        if got is None:
            return False
        ins, op, attrs, y_s, y_z = got
    elif node.op_type == "QLinearConcat":  # com.microsoft: Y_scale, Y_zp, then (X, X_scale, X_zp) per input
        if (len(node.inputs) - 2) % 3:
            return False
        ins = [_dq(graph, i[k], i[k + 1], i[k + 2], created_by) for k in range(2, len(node.inputs), 3)]
        op, attrs, y_s, y_z = "Concat", {"axis": node.attr("axis")}, i[0], i[1]
    elif node.op_type == "QLinearWhere":  # com.microsoft: cond, X, Xs, Xzp, Y, Ys, Yzp, Zs, Zzp
        ins = [i[0], _dq(graph, i[1], i[2], i[3], created_by), _dq(graph, i[4], i[5], i[6], created_by)]
        op, attrs, y_s, y_z = "Where", {}, i[7], i[8]
    else:  # com.microsoft QGemm: A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp
        trans_b = node.attr("transB", 0)
        a = _dq(graph, i[0], i[1], i[2], created_by)
        w = _dq(graph, i[3], i[4], i[5], created_by, _weight_axis(graph, i[4], 0 if trans_b else 1))
        ins = [a, w]
        if i[6]:
            b = _bias(graph, i[6], i[1], i[4], created_by)
            if b is None:
                return False
            ins.append(b)
        op, y_s, y_z = "Gemm", i[7], i[8]
        attrs = {k: v for k, v in node.attrs.items() if k in ("alpha", "transA", "transB")}
    y = node.outputs[0]
    graph.remove_node(node, force=True)
    if y_s:  # a quantized output
        f = graph.add_node(op, ins, 1, attrs={k: v for k, v in attrs.items()}, created_by=created_by)
        shape = graph.shape(y)
        graph.set_info(f.outputs[0], graph.dtype(i[1]), shape)
        graph.add_node("QuantizeLinear", [f.outputs[0], y_s, y_z] if y_z else [f.outputs[0], y_s], [y], created_by=created_by)
    else:  # QGemm without y_scale gives float
        graph.add_node(op, ins, [y], attrs=attrs, created_by=created_by)
    return True


_MS_OPS = ("QGemm", "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QLinearConcat", "QLinearWhere") + _UNARY


_MOVEMENT = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")


def hoist_dequantize(graph: Graph, created_by: str) -> int:
    """``DQ(move(q))`` -> ``move(DQ(q))`` for a per-tensor DequantizeLinear after an op that only
    moves elements (QOperator graphs run Flatten/Reshape/... on the integer tensor between a
    QuantizeLinear and the next op's dequantization). Exact: a per-tensor affine map commutes with
    any rearrangement. Then the QuantizeLinear meets its DequantizeLinear, which the TF emitters
    read as the source's quantization of one tensor, and the op after it runs in int8."""
    done, changed = 0, True
    while changed:  # a chain of moves (Flatten then Reshape) is hoisted over one at a time
        changed = False
        for d in graph.nodes:
            if d.op_type == "DequantizeLinear" and d.domain in ("", "ai.onnx") and _hoist_one(graph, d, created_by):
                done, changed = done + 1, True
    return done


def _hoist_one(graph: Graph, d: Node, created_by: str) -> bool:
    m = graph.producer(d.inputs[0])
    if m is None or m.op_type not in _MOVEMENT or m.domain not in ("", "ai.onnx"):
        return False
    params = [graph.constant_value(t) for t in d.inputs[1:] if t]
    if any(v is None or v.size != 1 for v in params):
        return False  # per-axis scales follow the axis, which the move may change
    y = d.outputs[0]
    graph.remove_node(d, force=True)
    dq = _dq(graph, m.inputs[0], d.inputs[1], d.inputs[2] if len(d.inputs) > 2 else "", created_by)
    graph.add_node(m.op_type, [dq, *m.inputs[1:]], [y], attrs=dict(m.attrs), created_by=created_by)
    if not graph.consumers(m.outputs[0]) and not graph.is_graph_output(m.outputs[0]):
        graph.remove_node(m)
    return True


class ExpandQOperators(Pass):
    name = "expand_qoperators"
    phase = "canonicalize"
    before = ("fold_constants", "to_channels_last")
    after = ("constants_to_initializers",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        done = 0
        for node in graph.nodes:
            std = node.domain in ("", "ai.onnx") and node.op_type in ("QLinearConv", "QLinearMatMul")
            if std or (node.domain == _MS and node.op_type in _MS_OPS):
                done += expand(graph, node, self.name)
        if done:
            done += hoist_dequantize(graph, self.name)
            graph.refresh_shapes()  # ONNX inference knows no com.microsoft op: shapes after one were unknown
        return PassResult(done > 0, {"expanded": done} if done else {})


PASS = ExpandQOperators
