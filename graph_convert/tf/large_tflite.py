"""A large model's .tflite without TensorFlow's converter ever holding its weights.

TensorFlow's converter holds several copies of every weight at its peak (the SavedModel's
variables, the frozen constants, the flatbuffer's buffers, the bytes handed back to Python): 5.5x
the weights for a whole run. So a large model is traced again with every large float32 weight
replaced by a *splat* stand-in of the same shape (one value, distinct per weight, which
TensorFlow's GraphDef and MLIR keep as that one value; vectors, such as biases and norms' scales,
stay as they are: see ``_vector``), converted with the buffers placed after
the flatbuffer (buffer offsets), and written with every buffer that holds a stand-in filled with
the real weight, read from the SavedModel's variables one at a time.

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
  times.
A refusal raises :class:`NotPlaceable` and the caller converts the real weights instead. The file
written is then verified in LiteRT against ONNX Runtime like any other.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graph_convert.ir.onnx_io import PLACEHOLDER_BYTES

# stand-in i holds float32(base + (i + 1) * step), (base, step) one of _BASES: the first set in
# [1.5, 2), the second in [1.25, 1.5), so that neither holds 0 or 1 (which the converter may treat
# as identities) nor the product or sum of two of its own values
_BASES, _MAX_WEIGHTS = ((1.5, 2.0 ** -20), (1.25, 2.0 ** -21)), (1 << 19) - 1


class NotPlaceable(Exception):
    """The stand-ins cannot be matched to the converter's buffers with certainty (the message says why)."""


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
    weights: dict[float, _Weight] = field(default_factory=dict)  # the stand-in's value -> weight

    def make(self, index: int, arr: np.ndarray):
        import tensorflow as tf

        if arr.dtype != np.float32 or arr.nbytes < self.min_bytes or index >= _MAX_WEIGHTS or _vector(arr.shape):
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
    elif tfl_readers == {("TRANSPOSE_CONV", 1)}:
        perms = {(2, 0, 1, 3) for op, i, _ in tf_readers if op == "Conv2DBackpropInput" and i == 1}  # [h, w, out, in] -> OHWI
    elif tf_readers and all(op in _SAME_ORDER_TF for op, _, _ in tf_readers) and not any(
            name in ("FULLY_CONNECTED", "CONV_2D", "TRANSPOSE_CONV") and j == 1 for name, j in tfl_readers):
        perms = {same}
    if len(perms) != 1:
        raise NotPlaceable(f"no known layout for a weight read by TensorFlow's {sorted(set(tf_readers))} and TFLite's "
                           f"{sorted(tfl_readers)}")
    return perms.pop()


