"""Which input dims are free, which are fixed, and at which sizes a free one is converted and checked.

A *dim* here is a named size shared by every input axis that carries it: an ONNX ``dim_param``
(``batch``, ``height``, ``sequence``), an unnamed symbolic axis (named ``<input>:<axis>``), or,
with ``--dynamic-batch``, axis 0 of every batched input (named ``batch``). Each one is

- **fixed** by ``--input-shape NAME=...`` (every symbolic axis of that input takes the given
  value, and so does every other axis with the same name) or by ``--dim NAME=VALUE``: the
  conversion is static there, every shape downstream is folded at that value;
- otherwise **free**: kept dynamic when the conversion can prove it (see
  :mod:`graph_convert.conversion.dynamic`), within ``--dim NAME=MIN..MAX[/MULTIPLE]`` when given.

The sizes a free dim is converted at (the first two) and checked at (all of them) depend on its
role: the batch (axis 0), an image axis (axis >= 2 of a rank-4+ input), an audio length (a name
with "sample", "audio", "wav", "signal" or "pcm", or axis 1 of a float rank-2 input: a waveform) or a
sequence/length axis (anything else). They include sizes not used to convert, and sizes that are not multiples of the
usual strides, so a model that only takes multiples is reported as such.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from graph_convert.errors import ConvertError

# converted at the first two, checked at all; zipped across dims into assignments
SIZES = {
    "batch": (2, 3, 1, 5, 2),
    # image sizes: multiples of 32 to convert at; their quotients by the usual strides (2..32) never
    # equal the batch's 2 and 3 nor each other's (a dim matched to the wrong one would pass at the
    # two converted sizes by coincidence); then sizes never converted, non-multiples of 32 among them
    "spatial": (160, 224, 128, 80, 100),
    "spatial2": (128, 192, 96, 112, 70),  # a second image axis: differs from the first, so H != W is checked
    "sequence": (16, 24, 8, 77, 13, 200),  # 200: longer than a usual 128-token export
    # audio samples (a waveform: longer than an STFT window of 512 or 1024); 1 s at 16 kHz; and
    # lengths that are no multiple of a usual hop (3000, 8001)
    "audio": (4096, 6144, 3000, 16000, 8001),
}
# a free length is audio when its name says so, or when it is axis 1 of a float (batch, samples) input
AUDIO_NAME = re.compile(r"sample|audio|wav|signal|pcm", re.I)
MIN_CHECKED = 3  # a dim is advertised free only when checked at this many of its values


@dataclass
class Dim:
    """One named size of the inputs."""

    name: str
    role: str  # "batch" | "spatial" | "spatial2" | "sequence" | "audio"
    axes: list[tuple[str, int]] = field(default_factory=list)  # (input, axis) carrying it
    fixed: int | None = None
    fixed_by: str = ""
    lo: int = 1
    hi: int | None = None
    multiple: int = 1
    requested: str = "symbolic dim in the source model"

    @property
    def free(self) -> bool:
        return self.fixed is None

    def sizes(self, kind: str) -> list[int]:
        """Sizes to convert at (first two) and to check at, within the allowed range."""
        if self.fixed is not None:
            return [self.fixed]
        out: list[int] = []
        for v in SIZES[kind]:
            v = self._snap(v)
            if v is not None and v not in out:
                out.append(v)
        for v in (self.lo, self.hi, self._snap(2 * self.lo), self._snap(3 * self.lo)):  # a narrow range: its own ends
            if len(out) >= 5:
                break
            if v is not None and v not in out and self._snap(v) == v:
                out.append(v)
        if len(out) < 2:
            raise ConvertError(f"--dim {self.name}={self.range_text()}: the range holds fewer than two sizes; "
                               f"fix the dim with --dim {self.name}=N instead")
        return out

    def _snap(self, v: int) -> int | None:
        m = self.multiple
        v = max(v, self.lo)
        v = -(-v // m) * m
        if self.hi is not None and v > self.hi:
            v = self.hi // m * m
            if v < self.lo:
                return None
        return v

    def range_text(self) -> str:
        return f"{self.lo}..{self.hi if self.hi is not None else ''}" + (f"/{self.multiple}" if self.multiple > 1 else "")


def parse_dim(text: str) -> tuple[str, int | None, tuple[int, int | None, int] | None]:
    """``NAME=VALUE`` (fix) or ``NAME=MIN..MAX[/MULTIPLE]`` (free within; MIN or MAX may be left
    out) -> (name, value or None, (min, max, multiple) or None)."""
    m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(?:(\d+)|(\d*)\s*\.\.\s*(\d*)\s*(?:/\s*(\d+))?)\s*", text)
    if not m:
        raise ConvertError(f"--dim {text!r}: expected NAME=VALUE or NAME=MIN..MAX[/MULTIPLE], e.g. height=320 or height=32..640/32")
    name, value, lo, hi, mult = m.groups()
    if value is not None:
        if int(value) <= 0:
            raise ConvertError(f"--dim {text!r}: the value must be a positive integer")
        return name, int(value), None
    lo_v, hi_v, mult_v = int(lo or 1), (int(hi) if hi else None), int(mult or 1)
    if lo_v <= 0 or mult_v <= 0 or (hi_v is not None and hi_v < lo_v):
        raise ConvertError(f"--dim {text!r}: MIN and MULTIPLE must be positive and MAX >= MIN")
    return name, None, (lo_v, hi_v, mult_v)


def find_dims(model: onnx.ModelProto, *, force_batch: bool = False, named: dict[tuple[str, int], str] | None = None) -> dict[str, Dim]:
    """Every named size of the model's inputs (see the module docstring); ``named``: (input,
    axis) -> name, axes ``--input-shape`` names (free under that name, even where static)."""
    named = named or {}
    inits = {i.name for i in model.graph.initializer}
    dims: dict[str, Dim] = {}
    first0 = None
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        shape = vi.type.tensor_type.shape.dim
        rank = len(shape)
        spatial_seen = 0
        for a, d in enumerate(shape):
            symbolic = not d.HasField("dim_value") or d.dim_value <= 0
            if (vi.name, a) in named:
                name = named[(vi.name, a)]
            elif a == 0 and force_batch and not symbolic:
                first0 = d.dim_value if first0 is None else first0
                if d.dim_value != first0:
                    continue
                name = "batch"
            elif not symbolic:
                continue
            else:
                name = d.dim_param or f"{vi.name}:{a}"
            role = "batch" if a == 0 else "spatial" if rank >= 4 and a >= 2 else "sequence"
            is_float = vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
            if role == "sequence" and (AUDIO_NAME.search(name) or (is_float and rank == 2 and a == 1)):
                role = "audio"
            if role == "spatial":
                spatial_seen += 1
            dim = dims.setdefault(name, Dim(name, role))
            if force_batch and a == 0:
                dim.requested = "--dynamic-batch"
            if (vi.name, a) in named:
                dim.requested = "--input-shape"
            dim.axes.append((vi.name, a))
    # two image axes: the second one gets other sizes, so H != W is converted and checked
    img = [d for d in dims.values() if d.role == "spatial"]
    for d in img[1::2]:
        d.role = "spatial2"
    return dims


def apply_fixes(dims: dict[str, Dim], overrides: dict[str, tuple[int, ...]], dim_specs) -> None:
    """``--input-shape`` (``overrides``: input -> full shape) and ``--dim`` fix or bound dims."""
    for dim in dims.values():
        for x, a in dim.axes:
            if x in overrides and not isinstance(overrides[x][a], str):
                fix_dim(dim, int(overrides[x][a]), f"--input-shape {x}=...")
    for text in dim_specs:
        name, value, rng = parse_dim(text)
        if name not in dims:
            known = ", ".join(f"{n} ({', '.join(f'{x} axis {a}' for x, a in d.axes)})" for n, d in dims.items()) or "none"
            raise ConvertError(f"--dim {text}: the model's inputs have no dim named {name!r} (symbolic dims: {known})")
        dim = dims[name]
        if value is not None:
            fix_dim(dim, value, f"--dim {text}")
        else:
            if dim.fixed is not None:
                raise ConvertError(f"--dim {text}: dim {name!r} is already fixed to {dim.fixed} by {dim.fixed_by}")
            dim.lo, dim.hi, dim.multiple = rng
            dim.requested = f"--dim {text}"


def fix_dim(dim: Dim, value: int, by: str) -> None:
    if dim.fixed is not None and dim.fixed != value:
        raise ConvertError(f"{by}: dim {dim.name!r} is {dim.fixed} by {dim.fixed_by} and {value} here (one name, one size)")
    dim.fixed, dim.fixed_by = value, dim.fixed_by or by


def sizes_of_arrays(dims: dict[str, Dim], shapes: dict[str, tuple[int, ...]], option: str) -> dict[str, int]:
    """Each free dim's size in the user's arrays (``shapes``: input -> array shape). The arrays fix
    no dim; a fixed dim must have its value there, one name has one size in every array carrying
    it, and a free dim's size must lie in its ``--dim`` range. Anything else: one line naming the
    input and the dim."""
    out: dict[str, int] = {}
    for n, d in dims.items():
        for x, a in d.axes:
            if x not in shapes or a >= len(shapes[x]):
                continue
            v = int(shapes[x][a])
            where = f"{option}: array {x!r} has {v} on axis {a} (dim {n!r})"
            if d.fixed is not None and v != d.fixed:
                raise ConvertError(f"{where}, which {d.fixed_by} fixes to {d.fixed}")
            if d.fixed is None and n in out and out[n] != v:
                other = next(f"{y!r} axis {b}" for y, b in d.axes if y in shapes and int(shapes[y][b]) == out[n])
                raise ConvertError(f"{where}, and {out[n]} in array {other}: one dim, one size")
            if d.fixed is None and (v < d.lo or (d.hi is not None and v > d.hi) or v % d.multiple):
                raise ConvertError(f"{where}, outside its allowed sizes {d.range_text()} ({d.requested})")
            if d.fixed is None:
                out[n] = v
    return out


def assignments(dims: dict[str, Dim]) -> list[dict[str, int]]:
    """Size assignments: the first two are converted (every free dim differs between them), all
    are checked; a fixed dim has its one value everywhere."""
    lists = {n: d.sizes(d.role) for n, d in dims.items()}
    n = max((len(v) for v in lists.values()), default=1)
    return [{k: v[i % len(v)] for k, v in lists.items()} for i in range(n)]


def input_shapes(model: onnx.ModelProto, dims: dict[str, Dim], sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Each input's concrete shape at ``sizes`` (inputs without a symbolic dim are left out)."""
    at: dict[tuple[str, int], int] = {}
    for n, d in dims.items():
        for ax in d.axes:
            at[ax] = sizes[n]
    out = {}
    for vi in model.graph.input:
        if not any(x == vi.name for x, _ in at):
            continue
        shape = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(at.get((vi.name, a), d.dim_value) for a, d in enumerate(shape))
    return out


