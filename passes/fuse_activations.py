"""Recognise activations that exporters spell out and write them as one op: GELU (erf and tanh
forms) -> Gelu, x*sigmoid(a*x) -> Swish (SiLU when a = 1), x*hardsigmoid(x) and
x*relu6(x+3)/6 -> HardSwish, x*tanh(softplus(x)) -> Mish.

The TorchScript exporter at opset 17 writes nn.GELU as ``Div(x, 1.4142135) -> Erf -> Add 1 ->
Mul x -> Mul 0.5`` and GELU(approximate='tanh') as a 12-node polynomial; nn.Mish as
Softplus/Tanh/Mul (Mish is opset 18); hand-written forms (Hugging Face's NewGELUActivation,
FastGELUActivation, ``x * F.relu6(x + 3) / 6``) reach both exporters as written. Each rule reads
the formula as a polynomial (:mod:`passes.expr`), so operand order, where the 0.5 is applied,
Div by sqrt(2) or Mul by 1/sqrt(2), ``pow(x, 3)`` or ``x*x*x`` do not matter; the constants must
equal the function's own to float32 rounding (:func:`passes.expr.close`), so a near miss
(0.05 instead of 0.044715) is left alone and reported.
"""
from __future__ import annotations

import math

from graph_convert.ir import Graph, Node
from graph_convert_passes.lib.expr import Poly, close, scalar
from graph_convert_passes.lib.rewrite_rules import Fail, Match, RulePass, operand, producer

SQRT_HALF = 1.0 / math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def _x_times(graph: Graph, poly: Poly, op_types: tuple[str, ...], check) -> Match | Fail | None:
    """``c * x * F`` with F the output of one of ``op_types``: ``check(x, F's node, c)`` for each way
    of reading it so (x may itself come from such an op); the first Match, else the deepest Fail."""
    if len(poly.terms) != 1:
        return None
    ((mono, c),) = poly.terms.items()
    if len(mono) != 2 or any(e != 1 for _, e in mono):
        return None
    best = None
    for (a, _), (b, _) in (mono, mono[::-1]):
        node = producer(graph, b, *op_types)
        if node is None:
            continue
        res = check(a, node, c)
        if isinstance(res, Match):
            return res
        if res is not None and (best is None or res.depth > best.depth):
            best = res
    return best


def _half_x_plus_half_x_times(graph: Graph, poly: Poly, op_type: str) -> tuple[str, Node, float, float] | Fail | None:
    """``c1 * x + c2 * x * F`` with F the output of ``op_type`` (the shape of both GELUs)."""
    anchors = [producer(graph, leaf, op_type) for leaf in poly.leaves]
    anchors = [a for a in anchors if a is not None]
    if not anchors:
        return None
    singles = [m for m in poly.terms if len(m) == 1 and m[0][1] == 1]
    pairs = [m for m in poly.terms if len(m) == 2 and all(e == 1 for _, e in m)]
    if len(poly.terms) == 2 and len(singles) == 1 and len(pairs) == 1:
        x = singles[0][0][0]
        other = [leaf for leaf, _ in pairs[0] if leaf != x]
        node = producer(graph, other[0], op_type) if len(other) == 1 else None
        if node is not None:
            return x, node, poly.terms[singles[0]], poly.terms[pairs[0]]
    return Fail(anchors[0].name, f"output is {poly!r}, not 0.5*x*(1 + {op_type}(...))")


def _gelu(graph: Graph, root: Node, poly: Poly, fn: str) -> Match | Fail | None:
    got = _half_x_plus_half_x_times(graph, poly, fn)
    if not isinstance(got, tuple):
        return got
    x, anchor, c1, c2 = got
    if not (close(c1, 0.5) and close(c2, 0.5)):
        return Fail(anchor.name, f"0.5*x*(1 + {fn}) expected, got {c1:.8g}*x + {c2:.8g}*x*{fn}", 1)
    arg = operand(graph, anchor.inputs[0])
    if fn == "Erf":
        lin = arg.is_linear_in(x)
        if lin is None or lin[1] != 0 or not close(lin[0], SQRT_HALF):
            return Fail(anchor.name, f"Erf argument is {arg!r}, expected {SQRT_HALF:.8g}*x (x/sqrt(2))", 2)
        return Match("Gelu", [x], poly.nodes | arg.nodes | {anchor.name}, anchor=anchor.name)
    a, b = arg.coeff(x), arg.coeff((x, 3))
    if len(arg.terms) != 2 or not close(a, SQRT_2_OVER_PI) or not close(b, SQRT_2_OVER_PI * GELU_CUBIC):
        return Fail(anchor.name, f"Tanh argument is {arg!r}, expected sqrt(2/pi)*(x + 0.044715*x^3) = "
                                 f"{SQRT_2_OVER_PI:.8g}*x + {SQRT_2_OVER_PI * GELU_CUBIC:.8g}*x^3", 2)
    return Match("GeluTanh", [x], poly.nodes | arg.nodes | {anchor.name}, anchor=anchor.name)


