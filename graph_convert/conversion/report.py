"""report.json: what a conversion did, built from its finished context."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from graph_convert.version import __version__
from graph_convert.ir import Graph

VERIFY_RULE = ("per output and input draw: NaN/+-inf in the same places; max |got - source| <= atol x max |source| "
               "+ 4 x the smallest normal float32; cosine >= 1 - atol; integers and booleans equal")


def build_report(c) -> None:
    """report.json from a finished :class:`~graph_convert.conversion.pipeline.Conversion`."""
    g, t, v = c.graph, c.traced, c.verifier
    warnings = [{"output": name, "warning": f"{why}: the check on it proves little"}
                for name, why in v.input_independent_outputs().items()]
    for w in warnings:
        c.say(f"warning: output {w['output']!r}: {w['warning']}")

    def io(names, tf_names):
        return [{"name": x, "tf_name": n, "shape": _io_shape(g, c.view, x), "layout_perm": list(g.io_perms.get(x, [])) or None}
                for x, n in zip(names, tf_names)]

    verification = {"rule": VERIFY_RULE, "atol": c.options.atol, "draws": v.draw_labels, "notes": v.notes, "warnings": warnings}
    verification.update({k: figures_dict(f) for k, f in c.figures.items()})
    c.report = {
        "graph_convert_version": __version__,
        "source": c.source_info,
        "io": {"inputs": io(g.inputs, t.in_names), "outputs": io(g.outputs, t.out_names), "keep_io_layout": c.options.keep_io_layout},
        "plugins": c.registry.sources,
        "passes": [r.as_dict() for r in c.rewritten.records],
        "rewritten_graph": {"nodes": len(g), "transposes": g.count("Transpose"), "transposes_left": transposes_left(g, c.registry.transpose_handlers)},
        "verification": verification,
        "tflite_gaps": c.gaps,
        "dynamic_batch": c.dyn_info if c.dyn_info is not None else {"kept": False, "reason": "static batch (no --dynamic-batch, no symbolic batch dim)"},
        **c.report,  # the TFLite op counts and the quantization report, filled by their stages
    }


def json_safe(x):
    """The report as strict JSON: numpy scalars as numbers, non-finite floats as strings."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else repr(float(x))
    return x


def _io_shape(graph: Graph, view, name: str) -> list:
    shape = view.shape(name) if view is not None else graph.shape(name)
    return ["batch" if d is None else d for d in (shape or [])]


def figures_dict(figs) -> dict[str, Any]:
    return {k: v.as_dict() for k, v in figs.items()}


def transposes_left(graph: Graph, handlers: Mapping[str, Any] | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Each Transpose still in the graph, with its neighbours and, for each reader, why that
    reader would not take it (the transpose handler's reason, asked on a copy of the graph)."""
    out = []
    for n in graph.nodes:
        if n.op_type != "Transpose":
            continue
        users = graph.consumers(n.outputs[0])
        prod = graph.producer(n.inputs[0])
        entry = {"node": n.name, "perm": n.attr("perm"), "input_from": None if prod is None else f"{prod.name} ({prod.op_type})",
                 "read_by": [c.name + f" ({c.op_type})" for c in users] + (["graph output"] if graph.is_graph_output(n.outputs[0]) else [])}
        if handlers is not None and len(out) < limit:
            entry["kept_because"] = [_why_kept(graph, n, c, handlers) for c in users]
            if graph.is_graph_output(n.outputs[0]):
                entry["kept_because"].append({"node": "graph output", "reason": "a graph output keeps the layout the I/O options ask for"})
        out.append(entry)
    return out


def _why_kept(graph: Graph, transpose, reader, handlers: Mapping[str, Any]) -> dict[str, str]:
    key = reader.op_type if reader.domain in ("", "ai.onnx") else f"{reader.domain}::{reader.op_type}"
    row = {"node": reader.name, "op_type": key}
    if reader.is_layout_marked:
        return {**row, "reason": "a channels-last node: it reads the layout the Transpose restores"}
    handler = handlers.get(key)
    if handler is None:
        return {**row, "reason": f"no transpose handler for {key}"}
    perm = transpose.attr("perm")
    perm = tuple(perm) if perm is not None else tuple(reversed(range(graph.rank(transpose.inputs[0]) or 0)))
    trial = graph.copy()  # a handler that accepts rewrites the graph: ask a copy
    try:
        moved = handler(trial, trial.node(reader.name), perm, "explain")
    except Exception as e:  # noqa: BLE001 - a plugin handler's bug is a reason too
        return {**row, "reason": f"the handler raised {type(e).__name__}: {e}"}
    if moved:
        return {**row, "reason": "its handler would move it; the optimizer's fixed point stopped before"}
    return {**row, "reason": getattr(moved, "reason", None) or "declined (the handler gave no reason)"}
