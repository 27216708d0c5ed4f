"""The quantization options: what may be asked for, parsed and checked against each other."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from graph_convert.errors import ConvertError

VARIANTS: dict[str, tuple[str, str, str]] = {
    "fp16": ("model_float16.tflite", "tflite_float16", "float16 weights, float32 compute"),
    "int8": ("model_dynamic_range_quant.tflite", "tflite_dynamic_range_quant", "int8 weights, float activations (dynamic range)"),
    "int8-full": ("model_full_integer_quant.tflite", "tflite_full_integer_quant", "int8 weights and activations"),
}


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
