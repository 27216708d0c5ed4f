"""The source stage: any accepted source (an .onnx path, a ModelProto, an ``nn.Module`` or a
``file.py:factory`` / ``package.module:attr`` spec) -> an ONNX model, checked before any work."""
from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any, Sequence

import numpy as np
import onnx

from graph_convert.errors import ConvertError
from graph_convert.ir import Graph, load_model


# the exporter's folder inside the temporary output folder (removed before the output is committed)
EXPORT_DIR = ".export"


def resolve_source(source, example_inputs, input_shapes, work: str, dynamic_batch: bool = False,
                   free_built: bool = False, dim_specs: Sequence[str] = ()) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Any accepted source -> (ONNX model, provenance facts for the report). ``free_built``: a
    PyTorch model built here from a spec string has its weights freed once exported (see
    ``ConvertOptions.free_source_model``). A Dropout exported in training mode is read as in
    inference (see :func:`inference_dropout`; ``info["training_dropout"]`` names them)."""
    model, info = _resolve(source, example_inputs, input_shapes, work, dynamic_batch, free_built, dim_specs)
    model, names = inference_dropout(model, copy=info["kind"] == "onnx-model")
    if names:
        info["training_dropout"] = {"nodes": names, "converted_as": TRAINING_DROPOUT_NOTE}
    return model, info


def training_dropout_warning(info: dict[str, Any]) -> str | None:
    """The one warning line for Dropouts read in inference mode, or None."""
    td = info.get("training_dropout")
    if not td:
        return None
    n = td["nodes"]
    return (f"warning: {len(n)} Dropout node(s) exported in training mode (training_mode=True, e.g. {n[0]!r}) are "
            f"converted and checked as {TRAINING_DROPOUT_NOTE.split('; every')[0]}; export after model.eval() to avoid this")


def _resolve(source, example_inputs, input_shapes, work: str, dynamic_batch: bool, free_built: bool,
             dim_specs: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    from graph_convert.conversion import export as ex
    info: dict[str, Any] = {}
    if isinstance(source, onnx.ModelProto):
        return source, {"kind": "onnx-model"}
    if isinstance(source, (str, os.PathLike)) and not ex.is_torch_spec(os.fspath(source)):
        path = os.fspath(source)
        # a large model given as one file: its weights are written to the export folder (removed
        # with the temporary folder) and read from there as from an external data file
        spill = os.path.join(work, EXPORT_DIR)
        model = load_model(path, spill_to=spill)
        info = {"kind": "onnx-file", "path": os.path.abspath(path), **_weights_kept(model)}
        if os.path.exists(spill):
            info["weights_spilled"] = "one file: its large weights were moved to a data file in the temporary folder"
        return model, info
    import torch

    dynamic_dims = None
    if isinstance(source, str):
        module = ex.load_torch_model(source)
        info.update(kind="pytorch", spec=source)
    elif isinstance(source, torch.nn.Module):
        module = source.eval()
        info.update(kind="pytorch", spec=type(source).__name__)
    else:
        raise ConvertError(f"source: expected an .onnx path, a 'file.py:factory' spec or an nn.Module, got {type(source).__name__}")
    if example_inputs is None:
        if not input_shapes:
            raise ConvertError("a PyTorch model needs --input-shape (or example_inputs=...) to be exported")
        unnamed = [s for n, s in input_shapes if n is None]
        if len(unnamed) != len(input_shapes):
            raise ConvertError("--input-shape for a PyTorch model: give shapes in argument order without names")
        dynamic_dims, unnamed = _named_dims(unnamed, dim_specs)
        example_inputs = tuple(torch.randn(*s) for s in unnamed)
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    export_dir = os.path.join(work, EXPORT_DIR)  # the exporter may write external data next to the file
    os.makedirs(export_dir, exist_ok=True)
    path = os.path.join(export_dir, "source.onnx")
    t0 = time.perf_counter()
    keep = False
    try:
        info["exporter"] = ex.export(module, example_inputs, path, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims)
        info["export_seconds"] = round(time.perf_counter() - t0, 3)
        # a large model's weights stay in the exporter's data file (read when needed, never the
        # whole file at once); the folder then lives until the conversion ends (see EXPORT_DIR)
        model = load_model(path)
        info.update(_weights_kept(model))
        keep = bool(info.get("weights_memory_mapped"))
    finally:
        if not keep:
            shutil.rmtree(export_dir, ignore_errors=True)
        if free_built and isinstance(source, str):
            _free_weights(module)
    return model, info


TRAINING_DROPOUT_NOTE = ("inference (identity), as ONNX Runtime's default session runs them; every check "
                         "compares against the source with these Dropouts in inference mode")


def inference_dropout(model: onnx.ModelProto, copy: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """Dropouts whose ``training_mode`` is a constant True (the dynamo exporter writes them for a
    module left in training mode, e.g. a transformers model built from its config without
    ``.eval()``) lose that input, so they run in inference mode -> (model, their names).

    Such a Dropout is random in ONNX Runtime with graph optimizations off (the session every check
    uses), so no conversion could be verified against it, while ONNX Runtime's default session
    removes it and a phone model has no use for it; the report and a warning say so. ``copy``: a
    caller's ModelProto is copied before it is changed, never edited in place."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in g.node
              if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1 and n.attribute[0].name == "value"}

    def true_constant(name: str) -> bool:
        t = inits.get(name) or consts.get(name)
        if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
            return False
        v = onnx.numpy_helper.to_array(t)
        return v.size == 1 and bool(v.reshape(-1)[0])

    hits = [i for i, n in enumerate(g.node)
            if n.op_type == "Dropout" and n.domain in ("", "ai.onnx") and len(n.input) > 2 and true_constant(n.input[2])]
    if not hits:
        return model, []
    if copy:
        model, src = onnx.ModelProto(), model
        model.CopyFrom(src)  # no 2 GiB serialization limit
        g = model.graph
    names = []
    for i in hits:
        node = g.node[i]
        del node.input[2:]  # an absent training_mode is False (ONNX Dropout, opset 12+)
        names.append(node.name or node.output[0])
    return model, names


