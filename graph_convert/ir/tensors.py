"""Tensors as ONNX stores them: values of initializers (a large model's weights memory-mapped
from their external file), Constant nodes, the names subgraphs read and define."""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graph_convert.errors import ConvertError

# a model whose initializers hold at least this many bytes is *large*: its weights are never all
# in one protobuf message (one is limited to 2 GiB; ``$GRAPH_CONVERT_EXTERNAL_DATA_BYTES`` lowers it to
# force a small model through the same path).
EXTERNAL_DATA_ENV = "GRAPH_CONVERT_EXTERNAL_DATA_BYTES"
EXTERNAL_DATA_BYTES = 256 << 20
# initializers at least this large become placeholders in ``to_onnx(g, weights=False)`` and stay
# in their file when a large model is loaded; smaller ones (shape constants) are always in memory
PLACEHOLDER_BYTES = 4096


def external_data_threshold() -> int:
    """Bytes of initializers from which a model is large (``$GRAPH_CONVERT_EXTERNAL_DATA_BYTES``)."""
    text = os.environ.get(EXTERNAL_DATA_ENV, "").strip()
    try:
        return int(text) if text else EXTERNAL_DATA_BYTES
    except ValueError:
        raise ConvertError(f"${EXTERNAL_DATA_ENV}={text!r}: expected a number of bytes") from None


def tensor_array(t: onnx.TensorProto) -> np.ndarray:
    """The value of a tensor; one whose data stays in its external file (a large model's weight,
    its location made absolute by :func:`load_model`) is memory-mapped read-only, not copied."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if not uses_external_data(t):
        return numpy_helper.to_array(t)
    info = ExternalDataInfo(t)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    shape = tuple(int(d) for d in t.dims)
    if dtype.kind in "biuf" and t.data_type not in _PACKED_TYPES and int(np.prod(shape, dtype=np.int64)) > 0:
        return np.memmap(info.location, dtype=dtype.newbyteorder("<"), mode="r", offset=info.offset or 0, shape=shape)
    return numpy_helper.to_array(t, os.path.dirname(info.location))


# element types numpy_helper decodes from a storage type (not a plain little-endian array)
_PACKED_TYPES = {getattr(onnx.TensorProto, n) for n in ("BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
                                                          "UINT4", "INT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def file_location(t: onnx.TensorProto) -> str | None:
    """The absolute path of the file holding a weight left in its external data file by
    :func:`load_model` (a large model's), else None."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    loc = next((e.value for e in t.external_data if e.key == "location"), "")
    return loc if os.path.isabs(loc) else None


def constant_node_value(node: Any) -> np.ndarray | None:
    """Value of a ``Constant`` node from whichever attribute holds it."""
    if "value" in node.attrs:
        return numpy_helper.to_array(node.attrs["value"].t)
    if "sparse_value" in node.attrs:
        sp = node.attrs["sparse_value"].sparse_tensor
        dense = np.zeros(tuple(sp.dims), dtype=helper.tensor_dtype_to_np_dtype(sp.values.data_type))
        vals = numpy_helper.to_array(sp.values)
        idx = numpy_helper.to_array(sp.indices)
        if idx.ndim == 1:
            dense.reshape(-1)[idx] = vals
        else:
            dense[tuple(idx.T)] = vals
        return dense
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
        if key in node.attrs:
            return np.array(node.attr(key), dtype=dtype)
    for key in ("value_string", "value_strings"):
        if key in node.attrs:
            return np.array(node.attr(key), dtype=object)
    return None


def subgraphs(attrs: Iterable[onnx.AttributeProto]) -> list[onnx.GraphProto]:
    out = []
    for a in attrs:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def outer_references(g: onnx.GraphProto, defined: set[str]) -> list[str]:
    """Names a subgraph reads from enclosing scopes."""
    local = set(defined) | {i.name for i in g.input} | {i.name for i in g.initializer}
    refs: list[str] = []
    for n in g.node:
        for t in n.input:
            if t and t not in local and t not in refs:
                refs.append(t)
        for sg in subgraphs(n.attribute):
            for t in outer_references(sg, local):
                if t not in refs:
                    refs.append(t)
        local.update(n.output)
    for o in g.output:
        if o.name not in local and o.name not in refs:
            refs.append(o.name)
    return refs


def names_defined(g: onnx.GraphProto) -> set[str]:
    """Every tensor name a subgraph (recursively) defines."""
    names = {i.name for i in g.input} | {i.name for i in g.initializer}
    for n in g.node:
        names.update(t for t in n.output if t)
        for sg in subgraphs(n.attribute):
            names |= names_defined(sg)
    return names


def rename_in_subgraphs(node: Any, old: str, new: str) -> None:
    def fix(g: onnx.GraphProto) -> None:
        if old in {i.name for i in g.input} | {i.name for i in g.initializer}:
            return  # shadowed
        for n in g.node:
            for j, t in enumerate(n.input):
                if t == old:
                    n.input[j] = new
            for sg in subgraphs(n.attribute):
                fix(sg)
            if old in n.output:
                return
        for o in g.output:
            if o.name == old:
                o.name = new

    for key, a in list(node.attrs.items()):
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            copy = onnx.AttributeProto()
            copy.CopyFrom(a)  # copy on write: never edit the source model's protos
            node.attrs[key] = copy
            for sg in subgraphs([copy]):
                fix(sg)