def _tflite_readers(model) -> dict[int, set[tuple[str, int]]]:
    """buffer index -> {(builtin op name, input index)} over every subgraph."""
    from tensorflow.lite.python import schema_py_generated as fb

    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for k in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(k)
        codes.append(names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM"))
    out: dict[int, set[tuple[str, int]]] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            for j, t in enumerate(op.InputsAsNumpy() if op.InputsLength() else []):
                if t >= 0:
                    out.setdefault(sg.Tensors(int(t)).Buffer(), set()).add((codes[op.OpcodeIndex()], j))
    return out


def _buffer_shapes(model) -> dict[int, list[tuple[tuple[int, ...], int]]]:
    """buffer index -> [(shape, TFLite type)] of the tensors using it."""
    out: dict[int, list] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for k in range(sg.TensorsLength()):
            t = sg.Tensors(k)
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            out.setdefault(t.Buffer(), []).append((shape, t.Type()))
    return out


def _all(view: np.ndarray, test, block: int = 1 << 22) -> bool:
    """``test(chunk).all()`` over ``view`` block by block (no temporary the size of a weight)."""
    return all(bool(test(view[i:i + block]).all()) for i in range(0, view.size, block))


@dataclass
class Plan:
    """Where the stand-ins went in one conversion."""

    fill: list[tuple[int, _Weight, tuple[int, ...]]]  # (file offset, weight, permutation) per stand-in buffer
    where: dict[int, tuple[int, tuple[int, ...]]]  # buffer index -> (weight index, permutation)
    others: dict[int, bytes]  # buffer index -> digest of every other buffer

    def same_as(self, other: "Plan") -> None:
        """The two conversions (two sets of stand-in values) agree: else NotPlaceable."""
        if self.where != other.where:
            raise NotPlaceable("the stand-ins went to other buffers with other values")
        moved = [b for b in self.others if self.others[b] != other.others.get(b)]
        if moved:
            raise NotPlaceable(f"{len(moved)} constant(s) of the converted model depend on a weight's value (the converter "
                               f"folded a weight into them), the first is buffer {moved[0]}")


def plan(data: bytes, ph: Placeholders) -> Plan:
    """Where every stand-in of ``ph`` is in the converted ``data``; raises NotPlaceable."""
    from tensorflow.lite.python import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    readers, shapes = _tflite_readers(model), _buffer_shapes(model)
    out = Plan([], {}, {})
    for b in range(model.BuffersLength()):
        buf = model.Buffers(b)
        off, size, users = buf.Offset(), buf.Size(), shapes.get(b, [])
        if off <= 1:
            continue
        view = np.frombuffer(data, np.float32, count=size // 4, offset=off) if size >= 4 and not size % 4 else None
        w = ph.weights.get(float(view[0])) if view is not None and any(t == 0 for _, t in users) else None  # 0: FLOAT32
        if w is None or not _all(view, lambda x: x == np.float32(w.value)):
            out.others[b] = hashlib.sha256(memoryview(data)[off:off + size]).digest()
            continue
        perm = _layout(_tf_readers(w), readers.get(b, set()), len(w.shape))
        moved = [w.shape[p] for p in perm]
        if size != 4 * int(np.prod(w.shape)) or any([d for d in s if d != 1] != [d for d in moved if d != 1] or t != 0
                                                    for s, t in users):
            raise NotPlaceable(f"weight {w.index} {w.shape} became a buffer of {size} bytes used as {users}")
        out.fill.append((off, w, perm))
        out.where[b] = (w.index, perm)
    lost = sorted({w.index for w in ph.weights.values()} - {i for i, _ in out.where.values()})
    if lost:
        raise NotPlaceable(f"{len(lost)} weight(s) have no buffer of their own in the converted model, the first is "
                           f"weight {lost[0]}")
    return out


def _buffer_offset_fields(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, size, byte position of the offset field) of every buffer placed after the
    flatbuffer, in buffer order."""
    from tensorflow.lite.python import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    out = []
    for b in range(model.BuffersLength()):
        buf = model.Buffers(b)
        if buf.Offset() > 1:
            out.append((buf.Offset(), buf.Size(), buf._tab.Pos + buf._tab.Offset(6)))
    return out


def write(data: bytes, path: str, todo: list[tuple[int, _Weight, tuple[int, ...]]] = (),
          read_weight: Callable[[int], np.ndarray] | None = None) -> int:
    """Write the converted ``data`` (buffers after the flatbuffer) to ``path``: the buffers in
    buffer order (TensorFlow's converter appends them in an order that changes from run to run),
    each stand-in in ``todo`` (:func:`plan`) replaced by its weight, read by ``read_weight(index)``
    one at a time. Returns how many buffers were filled."""
    fields = _buffer_offset_fields(data)
    fill = {off: (w, perm) for off, w, perm in todo}
    start = min((off for off, _, _ in fields), default=len(data))
    end = max((off + size for off, size, _ in fields), default=len(data))
    head, at = bytearray(data[:start]), start
    for off, size, pos in fields:
        head[pos:pos + 8] = at.to_bytes(8, "little")
        at += size
    with open(path, "wb") as f:
        f.write(head)
        for off, size, _ in fields:
            if off not in fill:
                f.write(memoryview(data)[off:off + size])
                continue
            w, perm = fill[off]
            arr = np.asarray(read_weight(w.index), dtype=np.float32)
            if arr.shape != w.shape:
                raise NotPlaceable(f"weight {w.index}: the SavedModel holds shape {arr.shape}, the trace {w.shape}")
            f.write(memoryview(np.ascontiguousarray(arr.transpose(perm))).cast("B"))
            del arr
        f.write(memoryview(data)[end:])
    return len(todo)


def saved_model_weights(saved_model: str) -> Callable[[int], np.ndarray]:
    """``index -> array`` of the variables the SavedModel writer stores (``root.weights``)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(saved_model, "variables", "variables"))
    return lambda i: reader.get_tensor(f"weights/{i}/.ATTRIBUTES/VARIABLE_VALUE")


def _converted(graph, emitters: dict[str, Any], base: tuple[float, float], batch, layout_aware) -> tuple[bytes, Plan]:
    from graph_convert.tf.emitter import build_function
    from graph_convert.tf.writer import tflite_flatbuffer_checked

    ph = Placeholders(base)
    traced = build_function(graph, emitters, batch=batch, layout_aware=layout_aware, placeholders=ph)
    data = tflite_flatbuffer_checked(traced.concrete, None, large=True, fuse_mul_and_fc=False)
    return data, plan(data, ph)


def convert(graph, emitters: dict[str, Any], path: str, saved_model: str, *, batch=None, layout_aware=()) -> int:
    """Trace ``graph`` with stand-ins, convert, and write ``path`` with the SavedModel's weights
    in place of the stand-ins; convert again with other stand-in values and check that nothing
    else depends on them. Returns the number of buffers filled; raises NotPlaceable (``path``
    removed) when the stand-ins cannot be matched, ConvertError when TensorFlow's converter fails."""
    data, first = _converted(graph, emitters, _BASES[0], batch, layout_aware)
    n = write(data, path, first.fill, saved_model_weights(saved_model))
    del data
    try:
        second = _converted(graph, emitters, _BASES[1], batch, layout_aware)[1]
        first.same_as(second)
    except BaseException:
        os.remove(path)  # ours, written just now
        raise
    return n
