"""TF name scopes per graph node, so TFLite tensor names lead back to the nodes they came from."""
from __future__ import annotations

import re
from typing import Callable, Mapping


def _scope_name(node_name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", node_name).lstrip("_.-")
    return s or "node"


def scoped_emitters(emitters: Mapping[str, Callable], graph) -> tuple[dict[str, Callable], dict[str, str]]:
    """The emitter table with every node's emission wrapped in ``tf.name_scope(<node name>)``, so
    each TF op — and each TFLite tensor name, which the converter builds from op names — tells
    which node it came from. Returns ``(emitters, {scope: node name})``."""
    import tensorflow as tf

    by_node: dict[str, str] = {}
    used: set[str] = set()
    for n in graph.nodes:
        base = _scope_name(n.name)
        s, i = base, 2
        while s in used:
            s, i = f"{base}_{i}", i + 1
        used.add(s)
        by_node[n.name] = s

    def wrap(fn):
        def emit(node, inputs, ctx):
            scope = by_node.get(node.name)
            if scope is None:
                return fn(node, inputs, ctx)
            with tf.name_scope(scope + "/"):  # trailing "/": this exact scope, not a uniquified one
                return fn(node, inputs, ctx)
        return emit

    return {k: wrap(f) for k, f in emitters.items()}, {s: n for n, s in by_node.items()}


class NodeNames:
    """Maps TFLite tensor names back to graph node names."""

    def __init__(self, scopes: Mapping[str, str], output_tensors: Mapping[str, str]):
        self.scopes = dict(scopes)
        self.outputs = dict(output_tensors)  # TFLite signature output tensor name -> node name
        self.order = {n: i for i, n in enumerate(self.scopes.values())}  # graph order (scopes are built in it)

    def nodes(self, tensor_name: str) -> list[str]:
        found = []
        for part in tensor_name.split(";"):
            scope = part.split("/", 1)[0] if "/" in part else None
            if scope in self.scopes:
                found.append(self.scopes[scope])
        if not found:
            base = tensor_name
            for _ in range(2):  # TFLite appends a digit to derived tensors ("PartitionedCall:01")
                if base in self.outputs:
                    found.append(self.outputs[base])
                    break
                base = base[:-1] if base[-1:].isdigit() else base
        return sorted(dict.fromkeys(found), key=lambda n: self.order.get(n, len(self.order)))
