"""graph_convert: PyTorch/ONNX -> verified rewrite -> TensorFlow SavedModel + TFLite.

The public API (the command line uses nothing else): :func:`convert` with
:class:`ConvertOptions`, :func:`verify_file` (check another converter's file), :func:`pass_pipeline`,
:func:`parse_shape`, :func:`quantization_tables`,
the plugin classes (:class:`Pass`, :class:`PassResult`, :class:`PassContext`, :class:`Registry`)
and the error types, each of which the CLI maps to one exit code.
"""
from __future__ import annotations

from graph_convert.version import __version__  # noqa: E402,F401

import os  # noqa: E402

from graph_convert.errors import (  # noqa: E402
    ConvertError,
    GraphConvertError,
    PassError,
    StageError,
    UnsupportedOpsError,
    VerificationError,
)
from graph_convert.options import ConvertOptions  # noqa: E402

# imported on first use: the plugin classes bring the graph (onnx, networkx), which a command
# that fails on its arguments or paths must not wait for (that answer comes in well under a second)
_LAZY = {"Pass": "graph_convert.pass_manager", "PassContext": "graph_convert.pass_manager",
         "PassResult": "graph_convert.pass_manager", "Registry": "graph_convert.pass_manager",
         "QuantizationThresholdError": "graph_convert.quantize"}


def convert(source, example_inputs=None, output_dir="converted", options=None, **kwargs):
    """Convert a model; see :func:`graph_convert.conversion.pipeline.convert` for the options.
    Missing files (the source, ``inputs``, calibration data, a plugin file) are refused before
    anything heavy is imported."""
    from graph_convert.conversion.preflight import check_paths

    # ``log`` and ``progress`` are how the run reports, not options of the conversion
    hooks = {k: kwargs.pop(k) for k in ("log", "progress") if k in kwargs}
    if options is None:
        options = ConvertOptions.from_kwargs(**kwargs)
        kwargs = {}
    check_paths(source, options)
    from graph_convert.conversion.pipeline import convert as _convert

    return _convert(source, example_inputs, output_dir, options, **kwargs, **hooks)


def verify_file(source, candidate, **kwargs):
    """Check a .tflite or SavedModel made by any converter against its ONNX/PyTorch source; see
    :func:`graph_convert.checks.foreign.verify_file`. Returns a result with ``equivalent``, ``figures``,
    ``report`` and (on a mismatch with a .tflite) ``divergence``."""
    from graph_convert.conversion.preflight import check_candidate, check_source

    if isinstance(source, (str, os.PathLike)):
        check_source(os.fspath(source))
    check_candidate(os.fspath(candidate))
    from graph_convert.checks.foreign import verify_file as _verify_file

    return _verify_file(source, candidate, **kwargs)


def convert_batch(inputs, output, **kwargs):
    """Convert many models, each in a process of its own, into ``output/<name>/`` with
    ``output/summary.json`` and ``summary.md``; see :func:`graph_convert.batch.convert_batch`.
    Returns a result with ``ok``, ``rows``, ``totals`` and ``table()``."""
    from graph_convert.batch import convert_batch as _batch

    return _batch(inputs, output, **kwargs)


def parse_size(text: str, option: str = "--memory-limit") -> int:
    """``"8G"``, ``"512M"`` or a number of bytes -> bytes."""
    from graph_convert.batch.jobs import parse_size as _parse

    return _parse(text, option)


def parse_timeout(text: str, option: str = "--timeout") -> float:
    """A positive number of seconds."""
    from graph_convert.batch.jobs import parse_timeout as _parse

    return _parse(text, option)


def stage_progress(quiet: bool = False, stream=None):
    """A ``progress`` callback for :func:`convert`: the stage running and its elapsed time, live
    on a terminal, plain lines otherwise, nothing when ``quiet``. Call its ``close()`` at the end."""
    from graph_convert.progress import StageProgress, mode_for

    return StageProgress(mode_for(quiet, stream), stream)


def view(output_dir, port: int = 8080, browser: bool = True) -> None:
    """Open a conversion's models with their ``--explorer`` node data in Model Explorer (the
    ``explorer`` extra), served on localhost until interrupted; see
    :func:`graph_convert.checks.explorer.open_in_model_explorer`. Raises ConvertError when the
    folder has no node data or Model Explorer is not installed."""
    from graph_convert.checks.explorer import open_in_model_explorer

    open_in_model_explorer(str(output_dir), port=port, browser=browser)


def pass_pipeline(plugins=()) -> list[dict]:
    """The pass pipeline with ``plugins`` loaded, in run order: one dict per pass with its
    ``phase``, ``name``, fixed-point ``group`` (or None), ``source`` (the plugin it came from) and
    ``opt_in`` (the option it does nothing without, or None)."""
    from graph_convert.pass_manager import PassManager
    from graph_convert.plugins import builtin_registry

    reg = builtin_registry(list(plugins))
    out = []
    for step in PassManager(reg).steps():
        for name in step:
            cls, src = reg.passes[name]
            out.append({"phase": cls.phase, "name": name, "group": cls.group, "source": src, "opt_in": cls.opt_in})
    return out


def parse_shape(text: str, option: str = "--input-shape"):
    """``"1,3,224,224"`` or ``"name=1,3,224,224"`` -> (name or None, dims)."""
    from graph_convert.options import parse_shape as _parse

    return _parse(text, option)


def quantization_tables(section) -> str:
    """The printed tables of a report's ``quantization`` section."""
    from graph_convert.quantize import tables

    return tables(section)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graph_convert' has no attribute {name!r}")


__all__ = ["convert", "convert_batch", "verify_file", "view", "ConvertOptions", "parse_size", "parse_timeout", "stage_progress",
           "pass_pipeline", "parse_shape", "quantization_tables", "ConvertError",
           "GraphConvertError", "PassError", "StageError", "UnsupportedOpsError", "VerificationError",
           "QuantizationThresholdError", "Pass", "PassContext", "PassResult", "Registry", "__version__"]
