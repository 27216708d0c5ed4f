"""Run what the writer made: the TF concrete function and a .tflite in the real LiteRT interpreter."""
from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping

import numpy as np

from graph_convert.process import quiet_fds


def run_tf(concrete, in_names: list[str], feeds: Mapping[str, np.ndarray], graph_inputs: list[str]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    args = [tf.constant(feeds[x]) for x in graph_inputs]
    out = concrete(*args)
    return {k: v.numpy() for k, v in out.items()}


def interpreter(model: bytes | str, allocate: bool = True, delegate: bool = True):
    """A 1-thread LiteRT interpreter, tensors allocated unless ``allocate=False`` (then no
    delegate is applied either: the op list is the flatbuffer's); the delegate's INFO line to
    fd 2 ("Created TensorFlow Lite XNNPACK delegate") is kept off the user's terminal.
    ``delegate=False``: LiteRT's builtin kernels only, which read the weights where the file
    maps them (XNNPACK packs a second copy of every weight it takes)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if delegate else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    with quiet_fds():
        if isinstance(model, (bytes, bytearray)):
            it = Interpreter(model_content=bytes(model), num_threads=1, **kw)
        else:
            it = Interpreter(model_path=model, num_threads=1, **kw)
        if allocate:
            it.allocate_tensors()
    return it


_interpreter = interpreter


def run_tflite(model: str | bytes, feeds_by_tf_name: Mapping[str, np.ndarray], delegate: bool = True) -> dict[str, np.ndarray]:
    """Run the ``serving_default`` signature of a .tflite (path or bytes) once (``delegate``: see
    :func:`interpreter`)."""
    return tflite_runner(model, delegate)(feeds_by_tf_name)


def tflite_runner(model: str | bytes, delegate: bool = True) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """One interpreter for many runs of the ``serving_default`` signature: each run resizes the
    inputs to its arrays' shapes and allocates again (what a user of a dynamic .tflite does),
    so checking a file at several sizes loads it, and packs its weights for XNNPACK, once."""
    # not allocated at the file's default shape: a free dim is 1 there, which a model may not take
    # (an STFT's 256-sample window over a 1-sample signal); the runner allocates at the feeds' shapes
    interp = _interpreter(model, allocate=False, delegate=delegate)
    runner = interp.get_signature_runner("serving_default")

    def run(feeds_by_tf_name: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return {k: np.array(v) for k, v in runner(**feeds_by_tf_name).items()}
        except ValueError as e:
            if "Invalid tensor size" not in str(e):
                raise
        # the Python binding cannot hand out zero-element tensors: after the run, read such
        # outputs' shapes and dtypes from the interpreter instead
        out = {}
        for k, d in runner.get_output_details().items():
            shape = [int(v) for v in d["shape"]]
            out[k] = np.zeros(shape, d["dtype"]) if 0 in shape else interp.get_tensor(d["index"])
        return out
    return run


def tflite_op_counts(path: str) -> Counter:
    interp = _interpreter(path, allocate=False)
    return Counter(d["op_name"] for d in interp._get_ops_details())
