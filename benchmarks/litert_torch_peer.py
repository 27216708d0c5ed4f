"""Our .tflite beside litert-torch's on the attention models of issue 12: TRANSPOSE, GELU and total
ops, error against PyTorch relative to the output's scale, and 1-thread latency (interleaved).

litert-torch (``pip install litert-torch``; it installs without TensorFlow) pins a torch of its own,
so it runs in its own interpreter: the model is rebuilt there from the same code (``models/``,
seeded, every parameter random) and converted straight from PyTorch. Ours converts the same
module through ONNX (dynamo exporter, as ``graph_convert.convert`` does), with and without
``heads_first``.

    PYTHONPATH=. python benchmarks/litert_torch_peer.py --litert-python /tmp/venv_litert/bin/python
    PYTHONPATH=. python benchmarks/litert_torch_peer.py --models timm_attention --rounds 40

Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (REPO, os.path.join(REPO, "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from graph_convert.pass_manager import load_checkout_package  # noqa: E402

load_checkout_package("graph_convert_passes", "passes")
load_checkout_package("graph_convert_models", "models")

# run by the litert-torch interpreter: rebuild the bundled model from this checkout, convert it
PEER = r"""
import importlib.util, sys
folder, name, out = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("graph_convert_models", folder + "/__init__.py", submodule_search_locations=[folder])
models = importlib.util.module_from_spec(spec)
sys.modules["graph_convert_models"] = models
spec.loader.exec_module(models)
import litert_torch
module, _ = models.load(name)
litert_torch.convert(module.eval(), tuple(models.example_inputs(name))).export(out)
"""
SHOWN = ["TRANSPOSE", "GELU", "BATCH_MATMUL", "FULLY_CONNECTED", "CONV_2D", "RESHAPE"]


def _run_tflite(path: str, inputs, perms) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    it.allocate_tensors()
    for d, x, p in zip(it.get_input_details(), inputs, perms):
        it.set_tensor(d["index"], np.ascontiguousarray(x.transpose(p) if p else x))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def bench(name: str, litert_python: str, workdir: str, rounds: int) -> list[dict]:
    import torch

    import graph_convert_models as models
    from compare import op_counts
    from graph_convert import convert
    from heads_first import latency_ms

    d = os.path.join(workdir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    module, _ = models.load(name)
    ex = models.example_inputs(name)
    with torch.no_grad():
        ref = module(*ex).numpy()
    paths, errs = {}, {}
    for variant, hf in (("ours", False), ("ours heads_first", True)):
        r = convert(module, ex, os.path.join(d, variant.replace(" ", "_")), heads_first=hf)
        paths[variant] = r.tflite
        got = _run_tflite(r.tflite, [t.numpy() for t in ex], [i["layout_perm"] for i in r.report["io"]["inputs"]])
        errs[variant] = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
    peer = os.path.join(d, "litert_torch.tflite")
    done = subprocess.run([litert_python, "-c", PEER, os.path.join(REPO, "models"), name, peer], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"# {name}: litert-torch failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
    else:
        paths["litert-torch"] = peer
        got = _run_tflite(peer, [t.numpy() for t in ex], [None] * len(ex))
        errs["litert-torch"] = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
    lat = latency_ms(paths, 1, rounds, 1)
    return [{"model": name, "converter": k, "ops": op_counts(p), "err": errs[k], "ms": lat[k],
             "ratio": lat[k] / lat["litert-torch"] if "litert-torch" in lat else None} for k, p in paths.items()]


def format_rows(rows: list[dict]) -> str:
    cols = ["model", "converter", *SHOWN, "total ops", "max err / scale", "ms (1 thr)", "vs litert-torch"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["model"], r["converter"], *[str(r["ops"].get(o, 0)) for o in SHOWN], str(sum(r["ops"].values())),
                 f"{r['err']:.1e}", f"{r['ms']:.3f}", "" if r["ratio"] is None else f"{r['ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import graph_convert_models as models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(["vit_tiny", *models.ATTENTION]))
    ap.add_argument("--litert-python", default="/tmp/venv_litert/bin/python")
    ap.add_argument("--rounds", type=int, default=60, help="interleaved single invokes per converter")
    ap.add_argument("--workdir", default="/tmp/graph_convert_litert_peer")
    a = ap.parse_args(argv)
    rows = []
    for name in a.models.split(","):
        rows += bench(name, a.litert_python, a.workdir, a.rounds)
        print(format_rows(rows[-3:]), flush=True)
    print()
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
