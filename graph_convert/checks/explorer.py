"""Model Explorer node data for a conversion: the evidence overlaid on the graphs it is about.

``convert --explorer`` writes, into the output folder's ``explorer/``, node-data JSON files in
Model Explorer's format (a ``GraphNodeData``: ``{"results": {node key: {"value": ...}}, ...}``,
keyed by the ONNX node name for an .onnx file and by the output tensor name for a .tflite, as
Model Explorer's ONNX and TFLite adapters match them):

- ``model.rewritten.onnx.layout.json``: per node, its layout move and why (channels-last, a
  lowering Transpose, a Transpose kept with the transpose handler's reason, made by a pass, run on
  a permuted tensor);
- ``model.rewritten.onnx.error.json`` / ``model_float32.tflite.error.json``: per op, the max
  error over scale of its output against the same tensor of the source model in ONNX Runtime
  (every intermediate tensor kept on both sides and paired by name or by value up to a layout
  permutation, as ``graph-convert verify`` pairs them);
- ``<variant>.tflite.sqnr.json``: per op SQNR (dB) of each quantized file: the quantization
  debugger's per-layer figures for int8-full, and for the other variants each float tensor
  against the same-named tensor of model_float32.tflite.

``graph-convert view OUT`` opens the models with these files in Model Explorer when it is
installed (the ``explorer`` extra)."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np
import onnx

from graph_convert.checks.diverge import onnx_tensors, pair_by_value, tflite_tensors
from graph_convert.checks.equivalence import compare, to_rewritten_layout
from graph_convert.checks.candidate import load_tflite, run_tflite_keeping_tensors
from graph_convert.errors import ConvertError
from graph_convert.ir import perm as P

FOLDER = "explorer"
LAYOUT_COLOURS = {"channels-last": "#bfe3c6", "lowering": "#e4e7ec", "transpose kept": "#f7b6b2", "made by a pass": "#c9dcf7",
                  "permuted": "#fde7b0"}
# max |error| / scale of an intermediate tensor: float32 noise, drift, and far off
ERROR_THRESHOLDS = [{"value": 1e-5, "bgColor": "#bfe3c6"}, {"value": 1e-3, "bgColor": "#fde7b0"}, {"value": 1e30, "bgColor": "#f7b6b2"}]
SQNR_GRADIENT = [{"stop": 0, "bgColor": "#f7b6b2"}, {"stop": 0.5, "bgColor": "#fde7b0"}, {"stop": 1, "bgColor": "#bfe3c6"}]


def node_data(name: str, results: Mapping[str, dict], **extra: Any) -> dict[str, Any]:
    """One GraphNodeData (Model Explorer's node-data file for one graph)."""
    return {"name": name, "results": dict(results), **extra}


def _label(kind: str, text: str) -> dict[str, Any]:
    return {"value": f"{kind}: {text}", "bgColor": LAYOUT_COLOURS[kind]}


def layout_results(graph, transposes_left: list[dict]) -> dict[str, dict]:
    """Per node of the lowered rewritten graph (model.rewritten.onnx), its layout move and why."""
    kept = {t["node"]: t for t in transposes_left if isinstance(t, dict)}
    perm_of: dict[str, tuple] = {k: tuple(v) for k, v in graph.io_perms.items()}
    out: dict[str, dict] = {}
    for n in graph.nodes:
        if n.is_layout_marked:
            ins = [j for j in range(len(n.inputs)) if n.in_perm(j) is not None and not P.is_identity(n.in_perm(j))]
            outs = [k for k in range(len(n.outputs)) if n.out_perm(k) is not None and not P.is_identity(n.out_perm(k))]
            perms = sorted({str(list(n.in_perm(j))) for j in ins} | {str(list(n.out_perm(k))) for k in outs})
            out[n.name] = _label("channels-last", f"runs in the TF layout {', '.join(perms)}; the Transposes around it in this file "
                                                  f"only let ONNX Runtime check it and are not in the TF model")
            for j in ins:
                out[f"{n.name}__in{j}_to_onnx"] = _label("lowering", f"back to the ONNX layout for {n.name} (ONNX Runtime only)")
            for k in outs:
                out[f"{n.name}__out{k}_from_onnx"] = _label("lowering", f"{n.name}'s output to the TF layout (ONNX Runtime only)")
                perm_of[n.outputs[k]] = tuple(n.out_perm(k))
            continue
        if n.op_type == "Transpose" and n.name in kept:
            why = "; ".join(f"{k.get('node')}: {k.get('reason')}" for k in kept[n.name].get("kept_because") or []) or "no reader takes it"
            out[n.name] = _label("transpose kept", why)
            continue
        if n.created_by:
            out[n.name] = _label("made by a pass", n.created_by)
            continue
        if n.op_type != "Transpose":
            seen = [perm_of[t] for t in n.inputs if t in perm_of and not P.is_identity(perm_of[t])]
            if seen:
                for t in n.outputs:
                    perm_of[t] = seen[0]
                out[n.name] = _label("permuted", f"runs on tensors in layout {list(seen[0])} (the transposes were pushed past it)")
    return out


def _producers(model: onnx.ModelProto) -> dict[str, str]:
    return {o: (n.name or o) for n in model.graph.node for o in n.output if o}


def error_pairs(src, other, tol: float) -> list[tuple[Any, Any, float]]:
    """(source tensor, its counterpart, max |error| / source scale) for each paired tensor."""
    out = []
    agree = pair_by_value(src, other, tol)
    for a in src:
        if a.name not in agree:
            continue
        b, p, _ = agree[a.name]
        f = compare(a.value, np.transpose(b.value, P.invert(p)), tol)
        out.append((a, b, float(f.max_rel)))
    return out


def onnx_error_results(source: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                       io_perms: Mapping[str, tuple], tol: float) -> dict[str, dict]:
    src, _, _ = onnx_tensors(source, feeds)
    rw, _, _ = onnx_tensors(rewritten, to_rewritten_layout(feeds, io_perms))
    node_of = _producers(rewritten)
    res: dict[str, dict] = {}
    for _, b, err in error_pairs(src, rw, tol):
        key = node_of.get(b.name)
        if key is not None and err >= res.get(key, {}).get("value", -1.0):
            res[key] = {"value": err}
    return res


def tflite_tensors_of(path: str, feeds_by_tf_name: Mapping[str, np.ndarray]):
    cand = load_tflite(path)
    if any(np.dtype(s.dtype).kind != "f" for s in cand.inputs):  # --int8-io: float draws would need its quantization
        raise ConvertError("its inputs are not float")
    _, it = run_tflite_keeping_tensors(cand, {k: v.astype(s.dtype) for k, v, s in
                                              ((s.name, feeds_by_tf_name[s.name], s) for s in cand.inputs)})
    return tflite_tensors(it)


def tflite_error_results(source: onnx.ModelProto, feeds: Mapping[str, np.ndarray], tfl, tol: float) -> dict[str, dict]:
    src, _, _ = onnx_tensors(source, feeds)
    res: dict[str, dict] = {}
    for _, b, err in error_pairs(src, tfl, tol):
        if err >= res.get(b.name, {}).get("value", -1.0):
            res[b.name] = {"value": err}
    return res


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref ** 2))
    return 200.0 if noise == 0 else round(10 * np.log10(max(signal, 1e-30) / noise), 2)


