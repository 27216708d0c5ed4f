"""Heads-first against the default on real attention exports: TRANSPOSE ops and 1-thread latency.

Builds Hugging Face ViT and BERT from their configs with random weights (every constant
parameter made random), exports each with BOTH exporters (dynamo at its default opset and
TorchScript at opset 17), converts each file twice (default, ``heads_first=True``) and prints
one table: TRANSPOSE, BATCH_MATMUL, FULLY_CONNECTED, RESHAPE, SUM and total TFLite ops, and the
median ms per invoke (LiteRT interpreter, XNNPACK, ``num_threads`` 1 and 4, the variants
interleaved round by round in one process). A third variant, for dynamo files, keeps the NaN
guard after each softmax (``disable_passes=["drop_nan_guard"]``) to show what dropping it buys.

    PYTHONPATH=. python benchmarks/heads_first.py                       # vit,bert at base size
    PYTHONPATH=. python benchmarks/heads_first.py --models vit --size small --threads 1

Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (REPO, os.path.join(REPO, "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from graph_convert.plugins import load_checkout_package  # noqa: E402

load_checkout_package("graph_convert_passes", "passes")  # this checkout's passes, not an installed copy's

import transformers_ops as T  # noqa: E402

SHOWN = ["TRANSPOSE", "BATCH_MATMUL", "FULLY_CONNECTED", "RESHAPE", "SUM", "SELECT_V2"]
# the conversions compared; "guard_kept" keeps the dynamo exporter's NaN guard after the softmax
VARIANTS = {"default": {}, "heads_first": {"heads_first": True}, "guard_kept": {"disable_passes": ["drop_nan_guard"]}}


def latency_ms(paths: dict[str, str], iters: int, rounds: int, threads: int) -> dict[str, float]:
    return T.latency_ms(paths, iters, rounds, threads)


def run(names, exporters, size, iters, rounds, threads, workdir) -> list[dict]:
    from graph_convert import convert

    rows = []
    for name in names:
        module, inputs = T.MODELS[name](size)
        T.randomize(module.eval())
        for exporter in exporters:
            d = os.path.join(workdir, f"{name}_{exporter}")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            src = os.path.join(d, "model.onnx")
            T.export(module, inputs, src, exporter)
            got = {}
            for variant, kw in VARIANTS.items():
                if variant == "guard_kept" and exporter != "dynamo":
                    continue  # only the dynamo exporter writes the NaN guard
                r = convert(src, None, os.path.join(d, variant), overwrite=True, **kw)
                got[variant] = {"ops": r.report["tflite"]["ops"], "tflite": r.tflite, "err": r.max_abs_error("tflite_float32")}
            lat = {t: latency_ms({k: v["tflite"] for k, v in got.items()}, iters, rounds, t) for t in threads}
            for variant, v in got.items():
                rows.append({"model": name, "exporter": exporter, "variant": variant, "ms": {t: lat[t][variant] for t in threads}, **v})
            print(format_rows(rows[-len(got):], threads, header=len(rows) == len(got)), flush=True)
            for variant in got:
                shutil.rmtree(os.path.join(d, variant), ignore_errors=True)
    return rows


def format_rows(rows: list[dict], threads, header: bool = True) -> str:
    cols = ["model", "exporter", "variant", *SHOWN, "total", *[f"ms ({t} thr)" for t in threads], *[f"ratio ({t} thr)" for t in threads]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] if header else []
    base = {}
    for r in rows:
        key = (r["model"], r["exporter"])
        if r["variant"] == "default":
            base[key] = r["ms"]
        ratios = [f"{r['ms'][t] / base[key][t]:.3f}" if key in base else "" for t in threads]
        cells = [r["model"], r["exporter"], r["variant"], *[str(r["ops"].get(o, 0)) for o in SHOWN], str(sum(r["ops"].values())),
                 *[f"{r['ms'][t]:.2f}" for t in threads], *ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vit,bert", help=f"comma-separated, from: {', '.join(T.MODELS)}")
    ap.add_argument("--exporters", default="dynamo,legacy")
    ap.add_argument("--size", choices=["base", "small"], default="base", help="small: a quarter of the blocks")
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--iters", type=int, default=5, help="invokes per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default, heads_first, guard_kept, default, ...)")
    ap.add_argument("--workdir", default="/tmp/graph_convert_heads_first_bench")
    a = ap.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    os.makedirs(a.workdir, exist_ok=True)
    rows = run([n for n in a.models.split(",") if n], a.exporters.split(","), a.size, a.iters, a.rounds, threads, a.workdir)
    print()
    print(format_rows(rows, threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
