"""The fused ops that recognition rules write, and how each stays runnable ONNX at any opset.

Where the model's opset has the ONNX op (Gelu 20, LayerNormalization 17, RMSNormalization 23,
Mish 18, HardSwish 14, Swish 24) the rule writes that op. Below it, the node is an op of the
same name in domain ``graph_convert`` defined by a *model-local function* (FunctionProto,
ONNX IR 8+) whose body is the op's definition spelled in the model's own opset, with attributes
passed by reference. Why not the alternatives:

- raising the model's opset would re-define every other node (opset 18 moved ReduceMean's axes
  to an input, 19 re-versioned Reshape/Cast/Shape, ...): it is a version conversion, not a
  local rewrite, and whether it is harmless depends on the whole graph;
- ``com.microsoft`` ops (Gelu, FastGelu, SimplifiedLayerNormalization) run only in ONNX
  Runtime and are not standard ONNX; onnx.checker cannot check them.

A local function is standard ONNX that onnx.checker validates, ONNX Runtime inlines it (so the
pipeline's ORT check compares the original spelling with the op's definition), Netron shows it
as one node, and the TF emitter sees one op (``graph_convert::Gelu`` in its table).
Tanh-GELU is its own local op (``GeluTanh``): a function body cannot branch on a string
attribute; it is written as the standard ``Gelu(approximate="tanh")`` from opset 20 on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graph_convert.ir import Graph, Node

DOMAIN = "graph_convert"
DOMAIN_VERSION = 1
LOCAL_MIN_OPSET = 13  # bodies below use Flatten with negative axes, Clip with inputs, ...

Body = Callable[[int], list[onnx.NodeProto]]


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32)))


def _attr_const(name: str, attr: str) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(onnx.AttributeProto(name="value_float", ref_attr_name=attr, type=onnx.AttributeProto.FLOAT))
    return node


def _reduce_mean_last(x: str, y: str, opset: int) -> list[onnx.NodeProto]:
    """ReduceMean over axis 1 of a 2-D tensor, keepdims, in either opset form."""
    if opset >= 18:
        return [helper.make_node("Constant", [], [f"{y}_axes"], value=numpy_helper.from_array(np.array([1], np.int64))),
                helper.make_node("ReduceMean", [x, f"{y}_axes"], [y], keepdims=1)]
    return [helper.make_node("ReduceMean", [x], [y], axes=[1], keepdims=1)]


def _flatten_by_axis(x: str, y: str) -> onnx.NodeProto:
    node = helper.make_node("Flatten", [x], [y])
    node.attribute.append(onnx.AttributeProto(name="axis", ref_attr_name="axis", type=onnx.AttributeProto.INT))
    return node


def _gelu(opset: int) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [_const("k", 0.7071067811865476), _const("one", 1.0), _const("half", 0.5),
            n("Mul", ["X", "k"], ["a"]), n("Erf", ["a"], ["e"]), n("Add", ["e", "one"], ["s"]),
            n("Mul", ["X", "s"], ["xs"]), n("Mul", ["xs", "half"], ["Y"])]


def _gelu_tanh(opset: int) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [_const("k", 0.7978845608028654), _const("c", 0.044715), _const("one", 1.0), _const("half", 0.5),
            n("Mul", ["X", "X"], ["x2"]), n("Mul", ["x2", "X"], ["x3"]), n("Mul", ["x3", "c"], ["cx3"]),
            n("Add", ["X", "cx3"], ["p"]), n("Mul", ["p", "k"], ["a"]), n("Tanh", ["a"], ["t"]),
            n("Add", ["t", "one"], ["s"]), n("Mul", ["X", "s"], ["xs"]), n("Mul", ["xs", "half"], ["Y"])]


def _swish(opset: int) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [_attr_const("alpha", "alpha"), n("Mul", ["X", "alpha"], ["a"]), n("Sigmoid", ["a"], ["s"]),
            n("Mul", ["X", "s"], ["Y"])]


def _hard_swish(opset: int) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [n("HardSigmoid", ["X"], ["h"], alpha=1.0 / 6.0, beta=0.5), n("Mul", ["X", "h"], ["Y"])]


def _mish(opset: int) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [n("Softplus", ["X"], ["sp"]), n("Tanh", ["sp"], ["t"]), n("Mul", ["X", "t"], ["Y"])]


def _layer_norm(opset: int) -> list[onnx.NodeProto]:
    # the normalized axes (axis..end) flattened into one, so the body works for any attribute value
    n = helper.make_node
    return [n("Shape", ["X"], ["shape"]), _flatten_by_axis("X", "x2"), *_reduce_mean_last("x2", "mean", opset),
            n("Sub", ["x2", "mean"], ["d"]), n("Mul", ["d", "d"], ["dd"]), *_reduce_mean_last("dd", "var", opset),
            _attr_const("eps", "epsilon"), n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["std"]),
            n("Div", ["d", "std"], ["n2"]), n("Reshape", ["n2", "shape"], ["n"]), n("Mul", ["n", "Scale"], ["ns"]),
            n("Add", ["ns", "B"], ["Y"])]


def _rms_norm(opset: int) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [n("Shape", ["X"], ["shape"]), _flatten_by_axis("X", "x2"), n("Mul", ["x2", "x2"], ["sq"]),
            *_reduce_mean_last("sq", "ms", opset), _attr_const("eps", "epsilon"), n("Add", ["ms", "eps"], ["mse"]),
            n("Sqrt", ["mse"], ["rms"]), n("Div", ["x2", "rms"], ["n2"]), n("Reshape", ["n2", "shape"], ["n"]),
            n("Mul", ["n", "Scale"], ["Y"])]


@dataclass(frozen=True)
class FusedOp:
    """One op a rule can write: the ONNX op (from opset ``since``) and its local-function form."""

    onnx_op: str
    since: int
    local: str
    inputs: tuple[str, ...]
    body: Body | None
    attrs: tuple[str, ...] = ()  # passed by reference into the local body
    onnx_attrs: dict[str, Any] = field(default_factory=dict)  # fixed attributes of the ONNX op


FUSED: dict[str, FusedOp] = {
    "Gelu": FusedOp("Gelu", 20, "Gelu", ("X",), _gelu),
    "GeluTanh": FusedOp("Gelu", 20, "GeluTanh", ("X",), _gelu_tanh, onnx_attrs={"approximate": "tanh"}),
    "Swish": FusedOp("Swish", 24, "Swish", ("X",), _swish, ("alpha",)),
    "HardSwish": FusedOp("HardSwish", 14, "HardSwish", ("X",), _hard_swish),
    "Mish": FusedOp("Mish", 18, "Mish", ("X",), _mish),
    "LayerNormalization": FusedOp("LayerNormalization", 17, "LayerNormalization", ("X", "Scale", "B"), _layer_norm,
                                  ("axis", "epsilon")),
    "Softmax": FusedOp("Softmax", 1, "Softmax", ("X",), None, ("axis",)),  # ONNX at every opset
    "RMSNormalization": FusedOp("RMSNormalization", 23, "RMSNormalization", ("X", "Scale"), _rms_norm,
                                ("axis", "epsilon")),
}

# the local ops, as the TF emitter and the transpose pusher key them
LOCAL_OPS = tuple(f"{DOMAIN}::{op.local}" for op in FUSED.values() if op.body is not None)


def unavailable(graph: Graph, kind: str) -> str | None:
    """Why ``kind`` cannot be written into this graph, or None."""
    op, opset = FUSED[kind], graph.opset
    if opset >= op.since or opset >= LOCAL_MIN_OPSET:
        return None
    return f"opset {opset}: {op.onnx_op} needs opset {op.since}, and local functions are written from opset {LOCAL_MIN_OPSET}"


def add_fused(graph: Graph, kind: str, inputs: list[str], output: str, attrs: dict[str, Any], *,
              name: str, created_by: str) -> Node:
    """Add ``kind`` computing ``output`` from ``inputs``: the ONNX op, or the local function."""
    op = FUSED[kind]
    if graph.opset >= op.since:
        return graph.add_node(op.onnx_op, inputs, [output], attrs={**op.onnx_attrs, **attrs}, name=name, created_by=created_by)
    _declare(graph, op)
    return graph.add_node(op.local, inputs, [output], attrs=attrs, domain=DOMAIN, name=name, created_by=created_by)


def _declare(graph: Graph, op: FusedOp) -> None:
    """Add the local function (once) and the domain's opset import. Lists are replaced, never
    appended to: copies of the graph share ``model_meta``'s lists."""
    meta = graph.model_meta
    functions = list(meta.get("functions", []))
    if not any(f.domain == DOMAIN and f.name == op.local for f in functions):
        body = op.body(graph.opset)
        functions.append(helper.make_function(DOMAIN, op.local, list(op.inputs), ["Y"], body,
                                              [helper.make_opsetid("", graph.opset)], attributes=list(op.attrs),
                                              doc_string=f"ONNX {op.onnx_op} (opset {op.since}) for opset {graph.opset}, "
                                                         "written by graph_convert's recognition rules"))
        meta["functions"] = functions
    imports = list(meta.get("opset_import", [("", graph.opset)]))
    if not any(d == DOMAIN for d, _ in imports):
        meta["opset_import"] = imports + [(DOMAIN, DOMAIN_VERSION)]
    if meta.get("ir_version", 8) < 8:  # model-local functions need IR 8
        meta["ir_version"] = 8
