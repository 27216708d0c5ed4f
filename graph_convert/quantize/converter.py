"""TensorFlow's post-training quantization: the TFLiteConverter set up per variant, and its call."""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable

from graph_convert.errors import ConvertError


@contextlib.contextmanager
def quiet():
    from graph_convert.process import quiet_fds

    with warnings.catch_warnings(), quiet_fds():
        warnings.simplefilter("ignore")
        yield


def make_converter(sm_dir: str, variant: str, representative: Callable | None, int8_io: bool, strict_int8: bool = True):
    import tensorflow as tf

    c = tf.lite.TFLiteConverter.from_saved_model(sm_dir)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "fp16":
        c.target_spec.supported_types = [tf.float16]
    elif variant == "int8-full":
        c.representative_dataset = representative
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] if strict_int8 else \
            [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        if int8_io:
            c.inference_input_type = tf.int8
            c.inference_output_type = tf.int8
    return c


def convert_model(converter, what: str) -> bytes:
    try:
        with quiet():
            return converter.convert()
    except Exception as e:
        msg = " ".join(str(e).split())
        raise ConvertError(f"TFLite {what} conversion failed: {msg[:600]}") from None
