"""Elementwise arithmetic read as a polynomial over tensors, so a rewrite rule can match a formula
however the exporter ordered, grouped or scaled it.

``expand(graph, t)`` follows Mul/Div/Add/Sub/Neg/Pow/Reciprocal (and Identity, same-type Cast)
backwards from ``t`` through tensors read exactly once, and returns the formula as a
:class:`Poly`: a sum of monomials, each a coefficient times a product of *leaves* raised to
integer powers. A leaf is any tensor it does not look through: an input, a tensor read more than
once (the shared ``x`` of ``x * sigmoid(x)``), the output of a non-arithmetic op (Erf, Tanh,
ReduceMean, ...) or a constant with more than one element. Size-1 constants fold into the
coefficients. Worked examples (``x`` read twice, so a leaf)::

    Mul(Mul(x, 0.5), Add(Erf(Div(x, 1.4142135)), 1))   ->  0.5*x + 0.5*x*E      (E: the Erf output)
    Mul(0.5, Mul(x, Add(1, E)))                         ->  the same Poly
    Div(Mul(x, Clip(..)), 6)                            ->  0.16666667*x*C
    Mul(x, Mul(x, x)) read as the argument of a Tanh    ->  x^3

``nodes`` lists every node looked through, so a rule knows exactly what it would replace.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from graph_convert.ir import Graph, Node

Monomial = tuple[tuple[str, int], ...]  # sorted (leaf tensor, exponent) pairs; () is the constant term

MAX_TERMS = 32
MAX_DEGREE = 6
MAX_NODES = 64


class TooComplex(Exception):
    """The formula grew past the limits above: not something a rule here would match."""


def _mono_mul(a: Monomial, b: Monomial) -> Monomial:
    exps = dict(a)
    for leaf, e in b:
        exps[leaf] = exps.get(leaf, 0) + e
        if abs(exps[leaf]) > MAX_DEGREE:
            raise TooComplex(f"degree of {leaf!r} above {MAX_DEGREE}")
    return tuple(sorted((k, v) for k, v in exps.items() if v))


@dataclass
class Poly:
    terms: dict[Monomial, float] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)  # nodes looked through (their outputs are read once)

    @staticmethod
    def const(c: float) -> "Poly":
        return Poly({(): float(c)} if c else {})

    @staticmethod
    def leaf(t: str) -> "Poly":
        return Poly({((t, 1),): 1.0})

    def __add__(self, other: "Poly") -> "Poly":
        out = dict(self.terms)
        for m, c in other.terms.items():
            out[m] = out.get(m, 0.0) + c
            if out[m] == 0.0:
                del out[m]
        if len(out) > MAX_TERMS:
            raise TooComplex(f"more than {MAX_TERMS} terms")
        return Poly(out, self.nodes | other.nodes)

    def scale(self, c: float) -> "Poly":
        return Poly({m: v * c for m, v in self.terms.items()} if c else {}, set(self.nodes))

    def __mul__(self, other: "Poly") -> "Poly":
        out: dict[Monomial, float] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.terms.items():
                m = _mono_mul(m1, m2)
                out[m] = out.get(m, 0.0) + c1 * c2
                if len(out) > MAX_TERMS:
                    raise TooComplex(f"more than {MAX_TERMS} terms")
        return Poly({m: c for m, c in out.items() if c}, self.nodes | other.nodes)

    def inverse(self) -> "Poly | None":
        """1/p for a single monomial (c * prod leaf^e -> 1/c * prod leaf^-e), else None."""
        if len(self.terms) != 1:
            return None
        ((m, c),) = self.terms.items()
        return Poly({tuple((k, -e) for k, e in m): 1.0 / c}, set(self.nodes))

    # -- reading it --------------------------------------------------------------------------
    @property
    def leaves(self) -> set[str]:
        return {k for m in self.terms for k, _ in m}

    def coeff(self, *factors: tuple[str, int] | str) -> float:
        """Coefficient of one monomial, given as leaves (exponent 1) or (leaf, exponent) pairs."""
        m: Monomial = ()
        for f in factors:
            m = _mono_mul(m, ((f, 1),) if isinstance(f, str) else (f,))
        return self.terms.get(m, 0.0)

    def is_linear_in(self, x: str) -> tuple[float, float] | None:
        """``(a, b)`` when the Poly is ``a*x + b`` (b a number), else None."""
        if not set(self.terms) <= {((x, 1),), ()}:
            return None
        return self.terms.get(((x, 1),), 0.0), self.terms.get((), 0.0)

    def __repr__(self) -> str:
        def mono(m):
            return "*".join(k if e == 1 else f"{k}^{e}" for k, e in m) or "1"
        return " + ".join(f"{c:.8g}*{mono(m)}" for m, c in self.terms.items()) or "0"


def close(a: float, b: float, rtol: float = 1e-5) -> bool:
    """``a`` equals the reference value ``b`` up to float32 rounding of exported constants."""
    return math.isfinite(a) and abs(a - b) <= rtol * abs(b)


def read_once(graph: Graph, t: str) -> bool:
    """``t`` is read by exactly one input slot of one node, and is not a graph output."""
    if graph.is_graph_output(t):
        return False
    return sum(c.inputs.count(t) + c.implicit_inputs.count(t) for c in graph.consumers(t)) == 1


def scalar(graph: Graph, t: str) -> float | None:
    v = graph.constant_value(t) if t else None
    if v is None or v.size != 1 or v.dtype.kind != "f":
        return None
    return float(v.reshape(-1)[0])


_ARITH = {"Mul", "Div", "Add", "Sub", "Neg", "Pow", "Reciprocal", "Identity", "Cast"}


def expand(graph: Graph, t: str, *, root: bool = True, _budget: list | None = None) -> Poly:
    """The Poly of tensor ``t`` (see the module docstring). Raises :class:`TooComplex`."""
    budget = [MAX_NODES] if _budget is None else _budget
    c = scalar(graph, t)
    if c is not None:
        return Poly.const(c)
    node = graph.producer(t)
    if (node is None or node.op_type not in _ARITH or node.domain not in ("", "ai.onnx") or node.is_layout_marked
            or (not root and not read_once(graph, t))):
        return Poly.leaf(t)
    out = _expand_node(graph, node, budget)
    if out is None:
        return Poly.leaf(t)
    budget[0] -= 1
    if budget[0] < 0:
        raise TooComplex(f"more than {MAX_NODES} nodes")
    out.nodes.add(node.name)
    return out


def _expand_node(graph: Graph, node: Node, budget: list) -> Poly | None:
    def sub(j: int) -> Poly:
        return expand(graph, node.inputs[j], root=False, _budget=budget)

    op = node.op_type
    if op in ("Identity",) or (op == "Cast" and node.attr("to") == graph.dtype(node.inputs[0]) != 0):
        return sub(0)
    if op == "Cast":
        return None
    if len(node.inputs) == 2 and op in ("Mul", "Add", "Sub"):
        a, b = sub(0), sub(1)
        return a * b if op == "Mul" else a + (b if op == "Add" else b.scale(-1.0))
    if op == "Neg":
        return sub(0).scale(-1.0)
    if op == "Div":
        den = sub(1).inverse()
        return None if den is None else sub(0) * den
    if op == "Reciprocal":
        return sub(0).inverse()
    if op == "Pow":
        v = graph.constant_value(node.inputs[1])
        e = float(v.reshape(-1)[0]) if v is not None and v.size == 1 and v.dtype.kind in "fiu" else None
        if e is None or e != int(e) or not 1 <= abs(e) <= MAX_DEGREE:
            return None
        base = sub(0)
        if e < 0:
            base = base.inverse()
            if base is None:
                return None
        out = Poly.const(1.0)
        for _ in range(abs(int(e))):
            out = out * base
        return out
    return None
