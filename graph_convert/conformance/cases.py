"""The ONNX node conformance cases: loading them, which (op, input) slots exporters give as
constants, and why a case is excluded (a dtype TF lacks, sequence/optional values, a training-mode
output, or a reason verified case by case in :data:`KNOWN_EXCLUSIONS`)."""
from __future__ import annotations

import re
import warnings
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Inputs that exporters (torch.onnx, and our constant folding) give as constants: shapes, axes,
# pads, sizes, weights. A graph input read *only* at these (op, input index) slots is turned into
# an initializer holding the case's data, so the case exercises the path real models take.
CONSTANT_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
    "TopK": (1,), "CumSum": (1,), "Trilu": (1,), "Dropout": (1, 2), "OneHot": (1, 2),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
    "Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2, 3, 4),
    "CenterCropPad": (1,), "Col2Im": (1, 2), "AffineGrid": (1,), "DeformConv": (1, 3), "MaxUnpool": (2,),
    "CumProd": (1,), "DFT": (1, 2), "STFT": (1, 3), "MelWeightMatrix": (0, 1, 2, 3, 4),
    # quantization parameters and weights (onnxruntime.quantization writes them as initializers)
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "QLinearConv": (1, 2, 3, 4, 5, 6, 7, 8),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7), "ConvInteger": (1, 2, 3), "MatMulInteger": (1, 2, 3),
}

# Element types the case cannot be expressed with in TF/TFLite (reason per type).
_NO_TF = "no such dtype in TensorFlow"
UNSUPPORTED_DTYPES: dict[int, str] = {
    TensorProto.FLOAT8E4M3FN: _NO_TF, TensorProto.FLOAT8E4M3FNUZ: _NO_TF, TensorProto.FLOAT8E5M2: _NO_TF,
    TensorProto.FLOAT8E5M2FNUZ: _NO_TF, TensorProto.UINT4: _NO_TF, TensorProto.INT4: _NO_TF,
    TensorProto.STRING: "string tensors: no TFLite builtin takes them (the emitters handle numbers only)",
    TensorProto.COMPLEX64: "complex tensors: TFLite builtin kernels do not take them",
    TensorProto.COMPLEX128: "complex tensors: TFLite builtin kernels do not take them",
}
for _name, _reason in (("FLOAT4E2M1", _NO_TF), ("FLOAT8E8M0", _NO_TF), ("UINT2", _NO_TF), ("INT2", _NO_TF)):
    if hasattr(TensorProto, _name):
        UNSUPPORTED_DTYPES[getattr(TensorProto, _name)] = _reason


# Cases whose expected outputs TF/TFLite cannot reproduce for a reason verified case by case.
_FFT32 = ("expected values carry numpy's complex64 FFT rounding: 10 imaginary parts that are exactly 0 "
          "(float64 ifft: |y| < 1e-15; ours: 0) are 1.9e-7 there, past the case's atol 1e-7")
KNOWN_EXCLUSIONS: dict[str, str] = {
    "test_dft_inverse": _FFT32,
    "test_dft_inverse_opset19": _FFT32,
    "test_attention_4d_causal_fp16_expanded": (
        "float16 rounding: the expected values keep float32 precision between the expanded ops "
        "(ONNX Runtime matches them only because its CPU kernels run float16 graphs in float32); "
        "rounding every intermediate to float16, as the graph's types say, lands 1 float16 ulp "
        "away in 2 of 192 elements (the first differing op, Mul, equals numpy's float16 product)"),
    "test_maxunpool_export_with_output_shape": (
        "the ONNX reference reads the indices in the inferred (smaller) shape and zero-pads to "
        "output_shape; ONNX Runtime and PyTorch read them in output_shape's own flattening, as MaxPool "
        "over an input of that shape writes them: the emitter follows ONNX Runtime, which every "
        "conversion is verified against"),
}

# --- cases ---------------------------------------------------------------------------------------
_CASES: list | None = None


