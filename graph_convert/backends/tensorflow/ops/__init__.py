"""Built-in TF emitters: the table ``op_type -> emit(node, inputs, ctx)`` (see :mod:`graph_convert.backends.tensorflow.emitter`).

One traced ``tf.function`` serves both the SavedModel and the .tflite file, so emitters use TF ops
that the TFLite converter maps to *builtin* kernels (GATHER rather than GatherV2 with batch dims,
shifted slices rather than dilated pooling, ...). TFLite kernels take fewer dtypes than TF:
``core.to_lite`` computes such a dtype in the narrowest wider one that holds every value (exact),
and when none exists (float64, uint64, ...) records a *TFLite gap* (``Traced.gaps``): TF
runs the graph, the TFLite converter would refuse it (or, for +-inf constants, change them).
Emitters whose inputs are all known at conversion time are evaluated then (shape arithmetic
becomes constants).

Layout-sensitive emitters (Conv, ConvTranspose, pools, Resize, InstanceNormalization, LRN, ...)
work channels-last: when the layout pass marked the node they use its tensors as they are; an
unmarked node is transposed to channels-last, or handled in its own layout, here.

An emitter that cannot translate a form raises :class:`ConvertError` naming the node and the
reason, never a silently different result. Where to add an op: the module of its family
(``elementwise``, ``shape``, ``linalg``, ``reduce``, ``nn``, ``norm``, ``resize``, ``recurrent``,
``signal``, ``attention``, ``sampling`` (GridSample, AffineGrid, DeformConv), ``detection`` (NonMaxSuppression, RoiAlign),
``indexing`` (Compress, Unique, ReverseSequence, CenterCropPad, MaxUnpool, CumProd), ``scatter``
(ScatterND, ScatterElements)), with
``@emitter("OpType")`` from ``core``.
"""
from __future__ import annotations

from graph_convert.backends.tensorflow.ops import (  # noqa: F401  (they fill the table)
    attention, control_flow, detection, elementwise, indexing, linalg, nn, norm, quantized, recurrent, reduce, resize, sampling,
    scatter, shape, signal)
from graph_convert.backends.tensorflow.ops.core import EMITTERS, LAYOUT_AWARE, emitter


def register(registry) -> None:
    """The built-in emitters, added to a conversion's registry like a plugin's."""
    for op_type, fn in EMITTERS.items():
        registry.add_emitter(op_type, fn, layout_aware=op_type in LAYOUT_AWARE)


__all__ = ["EMITTERS", "LAYOUT_AWARE", "emitter", "register"]
