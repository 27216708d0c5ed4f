"""Random small conv networks for property-based tests of the layout machinery.

A network is a list of layer specs (plain dicts, so a failing example prints as data and can be
pasted into a regression test); :func:`build` turns it into an ONNX model, tracking shapes so
every generated model is valid. Used by tests/test_property.py (a few examples in CI) and
benchmarks/property_layout.py (hundreds).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

from tests.helpers import Builder

LAYERS = ["conv", "convT", "act", "affine", "residual", "concat", "pool", "gap_mul", "shuffle", "d2s", "s2d", "slice_pad", "softmax", "reduce"]


def _conv_out(n, k, s, d, pb, pe):
    return (n + pb + pe - (d * (k - 1) + 1)) // s + 1


@st.composite
def networks(draw, max_layers: int = 5) -> dict[str, Any]:
    rank = draw(st.sampled_from([4, 3, 5, 4]))
    n_sp = rank - 2
    spatial = [draw(st.integers(4, 9 if rank < 5 else 6)) for _ in range(n_sp)]
    c = draw(st.sampled_from([2, 4, 6]))
    layers = []
    for _ in range(draw(st.integers(1, max_layers))):
        kind = draw(st.sampled_from(LAYERS))
        if kind in ("shuffle", "d2s", "s2d") and rank != 4:
            kind = "act"
        spec: dict[str, Any] = {"kind": kind}
        if kind in ("conv", "convT"):
            k = draw(st.integers(1, 3))
            spec.update(k=k, stride=draw(st.integers(1, 2)), dilation=draw(st.integers(1, 2)),
                        pads=[draw(st.integers(0, k - 1)) for _ in range(2 * n_sp)],
                        c_out=draw(st.sampled_from([2, 4, 6])), groups=draw(st.sampled_from([1, 2, "dw"])),
                        bias=draw(st.booleans()))
            if kind == "convT":
                spec["output_padding"] = draw(st.integers(0, 1))
        elif kind == "act":
            spec["op"] = draw(st.sampled_from(["Relu", "Sigmoid", "HardSwish", "LeakyRelu", "Clip6", "Tanh"]))
        elif kind == "pool":
            k = draw(st.integers(1, 3))
            spec.update(op=draw(st.sampled_from(["MaxPool", "AveragePool"])), k=k, stride=draw(st.integers(1, 2)),
                        pads=[draw(st.integers(0, k // 2)) for _ in range(2 * n_sp)],
                        ceil=draw(st.booleans()) and rank == 4, include_pad=draw(st.booleans()))
        elif kind == "concat":
            spec["n"] = draw(st.integers(2, 3))
        elif kind == "slice_pad":
            spec.update(axis=draw(st.integers(1, rank - 1)), mode=draw(st.sampled_from(["constant", "reflect", "edge"])))
        elif kind == "reduce":
            spec["keepdims"] = draw(st.booleans())
        layers.append(spec)
    head = draw(st.sampled_from(["none", "flatten_gemm", "gap_gemm"]))
    return {"rank": rank, "spatial": spatial, "c": c, "layers": layers, "head": head, "seed": draw(st.integers(0, 1000))}


def build(net: dict[str, Any]):
    """ONNX model for a network spec; layers that would not fit the current shape are skipped."""
    b = Builder(opset=17)
    b.rng = np.random.default_rng(net["seed"])
    rank, c = net["rank"], net["c"]
    n_sp = rank - 2
    spatial = list(net["spatial"])
    x = b.input("x", [1, c, *spatial])
    cur = x
    for spec in net["layers"]:
        kind = spec["kind"]
        if kind in ("conv", "convT"):
            k, s, d = spec["k"], spec["stride"], spec["dilation"]
            pads = spec["pads"]
            groups = c if spec["groups"] == "dw" else spec["groups"]
            c_out = spec["c_out"] if spec["groups"] != "dw" else c
            if c % groups or c_out % groups:
                groups = 1
            if kind == "conv":
                new_sp = [_conv_out(spatial[i], k, s, d, pads[i], pads[i + n_sp]) for i in range(n_sp)]
                if min(new_sp) < 1:
                    continue
                w = b.weight([c_out, c // groups] + [k] * n_sp)
                ins = [cur, w] + ([b.weight([c_out])] if spec["bias"] else [])
                cur = b.op("Conv", ins, kernel_shape=[k] * n_sp, strides=[s] * n_sp, dilations=[d] * n_sp, pads=pads, group=groups)
            else:
                op = min(spec["output_padding"], s - 1)  # ORT requires output_padding < stride
                pads = [min(p, d * (k - 1)) for p in pads]
                new_sp = [(spatial[i] - 1) * s + d * (k - 1) + 1 + op - pads[i] - pads[i + n_sp] for i in range(n_sp)]
                if min(new_sp) < 1 or max(new_sp) > 24:
                    continue
                w = b.weight([c, c_out // groups] + [k] * n_sp)
                ins = [cur, w] + ([b.weight([c_out])] if spec["bias"] else [])
                cur = b.op("ConvTranspose", ins, kernel_shape=[k] * n_sp, strides=[s] * n_sp, dilations=[d] * n_sp,
                           pads=pads, group=groups, output_padding=[op] * n_sp)
            spatial, c = new_sp, c_out
        elif kind == "act":
            op = spec["op"]
            if op == "Clip6":
                cur = b.op("Clip", [cur, b.const(0.0), b.const(6.0)])
            elif op == "LeakyRelu":
                cur = b.op("LeakyRelu", [cur], alpha=0.1)
            else:
                cur = b.op(op, [cur])
        elif kind == "affine":
            cur = b.op("Add", [b.op("Mul", [cur, b.weight([c] + [1] * n_sp)]), b.weight([c] + [1] * n_sp)])
        elif kind == "residual":
            y = b.op("Conv", [cur, b.weight([c, c] + [3] * n_sp)], kernel_shape=[3] * n_sp, pads=[1] * (2 * n_sp))
            cur = b.op("Add", [cur, b.op("Relu", [y])])
        elif kind == "concat":
            branches = [b.op("Conv", [cur, b.weight([2, c] + [1] * n_sp)], kernel_shape=[1] * n_sp) for _ in range(spec["n"] - 1)]
            cur = b.op("Concat", [cur, *branches], axis=1)
            c += 2 * (spec["n"] - 1)
        elif kind == "pool":
            k, s = spec["k"], spec["stride"]
            pads = [min(p, (k - 1) // 2) for p in spec["pads"]]
            ceil = bool(spec["ceil"])
            new_sp = []
            for i in range(n_sp):
                span = spatial[i] + pads[i] + pads[i + n_sp] - k
                o = (math.ceil if ceil else math.floor)(span / s) + 1
                if ceil and (o - 1) * s >= spatial[i] + pads[i]:
                    o = 0  # ORT drops a window starting in the padding; ONNX shape inference does not: skip
                new_sp.append(o)
            if min(new_sp) < 1 or (rank == 5 and spec["op"] == "AveragePool" and any(pads)):
                continue
            attrs = {"kernel_shape": [k] * n_sp, "strides": [s] * n_sp, "pads": pads, "ceil_mode": int(ceil)}
            if spec["op"] == "AveragePool":
                attrs["count_include_pad"] = int(spec["include_pad"])
            cur = b.op(spec["op"], [cur], **attrs)
            spatial = new_sp
        elif kind == "gap_mul":
            g = b.op("GlobalAveragePool", [cur])
            g = b.op("Sigmoid", [b.op("Conv", [g, b.weight([c, c] + [1] * n_sp)], kernel_shape=[1] * n_sp)])
            cur = b.op("Mul", [cur, g])
        elif kind == "shuffle":
            if c % 2:
                continue
            h, w = spatial
            r = b.op("Reshape", [cur, b.const(np.array([1, 2, c // 2, h, w]), dtype=np.int64)])
            r = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
            cur = b.op("Reshape", [r, b.const(np.array([1, c, h, w]), dtype=np.int64)])
        elif kind == "d2s":
            if c % 4:
                continue
            cur = b.op("DepthToSpace", [cur], blocksize=2, mode="DCR")
            c //= 4
            spatial = [d * 2 for d in spatial]
        elif kind == "s2d":
            if any(d % 2 for d in spatial):
                continue
            cur = b.op("SpaceToDepth", [cur], blocksize=2)
            c *= 4
            spatial = [d // 2 for d in spatial]
        elif kind == "slice_pad":
            axis = spec["axis"]
            dim = c if axis == 1 else spatial[axis - 2]
            if dim < 3 or (spec["mode"] == "reflect" and dim < 4):
                continue  # reflect padding needs >= 2 elements left after the slice
            sl = b.op("Slice", [cur, b.const(np.array([1]), dtype=np.int64), b.const(np.array([dim - 1]), dtype=np.int64),
                                b.const(np.array([axis]), dtype=np.int64)])
            pads = [0] * (2 * rank)
            pads[axis] = 1
            pads[axis + rank] = 1
            cur = b.op("Pad", [sl, b.const(np.array(pads), dtype=np.int64)], mode=spec["mode"])
        elif kind == "softmax":
            cur = b.op("Softmax", [cur], axis=1)
        elif kind == "reduce":
            axes = list(range(2, rank))
            red = b.op("ReduceMean", [cur], axes=axes, keepdims=1)  # opset 17: axes is an attribute
            cur = b.op("Sub", [cur, red])
    if cur == x:  # every layer was skipped: keep the model non-trivial
        cur = b.op("Relu", [x])
    if net["head"] == "flatten_gemm" and int(np.prod(spatial)) * c <= 4096:
        f = b.op("Flatten", [cur], axis=1)
        cur = b.op("Gemm", [f, b.weight([5, c * int(np.prod(spatial))]), b.weight([5])], transB=1)
    elif net["head"] == "gap_gemm":
        f = b.op("Flatten", [b.op("GlobalAveragePool", [cur])], axis=1)
        cur = b.op("Gemm", [f, b.weight([c, 3])])
    b.output(cur)
    return b.model()
