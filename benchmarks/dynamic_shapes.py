"""Dynamic shapes: what keeping a dim free costs, at run time and at conversion time.

For a detector (YOLO-style: strided convs, nearest upsample, concat, a head per level), a UNet
(bilinear resize to the skip's size) and a text encoder (embeddings, a position table sliced to
the sequence, attention), every parameter random, exported with TorchScript and symbolic dims:

- the dynamic conversion (dims kept, proven at 5 sizes) and the static one (``--input-shape`` at
  the benchmark size) are timed in one process after an untimed warm-up conversion (a process's
  first conversion pays TensorFlow's one-time costs), in turn, ``--conv-rounds`` times each
  (median);
- both .tflite files run on LiteRT (XNNPACK, one thread) at the benchmark size, the dynamic one
  after ``resize_tensor_input``, interleaved in one process (median of the rounds).

A plain script, not a test: ``python benchmarks/dynamic_shapes.py [--rounds 50] [--conv-rounds 3] [--only NAME]``
prints one table; ``--onnx FILE --shape 1,3,320,320`` measures a given ONNX file with symbolic
dims instead (e.g. ultralytics' YOLOv8 exported with ``dynamic=True``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn


class Detector(nn.Module):
    """Backbone of strided convs, an FPN-style top-down path (nearest x2 upsample + concat) and
    one 1x1 head per level, outputs flattened and concatenated over the levels (no anchor decoding
    in the graph; for a detector that decodes, run ``--onnx`` on ultralytics' ``dynamic=True`` export)."""

    def __init__(self):
        super().__init__()
        ch = [3, 16, 32, 64, 96, 128]
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(ch[i], ch[i + 1], 3, 2, 1), nn.SiLU()) for i in range(5))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat4 = nn.Sequential(nn.Conv2d(128 + 96, 96, 3, 1, 1), nn.SiLU())
        self.lat3 = nn.Sequential(nn.Conv2d(96 + 64, 64, 3, 1, 1), nn.SiLU())
        self.heads = nn.ModuleList(nn.Conv2d(c, 84, 1) for c in (64, 96, 128))

    def forward(self, x):
        feats = []
        for m in self.down:
            x = m(x)
            feats.append(x)
        p5 = feats[4]
        p4 = self.lat4(torch.cat([self.up(p5), feats[3]], 1))
        p3 = self.lat3(torch.cat([self.up(p4), feats[2]], 1))
        outs = [h(p).flatten(2) for h, p in zip(self.heads, (p3, p4, p5))]
        return torch.cat(outs, 2)


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        ch = [3, 16, 32, 64, 128]
        self.enc = nn.ModuleList(nn.Sequential(nn.Conv2d(ch[i], ch[i + 1], 3, 1 if i == 0 else 2, 1), nn.ReLU()) for i in range(4))
        self.dec = nn.ModuleList(nn.Sequential(nn.Conv2d(ch[i + 1] + ch[i], ch[i], 3, 1, 1), nn.ReLU()) for i in range(1, 4))
        self.out = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        skips = []
        for m in self.enc:
            x = m(x)
            skips.append(x)
        x = skips.pop()
        for m, s in zip(reversed(self.dec), reversed(skips)):
            x = nn.functional.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = m(torch.cat([x, s], 1))
        return self.out(x)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.qkv, self.out, self.heads = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden), heads
        self.n1, self.n2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x):
        n, s, d = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1) @ v
        x = x + self.out(a.transpose(1, 2).reshape(n, s, d))
        return x + self.ff(self.n2(x))


