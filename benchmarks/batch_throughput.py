"""Batch throughput on the bundled models: ``graph-convert batch`` (local engine at 1 and 2 jobs,
and Ray on a local instance this script starts) against a plain shell-style loop of
``graph-convert convert`` calls, on the same .onnx files.

    PYTHONPATH=. python benchmarks/batch_throughput.py                 # every small bundled model, 1 round
    PYTHONPATH=. python benchmarks/batch_throughput.py --rounds 2 --models resnet_style,se_block
    PYTHONPATH=. python benchmarks/batch_throughput.py --no-ray

Each configuration converts every model into a fresh folder; the rounds interleave the
configurations. It prints one table: wall time (median over rounds), models ok, models per
minute and the ratio of wall time to the loop's. The load average is printed too: the figures
mean little on a machine busy with something else.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def export_models(names: list[str], folder: str) -> list[str]:
    """One self-contained .onnx file per bundled model (TorchScript exporter, opset 17)."""
    import torch

    from graph_convert.plugins import load_checkout_package

    load_checkout_package("graph_convert_models", "models")
    import graph_convert_models as gm

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names:
        path = os.path.join(folder, f"{name}.onnx")
        if not os.path.exists(path):
            model, _ = gm.load(name)
            inputs = gm.example_inputs(name)
            torch.onnx.export(model, inputs, path, dynamo=False, opset_version=17)
        paths.append(path)
    return paths


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "graph_convert.cli", *args]


def run_loop(paths: list[str], out: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    ok = 0
    for p in paths:
        name = os.path.splitext(os.path.basename(p))[0]
        ok += subprocess.run(_cli("convert", p, "-o", os.path.join(out, name), "-q"), env=_env()).returncode == 0
    return time.perf_counter() - t0, ok


def run_batch(paths: list[str], out: str, *extra: str) -> tuple[float, int]:
    import json

    t0 = time.perf_counter()
    subprocess.run(_cli("batch", *paths, "-o", out, "-q", *extra), env=_env())
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "summary.json")) as f:
        return wall, json.load(f)["totals"]["ok"]


def start_ray() -> tuple[str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    # a token of its own for the instance and the batch commands (which inherit it): a token left in
    # ~/.ray by another Ray cluster on this machine cannot lock them out
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    subprocess.run([ray, "start", "--head", f"--port={port}", f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
                    "--disable-usage-stats", "--object-store-memory=500000000"], env=_env(), check=True, capture_output=True)
    return ray, f"127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated bundled model names (default: MODELS + FAMILIES + TRANSFORMERS)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/graph_convert_batch_bench")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    from models import FAMILIES, MODELS, TRANSFORMERS

    names = args.models.split(",") if args.models else MODELS + FAMILIES + TRANSFORMERS
    paths = export_models(names, os.path.join(args.workdir, "onnx"))
    configs = [("loop of convert", lambda out: run_loop(paths, out)),
               ("batch --jobs 1", lambda out: run_batch(paths, out, "--jobs", "1")),
               ("batch --jobs 2", lambda out: run_batch(paths, out, "--jobs", "2"))]
    ray = None
    if not args.no_ray:
        ray, address = start_ray()
        configs.append((f"batch --engine ray ({os.cpu_count()} CPUs)", lambda out: run_batch(paths, out, "--engine", "ray",
                                                                                            "--ray-address", address)))
    walls: dict[str, list[float]] = {c: [] for c, _ in configs}
    oks: dict[str, int] = {}
    load = []
    try:
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for label, fn in order:
                out = os.path.join(args.workdir, f"out-{r}-{label.split()[0]}-{len(walls[label])}-{label.replace(' ', '_')}")
                shutil.rmtree(out, ignore_errors=True)
                load.append(os.getloadavg()[0])
                wall, ok = fn(out)
                walls[label].append(wall)
                oks[label] = ok
                print(f"round {r + 1} {label}: {wall:.1f} s, {ok}/{len(paths)} ok", flush=True)
    finally:
        if ray:
            subprocess.run([ray, "stop", "--force"], capture_output=True)
    base = statistics.median(walls[configs[0][0]])
    print(f"\n{len(paths)} models ({', '.join(names)}), {args.rounds} round(s), {os.cpu_count()} CPUs, "
          f"load average at the starts {min(load):.1f}-{max(load):.1f}\n")
    print("| configuration | wall s (median) | ok | models/min | wall / loop |")
    print("|---|---:|---:|---:|---:|")
    for label, _ in configs:
        w = statistics.median(walls[label])
        print(f"| {label} | {w:.1f} | {oks[label]}/{len(paths)} | {60 * oks[label] / w:.1f} | {w / base:.2f} |")


if __name__ == "__main__":
    main()
