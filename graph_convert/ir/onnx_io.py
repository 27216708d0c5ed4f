"""ONNX <-> IR: lossless loading, and lowering of the (possibly layout-marked) IR to standard ONNX."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graph_convert.ir import perm as P
from graph_convert.errors import ConvertError
from graph_convert.ir.graph import Graph, Node, TensorInfo
from graph_convert.ir.tensors import (
    PLACEHOLDER_BYTES,
    external_data_threshold,
    file_location,
    names_defined,
    outer_references,
    subgraphs,
    tensor_array,
)

LOWERED_SUFFIX = "__onnx_layout"


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
# From this many bytes of initializers a model is "large": its weights stay in their external
# data file (memory-mapped when read), ONNX Runtime gets them as OrtValues rather than inside a
# serialized proto (protobuf stops at 2 GB, and serializing copies every weight), and the
# rewritten ONNX is written with external data. The environment variable lowers it (the tests
# force a small model through the same path).
def _keep_external(model: onnx.ModelProto, base: str) -> None:
    """A large model: its top-level initializers of PLACEHOLDER_BYTES and more stay in their
    file (location made absolute, read by :func:`tensor_array`); everything else is read in."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, load_external_data_for_tensor, uses_external_data

    def read_in(t: onnx.TensorProto) -> None:
        load_external_data_for_tensor(t, base)
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]

    for t in model.graph.initializer:
        if uses_external_data(t) and _proto_nbytes(t) >= PLACEHOLDER_BYTES:
            for e in t.external_data:
                if e.key == "location":
                    e.value = os.path.normpath(os.path.join(base, e.value))
    for t in _get_all_tensors(model):  # the small ones, subgraphs' and Constant nodes' tensors: read in
        if uses_external_data(t) and not os.path.isabs(ExternalDataInfo(t).location):
            read_in(t)


def _parse(path: str) -> onnx.ModelProto:
    """The model in ``path`` (its external data not read), parsed from a read-only mapping of the
    file rather than from a copy of it in memory."""
    import mmap

    model = onnx.ModelProto()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            model.ParseFromString(view)
        finally:
            view.release()
    return model


