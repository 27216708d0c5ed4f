"""Run what the writer made: the TF concrete function and a .tflite in the real LiteRT interpreter."""
from __future__ import annotations

from collections import Counter
from typing import Mapping

import numpy as np

from graph_convert.tf.writer import quiet_fds


def run_tf(concrete, in_names: list[str], feeds: Mapping[str, np.ndarray], graph_inputs: list[str]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    args = [tf.constant(feeds[x]) for x in graph_inputs]
    out = concrete(*args)
    return {k: v.numpy() for k, v in out.items()}


def interpreter(model: bytes | str, allocate: bool = True):
    """A 1-thread LiteRT interpreter, tensors allocated unless ``allocate=False`` (then no
    delegate is applied either: the op list is the flatbuffer's); the delegate's INFO line to
    fd 2 ("Created TensorFlow Lite XNNPACK delegate") is kept off the user's terminal."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_fds():
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
