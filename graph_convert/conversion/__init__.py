"""The stages of one conversion: source -> rewrite (ONNX Runtime proof) -> a back end's artifacts -> report.

:mod:`pipeline` runs them over one :class:`~graph_convert.conversion.pipeline.Conversion`;
:mod:`source`/:mod:`export` load and export the source, :mod:`rewrite` runs the passes and proves
them, :mod:`dynamic` handles a dynamic batch, :mod:`output` owns the output folder, :mod:`report`
builds report.json.
"""
