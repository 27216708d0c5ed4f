"""Quantized TFLite side by side: file size, 1-thread latency and accuracy of graph-convert's
float32 / fp16 / int8 / int8-full models for the nets in ``models/``, next to onnx2tf's quantized
variants (``-oiqt``, its ``-cind`` fed the same calibration data) and ai-edge-quantizer's (run on our
float32 .tflite) when those are installed in their own interpreters.

    PYTHONPATH=. python benchmarks/quantize.py                         # every model, all tools found
    PYTHONPATH=. python benchmarks/quantize.py --models digits_cnn,resnet_style
    PYTHONPATH=. python benchmarks/quantize.py --skip-onnx2tf --skip-aeq

Data: ``digits_cnn`` is trained here (seconds, fixed seeds) and uses real data — calibration on 400
training images, evaluation on the 540 held-out test images, with label accuracy. The other nets
are untrained examples: calibration and evaluation on seeded random inputs, so their SQNR / top-1
agreement show numerical closeness only, never task accuracy.

Every figure is measured against ONNX Runtime running the same ONNX file in float32. Latency:
``ai_edge_litert`` Interpreter, ``num_threads=1``, warm-up, then the median of single invokes.
onnx2tf and ai-edge-quantizer run in subprocesses with their own interpreters (default
``/tmp/venv_onnx2tf/bin/python`` and ``/tmp/venv_q/bin/python``); missing ones are reported as
skipped. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_ONNX2TF_PYTHON = "/tmp/venv_onnx2tf/bin/python"
DEFAULT_AEQ_PYTHON = "/tmp/venv_q/bin/python"
O2T_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
RANDOM_CALIB, RANDOM_EVAL = 64, 32
OURS = {"float32": "model_float32.tflite", "fp16": "model_float16.tflite", "int8": "model_dynamic_range_quant.tflite",
        "int8-full": "model_full_integer_quant.tflite"}
# onnx2tf file suffix -> the variant of ours it corresponds to
ONNX2TF = {"float32": "_float32.tflite", "fp16": "_float16.tflite", "int8": "_dynamic_range_quant.tflite",
           "int8-full": "_integer_quant.tflite", "int8-full int8-io": "_full_integer_quant.tflite"}
AEQ = {"int8": "aeq_dynamic_wi8_afp32.tflite", "int8-full": "aeq_static_wi8_ai8.tflite"}

AEQ_WORKER = r'''
import json, sys, time, numpy as np
from ai_edge_quantizer import quantizer, recipe
f32, calib_npz, out_dir = sys.argv[1:4]
calib = dict(np.load(calib_npz))
n = len(next(iter(calib.values())))
times = {}
for fname, rc in (("aeq_dynamic_wi8_afp32.tflite", recipe.dynamic_wi8_afp32()), ("aeq_static_wi8_ai8.tflite", recipe.static_wi8_ai8())):
    t = time.perf_counter()
    q = quantizer.Quantizer(f32)
    q.load_quantization_recipe(rc)
    cal = q.calibrate({"serving_default": [{k: v[i] for k, v in calib.items()} for i in range(n)]}) if q.need_calibration else None
    data = bytes(q.quantize(cal, enable_progress_report=False).quantized_model)
    times[fname] = time.perf_counter() - t
    open(f"{out_dir}/{fname}", "wb").write(data)
print("AEQ_TIMES " + json.dumps(times))
'''


# --------------------------------------------------------------------------------------------
# data and models


def bundled_models() -> list[str]:
    import graph_convert_models as models

    return ["digits_cnn"] + models.MODELS + models.FAMILIES


def build(name: str, seed: int = 0) -> dict[str, Any]:
    """The module, an example input and calibration/eval arrays (source layout, one run per row)."""
    import torch

    if name == "digits_cnn":
        from graph_convert_models import digits_cnn

        module, d = digits_cnn.trained()
        return {"module": module, "example": torch.from_numpy(d.x_test[:1]), "calib": d.x_train[:400, None],
                "eval": d.x_test[:, None], "labels": d.y_test, "real": True}
    import graph_convert_models as models

    module, shape = models.load(name)
    rng = np.random.default_rng(seed)
    return {"module": module, "example": torch.randn(*shape), "labels": None, "real": False,
            "calib": rng.standard_normal((RANDOM_CALIB, *shape)).astype(np.float32),
            "eval": rng.standard_normal((RANDOM_EVAL, *shape)).astype(np.float32)}


def reference(onnx_path: str, name: str, runs: np.ndarray) -> list[np.ndarray]:
    from graph_convert.checks.equivalence import ort_session

    sess = ort_session(__import__("onnx").load(onnx_path))
    outs = [o.name for o in sess.get_outputs()]
    res = [sess.run(outs, {name: x}) for x in runs]
    return [np.stack([r[k] for r in res]) for k in range(len(outs))]


# --------------------------------------------------------------------------------------------
# measuring one .tflite


class _Runner:
    """Signature runner when the file has a signature (onnx2tf's float files have none)."""

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=path, num_threads=1)
        self.sig = self.interp.get_signature_runner() if self.interp.get_signature_list() else None
        if self.sig is None:
            self.interp.allocate_tensors()

    def get_input_details(self):
        return self.sig.get_input_details() if self.sig else {d["name"]: d for d in self.interp.get_input_details()}

    def get_output_details(self):
        return self.sig.get_output_details() if self.sig else {d["name"]: d for d in self.interp.get_output_details()}

    def __call__(self, **feeds):
        if self.sig:
            return self.sig(**feeds)
        for d in self.interp.get_input_details():
            self.interp.set_tensor(d["index"], feeds[d["name"]])
        self.interp.invoke()
        return {d["name"]: self.interp.get_tensor(d["index"]).copy() for d in self.interp.get_output_details()}


