"""SavedModel and TFLite: write, convert, run (real TensorFlow and the real LiteRT interpreter)."""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Mapping

import numpy as np

from graph_convert.errors import ConvertError


@contextlib.contextmanager
def _quiet_fds():
    """Silence C++ logging (TFLite converter, MLIR) written straight to fd 1/2."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def run_tf(concrete, in_names: list[str], feeds: Mapping[str, np.ndarray], graph_inputs: list[str]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    args = [tf.constant(feeds[x]) for x in graph_inputs]
    out = concrete(*args)
    return {k: v.numpy() for k, v in out.items()}


def save_saved_model(module, concrete, path: str) -> None:
    import tensorflow as tf

    # a bare Module holding only the weights and the signature: saving ``module`` itself would
    # trace its tf.function a second time (every emitter run twice) for nothing
    with _quiet_fds():
        tf.saved_model.save(_weights_only(module), path, signatures={"serving_default": concrete})


def _weights_only(module):
    import tensorflow as tf

    root = tf.Module()
    root.weights = list(getattr(module, "weights", []))
    return root


def convert_tflite(concrete, module, path: str) -> None:
    """The float32 .tflite of the SavedModel's ``serving_default`` function. Converted from the
    concrete function itself (the same graph the SavedModel holds, with the same signature name
    and I/O names): reading the SavedModel back would load it twice more."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], _weights_only(module))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        with _quiet_fds():
            data = converter.convert()
    except Exception as e:
        msg = " ".join(str(e).split())
        raise ConvertError(f"TFLite conversion failed: {msg[:600]}") from None
    with open(path, "wb") as f:
        f.write(data)


def interpreter(model: bytes | str, allocate: bool = True):
    """A 1-thread LiteRT interpreter, tensors allocated unless ``allocate=False`` (then no
    delegate is applied either: the op list is the flatbuffer's); the delegate's INFO line to
    fd 2 ("Created TensorFlow Lite XNNPACK delegate") is kept off the user's terminal."""
    from ai_edge_litert.interpreter import Interpreter

    with _quiet_fds():
        if isinstance(model, (bytes, bytearray)):
            it = Interpreter(model_content=bytes(model), num_threads=1)
        else:
            it = Interpreter(model_path=model, num_threads=1)
        if allocate:
            it.allocate_tensors()
    return it


_interpreter = interpreter


def run_tflite(path: str, feeds_by_tf_name: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    interp = _interpreter(path)
    runner = interp.get_signature_runner("serving_default")
    return {k: np.array(v) for k, v in runner(**feeds_by_tf_name).items()}


def tflite_op_counts(path: str) -> Counter:
    interp = _interpreter(path, allocate=False)
    return Counter(d["op_name"] for d in interp._get_ops_details())
