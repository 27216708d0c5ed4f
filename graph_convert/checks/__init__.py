"""The checks: :mod:`equivalence` (draws and the verification rule, ONNX Runtime's reference),
:mod:`foreign` (another converter's .tflite/SavedModel judged by that rule; ``graph-convert verify``)
and :mod:`diverge` (the first op where a .tflite departs from ONNX Runtime)."""