def _runner(path: str) -> _Runner:
    return _Runner(path)


def _prep(x: np.ndarray, detail: dict) -> np.ndarray:
    """Source-layout input -> what this model takes: NHWC if its shape says so; int8 quantized."""
    want = tuple(detail["shape"])
    if x.shape != want and x.ndim >= 3:
        moved = np.moveaxis(x, 1, -1)
        if moved.shape == want:
            x = moved
    if detail["dtype"] in (np.int8, np.uint8):
        s, z = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / s + z), info.min, info.max).astype(detail["dtype"])
    return np.ascontiguousarray(x, dtype=detail["dtype"])


def _post(y: np.ndarray, detail: dict, want: tuple) -> np.ndarray:
    y = np.asarray(y)
    if detail["dtype"] in (np.int8, np.uint8):
        s, z = detail["quantization"]
        y = (y.astype(np.float32) - z) * s
    if y.shape != want and y.ndim >= 3 and np.moveaxis(y, -1, 1).shape == want:
        y = np.moveaxis(y, -1, 1)
    return y


def measure(path: str, runs: np.ndarray, ref: list[np.ndarray], labels, iters: int) -> dict[str, Any]:
    from graph_convert.quantize import output_figures

    out: dict[str, Any] = {"bytes": os.path.getsize(path)}
    try:
        r = _runner(path)
        ins, outs = r.get_input_details(), r.get_output_details()
        if len(ins) != 1:
            return {**out, "error": f"{len(ins)} inputs (this benchmark feeds one)"}
        (in_name, in_detail), = ins.items()
        got: dict[str, list] = {k: [] for k in outs}
        for x in runs:
            res = r(**{in_name: _prep(x, in_detail)})
            for k in outs:
                got[k].append(res[k])
        feed = {in_name: _prep(runs[0], in_detail)}
        for _ in range(50):
            r(**feed)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            r(**feed)
            times.append(time.perf_counter() - t)
        out["ms"] = statistics.median(times) * 1e3
    except Exception as e:  # a tool's file that does not run is a result, not a crash of the benchmark
        return {**out, "error": " ".join(str(e).split())[:120]}
    # outputs by shape: onnx2tf renames outputs, ours keeps ONNX names; single-output nets are the norm
    figs = []
    keys = sorted(got, key=lambda k: k)
    pairs = list(zip(ref, keys)) if len(ref) == 1 else _match(ref, got, outs)
    for rf, k in pairs:
        y = np.stack([_post(v, outs[k], rf.shape[1:]) for v in got[k]])
        if y.shape != rf.shape:
            return {**out, "error": f"output shape {y.shape[1:]} vs {rf.shape[1:]}"}
        figs.append(output_figures(rf, y))
    out["sqnr_db"] = min(f["sqnr_db"] for f in figs)
    tops = [f["top1_agreement_pct"] for f in figs if "top1_agreement_pct" in f]
    out["top1_agree"] = min(tops) if tops else None
    if labels is not None:
        logits = np.stack([_post(v, outs[pairs[0][1]], ref[0].shape[1:]) for v in got[pairs[0][1]]])
        out["accuracy"] = float(np.mean(np.argmax(logits.reshape(len(labels), -1), -1) == labels) * 100)
    return out


def _match(ref, got, outs):
    pairs, free = [], list(got)
    for rf in ref:
        k = next((k for k in free if np.prod(outs[k]["shape"]) == np.prod(rf.shape[1:])), free[0])
        free.remove(k)
        pairs.append((rf, k))
    return pairs


