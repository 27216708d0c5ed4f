"""Spelled-out activations/normalizations on real architectures: what the fusion rules change.

Builds public model implementations from their configs with random weights (Hugging Face
transformers; timm and torchvision when they import beside this torch), makes every constant
parameter random (LayerNorm gammas/betas, zero biases, BatchNorm statistics, layer scales: a
converter can fold a constant branch away), exports each with BOTH exporters (dynamo at its
default opset, and TorchScript at opset 17), converts each file twice, without and with the
rule passes (``disable_passes=[fuse_activations, fuse_normalizations]``), and prints one table:
TFLite op counts (MUL, ADD, GELU, ...), TRANSPOSE ops, total ops, and 1-thread TFLite latency
(LiteRT interpreter, ``num_threads=1``, median of interleaved repeats).

    PYTHONPATH=. python benchmarks/transformers_ops.py                     # every model, base size
    PYTHONPATH=. python benchmarks/transformers_ops.py --models bert,vit --size small --iters 20

Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import time
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RULE_PASSES = ["fuse_activations", "fuse_normalizations"]
SHOWN_OPS = ["MUL", "ADD", "SUB", "DIV", "GELU", "LOGISTIC", "HARD_SWISH", "TANH", "EXP", "SOFTMAX", "MEAN", "RSQRT", "SQRT"]


# --------------------------------------------------------------------------------------------
# models: name -> (factory(size) -> (module, example inputs))
# --------------------------------------------------------------------------------------------
class _FirstTensor:
    """Wrap a model whose forward returns a dict/tuple so the export has one tensor output."""

    @staticmethod
    def wrap(model, key: str = "last_hidden_state"):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, *args):
                out = self.m(*args)
                return getattr(out, key) if hasattr(out, key) else out[0]

        return Wrapped().eval()


def _layers(size: str, base: int) -> int:
    return base if size == "base" else max(1, base // 4)


def hf_bert(size):
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(num_hidden_layers=_layers(size, 12), hidden_act="gelu")
    return _FirstTensor.wrap(BertModel(cfg, add_pooling_layer=False)), (torch.randint(0, cfg.vocab_size, (1, 128)),)


def hf_vit(size):
    import torch
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(num_hidden_layers=_layers(size, 12), image_size=224, patch_size=16)
    return _FirstTensor.wrap(ViTModel(cfg, add_pooling_layer=False)), (torch.randn(1, 3, 224, 224),)


def hf_convnext(size):
    import torch
    from transformers import ConvNextConfig, ConvNextModel

    depths = [3, 3, 9, 3] if size == "base" else [1, 1, 2, 1]
    cfg = ConvNextConfig(depths=depths, hidden_sizes=[96, 192, 384, 768], layer_scale_init_value=1e-6)
    return _FirstTensor.wrap(ConvNextModel(cfg)), (torch.randn(1, 3, 224, 224),)


def hf_gpt2(size):
    import torch
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(n_layer=_layers(size, 12), activation_function="gelu_new", use_cache=False)
    return _FirstTensor.wrap(GPT2Model(cfg)), (torch.randint(0, cfg.vocab_size, (1, 64)),)


def hf_llama(size):
    import torch
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=_layers(size, 8), num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=32000, use_cache=False, max_position_embeddings=256)
    return _FirstTensor.wrap(LlamaModel(cfg)), (torch.randint(0, cfg.vocab_size, (1, 64)),)


def hf_clip_vision(size):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(num_hidden_layers=_layers(size, 12), image_size=224, patch_size=32, hidden_act="quick_gelu")
    return _FirstTensor.wrap(CLIPVisionModel(cfg)), (torch.randn(1, 3, 224, 224),)


def hf_mobilevit(size):
    import torch
    from transformers import MobileViTConfig, MobileViTModel

    cfg = MobileViTConfig(image_size=256, hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320])
    return _FirstTensor.wrap(MobileViTModel(cfg, expand_output=False)), (torch.randn(1, 3, 256, 256),)


def hf_swin(size):
    import torch
    from transformers import SwinConfig, SwinModel

    cfg = SwinConfig(image_size=224, depths=[2, 2, 6, 2] if size == "base" else [1, 1, 2, 1])  # Swin-T
    return _FirstTensor.wrap(SwinModel(cfg, add_pooling_layer=False)), (torch.randn(1, 3, 224, 224),)


def hf_levit(size):
    import torch
    from transformers import LevitConfig, LevitModel

    cfg = LevitConfig(image_size=224)  # the config's defaults: LeViT-128S
    return _FirstTensor.wrap(LevitModel(cfg)), (torch.randn(1, 3, 224, 224),)


def hf_segformer(size):
    import torch
    from transformers import SegformerConfig, SegformerModel

    cfg = SegformerConfig(image_size=224)  # the config's defaults: MiT-B0, the Segformer-B0 encoder
    return _FirstTensor.wrap(SegformerModel(cfg)), (torch.randn(1, 3, 224, 224),)


def timm_model(name, **kw):
    def make(size):
        import timm
        import torch

        return timm.create_model(name, pretrained=False, **kw).eval(), (torch.randn(1, 3, 224, 224),)

    return make


def tv_vit_b_16(size):
    import torch
    import torchvision

    return torchvision.models.vit_b_16(weights=None).eval(), (torch.randn(1, 3, 224, 224),)


MODELS = {
    "bert": hf_bert, "vit": hf_vit, "convnext": hf_convnext, "gpt2": hf_gpt2, "llama": hf_llama,
    "clip_vision": hf_clip_vision, "mobilevit": hf_mobilevit, "swin": hf_swin, "levit": hf_levit, "segformer": hf_segformer,
    "timm_vit_b16": timm_model("vit_base_patch16_224"), "timm_convnext_t": timm_model("convnext_tiny"),
    "tv_vit_b_16": tv_vit_b_16,
}


def randomize(module, seed: int = 0) -> None:
    """Every parameter or float buffer that holds one repeated value (ones, zeros, 1e-6 layer
    scales, BatchNorm statistics) gets random values around it; random matrices stay."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if not t.is_floating_point() or t.numel() == 0:
                continue
            v = float(t.flatten()[0])
            if bool((t == v).all()):
                spread = 0.2 * max(abs(v), 1.0) if "var" not in name else 0.5 * abs(v)
                t.copy_(v + spread * (torch.rand(t.shape, generator=g) * 2 - 1) if "var" in name
                        else v + spread * torch.randn(t.shape, generator=g))


