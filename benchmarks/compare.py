"""Side-by-side benchmark: graph-convert vs onnx2tf on the same ONNX files.

For every model in ``models/`` (``models.MODELS`` first, then any other module there with
``make()`` and ``INPUT_SHAPE``; and a few torchvision nets when torchvision is importable) this
exports ONE self-contained ONNX file, converts it with graph-convert and with onnx2tf (each in a
subprocess, ``--runs`` times, interleaved), and prints one table:

  success, conversion wall time (median) and ratio ours/theirs, TRANSPOSE ops and total ops in the
  float32 .tflite, max abs error of each .tflite against ONNX Runtime on the same random input,
  TFLite latency at 1 thread (median) and ratio, peak RSS of the conversion.

The table, versions, machine and a profile of one of our conversions go to benchmarks/RESULTS.md
(a hand-written block between ``<!-- notes:begin -->`` and ``<!-- notes:end -->`` in that file
is kept across runs).

    python benchmarks/compare.py                       # everything, 3 runs each
    python benchmarks/compare.py --models resnet_style --runs 5
    python benchmarks/compare.py --skip-onnx2tf
    python benchmarks/compare.py --onnx2tf-python /path/to/venv/bin/python

onnx2tf lives in its own interpreter (it pins TF/protobuf versions of its own); see
benchmarks/README.md for the install commands. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_ONNX2TF_PYTHON = "/tmp/venv_onnx2tf/bin/python"
CALIB_NAME = "calibration_image_sample_data_20x128x128x3_float32.npy"
TORCHVISION_MODELS = {  # name -> input shape; built with weights=None (nothing is downloaded)
    "resnet18": (1, 3, 224, 224),
    "mobilenet_v2": (1, 3, 224, 224),
}
# channels-last permutation of a channels-first tensor, by rank
NHWC = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}
NOTES_BEGIN, NOTES_END = "<!-- notes:begin -->", "<!-- notes:end -->"


# --------------------------------------------------------------------------------------------
# subprocess with wall time and peak RSS


@dataclass
class Run:
    ok: bool
    rc: int | None
    wall: float
    peak_rss_mb: float
    cpu: float  # user + system seconds of the process and its reaped children
    log: str
    note: str = ""


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_measured(cmd: list[str], cwd: str, env: dict[str, str], log_path: str, timeout: float,
                 memory_cap: float | None = None) -> Run:
    """Run ``cmd``; wall time from spawn to exit; peak RSS from wait4() of that child.
    ``memory_cap`` (bytes): the run is stopped (SIGKILL to its process group, noted) when the RSS
    of all its processes together passes it, before it can take the machine down.

    ru_maxrss of a reaped child is the max over the child and every descendant it reaped
    (onnx2tf's onnxsim subprocesses included): the largest single process, as /usr/bin/time -v.
    Linux carries a forked child's high-water mark (the parent's RSS at fork) across exec, so a
    direct child of this (by then large) process would report at least our own RSS: the command
    runs under GNU time, forked from that small process, and its figure is the one taken."""
    from graph_convert.batch.runner import session_rss  # the batch runner's memory limit reads the same figure

    rss_file = log_path + ".maxrss"
    wrapped = [GNU_TIME, "-f", "%M", "-o", rss_file, *cmd] if GNU_TIME else cmd
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        note, polls, capped = "", 0, 0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            polls += 1
            if time.perf_counter() - t0 > timeout:
                note = f"timeout after {timeout:.0f}s"
            elif memory_cap is not None and polls % 50 == 0:
                capped = max(capped, session_rss(p.pid))
                if capped > memory_cap:
                    note = f"stopped at the {memory_cap / 1e9:.3g} GB memory cap after {time.perf_counter() - t0:.0f}s"
            if note:
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    peak = ru.ru_maxrss / 1024.0
    if GNU_TIME:
        try:
            with open(rss_file) as f:
                peak = float(f.read().strip().splitlines()[-1]) / 1024.0
        except (OSError, ValueError, IndexError):
            pass  # killed before GNU time wrote it: keep the (upper bound) figure from wait4
    if memory_cap is not None:  # killed at the cap: GNU time wrote nothing, the session's sum is the figure
        peak = max(peak, capped / 2**20)
    return Run(p.returncode == 0 and not note, p.returncode, wall, peak, ru.ru_utime + ru.ru_stime, log_path, note)


def log_tail(path: str, n: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in lines]
    return " | ".join(lines[-n:])[:300]


# --------------------------------------------------------------------------------------------
# models and ONNX


def bundled_models() -> list[str]:
    """models.MODELS first, then every other module in models/ that has make() and INPUT_SHAPE."""
    import importlib
    import pkgutil

    import graph_convert_models as models

    names = list(models.MODELS)
    for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda i: i.name):
        if info.name in names or info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"graph_convert_models.{info.name}")
        except Exception:
            continue
        if callable(getattr(mod, "make", None)) and hasattr(mod, "INPUT_SHAPE"):
            names.append(info.name)
    return names


def model_list(requested: list[str] | None) -> tuple[list[str], list[str]]:
    """(names to run, notes). Bundled names as in models/; torchvision ones as tv:NAME."""
    bundled = bundled_models()
    notes = []
    try:
        import torchvision  # noqa: F401

        tv = [f"tv:{n}" for n in TORCHVISION_MODELS]
    except Exception as e:  # not installed, or a broken install: the bundled models still run
        tv = []
        notes.append(f"torchvision not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                     f"torchvision models skipped")
    if not requested:
        return bundled + tv, notes
    out = []
    for name in requested:
        if name in bundled or (name.startswith("tv:") and name in tv):
            out.append(name)
        elif name.startswith("tv:") and name[3:] in TORCHVISION_MODELS:
            notes.append(f"{name}: skipped (torchvision not importable)")
        else:
            raise SystemExit(f"--models: unknown model {name!r} (bundled: {', '.join(bundled)}; "
                             f"torchvision: {', '.join('tv:' + n for n in TORCHVISION_MODELS)})")
    return out, notes


def load_model(name: str):
    import graph_convert_models as models

    if name.startswith("tv:"):
        import torchvision

        net = getattr(torchvision.models, name[3:])(weights=None).eval()
        return net, TORCHVISION_MODELS[name[3:]]
    return models.load(name)


def example_inputs(name: str, shape) -> tuple:
    """The model module's own ``example_inputs()`` when it has one (e.g. token ids + mask),
    else one seeded standard-normal tensor of INPUT_SHAPE."""
    import importlib

    import torch

    if not name.startswith("tv:"):
        mod = importlib.import_module(f"graph_convert_models.{name}")
        if callable(getattr(mod, "example_inputs", None)):
            ex = mod.example_inputs()
            return tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)
    torch.manual_seed(0)
    return (torch.randn(*shape),)


def export_onnx(name: str, path: str) -> tuple[str, list[np.ndarray]]:
    """Export with graph_convert.conversion.export.export, then store as one self-contained file.
    Returns (exporter used, the example inputs as arrays)."""
    import onnx

    from graph_convert.conversion.export import export

    module, shape = load_model(name)
    args = example_inputs(name, shape)
    tmp = path + ".export.onnx"
    kind = export(module, args, tmp)
    model = onnx.load(tmp)  # pulls in tmp.data when the exporter wrote external data
    onnx.save(model, path, save_as_external_data=False)
    for p in (tmp, tmp + ".data"):
        if os.path.exists(p):
            os.remove(p)
    return kind, [a.detach().cpu().numpy() for a in args]


def ort_reference(path: str, seed: int, examples: list[np.ndarray] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str], list[str]]:
    """Feeds (seeded random floats; non-float inputs from the model's example inputs when their
    shapes match, else small random ints) and ORT's outputs on them."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    rng = np.random.default_rng(seed)
    graph_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    examples = examples if examples is not None and len(examples) == len(graph_inputs) else None
    for i, vi in enumerate(graph_inputs):
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim)
        dt = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if dt.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dt)
        elif examples is not None and tuple(examples[i].shape) == shape:
            feeds[vi.name] = examples[i].astype(dt)
        else:
            feeds[vi.name] = rng.integers(0, 8, shape).astype(dt)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(out_names, sess.run(out_names, feeds)))
    return feeds, outs, list(feeds), out_names


