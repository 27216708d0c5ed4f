"""Real architectures through the large-model path: Hugging Face models built from configs
(``transformers_ops.MODELS``, small sizes, every one-valued parameter randomized), exported with
both exporters (TorchScript at opset 17, dynamo), and converted by ``graph-convert convert`` with
``GRAPH_CONVERT_EXTERNAL_DATA_BYTES`` lowered so that each takes the path a model of gigabytes
takes (weights memory-mapped, ONNX Runtime fed OrtValues, the .tflite written from stand-ins).
Prints, per model and exporter: whether the run verified, how the .tflite got its weights (from
stand-ins, or converted with the real weights and why), the TFLite error against ONNX Runtime
relative to the output's scale, and TRANSPOSE left.

    python benchmarks/large_path_sweep.py                       # every HF model, both exporters
    python benchmarks/large_path_sweep.py --models llama,convnext --exporters dynamo
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import transformers_ops as T  # noqa: E402

HF = ["bert", "vit", "convnext", "gpt2", "llama", "clip_vision", "mobilevit", "swin", "levit", "segformer"]


def _export(name: str, exporter: str, path: str) -> str | None:
    """Export ``name`` in a child process (torch keeps the exporter's memory); None or the error."""
    code = ("import sys; sys.path.insert(0, %r); import transformers_ops as T\n"
            "m, x = T.MODELS[%r]('small'); T.randomize(m, 0); T.export(m.eval(), x, %r, %r)") % (HERE, name, path, exporter)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    return None if out.returncode == 0 and os.path.exists(path) else (out.stderr.strip().splitlines() or ["?"])[-1][:200]


def convert(path: str, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GRAPH_CONVERT_EXTERNAL_DATA_BYTES="1000",
               TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "graph_convert.cli", "convert", path, "-o", out, "-q"], capture_output=True,
                       text=True, env=env, timeout=1800)
    row = {"exit": p.returncode, "seconds": time.perf_counter() - t0, "error": p.stderr.strip().splitlines()[-1][:200] if p.returncode else ""}
    if p.returncode == 0:
        with open(os.path.join(out, "report.json")) as f:
            r = json.load(f)
        w = r["weights"]["tflite"]
        if w.startswith("converted with stand-ins"):
            row["weights"] = "stand-ins: " + w.split(",")[1].split(" buffers")[0].strip() + " filled"
            if "converter folds converted as they are" in w:
                row["weights"] += ", " + w.split(", ")[2].split(" that")[0] + " as they are"
        else:
            row["weights"] = "converter, real weights: " + w.split("stand-ins not usable: ")[-1].split(");")[0]
        row["err"] = max(f["max_abs"] / f["scale"] if f["scale"] else f["max_abs"] for f in r["verification"]["tflite_float32"].values())
        row["transpose"] = r["tflite"]["transpose_ops"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(HF))
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--work", default=None, help="folder for the exports and outputs (default: a temp folder, removed)")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="large_path_sweep_")
    os.makedirs(work, exist_ok=True)
    rows = []
    try:
        for name in a.models.split(","):
            for exporter in a.exporters.split(","):
                path = os.path.join(work, f"{name}_{exporter}.onnx")
                failed = _export(name, exporter, path)
                row = {"model": name, "exporter": "TorchScript 17" if exporter == "legacy" else exporter}
                row.update({"exit": None, "error": f"export failed: {failed}"} if failed else convert(path, os.path.join(work, f"out_{name}_{exporter}")))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| model | exporter | verified | .tflite weights | TFLite max err / scale | TRANSPOSE | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if r["exit"] == 0 else f"NO ({r['error']})"
        print(f"| {r['model']} | {r['exporter']} | {ok} | {r.get('weights', '')} | {r.get('err', float('nan')):.1e} | "
              f"{r.get('transpose', '')} | {r.get('seconds', 0):.1f} |")
    exported = [r for r in rows if r["exit"] is not None]  # an exporter's failure is no conversion
    stand = sum(1 for r in exported if str(r.get("weights", "")).startswith("stand-ins"))
    print(f"\n{len(exported)}/{len(rows)} exported; of those {sum(r['exit'] == 0 for r in exported)} verified, {stand} from stand-ins")
    return 0 if all(r["exit"] == 0 for r in exported) else 1


if __name__ == "__main__":
    sys.exit(main())