# --------------------------------------------------------------------------------------------
# the tools


def run_ours(onnx_path: str, in_name: str, data, work: str) -> tuple[dict[str, str], dict[str, Any], str | None]:
    from graph_convert.conversion.pipeline import convert

    calib, ev = os.path.join(work, "calib.npz"), os.path.join(work, "eval.npz")
    np.savez(calib, **{in_name: data["calib"]})
    np.savez(ev, **{in_name: data["eval"]})
    out = os.path.join(work, "ours")
    t = time.perf_counter()
    err = None
    try:
        res = convert(onnx_path, None, out, overwrite=True, quantize="fp16,int8,int8-full", calibration=calib, eval_data=ev)
    except Exception as e:  # a refused int8-full fails the whole (atomic) run: redo the rest to show it
        err = f"{type(e).__name__}: {' '.join(str(e).split())}"
        try:
            res = convert(onnx_path, None, out, overwrite=True, quantize="fp16,int8", eval_data=ev)
        except Exception:
            return {}, {}, err
    rep = res.report
    rep["_seconds"] = time.perf_counter() - t
    rep["_int8_full_error"] = err
    return {v: os.path.join(out, f) for v, f in OURS.items() if os.path.exists(os.path.join(out, f))}, rep, None


def _nested(v: float, rank: int) -> str:
    return "[" * rank + repr(float(v)) + "]" * rank