# --------------------------------------------------------------------------------------------
# TFLite: I/O mapping, error, ops, latency


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _perm_for(src_shape: tuple, tfl_shape: tuple, prefer_nhwc: bool, known: tuple | None = None) -> tuple | None:
    """Permutation p with src.transpose(p).shape == tfl_shape (None = identity); raises if none."""
    src_shape, tfl_shape = tuple(src_shape), tuple(int(d) for d in tfl_shape)
    if known:
        if tuple(src_shape[i] for i in known) != tfl_shape:
            raise ValueError(f"recorded layout perm {known} does not map {src_shape} to {tfl_shape}")
        return tuple(known)
    cl = NHWC.get(len(src_shape))
    same = src_shape == tfl_shape
    nhwc = cl is not None and tuple(src_shape[i] for i in cl) == tfl_shape
    if nhwc and (prefer_nhwc or not same):
        return cl
    if same:
        return None
    raise ValueError(f"cannot map source shape {src_shape} to TFLite shape {tfl_shape}")


class TFLiteModel:
    """A float32 .tflite with its I/O aligned to the ONNX model's (index, perm source->tflite)."""

    def __init__(self, path: str, onnx_in: list[str], onnx_out: list[str], src_in: dict, src_out: dict, *,
                 prefer_nhwc: bool, io_report: dict | None = None, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self.interp = Interpreter(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()  # raises for Select-TF (Flex) ops: this runtime has no Flex delegate
        in_d, out_d = self.interp.get_input_details(), self.interp.get_output_details()
        sigs = self.interp.get_signature_list()
        self.inputs, self.outputs = [], []
        if io_report is not None and "serving_default" in sigs:  # ours: named signature I/O
            r = self.interp.get_signature_runner("serving_default")
            si, so = r.get_input_details(), r.get_output_details()
            for io, names, src, lst, sd in (("inputs", onnx_in, src_in, self.inputs, si), ("outputs", onnx_out, src_out, self.outputs, so)):
                by_name = {e["name"]: e for e in io_report[io]}
                for n in names:
                    e = by_name[n]
                    d = sd[e["tf_name"]]
                    lst.append((d["index"], _perm_for(src[n].shape, d["shape"], False, tuple(e["layout_perm"] or ()) or None)))
        else:  # onnx2tf: inputs by (sanitized) name else order, outputs in order; layout by shape
            names_d = {_sanitize(d["name"].split(":")[0]): d for d in in_d}
            for i, n in enumerate(onnx_in):
                d = names_d.get(_sanitize(n)) or in_d[i]
                self.inputs.append((d["index"], _perm_for(src_in[n].shape, d["shape"], prefer_nhwc)))
            left = list(out_d)
            for n in onnx_out:
                for d in left:
                    try:
                        p = _perm_for(src_out[n].shape, d["shape"], prefer_nhwc)
                    except ValueError:
                        continue
                    self.outputs.append((d["index"], p))
                    left.remove(d)
                    break
                else:
                    raise ValueError(f"no TFLite output matches ONNX output {n!r} {src_out[n].shape}")

    def set_inputs(self, feeds: dict, onnx_in: list[str]) -> None:
        for n, (idx, p) in zip(onnx_in, self.inputs):
            x = feeds[n] if p is None else np.ascontiguousarray(np.transpose(feeds[n], p))
            self.interp.set_tensor(idx, x)

    def max_abs_error(self, feeds: dict, ref: dict, onnx_in: list[str], onnx_out: list[str]) -> float:
        self.set_inputs(feeds, onnx_in)
        self.interp.invoke()
        err = 0.0
        for n, (idx, p) in zip(onnx_out, self.outputs):
            y = self.interp.get_tensor(idx)
            r = ref[n] if p is None else np.transpose(ref[n], p)
            err = max(err, float(np.max(np.abs(y.astype(np.float64) - r.astype(np.float64)))))
        return err


def latencies(models: list[TFLiteModel], feeds, onnx_in, iters: int, warmup: int, rounds: int = 20,
              budget_s: float = 40.0) -> list[float]:
    """Median invoke() time (ms) per model; models interleaved in `rounds` blocks to share drift.
    Big models get fewer invokes (and warm-ups): about ``budget_s`` seconds in all, at least 2 per block."""
    for m in models:
        m.set_inputs(feeds, onnx_in)
        t = time.perf_counter()
        m.interp.invoke()
        one = time.perf_counter() - t
        cap = max(2 * rounds, int(budget_s / max(one, 1e-6) / len(models)))
        iters = min(iters, cap)
        for _ in range(min(warmup, max(2, cap // 20))):
            m.interp.invoke()
    samples: list[list[float]] = [[] for _ in models]
    per = max(1, iters // rounds)
    for _ in range(rounds):
        for k, m in enumerate(models):
            inv = m.interp.invoke
            for _ in range(per):
                t = time.perf_counter_ns()
                inv()
                samples[k].append((time.perf_counter_ns() - t) / 1e6)
    return [statistics.median(s) for s in samples]


# --------------------------------------------------------------------------------------------
# the two converters


def ours_cmd(python: str, onnx_path: str, out: str) -> list[str]:
    return [python, "-m", "graph_convert.cli", "convert", onnx_path, "-o", out, "-q"]


def theirs_cmd(python: str, onnx_path: str, out: str) -> list[str]:
    # defaults give saved_model + {name}_float32.tflite (+ a float16 .tflite it always writes);
    # -n: errors only (ours runs with -q). No accuracy check (-cotof) — onnx2tf's default.
    return [python, "-m", "onnx2tf", "-i", onnx_path, "-o", out, "-n"]


def ours_env(python: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def theirs_env(python: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # onnx2tf runs the `onnxsim` executable by name: put its interpreter's bin dir first
    env["PATH"] = os.path.dirname(os.path.abspath(python)) + os.pathsep + env.get("PATH", "")
    env.pop("VIRTUAL_ENV", None)
    return env


def find_theirs_tflite(out: str) -> str | None:
    if not os.path.isdir(out):
        return None
    hits = sorted(f for f in os.listdir(out) if f.endswith("_float32.tflite"))
    return os.path.join(out, hits[0]) if hits else None


def interpreter_versions(python: str, dists: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, platform, sys\n"
            "d = {}\n"
            f"for n in {dists!r}:\n"
            "    try: d[n] = m.version(n)\n"
            "    except Exception: pass\n"
            "d['python'] = platform.python_version()\n"
            "print(json.dumps(d))\n")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, env=theirs_env(python))
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception:
        return {}


# --------------------------------------------------------------------------------------------
# profile of one of our conversions


def profile_ours(python: str, onnx_path: str, work: str, top: int = 24, reps: int = 3) -> dict[str, Any]:
    """Where one conversion's time goes: process phases, -X importtime, cProfile, report.json timings."""
    os.makedirs(work, exist_ok=True)
    res: dict[str, Any] = {}
    env = ours_env(python)
    # 0) process phases: interpreter start, `import graph_convert.cli`, cli.main(), interpreter exit
    phases: dict[str, list[float]] = {"interpreter start": [], "import graph_convert.cli": [], "cli.main() (convert)": [],
                                      "interpreter exit (after main returned)": []}
    for i in range(reps):
        out = os.path.join(work, f"phases{i}")
        shutil.rmtree(out, ignore_errors=True)
        code = ("import sys, time\nt0 = time.time()\nfrom graph_convert import cli\nt1 = time.time()\n"
                f"rc = cli.main(['convert', {onnx_path!r}, '-o', {out!r}, '-q'])\n"
                "print('PHASES', t0, t1, time.time(), flush=True)\nsys.exit(rc)\n")
        t_spawn = time.time()
        p = subprocess.run([python, "-c", code], cwd=work, env=env, capture_output=True, text=True)
        t_end = time.time()
        m = re.search(r"PHASES (\S+) (\S+) (\S+)", p.stdout)
        if p.returncode == 0 and m:
            t0, t1, t2 = map(float, m.groups())
            for k, v in zip(phases, (t0 - t_spawn, t1 - t0, t2 - t1, t_end - t2)):
                phases[k].append(v)
    res["phases"] = {k: statistics.median(v) for k, v in phases.items() if v}
    # 1) import time
    out = os.path.join(work, "importtime")
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([python, "-X", "importtime", *ours_cmd(python, onnx_path, out)[1:]], cwd=work, env=env,
                       capture_output=True, text=True)
    rows = []
    for ln in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", ln)
        if m:
            rows.append((int(m.group(2)) / 1e6, len(m.group(3)) // 2, m.group(4)))
    res["imports_top"] = sorted([r for r in rows if r[1] == 0], reverse=True)[:6]
    res["imports_total"] = sum(r[0] for r in rows if r[1] == 0)
    interesting = ("tensorflow", "keras", "networkx", "onnx", "onnxruntime", "numpy", "ai_edge_litert", "torch")
    res["imports_key"] = [(mod, cum) for cum, _, mod in rows if mod in interesting]
    # 2) cProfile
    out = os.path.join(work, "cprofile")
    shutil.rmtree(out, ignore_errors=True)
    prof = os.path.join(work, "convert.prof")
    subprocess.run([python, "-m", "cProfile", "-o", prof, *ours_cmd(python, onnx_path, out)[1:]], cwd=work, env=env,
                   capture_output=True, text=True)
    try:
        import io
        import pstats

        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("cumulative").print_stats(
            r"graph_convert/|passes/|lite/python/lite\.py.*\((convert|from_saved_model)|saved_model/save\.py.*\(save\)|"
            r"saved_model/load\.py.*\(load\)|onnxruntime_inference_collection.*\((run|__init__)\)|"
            r"polymorphic_function\.py.*\(get_concrete_function\)|onnx/checker", top)
        lines = s.getvalue().splitlines()
        i = next((k for k, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), None)
        text = "\n".join(ln for ln in lines[i:] if ln.strip()) if i is not None else s.getvalue()
        res["cprofile"] = text.replace(REPO + "/", "").replace(os.path.dirname(os.path.dirname(os.__file__)) + "/", "")
    except Exception as e:
        res["cprofile"] = f"(no profile: {type(e).__name__}: {e})"
    try:
        with open(os.path.join(out, "report.json")) as f:
            res["timings"] = json.load(f)["timings_seconds"]
    except Exception:
        res["timings"] = {}
    return res


# --------------------------------------------------------------------------------------------
# main


@dataclass
class Result:
    model: str
    exporter: str = ""
    ours: list[Run] = field(default_factory=list)
    theirs: list[Run] = field(default_factory=list)
    ours_tfl: dict[str, Any] = field(default_factory=dict)
    theirs_tfl: dict[str, Any] = field(default_factory=dict)
    ours_timings: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _med(xs):
    return statistics.median(xs) if xs else None


def _fmt(x, spec="{:.2f}", none="—"):
    return none if x is None else spec.format(x)


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def op_counts(path: str) -> dict[str, int]:
    """Operators of the flatbuffer as written (read before allocate_tensors(), so no DELEGATE nodes)."""
    from ai_edge_litert.interpreter import Interpreter

    ops = [d["op_name"] for d in Interpreter(model_path=path)._get_ops_details()]
    return dict(sorted({o: ops.count(o) for o in set(ops)}.items()))


def analyse(path: str, onnx_in, onnx_out, feeds, ref, prefer_nhwc: bool, io_report=None) -> tuple[dict, TFLiteModel | None]:
    info: dict[str, Any] = {"bytes": os.path.getsize(path)}
    try:
        ops = op_counts(path)
        info.update(op_counts=ops, ops=sum(ops.values()), transposes=ops.get("TRANSPOSE", 0))
        flex = sorted(o for o in ops if o.startswith("Flex") or o in ("CUSTOM", "DELEGATE"))
        if flex:
            info["flex"] = flex
    except Exception as e:
        info["error"] = f"reading ops: {type(e).__name__}: {e}"
        return info, None
    try:
        m = TFLiteModel(path, onnx_in, onnx_out, feeds, ref, prefer_nhwc=prefer_nhwc, io_report=io_report)
        info["max_abs"] = m.max_abs_error(feeds, ref, onnx_in, onnx_out)
        return info, m
    except Exception as e:
        msg = " ".join(str(e).split())
        if "Flex delegate" in msg or "Select TensorFlow op" in msg:
            msg = f"not runnable in LiteRT without the Flex (Select TF ops) delegate: {', '.join(info.get('flex', []))}"
        info["error"] = f"{type(e).__name__}: {msg[:300]}"
        return info, None


def bench_model(name: str, args, work: str) -> Result:
    res = Result(name)
    mdir = os.path.join(work, name.replace(":", "_"))
    shutil.rmtree(mdir, ignore_errors=True)
    os.makedirs(mdir)
    onnx_path = os.path.join(mdir, "model.onnx")
    try:
        res.exporter, examples = export_onnx(name, onnx_path)
    except Exception as e:
        res.notes.append(f"export failed: {type(e).__name__}: {e}")
        return res
    np.save(os.path.join(mdir, CALIB_NAME), np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    feeds, ref, onnx_in, onnx_out = ort_reference(onnx_path, args.seed, examples)

    last_ok = {"ours": None, "theirs": None}
    for i in range(args.runs):
        for who in ("ours", "theirs"):
            if who == "theirs" and args.skip_onnx2tf:
                continue
            rdir = os.path.join(mdir, f"{who}_run{i}")
            os.makedirs(rdir)
            src = os.path.join(rdir, "model.onnx")  # a fresh copy each run: onnxsim rewrites its input in place
            shutil.copyfile(onnx_path, src)
            out = os.path.join(rdir, "out")
            if who == "ours":
                r = run_measured(ours_cmd(args.ours_python, src, out), rdir, ours_env(args.ours_python),
                                 os.path.join(rdir, "log.txt"), args.timeout)
                r.ok = r.ok and os.path.isfile(os.path.join(out, "model_float32.tflite"))
                if r.ok:
                    with open(os.path.join(out, "report.json")) as f:
                        rep = json.load(f)
                    res.ours_timings.append(rep.get("timings_seconds", {}))
                    last_ok["ours"] = (os.path.join(out, "model_float32.tflite"), rep["io"])
                res.ours.append(r)
            else:
                os.symlink(os.path.join(mdir, CALIB_NAME), os.path.join(rdir, CALIB_NAME))
                r = run_measured(theirs_cmd(args.onnx2tf_python, src, out), rdir, theirs_env(args.onnx2tf_python),
                                 os.path.join(rdir, "log.txt"), args.timeout)
                tfl = find_theirs_tflite(out)
                r.ok = r.ok and tfl is not None
                if r.ok:
                    last_ok["theirs"] = (tfl, None)
                res.theirs.append(r)
            status = "ok" if r.ok else f"FAILED rc={r.rc} {r.note} {log_tail(r.log)}"
            print(f"  {name:24s} {who:6s} run {i + 1}/{args.runs}: {r.wall:6.2f}s  peak RSS {r.peak_rss_mb:6.0f} MB  {status}",
                  flush=True)

    lite = []
    if last_ok["ours"]:
        res.ours_tfl, m = analyse(last_ok["ours"][0], onnx_in, onnx_out, feeds, ref, False, last_ok["ours"][1])
        lite.append(("ours", m))
    if last_ok["theirs"]:
        res.theirs_tfl, m = analyse(last_ok["theirs"][0], onnx_in, onnx_out, feeds, ref, True)
        lite.append(("theirs", m))
    lite = [(w, m) for w, m in lite if m is not None]
    if lite:
        lat = latencies([m for _, m in lite], feeds, onnx_in, args.latency_iters, args.latency_warmup)
        for (w, _), v in zip(lite, lat):
            (res.ours_tfl if w == "ours" else res.theirs_tfl)["latency_ms"] = v
    for who, runs in (("ours", res.ours), ("onnx2tf", res.theirs)):
        bad = [r for r in runs if not r.ok]
        if bad:
            res.notes.append(f"{who}: {len(bad)}/{len(runs)} runs failed (rc={bad[0].rc} {bad[0].note}): {log_tail(bad[0].log)}")
    for who, t in (("ours", res.ours_tfl), ("onnx2tf", res.theirs_tfl)):
        if "error" in t:
            res.notes.append(f"{who} .tflite analysis failed: {t['error']}")
    return res


def table(results: list[Result], skip_theirs: bool) -> str:
    hdr = ["model", "ok ours/o2t", "conv s ours", "conv s o2t", "ratio", "CPU s ours/o2t", "TRANSPOSE ours/o2t", "ops ours/o2t",
           "max abs err ours", "max abs err o2t", "lat ms ours", "lat ms o2t", "ratio", "peak RSS MB ours/o2t"]
    rows = [hdr]
    for r in results:
        ok_o = sum(x.ok for x in r.ours)
        ok_t = sum(x.ok for x in r.theirs)
        w_o = _med([x.wall for x in r.ours if x.ok])
        w_t = _med([x.wall for x in r.theirs if x.ok])
        m_o = _med([x.peak_rss_mb for x in r.ours if x.ok])
        m_t = _med([x.peak_rss_mb for x in r.theirs if x.ok])
        c_o = _med([x.cpu for x in r.ours if x.ok])
        c_t = _med([x.cpu for x in r.theirs if x.ok])
        o, t = r.ours_tfl, r.theirs_tfl
        flag = lambda d: " (Flex)" if d.get("flex") else ""  # noqa: E731
        rows.append([
            r.model,
            f"{ok_o}/{len(r.ours)}{flag(o)} / " + ("skip" if skip_theirs else f"{ok_t}/{len(r.theirs)}{flag(t)}"),
            _fmt(w_o), _fmt(w_t), _fmt(_ratio(w_o, w_t)),
            f"{_fmt(c_o, '{:.1f}')} / {_fmt(c_t, '{:.1f}')}",
            f"{o.get('transposes', '—')} / {t.get('transposes', '—')}",
            f"{o.get('ops', '—')} / {t.get('ops', '—')}",
            _fmt(o.get("max_abs"), "{:.1e}"), _fmt(t.get("max_abs"), "{:.1e}"),
            _fmt(o.get("latency_ms"), "{:.3f}"), _fmt(t.get("latency_ms"), "{:.3f}"),
            _fmt(_ratio(o.get("latency_ms"), t.get("latency_ms"))),
            f"{_fmt(m_o, '{:.0f}')} / {_fmt(m_t, '{:.0f}')}",
        ])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(hdr))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    out = []
    for r in results:
        out.append(f"**{r.model}** (exported with the {r.exporter or '?'} exporter)")
        for who, runs in (("ours", r.ours), ("onnx2tf", r.theirs)):
            if runs:
                out.append(f"- {who} wall s per run: " + ", ".join(f"{x.wall:.2f}" + ("" if x.ok else " (failed)") for x in runs)
                           + "; CPU s: " + ", ".join(f"{x.cpu:.1f}" for x in runs)
                           + "; peak RSS MB: " + ", ".join(f"{x.peak_rss_mb:.0f}" for x in runs))
        for who, t in (("ours", r.ours_tfl), ("onnx2tf", r.theirs_tfl)):
            if t.get("op_counts"):
                out.append(f"- {who} .tflite ops ({t['bytes']} bytes): " + ", ".join(f"{k} {v}" for k, v in t["op_counts"].items()))
        for n in r.notes:
            out.append(f"- note: {n}")
        out.append("")
    return "\n".join(out)


def stage_table(results: list[Result]) -> str:
    keys: list[str] = []
    for r in results:
        for t in r.ours_timings:
            keys += [k for k in t if k not in keys]
    if not keys:
        return ""
    rows = [["stage (report.json timings_seconds, median)"] + [r.model for r in results]]
    for k in keys:
        rows.append([k] + [_fmt(_med([t[k] for t in r.ours_timings if k in t]), "{:.3f}") for r in results])
    rows.append(["process wall (median)"] + [_fmt(_med([x.wall for x in r.ours if x.ok]), "{:.3f}") for r in results])
    rows.append(["outside convert(): interpreter start, CLI imports, exit"] +
                [_fmt(_diff(_med([x.wall for x in r.ours if x.ok]), _med([t.get("total") for t in r.ours_timings if "total" in t])), "{:.3f}")
                 for r in results])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _diff(a, b):
    return None if a is None or b is None else a - b


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
            mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    except Exception:
        pass
    n_aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"nproc {n_aff} ({os.cpu_count()} online), {cpu}{mem}, {platform.system()} {platform.release()}"


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except Exception:
        return "?"


def render(results, args, ours_v, theirs_v, model_notes, prof, tbl, old_notes) -> str:
    import graph_convert

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    L = ["# graph-convert vs onnx2tf", "",
         f"Generated by `python benchmarks/compare.py{' ' + ' '.join(args.argv) if args.argv else ''}` on {now}.", "",
         f"- graph_convert {graph_convert.__version__} (git {git_rev()}), python {ours_v.get('python')}, "
         f"TensorFlow {ours_v.get('tensorflow-cpu') or ours_v.get('tensorflow')}, ONNX Runtime {ours_v.get('onnxruntime')}, "
         f"onnx {ours_v.get('onnx')}, torch {ours_v.get('torch')}, ai-edge-litert {ours_v.get('ai-edge-litert')}"]
    if args.skip_onnx2tf:
        L.append("- onnx2tf: skipped (--skip-onnx2tf)")
    else:
        L.append(f"- onnx2tf {theirs_v.get('onnx2tf', '?')} ({args.onnx2tf_python}): python {theirs_v.get('python')}, "
                 f"TensorFlow {theirs_v.get('tensorflow-cpu') or theirs_v.get('tensorflow')}, tf-keras {theirs_v.get('tf-keras') or theirs_v.get('tf_keras')}, "
                 f"onnxsim {theirs_v.get('onnxsim', 'not installed')}, ONNX Runtime {theirs_v.get('onnxruntime')}, onnx {theirs_v.get('onnx')}")
    L += [f"- machine: {machine()}; load average (1 min) before/after the conversions: {args.load[0]:.2f} / {args.load[1]:.2f}",
          f"- {args.runs} conversion runs per tool and model (interleaved), median shown; TFLite latency: ai_edge_litert "
          f"Interpreter, num_threads=1 (default XNNPACK delegate), {args.latency_warmup} warm-up invokes, median of "
          f"{args.latency_iters} invokes interleaved between the two files; error: max |tflite − ORT| on one seeded "
          f"standard-normal input (seed {args.seed}), NCHW inputs/outputs mapped to NHWC where the .tflite has them so.", ""]
    for n in model_notes:
        L.append(f"- {n}")
    if model_notes:
        L.append("")
    L += [tbl, "",
          "Columns: `ok` = runs that exited 0 and wrote a float32 .tflite; `conv s` = wall time of the whole conversion "
          "process (interpreter start to exit; ours includes its ORT/TF/TFLite verification, onnx2tf runs onnxsim and "
          "also writes a float16 .tflite, which it cannot be told not to); ratios are ours/onnx2tf (< 1: we are faster / "
          "smaller); `CPU s` = user+system CPU seconds of the conversion (less sensitive than wall time to other load on the machine); "
          "`(Flex)` = the .tflite needs Select-TF (Flex) ops, which the stock LiteRT interpreter cannot run, so no error/latency; "
          "peak RSS = ru_maxrss of the converter process (largest single process incl. its reaped children).", "",
          "Commands: ours `python -m graph_convert.cli convert model.onnx -o out -q`; onnx2tf `python -m onnx2tf -i model.onnx -o out -n` "
          "(run in a directory holding a local calibration_image_sample_data_20x128x128x3_float32.npy, with its venv's bin/ on PATH so it finds onnxsim). "
          "Both get the same self-contained ONNX file (a fresh copy per run: onnxsim overwrites its input).", "",
          "## Per model", "", details(results)]
    st = stage_table(results)
    if st or prof:
        L += ["## Where the time goes (graph-convert)", ""]
    if st:
        L += ["Per-stage timings of the benchmark runs above (from each run's report.json):", "", st, ""]
    if prof:
        L += [f"Profile of one conversion ({prof['model']}):", ""]
        if prof.get("phases"):
            L.append("- process phases (median of 3 runs; `python -c` wrapper around `cli.main`): "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in prof["phases"].items()))
        if prof.get("imports_top"):
            L.append(f"- `python -X importtime` (inflates import time): top-level imports {prof['imports_total']:.2f} s; largest: "
                     + ", ".join(f"`{mod}` {cum:.2f} s" for cum, _, mod in prof["imports_top"]))
            if prof.get("imports_key"):
                L.append("  - where the big packages are first imported: " + ", ".join(f"`{m}` {c:.2f} s" for m, c in prof["imports_key"]))
        if prof.get("timings"):
            L.append("- report.json timings of the profiled (cProfile) run: " + ", ".join(f"{k} {v:.2f}" for k, v in prof["timings"].items()))
        if prof.get("cprofile"):
            L += ["", "cProfile, cumulative, filtered to our code and the big TF/ORT entry points:", "", "```", prof["cprofile"], "```", ""]
    L += [NOTES_BEGIN, old_notes.strip() if old_notes else "_(hand-written analysis goes here; kept across runs)_", NOTES_END, ""]
    return "\n".join(L)


def read_notes(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated subset (bundled names; torchvision ones as tv:resnet18)")
    ap.add_argument("--runs", type=int, default=3, help="conversion runs per tool and model (median; default 3)")
    ap.add_argument("--onnx2tf-python", default=DEFAULT_ONNX2TF_PYTHON, help=f"interpreter with onnx2tf (default {DEFAULT_ONNX2TF_PYTHON})")
    ap.add_argument("--skip-onnx2tf", action="store_true", help="run graph-convert only")
    ap.add_argument("--ours-python", default=sys.executable, help="interpreter for graph-convert (default: this one)")
    ap.add_argument("--latency-iters", type=int, default=1000, help="timed invokes per .tflite (in 20 interleaved blocks)")
    ap.add_argument("--latency-warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per conversion run")
    ap.add_argument("--workdir", default=os.path.join("/tmp", "graph_convert_bench"))
    ap.add_argument("--results", default=os.path.join(REPO, "benchmarks", "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--profile", default=None, help="model to profile (default: the first one); 'none' to skip")
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if args.runs < 3:
        print("note: fewer than 3 runs; medians are not robust", file=sys.stderr)
    if not args.skip_onnx2tf and not os.path.exists(args.onnx2tf_python):
        ap.error(f"--onnx2tf-python {args.onnx2tf_python}: no such interpreter (build it, see benchmarks/README.md, or --skip-onnx2tf)")

    names, model_notes = model_list(args.models.split(",") if args.models else None)
    for n in model_notes:
        print(f"note: {n}")
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    dists = ["tensorflow-cpu", "tensorflow", "onnxruntime", "onnx", "torch", "ai-edge-litert", "onnx2tf", "onnxsim",
             "tf-keras", "tf_keras", "protobuf", "numpy"]
    ours_v = interpreter_versions(args.ours_python, dists)
    theirs_v = {} if args.skip_onnx2tf else interpreter_versions(args.onnx2tf_python, dists)
    if not args.skip_onnx2tf and "onnx2tf" not in theirs_v:
        print(f"warning: onnx2tf not found in {args.onnx2tf_python}; its runs will fail", file=sys.stderr)

    results = []
    load0 = os.getloadavg()[0]
    for name in names:
        print(f"{name}:", flush=True)
        results.append(bench_model(name, args, work))
    args.load = (load0, os.getloadavg()[0])

    tbl = table(results, args.skip_onnx2tf)
    print()
    print(tbl)
    for r in results:
        for n in r.notes:
            print(f"  {r.model}: {n}")

    prof = None
    pname = args.profile or (names[0] if names else None)
    if pname and pname != "none":
        src = os.path.join(work, pname.replace(":", "_"), "model.onnx")
        if os.path.isfile(src):
            print(f"profiling one graph-convert conversion of {pname} ...", flush=True)
            prof = profile_ours(args.ours_python, src, os.path.join(work, "profile"))
            prof["model"] = pname
            if prof.get("timings"):
                print("  report.json timings: " + ", ".join(f"{k} {v:.2f}" for k, v in prof["timings"].items()))
            for k, v in prof.get("phases", {}).items():
                print(f"  {k}: {v:.2f} s")
    if not args.no_write:
        text = render(results, args, ours_v, theirs_v, model_notes, prof, tbl, read_notes(args.results))
        with open(args.results, "w") as f:
            f.write(text)
        print(f"wrote {args.results}")
    return 0 if all(r.ours and all(x.ok for x in r.ours) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