def with_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy whose inputs have the given shapes and whose inferred shapes are dropped (they are
    inferred again at these sizes, so every shape computation folds); outputs keep their rank."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    del m.graph.value_info[:]
    for vi in m.graph.output:  # the rank stays (an output inference cannot see, e.g. a Loop's, needs it)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                d.Clear()
    return m


def describe(dims: dict[str, Dim], names) -> str:
    """``input 'x' dims h (axis 2), w (axis 3)`` for the named dims, input by input."""
    by_input: dict[str, list[str]] = {}
    for n in names:
        for x, a in dims[n].axes:
            by_input.setdefault(x, []).append(f"{n} (axis {a})")
    return "; ".join(f"input {x!r} dim{'s' if len(v) > 1 else ''} {', '.join(v)}" for x, v in by_input.items())


def fix_hint(model: onnx.ModelProto, dims: dict[str, Dim], names) -> str:
    """``--input-shape x=1,3,H,W`` for every input carrying one of the named dims: a batch as 1,
    another free dim by its name (upper-cased: a value to choose), a fixed one by its value."""
    want = set(names)
    where = {ax: d for d in dims.values() for ax in d.axes}
    hints = []
    for vi in model.graph.input:
        if not any((vi.name, a) in where and where[(vi.name, a)].name in want for a in range(len(vi.type.tensor_type.shape.dim))):
            continue
        parts = []
        for a, d in enumerate(vi.type.tensor_type.shape.dim):
            dim = where.get((vi.name, a))
            if dim is None:
                parts.append(str(d.dim_value))
            elif dim.fixed is not None:
                parts.append(str(dim.fixed))
            else:
                parts.append("1" if dim.role == "batch" else re.sub(r"\W", "_", dim.name).upper())
        hints.append(f"--input-shape {vi.name}={','.join(parts)}")
    return " ".join(hints)
