"""Calibration and evaluation samples: read (.npz, image folders, random), checked, stacked into runs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from onnx import helper

from graph_convert.errors import ConvertError
from graph_convert.quantize.options import QuantOptions

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class InputSpec:
    """A model input as the source declares it (before any layout rewrite)."""

    name: str
    shape: tuple  # ints, symbolic names or None per dim
    dtype: np.dtype

    def run_shape(self, sample: np.ndarray | None = None) -> tuple:
        return tuple(d if isinstance(d, int) and d > 0 else (sample.shape[i] if sample is not None else 1) for i, d in enumerate(self.shape))

    @property
    def batch(self) -> int:
        d = self.shape[0] if self.shape else 1
        return d if isinstance(d, int) and d > 0 else 1


def input_specs(graph, shape_overrides: Mapping[str, tuple] | None = None) -> list[InputSpec]:
    out = []
    for name in graph.inputs:
        shape = tuple((shape_overrides or {}).get(name) or graph.shape(name) or ())
        out.append(InputSpec(name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(graph.dtype(name)))))
    return out


def load_npz(path: str, option: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise ConvertError(f"{option} {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive (a single .npy array?)")
            data = {k: z[k] for k in z.files}
    except ConvertError:
        raise
    except Exception as e:
        raise ConvertError(f"{option} {path}: cannot read it as .npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not data:
        raise ConvertError(f"{option} {path}: the archive holds no arrays")
    return data


def stack_samples(data: Mapping[str, Any], specs: Sequence[InputSpec], what: str) -> dict[str, np.ndarray]:
    """Check user arrays against the model inputs and return ``{name: (runs, *input_shape)}``: one
    entry per model run. An array of the input's rank is split on axis 0 into runs of the input's
    batch size; an array of rank + 1 holds whole inputs stacked on a new axis 0."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in data]
    if missing:
        raise ConvertError(f"{what}: no array for model input {missing[0]!r} (model inputs: {names}; arrays: {sorted(data)})")
    extra = [k for k in data if k not in names]
    if extra:
        raise ConvertError(f"{what}: array {extra[0]!r} is not a model input (model inputs: {names}; {len(data)} arrays given for {len(names)} inputs)")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = np.asarray(data[spec.name])
        rank = len(spec.shape)
        if arr.dtype.kind not in "biuf":
            raise ConvertError(f"{what}: array {spec.name!r} has dtype {arr.dtype}, model input wants {spec.dtype}")
        if spec.dtype.kind == "f" and arr.dtype.kind != "f":
            raise ConvertError(f"{what}: array {spec.name!r} has dtype {arr.dtype}, model input wants {spec.dtype} "
                               "(scale and normalize the data as the model expects first)")
        if spec.dtype.kind in "iub" and arr.dtype.kind not in "iub":
            raise ConvertError(f"{what}: array {spec.name!r} has dtype {arr.dtype}, model input wants {spec.dtype}")
        if arr.ndim == rank + 1 and rank > 0:
            runs = arr
        elif arr.ndim == rank and rank > 0:
            b = spec.batch
            if arr.shape[0] % b:
                raise ConvertError(f"{what}: array {spec.name!r} has {arr.shape[0]} samples on axis 0, not a multiple of the model's batch size {b}")
            runs = arr.reshape((arr.shape[0] // b, b) + arr.shape[1:])
        else:
            want = f"({'N, ' + ', '.join(str(d) for d in spec.shape[1:])})" if rank else "(N,)"
            raise ConvertError(f"{what}: array {spec.name!r} has shape {arr.shape}, model input {spec.name!r} of shape {spec.shape} takes {want}")
        bad = [i for i, (d, s) in enumerate(zip(spec.shape, runs.shape[1:])) if isinstance(d, int) and d > 0 and d != s]
        if bad:
            raise ConvertError(f"{what}: array {spec.name!r} has shape {arr.shape}, model input {spec.name!r} has shape {spec.shape} "
                               f"(dimension {bad[0]} differs; samples go on axis 0, in the source model's layout)")
        if runs.shape[0] == 0:
            raise ConvertError(f"{what}: array {spec.name!r} holds no samples")
        if runs.dtype.kind == "f":
            finite = np.isfinite(runs)
            if not finite.all():
                nbad = int(runs.size - finite.sum())
                first = int(np.argwhere(~finite.reshape(len(runs), -1).all(axis=1))[0][0])
                raise ConvertError(f"{what}: array {spec.name!r} holds {nbad} NaN/Inf value(s) (first in sample {first})")
        out[spec.name] = np.ascontiguousarray(runs.astype(spec.dtype, copy=False))
    counts = {k: len(v) for k, v in out.items()}
    if len(set(counts.values())) > 1:
        raise ConvertError(f"{what}: inputs have different sample counts {counts}")
    return out


def _image_layout(spec: InputSpec) -> tuple[str, int, tuple]:
    """('NCHW' | 'NHWC', channels, (H, W) as declared) for a 4-D image input."""
    s = spec.shape
    if len(s) != 4 or spec.dtype.kind != "f":
        raise ConvertError(f"input {spec.name!r} of shape {s} ({spec.dtype}) is not a 4-D float image input")
    if isinstance(s[1], int) and s[1] in (1, 3, 4):
        return "NCHW", s[1], (s[2], s[3])
    if isinstance(s[3], int) and s[3] in (1, 3, 4):
        return "NHWC", s[3], (s[1], s[2])
    raise ConvertError(f"input {spec.name!r} of shape {s}: cannot tell the channel axis (1, 3 or 4 channels on axis 1 or 3)")


def load_image_dir(path: str, specs: Sequence[InputSpec], opts: QuantOptions, option: str) -> dict[str, np.ndarray]:
    """Every image in ``path`` (sorted by name) -> the one image input: resized to ``--size`` (default:
    the input's H, W) with bilinear filtering, pixels scaled to [0, 1], then ``(x - mean) / std`` per
    channel — torchvision's ToTensor + Normalize."""
    if len(specs) != 1:
        raise ConvertError(f"{option} {path}: a folder of images feeds a model with one image input; this model has inputs "
                           f"{[s.name for s in specs]} (give an .npz keyed by input name)")
    spec = specs[0]
    try:
        layout, channels, (h, w) = _image_layout(spec)
    except ConvertError as e:
        raise ConvertError(f"{option} {path}: {e}") from None
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, f)))
    if not files:
        raise ConvertError(f"{option} {path}: no image files in the directory ({', '.join(IMAGE_EXTENSIONS)})")
    if opts.size is not None:
        h, w = opts.size
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ConvertError(f"{option} {path}: input {spec.name!r} has no fixed height/width {spec.shape}; give --size H,W")
    try:
        from PIL import Image
    except ImportError:
        raise ConvertError(f"{option} {path}: reading images needs Pillow (pip install pillow), or give an .npz") from None
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    mean = np.asarray(opts.mean or (0.0,), np.float32)
    std = np.asarray(opts.std or (1.0,), np.float32)
    for opt, v in (("--mean", mean), ("--std", std)):
        if v.size not in (1, channels):
            raise ConvertError(f"{opt}: {v.size} values for an input with {channels} channel(s) (give 1 or {channels})")
    images = []
    for f in files:
        try:
            with Image.open(os.path.join(path, f)) as im:
                im = im.convert(mode).resize((w, h), Image.BILINEAR)
                a = np.asarray(im, np.float32).reshape(h, w, channels) / 255.0
        except Exception as e:
            raise ConvertError(f"{option} {path}: cannot read image {f!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        images.append((a - mean) / std)
    x = np.stack(images)  # N, H, W, C
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if spec.batch == 1:
        x = x[:, None]
    return stack_samples({spec.name: x.astype(spec.dtype)}, specs, f"{option} {path}")


def random_samples(specs: Sequence[InputSpec], n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = (n,) + s.run_shape()
        if s.dtype.kind == "f":
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype.kind == "b":
            out[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[s.name] = rng.integers(0, 8, shape).astype(s.dtype)
    return out


def load_samples(source, specs, opts: QuantOptions, option: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if isinstance(source, Mapping):
        return stack_samples(source, specs, option), {"source": "arrays (API)"}
    path = os.fspath(source)
    if os.path.isdir(path):
        data = load_image_dir(path, specs, opts, option)
        pre = {"resize": list(opts.size) if opts.size else "input H, W", "scale": "1/255",
               "mean": list(opts.mean or (0.0,)), "std": list(opts.std or (1.0,))}
        return data, {"source": f"images in {os.path.abspath(path)}", "preprocessing": pre}
    return stack_samples(load_npz(path, option), specs, f"{option} {path}"), {"source": os.path.abspath(path)}


def count_runs(data: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(data.values()))) if data else 0


def take_runs(data: Mapping[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in data.items()}
