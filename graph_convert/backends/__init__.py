"""Back ends: what makes the output files from the (rewritten) graph. One folder each:
:mod:`tensorflow` (our emitter: SavedModel and .tflite) and :mod:`onnx2tf`."""
