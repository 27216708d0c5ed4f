"""Mutation fuzzer for the real command line: N mutated ONNX models through
``graph-convert convert FILE.onnx -o OUT``; checks that every run ends cleanly, never passes a
wrong model and leaves nothing beside its output. Usage (see benchmarks/README.md):

    PYTHONPATH=. python benchmarks/fuzz.py N [--seed S] [--jobs J] [--keep-failures DIR] [--start I]

Properties checked for each mutation:
  a. the run ends with a documented exit code (0, 2-6), no exception escapes ``cli.main``,
     no "Traceback" on stderr, and a failing run says why in exactly one line;
  b. an exit 0 is right: the written ``model_float32.tflite`` (and, with ``--savedmodel``, the
     SavedModel) run on fresh inputs agree with the *mutated* source in ONNX Runtime, judged
     here by our own scale-aware rule (``graph_convert.checks.equivalence`` is what is under test);
  c. nothing is left beside the output: the output's parent folder holds OUT after an exit 0
     and nothing after a failure; the source's folder is untouched.

Mutations are reproducible from (seed, index): ``--seed S --start I 1`` reruns exactly one.
Conversions run in long-lived worker processes (TensorFlow is imported once per worker) that
call ``graph_convert.cli.main(argv)``; a worker that hangs is killed and replaced.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict, deque
from typing import Any, Callable

import numpy as np

# README "Exit codes" (6, internal error, since 9806e18; 128 + a signal cannot happen inside a worker)
DOCUMENTED_EXITS = {0, 2, 3, 4, 5, 6}
OUTCOMES = ["ok", "exit2", "exit3", "exit4", "exit5", "exit6", "traceback", "bad-exit", "bad-stderr",
            "wrong-output", "exit0-ort-rejects", "leftovers", "timeout", "crash"]
FAILURES = {"traceback", "bad-exit", "bad-stderr", "wrong-output", "leftovers", "timeout", "crash"}
# exit0-ort-rejects: exit 0 for a source that ONNX Runtime refuses as written (value_info that
# contradicts the input shapes); the outputs still match ORT once the value_info is dropped, as the
# converter itself does. Listed as a note for a human to judge, not counted as a failure.
NOTES = {"exit0-ort-rejects"}
CACHE = os.path.join(tempfile.gettempdir(), "graph_convert_fuzz_cache")

# ---------------------------------------------------------------------------------------------
# base models: tiny, valid, quick to convert
# ---------------------------------------------------------------------------------------------


class _B:
    """A few lines of graph building (like tests/helpers.Builder, but free of graph_convert)."""

    def __init__(self, opset: int = 17):
        from onnx import helper

        self.h, self.opset = helper, opset
        self.nodes, self.inputs, self.outputs, self.inits = [], [], [], []
        self.n = 0
        self.rng = np.random.default_rng(0)

    def input(self, name, shape, elem=1):
        self.inputs.append(self.h.make_tensor_value_info(name, elem, list(shape)))
        return name

    def const(self, arr, name=None):
        from onnx import numpy_helper

        self.n += 1
        name = name or f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def w(self, *shape, scale=0.5):
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type, inputs, n_out=1, **attrs):
        self.n += 1
        outs = [f"{op_type.lower()}{self.n}_{i}" for i in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self.n}", **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, *outputs):
        import onnx

        g = self.h.make_graph(self.nodes, "fuzz_base", self.inputs, [], self.inits)
        g.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
        m = self.h.make_model(g, opset_imports=[self.h.make_opsetid("", self.opset)])
        m.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(m)
        known = {vi.name: vi for vi in [*inferred.graph.value_info, *m.graph.input]}
        for o in m.graph.output:
            o.type.CopyFrom(known[o.name].type)
        onnx.checker.check_model(m)
        return m


def base_conv_chain():
    b = _B()
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.w(4, 3, 3, 3), b.w(4)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    y = b.op("Relu", [y])
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Conv", [y, b.w(4, 1, 3, 3), b.w(4)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4)
    y = b.op("Sigmoid", [y])
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(5, 64, scale=0.2), b.w(5)], transB=1)
    return b.model(y)


def base_residual():
    b = _B()
    x = b.input("image", [1, 4, 6, 6])
    y = b.op("Conv", [x, b.w(4, 4, 3, 3), b.w(4)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.op("BatchNormalization", [y, b.const(np.linspace(0.5, 1.5, 4).astype(np.float32)), b.w(4),
                                     b.w(4), b.const(np.linspace(0.5, 2, 4).astype(np.float32))], epsilon=1e-5)
    y = b.op("Relu", [y])
    y = b.op("Conv", [y, b.w(4, 4, 1, 1), b.w(4)], kernel_shape=[1, 1])
    y = b.op("Add", [y, x])
    y = b.op("Relu", [y])
    y = b.op("GlobalAveragePool", [y])
    return b.model(y)


def base_attention():
    b = _B()
    x = b.input("tokens", [1, 6, 8])
    q = b.op("MatMul", [x, b.w(8, 8, scale=0.3)])
    k = b.op("MatMul", [x, b.w(8, 8, scale=0.3)])
    v = b.op("MatMul", [x, b.w(8, 8, scale=0.3)])
    heads = b.const(np.array([1, 6, 2, 4], np.int64))
    q, k, v = (b.op("Transpose", [b.op("Reshape", [t, heads])], perm=[0, 2, 1, 3]) for t in (q, k, v))
    kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    s = b.op("Mul", [b.op("MatMul", [q, kt]), b.const(np.float32(0.5))])
    p = b.op("Softmax", [s], axis=-1)
    o = b.op("Transpose", [b.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.const(np.array([1, 6, 8], np.int64))])
    o = b.op("Add", [b.op("MatMul", [o, b.w(8, 8, scale=0.3)]), x])
    mean = b.op("ReduceMean", [o], axes=[-1], keepdims=1)
    o = b.op("LayerNormalization", [o, b.const(np.ones(8, np.float32)), b.const(np.zeros(8, np.float32))], axis=-1)
    return b.model(o, mean)


def base_multi_io():
    b = _B()
    img = b.input("img", [1, 2, 6, 6])
    vec = b.input("vec", [1, 5])
    y = b.op("Conv", [img, b.w(3, 2, 3, 3), b.w(3)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = b.op("LeakyRelu", [y], alpha=0.1)
    y = b.op("Concat", [y, b.op("AveragePool", [img], kernel_shape=[2, 2], strides=[2, 2])], axis=1)
    pooled = b.op("Flatten", [b.op("GlobalMaxPool", [y])], axis=1)
    z = b.op("Concat", [pooled, vec], axis=1)
    z = b.op("Tanh", [b.op("Gemm", [z, b.w(10, 4), b.w(4)])])
    parts = b.op("Split", [z, b.const(np.array([1, 3], np.int64))], n_out=2, axis=1)
    return b.model(y, parts[0], parts[1])


def base_misc():
    b = _B(opset=13)
    x = b.input("x", [1, 4, 4, 4])
    y = b.op("ConvTranspose", [x, b.w(4, 2, 2, 2), b.w(2)], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Pad", [y, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode="constant")
    y = b.op("Clip", [y, b.const(np.float32(-1)), b.const(np.float32(1))])
    y = b.op("Resize", [y, b.const(np.zeros(0, np.float32)), b.const(np.array([1, 1, 0.5, 0.5], np.float32))], mode="nearest")
    y = b.op("Mul", [y, b.w(1, 2, 1, 1)])
    t = b.op("Transpose", [y], perm=[0, 2, 3, 1])
    r = b.op("ReduceSum", [t, b.const(np.array([1, 2], np.int64))], keepdims=0)
    g = b.op("Gather", [b.op("Exp", [r]), b.const(np.array([1, 0], np.int64))], axis=1)
    return b.model(y, g)


def base_spelled():
    """Forms that passes recognise or fold: stride-2 k//2 padding (not SAME), LayerNorm over
    channels and GELU spelled out as exporters write them, a channel shuffle."""
    b = _B()
    x = b.input("x", [1, 4, 8, 8])
    y = b.op("Conv", [x, b.w(8, 4, 3, 3), b.w(8)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    t = b.op("Transpose", [y], perm=[0, 2, 3, 1])
    mu = b.op("ReduceMean", [t], axes=[-1], keepdims=1)
    d = b.op("Sub", [t, mu])
    var = b.op("ReduceMean", [b.op("Pow", [d, b.const(np.float32(2))])], axes=[-1], keepdims=1)
    n = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(1e-5))])])])
    n = b.op("Add", [b.op("Mul", [n, b.w(8)]), b.w(8)])
    y = b.op("Transpose", [n], perm=[0, 3, 1, 2])
    e = b.op("Erf", [b.op("Div", [y, b.const(np.float32(np.sqrt(2)))])])
    y = b.op("Mul", [b.op("Mul", [y, b.op("Add", [e, b.const(np.float32(1))])]), b.const(np.float32(0.5))])
    y = b.op("Reshape", [y, b.const(np.array([1, 2, 4, 4, 4], np.int64))])
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = b.op("Reshape", [y, b.const(np.array([1, 8, 4, 4], np.int64))])
    y = b.op("HardSwish", [y])
    y = b.op("Slice", [y, b.const(np.array([1, 0], np.int64)), b.const(np.array([7, 3], np.int64)),
                       b.const(np.array([1, 3], np.int64)), b.const(np.array([2, 1], np.int64))])
    return b.model(y)


def base_dynamic():
    """A symbolic batch (converted for any batch size) and an integer output."""
    b = _B()
    x = b.input("pixels", ["N", 3, 8, 8])
    y = b.op("Conv", [x, b.w(6, 3, 3, 3), b.w(6)], kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[1, 1])
    y = b.op("Relu", [y])
    y = b.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = b.op("Reshape", [y, b.const(np.array([0, -1], np.int64))])
    y = b.op("Gemm", [y, b.w(96, 7, scale=0.1), b.w(7)])
    p = b.op("Softmax", [y], axis=1)
    return b.model(p, b.op("ArgMax", [y], axis=1, keepdims=0))


def base_sequence():
    """1-D convolution, squeeze/unsqueeze, a batched MatMul and elementwise odds and ends."""
    b = _B()
    x = b.input("audio", [1, 4, 16])
    y = b.op("Conv", [x, b.w(6, 4, 5), b.w(6)], kernel_shape=[5], pads=[2, 2], dilations=[1])
    y = b.op("BatchNormalization", [y, b.const(np.linspace(0.5, 1.5, 6).astype(np.float32)), b.w(6), b.w(6),
                                     b.const(np.linspace(0.5, 2, 6).astype(np.float32))])
    y = b.op("Elu", [y], alpha=1.0)
    y = b.op("AveragePool", [y], kernel_shape=[2], strides=[2])
    y = b.op("Unsqueeze", [y, b.const(np.array([1], np.int64))])
    y = b.op("Squeeze", [y, b.const(np.array([1], np.int64))])
    t = b.op("Transpose", [y], perm=[0, 2, 1])
    y = b.op("MatMul", [t, b.w(6, 3)])
    y = b.op("Max", [b.op("Neg", [y]), b.op("Abs", [b.op("Sin", [y])])])
    y = b.op("ReduceMax", [y], axes=[1], keepdims=0)
    c = b.op("Cast", [b.op("Greater", [y, b.const(np.float32(0.5))])], to=1)
    return b.model(y, b.op("Where", [b.op("Cast", [c], to=9), y, b.const(np.float32(-1))]))


def base_zoo_spatial():
    """Attribute-heavy spatial ops side by side, one output each: an attribute mutation of one
    of them leaves the others as they were."""
    b = _B()
    x = b.input("x", [1, 4, 6, 6])
    outs = [
        b.op("Resize", [x, "", b.const(np.array([1, 1, 2, 1.5], np.float32))], mode="linear",
             coordinate_transformation_mode="half_pixel"),
        b.op("Resize", [x, "", b.const(np.array([1, 1, 0.5, 2], np.float32))], mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        b.op("DepthToSpace", [x], blocksize=2, mode="DCR"),
        b.op("SpaceToDepth", [x], blocksize=2),
        b.op("Pad", [x, b.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], mode="reflect"),
        b.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0, ceil_mode=1),
        b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2]),
        b.op("Conv", [x, b.w(3, 4, 3, 3), b.w(3)], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        b.op("Conv", [x, b.w(4, 2, 2, 3)], kernel_shape=[2, 3], dilations=[2, 1], group=2, pads=[0, 1, 1, 0]),
        b.op("ConvTranspose", [x, b.w(4, 2, 3, 3), b.w(2)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             output_padding=[1, 0]),
        b.op("LRN", [x], size=3, alpha=1e-3, beta=0.75, bias=1.0),
        b.op("InstanceNormalization", [x, b.w(4), b.w(4)], epsilon=1e-5),
    ]
    return b.model(*outs)


def base_zoo_tensor():
    """Attribute-heavy tensor ops side by side, one output each."""
    b = _B()
    x = b.input("x", [2, 3, 5])
    vals, idx = b.op("TopK", [x, b.const(np.array([2], np.int64))], n_out=2, axis=-1, largest=1)
    outs = [
        b.op("CumSum", [x, b.const(np.int64(2))], exclusive=1, reverse=1),
        vals, idx,
        b.op("LogSoftmax", [x], axis=1),
        b.op("Hardmax", [x], axis=-1),
        b.op("Trilu", [x, b.const(np.int64(1))], upper=0),
        b.op("GatherElements", [x, b.const(np.array([[[0, 4, 1, 2, 3]] * 3] * 2, np.int64))], axis=2),
        b.op("ReduceL2", [x], axes=[0, 2], keepdims=0),
        b.op("Selu", [x], alpha=1.5, gamma=1.1),
        b.op("Celu", [x], alpha=0.7),
        b.op("Shrink", [x], bias=0.2, lambd=0.4),
        b.op("ThresholdedRelu", [x], alpha=0.3),
        b.op("HardSigmoid", [x], alpha=0.3, beta=0.4),
        b.op("Slice", [x, b.const(np.array([-1, 4], np.int64)), b.const(np.array([-4, 0], np.int64)),
                       b.const(np.array([1, 2], np.int64)), b.const(np.array([-1, -2], np.int64))]),
        b.op("Mod", [x, b.const(np.float32(0.7))], fmod=1),
        b.op("Einsum", [x, b.w(5, 4)], equation="bij,jk->bik"),
        b.op("ArgMin", [x], axis=1, keepdims=1, select_last_index=1),
        b.op("Expand", [b.op("Unsqueeze", [x, b.const(np.array([1], np.int64))]), b.const(np.array([2, 2, 3, 5], np.int64))]),
    ]
    return b.model(*outs)


BUILT = {"conv_chain": base_conv_chain, "residual": base_residual, "attention": base_attention,
         "multi_io": base_multi_io, "misc": base_misc, "spelled": base_spelled, "dynamic": base_dynamic,
         "sequence": base_sequence, "zoo_spatial": base_zoo_spatial, "zoo_tensor": base_zoo_tensor}
# bundled PyTorch models exported once with small shapes (cached under CACHE)
EXPORTED = {"digits_cnn": (1, 1, 8, 8), "channel_shuffle": (1, 3, 16, 16), "se_block": (1, 3, 16, 16),
            "convnext_block": (1, 3, 16, 16)}


def load_bases(names: list[str], log: Callable[[str], None]) -> dict[str, bytes]:
    """Serialized base models by name; exported ones are cached across runs."""
    out = {}
    for name in names:
        if name in BUILT:
            out[name] = BUILT[name]().SerializeToString()
            continue
        shape = EXPORTED[name]
        path = os.path.join(CACHE, f"{name}-{'x'.join(map(str, shape))}.onnx")
        if not os.path.exists(path):
            log(f"exporting models/{name}.py at {shape} (once, cached in {CACHE})")
            os.makedirs(CACHE, exist_ok=True)
            _export(name, shape, path)
        with open(path, "rb") as f:
            out[name] = f.read()
    return out


def _export(name: str, shape: tuple, path: str) -> None:
    import importlib

    import onnx
    import torch

    from graph_convert.conversion.export import export

    torch.manual_seed(0)
    module = importlib.import_module(f"models.{name}").make().eval()
    work = tempfile.mkdtemp(prefix="gc-fuzz-export-")
    try:
        export(module, (torch.randn(*shape),), os.path.join(work, "m.onnx"))
        model = onnx.load(os.path.join(work, "m.onnx"))  # external data folded back in
        tmp = path + f".tmp{os.getpid()}"
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# mutations: each takes (model, rng) and returns a ModelProto or bytes plus a one-line detail
# ---------------------------------------------------------------------------------------------

_ATTRS_BY_OP = {
    "Conv": {"group": [1, 2, 3, 4, 0, -1], "strides": "ints2", "pads": "ints4", "kernel_shape": "ints2", "dilations": "ints2",
             "auto_pad": ["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET", "BOGUS"]},
    "ConvTranspose": {"group": [1, 2, 0], "strides": "ints2", "output_padding": "ints2", "pads": "ints4",
                      "output_shape": "ints2", "auto_pad": ["SAME_UPPER", "VALID"]},
    "MaxPool": {"ceil_mode": [0, 1], "storage_order": [0, 1], "dilations": "ints2", "strides": "ints2", "pads": "ints4",
                "kernel_shape": "ints2", "auto_pad": ["SAME_UPPER", "VALID"]},
    "AveragePool": {"ceil_mode": [0, 1], "count_include_pad": [0, 1], "pads": "ints4", "strides": "ints2", "kernel_shape": "ints2"},
    "Transpose": {"perm": "perm"},
    "Softmax": {"axis": "axis"}, "Concat": {"axis": "axis"}, "Flatten": {"axis": "axis"}, "Gather": {"axis": "axis"},
    "Split": {"axis": "axis"}, "LayerNormalization": {"axis": "axis", "epsilon": "float"},
    "Reshape": {"allowzero": [0, 1]},
    "Gemm": {"transA": [0, 1], "transB": [0, 1], "alpha": "float", "beta": "float"},
    "ReduceMean": {"keepdims": [0, 1], "axes": "axes"}, "ReduceSum": {"keepdims": [0, 1], "noop_with_empty_axes": [0, 1]},
    "BatchNormalization": {"epsilon": "float", "momentum": "float", "training_mode": [0, 1]},
    "LeakyRelu": {"alpha": "float"}, "Resize": {"mode": ["linear", "cubic", "nearest", "bogus"],
                                                 "coordinate_transformation_mode": ["align_corners", "asymmetric", "half_pixel"]},
    "Pad": {"mode": ["reflect", "edge", "wrap", "bogus"]},
    "DepthToSpace": {"blocksize": [1, 2, 3, 0], "mode": ["DCR", "CRD", "XYZ"]}, "SpaceToDepth": {"blocksize": [1, 2, 3, 0]},
    "LRN": {"size": [1, 2, 3, 5, 0], "alpha": "float", "beta": "float", "bias": "float"},
    "InstanceNormalization": {"epsilon": "float"},
    "CumSum": {"exclusive": [0, 1], "reverse": [0, 1]}, "TopK": {"axis": "axis", "largest": [0, 1], "sorted": [0, 1]},
    "LogSoftmax": {"axis": "axis"}, "Hardmax": {"axis": "axis"}, "Trilu": {"upper": [0, 1]},
    "GatherElements": {"axis": "axis"}, "ReduceL2": {"axes": "axes", "keepdims": [0, 1]},
    "Selu": {"alpha": "float", "gamma": "float"}, "Celu": {"alpha": "float"}, "Shrink": {"bias": "float", "lambd": "float"},
    "ThresholdedRelu": {"alpha": "float"}, "HardSigmoid": {"alpha": "float", "beta": "float"}, "Mod": {"fmod": [0, 1]},
    "Einsum": {"equation": ["bij,jk->bik", "bij,jk->bki", "bij,jk->ik", "bij,kj->bik", "bij,jk", "bii,jk->bik", "xyz"]},
    "ArgMin": {"axis": "axis", "keepdims": [0, 1], "select_last_index": [0, 1]},
    "ArgMax": {"axis": "axis", "keepdims": [0, 1], "select_last_index": [0, 1]},
    "Elu": {"alpha": "float"}, "Cast": {"to": [1, 6, 7, 9, 10, 11, 2]},
}
_ATTRS_BY_OP["Resize"].update(nearest_mode=["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"], cubic_coeff_a="float",
                                  exclude_outside=[0, 1], antialias=[0, 1])
_ATTRS_BY_OP["Resize"]["coordinate_transformation_mode"] += ["pytorch_half_pixel", "tf_crop_and_resize", "half_pixel_symmetric"]


def _attr_value(spec, rng, old=None):
    if isinstance(spec, list):
        return spec[int(rng.integers(len(spec)))]
    if spec == "float":
        return float(rng.choice([0.0, -1.0, 1e-12, 2.5, 1e6, float("nan")]))
    if spec == "axis":
        return int(rng.integers(-5, 6))
    if spec == "axes":
        return [int(a) for a in rng.choice(np.arange(-4, 5), size=int(rng.integers(0, 4)), replace=False)]
    if spec == "perm":
        n = len(old) if old is not None and rng.random() < 0.7 else int(rng.integers(1, 6))
        p = [int(a) for a in rng.permutation(n)]
        if rng.random() < 0.2:
            p[int(rng.integers(n))] = int(rng.integers(-2, n + 2))  # not a permutation
        return p
    n = int(spec[-1]) if spec.startswith("ints") else 2
    return [int(a) for a in rng.choice([0, 1, 1, 2, 3, -1, 7], size=n if rng.random() < 0.8 else int(rng.integers(0, 6)))]


def _perturb(attr, rng):
    """A new value for an existing attribute, of the same kind."""
    from onnx import AttributeProto, helper

    if attr.type == AttributeProto.INT:
        return int(rng.choice([attr.i + 1, attr.i - 1, 0, -1, 2 * attr.i + 2, 1000]))
    if attr.type == AttributeProto.INTS:
        v = list(attr.ints)
        r = rng.random()
        if r < 0.5 and v:
            v[int(rng.integers(len(v)))] = int(rng.choice([0, 1, 2, 3, -1, 5]))
        elif r < 0.7 and v:
            v.pop(int(rng.integers(len(v))))
        elif r < 0.85:
            v.append(int(rng.integers(-1, 4)))
        else:
            v = [int(a) for a in rng.permutation(v)] if v else [1]
        return v
    if attr.type == AttributeProto.FLOAT:
        return float(rng.choice([0.0, -attr.f, attr.f * 10, 1e-20, float("nan"), float("inf")]))
    if attr.type == AttributeProto.STRING:
        return str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET", "linear", "nearest", "constant", "reflect", "xyz", ""]))
    return helper.get_attribute_value(attr)


def _set_attr(node, name, value):
    from onnx import helper

    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    from onnx import AttributeProto

    empty = isinstance(value, list) and not value
    node.attribute.append(helper.make_attribute(name, value, attr_type=AttributeProto.INTS if empty else None))


def _pick(rng, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))] if seq else None


def _graph_inputs(m):
    inits = {i.name for i in m.graph.initializer}
    return [vi for vi in m.graph.input if vi.name not in inits]


def _float_inits(m):
    from onnx import TensorProto

    return [t for t in m.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
            and int(np.prod(t.dims)) > 0]


def mut_attr_change(m, rng):
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return mut_attr_add(m, rng)
    n = _pick(rng, nodes)
    a = _pick(rng, n.attribute)
    spec = _ATTRS_BY_OP.get(n.op_type, {}).get(a.name)
    from onnx import helper

    old = helper.get_attribute_value(a)
    for _ in range(8):  # a value that differs (nan != nan counts as different)
        new = _attr_value(spec, rng, old) if spec is not None and rng.random() < 0.6 else _perturb(a, rng)
        if not _same(new, old):
            break
    _set_attr(n, a.name, new)
    return m, f"{n.op_type} {n.name!r}: {a.name} {_short(old)} -> {_short(new)}"


def mut_attr_remove(m, rng):
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return mut_attr_add(m, rng)
    n = _pick(rng, nodes)
    i = int(rng.integers(len(n.attribute)))
    name = n.attribute[i].name
    del n.attribute[i]
    return m, f"{n.op_type} {n.name!r}: removed {name}"


def mut_attr_add(m, rng):
    known = [n for n in m.graph.node if n.op_type in _ATTRS_BY_OP]
    n = _pick(rng, known) if known and rng.random() < 0.9 else _pick(rng, m.graph.node)
    table = _ATTRS_BY_OP.get(n.op_type, {})
    if table and rng.random() < 0.9:
        name = _pick(rng, sorted(table))
        old = next((a for a in n.attribute if a.name == name), None)
        from onnx import helper

        value = _attr_value(table[name], rng, helper.get_attribute_value(old) if old is not None else None)
    else:
        name, value = "fuzz_unknown_attr", int(rng.integers(0, 3))
    _set_attr(n, name, value)
    return m, f"{n.op_type} {n.name!r}: set {name}={_short(value)}"


def mut_input_shape(m, rng):
    vi = _pick(rng, _graph_inputs(m))
    if vi is None:
        return m, "no graph input"
    dims = vi.type.tensor_type.shape.dim
    before = _dims(vi)
    r = rng.random()
    if r < 0.45 and len(dims):
        d = dims[int(rng.integers(len(dims)))]
        v = d.dim_value
        d.dim_value = int(rng.choice([v + 1, max(v - 1, 0), 2 * v, 1, 0, 3, 17]))
    elif r < 0.6 and len(dims):  # symbolic: dim 0 (a dynamic batch) more often than the others
        d = dims[0 if rng.random() < 0.6 else int(rng.integers(len(dims)))]
        d.dim_param = str(rng.choice(["N", "batch", "seq"]))
    elif r < 0.75 and len(dims):
        del dims[int(rng.integers(len(dims)))]
    elif r < 0.9:
        vi.type.tensor_type.shape.dim.add().dim_value = int(rng.choice([1, 2, 3]))
    else:
        vi.type.tensor_type.ClearField("shape")
    return m, f"input {vi.name!r}: {before} -> {_dims(vi)}"


_DTYPES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16",
           11: "DOUBLE", 16: "BFLOAT16", 0: "UNDEFINED", 99: "99"}


def mut_input_dtype(m, rng):
    vi = _pick(rng, _graph_inputs(m))
    if vi is None:
        return m, "no graph input"
    new = int(rng.choice([11, 10, 7, 6, 3, 2, 9, 8, 16, 0, 99]))
    vi.type.tensor_type.elem_type = new
    return m, f"input {vi.name!r}: elem_type FLOAT -> {_DTYPES.get(new, new)}"


def mut_init_dtype_consistent(m, rng):
    from onnx import numpy_helper

    t = _pick(rng, m.graph.initializer)
    arr = numpy_helper.to_array(t)
    dt = np.dtype(rng.choice(["float16", "float64", "int64", "int32", "float32", "bool", "uint8"]))
    new = numpy_helper.from_array(arr.astype(dt), t.name)
    t.CopyFrom(new)
    return m, f"initializer {t.name!r}: {arr.dtype} -> {dt} (data converted)"


def mut_init_dtype_inconsistent(m, rng):
    t = _pick(rng, m.graph.initializer)
    old = t.data_type
    t.data_type = int(rng.choice([k for k in (1, 2, 3, 6, 7, 9, 10, 11, 16) if k != old]))
    return m, f"initializer {t.name!r}: data_type {_DTYPES.get(old, old)} -> {_DTYPES.get(t.data_type)} (data left as is)"


def mut_input_drop(m, rng):
    ins = _graph_inputs(m)
    vi = _pick(rng, ins)
    if vi is None:
        return m, "no graph input"
    i = list(m.graph.input).index(vi)
    name = vi.name
    del m.graph.input[i]
    return m, f"dropped graph input {name!r}"


_NAMES = ["renamed", "in:0", "a/b", "1x", "x.y", "with space", "ÿnïcode", "serving_default", "x", "", "a" * 300]


def mut_input_rename(m, rng):
    """Rename a graph input; half the time its uses follow (a valid model), else they dangle."""
    vi = _pick(rng, _graph_inputs(m))
    if vi is None:
        return m, "no graph input"
    old, new = vi.name, str(_pick(rng, _NAMES))
    consistent = rng.random() < 0.5
    vi.name = new
    if consistent:
        for n in m.graph.node:
            for i, x in enumerate(n.input):
                if x == old:
                    n.input[i] = new
        for o in m.graph.output:
            if o.name == old:
                o.name = new
    return m, f"input {old!r} -> {new!r} ({'uses renamed too' if consistent else 'uses left dangling'})"


def mut_node_rewire(m, rng):
    nodes = [n for n in m.graph.node if n.input]
    n = _pick(rng, nodes)
    i = int(rng.integers(len(n.input)))
    old = n.input[i]
    if rng.random() < 0.4:
        new = str(rng.choice(["dangling", "", old + "_missing"]))
    else:
        names = [x.name for x in m.graph.input] + [t.name for t in m.graph.initializer] + [o for k in m.graph.node for o in k.output]
        new = _pick(rng, names)
    n.input[i] = new
    return m, f"{n.op_type} {n.name!r} input {i}: {old!r} -> {new!r}"


def mut_truncate(m, rng):
    data = m.SerializeToString()
    cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def mut_byte_flip(m, rng):
    data = bytearray(m.SerializeToString())
    k = int(rng.integers(1, 9))
    pos = sorted(int(p) for p in rng.integers(0, len(data), size=k))
    for p in pos:
        data[p] ^= int(rng.integers(1, 256))
    return bytes(data), f"{k} byte(s) flipped at {pos}"


def _poke(m, rng, values, what):
    from onnx import numpy_helper

    t = _pick(rng, _float_inits(m))
    if t is None:
        return m, "no float initializer"
    arr = numpy_helper.to_array(t).copy()
    k = 1 if rng.random() < 0.6 else int(rng.integers(1, max(arr.size, 1) + 1))
    idx = rng.choice(arr.size, size=min(k, arr.size), replace=False)
    flat = arr.reshape(-1)
    flat[idx] = rng.choice(values, size=len(idx))
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return m, f"{len(idx)} {what} in initializer {t.name!r} {tuple(arr.shape)}"


def mut_nan_weight(m, rng):
    return _poke(m, rng, [np.nan], "NaN")


def mut_inf_weight(m, rng):
    return _poke(m, rng, [np.inf, -np.inf], "+-inf")


def mut_init_remove(m, rng):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return m, "no initializer"
    name = t.name
    m.graph.initializer.remove(t)
    return m, f"removed initializer {name!r}"


def mut_opset(m, rng):
    imp = next((o for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if imp is None:
        return m, "no default opset"
    old = imp.version
    imp.version = int(rng.choice([1, 6, 7, 9, 10, 11, 12, 13, 14, 16, 18, 19, 20, 21, 22, 23, 25, 99, 0]))
    return m, f"opset {old} -> {imp.version}"


def mut_weight_scale(m, rng):
    """Scale a weight so outputs become tiny or huge: a check with an absolute tolerance sees
    nothing at 1e-7 and everything at 1e7."""
    from onnx import numpy_helper

    t = _pick(rng, [t for t in _float_inits(m) if int(np.prod(t.dims)) > 1])
    if t is None:
        return m, "no float weight"
    f = float(rng.choice([1e-9, 1e-6, 1e-3, 1e3, 1e6, -1.0]))
    t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * f).astype(numpy_helper.to_array(t).dtype), t.name))
    return m, f"initializer {t.name!r} scaled by {f:g}"


def mut_stacked(m, rng):
    """Two to three structural mutations at once (attributes, shapes, scales): the corners
    where one change alone is refused but a combination converts."""
    kinds = ["attr_change", "attr_add", "attr_remove", "input_shape", "weight_scale"]
    details = []
    for _ in range(int(rng.integers(2, 4))):
        k = _pick(rng, kinds)
        m, d = MUTATIONS[k](m, rng)
        details.append(f"{k}: {d}")
    return m, " + ".join(details)


def mut_none(m, rng):
    return m, "unmutated base model"


MUTATIONS: dict[str, Callable] = {
    "attr_change": mut_attr_change, "attr_remove": mut_attr_remove, "attr_add": mut_attr_add,
    "input_shape": mut_input_shape, "input_dtype": mut_input_dtype,
    "init_dtype_consistent": mut_init_dtype_consistent, "init_dtype_inconsistent": mut_init_dtype_inconsistent,
    "input_drop": mut_input_drop, "input_rename": mut_input_rename, "node_rewire": mut_node_rewire,
    "truncate": mut_truncate, "byte_flip": mut_byte_flip, "nan_weight": mut_nan_weight, "inf_weight": mut_inf_weight,
    "init_remove": mut_init_remove, "opset": mut_opset, "weight_scale": mut_weight_scale, "stacked": mut_stacked,
    "none": mut_none,
}
# attribute mutations are where the converter's own logic lives: weight them up
WEIGHTS = {"attr_change": 3, "attr_remove": 1.5, "attr_add": 2, "input_shape": 1.5, "stacked": 2, "none": 0.4}


def _same(a, b) -> bool:
    a = a.decode() if isinstance(a, bytes) else a
    b = b.decode() if isinstance(b, bytes) else b
    return type(a) is type(b) and a == b


def _short(v) -> str:
    s = repr(v.decode() if isinstance(v, bytes) else v)
    return s if len(s) <= 40 else s[:37] + "..."


def _dims(vi) -> str:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return "no shape"
    return "[" + ",".join(d.dim_param or str(d.dim_value) for d in t.shape.dim) + "]"


def make_mutation(seed: int, index: int, bases: dict[str, bytes]) -> tuple[str, str, str, bytes]:
    """(base, kind, detail, file bytes) of mutation ``index`` of run ``seed``: deterministic."""
    import onnx

    rng = np.random.default_rng([seed, index])
    names = sorted(bases)
    base = names[int(rng.integers(len(names)))]
    kinds = sorted(MUTATIONS)
    w = np.array([WEIGHTS.get(k, 1.0) for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    for attempt in range(5):  # a mutator that cannot apply here tries again, still deterministically
        model = onnx.load_from_string(bases[base])
        try:
            out, detail = MUTATIONS[kind](model, rng)
            break
        except Exception as e:  # noqa: BLE001 - a fuzzer bug must not end the run
            out, detail = model, f"mutator failed ({type(e).__name__}: {_one_line(str(e))[:80]}), unmutated"
            rng = np.random.default_rng([seed, index, attempt + 1])
    data = out if isinstance(out, bytes) else out.SerializeToString()
    return base, kind, detail, data


# ---------------------------------------------------------------------------------------------
# the worker: one process, graph_convert imported once, cli.main per job
# ---------------------------------------------------------------------------------------------


def worker_main(check_savedmodel: bool) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # stray prints must not corrupt the protocol
    # what the console script does before main(): see graph_convert.cli.entry
    import importlib.util

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if importlib.util.find_spec("tf_keras") is None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    saved2 = os.dup(2)
    os.dup2(devnull, 2)  # one-off import noise is not a per-run finding
    try:
        import graph_convert.cli as cli
        import onnxruntime  # noqa: F401
        import tensorflow  # noqa: F401
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    finally:
        os.dup2(saved2, 2)
        os.close(saved2)
    proto.write(json.dumps({"ready": os.getpid(), "graph_convert": os.path.dirname(os.path.abspath(cli.__file__))}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        res = run_job(cli, job["src"], job["out"], job["check_seed"], check_savedmodel, proto)
        proto.write(json.dumps(res) + "\n")


def _as_if_fresh() -> None:
    """Forget the warnings already shown in this process, so that each run prints what it would
    print as a new process (Python warnings and TensorFlow deprecation notes show once per process:
    otherwise whether a run is flagged would depend on the runs before it in the same worker)."""
    import warnings

    for mod in list(sys.modules.values()):
        reg = getattr(mod, "__warningregistry__", None)
        if isinstance(reg, dict):
            reg.clear()
    warnings._filters_mutated()  # noqa: SLF001 - drops the cached "already shown" decisions
    dep = sys.modules.get("tensorflow.python.util.deprecation")
    if dep is not None and isinstance(getattr(dep, "_PRINTED_WARNING", None), dict):
        dep._PRINTED_WARNING.clear()  # noqa: SLF001


def run_job(cli, src: str, out: str, check_seed: int, check_savedmodel: bool, proto) -> dict[str, Any]:
    cwd = os.getcwd()
    _as_if_fresh()
    with tempfile.TemporaryFile() as f1, tempfile.TemporaryFile() as f2:
        saved = [os.dup(1), os.dup(2)]
        py_out, py_err = io.StringIO(), io.StringIO()
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = py_out, py_err
        os.dup2(f1.fileno(), 1)
        os.dup2(f2.fileno(), 2)
        exc = tb_text = None
        t0 = time.perf_counter()
        try:
            rc = cli.main(["convert", src, "-o", out])
        except SystemExit as e:  # argparse: still an exit code the user sees
            rc = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            if e.code not in (None, 0) and not isinstance(e.code, int):
                py_err.write(str(e.code) + "\n")
        except BaseException as e:  # noqa: BLE001 - exactly what the fuzzer is here to catch
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}graph_convert{os.sep}" in f.filename]
            where = f"{frames[-1].filename.rsplit(os.sep + 'graph_convert' + os.sep, 1)[-1]}:{frames[-1].lineno} {frames[-1].name}" if frames else "?"
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            msg = lines[0] + (" ... " + " ".join(lines[-2:]) if len(lines) > 2 else "") if lines else ""  # TF: the reason is last
            rc, exc = None, f"{type(e).__name__}: {_one_line(msg)[:300]} (raised below graph_convert/{where})"
            tb_text = traceback.format_exc()
        finally:
            seconds = time.perf_counter() - t0
            for s in (sys.stdout, sys.stderr):
                s.flush()
            sys.stdout, sys.stderr = old
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        f2.seek(0)
        native_err = f2.read().decode(errors="replace")
    res: dict[str, Any] = {"rc": rc, "exc": exc, "traceback": tb_text, "stderr": py_err.getvalue(), "native_stderr": native_err,
                           "seconds": round(seconds, 2), "cwd_changed": os.getcwd() != cwd}
    os.chdir(cwd)
    if rc == 0:
        proto.write(json.dumps({"phase": "check"}) + "\n")
        res["check"] = quiet_check(src, out, check_seed, check_savedmodel)
    return res


# ---------------------------------------------------------------------------------------------
# property b: an independent check of what an exit 0 wrote
# ---------------------------------------------------------------------------------------------

RTOL = 1e-3          # of each output's own max |ref|
FLOOR_ULPS = 64      # absolute floor: this many float32 epsilons of the output's scale, at least 1e-30
MIN_COSINE = 0.999


def compare(name: str, ref: np.ndarray, got: np.ndarray) -> str | None:
    """None when ``got`` matches ``ref`` by a scale-aware rule, else why not."""
    if tuple(ref.shape) != tuple(got.shape):
        return f"output {name!r}: shape {tuple(got.shape)}, ORT gives {tuple(ref.shape)}"
    if ref.dtype.kind in "biu" or got.dtype.kind in "biu":
        if ref.dtype.kind == "f" or got.dtype.kind == "f":
            return f"output {name!r}: dtype {got.dtype}, ORT gives {ref.dtype}"
        bad = int(np.sum(ref.astype(np.int64) != got.astype(np.int64)))
        return f"output {name!r}: {bad} of {ref.size} integer values differ" if bad else None
    r, g = ref.astype(np.float64), got.astype(np.float64)
    for what, fn in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        if not np.array_equal(fn(r), fn(g)):
            return f"output {name!r}: {what} at {int(fn(g).sum())} positions, ORT has {int(fn(r).sum())} (positions differ)"
    fin = np.isfinite(r)
    if not fin.any():
        return None
    r, g = r[fin], g[fin]
    scale = float(np.max(np.abs(r)))
    err = float(np.max(np.abs(r - g)))
    tol = RTOL * scale + max(FLOOR_ULPS * float(np.finfo(np.float32).eps) * scale, 1e-30)
    if err > tol:
        return f"output {name!r}: max abs err {err:.3g} > {tol:.3g} (max |ref| {scale:.3g})"
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if r.size > 1 and nr > 0 and ng > 0:
        cos = float(np.dot(r, g) / (nr * ng))
        if cos < MIN_COSINE:
            return f"output {name!r}: cosine {cos:.6f} (max |ref| {scale:.3g})"
    return None


DRAWS = [("normal", 1), ("uniform [0, 1]", 4), ("normal", 1), ("uniform [-1, 0]", 4)]  # (values, dynamic batch)


def _draws(onnx_inputs, report_inputs, seed: int):
    """Fresh input draws (DRAWS) in the source layout, from the shapes of the .onnx (symbolic dims
    1; a batch the report says is dynamic is 4 in every other draw, a size the converter never
    verified at)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    dyn = {e["name"] for e in report_inputs if e.get("shape") and e["shape"][0] == "batch"}
    draws = []
    for k, (values, sym) in enumerate(DRAWS):
        feeds = {}
        for vi in onnx_inputs:
            tt = vi.type.tensor_type
            shape = [d.dim_value if d.dim_value > 0 else (sym if vi.name in dyn and i == 0 else 1) for i, d in enumerate(tt.shape.dim)]
            dt = helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if dt.kind == "f":
                a = rng.standard_normal(shape) if values == "normal" else rng.uniform(0, 1, shape) * (1 if "[0" in values else -1)
            elif dt.kind == "b":
                a = rng.integers(0, 2, shape)
            else:
                a = rng.integers(0, 4, shape)
            feeds[vi.name] = np.asarray(a).astype(dt)
        draws.append(feeds)
    return draws