def sqnr_by_name(ref, got) -> dict[str, dict]:
    by_name = {t.name: t for t in ref}
    res = {}
    for t in got:
        r = by_name.get(t.name)
        if r is not None and r.value.shape == t.value.shape and np.all(np.isfinite(r.value)) and np.all(np.isfinite(t.value)):
            res[t.name] = {"value": sqnr_db(r.value, t.value)}
    return res


def write(folder: str, graph, source: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
          report: Mapping[str, Any], tf_names: Mapping[str, str], tflite_paths: Mapping[str, str], atol: float,
          say: Callable[[str], None] = lambda m: None) -> list[str]:
    """Write the node-data files into ``folder`` (``explorer/`` of the output); their names."""
    os.makedirs(folder, exist_ok=True)
    tol = max(10 * atol, 1e-3)  # as graph-convert verify's intermediate tensors: they drift more than outputs
    files: dict[str, dict] = {}
    left = (report.get("rewritten_graph") or {}).get("transposes_left") or []
    files["model.rewritten.onnx.layout.json"] = node_data("layout moves", layout_results(graph, left), showExpandedSummaryOnGroupNode=True)
    files["model.rewritten.onnx.error.json"] = node_data(
        "max error / scale vs source (ORT)", onnx_error_results(source, rewritten, feeds, graph.io_perms, tol), thresholds=ERROR_THRESHOLDS)
    tfl_feeds = {tf_names[k]: v for k, v in to_rewritten_layout(feeds, graph.io_perms).items() if k in tf_names}
    kept: dict[str, list] = {}
    for key, path in tflite_paths.items():
        try:
            kept[key] = tflite_tensors_of(path, tfl_feeds)
        except Exception as e:  # noqa: BLE001 - the overlay is a diagnosis: a file it cannot run is said, not fatal
            say(f"explorer: {os.path.basename(path)}: intermediate tensors not read ({type(e).__name__}: {str(e)[:160]})")
    if "float32" in kept:
        files["model_float32.tflite.error.json"] = node_data("max error / scale vs source (ORT)",
                                                             tflite_error_results(source, feeds, kept["float32"], tol), thresholds=ERROR_THRESHOLDS)
    variants = (report.get("quantization") or {}).get("variants") or {}
    for key, var in variants.items():
        base = os.path.basename(var.get("path", ""))
        layers = (var.get("layers") or {}).get("all") if isinstance(var.get("layers"), dict) else None
        if layers:
            res = {x["tensor"]: {"value": float(x["sqnr_db"])} for x in layers if isinstance(x.get("sqnr_db"), (int, float))}
            files[f"{base}.sqnr.json"] = node_data("SQNR dB (quantization debugger)", res, gradient=SQNR_GRADIENT)
        elif key in kept and "float32" in kept:
            res = sqnr_by_name(kept["float32"], kept[key])
            files[f"{base}.sqnr.json"] = node_data("SQNR dB vs model_float32.tflite", res, gradient=SQNR_GRADIENT)
    for name, data in files.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)
    return sorted(files)


