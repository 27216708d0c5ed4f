"""Post-training quantization of a converted model (TFLite fp16 / dynamic-range int8 / full int8)
and the report that says how far each quantized model is from ONNX Runtime float32, and where.

The quantizer is TensorFlow's own post-training quantization (``tf.lite.TFLiteConverter`` with a
representative dataset; ``tf.lite.experimental.QuantizationDebugger`` for per-layer figures and for
keeping named layers float). Nothing here quantizes a tensor by hand.

Data: calibration and evaluation samples are given in the *source* model's layout, keyed by input
name, samples on axis 0 (``(N, C, H, W)`` for an input of shape ``(1, C, H, W)``; or stacked whole
inputs ``(N, 1, C, H, W)``); they are mapped through the layout permutations the passes recorded
(``graph.io_perms``) before they reach TFLite. The evaluation samples are never samples the
quantizer saw: ``--eval-data``, or a seeded share of the calibration data held out from it.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from onnx import helper

from graph_convert.errors import ConvertError, GraphConvertError, VerificationError

# user-facing name -> (file written, ConvertResult.paths key, what it is)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "fp16": ("model_float16.tflite", "tflite_float16", "float16 weights, float32 compute"),
    "int8": ("model_dynamic_range_quant.tflite", "tflite_dynamic_range_quant", "int8 weights, float activations (dynamic range)"),
    "int8-full": ("model_full_integer_quant.tflite", "tflite_full_integer_quant", "int8 weights and activations"),
}
HOLDOUT_SHARE = 0.2  # of the calibration samples, kept out of calibration for the accuracy report
RANDOM_CALIBRATION_SAMPLES = 64
RANDOM_EVAL_SAMPLES = 32
DEBUG_MAX_SAMPLES = 100  # per-layer statistics are averaged over at most this many samples
WORST_LAYERS = 10
SQNR_CAP_DB = 200.0  # an exact match has infinite SQNR; the report caps it here
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class QuantizationThresholdError(GraphConvertError):
    """A quantized variant fell below ``--min-sqnr`` / ``--min-top1`` (the CLI exits 5)."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("quantized model below threshold: " + "; ".join(failures))


# ------------------------------------------------------------------------------------------------
# options


@dataclass
class QuantOptions:
    """What the user asked for (already checked for consistency)."""

    variants: list[str]
    calibration: Any = None  # None | "random" | path (.npz or image dir) | {input name: array}
    eval_data: Any = None  # None | path | {input name: array}
    int8_io: bool = False
    debug: bool = False
    float_ops: list[str] = field(default_factory=list)
    min_sqnr: float | None = None
    min_top1: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None


