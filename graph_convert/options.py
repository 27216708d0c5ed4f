"""``ConvertOptions``: every option of one conversion, validated once, frozen. The CLI and the
Python API both build one; the stages only read it."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np

from graph_convert import backends
from graph_convert.errors import ConvertError

VERIFY_MODES = ("end", "phase", "each", "none")


# Every message below names an option by its command-line flag, the one spelling all messages
# share. ``ConvertOptions`` raises them as an :class:`OptionError`, whose text names the keyword
# instead (``atol 'abc': ...``, what a Python caller wrote) and whose ``cli_message`` keeps the
# flag (``--atol 'abc': ...``, what the command line prints). The flags whose keyword is not the
# flag's words joined by underscores:
KEYWORD_OF_FLAG = {"--input-shape": "input_shapes", "--plugin": "plugins", "--disable-pass": "disable_passes",
                   "--no-tflite": "tflite=False"}
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def keyword_spelling(message: str) -> str:
    """``message`` with every ``--flag`` of ours written as the ``ConvertOptions`` keyword."""
    return _FLAG.sub(lambda m: KEYWORD_OF_FLAG.get(m.group(0), m.group(1).replace("-", "_")), message)


class OptionError(ConvertError):
    """A bad option, named as the Python caller spells it (the keyword); ``cli_message`` names it
    as the command line does (the flag)."""

    def __init__(self, cli_message: str):
        self.cli_message = cli_message
        super().__init__(keyword_spelling(cli_message))


def check_tolerance(atol: Any) -> float:
    """A finite positive number (a numeric string too: that is how the command line has it)."""
    value = _number(atol, float)
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConvertError(f"--atol {atol!r}: must be a finite positive number (a tolerance relative to each output's scale)")
    return value


def check_seed(seed: Any) -> int:
    value = _number(seed, int)
    if value is None or value < 0:
        raise ConvertError(f"--seed {seed!r}: must be a non-negative integer")
    return value


def _number(value: Any, kind: type) -> float | int | None:
    """``value`` as ``kind`` when it is one (bools are not numbers here; an int seed never comes
    from a float), or a string that parses as one; else None."""
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            return None
    if isinstance(value, bool):
        return None
    if kind is int:
        return int(value) if isinstance(value, (int, np.integer)) else None
    return float(value) if isinstance(value, (int, float, np.integer, np.floating)) else None


def parse_shape(text: str, option: str = "--input-shape") -> tuple[str | None, tuple[int, ...]]:
    """``"1,3,224,224"`` or ``"name=1,3,224,224"`` -> (name or None, dims)."""
    name = None
    spec = text.strip()
    if "=" in spec:
        name, spec = spec.split("=", 1)
        name = name.strip()
        if not name:
            raise ConvertError(f"{option} {text!r}: empty input name before '='")
    parts = [p.strip() for p in spec.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ConvertError(f"{option} {text!r}: expected comma-separated positive integers, e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ConvertError(f"{option} {text!r}: every dimension must be a positive integer")
    return name, dims


def _tuple(value, option: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConvertError(f"{option}: expected a list, got {type(value).__name__}") from None


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert and how. ``input_shapes``: ``[(name or None, dims), ...]``; ``inputs``: an
    .npz path or ``{input name: array}`` (source layout); ``quantize`` and the options after it:
    see :mod:`graph_convert.quantize` (checked against each other into ``quant``)."""

    input_shapes: Sequence[tuple[str | None, tuple[int, ...]]] = ()
    inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    keep_io_layout: bool = False
    dynamic_batch: bool = False
    heads_first: bool = False
    plugins: Sequence[str] = ()
    disable_passes: Sequence[str] = ()
    verify: str = "end"
    atol: float = 1e-4
    seed: int = 0
    tflite: bool = True
    overwrite: bool = False
    quantize: str | Sequence[str] | None = None
    calibration: Any = None
    eval_data: Any = None
    int8_io: bool = False
    quant_debug: bool = False
    float_ops: str | Sequence[str] = ()
    min_sqnr: float | None = None
    min_top1: float | None = None
    mean: Any = None
    std: Any = None
    size: Any = None
    backend: str = "graph-convert"  # "onnx2tf": onnx2tf converts, we verify; "auto": ours, onnx2tf for what we cannot emit
    onnx2tf_python: str | None = None  # the interpreter that runs onnx2tf (default: this one)
    # a PyTorch model this run builds from a spec string ('file.py:factory', 'module:attr') has its
    # weights freed once exported: the exporter's rewrite rules keep a reference to the last
    # model they matched, so it would otherwise stay in memory for the whole run (1x the weights).
    # The command line sets it (the process is its own); from Python, only when nothing else
    # holds that model
    free_source_model: bool = False
    # also write Model Explorer node-data files (explorer/): layout moves, per-op error, per-op SQNR
    explorer: bool = False
    quant: Any = field(init=False, default=None, compare=False, repr=False)  # QuantOptions | None

    def __post_init__(self) -> None:
        try:
            self._validate()
        except OptionError:
            raise
        except ConvertError as e:  # one place spells every option: the caller's way (see OptionError)
            raise OptionError(str(e)) from None

    def _validate(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise ConvertError(f"--verify {self.verify!r}: expected one of {', '.join(VERIFY_MODES)}")
        if self.backend not in backends.names():
            raise ConvertError(f"--backend {self.backend!r}: expected one of {', '.join(backends.names())}")
        if self.backend != backends.DEFAULT:
            for clash, what in ((self.quantize, "--quantize"), (self.dynamic_batch, "--dynamic-batch"),
                                (not self.tflite, "--no-tflite"), (self.keep_io_layout, "--keep-io-layout")):
                if clash:
                    raise ConvertError(f"--backend {self.backend} cannot be combined with {what} yet")
        set_ = object.__setattr__.__get__(self)
        set_("atol", check_tolerance(self.atol))
        set_("seed", check_seed(self.seed))
        set_("input_shapes", tuple((n, tuple(int(d) for d in dims)) for n, dims in _tuple(self.input_shapes, "--input-shape")))
        set_("plugins", _tuple(self.plugins, "--plugin"))
        set_("disable_passes", _tuple(self.disable_passes, "--disable-pass"))
        for flag in ("keep_io_layout", "dynamic_batch", "heads_first", "tflite", "overwrite", "int8_io", "quant_debug",
                     "free_source_model", "explorer"):
            set_(flag, bool(getattr(self, flag)))
        quant_fields = (self.quantize, self.calibration, self.eval_data, self.int8_io, self.quant_debug, self.float_ops,
                        self.min_sqnr, self.min_top1, self.mean, self.std, self.size)
        if all(v is None or v is False or (isinstance(v, (tuple, list, str)) and len(v) == 0) for v in quant_fields):
            return  # nothing to quantize: the quantizer (and the onnx it imports, ~1 s) is not loaded
        from graph_convert.quantize import make_options

        set_("quant", make_options(self.quantize, calibration=self.calibration, eval_data=self.eval_data, int8_io=self.int8_io,
                                   quant_debug=self.quant_debug, float_ops=self.float_ops, min_sqnr=self.min_sqnr,
                                   min_top1=self.min_top1, mean=self.mean, std=self.std, size=self.size, tflite=self.tflite))

    @staticmethod
    def choices(option: str) -> tuple[str, ...]:
        """The allowed values of an option with a fixed set (what the command line offers):
        ``backend`` (the registered back ends and ``auto``) and ``verify``."""
        return {"backend": backends.names(), "verify": VERIFY_MODES}[option]

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ConvertOptions":
        """Build from keyword arguments, naming an unknown one (a typo must not pass silently)."""
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConvertError(f"convert(): unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**kwargs)

    @property
    def pass_options(self) -> dict[str, Any]:
        """What the passes may read (``PassContext.options``)."""
        return {"keep_io_layout": self.keep_io_layout, "heads_first": self.heads_first}
