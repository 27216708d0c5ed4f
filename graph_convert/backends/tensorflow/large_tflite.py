"""A large model's .tflite without TensorFlow's converter ever holding its weights.

TensorFlow's converter holds several copies of every weight at its peak (the SavedModel's
variables, the frozen constants, the flatbuffer's buffers, the bytes handed back to Python): 5.5x
the weights for a whole run. So a large model is traced again with every large float32 weight
replaced by a *splat* stand-in of the same shape (one value, distinct per weight, which
TensorFlow's GraphDef and MLIR keep as that one value; vectors, such as biases and norms' scales,
stay as they are: see ``_vector``), and converted with the buffers placed after the flatbuffer
(buffer offsets) and every splat constant of 125 KB and more written as a FILL op of its shape
and value (``_experimental_unfold_large_splat_constant``, the converter's last pass): what comes
back is a few megabytes, not the weights' size. The file is then written with the flatbuffer
rebuilt (:func:`write`): every FILL that holds a stand-in becomes a constant again, whose buffer
is the real weight read from the SavedModel's variables one at a time; a smaller stand-in, which
the converter writes out in full, has its buffer filled the same way.

Two things a splat cannot show are settled before the file is kept:
- the layout: the converter may store a weight permuted (a MatMul's ``[in, out]`` becomes
  FULLY_CONNECTED's ``[out, in]``, a Conv2D's HWIO becomes CONV_2D's OHWI); each buffer's
  permutation follows from the TensorFlow op that read the weight and the TFLite op that reads
  the buffer (``_layout``), and any other pair is refused;
- folding: the converter computes some constants from others (a scale before a MatMul goes into
  the FULLY_CONNECTED weights, a 1-D constant added before it into the bias). The first is turned
  off for the stand-in conversion (the scale stays a MUL), and a LayerNorm's shift is added at full
  rank in the stand-in trace (tf/ops/norm.py), which the second does not fold: ViT's LayerNorm ->
  Q/K/V and MLP projections. For the rest the conversion is done twice, with two sets of stand-in
  values: a buffer that is not a stand-in must come out byte for byte the same both times (it
  does not depend on any weight's value), and a stand-in's buffers must be the same buffers both
  times. A FILL whose value is no stand-in's (a large one-valued constant of the model's own,
  the same in both conversions) is written as a constant too: the file has the ops the converter
  writes without the FILL option.
A refusal raises :class:`NotPlaceable` and the caller converts the real weights instead. The file
written is then verified in LiteRT against ONNX Runtime like any other.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graph_convert.ir.tensors import PLACEHOLDER_BYTES

# stand-in i holds float32(base + (i + 1) * step), (base, step) one of _BASES: the first set in
# [1.5, 2), the second in [1.25, 1.5), so that neither holds 0 or 1 (which the converter may treat
# as identities) nor the product or sum of two of its own values
_BASES, _MAX_WEIGHTS = ((1.5, 2.0 ** -20), (1.25, 2.0 ** -21)), (1 << 19) - 1


class NotPlaceable(Exception):
    """The stand-ins cannot be matched to the converter's buffers with certainty (the message says
    why). ``lost``: {weight index: bytes} of the stand-ins that have no buffer of their own (the
    converter folded them into something else)."""

    def __init__(self, message: str, lost: dict[int, int] | None = None):
        super().__init__(message)
        self.lost = lost or {}


@dataclass
class _Weight:
    index: int  # the variable's index (module.weights[index], the SavedModel's weights/<index>)
    value: float
    shape: tuple[int, ...]
    tensor: Any  # the splat constant in the traced graph


def _vector(shape: tuple[int, ...]) -> bool:
    """At most one dimension past 1: a per-channel vector (a bias, a LayerNorm's scale or shift).
    Such a weight is converted as it is: a splat in its place is a scalar to TensorFlow's
    converter, which then folds it where it folds no vector (a LayerNorm's splat scale and shift go
    into the projections after it, ViT's Q/K/V and MLP weights, whose stand-ins are then lost), and
    vectors are a small part of any model's weights."""
    return sum(d > 1 for d in shape) < 2


@dataclass
class Placeholders:
    """The stand-ins made while tracing (``EmitContext.weight`` calls :meth:`make`)."""

    base: tuple[float, float] = _BASES[0]
    min_bytes: int = PLACEHOLDER_BYTES  # smaller weights are converted as they are
    keep: frozenset[int] = frozenset()  # the weights (by index) converted as they are
    weights: dict[float, _Weight] = field(default_factory=dict)  # the stand-in's value -> weight

    def make(self, index: int, arr: np.ndarray):
        import tensorflow as tf

        if (arr.dtype != np.float32 or arr.nbytes < self.min_bytes or index >= _MAX_WEIGHTS or _vector(arr.shape)
                or index in self.keep):
            return tf.constant(arr)
        value = float(np.float32(self.base[0] + (index + 1) * self.base[1]))
        t = tf.constant(value, shape=arr.shape, dtype=tf.float32)  # one float in the GraphDef
        self.weights[value] = _Weight(index, value, tuple(arr.shape), t)
        return t


# TensorFlow op reading the weight (and which input) -> the TFLite ops that keep its data order
_SAME_ORDER_TF = {"AddV2", "Add", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "SquaredDifference", "Pow",
                  "SelectV2", "Select", "GatherV2", "MatMul", "BatchMatMulV2", "BatchMatMulV3",
                  "DepthwiseConv2dNative", "ConcatV2", "BiasAdd"}


def _tf_readers(w: _Weight) -> list[tuple[str, int, bool]]:
    """(op type, input index, transposed: ``transpose_b``/``adj_y``) of every TensorFlow op
    reading the stand-in."""
    out = []
    for op in w.tensor.consumers():
        flag = any(op.get_attr(k) for k in ("transpose_b", "adj_y") if k in op.node_def.attr)
        out += [(op.type, i, flag) for i, x in enumerate(op.inputs) if x is w.tensor]
    return out


_MATMUL = ("MatMul", "BatchMatMulV2", "BatchMatMulV3")


def _layout(tf_readers: list[tuple[str, int, bool]], tfl_readers: set[tuple[str, int]], rank: int) -> tuple[int, ...]:
    """The permutation from the TensorFlow weight to one buffer of the converter's (then reshaped)."""
    same = tuple(range(rank))
    perms: set[tuple[int, ...]] = set()
    if tfl_readers == {("FULLY_CONNECTED", 1)} and rank == 2:
        perms = {same if flag else (1, 0) for op, i, flag in tf_readers if op in _MATMUL and i == 1}
    elif tfl_readers == {("CONV_2D", 1)}:
        perms = {(3, 0, 1, 2) for op, i, _ in tf_readers if op == "Conv2D" and i == 1}  # HWIO -> OHWI
    elif tfl_readers == {("CONV_3D", 1)}:  # TensorFlow's DHWIO is TFLite's
        perms = {same for op, i, _ in tf_readers if op == "Conv3D" and i == 1}
    elif tfl_readers == {("CONV_3D_TRANSPOSE", 1)}:  # [d, h, w, out, in] in both
        perms = {same for op, i, _ in tf_readers if op == "Conv3DBackpropInputV2" and i == 1}
    elif tfl_readers == {("TRANSPOSE_CONV", 1)}:
        perms = {(2, 0, 1, 3) for op, i, _ in tf_readers if op == "Conv2DBackpropInput" and i == 1}  # [h, w, out, in] -> OHWI
    elif tf_readers and all(op in _SAME_ORDER_TF for op, _, _ in tf_readers) and not any(
            name in ("FULLY_CONNECTED", "CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "CONV_3D_TRANSPOSE") and j == 1 for name, j in tfl_readers):
        perms = {same}
    if len(perms) != 1:
        raise NotPlaceable(f"no known layout for a weight read by TensorFlow's {sorted(set(tf_readers))} and TFLite's "
                           f"{sorted(tfl_readers)}")
    return perms.pop()


def _op_names(model) -> list[str]:
    """The builtin op name of every operator code."""
    from tensorflow.lite.python import schema_py_generated as fb

    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for k in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(k)
        out.append(names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM"))
    return out


def _readers(model) -> tuple[dict[int, set[tuple[str, int]]], dict[tuple[int, int], set[tuple[str, int]]]]:
    """{(builtin op name, input index)} reading each buffer, and reading each (subgraph, tensor)."""
    codes = _op_names(model)
    by_buffer: dict[int, set[tuple[str, int]]] = {}
    by_tensor: dict[tuple[int, int], set[tuple[str, int]]] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            for j, t in enumerate(op.InputsAsNumpy() if op.InputsLength() else []):
                if t >= 0:
                    use = (codes[op.OpcodeIndex()], j)
                    by_buffer.setdefault(sg.Tensors(int(t)).Buffer(), set()).add(use)
                    by_tensor.setdefault((s, int(t)), set()).add(use)
    return by_buffer, by_tensor


def _buffer_shapes(model) -> dict[int, list[tuple[tuple[int, ...], int]]]:
    """buffer index -> [(shape, TFLite type)] of the tensors using it."""
    out: dict[int, list] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for k in range(sg.TensorsLength()):
            t = sg.Tensors(k)
            out.setdefault(t.Buffer(), []).append((_shape(t), t.Type()))
    return out


def _shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()


def _all(view: np.ndarray, test, block: int = 1 << 22) -> bool:
    """``test(chunk).all()`` over ``view`` block by block (no temporary the size of a weight)."""
    return all(bool(test(view[i:i + block]).all()) for i in range(0, view.size, block))


_FLOAT32, _INT32, _INT64 = 0, 2, 4  # TFLite tensor types
_FLOATS = {0: np.float32, 1: np.float16}


@dataclass(frozen=True)
class Fill:
    """A FILL of constant shape and value that the converter wrote for a large splat constant
    (``_experimental_unfold_large_splat_constant``): its output tensor becomes a constant."""

    subgraph: int
    op: int
    tensor: int  # the FILL's output
    shape: tuple[int, ...]
    value: float
    value_buffer: int  # the buffer holding ``value``
    weight: _Weight | None  # the weight whose stand-in it is; None: a constant of the model's own
    perm: tuple[int, ...] = ()


@dataclass
class Plan:
    """Where the stand-ins went in one conversion."""

    buffers: dict[int, tuple[_Weight, tuple[int, ...]]]  # stand-ins written out in full: buffer -> (weight, permutation)
    fills: list[Fill]  # stand-ins (and the model's own large splats) the converter wrote as FILL ops
    where: dict[tuple, tuple[int, tuple[int, ...]]]  # buffer or FILL output -> (weight index, permutation)
    others: dict[int, bytes]  # buffer index -> digest of every other buffer

    @property
    def filled(self) -> int:
        return len(self.buffers) + sum(f.weight is not None for f in self.fills)

    def same_as(self, other: "Plan") -> None:
        """The two conversions (two sets of stand-in values) agree: else NotPlaceable."""
        if self.where != other.where:
            raise NotPlaceable("the stand-ins went to other buffers with other values")
        moved = [b for b in self.others if self.others[b] != other.others.get(b)]
        if moved:
            raise NotPlaceable(f"{len(moved)} constant(s) of the converted model depend on a weight's value (the converter "
                               f"folded a weight into them), the first is buffer {moved[0]}")


def _constant(data: bytes, model, tensor, dtype) -> np.ndarray | None:
    """The data of a constant tensor placed after the flatbuffer, or None."""
    buf = model.Buffers(tensor.Buffer())
    if buf.Offset() <= 1 or buf.Size() % np.dtype(dtype).itemsize:
        return None
    return np.frombuffer(data, dtype, count=buf.Size() // np.dtype(dtype).itemsize, offset=buf.Offset())


def _fills(data: bytes, model, ph: Placeholders, by_tensor) -> list[Fill]:
    """Every FILL of a constant float32 value and a constant shape, with the stand-in it holds."""
    codes = _op_names(model)
    out = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            if codes[op.OpcodeIndex()] != "FILL" or op.InputsLength() != 2 or op.OutputsLength() != 1:
                continue
            dims_t, value_t = (sg.Tensors(int(i)) for i in op.InputsAsNumpy())
            out_t = int(op.OutputsAsNumpy()[0])
            dims = _constant(data, model, dims_t, {_INT32: np.int32, _INT64: np.int64}.get(dims_t.Type(), np.uint8))
            value = _constant(data, model, value_t, np.float32) if value_t.Type() == _FLOAT32 else None
            if dims is None or value is None or value.size != 1 or dims_t.Type() not in (_INT32, _INT64):
                continue  # a FILL of the model's own, computed at run time
            shape = tuple(int(d) for d in dims)
            if shape != _shape(sg.Tensors(out_t)) or sg.Tensors(out_t).Type() != _FLOAT32:
                raise NotPlaceable(f"a FILL of shape {shape} writes a tensor of shape {_shape(sg.Tensors(out_t))}")
            if out_t in set(sg.OutputsAsNumpy().tolist() if sg.OutputsLength() else []):
                raise NotPlaceable("a large constant is an output of the model")
            w = ph.weights.get(float(value[0]))
            perm = ()
            if w is not None:
                perm = _layout(_tf_readers(w), by_tensor.get((s, out_t), set()), len(w.shape))
                if [d for d in shape if d != 1] != [w.shape[p] for p in perm if w.shape[p] != 1]:
                    raise NotPlaceable(f"weight {w.index} {w.shape} became a FILL of shape {shape}")
            out.append(Fill(s, o, out_t, shape, float(value[0]), value_t.Buffer(), w, perm))
    return out


def plan(data: bytes, ph: Placeholders) -> Plan:
    """Where every stand-in of ``ph`` is in the converted ``data``; raises NotPlaceable."""
    from tensorflow.lite.python import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    (readers, by_tensor), shapes = _readers(model), _buffer_shapes(model)
    out = Plan({}, _fills(data, model, ph, by_tensor), {}, {})
    # a stand-in FILL's value differs between the two conversions by design; any other constant
    # (a FILL of the model's own included) must not
    out.where.update({("fill", f.subgraph, f.tensor): (f.weight.index, f.perm) for f in out.fills if f.weight is not None})
    values = {f.value_buffer for f in out.fills if f.weight is not None}
    for b in range(model.BuffersLength()):
        buf = model.Buffers(b)
        off, size, users = buf.Offset(), buf.Size(), shapes.get(b, [])
        if off <= 1 or b in values:
            continue
        view = np.frombuffer(data, np.float32, count=size // 4, offset=off) if size >= 4 and not size % 4 else None
        w = ph.weights.get(float(view[0])) if view is not None and any(t == _FLOAT32 for _, t in users) else None
        if w is None or not _all(view, lambda x: x == np.float32(w.value)):
            out.others[b] = hashlib.sha256(memoryview(data)[off:off + size]).digest()
            continue
        perm = _layout(_tf_readers(w), readers.get(b, set()), len(w.shape))
        moved = [w.shape[p] for p in perm]
        if size != 4 * int(np.prod(w.shape)) or any([d for d in s if d != 1] != [d for d in moved if d != 1] or t != _FLOAT32
                                                    for s, t in users):
            raise NotPlaceable(f"weight {w.index} {w.shape} became a buffer of {size} bytes used as {users}")
        out.buffers[b] = (w, perm)
        out.where[("buffer", b)] = (w.index, perm)
    lost = sorted({w.index for w in ph.weights.values()} - {i for i, _ in out.where.values()})
    if lost:
        sizes = {w.index: 4 * int(np.prod(w.shape)) for w in ph.weights.values() if w.index in lost}
        raise NotPlaceable(f"{len(lost)} weight(s) have no buffer of their own in the converted model, the first is "
                           f"weight {lost[0]}", sizes)
    return out


def _drop_fills(m, fills: list[Fill]) -> tuple[dict[int, tuple], dict[int, int]]:
    """Turn every FILL of ``fills`` in the unpacked model ``m`` into a constant: the op goes, its
    output gets a new buffer, its shape and value tensors go when nothing else reads them, and
    buffers no tensor uses any more go too. Returns {new buffer: ("weight", weight, perm) |
    ("splat", value, shape)} for the data to write, and {old buffer: new} of the buffers kept."""
    from tensorflow.lite.python import schema_py_generated as fb

    new: dict[int, tuple] = {}
    for f in fills:
        sg = m.subgraphs[f.subgraph]
        b = len(m.buffers)
        m.buffers.append(fb.BufferT())
        sg.tensors[f.tensor].buffer = b
        new[b] = ("weight", f.weight, f.perm) if f.weight is not None else ("splat", f.value, f.shape)
    for s, sg in enumerate(m.subgraphs):
        gone = {f.op for f in fills if f.subgraph == s}
        if not gone:
            continue
        sg.operators = [op for k, op in enumerate(sg.operators) if k not in gone]
        used = {int(t) for op in sg.operators for seq in (op.inputs, op.outputs, op.intermediates) if seq is not None
                for t in seq if t >= 0}
        used |= {int(t) for seq in (sg.inputs, sg.outputs) if seq is not None for t in seq}
        used |= {t.tensorIndex for sd in m.signatureDefs or () if sd.subgraphIndex == s for t in (*(sd.inputs or ()), *(sd.outputs or ()))}
        keep = [k for k in range(len(sg.tensors)) if k in used]
        index = {old: i for i, old in enumerate(keep)}
        sg.tensors = [sg.tensors[k] for k in keep]
        for op in sg.operators:
            for name in ("inputs", "outputs", "intermediates"):
                seq = getattr(op, name)
                if seq is not None:
                    setattr(op, name, [index[int(t)] if t >= 0 else int(t) for t in seq])
        sg.inputs, sg.outputs = ([index[int(t)] for t in seq] if seq is not None else None for seq in (sg.inputs, sg.outputs))
        for sd in m.signatureDefs or ():
            if sd.subgraphIndex == s:
                for t in (*(sd.inputs or ()), *(sd.outputs or ())):
                    t.tensorIndex = index[t.tensorIndex]
    used_b = {0} | {t.buffer for sg in m.subgraphs for t in sg.tensors} | {md.buffer for md in m.metadata or ()}
    used_b |= set(m.metadataBuffer if m.metadataBuffer is not None else ())
    keep_b = [b for b in range(len(m.buffers)) if b in used_b]
    index_b = {old: i for i, old in enumerate(keep_b)}
    m.buffers = [m.buffers[b] for b in keep_b]
    for sg in m.subgraphs:
        for t in sg.tensors:
            t.buffer = index_b[t.buffer]
    for md in m.metadata or ():
        md.buffer = index_b[md.buffer]
    if m.metadataBuffer is not None:
        m.metadataBuffer = [index_b[int(b)] for b in m.metadataBuffer]
    return {index_b[b]: v for b, v in new.items()}, index_b


_ALIGN = 64  # every buffer after the flatbuffer starts at a multiple of this


def _pack(m) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def write(data: bytes, path: str, p: Plan | None = None, read_weight: Callable[[int], np.ndarray] | None = None) -> int:
    """Write the converted ``data`` (buffers after the flatbuffer) to ``path``: the flatbuffer
    rebuilt with every buffer placed after it in buffer order (TensorFlow's converter appends them
    in an order that changes from run to run), each at a multiple of 64 bytes; each stand-in of
    ``p`` (:func:`plan`) replaced by its weight, read by ``read_weight(index)`` one at a time, in
    the permutation the TFLite op reads; each FILL of ``p`` replaced by a constant. Every float
    buffer is written with +-inf as the largest finite float, as the converter's own pass does
    (which the stand-in conversion skips, see :func:`_converted`; and which never saw the real
    weights). Returns how many weights were written from ``read_weight``."""
    from tensorflow.lite.python import schema_py_generated as fb

    m = fb.ModelT.InitFromPackedBuf(data, 0)
    # what goes in every buffer after the flatbuffer: ("bytes", offset, size) of ``data``, a weight, a splat
    source: dict[int, tuple] = {b: ("bytes", buf.offset, buf.size) for b, buf in enumerate(m.buffers) if buf.offset > 1}
    if p is not None:
        source.update({b: ("weight", w, perm) for b, (w, perm) in p.buffers.items()})
        if p.fills:
            new, index_b = _drop_fills(m, p.fills)
            source = {index_b[b]: v for b, v in source.items() if b in index_b}
            source.update(new)
    floats = {}  # buffer -> numpy type of the float tensors reading it
    for sg in m.subgraphs:
        for t in sg.tensors:
            if t.type in _FLOATS:
                floats[t.buffer] = _FLOATS[t.type]
    sizes = {b: (v[2] if v[0] == "bytes" else 4 * int(np.prod(v[1].shape if v[0] == "weight" else v[2]))) for b, v in source.items()}
    for b in source:
        m.buffers[b].data, m.buffers[b].offset, m.buffers[b].size = None, 1 << 62, sizes[b]  # same width as the real offset
    head = len(_pack(m))
    at = head
    for b in sorted(source):
        at += -at % _ALIGN
        m.buffers[b].offset, at = at, at + sizes[b]
    packed = _pack(m)
    if len(packed) != head:
        raise AssertionError("the flatbuffer changed size when its buffer offsets were set")
    n = 0
    with open(path, "wb") as f:
        f.write(packed)
        for b in sorted(source):
            f.write(b"\0" * (m.buffers[b].offset - f.tell()))
            kind, *args = source[b]
            if kind == "bytes":
                raw = memoryview(data)[args[0]:args[0] + args[1]]
                f.write(raw if b not in floats else _finite(np.frombuffer(raw, floats[b])))
            elif kind == "splat":
                _write_splat(f, _finite(np.array([args[0]], np.float32))[0], int(np.prod(args[1])))
            else:
                w, perm = args
                arr = np.asarray(read_weight(w.index), dtype=np.float32)
                if arr.shape != w.shape:
                    raise NotPlaceable(f"weight {w.index}: the SavedModel holds shape {arr.shape}, the trace {w.shape}")
                f.write(memoryview(_finite(np.ascontiguousarray(arr.transpose(perm)))).cast("B"))
                del arr
                n += 1
    return n


def _finite(arr: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """``arr`` with +-inf as the largest finite value of its type (a copy only when it has any)."""
    flat = arr.reshape(-1)
    if not any(np.isinf(flat[i:i + block]).any() for i in range(0, flat.size, block)):
        return arr
    big = np.finfo(arr.dtype).max
    return np.where(np.isinf(arr), np.where(arr > 0, big, -big), arr).astype(arr.dtype)


def _write_splat(f, value: np.float32, count: int, block: int = 1 << 20) -> None:
    chunk = np.full(min(count, block), value, np.float32)
    for i in range(0, count, block):
        f.write(memoryview(chunk[:min(block, count - i)]).cast("B"))


def saved_model_weights(saved_model: str) -> Callable[[int], np.ndarray]:
    """``index -> array`` of the variables the SavedModel writer stores (``root.weights``)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(saved_model, "variables", "variables"))
    return lambda i: reader.get_tensor(f"weights/{i}/.ATTRIBUTES/VARIABLE_VALUE")


def _converted(graph, emitters: dict[str, Any], base: tuple[float, float], batch, layout_aware,
               keep: frozenset[int] = frozenset()) -> tuple[bytes, Plan]:
    from graph_convert.backends.tensorflow.emitter import build_function
    from graph_convert.backends.tensorflow.writer import tflite_flatbuffer_checked

    ph = Placeholders(base, keep=keep)
    traced = build_function(graph, emitters, batch=batch, layout_aware=layout_aware, placeholders=ph)
    data = tflite_flatbuffer_checked(traced.concrete, None, large=True, fuse_mul_and_fc=False, unfold_splats=True,
                                     inf_to_max=False)
    return data, plan(data, ph)


# a weight the converter folds into something else (a splat added before a LayerNorm, a table
# gathered at constant indices) is converted as it is in another try, while all such weights
# together are at most this share of the model's weights (the converter holds copies of them)
KEEP_SHARE = 0.1


@dataclass
class Converted:
    filled: int  # buffers filled from the SavedModel
    kept: dict[int, int]  # weight index -> bytes, of the weights converted as they are


def convert(graph, emitters: dict[str, Any], path: str, saved_model: str, *, batch=None, layout_aware=()) -> Converted:
    """Trace ``graph`` with stand-ins, convert, and write ``path`` with the SavedModel's weights
    in place of the stand-ins; convert again with other stand-in values and check that nothing
    else depends on them. Stand-ins the converter folds away are converted as they are instead,
    up to ``KEEP_SHARE`` of the weights. Raises NotPlaceable (``path`` removed) when the
    stand-ins cannot be matched, ConvertError when TensorFlow's converter fails."""
    kept: dict[int, int] = {}
    while True:
        try:
            data, first = _converted(graph, emitters, _BASES[0], batch, layout_aware, frozenset(kept))
            break
        except NotPlaceable as e:
            if not e.lost or set(e.lost) & set(kept):
                raise
            kept.update(e.lost)
            if sum(kept.values()) > KEEP_SHARE * graph.weight_bytes:
                raise NotPlaceable(f"{e}; the {len(kept)} weight(s) the converter folds ({sum(kept.values()) / 1e6:.1f} MB) are more "
                                   f"than {KEEP_SHARE:.0%} of the weights") from None
    n = write(data, path, first, saved_model_weights(saved_model))
    del data
    try:
        second = _converted(graph, emitters, _BASES[1], batch, layout_aware, frozenset(kept))[1]
        first.same_as(second)
    except BaseException:
        os.remove(path)  # ours, written just now
        raise
    return Converted(n, kept)
