"""The files a conversion names, checked before anything heavy is imported: a missing source,
``--inputs``/calibration file, plugin file or onnx2tf interpreter is one line in well under a
second, not after TensorFlow and torch have loaded (3.5-5 s). Only existence and kind are checked
here; what is inside each file is checked by the stage that reads it, with the same wording."""
from __future__ import annotations

import os
from typing import Any

from graph_convert.errors import ConvertError
from graph_convert.options import ConvertOptions
from graph_convert.plugin_import import is_plugin_path


def check_paths(source: Any, options: ConvertOptions) -> None:
    """Raise ConvertError for the first named file that is not there."""
    if isinstance(source, (str, os.PathLike)):
        check_source(os.fspath(source))
    if isinstance(options.inputs, (str, os.PathLike)):
        _check_file(os.fspath(options.inputs), "--inputs", "an .npz file (numpy.savez)")
    for value, option in ((options.calibration, "--calibration"), (options.eval_data, "--eval-data")):
        # a folder of images or an .npz; "random" is a word, not a path
        if isinstance(value, (str, os.PathLike)) and os.fspath(value) != "random" and not os.path.exists(value):
            raise ConvertError(f"{option} {os.fspath(value)}: no such file")
    for plugin in options.plugins:
        if is_plugin_path(plugin) and not os.path.exists(plugin):
            raise ConvertError(f"plugin {plugin!r}: no such file")
    python = options.onnx2tf_python
    if python is not None and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ConvertError(f"--onnx2tf-python {python}: no such interpreter")


def check_source(text: str) -> None:
    """An .onnx path or a ``file.py:factory`` spec whose file is missing (a ``package.module:attr``
    spec is left to its import)."""
    module, _, attr = text.rpartition(":")
    if module.endswith(".py") and attr.isidentifier():  # file.py:factory
        if not os.path.isfile(module):
            raise ConvertError(f"{text}: no such file {module!r}")
        return
    if module and attr.isidentifier() and not text.endswith(".onnx"):  # package.module:attr, imported later
        return
    if not os.path.exists(text):
        raise ConvertError(f"{text}: no such file")
    if os.path.isdir(text):
        raise ConvertError(f"{text}: is a directory, expected an .onnx file")


def check_candidate(path: str) -> None:
    """``graph-convert verify``'s CANDIDATE: a .tflite file or a SavedModel folder."""
    if not os.path.exists(path):
        raise ConvertError(f"candidate {path}: no such file or folder")


def _check_file(path: str, option: str, expected: str) -> None:
    if not os.path.exists(path):
        raise ConvertError(f"{option} {path}: no such file")
    if os.path.isdir(path):
        raise ConvertError(f"{option} {path}: is a folder, expected {expected}")
