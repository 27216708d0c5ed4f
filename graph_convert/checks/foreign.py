"""``graph-convert verify``: check a .tflite or SavedModel made by any converter against the ONNX
(or PyTorch) source, with the same draws and rule as ``convert``, and name where it goes wrong."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from graph_convert.errors import ConvertError
from graph_convert.ir import Graph, from_onnx
from graph_convert.conversion.output import current_umask, rename_noreplace
from graph_convert.conversion.report import VERIFY_RULE, json_safe
from graph_convert.conversion.source import check_input_types, input_shape_overrides, resolve_source
from graph_convert.checks.candidate import Candidate, Pair, Spec, judge, load_candidate, match, parse_map, resolve_layouts, sanitise, source_specs
from graph_convert.checks.equivalence import Figures, Verifier, check_user_inputs, make_draws, read_npz


@dataclass
class VerifyResult:
    """The verdict on a candidate file, its figures per output, and (on a mismatch) where it diverges."""

    equivalent: bool
    figures: dict[str, Figures]
    report: dict[str, Any]
    divergence: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _load_source(source, input_shapes, work: str) -> tuple[onnx.ModelProto, dict, dict]:
    from graph_convert.conversion.export import is_torch_spec, load_twice

    if isinstance(source, str) and is_torch_spec(source):  # a factory is built twice: its builds must agree
        model, info = resolve_source(load_twice(source), None, input_shapes, work)
        info["spec"] = source
    else:
        model, info = resolve_source(source, None, input_shapes, work)
    graph = from_onnx(model)
    check_input_types(graph)
    overrides = input_shape_overrides(graph, input_shapes) if info.get("kind") != "pytorch" else {}
    return model, info, overrides


def verify_file(source, candidate: str | os.PathLike, *, input_shapes: Sequence = (), inputs=None, atol: float = 1e-4,
                seed: int = 0, signature: str | None = None, maps: Sequence[str] = (), report_path=None,
                locate: bool = True, log: Callable[[str], None] | None = None) -> VerifyResult:
    """Check ``candidate`` (a .tflite or SavedModel folder from any converter) against ``source``
    (an .onnx path, ModelProto, ``file.py:factory`` with ``input_shapes``, or an ``nn.Module``
    with ``input_shapes``) on the draws ``convert`` uses, by its rule. Raises ConvertError on
    bad input (exit 2); a mismatch is a result with ``equivalent=False`` (exit 3)."""
    say = log or (lambda m: None)
    # (name or None, dims) as parse_shape gives them, or bare dims
    shapes = [(s[0], tuple(s[1])) if len(s) == 2 and isinstance(s[1], (tuple, list)) else (None, tuple(s)) for s in input_shapes]
    if report_path is not None:
        check_report_path(os.fspath(report_path))
    with tempfile.TemporaryDirectory(prefix="graph-convert-verify-") as work:
        model, info, overrides = _load_source(source, shapes, work)
    graph = from_onnx(model)
    user = _user_feeds(graph, inputs)
    cand = load_candidate(os.fspath(candidate), signature)
    in_map, out_map = _maps(maps, cand)
    overrides = batch_from_candidate(graph, cand, overrides) if user is None else overrides
    shapes_of = {n: (user[n].shape if user is not None else None) or overrides.get(n) for n in graph.inputs}
    ins = match("input", source_specs(graph, graph.inputs, {k: v for k, v in shapes_of.items() if v}), cand.inputs, in_map)
    draws = make_draws(graph, seed, overrides, user)
    verifier = Verifier(model, draws, atol, optional=tuple(range(1, len(draws))) if user is not None else ())
    ref = verifier.references[0]
    out_specs = [Spec(n, tuple(np.shape(ref[n])), np.asarray(ref[n]).dtype) for n in graph.outputs]
    outs = match("output", out_specs, cand.outputs, out_map)
    say(f"source: {info.get('path') or info.get('spec') or info['kind']} ({len(graph)} nodes); candidate: {cand.path} "
        f"({cand.kind}{', signature ' + cand.signature if cand.signature else ''})")
    resolve_layouts(cand, ins, outs, verifier)
    figures, failed, _ = judge(cand, ins, outs, verifier)
    result = _result(cand, info, ins, outs, verifier, figures, atol)
    if failed is not None and locate:
        from graph_convert.checks.diverge import locate as _locate

        say("outputs differ: looking for the first diverging operation ...")
        result.divergence = _locate(model, cand, ins, failed.feeds, atol)
        result.report["divergence"] = result.divergence
    if report_path is not None:
        write_report(result.report, os.fspath(report_path))
    return result


def batch_from_candidate(graph: Graph, cand: Candidate, overrides: Mapping[str, tuple]) -> dict[str, tuple]:
    """A source input whose dim 0 is symbolic (and not set by --input-shape) takes the batch of
    the candidate's input of that name (or of its only input) when that one is fixed; the other
    symbolic dims stay 1 (--input-shape sets them)."""
    out = dict(overrides)
    for n in graph.inputs:
        shape = graph.shape(n)
        if n in out or not shape or (isinstance(shape[0], int) and shape[0] > 0):
            continue
        same = [c for c in cand.inputs if sanitise(c.name) == sanitise(n)] or (cand.inputs if len(cand.inputs) == 1 else [])
        if same and same[0].shape and len(same[0].shape) == len(shape) and same[0].shape[0]:
            out[n] = (same[0].shape[0], *(d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]))
    return out


def _user_feeds(graph: Graph, inputs) -> dict[str, np.ndarray] | None:
    if inputs is None:
        return None
    if isinstance(inputs, (str, os.PathLike)):
        return check_user_inputs(graph, read_npz(os.fspath(inputs), "--inputs"), f"--inputs {os.fspath(inputs)}")
    return check_user_inputs(graph, inputs, "inputs")


def _maps(maps: Sequence[str], cand: Candidate) -> tuple[dict, dict]:
    """``--map`` entries split into the candidate's inputs and outputs; an unknown name is refused."""
    parsed = [parse_map(m) for m in maps]
    ins, outs = {x.name for x in cand.inputs}, {x.name for x in cand.outputs}
    unknown = [c for c, _, _ in parsed if c not in ins | outs]
    if unknown:
        raise ConvertError(f"--map: the candidate has no input or output {unknown[0]!r} "
                           f"(inputs: {', '.join(x.name for x in cand.inputs)}; outputs: {', '.join(x.name for x in cand.outputs)})")
    return {c: (s, p) for c, s, p in parsed if c in ins}, {c: (s, p) for c, s, p in parsed if c in outs}