def gelu_erf(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """0.5 * x * (1 + erf(x / sqrt(2))) -> Gelu."""
    return _gelu(graph, root, poly, "Erf")


def gelu_tanh(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> Gelu(approximate='tanh')."""
    return _gelu(graph, root, poly, "Tanh")


def swish(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """x * sigmoid(a * x) -> Swish(alpha=a); SiLU is a = 1, QuickGELU a = 1.702."""
    def check(x: str, sig: Node, c: float) -> Match | Fail:
        arg = operand(graph, sig.inputs[0])
        lin = arg.is_linear_in(x)
        if lin is None or lin[1] != 0 or not lin[0] > 0:
            return Fail(sig.name, f"Sigmoid argument is {arg!r}, expected a*x with a > 0", 1)
        if not close(c, 1.0):
            return Fail(sig.name, f"{c:.8g}*x*sigmoid(..) is not x*sigmoid(..)", 2)
        return Match("Swish", [x], poly.nodes | arg.nodes | {sig.name}, {"alpha": float(lin[0])}, anchor=sig.name)

    return _x_times(graph, poly, ("Sigmoid",), check)


def _clip_bounds(graph: Graph, node: Node) -> tuple[float | None, float | None] | None:
    if graph.opset < 11:
        return node.attr("min"), node.attr("max")
    ins = list(node.inputs) + ["", ""]
    bounds = []
    for t in ins[1:3]:
        v = scalar(graph, t) if t else None
        if t and v is None:
            return None  # a bound known only at run time
        bounds.append(v)
    return bounds[0], bounds[1]


def hard_swish(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """x * hardsigmoid(x) and c * x * clip(s*x + b, 0, hi) with s/hi = 1/6, b/hi = 1/2, c*hi = 1
    (``x * relu6(x + 3) / 6``) -> HardSwish = x * clip(x/6 + 1/2, 0, 1)."""
    def check(x: str, gate: Node, c: float) -> Match | Fail:
        arg = operand(graph, gate.inputs[0])
        lin = arg.is_linear_in(x)
        if lin is None:
            return Fail(gate.name, f"{gate.op_type} argument is {arg!r}, not linear in x", 1)
        s, b = lin
        if gate.op_type == "HardSigmoid":  # clip(alpha*(s*x + b) + beta, 0, 1)
            alpha, beta = gate.attr("alpha", 0.2), gate.attr("beta", 0.5)
            slope, offset, scale = alpha * s, alpha * b + beta, c
        else:
            bounds = _clip_bounds(graph, gate)
            if bounds is None or bounds[0] != 0.0 or bounds[1] is None or not bounds[1] > 0:
                return Fail(gate.name, f"Clip bounds {bounds} are not (0, hi)", 1)
            hi = bounds[1]
            slope, offset, scale = s / hi, b / hi, c * hi
        if not (close(slope, 1.0 / 6.0) and close(offset, 0.5) and close(scale, 1.0)):
            return Fail(gate.name, f"{scale:.8g}*x*clip({slope:.8g}*x + {offset:.8g}, 0, 1) is not x*clip(x/6 + 1/2, 0, 1)", 2)
        return Match("HardSwish", [x], poly.nodes | arg.nodes | {gate.name}, anchor=gate.name)

    return _x_times(graph, poly, ("HardSigmoid", "Clip"), check)


def mish(graph: Graph, root: Node, poly: Poly) -> Match | Fail | None:
    """x * tanh(softplus(x)) -> Mish; softplus as Softplus or as Log(Exp(x) + 1)."""
    def check(x: str, tanh: Node, c: float) -> Match | Fail | None:
        sp = producer(graph, tanh.inputs[0], "Softplus", "Log")
        if sp is None:
            return None
        nodes = poly.nodes | {tanh.name, sp.name}
        inner = operand(graph, sp.inputs[0])
        if sp.op_type == "Log":  # log(exp(x) + 1)
            exps = [producer(graph, leaf, "Exp") for leaf in inner.leaves]
            if (len(inner.terms) != 2 or len(exps) != 1 or exps[0] is None or inner.terms.get(()) != 1.0
                    or inner.coeff(exps[0].outputs[0]) != 1.0):
                return Fail(tanh.name, f"Log argument is {inner!r}, not exp(x) + 1", 1)
            nodes |= inner.nodes | {exps[0].name}
            inner = operand(graph, exps[0].inputs[0])
        if inner.is_linear_in(x) != (1.0, 0.0):
            return Fail(tanh.name, f"softplus argument is {inner!r}, not x", 2)
        if not close(c, 1.0):
            return Fail(tanh.name, f"{c:.8g}*x*tanh(softplus(x)) is not Mish", 3)
        return Match("Mish", [x], nodes | inner.nodes, anchor=tanh.name)

    return _x_times(graph, poly, ("Tanh",), check)


class FuseActivations(RulePass):
    name = "fuse_activations"
    rules = {"gelu_erf": gelu_erf, "gelu_tanh": gelu_tanh, "swish": swish, "hard_swish": hard_swish, "mish": mish}


PASS = FuseActivations