class TextEncoder(nn.Module):
    """Token and position embeddings (the position table sliced to the sequence), pre-norm
    attention blocks written out (torch's fused TransformerEncoderLayer, exported with TorchScript,
    bakes the traced length into a Reshape: a file whose sequence is not free, refused as such)."""

    def __init__(self, hidden: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(1000, hidden), nn.Embedding(256, hidden)
        self.layers = nn.ModuleList(Attention(hidden, heads) for _ in range(layers))

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        for layer in self.layers:
            x = layer(x)
        return x


def _randomize(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m.eval()


# name -> (module, example input, input name, symbolic axes, benchmark input shape, feed dtype)
CASES = {
    "detector": (Detector, (1, 3, 64, 64), "images", {0: "batch", 2: "height", 3: "width"}, (1, 3, 320, 480), np.float32),
    "unet": (UNet, (1, 3, 64, 64), "x", {0: "batch", 2: "height", 3: "width"}, (1, 3, 256, 256), np.float32),
    "text_encoder": (TextEncoder, (1, 16), "ids", {0: "batch", 1: "sequence"}, (1, 77), np.int64),
}


def _export(name: str, folder: str) -> str:
    cls, ex, inp, axes, _, dt = CASES[name]
    m = _randomize(cls())
    x = torch.randint(0, 1000, ex) if dt == np.int64 else torch.randn(*ex)
    path = os.path.join(folder, f"{name}.onnx")
    torch.onnx.export(m, (x,), path, dynamo=False, opset_version=17, input_names=[inp], dynamic_axes={inp: axes})
    return path


def _interpreter(path: str, shape: tuple | None):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=1)
    d = it.get_input_details()[0]
    if shape is not None:
        it.resize_tensor_input(d["index"], list(shape))
    it.allocate_tensors()
    return it, d["index"]


def _bench(name: str, rounds: int, folder: str, conv_rounds: int, onnx_file: tuple | None = None) -> dict:
    from graph_convert import convert

    if onnx_file is None:
        src = _export(name, folder)
        _, _, inp, _, shape, dt = CASES[name]
    else:  # a given ONNX file with symbolic dims (e.g. ultralytics' dynamic=True export)
        src, inp, shape, dt = onnx_file
    # one untimed conversion first (TensorFlow's first trace and converter run in a process pay
    # one-time costs), then the two conversions in turn, ``conv_rounds`` times each, medians
    convert(src, output_dir=os.path.join(folder, f"{name}_warmup"), input_shapes=[(inp, shape)])
    t_conv: dict[str, list[float]] = {"dynamic": [], "static": []}
    for r in range(conv_rounds):
        for key in (("dynamic", "static") if r % 2 == 0 else ("static", "dynamic")):
            kw = {} if key == "dynamic" else {"input_shapes": [(inp, shape)]}
            t = time.perf_counter()
            res = convert(src, output_dir=os.path.join(folder, f"{name}_{key}"), overwrite=True, **kw)
            t_conv[key].append(time.perf_counter() - t)
            if key == "dynamic":
                dyn = res
            else:
                st = res
    t_dyn, t_st = statistics.median(t_conv["dynamic"]), statistics.median(t_conv["static"])
    kept = [n for n, d in dyn.report["dynamic"]["dims"].items() if d.get("kept")]
    # the benchmark input, in the files' layout (channels-last for images)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, shape).astype(dt) if dt == np.int64 else rng.standard_normal(shape).astype(dt)
    perm = dyn.report["io"]["inputs"][0]["layout_perm"]
    xl = np.ascontiguousarray(np.transpose(x, perm)) if perm else x
    a, ai = _interpreter(dyn.paths["tflite_float32"], xl.shape)
    b, bi = _interpreter(st.paths["tflite_float32"], None)
    times = {"dynamic": [], "static": []}
    for it, idx in ((a, ai), (b, bi)):  # warm-up
        it.set_tensor(idx, xl)
        it.invoke()
    same = np.allclose(a.get_tensor(a.get_output_details()[0]["index"]), b.get_tensor(b.get_output_details()[0]["index"]), atol=1e-4)
    for _ in range(rounds):
        for key, (it, idx) in (("dynamic", (a, ai)), ("static", (b, bi))):
            it.set_tensor(idx, xl)
            t = time.perf_counter()
            it.invoke()
            times[key].append(time.perf_counter() - t)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"model": name, "size": "x".join(map(str, shape)), "kept": ",".join(kept), "static_ms": ms["static"],
            "dynamic_ms": ms["dynamic"], "latency_ratio": ms["dynamic"] / ms["static"], "convert_static_s": t_st,
            "convert_dynamic_s": t_dyn, "convert_ratio": t_dyn / t_st, "same_outputs": same,
            "sizes_checked": len([e for e in dyn.report["dynamic"]["checks"] if e["verdict"] == "ok"]),
            "ops_dynamic": dyn.report["tflite"]["total_ops"], "ops_static": st.report["tflite"]["total_ops"],
            "transpose": (dyn.report["tflite"]["transpose_ops"], st.report["tflite"]["transpose_ops"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--conv-rounds", type=int, default=3, help="timed conversions of each kind (median)")
    ap.add_argument("--only", choices=sorted(CASES))
    ap.add_argument("--onnx", help="benchmark this ONNX file instead (its first input; with --shape)")
    ap.add_argument("--shape", help="the benchmark size of --onnx's first input, e.g. 1,3,320,320")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gc-dynbench-") as folder:
        if args.onnx:
            import onnx

            first = onnx.load(args.onnx, load_external_data=False).graph.input[0].name
            shape = tuple(int(v) for v in args.shape.split(","))
            rows.append(_bench(os.path.basename(args.onnx), args.rounds, folder, args.conv_rounds, (args.onnx, first, shape, np.float32)))
        for name in ([] if args.onnx else [args.only] if args.only else list(CASES)):
            rows.append(_bench(name, args.rounds, folder, args.conv_rounds))
            print(f"done: {rows[-1]}", file=sys.stderr)
    head = ("model", "size", "kept dims", "static ms", "dynamic ms", "ratio", "conv static s", "conv dynamic s", "ratio",
            "sizes ok", "ops dyn/static", "TRANSPOSE dyn/static", "same out")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(" | ".join([r["model"], r["size"], r["kept"], f"{r['static_ms']:.2f}", f"{r['dynamic_ms']:.2f}", f"{r['latency_ratio']:.3f}",
                          f"{r['convert_static_s']:.1f}", f"{r['convert_dynamic_s']:.1f}", f"{r['convert_ratio']:.2f}",
                          str(r["sizes_checked"]), f"{r['ops_dynamic']}/{r['ops_static']}", f"{r['transpose'][0]}/{r['transpose'][1]}",
                          str(r["same_outputs"])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
