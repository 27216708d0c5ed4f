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
from graph_convert.conversion.source import check_input_types, input_shape_overrides, resolve_source, training_dropout_warning
from graph_convert.checks.candidate import Candidate, Pair, Spec, judge, load_candidate, match, parse_map, resolve_layouts, sanitise, source_specs
from graph_convert.checks.equivalence import Figures, Verifier, check_user_inputs, make_draws, read_npz
from graph_convert.checks.int8_steps import is_quantized, output_steps


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
    if (warning := training_dropout_warning(info)) is not None:
        say(warning)
    graph = from_onnx(model)
    user = _user_feeds(graph, inputs)
    cand = load_candidate(os.fspath(candidate), signature)
    in_map, out_map = _maps(maps, cand)
    if user is not None or not any(isinstance(d, str) or d is None or d <= 0 for x in graph.inputs for d in (graph.shape(x) or ())):
        result = _verify_once(model, graph, cand, overrides, user, in_map, out_map, info, atol, seed, say, locate)
    else:  # symbolic dims: fixed where the candidate (or --input-shape) fixes them, else checked at several sizes
        result = _verify_sizes(model, cand, overrides, in_map, out_map, info, atol, seed, say, locate)
    if report_path is not None:
        write_report(result.report, os.fspath(report_path))
    return result


class _SourceFails(ConvertError):
    pass


def _verify_once(model, graph, cand, overrides, user, in_map, out_map, info, atol, seed, say, locate) -> VerifyResult:
    shapes_of = {n: (user[n].shape if user is not None else None) or overrides.get(n) for n in graph.inputs}
    ins = match("input", source_specs(graph, graph.inputs, {k: v for k, v in shapes_of.items() if v}), cand.inputs, in_map)
    draws = make_draws(graph, seed, overrides, user)
    try:
        verifier = Verifier(model, draws, atol, optional=tuple(range(1, len(draws))) if user is not None else ())
    except ConvertError as e:
        raise _SourceFails(str(e)) from None
    if is_quantized(model):  # judged as the conversion judges its own files (README "Quantized ONNX models")
        verifier.int8_steps = output_steps(model)
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
    return result


def _verify_sizes(model, cand, overrides, in_map, out_map, info, atol, seed, say, locate) -> VerifyResult:
    """Every symbolic dim fixed by the candidate is checked at its size; every dim the candidate
    leaves free at several sizes, each with its verdict in the report (``sizes_checked``)."""
    from graph_convert.checks import candidate_dims as CD

    dims, plan = CD.plan(model, cand.inputs, overrides, sanitise)
    free = [n for n, d in dims.items() if d.free]
    checks, result = [], None
    for sizes in plan:
        shapes = CD.shapes_at(model, dims, sizes)
        fixed = CD.with_shapes(model, shapes)
        try:
            r = _verify_once(fixed, from_onnx(fixed), cand, shapes, None, in_map, out_map, info, atol, seed, say, locate)
        except _SourceFails as e:
            if not free:
                raise ConvertError(str(e)) from None
            checks.append(CD.source_fails(sizes, free, e))
            continue
        checks.append({"sizes": sizes, "verdict": r.report["verdict"], **r.report["verification"]})
        if result is None or not r.equivalent:
            result = r
        if not r.equivalent:
            break
    if result is None:
        raise ConvertError(f"the source model fails in ONNX Runtime at every size tried for its free dims "
                           f"{', '.join(free)} ({'; '.join(c['verdict'] for c in checks)[:400]}); give sizes with --input-shape")
    result.report["dims"] = CD.summary(dims, checks)
    result.report["sizes_checked"] = checks
    few = CD.too_few(dims, checks) if result.equivalent else None
    if few:
        result.notes.append(few)
        result.report["verification"]["notes"].append(few)
    return result


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
