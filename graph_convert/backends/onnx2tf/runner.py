"""onnx2tf as a back end of ``convert``: run it (in this interpreter or another one) on the source
ONNX, then gate its SavedModel and .tflite with our verification exactly as our emitter's."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable

import numpy as np
import onnx

from graph_convert.errors import ConvertError, StageError, VerificationError
from graph_convert.checks.candidate import Candidate, judge, load_candidate, match, resolve_layouts, source_specs, Spec
from graph_convert.checks.equivalence import Verifier

PIP = "pip install 'graph-convert[onnx2tf]'"
CALIBRATION = "calibration_image_sample_data_20x128x128x3_float32.npy"  # else onnx2tf downloads one
SAVED_MODEL_FILES = ("saved_model.pb", "variables", "assets", "fingerprint.pb")


def find_interpreter(python: str | None) -> str:
    """The interpreter that runs onnx2tf: ``python`` when given (its pins may clash with ours),
    else this one; one line naming the pip command when it has no onnx2tf."""
    if python is None:
        if importlib.util.find_spec("onnx2tf") is None:
            raise ConvertError(f"--backend onnx2tf: onnx2tf is not installed ({PIP}, or --onnx2tf-python PATH to an "
                               f"interpreter that has it)")
        return sys.executable
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ConvertError(f"--onnx2tf-python {python}: no such interpreter")
    r = subprocess.run([python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('onnx2tf') is None)"],
                       capture_output=True, text=True, env=_env(python), timeout=120)
    if r.returncode != 0:
        raise ConvertError(f"--onnx2tf-python {python}: that interpreter has no onnx2tf ({PIP} there)")
    return python


def _env(python: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # onnx2tf runs the `onnxsim` executable by name: its interpreter's bin folder goes first
    env["PATH"] = os.path.dirname(os.path.abspath(python)) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def run_onnx2tf(python: str, model: onnx.ModelProto, work: str, seed: int) -> dict[str, str]:
    """Convert ``model`` with onnx2tf in a private temporary folder and move its SavedModel and
    float32 .tflite into ``work`` (``saved_model/``, ``model_float32.tflite``); their paths."""
    with tempfile.TemporaryDirectory(prefix="graph-convert-onnx2tf-") as tmp:
        onnx.save(model, os.path.join(tmp, "model.onnx"), save_as_external_data=False)
        np.save(os.path.join(tmp, CALIBRATION), np.random.default_rng(seed).random((20, 128, 128, 3), dtype=np.float32))
        r = subprocess.run([python, "-m", "onnx2tf", "-i", "model.onnx", "-o", "out", "-n"], cwd=tmp, env=_env(python),
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out = os.path.join(tmp, "out")
        tflite = os.path.join(out, "model_float32.tflite")
        if r.returncode != 0 or not os.path.exists(tflite):
            tail = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()][-2:]
            raise StageError("convert with onnx2tf", f"onnx2tf exit {r.returncode}: {' | '.join(tail)[:400]}")
        sm = os.path.join(work, "saved_model")
        os.makedirs(sm)
        for f in SAVED_MODEL_FILES:
            if os.path.exists(os.path.join(out, f)):
                shutil.move(os.path.join(out, f), os.path.join(sm, f))
        shutil.move(tflite, os.path.join(work, "model_float32.tflite"))
    return {"saved_model": sm, "tflite_float32": os.path.join(work, "model_float32.tflite")}


def gate(cand: Candidate, verifier: Verifier, graph, shapes: dict, model: onnx.ModelProto, label: str) -> tuple[dict, list]:
    """Our verification of one onnx2tf file: (figures per output, the I/O pairs); raises
    VerificationError naming the output, the draw and the first diverging op."""
    ins = match("input", source_specs(graph, graph.inputs, shapes), cand.inputs, {})
    ref = verifier.references[0]
    outs = match("output", [Spec(n, tuple(np.shape(ref[n])), np.asarray(ref[n]).dtype) for n in graph.outputs], cand.outputs, {})
    resolve_layouts(cand, ins, outs, verifier)
    figures, failed, _ = judge(cand, ins, outs, verifier)
    if failed is not None:
        from graph_convert.checks.diverge import locate

        bad = next((n, f) for n, f in figures.items() if not f.ok)
        where = locate(model, cand, ins, failed.feeds, verifier.atol)
        more = f"; {where['summary']}" if where.get("found") else ""
        raise VerificationError(f"{label} (made by onnx2tf): output {bad[0]!r} differs from the source model in ONNX Runtime: "
                                f"{bad[1].reason}{more}", label)
    return figures, ins + outs


def _load(path: str) -> Candidate:
    """onnx2tf's file, refused in terms the user knows (not our temporary folder's path)."""
    try:
        return load_candidate(path)
    except ConvertError as e:
        raise ConvertError(str(e).replace(f"candidate {path}", f"onnx2tf's {os.path.basename(path)}")) from None


def convert_and_gate(python: str, model: onnx.ModelProto, graph, verifier: Verifier, shapes: dict, work: str, seed: int,
                     say: Callable[[str], None]) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """(paths, figures per stage, the I/O pairing of each file)."""
    say(f"converting with onnx2tf ({python}) ...")
    paths = run_onnx2tf(python, model, work, seed)
    figures, io = {}, {}
    for key, label in (("tensorflow", "SavedModel"), ("tflite_float32", "TFLite float32")):
        path = paths["saved_model" if key == "tensorflow" else "tflite_float32"]
        figures[key], pairs = gate(_load(path), verifier, graph, shapes, model, label)
        io[key] = [p.as_dict() for p in pairs]
    return paths, figures, io