def _named_dims(shapes: list[tuple], dim_specs: Sequence[str]) -> tuple[dict | None, list[tuple[int, ...]]]:
    """``--input-shape 1,3,H,W`` for a PyTorch model: the named axes are exported as dynamic
    dims (within ``--dim H=MIN..MAX/MULTIPLE``), the model traced at the first size the
    conversion uses for them. Returns (input index -> axis -> (name, min, max), example shapes)."""
    from graph_convert.conversion import dims as DM

    ranges = {}
    for text in dim_specs:
        n, value, rng = DM.parse_dim(text)
        if value is not None:
            raise ConvertError(f"--dim {text}: for a PyTorch model, give the size in --input-shape itself")
        ranges[n] = rng
    made: dict[str, DM.Dim] = {}
    out: dict[int, dict[int, tuple]] = {}
    examples = []
    for i, shape in enumerate(shapes):
        ex_shape = []
        spatial = 0
        for a, d in enumerate(shape):
            if isinstance(d, int):
                ex_shape.append(d)
                continue
            role = "batch" if a == 0 else "spatial" if len(shape) >= 4 and a >= 2 else "sequence"
            if role == "spatial":
                role = "spatial2" if spatial % 2 else "spatial"
                spatial += 1
            dim = made.setdefault(d, DM.Dim(d, role, requested="--input-shape"))
            if d in ranges:
                dim.lo, dim.hi, dim.multiple = ranges[d]
            out.setdefault(i, {})[a] = (d, dim.lo, dim.hi)
            ex_shape.append(dim.sizes(dim.role)[0])
        examples.append(tuple(ex_shape))
    unknown = sorted(set(ranges) - set(made))
    if unknown:
        raise ConvertError(f"--dim {unknown[0]}: no --input-shape names a dim {unknown[0]!r} (named: {', '.join(made) or 'none'})")
    return (out or None), examples


def _free_weights(module) -> None:
    """Every parameter and buffer of ``module`` left empty: the exported file holds them now."""
    import torch

    with torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            t.data = torch.empty(0, dtype=t.dtype)