def _result(cand: Candidate, info: dict, ins: list[Pair], outs: list[Pair], verifier: Verifier,
            figures: dict[str, Figures], atol: float) -> VerifyResult:
    ok = all(f.ok for f in figures.values())
    notes = [f"{p.side} {p.source.name!r}: {p.note}" for p in ins + outs if p.note] + list(verifier.notes)
    warnings = [{"output": n, "warning": f"{why}: the check on it proves little"} for n, why in verifier.input_independent_outputs().items()]
    stage = f"{cand.kind}" if cand.kind == "saved_model" else "tflite"
    report = {
        "tool": REPORT_TOOL, "source": info, "candidate": {"path": os.path.abspath(cand.path), "kind": cand.kind, "signature": cand.signature},
        "io": {"inputs": [p.as_dict() for p in ins], "outputs": [p.as_dict() for p in outs]},
        "verdict": "equivalent" if ok else "differs",
        "verification": {"rule": VERIFY_RULE, "atol": atol, "draws": verifier.draw_labels, "notes": notes,
                         "warnings": warnings, stage: {k: v.as_dict() for k, v in figures.items()}},
    }
    return VerifyResult(ok, figures, report, None, notes)


REPORT_TOOL = "graph-convert verify"


def check_report_path(path: str) -> bool:
    """Before any work: the report's folder exists, and a file already at ``path`` is a report
    this command wrote earlier (it is replaced); anything else is the user's and is refused.
    Returns whether a file is there to replace."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConvertError(f"--report {path}: folder {folder} does not exist")
    if not os.path.lexists(path):
        return False
    try:
        with open(path) as f:
            ours = json.load(f).get("tool") == REPORT_TOOL
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours or os.path.islink(path) or not os.path.isfile(path):
        raise ConvertError(f"--report {path}: exists and is not a report graph-convert verify wrote; nothing was touched")
    return True


def write_report(report: Mapping[str, Any], path: str) -> None:
    """Strict JSON, written to a private temporary file beside the target and renamed into place:
    it replaces only an earlier report of ours, never a file created meanwhile by someone else."""
    replace = check_report_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json_safe(dict(report)), f, indent=2, allow_nan=False)
        os.chmod(tmp, 0o666 & ~current_umask())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                rename_noreplace(tmp, path)
            except FileExistsError:
                raise ConvertError(f"--report {path}: was created by someone else during the run; it was left as it is") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)



def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
