"""A pass made of a table of local rewrite rules, each recognising one spelled-out formula.

A rule is ``rule(graph, root, poly) -> Match | Fail | None`` where ``root`` is an arithmetic
node and ``poly`` its output as a :class:`passes.expr.Poly`. It returns ``None`` when its anchor
(the Erf of a GELU, the ReduceMean of a LayerNorm, ...) is not there at all, a :class:`Fail`
saying why not once it has found the anchor, or a :class:`Match` naming the fused op and every
node it replaces. Rules read structure and constant values only, never node names.

The pass (:class:`RulePass`) tries roots from the graph's outputs backwards, so the largest
formula is seen first; checks that every tensor inside a match is read only inside it; writes
the fused op (see :mod:`passes.fused_ops`) under the root's output name; and reports per rule
what fired and, for anchors that stayed, why the rule declined (the reason from the root where
the rule got furthest).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from graph_convert.ir import Graph, Node
from graph_convert.pass_manager import Pass, PassContext, PassResult
from graph_convert_passes.lib import fused_ops
from graph_convert_passes.lib.expr import Poly, TooComplex, expand

ROOT_OPS = {"Mul", "Div", "Add", "Sub", "Neg", "Reciprocal"}
FLOAT32 = 1
MAX_DECLINES_REPORTED = 20


@dataclass
class Match:
    op: str  # key of passes.fused_ops.FUSED
    inputs: list[Any]  # tensor names, or numpy arrays that become initializers
    nodes: set[str]  # every node replaced, the root included
    attrs: dict[str, Any] = field(default_factory=dict)
    anchor: str = ""  # as in Fail: named when the match is refused at the end


@dataclass
class Fail:
    anchor: str  # the node that made the rule look (reported only if it is still there at the end)
    reason: str
    depth: int = 0  # how far the rule got; the deepest reason per anchor is reported


Rule = Callable[[Graph, Node, Poly], "Match | Fail | None"]


def producer(graph: Graph, tensor: str, *op_types: str) -> Node | None:
    """The default-domain, unmarked producer of ``tensor`` when it is one of ``op_types``."""
    node = graph.producer(tensor)
    if node is None or node.op_type not in op_types or node.domain not in ("", "ai.onnx") or node.is_layout_marked:
        return None
    return node


def operand(graph: Graph, tensor: str) -> Poly:
    """The Poly of an operand inside a match (looked through only when read once)."""
    return expand(graph, tensor, root=False)


class RulePass(Pass):
    """Base of a rule-table pass: subclasses set ``name`` and ``rules``."""

    phase = "canonicalize"
    after = ("constants_to_initializers", "fold_constants")
    # split_group_norm writes a normalization out on purpose (to keep channels whole): not ours to fuse
    before = ("to_channels_last", "fold_channel_permutation", "split_group_norm")
    rules: ClassVar[dict[str, Rule]] = {}

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired: dict[str, int] = {}
        declined: dict[tuple[str, str], Fail] = {}
        for root in reversed(graph.nodes):
            if (not graph.has_node(root.name) or root.op_type not in ROOT_OPS or root.domain not in ("", "ai.onnx")
                    or root.is_layout_marked or len(root.outputs) != 1):
                continue
            try:
                poly = expand(graph, root.outputs[0])
            except TooComplex:
                continue
            for rule_name, rule in self.rules.items():
                try:
                    res = rule(graph, root, poly)
                except TooComplex:
                    continue
                if isinstance(res, Match):
                    res = self._apply(graph, root, rule_name, res)
                if isinstance(res, Fail):
                    key = (rule_name, res.anchor)
                    if key not in declined or res.depth > declined[key].depth:
                        declined[key] = res
                    continue
                if res is not None:
                    fired[rule_name] = fired.get(rule_name, 0) + 1
                    break
        details: dict[str, Any] = {}
        if fired:
            details["fused"] = fired
        left = [{"rule": r, "node": f.anchor, "reason": f.reason} for (r, _), f in declined.items() if graph.has_node(f.anchor)]
        if left:
            details["declined"] = left[:MAX_DECLINES_REPORTED]
        return PassResult(bool(fired), details)

    def _apply(self, graph: Graph, root: Node, rule_name: str, m: Match) -> Match | Fail:
        out = root.outputs[0]
        anchor = m.anchor or root.name
        for name in m.nodes:
            for t in graph.node(name).outputs:
                if t == out or not t:
                    continue
                if graph.is_graph_output(t):
                    return Fail(anchor, f"{t!r} inside the pattern is a graph output", 9)
                outside = [c.name for c in graph.consumers(t) if c.name not in m.nodes]
                if outside:
                    return Fail(anchor, f"{t!r} inside the pattern is also read by {outside[0]!r}", 9)
        x = m.inputs[0]
        if graph.dtype(x) != FLOAT32 or graph.dtype(out) != FLOAT32:
            return Fail(anchor, "only float32 patterns are rewritten", 9)
        sx, sy = graph.shape(x), graph.shape(out)
        if sx is None or sy is None or tuple(sx) != tuple(sy):
            return Fail(anchor, f"input shape {sx} and output shape {sy} are not known to be equal", 9)
        why = fused_ops.unavailable(graph, m.op)
        if why:
            return Fail(anchor, why, 9)
        inputs = [graph.add_initializer(f"{root.name}_{m.op}_{j}", np.ascontiguousarray(v, np.float32))
                  if isinstance(v, np.ndarray) else v for j, v in enumerate(m.inputs)]
        for name in m.nodes:
            graph.remove_node(name, force=True)
        fused_ops.add_fused(graph, m.op, inputs, out, m.attrs, name=graph.fresh_name(f"{root.name}_{m.op}"),
                            created_by=f"{self.name}:{rule_name}")
        return m