def quiet_check(src, out, seed, savedmodel) -> dict:
    """check_outputs with fd 2 silenced (the interpreter's INFO line); a crash of the check is a result."""
    saved2, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        return check_outputs(src, out, seed, savedmodel)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "reason": f"checker itself failed: {type(e).__name__}: {_one_line(str(e))}"}
    finally:
        os.dup2(saved2, 2)
        os.close(saved2)
        os.close(devnull)


def check_outputs(src: str, out: str, seed: int, check_savedmodel: bool) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    need = ["report.json", "model_float32.tflite", "saved_model", "model.rewritten.onnx"]
    missing = [n for n in need if not os.path.exists(os.path.join(out, n))]
    if missing:
        return {"ok": False, "reason": f"{missing} not written"}
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    rin, rout = report["io"]["inputs"], report["io"]["outputs"]
    model = onnx.load(src)
    inits = {t.name for t in model.graph.initializer}
    onnx_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if [e["name"] for e in rin] != [vi.name for vi in onnx_inputs]:
        return {"ok": False, "reason": f"report inputs {[e['name'] for e in rin]} != source inputs {[vi.name for vi in onnx_inputs]}"}
    if [e["name"] for e in rout] != [o.name for o in model.graph.output]:
        return {"ok": False, "reason": f"report outputs {[e['name'] for e in rout]} != source outputs {[o.name for o in model.graph.output]}"}
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    # the graph as written: ORT's own fusions have bugs of their own (a MatMul->Gemm fusion
    # inserts a Reshape that fails on batch > 1 where the written graph runs)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for vi in onnx_inputs:  # a dim of 0 reads as unknown, as the converter reads it (a symbolic batch)
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.dim_param = "unknown"
    rejects = None  # why ORT refuses the source exactly as written (then judged without its value_info)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        rejects = f"ORT rejects the source as written: {_one_line(str(e))}"
        del model.graph.value_info[:]  # stale intermediate shapes: the numbers can still be compared
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001
            return {"ok": False, "ort_rejects": True, "reason": rejects}
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=os.path.join(out, "model_float32.tflite"), num_threads=1)
    runner = it.get_signature_runner("serving_default")
    sm = None
    if check_savedmodel:
        import tensorflow as tf

        sm = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    worst = 0.0
    for k, feeds in enumerate(_draws(onnx_inputs, rin, seed)):
        try:
            ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        except Exception as e:  # noqa: BLE001
            if k:  # e.g. a batch-4 draw of a model whose batch is not really free: not the converter's claim
                continue
            return {"ok": False, "reason": f"ORT cannot run the source on inputs of the shapes in report.json: {_one_line(str(e))}"}
        lite_feeds = {e["tf_name"]: (np.ascontiguousarray(np.transpose(feeds[e["name"]], e["layout_perm"])) if e["layout_perm"] else feeds[e["name"]])
                      for e in rin}
        stages = [("TFLite", lambda: runner(**lite_feeds))]
        if sm is not None:
            import tensorflow as tf

            stages.append(("SavedModel", lambda: {k2: v.numpy() for k2, v in sm(**{n: tf.constant(a) for n, a in lite_feeds.items()}).items()}))
        for stage, run in stages:
            try:
                got = run()
            except Exception as e:  # noqa: BLE001
                return {"ok": False, "reason": f"{stage} fails on draw {k}: {_one_line(str(e))}"}
            for e in rout:
                if e["tf_name"] not in got:
                    return {"ok": False, "reason": f"{stage} has no output {e['tf_name']!r} (has {sorted(got)})"}
                g = np.asarray(got[e["tf_name"]])
                if e["layout_perm"]:
                    g = np.transpose(g, np.argsort(e["layout_perm"]))
                why = compare(e["name"], ref[e["name"]], g)
                if why:
                    return {"ok": False, "reason": f"{stage}, draw {k} ({DRAWS[k][0]}): {why}"}
                r = ref[e["name"]]
                if r.dtype.kind == "f" and np.isfinite(r).any():
                    fin = np.isfinite(r)
                    sc = float(np.max(np.abs(r[fin]))) or 1.0
                    worst = max(worst, float(np.max(np.abs(r[fin].astype(np.float64) - g[fin]))) / sc)
    if rejects:
        return {"ok": False, "ort_rejects": True, "reason": rejects + " (the outputs match ORT once its value_info is dropped)"}
    return {"ok": True, "worst_rel": worst}