def load_cases(match: str | None = None) -> list:
    """The ONNX node test cases (collected once per process), optionally filtered by a regex on the name."""
    global _CASES
    if _CASES is None:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            _CASES = list(collect_testcases(None))
    if match is None:
        return list(_CASES)
    rx = re.compile(match)
    return [c for c in _CASES if rx.search(c.name)]


def case_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """Emitter-table keys of the nodes in the case's main graph (sorted, unique)."""
    return tuple(sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node}))


def case_arrays(values) -> list:
    """Case data as numpy arrays (some cases store TensorProtos, e.g. bfloat16)."""
    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def dtype_name(et: int) -> str:
    return TensorProto.DataType.Name(et)


def case_dtypes(model: onnx.ModelProto) -> set[int]:
    """Element types of every tensor the case touches (I/O, inferred intermediates, constants, casts)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    g = inferred.graph
    out = set()
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.WhichOneof("value") == "tensor_type":
            out.add(vi.type.tensor_type.elem_type)
    out.update(t.data_type for t in g.initializer)
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.type == onnx.AttributeProto.INT:
                out.add(a.i)
            if a.type == onnx.AttributeProto.TENSOR:
                out.add(a.t.data_type)
    out.discard(0)
    return out


def exclusion(case, dtypes: set[int]) -> str | None:
    """Why the case cannot be expressed in TF at all, or None."""
    if case.name in KNOWN_EXCLUSIONS:
        return KNOWN_EXCLUSIONS[case.name]
    m = case.model
    for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            return f"{kind.replace('_type', '')} values: TF/TFLite functions take and return plain tensors only"
    for et in sorted(dtypes):
        if et in UNSUPPORTED_DTYPES:
            return f"{dtype_name(et)}: {UNSUPPORTED_DTYPES[et]}"
    inputs, outputs = case.data_sets[0]
    for v in [*inputs, *outputs]:
        if v is None or isinstance(v, (list, dict)):
            return "sequence/optional values: TF/TFLite functions take and return plain tensors only"
    feeds = dict(zip([vi.name for vi in m.graph.input], case_arrays(inputs)))
    for n in m.graph.node:
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2] in feeds and bool(np.asarray(feeds[n.input[2]])):
            return "training-mode output: Dropout with training_mode=True is random"
        if n.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i for a in n.attribute):
            return "training-mode output: BatchNormalization running statistics are a training feature"
    return None


def constant_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs of ``model`` read only at :data:`CONSTANT_SLOTS`."""
    slots: dict[str, list[bool]] = defaultdict(list)
    for n in model.graph.node:
        for j, t in enumerate(n.input):
            if t:
                slots[t].append(j in CONSTANT_SLOTS.get(n.op_type, ()) and n.domain in ("", "ai.onnx"))
    outputs = {o.name for o in model.graph.output}
    return [vi.name for vi in model.graph.input if slots.get(vi.name) and all(slots[vi.name]) and vi.name not in outputs]


def expanded_constant_inputs(case) -> list[str]:
    """For an ``*_expanded`` case (the op's function body spelled out), the inputs its one-node
    case gives as constants: the same inputs, which the expansion reads through Size, Split, If ...
    rather than at the op's constant slot (AffineGrid's size)."""
    if not case.name.endswith("_expanded"):
        return []
    base = [c for c in load_cases(f"^{case.name[:-len('_expanded')]}$")]
    return constant_inputs(base[0].model) if base else []


def freeze_constant_inputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                           also: list[str] | tuple[str, ...] = ()) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Copy of ``model`` whose inputs read only at :data:`CONSTANT_SLOTS` (and the inputs ``also``)
    are initializers."""
    names = {vi.name for vi in model.graph.input}
    frozen = list(dict.fromkeys(constant_inputs(model) + [t for t in also if t in names and t in feeds]))
    if not frozen:
        return model, feeds
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [vi for vi in m.graph.input if vi.name not in frozen]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name in frozen:
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(feeds[name]), name))
    return m, {k: v for k, v in feeds.items() if k not in frozen}

