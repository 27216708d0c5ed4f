"""Big-model benchmark: converts synthetic MLPs of 8192-wide layers (MatMul + Add + Relu, written
as ONNX with external data) and a real architecture with random weights (``vit-l``: ViT-L/16 from
a transformers ``ViTConfig``, 1.2 GB, exported to ONNX with external data; nothing is downloaded),
and prints wall time, peak RSS (the converting process and its children, as GNU time reports it:
the largest single process) and time and peak RSS per stage, optionally against onnx2tf in the
same run.

    python benchmarks/big_models.py                  # 0.5 and 1.6 GB
    python benchmarks/big_models.py 2.4 4 vit-l      # sizes in GB of float32 weights, or vit-l
    python benchmarks/big_models.py 0.5 --onnx2tf    # also onnx2tf (/tmp/venv_onnx2tf), stopped at --onnx2tf-memory-cap
    python benchmarks/big_models.py 1.6 --no-tflite  # SavedModel only
    python benchmarks/big_models.py 1.6 --one-file   # the MLP as one .onnx, no external data (< 2 GB)

Run one size at a time on a shared machine: peak RSS is several times the weights' size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from compare import CALIB_NAME, DEFAULT_ONNX2TF_PYTHON, find_theirs_tflite, log_tail, run_measured, theirs_cmd, theirs_env  # noqa: E402

WIDTH = 8192
LAYER_BYTES = WIDTH * WIDTH * 4 + WIDTH * 4


def write_mlp(path: str, gigabytes: float, seed: int = 0) -> tuple[int, int]:
    """An MLP of ``round(gigabytes / 0.27)`` 8192x8192 layers, weights in ``path + '.data'``,
    written one layer at a time (never the whole model in memory). Returns (layers, bytes)."""
    import onnx
    from onnx import TensorProto, helper

    layers = max(1, round(gigabytes * 1e9 / LAYER_BYTES))
    rng = np.random.default_rng(seed)
    data_name = os.path.basename(path) + ".data"
    inits, nodes, offset = [], [], 0
    x = "x"
    with open(path + ".data", "wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * (1.0 / np.sqrt(WIDTH))).astype(np.float32)
            b = (rng.standard_normal(WIDTH, dtype=np.float32) * 0.01).astype(np.float32)
            for name, arr in ((f"w{i}", w), (f"b{i}", b)):
                t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(arr.shape))
                t.data_location = TensorProto.EXTERNAL
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
                f.write(arr.tobytes())
                offset += arr.nbytes
                inits.append(t)
            del w
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"),
                      helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"add{i}")]
            x = f"add{i}"
            if i + 1 < layers:
                nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
                x = f"relu{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return layers, offset


VIT_L16 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=224,
               patch_size=16, num_channels=3)


def write_vit(path: str, seed: int = 0) -> tuple[int, int]:
    """ViT-L/16 (``VIT_L16``) with random weights, exported by graph_convert's exporter (external
    data beside ``path`` when large). Run in a child process (``--write-vit``): torch keeps the
    memory. Returns (layers, bytes of weights)."""
    import torch
    from transformers import ViTConfig, ViTModel

    from graph_convert.conversion.export import export

    torch.manual_seed(seed)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = ViTModel(ViTConfig(**VIT_L16), add_pooling_layer=False).eval()

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values).last_hidden_state

    net = Encoder().eval()
    nbytes = sum(p.numel() * p.element_size() for p in net.parameters())
    export(net, (torch.randn(1, 3, 224, 224),), path)
    return VIT_L16["num_hidden_layers"], nbytes


def write_model(work: str, name: str, one_file: bool = False) -> tuple[str, int, int]:
    """(path, layers, bytes of weights) of the model ``name`` (GB of an MLP, or vit-l) in ``work``;
    ``one_file``: the MLP without external data."""
    if name == "vit-l":
        path = os.path.join(work, "vit_l16.onnx")
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--write-vit", path], capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
        layers, nbytes = json.loads(out.stdout.strip().splitlines()[-1])
        return path, layers, nbytes
    path = os.path.join(work, f"mlp_{float(name):g}gb.onnx")
    layers, nbytes = write_mlp(path, float(name))
    if one_file:
        import onnx

        model = onnx.load(path)
        os.remove(path + ".data")
        onnx.save(model, path)
    return path, layers, nbytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", default=["0.5", "1.6"], help="weights in GB (default 0.5 1.6), or vit-l")
    ap.add_argument("--write-vit", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--onnx2tf", action="store_true", help="also convert with onnx2tf")
    ap.add_argument("--onnx2tf-python", default=DEFAULT_ONNX2TF_PYTHON)
    ap.add_argument("--onnx2tf-memory-cap", type=float, default=18.0,
                    help="GB: onnx2tf is stopped when all its processes together hold more (default 18 of this 24 GB machine)")
    ap.add_argument("--no-tflite", action="store_true")
    ap.add_argument("--one-file", action="store_true", help="write the MLPs as one .onnx each, without external data")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs graph-convert")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--work", default=None, help="folder for models and outputs (default: a temp folder, removed)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--root", default=ROOT, help="checkout of graph_convert to run (default: this one)")
    a = ap.parse_args()
    if a.write_vit:
        print(json.dumps(write_vit(a.write_vit)))
        return 0
    work = a.work or tempfile.mkdtemp(prefix="big_models_")
    os.makedirs(work, exist_ok=True)
    if a.onnx2tf:  # onnx2tf downloads its calibration sample for an image input unless it finds one here
        np.save(os.path.join(work, CALIB_NAME), np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    env = dict(os.environ, PYTHONPATH=a.root + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    rows = []
    try:
        for gb in a.sizes:
            path, layers, nbytes = write_model(work, gb, a.one_file)
            out = os.path.join(work, f"out_{gb}")
            shutil.rmtree(out, ignore_errors=True)
            cmd = [a.python, "-m", "graph_convert.cli", "convert", path, "-o", out, "-q"] + (["--no-tflite"] if a.no_tflite else [])
            run = run_measured(cmd, work, env, out + ".log", a.timeout)
            report = {}
            if os.path.exists(os.path.join(out, "report.json")):
                with open(os.path.join(out, "report.json")) as f:
                    report = json.load(f)
            row = {"tool": "graph-convert", "gb": gb, "layers": layers, "weights_gb": nbytes / 1e9, "ok": run.ok,
                   "exit": run.rc, "wall_s": run.wall, "peak_rss_gb": run.peak_rss_mb * 2**20 / 1e9,
                   "stages_s": report.get("timings_seconds", {}), "stage_peak_rss_gb": report.get("peak_rss_gb_after_stage", {}),
                   "slowest_passes": sorted(((p["seconds"], p["name"]) for p in report.get("passes", [])), reverse=True)[:3],
                   "note": run.note or ((report.get("weights") or {}).get("tflite") or "" if run.ok
                                        else open(out + ".log", errors="replace").read()[-400:].strip())}
            rows.append(row)
            shutil.rmtree(out, ignore_errors=True)
            if a.onnx2tf:
                out2 = os.path.join(work, f"onnx2tf_{gb}")
                r2 = run_measured(theirs_cmd(a.onnx2tf_python, path, out2), work, theirs_env(a.onnx2tf_python), out2 + ".log", a.timeout,
                                  memory_cap=a.onnx2tf_memory_cap * 1e9)
                ok2 = r2.ok and find_theirs_tflite(out2) is not None
                rows.append({"tool": "onnx2tf", "gb": gb, "layers": layers, "weights_gb": nbytes / 1e9, "ok": ok2, "exit": r2.rc,
                             "wall_s": r2.wall, "peak_rss_gb": r2.peak_rss_mb * 2**20 / 1e9, "stages_s": {}, "stage_peak_rss_gb": {},
                             "note": r2.note or ("" if ok2 else log_tail(r2.log, 1))})
                shutil.rmtree(out2, ignore_errors=True)
            for f in os.listdir(work):  # the model and its external data
                if f.startswith(os.path.splitext(os.path.basename(path))[0]) and os.path.isfile(os.path.join(work, f)):
                    os.remove(os.path.join(work, f))
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"| model | tool | weights GB | ok | wall s | peak RSS GB | RSS/weights | time per stage s (peak RSS GB after it) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" + (f" ({r['stage_peak_rss_gb'][k]:.1f})" if k in r["stage_peak_rss_gb"] else "")
                           for k, v in r["stages_s"].items() if k != "total")
        model = "ViT-L/16" if r["gb"] == "vit-l" else f"MLP {r['gb']} GB" + (", one file" if a.one_file else "")
        print(f"| {model} | {r['tool']} | {r['weights_gb']:.2f} | {'yes' if r['ok'] else 'NO'} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | "
              f"{r['peak_rss_gb'] / r['weights_gb']:.1f}x | {stages} |" + (f" {r['note'][:200]}" if r["note"] else ""))
    for r in rows:
        if r.get("slowest_passes"):
            print(f"{r['tool']} {r['weights_gb']:.2f} GB: slowest passes " + ", ".join(f"{n} {t:.2f}s" for t, n in r["slowest_passes"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["ok"] for r in rows if r["tool"] == "graph-convert") else 1


if __name__ == "__main__":
    sys.exit(main())