def _spill(path: str, folder: str) -> onnx.ModelProto | None:
    """A large model given as one file: its top-level initializers' raw_data of PLACEHOLDER_BYTES
    and more are streamed to ``folder``/weights.data while the file is read (its wire format walked
    with buffered reads, see :mod:`graph_convert.ir.onnx_stream`: neither the file nor a weight is
    held in memory), and the small model returned refers to them there (as a model with external
    data saved in ``folder``: each weight memory-mapped when read). None, and nothing left in
    ``folder``, when the model is not one to spill (it has external data of its own, or its
    initializers are below the threshold): it is then read as it always was."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from graph_convert.ir.onnx_stream import spill_one_file

    made = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    location = os.path.join(folder, "weights.data")

    def undo() -> None:
        if os.path.exists(location):
            os.remove(location)
        if made:
            os.rmdir(folder)

    try:
        data, spilled, external = spill_one_file(path, location, PLACEHOLDER_BYTES)
        shell = onnx.ModelProto()
        shell.ParseFromString(data)
    except BaseException:
        undo()
        raise
    del data
    if (external or not spilled or sum(uses_external_data(t) for t in _get_all_tensors(shell)) != spilled
            or sum(_proto_nbytes(t) for t in shell.graph.initializer) < external_data_threshold()):
        undo()
        return None
    return shell


def load_model(path: str | os.PathLike, spill_to: str | None = None) -> onnx.ModelProto:
    """Read an .onnx file with a clear error for a missing, empty, truncated or corrupt file. A
    large model's weights (``external_data_threshold()``) stay in its external data file; a large
    model given as one file has them written to ``spill_to`` (a folder of the caller's) when given,
    and read from there the same way."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConvertError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ConvertError(f"{path}: is a directory, expected an .onnx file")
    if os.path.getsize(path) == 0:
        raise ConvertError(f"{path}: file is empty, not an ONNX model")
    from google.protobuf.message import DecodeError

    from graph_convert.ir.onnx_stream import WireError

    model, checked = None, path
    # a file of the threshold's size may be a large model in one file: its weights are moved out
    # while it is read, never parsed whole (deciding needs no parse); an OSError (a full disk) is
    # said as such by the caller
    if spill_to is not None and os.path.getsize(path) >= external_data_threshold():
        try:
            model = _spill(path, spill_to)
        except WireError as e:
            raise ConvertError(f"{path}: not a valid ONNX model (truncated or corrupt: {e})") from None
        except DecodeError as e:  # well-formed fields, but a message inside one is not
            raise ConvertError(f"{path}: not a valid ONNX model (truncated or corrupt: {type(e).__name__}: {e})") from None
    if model is not None:
        checked = os.path.join(spill_to, "model.onnx")  # the checker reads it (and not its weights) from there
        onnx.save(model, checked)
    else:
        try:
            model = _parse(path)
        except Exception as e:  # protobuf's DecodeError and friends
            raise ConvertError(f"{path}: not a valid ONNX model (truncated or corrupt: {type(e).__name__}: {e})") from None
    external = _check_external_data(model, checked)
    try:
        from onnx.external_data_helper import load_external_data_for_model

        base = os.path.dirname(os.path.abspath(checked))
        if external and sum(_proto_nbytes(t) for t in model.graph.initializer) >= external_data_threshold():
            _keep_external(model, base)
        else:
            load_external_data_for_model(model, base)
    except ConvertError:
        raise
    except Exception as e:
        raise ConvertError(f"{path}: cannot read its external data ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not model.graph.node and not model.graph.output:
        raise ConvertError(f"{path}: not a valid ONNX model (no graph found)")
    try:
        # the checker serializes a model given in memory: one with external data is checked from
        # its file (the proto without the weights), never copied whole nor past protobuf's 2 GB
        onnx.checker.check_model(checked if external else model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise ConvertError(f"{path}: ONNX checker rejected the model: {first}") from None
    except Exception as e:  # e.g. a string field that is not UTF-8: the file is corrupt
        raise ConvertError(f"{path}: not a valid ONNX model (corrupt: {type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return model


def _check_external_data(model: onnx.ModelProto, path: str) -> bool:
    """Every external-data file the model names must be there: named as missing, not as corrupt.
    Returns whether the model has external data."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = os.path.dirname(os.path.abspath(path))
    external = False
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        external = True
        info = ExternalDataInfo(t)
        where = os.path.normpath(os.path.join(base, info.location))
        if not os.path.isfile(where):
            raise ConvertError(f"{path}: the external data file {info.location!r} of tensor {t.name!r} is missing "
                               f"(looked for {where})")
        need = (info.offset or 0) + (info.length or 0)
        if info.length and os.path.getsize(where) < need:
            raise ConvertError(f"{path}: the external data file {info.location!r} is shorter than tensor {t.name!r} needs "
                               f"({os.path.getsize(where)} bytes, needs {need}): truncated")
    return external


def info_from_value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    t = vi.type
    if not t.HasField("tensor_type"):
        return TensorInfo()
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return TensorInfo(tt.elem_type, None)
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(tt.elem_type, tuple(dims))


def from_onnx(model: onnx.ModelProto, *, infer_shapes: bool = True) -> Graph:
    """Build the IR from a ModelProto. Everything not represented in the IR is kept verbatim."""
    g = Graph()
    gp = model.graph
    meta = g.model_meta
    meta["ir_version"] = model.ir_version
    meta["opset_import"] = [(o.domain, o.version) for o in model.opset_import]
    for key in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        meta[key] = getattr(model, key)
    meta["metadata_props"] = [(p.key, p.value) for p in model.metadata_props]
    meta["functions"] = [f for f in model.functions]
    meta["training_info"] = [t for t in model.training_info]
    meta["graph_name"] = gp.name
    meta["graph_doc_string"] = gp.doc_string
    meta["graph_metadata_props"] = list(gp.metadata_props)
    meta["sparse_initializer"] = list(gp.sparse_initializer)
    meta["input_protos"] = {vi.name: vi for vi in gp.input}
    meta["input_order"] = [vi.name for vi in gp.input]
    meta["output_protos"] = {vi.name: vi for vi in gp.output}
    meta["value_info_protos"] = {vi.name: vi for vi in gp.value_info}
    meta["original_infos"] = {}

    for init in gp.initializer:
        g._init_proto[init.name] = init
        g.info[init.name] = TensorInfo(init.data_type, tuple(init.dims))
    init_names = set(g._init_proto)
    g.inputs = [vi.name for vi in gp.input if vi.name not in init_names]
    g.outputs = [vi.name for vi in gp.output]
    for vi in [*gp.input, *gp.output, *gp.value_info]:
        ti = info_from_value_info(vi)
        meta["original_infos"][vi.name] = ti
        if vi.name not in init_names:
            g.info[vi.name] = TensorInfo(ti.dtype, ti.shape)

    if infer_shapes:
        _add_inferred_info(g, shape_model(model))  # no weight is copied into the C++ shape inference

    defined = set(init_names) | {vi.name for vi in gp.input}
    for i, n in enumerate(gp.node):
        name = n.name or f"{n.op_type}_{i}"
        if g.has_node(name):
            name = g.fresh_name(name)
        node = Node(name, n.op_type, list(n.input), list(n.output), domain=n.domain, doc_string=n.doc_string)
        node.attrs = {a.name: a for a in n.attribute}
        node.onnx_name = n.name  # type: ignore[attr-defined]  # "" stays "" on the way out
        # proto2 field presence (an explicit domain "" differs byte-wise from an absent one)
        node.onnx_present = {f for f in ("name", "domain", "doc_string", "overload") if n.HasField(f)}  # type: ignore[attr-defined]
        node.onnx_extra = [(f, getattr(n, f)) for f in ("overload",) if n.HasField(f)]  # type: ignore[attr-defined]
        node.onnx_metadata = list(n.metadata_props)  # type: ignore[attr-defined]
        subs = subgraphs(n.attribute)
        for sg in subs:
            g.reserve_names(names_defined(sg))
        if subs:
            refs: list[str] = []
            for sg in subs:
                for t in outer_references(sg, set()):
                    if t not in refs:
                        refs.append(t)
            node.implicit_inputs = [t for t in refs if t in defined or any(t in m.output for m in gp.node)]
        g._insert(node)
        defined.update(n.output)
    return g


def refresh_shapes(g: Graph) -> None:
    """Fill in shapes that became inferable (e.g. after constant folding) with ONNX shape
    inference on the lowered graph; known facts are kept, only unknown dims get filled."""
    _add_inferred_info(g, to_onnx(g, with_value_info=False, weights=False))


def _add_inferred_info(g: Graph, model: onnx.ModelProto) -> None:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return  # shapes are a help, not a requirement
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        ti = info_from_value_info(vi)
        cur = g.info.get(vi.name)
        if cur is None or cur.shape is None or (ti.shape is not None and _more_known(ti.shape, cur.shape)):
            g.info[vi.name] = ti


def _more_known(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and sum(isinstance(d, int) for d in a) > sum(isinstance(d, int) for d in b)


def load_graph(path: str | os.PathLike) -> tuple[onnx.ModelProto, Graph]:
    model = load_model(path)
    return model, from_onnx(model)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _value_info(name: str, ti: TensorInfo | None) -> onnx.ValueInfoProto:
    if ti is None or not ti.dtype:
        return helper.make_empty_tensor_value_info(name) if ti is None else helper.make_tensor_value_info(name, 0, None)
    return helper.make_tensor_value_info(name, ti.dtype, None if ti.shape is None else list(ti.shape))


def _io_proto(g: Graph, name: str, protos: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    orig = protos.get(name)
    ti = g.info.get(name)
    if orig is not None:
        o = g.model_meta["original_infos"].get(name)
        if ti is None or o is None or (o.dtype == ti.dtype and o.shape == ti.shape) or not orig.type.HasField("tensor_type"):
            return orig
        if o.dtype == ti.dtype and o.shape is not None and ti.shape is not None and len(o.shape) == len(ti.shape):
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(orig)
            vi.type.tensor_type.shape.Clear()
            for d in ti.shape:
                dim = vi.type.tensor_type.shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
            return vi
    return _value_info(name, ti)


def _node_proto(node: Node, inputs=None, outputs=None) -> onnx.NodeProto:
    n = onnx.NodeProto()
    n.op_type = node.op_type
    name = getattr(node, "onnx_name", node.name) if node.created_by is None else node.name
    present = getattr(node, "onnx_present", set())
    if name or "name" in present:  # proto2: keep an explicit "" only where the source had one
        n.name = name
    n.input.extend(node.inputs if inputs is None else inputs)
    n.output.extend(node.outputs if outputs is None else outputs)
    if node.domain or "domain" in present:
        n.domain = node.domain
    if node.doc_string or "doc_string" in present:
        n.doc_string = node.doc_string
    for f, v in getattr(node, "onnx_extra", []):
        setattr(n, f, v)
    n.metadata_props.extend(getattr(node, "onnx_metadata", []))
    n.attribute.extend(node.attrs.values())
    return n


def lower_node(node: Node) -> list[onnx.NodeProto]:
    """Standard-ONNX nodes computing exactly what ``node`` computes in its recorded layout:
    Transposes back to the ONNX layout around the original op (identity for unmarked nodes)."""
    if not node.is_layout_marked:
        return [_node_proto(node)]
    out: list[onnx.NodeProto] = []
    ins = list(node.inputs)
    for j, t in enumerate(node.inputs):
        p = node.in_perm(j)
        if t and p is not None and not P.is_identity(p):
            ins[j] = f"{node.name}__in{j}{LOWERED_SUFFIX}"
            out.append(helper.make_node("Transpose", [t], [ins[j]], name=f"{node.name}__in{j}_to_onnx", perm=list(P.invert(p))))
    outs = list(node.outputs)
    post = []
    for k, t in enumerate(node.outputs):
        p = node.out_perm(k)
        if t and p is not None and not P.is_identity(p):
            outs[k] = f"{t}{LOWERED_SUFFIX}"
            post.append(helper.make_node("Transpose", [outs[k]], [t], name=f"{node.name}__out{k}_from_onnx", perm=list(p)))
    out.append(_node_proto(node, ins, outs))
    return out + post


def placeholder_tensor(name: str, data_type: int, dims, nbytes: int, location: str = "graph-convert-ortvalue") -> onnx.TensorProto:
    """An initializer with type and dims but no data: marked external, to be supplied by the reader
    (an OrtValue for ONNX Runtime, or the bytes at ``location`` when written beside a file)."""
    t = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims))
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def _initializer_out(g: Graph, name: str, weights: bool) -> onnx.TensorProto:
    nbytes = g.initializer_nbytes(name)
    if weights or nbytes < PLACEHOLDER_BYTES:
        t = g.initializer_proto(name)
        # a weight left in its file is written with its data (the file is the source's, not this model's)
        return numpy_helper.from_array(tensor_array(t), name) if t.data_location == onnx.TensorProto.EXTERNAL else t
    t = g._init_proto.get(name)
    if t is not None and file_location(t) is not None:
        return t  # still in the source's file: a reader maps it from there
    if name in g._init_array:
        a = g._init_array[name]
        return placeholder_tensor(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape, nbytes)
    return placeholder_tensor(name, t.data_type, t.dims, nbytes)


def model_shell(model: onnx.ModelProto, keep_data: Callable[[onnx.TensorProto], bool]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers are placeholders unless ``keep_data(t)``; no weight
    is copied (the fields are copied one by one, the initializers' data left out)."""
    shell = onnx.ModelProto()
    for fd, value in model.ListFields():
        if fd.name != "graph":
            _copy_field(shell, fd, value)
    for fd, value in model.graph.ListFields():
        if fd.name != "initializer":
            _copy_field(shell.graph, fd, value)
    for t in model.graph.initializer:  # a weight left in its file has no data here: kept as it is
        keep = keep_data(t) or file_location(t) is not None
        shell.graph.initializer.append(t if keep else placeholder_tensor(t.name, t.data_type, t.dims, _proto_nbytes(t)))
    return shell


def _copy_field(dst, fd, value) -> None:
    repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
    if repeated:
        getattr(dst, fd.name).extend(value)
    elif fd.type == fd.TYPE_MESSAGE:
        getattr(dst, fd.name).CopyFrom(value)
    else:
        setattr(dst, fd.name, value)


def _proto_nbytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    try:
        return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        return 0


def shape_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the data of its larger initializers (what shape inference needs: the
    types and dims, and the values of the small constants that shapes are computed from)."""
    return model_shell(model, lambda t: _proto_nbytes(t) < PLACEHOLDER_BYTES)


def save_with_external_data(g: Graph, path: str, location: str | None = None) -> str:
    """Write the lowered graph to ``path`` with every initializer of PLACEHOLDER_BYTES or more in
    one external data file beside it (``location``, default ``<file name>.data``), one weight at a
    time: no serialized copy of the weights, no protobuf 2 GB limit. Returns the data file's name."""
    location = location or os.path.basename(path) + ".data"
    model = to_onnx(g, weights=False)
    offset = 0
    with open(os.path.join(os.path.dirname(path), location), "wb") as f:
        for t in model.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            arr = np.ascontiguousarray(g.initializer_uncached(t.name))
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            pad = -offset % 64  # aligned, so a reader may map each weight in place
            f.write(b"\0" * pad)
            offset += pad
            f.write(memoryview(arr).cast("B"))
            del t.external_data[:]
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += arr.nbytes
            del arr
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return location


def to_onnx(g: Graph, *, with_value_info: bool = True, weights: bool = True) -> onnx.ModelProto:
    """Lower the IR to a standard ONNX ModelProto (lossless for an untouched graph).
    ``weights=False``: initializers of PLACEHOLDER_BYTES and more are left as data-less
    placeholders (:func:`placeholder_tensor`), or as references to the source's external data file
    when they are still there (:func:`file_location`), so a big model lowers without copying a weight."""
    meta = g.model_meta
    nodes: list[onnx.NodeProto] = []
    for node in g.nodes:
        nodes.extend(lower_node(node))
    inits = [_initializer_out(g, n, weights) for n in g.initializer_names]
    init_names = set(g.initializer_names)
    input_order = list(meta.get("input_order", []))
    inputs = []
    for name in input_order:
        if name in g.inputs:
            inputs.append(_io_proto(g, name, meta.get("input_protos", {})))
        elif name in init_names and name in meta.get("input_protos", {}) and g._init_proto.get(name) is not None:
            inputs.append(meta["input_protos"][name])
    for name in g.inputs:
        if name not in input_order:
            inputs.append(_io_proto(g, name, meta.get("input_protos", {})))
    outputs = [_io_proto(g, name, meta.get("output_protos", {})) for name in g.outputs]
    value_info = []
    if with_value_info:
        produced = {t for n in g.nodes for t in n.outputs}
        io = set(g.inputs) | set(g.outputs) | init_names
        orig_vi = meta.get("value_info_protos", {})
        untouched_inits = {n for n in init_names if n in g._init_proto}
        for name, vi in orig_vi.items():
            if name in untouched_inits:
                value_info.append(vi)  # verbatim, as the source had it
            elif name in produced and name not in set(g.inputs) | set(g.outputs):
                value_info.append(_io_proto(g, name, orig_vi))
        original_names = set(meta.get("original_infos", {}))
        created = {t for n in g.nodes if n.created_by for t in n.outputs}
        for name in sorted(created - original_names - io):
            ti = g.info.get(name)
            if ti is not None and ti.dtype and ti.shape is not None:
                value_info.append(_value_info(name, ti))
    graph = helper.make_graph(nodes, meta.get("graph_name", "graph"), inputs, outputs, inits, doc_string=meta.get("graph_doc_string") or None, value_info=value_info)
    graph.sparse_initializer.extend(meta.get("sparse_initializer", []))
    graph.metadata_props.extend(meta.get("graph_metadata_props", []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in meta.get("opset_import", [("", 17)])])
    model.ir_version = meta.get("ir_version", model.ir_version)
    for key in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if meta.get(key):
            setattr(model, key, meta[key])
    for k, v in meta.get("metadata_props", []):
        model.metadata_props.add(key=k, value=v)
    model.functions.extend(meta.get("functions", []))
    model.training_info.extend(meta.get("training_info", []))
    return model


Graph.infer_shapes = staticmethod(refresh_shapes)
