"""Signal processing: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix.

TFLite's builtin kernels take no complex tensors, so ONNX's own encoding is kept throughout: a
complex tensor is a real one whose last axis holds (real, imaginary), a real signal has a last
axis of 1. A DFT along an axis is then one matrix product: the transformed axis and that last
axis are flattened into one, multiplied by a constant ``(n * c, k * 2)`` matrix of cosines and
sines (computed in float64, entry by entry from ``(n * k) mod N`` so large lengths stay exact),
and split back into ``(k, 2)``. Zero padding and truncation to ``dft_length``, the one-sided
half spectrum, the inverse's sign and 1/N scale, and the inverse of a one-sided spectrum (a real
signal, as numpy's ``irfft``) all live in that matrix, so every form is a FULLY_CONNECTED or
BATCH_MATMUL in TFLite. Where LiteRT's one FFT kernel applies — the one-sided DFT of a real
signal of power-of-two length — it is RFFT2D instead, whose complex64 result REAL and IMAG
split into the real ``(..., 2)`` layout right away (no complex tensor leaves the emitter).

STFT is a strided 1-D convolution whose filters are the windowed DFT matrix (one CONV_2D: no
framing copies) when the window is a constant, else frames gathered with constant indices,
multiplied by the window and transformed as above.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_convert.ir import Node
from graph_convert.backends.tensorflow.emitter import tf_dtype
from graph_convert.backends.tensorflow.ops.core import cast_back, dims_of, emitter, input_value, lite_float, shape_tensor, unsupported


def _dft_matrix(n_in: int, c_in: int, n: int, bins: int, inverse: bool, real_out: bool) -> np.ndarray:
    """``(n_in * c_in, bins * 2)`` (or ``(.., n)`` for a real output): row ``t * c_in + r`` is the
    input sample ``t``'s part ``r`` (real, imaginary), column ``k * 2 + s`` output bin ``k``'s
    part ``s``. Samples past ``n`` are cut off (zero rows); fewer than ``n`` are zero-padded
    (absent rows). ``real_out``: the inverse of a one-sided spectrum of a real length-``n`` signal
    (numpy's irfft): the hermitian half's weights 1/2/1, the imaginary parts of the DC and Nyquist
    bins ignored, ``bins`` being the output length ``n``."""
    sign = 1.0 if inverse else -1.0
    scale = 1.0 / n if inverse else 1.0
    if real_out:  # input: one-sided spectrum (n_in bins, complex); output: n real samples
        k = np.arange(n_in)[:, None]
        t = np.arange(n)[None, :]
        theta = 2.0 * np.pi * ((k * t) % n) / n
        weight = np.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 1.0, 2.0)
        weight = np.where(k > n // 2, 0.0, weight)  # bins past the half spectrum are cut off
        w = np.zeros((n_in, 2, n))
        w[:, 0, :] = weight * np.cos(theta) * scale
        w[:, 1, :] = -weight * np.sin(theta) * scale
        w[:, 1, :] = np.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 0.0, w[:, 1, :])
        return w[:, :c_in, :].reshape(n_in * c_in, n)
    t = np.arange(n_in)[:, None]
    k = np.arange(bins)[None, :]
    theta = sign * 2.0 * np.pi * ((t * k) % n) / n
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    live = (t < n).astype(np.float64)  # samples past dft_length are cut off
    w = np.zeros((n_in, c_in, bins, 2))
    w[:, 0, :, 0], w[:, 0, :, 1] = cos * live, sin * live  # (a + ib)(cos + i sin)
    if c_in == 2:
        w[:, 1, :, 0], w[:, 1, :, 1] = -sin * live, cos * live
    return w.reshape(n_in * c_in, bins * 2)


def _int_input(node: Node, ctx, x, j: int, what: str) -> int | None:
    if len(node.inputs) <= j or not node.inputs[j]:
        return None
    v = input_value(node, ctx, x, j)
    if v is None:
        raise unsupported(node, f"a non-constant {what} (the DFT matrix is built at conversion time)")
    return int(v.reshape(-1)[0])


def _rfft(t, n_in: int, n: int):
    """The one-sided spectrum of real signals ``(rows, n_in)`` of power-of-two length ``n``:
    TFLite's RFFT2D (its complex64 result split at once by REAL and IMAG into ``(rows, bins, 2)``).
    More exact than the matrix (float32 error relative to the output's scale: 5e-8 against 8e-7
    at n = 512) and as fast on XNNPACK, without an (n, n + 2) constant in the file."""
    s = t
    if n_in > n:
        s = s[:, :n]
    elif n_in < n:
        s = tf.pad(s, [[0, 0], [0, n - n_in]])
    z = tf.signal.rfft(s, fft_length=[n])
    return tf.stack([tf.math.real(z), tf.math.imag(z)], axis=-1)


@emitter("DFT")
def emit_dft(node, x, ctx):
    t, dt = lite_float(node, x[0])
    shape = t.shape.as_list() if t.shape.rank is not None else None
    if shape is None:
        raise unsupported(node, "an input of unknown rank")
    rank = len(shape)
    if ctx.opset >= 20:
        axis = _int_input(node, ctx, x, 2, "axis")
        axis = -2 if axis is None else axis
    else:
        axis = node.attr("axis", 1)
    axis %= rank
    if axis == rank - 1:
        raise unsupported(node, "a DFT along the last axis (it holds the real/imaginary parts)")
    inverse, onesided = bool(node.attr("inverse", 0)), bool(node.attr("onesided", 0))
    c_in, n_in = shape[-1], shape[axis]
    if n_in is None:
        raise unsupported(node, "an unknown length along the transformed axis")
    if c_in not in (1, 2):
        raise unsupported(node, f"a last axis of {c_in} (1: real, 2: complex)")
    n = _int_input(node, ctx, x, 1, "dft_length")
    if n is None:
        n = 2 * (n_in - 1) if inverse and onesided else n_in
    if n < 1:
        raise unsupported(node, f"dft_length {n}")
    real_out = inverse and onesided
    if onesided and not inverse and c_in == 2:
        raise unsupported(node, "a one-sided DFT of a complex signal")
    bins = n if real_out else (n // 2 + 1 if onesided else n)
    # the transformed axis next to the (real, imaginary) axis: a transpose only when it is elsewhere
    perm = [a for a in range(rank - 1) if a != axis] + [axis, rank - 1]
    moved = perm != list(range(rank))
    if moved:
        t = tf.transpose(t, perm)
    lead = dims_of(t)[:-2]  # a dynamic batch stays dynamic
    if c_in == 1 and onesided and not inverse and n >= 4 and n & (n - 1) == 0 and t.dtype == tf.float32:
        y = tf.reshape(_rfft(tf.reshape(t, [-1, n_in]), n_in, n), shape_tensor(lead + [bins, 2]))
    else:
        w = _dft_matrix(n_in, c_in, n, bins, inverse, real_out).astype(t.dtype.as_numpy_dtype)
        y = tf.linalg.matmul(tf.reshape(t, [-1, n_in * c_in]), ctx.weight(w))
        y = tf.reshape(y, shape_tensor(lead + [bins, 1 if real_out else 2]))
    if moved:
        y = tf.transpose(y, np.argsort(perm).tolist())
    return cast_back(y, dt)


@emitter("STFT")
def emit_stft(node, x, ctx):
    sig, dt = lite_float(node, x[0])
    shape = sig.shape.as_list() if sig.shape.rank is not None else None
    if shape is not None and len(shape) == 2:  # [batch, length]: a real signal (TorchScript's export)
        sig, shape = tf.expand_dims(sig, -1), shape + [1]
    if shape is None or len(shape) != 3:
        raise unsupported(node, "a signal of unknown shape or of rank other than 2 or 3 ([batch, length(, 1 or 2)])")
    _, length, c_in = shape
    batch = dims_of(sig)[0]  # a dynamic batch stays dynamic
    if c_in not in (1, 2):
        raise unsupported(node, f"a last axis of {c_in} (1: real, 2: complex)")
    step = _int_input(node, ctx, x, 1, "frame_step")
    has_window = len(node.inputs) > 2 and bool(node.inputs[2])
    window = input_value(node, ctx, x, 2) if has_window else None
    frame_length = _int_input(node, ctx, x, 3, "frame_length")
    if frame_length is None:
        if not has_window:
            if length is None:
                raise unsupported(node, "a signal of unknown length framed as a whole (no window, no frame_length)")
            frame_length = length
        else:
            wshape = x[2].shape.as_list()
            if not wshape or wshape[0] is None:
                raise unsupported(node, "a window of unknown length")
            frame_length = wshape[0]
    onesided = bool(node.attr("onesided", 1))
    if onesided and c_in == 2:
        raise unsupported(node, "a one-sided STFT of a complex signal")
    if step is None or step < 1 or frame_length < 1 or (length is not None and frame_length > length):
        raise unsupported(node, f"frame_step {step} / frame_length {frame_length} for a signal of length {length}")
    # a signal of run-time length (a free audio dim): VALID strided frames, their count read at run time
    frames = -1 if length is None else 1 + (length - frame_length) // step
    bins = frame_length // 2 + 1 if onesided else frame_length
    w = _dft_matrix(frame_length, c_in, frame_length, bins, False, False)  # (frame_length * c_in, bins * 2)
    np_dt = sig.dtype.as_numpy_dtype
    if window is not None or not has_window:
        # constant (or no) window: folded into the filters of one strided convolution
        win = np.ones(frame_length) if window is None else window.astype(np.float64).reshape(-1)
        filters = (w.reshape(frame_length, c_in, bins * 2) * win[:, None, None]).astype(np_dt)
        y = tf.nn.conv1d(sig, ctx.weight(filters), stride=step, padding="VALID")
        return cast_back(tf.reshape(y, shape_tensor([batch, frames, bins, 2])), dt)
    if length is None:
        raise unsupported(node, "a window computed at run time over a signal of unknown length")
    (win,), _ = lite_float(node, x[2]) if x[2].dtype != sig.dtype else ((x[2],), None)
    idx = (np.arange(frames)[:, None] * step + np.arange(frame_length)[None, :]).astype(np.int32)
    framed = tf.gather(sig, tf.constant(idx), axis=1)  # (batch, frames, frame_length, c)
    framed = framed * tf.reshape(tf.cast(win, sig.dtype), [frame_length, 1])
    y = tf.linalg.matmul(tf.reshape(framed, [-1, frame_length * c_in]), ctx.weight(w.astype(np_dt)))
    return cast_back(tf.reshape(y, shape_tensor([batch, frames, bins, 2])), dt)


# window -> cosine terms (a0, a1, a2): w[n] = a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N)
_WINDOWS = {
    "HannWindow": (0.5, 0.5, 0.0),
    "HammingWindow": (25.0 / 46.0, 21.0 / 46.0, 0.0),
    "BlackmanWindow": (0.42, 0.5, 0.08),
}


@emitter(*_WINDOWS)
def emit_window(node, x, ctx):
    a0, a1, a2 = _WINDOWS[node.op_type]
    periodic = bool(node.attr("periodic", 1))
    out_dt = tf_dtype(node.attr("output_datatype", 1))
    size = input_value(node, ctx, x, 0)
    if size is not None:  # the usual case: the window is a constant, computed in float64
        n = int(size.reshape(-1)[0])
        i = np.arange(max(n, 0), dtype=np.float64)
        denom = n if periodic else n - 1
        v = a0 - a1 * np.cos(2 * np.pi * i / denom) + a2 * np.cos(4 * np.pi * i / denom)
        return tf.constant(v.astype(out_dt.as_numpy_dtype))
    n = tf.cast(tf.reshape(x[0], []), tf.int32)
    i = tf.cast(tf.range(n), tf.float32)
    denom = tf.cast(n if periodic else n - 1, tf.float32)
    phase = i * np.float32(2 * np.pi) / denom
    v = a0 - a1 * tf.math.cos(phase)
    if a2:
        v = v + a2 * tf.math.cos(2.0 * phase)
    return v if out_dt == tf.float32 else tf.cast(v, out_dt)


def mel_weight_matrix(num_mel_bins: int, dft_length: int, sample_rate: int, lower_hz: float, upper_hz: float) -> np.ndarray:
    """ONNX MelWeightMatrix (``(dft_length // 2 + 1, num_mel_bins)``, float64): triangular
    filters between mel-spaced edges, the edges rounded down to DFT bins as the ONNX reference does."""
    bins = dft_length // 2 + 1
    edges = np.arange(num_mel_bins + 2)
    low = 2595 * np.log1p(lower_hz / 700) / np.log(10)
    high = 2595 * np.log1p(upper_hz / 700) / np.log(10)
    step = (high - low) / edges.shape[0]
    hz = 700 * np.expm1((edges * step + low) / 2595 * np.log(10))
    points = (((dft_length + 1) * hz) // sample_rate).astype(int)
    out = np.zeros((bins, num_mel_bins))
    for i in range(num_mel_bins):
        lo, mid, hi = points[i], points[i + 1], points[i + 2]
        if mid == lo:
            out[mid, i] = 1
        else:
            for j in range(lo, mid + 1):
                out[j, i] = (j - lo) / (mid - lo)
        for j in range(mid, hi):
            out[j, i] = (hi - j) / (hi - mid)
    return out


@emitter("MelWeightMatrix")
def emit_mel_weight_matrix(node, x, ctx):
    vals = [input_value(node, ctx, x, j) for j in range(5)]
    if any(v is None for v in vals):
        raise unsupported(node, "non-constant inputs (the matrix is computed at conversion time)")
    n_mel, n_dft, rate = (int(v.reshape(-1)[0]) for v in vals[:3])
    lo, hi = (float(v.reshape(-1)[0]) for v in vals[3:])
    out_dt = tf_dtype(node.attr("output_datatype", 1))
    return tf.constant(mel_weight_matrix(n_mel, n_dft, rate, lo, hi).astype(out_dt.as_numpy_dtype))
