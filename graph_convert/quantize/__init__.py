"""Post-training quantization of a converted model (TFLite fp16 / dynamic-range int8 / full int8)
and the report that says how far each quantized model is from ONNX Runtime float32, and where.

The quantizer is TensorFlow's own post-training quantization (``tf.lite.TFLiteConverter`` with a
representative dataset; ``tf.lite.experimental.QuantizationDebugger`` for per-layer figures and for
keeping named layers float). Nothing here quantizes a tensor by hand.

Data: calibration and evaluation samples are given in the *source* model's layout, keyed by input
name, samples on axis 0 (``(N, C, H, W)`` for an input of shape ``(1, C, H, W)``; or stacked whole
inputs ``(N, 1, C, H, W)``); they are mapped through the layout permutations the passes recorded
(``graph.io_perms``, with :func:`graph_convert.checks.equivalence.to_rewritten_layout` ``batched=True``) before
they reach TFLite. The evaluation samples are never samples the quantizer saw: ``--eval-data``, or
a seeded share of the calibration data held out from it.

The modules, in the order a conversion uses them: ``options`` (what may be asked), ``data`` and
``plan`` (samples, checked before any conversion work), ``scopes`` (TF ops named after nodes),
``variants`` (the stage: ``run``), ``converter``, ``full_integer`` and ``debugger`` (TensorFlow's
quantizer), ``runners``, ``tflite_info`` and ``metrics`` (measuring the result), ``thresholds`` and
``report`` (what the user sees). Importing this package does not import TensorFlow.
"""
from __future__ import annotations

from graph_convert.quantize.data import InputSpec, load_npz, stack_samples
from graph_convert.quantize.full_integer import WORST_LAYERS
from graph_convert.quantize.metrics import SQNR_CAP_DB, output_figures, sqnr_db
from graph_convert.quantize.options import VARIANTS, QuantOptions, make_options
from graph_convert.quantize.plan import QuantPlan, prepare
from graph_convert.quantize.report import tables
from graph_convert.quantize.runners import run_ort_many, run_tflite_many
from graph_convert.quantize.scopes import NodeNames, scoped_emitters
from graph_convert.quantize.thresholds import QuantizationThresholdError
from graph_convert.quantize.variants import run

__all__ = ["VARIANTS", "QuantOptions", "make_options", "QuantPlan", "prepare", "InputSpec", "load_npz", "stack_samples",
           "scoped_emitters", "NodeNames", "run", "run_tflite_many", "run_ort_many", "SQNR_CAP_DB", "sqnr_db",
           "output_figures", "WORST_LAYERS", "QuantizationThresholdError", "tables"]
