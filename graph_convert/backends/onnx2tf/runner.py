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


# the ONNX ops (default domain) onnx2tf 1.28.8 has a converter for: the module names of its
# ``onnx2tf/ops`` folder, read for the hint below when onnx2tf is not installed here
ONNX2TF_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Bernoulli BitShift Cast Ceil
Celu Clip Col2Im Compress Concat ConcatFromSequence Constant ConstantOfShape Conv ConvInteger ConvTranspose Cos Cosh
CumSum DepthToSpace DequantizeLinear Det Div Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor FusedConv GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNorm HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
InstanceNormalization Inverse IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
LpNormalization MatMul MatMulInteger Max MaxPool MaxUnpool Mean MeanVarianceNormalization MelWeightMatrix Min Mish Mod
Mul Multinomial Neg NonMaxSuppression NonZero Not OneHot OptionalGetElement OptionalHasElement Or PRelu Pad Pow
QLinearAdd QLinearConcat QLinearConv QLinearLeakyRelu QLinearMatMul QLinearMul QLinearSigmoid QLinearSoftmax
QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round STFT ScaleAndTranslate Scatter ScatterElements ScatterND Selu SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength Shape Shrink Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze StringNormalizer Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unique Unsqueeze Upsample Where Xor""".split())


def onnx2tf_ops() -> frozenset[str]:
    """The op types onnx2tf converts: those of the onnx2tf installed here (its ``ops`` folder,
    read without importing it), else those of 1.28.8."""
    spec = importlib.util.find_spec("onnx2tf")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "ops") if spec and spec.submodule_search_locations else None
    if folder is None or not os.path.isdir(folder):
        return ONNX2TF_OPS
    # one module per op type, imported by name (``_Loop.py`` is not reachable as ``Loop``; ``Input`` is no op)
    return frozenset(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_") and f != "Input.py")


def auto_hint(op_types: list[str]) -> str:
    """For an unsupported-ops error: point at ``--backend auto`` when onnx2tf converts every one
    of them (a custom-domain op, ``domain::Op``, it never does)."""
    if not op_types or not set(op_types) <= onnx2tf_ops():
        return ""
    ops = ", ".join(dict.fromkeys(op_types))
    how = "" if importlib.util.find_spec("onnx2tf") is not None else f"; {PIP}"
    return f"onnx2tf converts {ops}: --backend auto hands such a model to it and verifies its files as ours{how}"


# what onnx2tf 1.28.8 imports when it starts (module -> the package that installs it); a missing
# one would end its run with a ModuleNotFoundError after the model was loaded
ONNX2TF_IMPORTS = {"onnx2tf": "onnx2tf==1.28.8", "tensorflow": "tensorflow-cpu", "tf_keras": "tf-keras", "onnx": "onnx",
                   "onnx_graphsurgeon": "onnx-graphsurgeon", "sng4onnx": "sng4onnx", "psutil": "psutil",
                   "requests": "requests", "flatbuffers": "flatbuffers", "ai_edge_litert": "ai-edge-litert"}
# run in the interpreter that will run onnx2tf: the modules it lacks, and its TensorFlow's version
_PROBE = """import importlib.metadata as m, importlib.util as u, json, sys
def v(*names):
    for n in names:
        try:
            return m.version(n)
        except m.PackageNotFoundError:
            pass
print(json.dumps({"missing": [x for x in sys.argv[1:] if u.find_spec(x) is None], "tf": v("tensorflow-cpu", "tensorflow")}))
"""


def find_interpreter(python: str | None) -> str:
    """The interpreter that runs onnx2tf: ``python`` when given (its pins may clash with ours),
    else this one. One line naming the exact packages it lacks (and how to install them) when
    onnx2tf or anything it imports at start is missing."""
    import json

    where = "this interpreter" if python is None else f"--onnx2tf-python {python}"
    if python is not None and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ConvertError(f"--onnx2tf-python {python}: no such interpreter")
    exe = python or sys.executable
    r = subprocess.run([exe, "-c", _PROBE, *ONNX2TF_IMPORTS], capture_output=True, text=True, env=_env(exe), timeout=120)
    try:
        probe = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ConvertError(f"{where}: could not ask it which packages it has ({' '.join(r.stderr.split())[:200]})") from None
    missing = [ONNX2TF_IMPORTS[mod] for mod in probe["missing"]]
    if not missing:
        return exe
    raise ConvertError(f"--backend onnx2tf: {where} lacks {', '.join(missing)} (what onnx2tf 1.28.8 imports): "
                       f"{install_command(missing, probe['tf'], extra=python is None)}{' there' if python else ''}")


# installed by the onnx2tf extra (pyproject.toml) besides what graph-convert itself needs
EXTRA = ("onnx2tf==1.28.8", "onnx-graphsurgeon", "sng4onnx", "psutil")


def install_command(missing: list[str], tf_version: str | None, extra: bool) -> str:
    """The pip command(s) that install ``missing``: the extra where it holds them (``extra``:
    graph-convert's own interpreter), else the packages by name. tf-keras declares a dependency
    on the ``tensorflow`` package, which would be installed beside ``tensorflow-cpu`` (two
    distributions writing one module tree), so it is installed without its dependencies, at the
    installed TensorFlow's version (what the extra cannot say)."""
    rest = [p for p in missing if p != "tf-keras"]
    cmds = []
    if rest:
        cmds.append(PIP if extra and set(rest) <= set(EXTRA) else "pip install " + " ".join(f"'{p}'" if "=" in p else p for p in rest))
    if "tf-keras" in missing:
        major_minor = ".".join((tf_version or "2.21").split(".")[:2])
        cmds.append(f"pip install --no-deps 'tf-keras=={major_minor}.*'")
    return " && ".join(cmds)


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


def static_batch(cand: Candidate) -> int | None:
    """The batch (axis 0) a file's inputs fix, or None when it is free (``-1`` / ``None``) in any."""
    sizes = [i.shape[0] for i in cand.inputs if i.shape]
    return None if not sizes or any(v is None for v in sizes) else int(sizes[0])


def load_for_gate(path: str) -> Candidate:
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
        figures[key], pairs = gate(load_for_gate(path), verifier, graph, shapes, model, label)
        io[key] = [p.as_dict() for p in pairs]
    return paths, figures, io