def write_for_conversion(c) -> list[str]:
    """The ``--explorer`` stage: node data for one finished :class:`~graph_convert.conversion.pipeline.Conversion`
    into its temporary output folder (so it is part of the atomic output)."""
    if c.rewritten is None or "rewritten_onnx" not in c.paths:
        c.say(f"explorer: not written: the {c.backend.name} back end converts the source, not a rewritten graph")
        return []
    tflites = {"float32": c.paths["tflite_float32"]} if "tflite_float32" in c.paths else {}
    for key, var in ((c.report.get("quantization") or {}).get("variants") or {}).items():
        tflites[key] = os.path.join(c.work, var["path"])
    folder = os.path.join(c.work, FOLDER)
    in_names = c.io_names[0] if c.io_names else list(c.graph.inputs)
    files = write(folder, c.graph, c.model, onnx.load(c.paths["rewritten_onnx"]), c.verifier.draws[0].feeds, c.report,
                  dict(zip(c.graph.inputs, in_names)), tflites, c.options.atol, say=c.say)
    c.paths["explorer"] = folder
    c.say(f"explorer: {len(files)} node-data files in {FOLDER}/ (graph-convert view OUT opens them in Model Explorer)")
    return files


# which model file each node-data file belongs to (Model Explorer's ``model_name``: the file's name)
def target_model(data_file: str) -> str:
    return data_file.rsplit(".", 2)[0]


NOT_INSTALLED = "Model Explorer is not installed (pip install 'graph-convert[explorer]')"


def explorer_config(out_dir: str):
    """Model Explorer's config: the output's rewritten ONNX and .tflite files, each with its node data."""
    folder = os.path.join(out_dir, FOLDER)
    if not os.path.isdir(folder):
        raise ConvertError(f"{out_dir}: no {FOLDER}/ node data there (convert with --explorer first)")
    try:
        from model_explorer.config import ModelExplorerConfig
    except ImportError:
        raise ConvertError(f"{NOT_INSTALLED}; the node-data files are in {folder}") from None
    cfg = ModelExplorerConfig()
    data = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    models = [m for m in ["model.rewritten.onnx", "model_float32.tflite", *sorted(target_model(f) for f in data)]
              if os.path.isfile(os.path.join(out_dir, m))]
    for m in dict.fromkeys(models):
        cfg.add_model_from_path(os.path.abspath(os.path.join(out_dir, m)))
    for f in data:
        if target_model(f) in models:
            cfg.add_node_data_from_path(os.path.abspath(os.path.join(folder, f)), model_name=target_model(f))
    return cfg


def open_in_model_explorer(out_dir: str, port: int = 8080, browser: bool = True) -> None:
    """Serve the output's models with their node data in Model Explorer (on localhost) until
    interrupted; ``browser``: also open it in the default browser."""
    cfg = explorer_config(out_dir)
    from model_explorer import server

    try:  # the ONNX adapter is a separate package (model-explorer-onnx, in the extra)
        import model_explorer_onnx  # noqa: F401
        extensions = ["model_explorer_onnx"]
    except ImportError:
        extensions = []
    server.start(host="localhost", port=port, config=cfg, no_open_in_browser=not browser, extensions=extensions)