# --------------------------------------------------------------------------------------------
def export(module, inputs, path: str, exporter: str) -> None:
    import torch

    kw = {"dynamo": True} if exporter == "dynamo" else {"dynamo": False, "opset_version": 17}
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, path, **kw)
    import onnx

    model = onnx.load(path)  # one self-contained file (the exporter may write external data)
    onnx.save(model, path)


def latency_ms(paths: dict[str, str], iters: int, rounds: int, threads: int = 1) -> dict[str, float]:
    """Median ms per invoke at ``threads`` threads, the variants interleaved round by round."""
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    its = {}
    for k, p in paths.items():
        it = Interpreter(model_path=p, num_threads=threads)
        it.allocate_tensors()
        for d in it.get_input_details():
            shape, dt = d["shape"], d["dtype"]
            data = rng.standard_normal(shape).astype(dt) if np.issubdtype(dt, np.floating) else rng.integers(0, 100, shape).astype(dt)
            it.set_tensor(d["index"], data)
        for _ in range(3):
            it.invoke()
        its[k] = it
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, it in its.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                it.invoke()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def run(names, exporters, size, iters, rounds, workdir, keep) -> list[dict]:
    from graph_convert import convert

    rows = []
    for name in names:
        try:
            module, inputs = MODELS[name](size)
        except Exception as e:  # an optional library missing or not importable beside this torch
            print(f"# {name}: cannot build ({type(e).__name__}: {str(e).splitlines()[0][:120]})", flush=True)
            continue
        randomize(module.eval())
        for exporter in exporters:
            d = os.path.join(workdir, f"{name}_{exporter}")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            src = os.path.join(d, "model.onnx")
            try:
                export(module, inputs, src, exporter)
            except Exception as e:
                print(f"# {name} {exporter}: export failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})", flush=True)
                continue
            result = {}
            for variant, disabled in (("before", RULE_PASSES), ("after", [])):
                t0 = time.perf_counter()
                try:
                    r = convert(src, None, os.path.join(d, variant), disable_passes=disabled, overwrite=True)
                except Exception as e:
                    print(f"# {name} {exporter} {variant}: conversion failed ({type(e).__name__}: {str(e)[:300]})", flush=True)
                    break
                fired = {}
                for p in r.report["passes"]:
                    if p["name"] in RULE_PASSES:
                        for k, v in p.get("details", {}).get("fused", {}).items():
                            fired[k] = fired.get(k, 0) + v
                result[variant] = {"ops": r.report["tflite"]["ops"], "tflite": r.tflite, "seconds": time.perf_counter() - t0,
                                   "fired": fired, "err": r.max_abs_error("tflite_float32")}
            if len(result) < 2:
                continue
            lat = latency_ms({k: v["tflite"] for k, v in result.items()}, iters, rounds)
            for variant, v in result.items():
                rows.append({"model": name, "exporter": exporter, "variant": variant, "latency_ms": lat[variant], **v})
            print(format_rows(rows[-2:], header=len(rows) == 2), flush=True)
            if not keep:
                for variant in result:
                    shutil.rmtree(os.path.join(d, variant), ignore_errors=True)
    return rows


def format_rows(rows: list[dict], header: bool = True) -> str:
    cols = ["model", "exporter", "variant", *SHOWN_OPS, "TRANSPOSE", "total", "ms (1 thr)", "after/before", "fused"]
    lines = []
    if header:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    before = {}
    for r in rows:
        ops = r["ops"]
        key = (r["model"], r["exporter"])
        if r["variant"] == "before":
            before[key] = r["latency_ms"]
        ratio = f"{r['latency_ms'] / before[key]:.2f}" if r["variant"] == "after" and key in before else ""
        fired = ", ".join(f"{k} {v}" for k, v in sorted(r["fired"].items()))
        cells = [r["model"], r["exporter"], r["variant"], *[str(ops.get(o, 0)) for o in SHOWN_OPS], str(ops.get("TRANSPOSE", 0)),
                 str(sum(ops.values())), f"{r['latency_ms']:.2f}", ratio, fired]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    ap.add_argument("--exporters", default="dynamo,legacy")
    ap.add_argument("--size", choices=["base", "small"], default="base", help="small: a quarter of the blocks")
    ap.add_argument("--iters", type=int, default=10, help="invokes per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (before, after, before, ...)")
    ap.add_argument("--workdir", default="/tmp/graph_convert_transformers_bench")
    ap.add_argument("--keep", action="store_true", help="keep the converted folders")
    a = ap.parse_args(argv)
    names = [n for n in a.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}")
    os.makedirs(a.workdir, exist_ok=True)
    rows = run(names, a.exporters.split(","), a.size, a.iters, a.rounds, a.workdir, a.keep)
    print()
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
