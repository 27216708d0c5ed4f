"""Read a (quantized) TFLite model: op counts, I/O dtypes, float ops, degenerate scales, tensors per node."""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from graph_convert.errors import VerificationError
from graph_convert.quantize.scopes import NodeNames

# Every model here is opened with allocate=False (graph_convert.backends.tensorflow.runner, imported when used: it loads
# TensorFlow): no delegate is applied, so the ops and tensors read are the flatbuffer's as quantized.


def float_ops_in(model: bytes | str) -> list[str]:
    """Ops of a full-integer model that still compute in float (no int8 kernel, or kept float)."""
    from graph_convert.backends.tensorflow.runner import interpreter

    interp = interpreter(model, allocate=False)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(details[t]["dtype"] == np.float32 for t in op["outputs"] if t in details):
            out.append(op["op_name"])
    return out


def op_counts(model: bytes | str) -> dict[str, int]:
    from graph_convert.backends.tensorflow.runner import interpreter

    ops = interpreter(model, allocate=False)._get_ops_details()
    return dict(sorted(Counter(d["op_name"] for d in ops).items()))


def io_dtypes(model: bytes | str) -> dict[str, str]:
    from graph_convert.backends.tensorflow.runner import interpreter

    r = interpreter(model, allocate=False).get_signature_runner("serving_default")
    return {"inputs": sorted({np.dtype(d["dtype"]).name for d in r.get_input_details().values()}),
            "outputs": sorted({np.dtype(d["dtype"]).name for d in r.get_output_details().values()})}


def signature_order(model: bytes) -> list[str]:
    """Signature input names in the order of the interpreter's input tensors (the debugger feeds lists)."""
    from graph_convert.backends.tensorflow.runner import interpreter

    interp = interpreter(model, allocate=False)
    sig = interp.get_signature_runner("serving_default").get_input_details()
    by_index = {d["index"]: k for k, d in sig.items()}
    return [by_index[d["index"]] for d in interp.get_input_details()]


def output_tensor_names(model: bytes | str, graph, out_names) -> dict[str, str]:
    """TFLite signature output tensor name -> graph node that produces that output."""
    from graph_convert.backends.tensorflow.runner import interpreter

    interp = interpreter(model, allocate=False)
    tensors = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    sig = interp.get_signature_runner("serving_default").get_output_details()
    out = {}
    for y, n in zip(graph.outputs, out_names):
        prod = graph.producer(y)
        if n in sig and prod is not None:
            out[tensors[sig[n]["index"]]] = prod.name
    return out


DEGENERATE_SCALE = 1e20


def check_scales(model: bytes, names: NodeNames, what: str) -> None:
    """A calibrated range that reaches float's limits (a pad or fill with -inf / float lowest in the
    float graph) gives a scale near 1e36: every value of that tensor, and of those sharing its
    scale, quantizes to one level. Refuse such a model and name where it happened."""
    from graph_convert.backends.tensorflow.runner import interpreter

    interp = interpreter(model, allocate=False)
    for d in interp.get_tensor_details():
        scales = d.get("quantization_parameters", {}).get("scales")
        if scales is None or not len(scales) or d["dtype"] not in (np.int8, np.uint8, np.int16):
            continue
        worst = float(np.max(np.abs(scales)))
        if not math.isfinite(worst) or worst > DEGENERATE_SCALE:
            nodes = names.nodes(d["name"])
            where = f" (node {', '.join(repr(n) for n in nodes)})" if nodes else ""
            raise VerificationError(f"TFLite {what}: tensor {d['name']!r}{where} got a degenerate quantization scale {worst:.3g} — "
                                    "its calibrated range is unbounded (the float graph feeds it an extreme constant, such as a "
                                    "float-lowest pad), so int8 cannot represent it", f"TFLite {what}")


def denylist_for(model: bytes, names: NodeNames, float_ops: Sequence[str]) -> dict[str, list[str]]:
    """{node: [tensor names of ops it produced]} in a calibrated model (op outputs only)."""
    from graph_convert.backends.tensorflow.runner import interpreter

    interp = interpreter(model, allocate=False)
    tensors = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    want = set(float_ops)
    out: dict[str, list[str]] = {n: [] for n in float_ops}
    for op in interp._get_ops_details():
        for t in op["outputs"]:
            name = tensors.get(t)
            if name is None:
                continue
            for n in names.nodes(name):
                if n in want and name not in out[n]:
                    out[n].append(name)
    return out
