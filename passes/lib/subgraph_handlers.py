"""Transpose handlers of the control-flow ops (If, Loop, Scan): they decline, with the reason.

A body reads outer-scope tensors by name, in the source layout, and no pass rewrites bodies: a
Transpose feeding a control-flow node (as an input or read inside a body) stays in front of it
rather than moving into the body, which would need every body to be rewritten for the new layout.
"""
from __future__ import annotations

from graph_convert.ir import Graph, Node
from graph_convert_passes.lib.transpose_handlers import Declined, decline


def reads_in_bodies(graph: Graph, node: Node, perm: tuple, created_by: str) -> Declined:
    return decline(f"{node.op_type} bodies read this tensor in the source layout (transposes are not pushed into subgraphs)")


HANDLERS = {op: reads_in_bodies for op in ("If", "Loop", "Scan")}