def parse_variants(spec: str | Sequence[str] | None) -> list[str]:
    """``"fp16,int8"`` or ``["fp16", "int8"]`` -> the known names in canonical order."""
    if spec is None:
        return []
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if not items or any(not s for s in items):
        raise ConvertError(f"--quantize {spec!r}: expected a comma-separated list of {', '.join(VARIANTS)}")
    unknown = [s for s in items if s not in VARIANTS]
    if unknown:
        raise ConvertError(f"--quantize: unknown quantization {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    return [v for v in VARIANTS if v in items]


def parse_floats(text: str | Sequence[float] | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise ConvertError(f"{option} {text!r}: expected a number or comma-separated numbers (one per channel)") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ConvertError(f"{option} {text!r}: expected finite numbers")
    return vals


def parse_size(text: str | Sequence[int] | int | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        if isinstance(text, int):
            vals = (text,)
        else:
            vals = tuple(int(v) for v in (text.replace("x", ",").split(",") if isinstance(text, str) else text))
    except ValueError:
        raise ConvertError(f"--size {text!r}: expected H,W or one number for a square image") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or any(v <= 0 for v in vals):
        raise ConvertError(f"--size {text!r}: expected H,W (two positive integers) or one positive integer")
    return vals  # type: ignore[return-value]


def make_options(quantize=None, *, calibration=None, eval_data=None, int8_io=False, quant_debug=False, float_ops=(),
                 min_sqnr=None, min_top1=None, mean=None, std=None, size=None, tflite=True) -> QuantOptions | None:
    """Check the quantization options against each other; None when nothing is to be quantized."""
    variants = parse_variants(quantize)
    if isinstance(float_ops, str):
        float_ops = [s.strip() for s in float_ops.split(",")]
    float_ops = [s for s in (str(x).strip() for x in float_ops)]
    if any(not s for s in float_ops):
        raise ConvertError("--float-ops: empty node name in the list")
    mean, std, size = parse_floats(mean, "--mean"), parse_floats(std, "--std"), parse_size(size)
    if std is not None and any(v == 0 for v in std):
        raise ConvertError(f"--std {','.join(map(str, std))}: must not be zero")
    if not variants:
        given = [opt for opt, v in (("--calibration", calibration), ("--eval-data", eval_data), ("--int8-io", int8_io),
                                     ("--quant-debug", quant_debug), ("--float-ops", float_ops), ("--min-sqnr", min_sqnr),
                                     ("--min-top1", min_top1), ("--mean", mean), ("--std", std), ("--size", size)) if v]
        if given:
            raise ConvertError(f"{given[0]}: applies to quantized models; add --quantize fp16,int8,int8-full (any subset)")
        return None
    if not tflite:
        raise ConvertError("--quantize: quantized models are TFLite files; drop --no-tflite")
    full = "int8-full" in variants
    for opt, v in (("--int8-io", int8_io), ("--quant-debug", quant_debug), ("--float-ops", float_ops)):
        if v and not full:
            raise ConvertError(f"{opt}: applies to full-integer quantization; add int8-full to --quantize")
    if full and calibration is None:
        raise ConvertError("--quantize int8-full: needs calibration data: --calibration data.npz, --calibration DIR "
                           "(images) or --calibration random (accuracy figures are then meaningless)")
    if min_sqnr is not None and not math.isfinite(float(min_sqnr)):
        raise ConvertError(f"--min-sqnr {min_sqnr!r}: expected a finite number of dB")
    if min_top1 is not None and not (0.0 <= float(min_top1) <= 100.0):
        raise ConvertError(f"--min-top1 {min_top1!r}: expected a percentage between 0 and 100")
    image_opts = [o for o, v in (("--mean", mean), ("--std", std), ("--size", size)) if v is not None]
    if image_opts and not any(_is_dir(x) for x in (calibration, eval_data)):
        raise ConvertError(f"{image_opts[0]}: image preprocessing applies to --calibration DIR / --eval-data DIR (a folder of images)")
    if isinstance(eval_data, str) and eval_data == "random":
        raise ConvertError("--eval-data random: evaluation needs real samples; leave --eval-data out to hold out part of the calibration data")
    return QuantOptions(variants, calibration, eval_data, bool(int8_io), bool(quant_debug), list(dict.fromkeys(float_ops)),
                        None if min_sqnr is None else float(min_sqnr), None if min_top1 is None else float(min_top1),
                        mean, std, size)


def _is_dir(x) -> bool:
    return isinstance(x, (str, os.PathLike)) and os.path.isdir(x)


# ------------------------------------------------------------------------------------------------
# samples: load, check, split


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


def _load(source, specs, opts: QuantOptions, option: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if isinstance(source, Mapping):
        return stack_samples(source, specs, option), {"source": "arrays (API)"}
    path = os.fspath(source)
    if os.path.isdir(path):
        data = load_image_dir(path, specs, opts, option)
        pre = {"resize": list(opts.size) if opts.size else "input H, W", "scale": "1/255",
               "mean": list(opts.mean or (0.0,)), "std": list(opts.std or (1.0,))}
        return data, {"source": f"images in {os.path.abspath(path)}", "preprocessing": pre}
    return stack_samples(load_npz(path, option), specs, f"{option} {path}"), {"source": os.path.abspath(path)}


def _count(data: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(data.values()))) if data else 0


def _take(data: Mapping[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in data.items()}


@dataclass
class QuantPlan:
    """Options plus the checked samples (source layout, ``{name: (runs, *input_shape)}``)."""

    options: QuantOptions
    specs: list[InputSpec]
    calibration: dict[str, np.ndarray] | None
    evaluation: dict[str, np.ndarray]
    calibration_info: dict[str, Any]
    evaluation_info: dict[str, Any]
    source_nodes: set[str]


def prepare(opts: QuantOptions, graph, shape_overrides: Mapping[str, tuple] | None = None, seed: int = 0) -> QuantPlan:
    """Everything that can be checked before conversion work: node names, calibration and
    evaluation data (loaded, checked, split). ``graph`` is the source graph, before any pass."""
    specs = input_specs(graph, shape_overrides)
    nodes = {n.name for n in graph.nodes}
    for name in opts.float_ops:
        if name not in nodes:
            close = sorted(n for n in nodes if name.lower() in n.lower())[:5]
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ConvertError(f"--float-ops {name!r}: no node of that name in the model{hint}")
    calib, cinfo = None, {"source": None}
    if isinstance(opts.calibration, str) and opts.calibration == "random":
        calib = random_samples(specs, RANDOM_CALIBRATION_SAMPLES, seed + 1)
        cinfo = {"source": "random", "warning": "calibrated on random data: int8-full ranges do not reflect real inputs"}
    elif opts.calibration is not None:
        calib, cinfo = _load(opts.calibration, specs, opts, "--calibration")
    if opts.eval_data is not None:
        evals, einfo = _load(opts.eval_data, specs, opts, "--eval-data")
        einfo["meaningful"] = True
    elif calib is not None and cinfo["source"] != "random" and "int8-full" not in opts.variants:
        evals = calib  # no variant calibrates, so no sample was seen by the quantizer
        einfo = {"source": "the --calibration samples (no requested variant calibrates)", "meaningful": True}
    elif calib is not None and cinfo["source"] != "random":
        n = _count(calib)
        if n < 2:
            raise ConvertError(f"--calibration: {n} sample — too few to hold some out for the accuracy report; "
                               "give at least 2 samples or pass --eval-data")
        k = max(1, int(round(n * HOLDOUT_SHARE)))
        order = np.random.default_rng(seed).permutation(n)
        evals, calib = _take(calib, np.sort(order[:k])), _take(calib, np.sort(order[k:]))
        einfo = {"source": f"held out from --calibration ({k} of {n} samples, seed {seed}; not used for calibration)", "meaningful": True}
    else:
        evals = random_samples(specs, RANDOM_EVAL_SAMPLES, seed + 2)
        einfo = {"source": "random", "meaningful": False}
    if calib is not None:
        cinfo["samples"] = _count(calib)
    einfo["samples"] = _count(evals)
    if not einfo["meaningful"]:
        einfo["warning"] = "accuracy figures are MEANINGLESS: evaluated on random inputs, not real data (pass --eval-data)"
    elif cinfo.get("source") == "random" and "int8-full" in opts.variants:
        einfo["meaningful"] = False
        einfo["warning"] = "int8-full figures are MEANINGLESS: calibrated on random data (--calibration random)"
    return QuantPlan(opts, specs, calib, evals, cinfo, einfo, nodes)


# ------------------------------------------------------------------------------------------------
# TF op names that lead back to graph nodes


def _scope_name(node_name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", node_name).lstrip("_.-")
    return s or "node"


def scoped_emitters(emitters: Mapping[str, Callable], graph) -> tuple[dict[str, Callable], dict[str, str]]:
    """The emitter table with every node's emission wrapped in ``tf.name_scope(<node name>)``, so
    each TF op — and each TFLite tensor name, which the converter builds from op names — tells
    which node it came from. Returns ``(emitters, {scope: node name})``."""
    import tensorflow as tf

    by_node: dict[str, str] = {}
    used: set[str] = set()
    for n in graph.nodes:
        base = _scope_name(n.name)
        s, i = base, 2
        while s in used:
            s, i = f"{base}_{i}", i + 1
        used.add(s)
        by_node[n.name] = s

    def wrap(fn):
        def emit(node, inputs, ctx):
            scope = by_node.get(node.name)
            if scope is None:
                return fn(node, inputs, ctx)
            with tf.name_scope(scope + "/"):  # trailing "/": this exact scope, not a uniquified one
                return fn(node, inputs, ctx)
        return emit

    return {k: wrap(f) for k, f in emitters.items()}, {s: n for n, s in by_node.items()}


class NodeNames:
    """Maps TFLite tensor names back to graph node names."""

    def __init__(self, scopes: Mapping[str, str], output_tensors: Mapping[str, str]):
        self.scopes = dict(scopes)
        self.outputs = dict(output_tensors)  # TFLite signature output tensor name -> node name
        self.order = {n: i for i, n in enumerate(self.scopes.values())}  # graph order (scopes are built in it)

    def nodes(self, tensor_name: str) -> list[str]:
        found = []
        for part in tensor_name.split(";"):
            scope = part.split("/", 1)[0] if "/" in part else None
            if scope in self.scopes:
                found.append(self.scopes[scope])
        if not found:
            base = tensor_name
            for _ in range(2):  # TFLite appends a digit to derived tensors ("PartitionedCall:01")
                if base in self.outputs:
                    found.append(self.outputs[base])
                    break
                base = base[:-1] if base[-1:].isdigit() else base
        return sorted(dict.fromkeys(found), key=lambda n: self.order.get(n, len(self.order)))


# ------------------------------------------------------------------------------------------------
# running TFLite / ORT on many samples


def _interpreter(model: bytes | str, allocate: bool = False):
    from graph_convert.tf.runner import interpreter

    return interpreter(model, allocate)


def run_tflite_many(model: bytes | str, runs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every sample; int8 inputs are quantized and int8 outputs dequantized with the model's
    own scale/zero point. ``runs``: {signature input name: (runs, *shape)} -> {output: (runs, *shape)}."""
    interp = _interpreter(model)
    runner = interp.get_signature_runner("serving_default")
    ins, outs = runner.get_input_details(), runner.get_output_details()
    results: dict[str, list] = {k: [] for k in outs}
    for i in range(_count(runs)):
        feed = {}
        for k, d in ins.items():
            x = runs[k][i]
            if d["dtype"] in (np.int8, np.uint8) and x.dtype.kind == "f":
                s, z = d["quantization"]
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / s + z), info.min, info.max).astype(d["dtype"])
            feed[k] = x
        got = runner(**feed)
        for k, d in outs.items():
            y = np.asarray(got[k])
            if d["dtype"] in (np.int8, np.uint8):
                s, z = d["quantization"]
                y = (y.astype(np.float32) - z) * s
            results[k].append(y)
    return {k: np.stack(v) for k, v in results.items()}


def run_ort_many(model, runs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from graph_convert.verify import ort_session

    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    acc: dict[str, list] = {n: [] for n in names}
    for i in range(_count(runs)):
        for n, y in zip(names, sess.run(names, {k: v[i] for k, v in runs.items()})):
            acc[n].append(y)
    return {k: np.stack(v) for k, v in acc.items()}


def _to_rewritten(runs: Mapping[str, np.ndarray], io_perms: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """(runs, *source shape) -> (runs, *rewritten shape): the recorded perm, shifted past the run axis."""
    out = {}
    for k, v in runs.items():
        p = io_perms.get(k)
        out[k] = np.ascontiguousarray(np.transpose(v, (0,) + tuple(d + 1 for d in p))) if p else v
    return out


def _to_source(runs: Mapping[str, np.ndarray], io_perms: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    from graph_convert import perm as P

    out = {}
    for k, v in runs.items():
        p = io_perms.get(k)
        out[k] = np.transpose(v, (0,) + tuple(d + 1 for d in P.invert(p))) if p else v
    return out


# ------------------------------------------------------------------------------------------------
# figures


def sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power <= 0:
        return SQNR_CAP_DB
    if signal_power <= 0:
        return -SQNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal_power / noise_power), -SQNR_CAP_DB, SQNR_CAP_DB))


def is_classifier(y: np.ndarray) -> bool:
    """(runs, batch, classes) with more than one class: a 2-D model output read by argmax."""
    return y.ndim == 3 and y.shape[-1] > 1


def output_figures(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    if r.shape != g.shape:
        raise VerificationError(f"quantized output shape {g.shape[1:]} differs from the source's {r.shape[1:]}", "quantization")
    d = np.abs(r - g)
    den = float(np.linalg.norm(r) * np.linalg.norm(g))
    out = {
        "max_abs": float(d.max()) if d.size else 0.0,
        "mean_abs": float(d.mean()) if d.size else 0.0,
        "cosine": float(np.dot(r.ravel(), g.ravel()) / den) if den > 0 else (1.0 if not d.any() else 0.0),
        "sqnr_db": sqnr_db(float(np.sum(r * r)), float(np.sum(d * d))),
        "finite": bool(np.isfinite(g).all()),
    }
    if is_classifier(ref):
        out["top1_agreement_pct"] = float(np.mean(np.argmax(r, -1) == np.argmax(g, -1)) * 100.0)
    return out


def _lite_figures(path_or_bytes, eval_rw_by_tf, reference, graph, in_names, out_names, what: str) -> dict[str, dict[str, Any]]:
    try:
        got = run_tflite_many(path_or_bytes, eval_rw_by_tf)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise VerificationError(f"TFLite {what}: the model does not run in the LiteRT interpreter ({msg[:300]})", f"TFLite {what}") from None
    by_onnx = {y: got[n] for y, n in zip(graph.outputs, out_names)}
    by_onnx = _to_source(by_onnx, graph.io_perms)
    return {y: output_figures(reference[y], by_onnx[y]) for y in graph.outputs}


# ------------------------------------------------------------------------------------------------
# the quantizer (TF post-training quantization)


@contextlib.contextmanager
def _quiet():
    from graph_convert.tf.writer import quiet_fds

    with warnings.catch_warnings(), quiet_fds():
        warnings.simplefilter("ignore")
        yield


def _converter(sm_dir: str, variant: str, representative: Callable | None, int8_io: bool, strict_int8: bool = True):
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


def _convert(converter, what: str) -> bytes:
    try:
        with _quiet():
            return converter.convert()
    except Exception as e:
        msg = " ".join(str(e).split())
        raise ConvertError(f"TFLite {what} conversion failed: {msg[:600]}") from None


def float_ops_in(model: bytes | str) -> list[str]:
    """Ops of a full-integer model that still compute in float (no int8 kernel, or kept float)."""
    interp = _interpreter(model)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(details[t]["dtype"] == np.float32 for t in op["outputs"] if t in details):
            out.append(op["op_name"])
    return out


def _op_counts(model: bytes | str) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(d["op_name"] for d in _interpreter(model)._get_ops_details()).items()))


def _io_dtypes(model: bytes | str) -> dict[str, str]:
    r = _interpreter(model).get_signature_runner("serving_default")
    return {"inputs": sorted({np.dtype(d["dtype"]).name for d in r.get_input_details().values()}),
            "outputs": sorted({np.dtype(d["dtype"]).name for d in r.get_output_details().values()})}


def _signature_order(model: bytes) -> list[str]:
    """Signature input names in the order of the interpreter's input tensors (the debugger feeds lists)."""
    interp = _interpreter(model)
    sig = interp.get_signature_runner("serving_default").get_input_details()
    by_index = {d["index"]: k for k, d in sig.items()}
    return [by_index[d["index"]] for d in interp.get_input_details()]


def _output_tensor_names(model: bytes | str, graph, out_names) -> dict[str, str]:
    """TFLite signature output tensor name -> graph node that produces that output."""
    interp = _interpreter(model)
    tensors = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    sig = interp.get_signature_runner("serving_default").get_output_details()
    out = {}
    for y, n in zip(graph.outputs, out_names):
        prod = graph.producer(y)
        if n in sig and prod is not None:
            out[tensors[sig[n]["index"]]] = prod.name
    return out


class _Debugger:
    """One calibration, then per-layer statistics and selective (denylisted) models from it."""

    def __init__(self, sm_dir: str, representative, debug_samples: list[list[np.ndarray]], int8_io: bool):
        import tensorflow as tf

        self.tf = tf
        self.int8_io = int8_io
        self.samples = debug_samples
        conv = _converter(sm_dir, "int8-full", representative, False, strict_int8=False)
        try:
            with _quiet():
                self.dbg = tf.lite.experimental.QuantizationDebugger(
                    converter=conv, debug_dataset=lambda: iter(self.samples), debug_options=self._options([]))
        except Exception as e:
            msg = " ".join(str(e).split())
            raise ConvertError(f"TFLite quantization debugger failed: {msg[:600]}") from None
        self.calibrated = self.dbg.calibrated_model

    def _options(self, denylist: list[str]):
        return self.tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(denylist) or None, fully_quantize=self.int8_io)

    def set_denylist(self, denylist: list[str]) -> None:
        with _quiet():
            self.dbg.options = self._options(denylist)

    def quantized_model(self) -> bytes:
        with _quiet():
            return self.dbg.get_nondebug_quantized_model()

    def layer_rows(self, names: NodeNames) -> list[dict[str, Any]]:
        def signal(f, q, scale, zp):
            return float(np.mean(np.square(np.asarray(f, np.float64))))

        def noise(f, q, scale, zp):
            deq = (np.asarray(q, np.float64) - zp) * scale
            return float(np.mean(np.square(np.asarray(f, np.float64) - deq)))

        # Statistics come from a second debugger over the debug model's bytes: built that way it keeps
        # every intermediate tensor (experimental_preserve_all_tensors), so the float value next to each
        # quantized one is still there to compare; the converter-built one reuses their memory.
        lite = self.tf.lite.experimental
        try:
            with _quiet():
                stats = lite.QuantizationDebugger(
                    quant_debug_model_content=self.dbg.get_debug_quantized_model(), debug_dataset=lambda: iter(self.samples),
                    debug_options=lite.QuantizationDebugOptions(layer_direct_compare_metrics={"signal_power": signal, "noise_power": noise}))
                stats.run()
                buf = io.StringIO()
                stats.layer_statistics_dump(buf)
        except Exception as e:
            msg = " ".join(str(e).split())
            raise VerificationError(f"TFLite int8-full: the quantization debugger could not run the debug model ({msg[:300]})", "TFLite int8-full") from None
        import csv

        rows = []
        for r in csv.DictReader(io.StringIO(buf.getvalue())):
            sig, noi = float(r["signal_power"]), float(r["noise_power"])
            rows.append({
                "tensor": r["tensor_name"], "op": r["op_name"], "nodes": names.nodes(r["tensor_name"]),
                "sqnr_db": round(sqnr_db(sig, noi), 2), "rmse": math.sqrt(max(noi, 0.0)),
                "max_abs_error": float(r["max_abs_error"]), "scale": float(r["scale"]), "zero_point": int(float(r["zero_point"])),
            })
        rows.sort(key=lambda r: r["sqnr_db"])
        return rows


DEGENERATE_SCALE = 1e20


def check_scales(model: bytes, names: NodeNames, what: str) -> None:
    """A calibrated range that reaches float's limits (a pad or fill with -inf / float lowest in the
    float graph) gives a scale near 1e36: every value of that tensor, and of those sharing its
    scale, quantizes to one level. Refuse such a model and name where it happened."""
    interp = _interpreter(model)
    for d in interp.get_tensor_details():
        scales = d.get("quantization_parameters", {}).get("scales")
        if scales is None or not len(scales) or d["dtype"] not in (np.int8, np.uint8, np.int16):
            continue
        worst = float(np.max(np.abs(scales)))
        if not math.isfinite(worst) or worst > DEGENERATE_SCALE:
            nodes = names.nodes(d["name"])
            where = f" (node {', '.join(repr(n) for n in nodes)})" if nodes else ""
            raise VerificationError(f"TFLite {what}: tensor {d['name']!r}{where} got a degenerate quantization scale {worst:.3g} — "
                                    "its calibrated range is unbounded (the float graph feeds it an extreme constant, such as a "
                                    "float-lowest pad), so int8 cannot represent it", f"TFLite {what}")


def denylist_for(model: bytes, names: NodeNames, float_ops: Sequence[str]) -> dict[str, list[str]]:
    """{node: [tensor names of ops it produced]} in a calibrated model (op outputs only)."""
    interp = _interpreter(model)
    tensors = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    want = set(float_ops)
    out: dict[str, list[str]] = {n: [] for n in float_ops}
    for op in interp._get_ops_details():
        for t in op["outputs"]:
            name = tensors.get(t)
            if name is None:
                continue
            for n in names.nodes(name):
                if n in want and name not in out[n]:
                    out[n].append(name)
    return out


# ------------------------------------------------------------------------------------------------
# the whole step


def run(plan: QuantPlan, *, out_dir: str, sm_dir: str, float_tflite: str, source_model, graph, in_names: Sequence[str],
        out_names: Sequence[str], scopes: Mapping[str, str], say=lambda m: None) -> tuple[dict[str, Any], dict[str, str]]:
    """Write the requested variants into ``out_dir``, evaluate them against ORT float32 on the
    held-out samples, and return ``(report section, {paths key: path})``. Raises
    :class:`QuantizationThresholdError` when a variant misses ``--min-sqnr`` / ``--min-top1``."""
    import tensorflow as tf

    opts = plan.options
    tf_of = dict(zip(graph.inputs, in_names))
    rewritten_nodes = {n.name for n in graph.nodes}
    for name in opts.float_ops:
        if name not in rewritten_nodes:
            raise ConvertError(f"--float-ops {name!r}: the rewrite passes folded this node into its neighbours; "
                               "name a node of model.rewritten.onnx instead")

    reference = run_ort_many(source_model, plan.evaluation)
    eval_rw = {tf_of[k]: v for k, v in _to_rewritten(plan.evaluation, graph.io_perms).items()}
    calib_rw = None if plan.calibration is None else {tf_of[k]: v for k, v in _to_rewritten(plan.calibration, graph.io_perms).items()}

    def representative():
        for i in range(_count(calib_rw)):
            yield {k: v[i] for k, v in calib_rw.items()}

    outputs_known = {y: ("classifier" if is_classifier(reference[y]) else "tensor") for y in graph.outputs}
    if opts.min_top1 is not None and "classifier" not in outputs_known.values():
        raise ConvertError(f"--min-top1: the model has no classifier output (a 2-D output of class scores); outputs: "
                           f"{', '.join(f'{y} {tuple(reference[y].shape[1:])}' for y in graph.outputs)}")

    section: dict[str, Any] = {
        "quantizer": f"TensorFlow {tf.__version__} post-training quantization (tf.lite.TFLiteConverter)",
        "calibration": plan.calibration_info,
        "evaluation": plan.evaluation_info,
        "reference": "source model in ONNX Runtime, float32",
        "variants": {},
    }
    paths: dict[str, str] = {}
    section["float32"] = {"path": os.path.basename(float_tflite), "bytes": os.path.getsize(float_tflite),
                          "outputs": _lite_figures(float_tflite, eval_rw, reference, graph, in_names, out_names, "float32")}
    names = NodeNames(scopes, _output_tensor_names(float_tflite, graph, out_names))

    for variant in opts.variants:
        fname, key, what = VARIANTS[variant]
        path = os.path.join(out_dir, fname)
        say(f"quantizing: {variant} ({what})")
        entry: dict[str, Any] = {"path": fname, "what": what}
        if variant == "int8-full":
            data, extra = _full_integer(plan, sm_dir, representative, eval_rw, reference, graph, in_names, out_names, names)
            entry.update(extra)
        else:
            data = _convert(_converter(sm_dir, variant, None, False), variant)
        with open(path, "wb") as f:
            f.write(data)
        entry["bytes"] = len(data)
        entry["bytes_vs_float32"] = round(len(data) / max(1, section["float32"]["bytes"]), 4)
        entry["io_dtypes"] = _io_dtypes(path)
        entry["ops"] = _op_counts(path)
        entry["outputs"] = _lite_figures(path, eval_rw, reference, graph, in_names, out_names, variant)
        bad = [y for y, f in entry["outputs"].items() if not f["finite"] and np.isfinite(reference[y]).all()]
        if bad:
            raise VerificationError(f"TFLite {variant}: output {bad[0]!r} holds NaN/Inf where the source model's is finite", f"TFLite {variant}")
        section["variants"][variant] = entry
        paths[key] = path

    section["thresholds"] = {"min_sqnr_db": opts.min_sqnr, "min_top1_pct": opts.min_top1}
    failures = check_thresholds(section["variants"], opts.min_sqnr, opts.min_top1)
    section["thresholds"]["failures"] = failures
    if failures:
        raise QuantizationThresholdError(failures)
    return section, paths


def _full_integer(plan, sm_dir, representative, eval_rw, reference, graph, in_names, out_names, names: NodeNames):
    """int8-full bytes plus report entries (float fallback ops, per-layer debug, float-ops effect)."""
    opts = plan.options
    extra: dict[str, Any] = {}
    if not opts.float_ops:
        try:
            data = _convert(_converter(sm_dir, "int8-full", representative, opts.int8_io, strict_int8=True), "int8-full")
        except ConvertError:
            # an op without an int8 kernel: let it run float between QUANTIZE/DEQUANTIZE (reported)
            data = _convert(_converter(sm_dir, "int8-full", representative, opts.int8_io, strict_int8=False), "int8-full")
        extra["float_fallback_ops"] = float_ops_in(data)
        check_scales(data, names, "int8-full")
    if not (opts.debug or opts.float_ops):
        return data, extra

    debug_runs = min(_count(eval_rw), DEBUG_MAX_SAMPLES)
    dbg = _Debugger(sm_dir, representative, [], opts.int8_io)
    order = _signature_order(dbg.calibrated)
    dbg.samples = [[eval_rw[k][i] for k in order] for i in range(debug_runs)]
    if opts.float_ops:
        tensors = denylist_for(dbg.calibrated, names, opts.float_ops)
        empty = [n for n, t in tensors.items() if not t]
        if empty:
            raise ConvertError(f"--float-ops {empty[0]!r}: this node has no quantizable layer in the TFLite model "
                               "(its work was folded into constants or a neighbour)")
        baseline = dbg.quantized_model()
        dbg.set_denylist([t for ts in tensors.values() for t in ts])
        data = dbg.quantized_model()
        check_scales(data, names, "int8-full")
        after = _lite_figures(data, eval_rw, reference, graph, in_names, out_names, "int8-full")
        all_int8: dict[str, Any] = {"bytes": len(baseline)}
        gain: dict[str, Any] | None = {}
        try:  # the all-int8 model may be the broken one that --float-ops repairs
            check_scales(baseline, names, "int8-full (all int8)")
            before = _lite_figures(baseline, eval_rw, reference, graph, in_names, out_names, "int8-full (all int8)")
        except VerificationError as e:
            all_int8["error"], gain = str(e), None
        else:
            all_int8["outputs"] = before
            for y in graph.outputs:
                g = {"sqnr_db": round(after[y]["sqnr_db"] - before[y]["sqnr_db"], 2)}
                if "top1_agreement_pct" in after[y]:
                    g["top1_agreement_pct"] = round(after[y]["top1_agreement_pct"] - before[y]["top1_agreement_pct"], 3)
                gain[y] = g
        extra["float_ops"] = {"nodes": list(opts.float_ops), "tflite_tensors_kept_float": tensors, "all_int8": all_int8,
                              "gain": gain, "bytes_added": len(data) - len(baseline)}
        extra["float_fallback_ops"] = float_ops_in(data)
    if opts.debug:
        rows = dbg.layer_rows(names)
        extra["layers"] = {"method": "TFLite QuantizationDebugger: each quantized op's output against the same op run in float "
                                     "on the same (dequantized) input — the error that layer alone adds; averaged over "
                                     f"{debug_runs} evaluation samples",
                           "count": len(rows), "worst": rows[:WORST_LAYERS], "all": rows}
    return data, extra


def check_thresholds(variants: Mapping[str, Any], min_sqnr: float | None, min_top1: float | None) -> list[str]:
    out = []
    for v, entry in variants.items():
        for y, f in entry["outputs"].items():
            if min_sqnr is not None and f["sqnr_db"] < min_sqnr:
                out.append(f"{v} output {y!r} SQNR {f['sqnr_db']:.1f} dB < --min-sqnr {min_sqnr:g}")
            if min_top1 is not None and "top1_agreement_pct" in f and f["top1_agreement_pct"] < min_top1:
                out.append(f"{v} output {y!r} top-1 agreement {f['top1_agreement_pct']:.1f}% < --min-top1 {min_top1:g}")
    return out


# ------------------------------------------------------------------------------------------------
# printing


def tables(section: Mapping[str, Any]) -> str:
    """The accuracy table (and the worst layers when --quant-debug ran) for the CLI."""
    rows = [("variant", "output", "bytes", "max abs", "mean abs", "cosine", "SQNR dB", "top-1 %")]

    def add(name, entry):
        for y, f in entry["outputs"].items():
            top = f.get("top1_agreement_pct")
            rows.append((name, y, str(entry["bytes"]), f"{f['max_abs']:.3g}", f"{f['mean_abs']:.3g}", f"{f['cosine']:.6f}",
                         f"{f['sqnr_db']:.1f}", "-" if top is None else f"{top:.2f}"))

    add("float32", section["float32"])
    for v, e in section["variants"].items():
        add(v, e)
        if "float_ops" in e and "outputs" in e["float_ops"]["all_int8"]:
            add(f"{v} (all int8)", e["float_ops"]["all_int8"])
    lines = [f"quantized vs ONNX Runtime float32 on {section['evaluation']['samples']} samples ({section['evaluation']['source']}):"]
    lines += _fmt(rows)
    if section["evaluation"].get("warning"):
        lines.append(f"WARNING: {section['evaluation']['warning']}")
    for v, e in section["variants"].items():
        if e.get("float_fallback_ops"):
            lines.append(f"{v}: ops computing in float: {', '.join(e['float_fallback_ops'])}")
        if "float_ops" in e:
            fo = e["float_ops"]
            gains = "the all-int8 model is refused (" + fo["all_int8"].get("error", "?") + ")" if fo["gain"] is None else \
                ", ".join(f"{y}: SQNR {g['sqnr_db']:+.1f} dB" + (f", top-1 {g['top1_agreement_pct']:+.2f} pt" if "top1_agreement_pct" in g else "")
                          for y, g in fo["gain"].items())
            lines.append(f"{v}: kept float {', '.join(fo['nodes'])}: {gains}; {fo['bytes_added']:+d} bytes")
        if "layers" in e:
            lines.append(f"{v}: worst layers (per-layer SQNR, {e['layers']['count']} quantized layers):")
            lrows = [("SQNR dB", "op", "node(s)", "TFLite tensor")]
            for r in e["layers"]["worst"]:
                lrows.append((f"{r['sqnr_db']:.1f}", r["op"], ", ".join(r["nodes"]) or "?", r["tensor"][:60]))
            lines += ["  " + ln for ln in _fmt(lrows)]
    return "\n".join(lines)


def _fmt(rows) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
