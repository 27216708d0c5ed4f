"""graph_convert: PyTorch/ONNX -> verified rewrite -> TensorFlow SavedModel + TFLite."""
from __future__ import annotations

__version__ = "0.1.0"

from graph_convert.errors import ConvertError, PassError, UnsupportedOpsError, VerificationError  # noqa: E402
from graph_convert.passes import Pass, PassContext, PassResult, Registry  # noqa: E402


def convert(source, example_inputs=None, output_dir="converted", **kwargs):
    """Convert a model; see :func:`graph_convert.pipeline.convert` for the options."""
    from graph_convert.pipeline import convert as _convert

    return _convert(source, example_inputs, output_dir, **kwargs)


__all__ = ["convert", "ConvertError", "PassError", "UnsupportedOpsError", "VerificationError", "Pass", "PassContext", "PassResult", "Registry", "__version__"]