def _one_line(s: str) -> str:
    s = " ".join(s.split())
    return s if len(s) <= 240 else s[:237] + "..."


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, check_savedmodel: bool):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + (["--savedmodel"] if check_savedmodel else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.ready = False
        self.job: dict[str, Any] | None = None
        self.deadline = time.monotonic() + 600  # startup
        self.done = 0
        self.phase = "convert"

    def send(self, job: dict[str, Any], timeout: float) -> None:
        self.job, self.phase = job, "convert"
        self.deadline = time.monotonic() + timeout
        self.proc.stdin.write((json.dumps({k: job[k] for k in ("src", "out", "check_seed")}) + "\n").encode())
        self.proc.stdin.flush()

    def read_lines(self) -> list[str] | None:
        """Complete lines available now; None at end of file (the worker died)."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [ln.decode() for ln in lines]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def _listing(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else ["<missing>"]


def judge(job: dict[str, Any], res: dict[str, Any] | None, how: str | None) -> tuple[str, list[str]]:
    """(outcome for the table, reasons) of one finished or killed job."""
    if how == "timeout":
        return "timeout", [f"no answer within the timeout (phase: {job.get('phase', 'convert')})"]
    if how == "crash":
        return "crash", [f"worker died in phase {job.get('phase', 'convert')} (exit {job.get('worker_rc')})"]
    reasons, outcome = [], None
    rc = res["rc"]
    err = res["stderr"]
    if res["exc"] is not None:
        outcome = "traceback"
        reasons.append(f"exception escaped cli.main: {res['exc']}")
    elif rc not in DOCUMENTED_EXITS:
        outcome = "bad-exit"
        reasons.append(f"exit {rc} (undocumented): {_one_line(err) or '(no message)'}")
    for where, text in (("stderr", err), ("native stderr", res["native_stderr"])):
        if "Traceback" in text and outcome != "traceback":
            outcome = outcome or "traceback"
            reasons.append(f"'Traceback' on {where}: {_one_line(text[text.index('Traceback'):])[:160]}")
    if rc not in (0, None):  # what the user's terminal shows: Python's stderr and the native one
        lines = [ln for ln in (err + res["native_stderr"]).splitlines() if ln.strip()]
        if len(lines) != 1 or not lines[0].startswith("graph-convert"):
            outcome = outcome or "bad-stderr"
            reasons.append(f"exit {rc} with {len(lines)} stderr line(s): {_one_line(err)[:160] or '(none)'}")
    if res.get("cwd_changed"):
        outcome = outcome or "bad-exit"
        reasons.append("the working directory changed")
    check = res.get("check", {})
    if rc == 0 and not check.get("ok"):
        outcome = outcome or ("exit0-ort-rejects" if check.get("ort_rejects") else "wrong-output")
        reasons.append("exit 0, but " + check.get("reason", "not checked"))
    after = _listing(job["parent"])
    want = sorted(["notes.txt"] + (["out"] if rc == 0 or job["precreated"] else []))
    if after != want:
        outcome = outcome or "leftovers"
        reasons.append(f"beside the output after exit {rc}: {after} (expected {want})")
    elif _sha(os.path.join(job["parent"], "notes.txt")) != USER_FILE_SHA:
        outcome = outcome or "leftovers"
        reasons.append("the user's notes.txt beside the output changed")
    inside = _listing(job["out"]) if os.path.isdir(job["out"]) else []
    extra = sorted(set(inside) - set(OUTPUT_FILES)) if rc == 0 else inside
    if extra:
        outcome = outcome or "leftovers"
        reasons.append(f"inside the output after exit {rc}: unexpected {extra}")
    if _listing(job["srcdir"]) != ["model.onnx"] or _sha(job["src"]) != job["src_sha"]:
        outcome = outcome or "leftovers"
        reasons.append(f"the source's folder changed: {_listing(job['srcdir'])}")
    if outcome is None:
        outcome = "ok" if rc == 0 else f"exit{rc}"
    return outcome, reasons


# what an output folder may hold (README "Output directory"; .graph-convert.json: the marker that
# lets --overwrite tell its own folders from the user's)
OUTPUT_FILES = {"saved_model", "model_float32.tflite", "model.rewritten.onnx", "report.json", "report.html", ".graph-convert.json"}
USER_FILE = b"the user's own file beside the output folder\n"
USER_FILE_SHA = hashlib.sha256(USER_FILE).hexdigest()


def _sha(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def run(args) -> int:
    say = (lambda m: print(m, file=sys.stderr, flush=True))
    names = args.bases.split(",") if args.bases else [*BUILT, *EXPORTED]
    unknown = [n for n in names if n not in BUILT and n not in EXPORTED]
    if unknown:
        say(f"fuzz.py: unknown base model(s) {unknown} (known: {[*BUILT, *EXPORTED]})")
        return 2
    bases = {} if args.replay else load_bases(names, say)
    if args.replay:
        args.n, args.start = len(args.replay), 0
    root = tempfile.mkdtemp(prefix="gc-fuzz-")
    if args.keep_failures:
        os.makedirs(args.keep_failures, exist_ok=True)
    pending = deque(range(args.start, args.start + args.n))
    workers = [Worker(args.savedmodel) for _ in range(max(1, min(args.jobs, args.n)))]
    sel = selectors.DefaultSelector()
    for w in workers:
        sel.register(w.fd, selectors.EVENT_READ, w)
    table: dict[str, Counter] = defaultdict(Counter)
    failures: list[tuple[int, str, str, str, str, str]] = []  # and the notes
    gaps: list[tuple[int, str, str, str, str, str]] = []
    conv_seconds: list[float] = []
    restarts = Counter()
    under_test: list[str] = []
    t0 = time.perf_counter()
    finished = 0

    def finish(w: Worker, res, how) -> None:
        nonlocal finished
        job = w.job
        outcome, reasons = judge(job, res, how)
        table[job["kind"]][outcome] += 1
        finished += 1
        if res is not None:
            conv_seconds.append(res["seconds"])
        if outcome in ("exit3", "exit4", "exit6"):  # the safety promise held, but the converter got it wrong
            gaps.append((job["index"], job["kind"], job["base"], job["detail"], _one_line(res["stderr"])[:300], outcome))
        if outcome in FAILURES or outcome in NOTES:
            failures.append((job["index"], job["kind"], job["base"], job["detail"], "; ".join(reasons), outcome))
            if args.keep_failures:
                shutil.copy(job["src"], os.path.join(args.keep_failures, f"fuzz-s{args.seed}-i{job['index']}-{job['kind']}.onnx"))
        if args.verbose or outcome in FAILURES:
            rc = "-" if res is None else res["rc"]
            msg = "" if res is None else _one_line(res["stderr"])[:200]
            secs = "" if res is None else f", {res['seconds']:.1f}s"
            say(f"[{finished}/{args.n}] #{job['index']} {job['base']}/{job['kind']}: {outcome} (exit {rc}{secs}) {job['detail']}"
                + (f"\n      {msg}" if msg and args.verbose else "") + (f"\n      FAILED: {'; '.join(reasons)}" if reasons else "")
                + (f"\n{res['traceback']}" if args.verbose and res is not None and res.get("traceback") else ""))
        if how is None:
            shutil.rmtree(job["root"], ignore_errors=True)
        else:  # a killed run may leave its temp folder: expected after SIGKILL, not a finding
            shutil.rmtree(job["root"], ignore_errors=True)
        w.job = None

    def replace(w: Worker, why: str) -> Worker:
        sel.unregister(w.fd)
        if why == "recycle":
            w.stop()
        else:
            w.kill()
        restarts[why] += 1
        nw = Worker(args.savedmodel)
        sel.register(nw.fd, selectors.EVENT_READ, nw)
        workers[workers.index(w)] = nw
        return nw

    try:
        while pending or any(w.job for w in workers):
            for w in list(workers):
                if w.ready and w.job is None and pending:
                    if w.done >= args.max_per_worker:
                        replace(w, "recycle")
                        continue
                    index = pending.popleft()
                    if args.replay:  # a saved file, e.g. from --keep-failures
                        base, kind, detail = os.path.basename(args.replay[index]), "replay", args.replay[index]
                        with open(args.replay[index], "rb") as f:
                            data = f.read()
                    else:
                        base, kind, detail, data = make_mutation(args.seed, index, bases)
                    mroot = os.path.join(root, f"m{index}")
                    srcdir, parent = os.path.join(mroot, "src"), os.path.join(mroot, "work")
                    os.makedirs(srcdir)
                    os.makedirs(parent)
                    src = os.path.join(srcdir, "model.onnx")
                    with open(src, "wb") as f:
                        f.write(data)
                    with open(os.path.join(parent, "notes.txt"), "wb") as f:  # the user's: must survive
                        f.write(USER_FILE)
                    # one run in five finds OUT already there and empty (allowed without --overwrite)
                    precreated = bool(np.random.default_rng([args.seed, index, 99]).random() < 0.2)
                    if precreated:
                        os.makedirs(os.path.join(parent, "out"))
                    job = {"index": index, "base": base, "kind": kind, "detail": detail, "root": mroot, "src": src,
                           "precreated": precreated, "srcdir": srcdir, "parent": parent, "out": os.path.join(parent, "out"),
                           "src_sha": hashlib.sha256(data).hexdigest(), "check_seed": args.seed * 1_000_003 + index + 1}
                    w.send(job, args.timeout)
            timeout = max(0.0, min(w.deadline for w in workers) - time.monotonic())
            for key, _ in sel.select(timeout=min(timeout, 5.0)):
                w = key.data
                lines = w.read_lines()
                if lines is None:  # the worker died
                    if w.job is not None:
                        w.proc.wait()
                        w.job["worker_rc"] = w.proc.returncode
                        w.job["phase"] = w.phase
                        finish(w, None, "crash")
                        replace(w, "crash")
                    else:
                        say(f"fuzz.py: a worker died while starting (exit {w.proc.wait()}); is graph_convert importable?")
                        return 2
                    continue
                for ln in lines:
                    msg = json.loads(ln)
                    if "ready" in msg:
                        if not under_test:
                            under_test.append(msg["graph_convert"])
                            say(f"converter under test: {msg['graph_convert']}")
                        w.ready = True
                        w.deadline = float("inf")
                    elif "phase" in msg:
                        w.phase = msg["phase"]
                    else:
                        w.done += 1
                        finish(w, msg, None)
                        w.deadline = float("inf")
            now = time.monotonic()
            for w in list(workers):
                if now > w.deadline:
                    if w.job is not None:
                        w.job["phase"] = w.phase
                        finish(w, None, "timeout")
                        replace(w, "timeout")
                    elif not w.ready:
                        say("fuzz.py: a worker did not start within 600 s")
                        return 2
    finally:
        for w in workers:
            w.stop() if w.job is None else w.kill()
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t0  # the mutations alone: the fresh-process runs are extra
    if not args.no_fresh:
        for index, (name, base, detail, data) in enumerate(fresh_cases(bases), start=1):
            outcome, reasons, res = fresh_process_run(data, args.timeout)
            table["fresh_process"][outcome] += 1
            if outcome in FAILURES or outcome in NOTES:
                failures.append((-index, "fresh_process", base, f"{name}: {detail}", "; ".join(reasons), outcome))
            if args.verbose or outcome in FAILURES:
                say(f"[fresh process] {name}: {outcome} (exit {res['rc'] if res else '-'})"
                    + (f"\n      FAILED: {'; '.join(reasons)}" if reasons else ""))
    print_table(table, failures, args, wall, conv_seconds, restarts)
    if gaps and args.show_refusals:
        print(f"\nrefused after a failed check or an internal error (exit 3/4/6; safe, but a converter gap unless the "
              f"mutation itself explains it): {len(gaps)}")
        for index, kind, base, detail, msg, outcome in sorted(gaps):
            print(f"- #{index} {base}/{kind} [{detail}]: {outcome}: {msg}")
    return 1 if any(f[-1] in FAILURES for f in failures) else 0


def fresh_cases(bases: dict[str, bytes]) -> list[tuple[str, str, str, bytes]]:
    """What a worker cannot show: a new process prints TensorFlow's import-time lines and every
    once-per-process warning. One valid model and one refused after TensorFlow ran."""
    import onnx
    from onnx import numpy_helper

    cases = []
    name = "conv_chain" if "conv_chain" in bases else sorted(bases)[0]
    cases.append(("valid", name, "unmutated", bases[name]))
    m = onnx.load_from_string(bases[name])
    t = max(_float_inits(m), key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(t).copy()
    arr.reshape(-1)[0] = np.inf
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    cases.append(("inf weight", name, f"+inf in initializer {t.name!r}", m.SerializeToString()))
    return cases


def fresh_process_run(data: bytes, timeout: float):
    """``python -m graph_convert.cli convert`` (the console script's entry()) in a new process,
    judged like a worker run."""
    root = tempfile.mkdtemp(prefix="gc-fuzz-fresh-")
    try:
        srcdir, parent = os.path.join(root, "src"), os.path.join(root, "work")
        os.makedirs(srcdir)
        os.makedirs(parent)
        src, out = os.path.join(srcdir, "model.onnx"), os.path.join(parent, "out")
        with open(src, "wb") as f:
            f.write(data)
        with open(os.path.join(parent, "notes.txt"), "wb") as f:
            f.write(USER_FILE)
        job = {"src": src, "srcdir": srcdir, "parent": parent, "out": out, "precreated": False,
               "src_sha": hashlib.sha256(data).hexdigest()}
        try:
            proc = subprocess.run([sys.executable, "-m", "graph_convert.cli", "convert", src, "-o", out],
                                  capture_output=True, text=True, timeout=timeout, cwd=parent)
        except subprocess.TimeoutExpired:
            return "timeout", ["no answer within the timeout (fresh process)"], None
        rc = proc.returncode if proc.returncode >= 0 else f"signal {-proc.returncode}"
        res = {"rc": rc, "exc": None, "stderr": proc.stderr, "native_stderr": "", "cwd_changed": False}
        if rc == 0:
            res["check"] = quiet_check(src, out, 12345, False)
        if isinstance(rc, str):
            return "crash", [f"fresh process died: {rc}"], res
        outcome, reasons = judge(job, res, None)
        return outcome, reasons, res
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_table(table, failures, args, wall, conv_seconds, restarts) -> None:
    cols = [c for c in OUTCOMES if any(table[k][c] for k in table)] or OUTCOMES[:1]
    rows = [["kind", *cols, "total"]]
    for kind in sorted(table):
        rows.append([kind, *(str(table[kind][c] or "") for c in cols), str(sum(table[kind].values()))])
    tot = Counter()
    for c in table.values():
        tot.update(c)
    rows.append(["total", *(str(tot[c]) for c in cols), str(sum(tot.values()))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    fresh = sum(table["fresh_process"].values()) if "fresh_process" in table else 0
    n = sum(tot.values()) - fresh
    print(f"\n{n} mutations{f' (+{fresh} fresh-process runs)' if fresh else ''}, seed {args.seed}, indices {args.start}..{args.start + args.n - 1}, {args.jobs} job(s): "
          f"{wall:.0f} s wall, {n / wall:.2f} mutations/s; median conversion {np.median(conv_seconds) if conv_seconds else 0:.2f} s"
          + (f"; worker restarts {dict(restarts)}" if restarts else ""))
    print(fmt(rows[0]))
    print("  ".join("-" * w for w in widths))
    for r in rows[1:-1]:
        print(fmt(r))
    print("  ".join("-" * w for w in widths))
    print(fmt(rows[-1]))
    bad = sum(tot[c] for c in FAILURES)
    here = os.path.relpath(os.path.abspath(__file__))
    extra = f" --bases {args.bases}" if args.bases else ""
    for title, group in ((f"property failures: {bad}", FAILURES), (f"notes (not failures): {sum(tot[c] for c in NOTES)}", NOTES)):
        listed = sorted(f for f in failures if f[-1] in group)
        if group is NOTES and not listed:
            continue
        print(f"\n{title}" + ("" if listed else " (none)"))
        for index, kind, base, detail, reason, outcome in listed:
            if kind == "fresh_process":
                print(f"- {base}/{kind} [{detail}]: {outcome}: {reason}\n"
                      f"    repro: the same file through `python -m graph_convert.cli convert FILE -o OUT` in a new process")
                continue
            if kind == "replay":
                print(f"- {base} [{detail}]: {outcome}: {reason}\n    repro: PYTHONPATH=. python {here} --replay {detail} -v")
                continue
            kept = os.path.join(args.keep_failures, f"fuzz-s{args.seed}-i{index}-{kind}.onnx") if args.keep_failures else None
            print(f"- #{index} {base}/{kind} [{detail}]: {outcome}: {reason}\n"
                  f"    repro: PYTHONPATH=. python {here} 1 --seed {args.seed} --start {index}{extra} -v"
                  + (f"  |  graph-convert convert {kept} -o /tmp/fuzz-out" if kept else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("n", type=int, nargs="?", default=100, help="number of mutations (default 100)")
    p.add_argument("--seed", type=int, default=0, help="run seed; mutation i of seed s is always the same")
    p.add_argument("--start", type=int, default=0, help="first mutation index (to rerun one: --start I with N=1)")
    p.add_argument("--jobs", "-j", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--keep-failures", metavar="DIR", help="save each failing mutated .onnx here")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per mutation before its worker is killed (default 120)")
    p.add_argument("--max-per-worker", type=int, default=150, help="restart a worker after this many conversions (memory)")
    p.add_argument("--bases", help=f"comma-separated base models (default all: {','.join([*BUILT, *EXPORTED])})")
    p.add_argument("--savedmodel", action="store_true", help="also load and check the SavedModel on every exit 0 (slower)")
    p.add_argument("--list", action="store_true", help="print the mutations (index, base, kind, detail) without running them")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per mutation")
    p.add_argument("--no-fresh", action="store_true", help="skip the two runs in a new process (import-time output)")
    p.add_argument("--show-refusals", action="store_true", help="also list every exit 3/4/6 with its message (converter gaps)")
    p.add_argument("--replay", nargs="+", metavar="FILE.onnx", help="run these files (e.g. kept failures) instead of mutations")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.savedmodel)
        return 0
    if args.replay:
        missing = [f for f in args.replay if not os.path.isfile(f)]
        if missing:
            p.error(f"--replay: no such file(s) {missing}")
        args.no_fresh = True
    if args.n < 1 or args.jobs < 1 or args.seed < 0 or args.start < 0:
        p.error("N and --jobs must be positive, --seed and --start non-negative")
    if args.list:
        names = args.bases.split(",") if args.bases else [*BUILT, *EXPORTED]
        bases = load_bases(names, lambda m: print(m, file=sys.stderr))
        for i in range(args.start, args.start + args.n):
            base, kind, detail, data = make_mutation(args.seed, i, bases)
            print(f"#{i} {base}/{kind}: {detail} ({len(data)} bytes)")
        return 0
    return run(args)


if __name__ == "__main__":
    # models/ for the exports; appended, so graph_convert is whichever one is importable (PYTHONPATH)
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
