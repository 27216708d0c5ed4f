"""Our .tflite beside litert-torch's on the attention models of issue 12: TRANSPOSE, GELU and total
ops, error against PyTorch relative to the output's scale, and 1-thread latency (interleaved).

litert-torch (``pip install litert-torch``; it installs without TensorFlow) pins a torch of its own,
so it runs in its own interpreter: the model is rebuilt there from the same code (``models/``,
seeded, every parameter random) and converted straight from PyTorch. Ours converts the same
module through ONNX (dynamo exporter, as ``graph_convert.convert`` does), with and without
``heads_first``.

    PYTHONPATH=. python benchmarks/litert_torch_peer.py --litert-python /tmp/venv_litert/bin/python
    PYTHONPATH=. python benchmarks/litert_torch_peer.py --models timm_attention --rounds 40

``--hf`` takes Hugging Face models built from their configs instead (``transformers_ops.MODELS``:
ViT-B/16, BERT-base seq 128, ConvNeXt-T, Swin-T, MobileViT-XXS, LeViT-128S, Segformer-B0), every
constant parameter made random; the state_dict is saved and loaded into the module rebuilt in the
litert-torch interpreter (``transformers`` installed there too), so both converters get the same
weights. Ours converts the TorchScript export at opset 17 ("ts17") and the dynamo export, each by
default and with ``heads_first``. ``--no-latency`` converts only; ``--reuse`` then times the
files already in ``--workdir``:

    PYTHONPATH=. python benchmarks/litert_torch_peer.py --hf --no-latency --litert-python /tmp/venv_litert/bin/python
    PYTHONPATH=. python benchmarks/litert_torch_peer.py --hf --reuse --rounds 30 --litert-python /tmp/venv_litert/bin/python

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

from graph_convert.plugins import load_checkout_package  # noqa: E402

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
# run by the litert-torch interpreter: rebuild a Hugging Face model from its config (benchmarks/
# transformers_ops.py), load the state_dict saved by our side (identical weights), convert it
PEER_HF = r"""
import sys, torch
bench, name, size, state, out = sys.argv[1:6]
sys.path.insert(0, bench)
import transformers_ops as T
import litert_torch
module, _ = T.MODELS[name](size)
T.randomize(module.eval())  # non-persistent buffers too, as on our side
saved = torch.load(state)
module.load_state_dict(saved["state"], strict=True)
litert_torch.convert(module.eval(), tuple(saved["inputs"])).export(out)
"""
HF_DEFAULT = "vit,bert,convnext,swin,mobilevit,levit,segformer"
SHOWN = ["TRANSPOSE", "GELU", "BATCH_MATMUL", "FULLY_CONNECTED", "CONV_2D", "RESHAPE"]


def _run_tflite(path: str, inputs, perms) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    it.allocate_tensors()
    for d, x, p in zip(it.get_input_details(), inputs, perms):
        it.set_tensor(d["index"], np.ascontiguousarray((x.transpose(p) if p else x).astype(d["dtype"])))  # int64 ids -> int32
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


def _rel_err(path: str, inputs, in_perms, ref: np.ndarray, out_perm) -> float:
    got = _run_tflite(path, inputs, in_perms)
    if got.shape != ref.shape and out_perm:
        ref = ref.transpose(out_perm)
    if got.shape != ref.shape:
        return float("nan")
    return float(np.abs(got - ref).max()) / float(np.abs(ref).max())


def _ours_hf(module, inputs, d: str, reuse: bool) -> dict[str, tuple[str, dict]]:
    """Both exporters (TorchScript at opset 17 as "ts17", dynamo), each converted by default and
    with heads_first: {variant: (tflite path, report.json io)}."""
    import json

    import transformers_ops as T
    from graph_convert import convert

    out = {}
    for exporter, tag in (("legacy", "ts17"), ("dynamo", "dynamo")):
        src = os.path.join(d, f"{tag}.onnx")
        if not (reuse and os.path.exists(src)):
            try:
                T.export(module, inputs, src, exporter)
            except Exception as e:  # e.g. Swin's Python-side window check under torch.export
                print(f"# {tag} export failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}", flush=True)
                continue
        for variant, hf in (("", False), (" heads_first", True)):
            folder = os.path.join(d, f"ours_{tag}{variant.replace(' ', '_')}")
            if not (reuse and os.path.exists(os.path.join(folder, "report.json"))):
                convert(src, None, folder, heads_first=hf, overwrite=True)
            with open(os.path.join(folder, "report.json")) as f:
                out[f"ours {tag}{variant}"] = (os.path.join(folder, "model_float32.tflite"), json.load(f)["io"])
    return out


def bench_hf(name: str, litert_python: str, workdir: str, rounds: int, size: str, reuse: bool, latency: bool) -> list[dict]:
    """A Hugging Face model from its config, every constant parameter random, the same weights
    (a saved state_dict) in both interpreters; litert-torch from PyTorch, ours from both exports."""
    import torch

    import transformers_ops as T
    from compare import op_counts
    from heads_first import latency_ms

    d = os.path.join(workdir, f"hf_{name}")
    if not reuse:
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)  # the same weights on a --reuse run
    module, inputs = T.MODELS[name](size)
    T.randomize(module.eval())
    with torch.no_grad():
        ref = module(*inputs).numpy()
    state = os.path.join(d, "state.pt")
    torch.save({"state": module.state_dict(), "inputs": list(inputs)}, state)
    peer = os.path.join(d, "litert_torch.tflite")
    job = None
    if not (reuse and os.path.exists(peer)):
        job = subprocess.Popen([litert_python, "-c", PEER_HF, os.path.join(REPO, "benchmarks"), name, size, state, peer],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ours = _ours_hf(module, inputs, d, reuse)
    paths = {k: v[0] for k, v in ours.items()}
    x = [t.numpy() for t in inputs]
    errs = {k: _rel_err(p, x, [i["layout_perm"] for i in io["inputs"]], ref, io["outputs"][0]["layout_perm"]) for k, (p, io) in ours.items()}
    if job is not None and job.wait() != 0:
        print(f"# {name}: litert-torch failed: {job.stderr.read().strip().splitlines()[-3:]}", flush=True)
    if os.path.exists(peer):
        paths["litert-torch"] = peer
        errs["litert-torch"] = _rel_err(peer, x, [None] * len(x), ref, None)
    lat = {}
    if latency:  # rounds of single invokes, or of as many as take about 0.1 s on a fast model
        iters = max(1, int(100 / max(latency_ms(paths, 1, 1, 1).values())))
        lat = latency_ms(paths, iters, rounds, 1)
    base = lat.get("litert-torch")
    return [{"model": name, "converter": k, "ops": op_counts(p), "err": errs[k], "ms": lat.get(k, float("nan")),
             "ratio": lat[k] / base if base and k in lat else None} for k, p in paths.items()]


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
    ap.add_argument("--models", default=None, help="bundled models (default: vit_tiny and models.ATTENTION)")
    ap.add_argument("--hf", nargs="?", const=HF_DEFAULT, default=None,
                    help=f"Hugging Face models from configs instead (default list {HF_DEFAULT}; names from transformers_ops.MODELS)")
    ap.add_argument("--size", choices=["base", "small"], default="base", help="--hf: small is a quarter of the blocks")
    ap.add_argument("--reuse", action="store_true", help="--hf: keep the files already converted in --workdir")
    ap.add_argument("--no-latency", action="store_true", help="--hf: convert and check only (run the timing later with --reuse)")
    ap.add_argument("--litert-python", default="/tmp/venv_litert/bin/python")
    ap.add_argument("--rounds", type=int, default=60, help="interleaved single invokes per converter")
    ap.add_argument("--workdir", default="/tmp/graph_convert_litert_peer")
    a = ap.parse_args(argv)
    rows = []
    if a.hf:
        for name in a.hf.split(","):
            rows += bench_hf(name, a.litert_python, a.workdir, a.rounds, a.size, a.reuse, not a.no_latency)
            print(format_rows([r for r in rows if r["model"] == name]), flush=True)
    for name in (a.models or ("" if a.hf else ",".join(["vit_tiny", *models.ATTENTION]))).split(","):
        if name:
            rows += bench(name, a.litert_python, a.workdir, a.rounds)
            print(format_rows(rows[-3:]), flush=True)
    print()
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