def _weights_kept(model: onnx.ModelProto) -> dict[str, Any]:
    """For the report: how many weights stay in their external data file (a large model's)."""
    kept = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    return {"weights_memory_mapped": len(kept)} if kept else {}


def check_weights(model: onnx.ModelProto) -> None:
    """A NaN in a weight or constant makes every check meaningless: refused up front, named.
    (+-inf stays legal: attention masks hold it.)"""
    from graph_convert.ir.tensors import tensor_array

    def tensors(graph):
        for t in graph.initializer:
            yield "initializer", t.name, t
        for n in graph.node:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and n.op_type == "Constant":
                    yield "Constant node", n.name or n.output[0], a.t
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    yield from tensors(g)

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    for node, attr in _float_attributes(model.graph):
        if any(math.isnan(v) for v in attr):
            raise ConvertError(f"node {node!r}: attribute {attr.name!r} holds NaN: nothing computed from it can be checked; "
                               f"fix the model")
    for kind, name, t in tensors(model.graph):
        if t.data_type not in floats:
            continue
        try:
            arr = np.asarray(tensor_array(t))
        except Exception:
            continue  # unreadable data is reported by the loader / ORT with its own message
        if not _has_nan(arr):
            continue
        bad = np.isnan(arr.astype(np.float64, copy=False))
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0]) if arr.ndim else ()
            raise ConvertError(f"{kind} {name!r} holds NaN ({int(bad.sum())} of {arr.size} values, first at index {at}): "
                               f"nothing computed from it can be checked; fix the weights")


def _has_nan(arr: np.ndarray, block: int = 1 << 22) -> bool:
    """Whether ``arr`` holds a NaN, read block by block (a large weight is never copied whole)."""
    flat = arr.reshape(-1)
    if flat.dtype.kind != "f":  # bfloat16 and other ml_dtypes: widened, one block at a time
        return any(np.isnan(flat[i:i + block].astype(np.float32)).any() for i in range(0, flat.size, block))
    return any(np.isnan(flat[i:i + block]).any() for i in range(0, flat.size, block))


class _Floats(list):
    name = ""


def _float_attributes(graph):
    """(node name, the float values of one FLOAT/FLOATS attribute) of every node, subgraphs too."""
    for n in graph.node:
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
                vals = _Floats([a.f] if a.type == onnx.AttributeProto.FLOAT else list(a.floats))
                vals.name = a.name
                yield n.name or n.output[0], vals
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _float_attributes(g)


def check_input_types(graph: Graph) -> None:
    """Every graph input has an element type ONNX defines (a corrupt or hand-edited file may not)."""
    from onnx import helper

    for name in graph.inputs:
        try:
            helper.tensor_dtype_to_np_dtype(graph.dtype(name))
        except Exception:
            raise ConvertError(f"model input {name!r}: element type {graph.dtype(name)!r} is not an ONNX tensor type") from None


def input_shape_overrides(graph: Graph, input_shapes: Sequence[tuple[str | None, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` for an ONNX source: only the symbolic dims of a named (or the only) input."""
    overrides = {}
    for name, dims in input_shapes:
        target = name if name is not None else (graph.inputs[0] if len(graph.inputs) == 1 else None)
        if target is None or target not in graph.inputs:
            raise ConvertError(f"--input-shape: {'name the input' if target is None else f'no model input named {target!r}'} (inputs: {graph.inputs})")
        have = graph.shape(target)
        # a name (``H``) keeps that axis free under that name, a static one too (see conversion.dims)
        if have is not None and (len(have) != len(dims) or any(isinstance(h, int) and h > 0 and isinstance(d, int) and h != d
                                                                for h, d in zip(have, dims))):
            shown = ",".join(str(h) if isinstance(h, int) and h > 0 else str(h or "?") for h in have)
            raise ConvertError(f"--input-shape {target}={','.join(map(str, dims))}: the model's input {target!r} has shape "
                               f"[{shown}]; only its symbolic dims can be set")
        overrides[target] = dims
    return overrides