def run_onnx2tf(python: str, onnx_path: str, in_name: str, calib_rw: np.ndarray, work: str) -> tuple[dict[str, str], str | None, float]:
    out = os.path.join(work, "onnx2tf")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    src = os.path.join(out, "m.onnx")
    shutil.copy(onnx_path, src)  # onnxsim rewrites its input in place
    npy = os.path.join(out, "calib.npy")
    np.save(npy, calib_rw)
    # onnx2tf fetches this sample from the network at run time unless it is in its working
    # directory (there is no network here); -cind below is what it calibrates with
    np.save(os.path.join(out, O2T_SAMPLE), np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    rank = calib_rw.ndim
    cmd = [python, "-m", "onnx2tf", "-i", src, "-o", os.path.join(out, "tf"), "-oiqt", "-n",
           "-cind", in_name, npy, _nested(0.0, rank), _nested(1.0, rank)]
    env = dict(os.environ, PATH=os.path.dirname(python) + os.pathsep + os.environ.get("PATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    t = time.perf_counter()
    with open(os.path.join(out, "log.txt"), "wb") as log:
        rc = subprocess.run(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800).returncode
    secs = time.perf_counter() - t
    files = {v: os.path.join(out, "tf", "m" + suf) for v, suf in ONNX2TF.items()}
    files = {v: p for v, p in files.items() if os.path.exists(p)}
    return files, (None if rc == 0 and files else f"exit {rc}, see {out}/log.txt"), secs


def run_aeq(python: str, float_tflite: str, tf_name: str, calib_rw: np.ndarray, work: str) -> tuple[dict[str, str], str | None, dict]:
    out = os.path.join(work, "aeq")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    calib = os.path.join(out, "calib.npz")
    np.savez(calib, **{tf_name: calib_rw[:, None]})  # one (1, ...) input per sample
    proc = subprocess.run([python, "-c", AEQ_WORKER, float_tflite, calib, out], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    times = {}
    for line in proc.stdout.splitlines():
        if line.startswith("AEQ_TIMES "):
            times = json.loads(line[len("AEQ_TIMES "):])
    files = {v: os.path.join(out, f) for v, f in AEQ.items() if os.path.exists(os.path.join(out, f))}
    err = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    return files, err, times


def has_module(python: str, module: str) -> bool:
    if not os.path.exists(python):
        return False
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=300).returncode == 0


# --------------------------------------------------------------------------------------------
# main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated names from models/ (default: digits_cnn and every bundled net)")
    ap.add_argument("--onnx2tf-python", default=DEFAULT_ONNX2TF_PYTHON)
    ap.add_argument("--aeq-python", default=DEFAULT_AEQ_PYTHON, help="interpreter with ai-edge-quantizer installed")
    ap.add_argument("--skip-onnx2tf", action="store_true")
    ap.add_argument("--skip-aeq", action="store_true")
    ap.add_argument("--latency-iters", type=int, default=200)
    ap.add_argument("--workdir", default="/tmp/graph_convert_quant_bench")
    args = ap.parse_args(argv)

    from graph_convert.conversion.export import export

    names = args.models.split(",") if args.models else bundled_models()
    use_o2t = not args.skip_onnx2tf and has_module(args.onnx2tf_python, "onnx2tf")
    use_aeq = not args.skip_aeq and has_module(args.aeq_python, "ai_edge_quantizer")
    print(f"onnx2tf: {'using ' + args.onnx2tf_python if use_o2t else 'skipped (not installed at ' + args.onnx2tf_python + ')' if not args.skip_onnx2tf else 'skipped (--skip-onnx2tf)'}")
    print(f"ai-edge-quantizer: {'using ' + args.aeq_python if use_aeq else 'skipped (not installed at ' + args.aeq_python + ')' if not args.skip_aeq else 'skipped (--skip-aeq)'}")
    rows: list[tuple] = []
    digits_acc: dict[str, dict[str, float]] = {}
    for name in names:
        work = os.path.join(args.workdir, name)
        os.makedirs(work, exist_ok=True)
        data = build(name)
        onnx_path = os.path.join(work, "model.onnx")
        export(data["module"], (data["example"],), onnx_path)
        import onnx

        proto = onnx.load(onnx_path)  # one self-contained file for every tool (the exporter may write .data beside it)
        onnx.save(proto, onnx_path, save_as_external_data=False)
        if os.path.exists(onnx_path + ".data"):
            os.remove(onnx_path + ".data")
        in_name = proto.graph.input[0].name
        ref = reference(onnx_path, in_name, data["eval"])
        files, rep, err = run_ours(onnx_path, in_name, data, work)
        print(f"\n{name}: graph-convert {'FAILED: ' + err if err else 'ok (%.1fs incl. verification)' % rep['_seconds']}", flush=True)
        if not err and rep.get("_int8_full_error"):
            print(f"{name}: graph-convert int8-full REFUSED: {rep['_int8_full_error']}", flush=True)
        tools: dict[str, dict[str, str]] = {"graph-convert": files}
        if not err:
            perm = rep["io"]["inputs"][0]["layout_perm"]
            calib_rw = data["calib"][:, 0]
            calib_rw = np.transpose(calib_rw, (0,) + tuple(d for d in perm[1:])) if perm else calib_rw
            tf_name = rep["io"]["inputs"][0]["tf_name"]
        else:
            calib_rw = np.moveaxis(data["calib"][:, 0], 1, -1) if data["calib"].ndim >= 5 else data["calib"][:, 0]
        if use_o2t:
            f, e, secs = run_onnx2tf(args.onnx2tf_python, onnx_path, in_name, calib_rw, work)
            print(f"{name}: onnx2tf {'FAILED: ' + e if e else 'ok (%.1fs)' % secs}", flush=True)
            tools["onnx2tf"] = f
        if use_aeq and not err:
            f, e, times = run_aeq(args.aeq_python, files["float32"], tf_name, calib_rw, work)
            print(f"{name}: ai-edge-quantizer {'FAILED: ' + e if e else 'ok ' + json.dumps({k: round(v, 2) for k, v in times.items()})}", flush=True)
            tools["ai-edge-quantizer"] = f
        for tool, fs in tools.items():
            for variant, path in fs.items():
                m = measure(path, data["eval"], ref, data["labels"], args.latency_iters)
                rows.append((name, tool, variant, m))
                if "accuracy" in m:
                    digits_acc.setdefault(tool, {})[variant] = m["accuracy"]

    print("\nAll figures against ONNX Runtime float32 on the same evaluation samples "
          "(digits_cnn: 540 real held-out images; others: random inputs, numerical closeness only).")
    table = [("model", "tool", "variant", "bytes", "ms (1 thread)", "SQNR dB", "top-1 agree %", "accuracy %")]
    for name, tool, variant, m in rows:
        if "error" in m:
            table.append((name, tool, variant, str(m["bytes"]), "-", "error: " + m["error"][:70], "", ""))
            continue
        table.append((name, tool, variant, str(m["bytes"]), f"{m['ms']:.3f}", f"{m['sqnr_db']:.1f}",
                      "-" if m["top1_agree"] is None else f"{m['top1_agree']:.1f}",
                      "-" if "accuracy" not in m else f"{m['accuracy']:.2f}"))
    print(_fmt(table))
    if digits_acc:
        print("\ndigits_cnn test accuracy (%), 540 held-out images:")
        variants = ["float32", "fp16", "int8", "int8-full", "int8-full int8-io"]
        t2 = [("tool", *variants)]
        for tool, acc in digits_acc.items():
            t2.append((tool, *[f"{acc[v]:.2f}" if v in acc else "-" for v in variants]))
        print(_fmt(t2))
    return 0


def _fmt(rows) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
