"""SavedModel and TFLite: write and convert (running them is :mod:`graph_convert.backends.tensorflow.runner`)."""
from __future__ import annotations

from graph_convert.process import quiet_fds  # noqa: F401  (re-used by the runner and the quantizer)


from graph_convert.errors import ConvertError


def save_saved_model(module, concrete, path: str) -> None:
    import tensorflow as tf

    # a bare Module holding only the weights and the signature: saving ``module`` itself would
    # trace its tf.function a second time (every emitter run twice) for nothing
    with quiet_fds():
        tf.saved_model.save(_weights_only(module), path, signatures={"serving_default": concrete})


def _weights_only(module):
    import tensorflow as tf

    root = tf.Module()
    root.weights = list(getattr(module, "weights", []))
    return root


# a flatbuffer cannot address more than 2 GiB: past it the weights must sit after the flatbuffer,
# found by the buffers' offsets (TensorFlow's converter option, read by LiteRT)
FLATBUFFER_LIMIT = 2**31


def buffer_offsets_supported() -> bool:
    """Whether this TensorFlow's converter can write a .tflite whose weights follow the flatbuffer."""
    from tensorflow.lite.python import lite

    return hasattr(lite, "_check_model_use_buffer_offset")


def tflite_flatbuffer(concrete, module, *, large: bool = False, saved_model: str | None = None,
                     fuse_mul_and_fc: bool = True, unfold_splats: bool = False, inf_to_max: bool = True,
                     optimize: bool = False) -> bytes:
    """The float32 .tflite (builtin ops only) of a traced function. Converted from the concrete
    function itself (the same graph the SavedModel holds, with the same signature name and I/O
    names): reading the SavedModel back would load it twice more. Raises TensorFlow's error.

    ``large``: the weights go after the flatbuffer, addressed by offsets (needed past 2 GiB), and
    the converter's Python post-processing is skipped (buffer de-duplication and the conversion
    metadata, each of which unpacks the whole model into Python objects: on a 0.5 GB model they
    cost more time and memory than the conversion itself). ``saved_model``: convert that folder
    (``concrete``/``module`` unused): TensorFlow converts a concrete function by first saving it
    as a SavedModel to a temporary folder, a second copy of every weight when one is written
    already. ``fuse_mul_and_fc=False``: a multiplication by a constant before a FULLY_CONNECTED
    stays a MUL (the converter would fold it into the weights). ``unfold_splats``: a large
    constant holding one value is written as a FILL op (its value and shape) rather than in full.
    ``inf_to_max=False``: the converter's pass that writes a constant's +-inf as the largest
    finite float is skipped (it reads every element of every constant, a splat's too: 9 s of a
    1.6 GB model's stand-in conversion; :func:`graph_convert.backends.tensorflow.large_tflite.write` does it instead)."""
    import tensorflow as tf

    if saved_model is not None:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serving_default"])
    else:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], _weights_only(module))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if optimize:  # a quantized source's int8 file: its fake-quant ops become int8 kernels with their ranges
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if large:
        converter._experimental_use_buffer_offset = True
        converter.exclude_conversion_metadata = True
    if not fuse_mul_and_fc:
        converter._experimental_disable_fuse_mul_and_fc = True
    if unfold_splats:
        converter._experimental_unfold_large_splat_constant = True
    if not inf_to_max:
        converter.canonicalizing_inf_as_min_max_float = False
    with quiet_fds():
        return converter.convert()


def tflite_flatbuffer_checked(concrete, module, *, large: bool = False, saved_model: str | None = None,
                             fuse_mul_and_fc: bool = True, unfold_splats: bool = False, inf_to_max: bool = True,
                             optimize: bool = False) -> bytes:
    """:func:`tflite_flatbuffer`, TensorFlow's error as one ConvertError line."""
    try:
        return tflite_flatbuffer(concrete, module, large=large, saved_model=saved_model, fuse_mul_and_fc=fuse_mul_and_fc,
                                 unfold_splats=unfold_splats, inf_to_max=inf_to_max, optimize=optimize)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise ConvertError(f"TFLite conversion failed: {msg[:600]}") from None


def convert_tflite(concrete, module, path: str, *, large: bool = False, saved_model: str | None = None) -> None:
    """Write the float32 .tflite of the SavedModel's ``serving_default`` function to ``path``."""
    data = tflite_flatbuffer_checked(concrete, module, large=large, saved_model=saved_model)
    with open(path, "wb") as f:
        f.write(data)
