"""TF emitters where the ONNX conformance cases are thin: layout-marked forms, old opset forms,
runtime (non-constant) operands, integer corners, numerics in the tails.

Every model runs through the real pipeline (passes with ``keep_io_layout``, the TF emitter, the
TFLite converter with builtin ops only, the LiteRT interpreter); outputs are checked against ONNX
Runtime on the same inputs with the conformance harness's comparison (dtype, shape, rtol/atol).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.backend.test.case.test_case import TestCase

from graph_convert.conformance import CaseResult, Runner
from graph_convert_passes.to_channels_last import CHANNELS_LAST_OPS, LayoutSpec
from tests.helpers import Builder, run_ort

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner()


@pytest.fixture(scope="module")
def live() -> Runner:
    """Shapes, axes and sizes stay runtime inputs (the harness otherwise makes them constants)."""
    return Runner(freeze=False)


def ort_case(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-5) -> TestCase:
    """A conformance-style case whose expected outputs come from ONNX Runtime."""
    ref = run_ort(model, feeds)
    inputs = [feeds[vi.name] for vi in model.graph.input if vi.name in feeds]
    outputs = [ref[o.name] for o in model.graph.output]
    return TestCase(name=model.graph.name, model_name=model.graph.name, url=None, model_dir=None, model=model,
                    data_sets=[(inputs, outputs)], kind="node", rtol=rtol, atol=atol)


def check(runner: Runner, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, rtol: float = 1e-5,
          atol: float = 1e-5, tflite: str = "pass") -> CaseResult:
    """TF matches ORT, and TFLite matches too (or, with ``tflite="excluded"``, is declared a gap)."""
    r = runner.run(ort_case(model, feeds, rtol, atol))
    assert r.tf == "pass", f"{r.reason_class}: {r.reason}"
    assert r.tflite == tflite, f"TFLite {r.tflite}: {r.reason_class} {r.reason} {r.tflite_excluded}"
    return r


def tflite_ops(runner: Runner) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [d["op_name"] for d in Interpreter(model_content=runner.last_tflite)._get_ops_details()]


def one_op(op: str, inputs: list[tuple[str, list, int]], opset: int = 17, consts: dict | None = None, n_out: int = 1, **attrs) -> onnx.ModelProto:
    """A model of one node: ``inputs`` are (name, shape, dtype) graph inputs, ``consts`` named initializers
    (None for an omitted optional input); inputs and consts are wired in the order given."""
    b = Builder(opset)
    names = []
    for name, shape, dtype in inputs:
        names.append(b.input(name, shape, dtype))
    for name, value in (consts or {}).items():
        names.append("" if value is None else b.const(value, name=name, dtype=value.dtype))
    order = [n for n in names]
    outs = b.op(op, order, n_out=n_out, **attrs)
    for y in (outs if n_out > 1 else [outs]):
        b.output(y)
    return b.model()


def typed_model(nodes: list, inputs: list[tuple[str, list, int]], outputs: list[tuple[str, list, int]], opset: int,
                inits: dict[str, np.ndarray] | None = None, checker: bool = True) -> onnx.ModelProto:
    """A model with declared output types (for ops whose shape inference leaves them open)."""
    g = helper.make_graph(nodes, "typed", [helper.make_tensor_value_info(n, t, s) for n, s, t in inputs],
                          [helper.make_tensor_value_info(n, t, s) for n, s, t in outputs],
                          [onnx.numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if checker:
        onnx.checker.check_model(m)
    return m


def _f32(*shape, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


F = TensorProto.FLOAT


# --- layout-aware emitters on the marked (channels-last) path -----------------------------------
def _marked_runner(op: str, spec: LayoutSpec) -> Runner:
    table = dict(CHANNELS_LAST_OPS)
    table[op] = spec
    return Runner(options={"channels_last_ops": table})


@pytest.fixture(scope="module")
def unmarked() -> Runner:
    """No layout pass: layout-aware emitters see ONNX (channels-first) tensors."""
    return Runner(disable=("to_channels_last",))


def _assert_marked(runner: Runner, op: str) -> None:
    nodes = [n for n in runner.last_graph.nodes if n.op_type == op]
    assert nodes and all(n.in_perm(0) == (0, 2, 3, 1) for n in nodes), f"{op} not switched to channels-last"


RESIZE_CASES = {
    # id: (attrs, scales or None, sizes or None, TFLite op that must carry it)
    "bilinear_half_pixel_x2": (dict(mode="linear"), [1, 1, 2, 2], None, "RESIZE_BILINEAR"),
    "bilinear_align_corners": (dict(mode="linear", coordinate_transformation_mode="align_corners"), None, [1, 3, 9, 7], "RESIZE_BILINEAR"),
    "nearest_asymmetric_floor": (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 2, 3], None, "RESIZE_NEAREST_NEIGHBOR"),
    "nearest_half_pixel_prefer_ceil": (dict(mode="nearest", nearest_mode="round_prefer_ceil"), [1, 1, 0.5, 0.5], None, "RESIZE_NEAREST_NEIGHBOR"),
    "nearest_default_gather": (dict(mode="nearest"), None, [1, 3, 7, 5], "GATHER"),
    "cubic_gather": (dict(mode="cubic", cubic_coeff_a=-0.5), [1, 1, 1.5, 2], None, "GATHER"),
    "linear_antialias_down": (dict(mode="linear", antialias=1), None, [1, 3, 3, 5], "GATHER"),
    "crop_and_resize": (dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-1.0), None, [1, 3, 5, 5], "GATHER"),
}


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize_layout(case, marked, unmarked):
    attrs, scales, sizes, lite_op = RESIZE_CASES[case]
    consts = {"roi": np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], np.float32) if "crop" in case else None,
              "scales": None if scales is None else np.array(scales, np.float32)}
    if sizes is not None:
        consts["sizes"] = np.array(sizes, np.int64)
    model = one_op("Resize", [("x", [1, 3, 6, 8], F)], opset=19, consts=consts, **attrs)
    r = _marked_runner("Resize", LayoutSpec(ranks=(4,))) if marked else unmarked
    check(r, model, {"x": _f32(1, 3, 6, 8)})
    if marked:
        _assert_marked(r, "Resize")
        assert lite_op in tflite_ops(r)
    else:
        assert all(n.in_perm(0) is None for n in r.last_graph.nodes if n.op_type == "Resize")


def test_resize_marked_axes_attribute_maps_to_channels_last(runner):
    model = one_op("Resize", [("x", [1, 2, 4, 6], F)], opset=19, consts={"roi": None, "scales": None, "sizes": np.array([9, 3], np.int64)},
                   mode="linear", axes=[3, 2])
    r = _marked_runner("Resize", LayoutSpec(ranks=(4,)))
    check(r, model, {"x": _f32(1, 2, 4, 6)})
    _assert_marked(r, "Resize")


@pytest.mark.parametrize("rank,mode", [(3, "linear"), (5, "linear"), (5, "nearest")])
def test_resize_marked_rank3_and_rank5(rank, mode):
    shape = [1, 2, 3, 4, 5][:rank]
    scales = np.array([1, 1, 2.0, 1.5, 0.6][:rank], np.float32)
    model = one_op("Resize", [("x", shape, F)], opset=19, consts={"roi": None, "scales": scales}, mode=mode)
    r = _marked_runner("Resize", LayoutSpec())
    check(r, model, {"x": _f32(*shape)})
    assert all(n.in_perm(0) == tuple([0, *range(2, rank), 1]) for n in r.last_graph.nodes if n.op_type == "Resize")


def test_resize_uint8_nearest_and_declined_linear(runner):
    x = RNG.integers(0, 256, (1, 1, 4, 4)).astype(np.uint8)
    consts = {"roi": None, "scales": np.array([1, 1, 1.75, 2.5], np.float32)}
    nearest = one_op("Resize", [("x", [1, 1, 4, 4], TensorProto.UINT8)], opset=19, consts=consts, mode="nearest")
    check(runner, nearest, {"x": x}, rtol=0, atol=0)
    # ONNX's reference rounds interpolated integers, ONNX Runtime truncates them: declined, not guessed
    linear = one_op("Resize", [("x", [1, 1, 4, 4], TensorProto.UINT8)], opset=19, consts=consts, mode="linear")
    r = runner.run(ort_case(linear, {"x": x}))
    assert r.status == "unsupported" and "linear interpolation of uint8 values" in r.reason


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_instance_norm_layout(rank, unmarked):
    shape = [2, 3, 5, 4, 3][:rank]
    model = one_op("InstanceNormalization", [("x", shape, F)], consts={"s": _f32(3), "b": _f32(3)}, epsilon=1e-3)
    feeds = {"x": _f32(*shape, scale=3.0)}
    r = _marked_runner("InstanceNormalization", LayoutSpec())
    check(r, model, feeds, atol=1e-4)
    assert all(n.in_perm(0) == tuple([0, *range(2, rank), 1]) for n in r.last_graph.nodes if n.op_type == "InstanceNormalization")
    check(unmarked, model, feeds, atol=1e-4)
    assert all(not n.is_layout_marked for n in unmarked.last_graph.nodes)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_layout(size, unmarked):
    model = one_op("LRN", [("x", [1, 6, 5, 5], F)], opset=13, size=size, alpha=1e-3, beta=0.75, bias=2.0)
    feeds = {"x": _f32(1, 6, 5, 5, scale=4.0)}
    r = _marked_runner("LRN", LayoutSpec(ranks=(4,)))
    check(r, model, feeds)
    _assert_marked(r, "LRN")
    assert "LOCAL_RESPONSE_NORMALIZATION" in tflite_ops(r)
    check(unmarked, model, feeds)  # channels-first: the window as a sum of shifted channel slices
    assert all(not n.is_layout_marked for n in unmarked.last_graph.nodes)
    assert "LOCAL_RESPONSE_NORMALIZATION" not in tflite_ops(unmarked)


# --- old opset forms ------------------------------------------------------------------------------
def test_upsample_opset7_scales_attribute(runner):
    b = Builder(7)
    x = b.input("x", [1, 2, 3, 4])
    b.output(b.op("Upsample", [x], mode="nearest", scales=[1.0, 1.0, 2.0, 3.0]))
    check(runner, b.model(), {"x": _f32(1, 2, 3, 4)})


@pytest.mark.parametrize("mode,scales", [("nearest", [1, 1, 1.5, 2.5]), ("linear", [1, 1, 1.5, 2.0])])
def test_upsample_opset9(mode, scales, runner):
    model = one_op("Upsample", [("x", [1, 2, 4, 6], F)], opset=9, consts={"s": np.array(scales, np.float32)}, mode=mode)
    check(runner, model, {"x": _f32(1, 2, 4, 6)})


@pytest.mark.parametrize("mode,scales", [("nearest", [1, 1, 0.5, 0.6]), ("nearest", [1, 1, 2.0, 1.5]), ("linear", [1, 1, 0.75, 0.5])])
def test_resize_opset10(mode, scales, runner):
    """Resize-10 has no coordinate modes: asymmetric, and nearest rounds up when downsampling."""
    model = one_op("Resize", [("x", [1, 2, 4, 6], F)], opset=10, consts={"s": np.array(scales, np.float32)}, mode=mode)
    check(runner, model, {"x": _f32(1, 2, 4, 6)})


def test_attribute_forms_before_opset13(runner):
    b = Builder(11)
    x = b.input("x", [2, 3, 4])
    u = b.op("Unsqueeze", [x], axes=[0, -1])                 # (1, 2, 3, 4, 1)
    s = b.op("Squeeze", [u], axes=[0])                       # (2, 3, 4, 1)
    a, c = b.op("Split", [s], n_out=2, axis=2, split=[1, 3])
    r = b.op("ReduceSum", [c], axes=[1, -1], keepdims=0)     # (2, 3)
    m = b.op("ReduceMean", [a], axes=[2], keepdims=1)        # (2, 3, 1, 1)
    sm = b.op("Softmax", [x], axis=1)                        # opset < 13: over the flattened (3, 4)
    b.output(r)
    b.output(m)
    b.output(sm)
    check(runner, b.model(), {"x": _f32(2, 3, 4)})


def test_slice_pad_clip_topk_old_attributes(runner):
    b = Builder(9)
    x = b.input("x", [3, 8])
    sl = b.op("Slice", [x], starts=[1, -6], ends=[3, 100], axes=[0, 1])
    pd = b.op("Pad", [sl], pads=[0, 1, 1, 2], value=0.5, mode="constant")
    cl = b.op("Clip", [pd], min=-0.3, max=0.4)
    vals, idx = b.op("TopK", [x], n_out=2, k=3, axis=1)
    for t in (cl, vals, idx):
        b.output(t)
    check(runner, b.model(), {"x": _f32(3, 8)})


@pytest.mark.parametrize("opset,params", [(18, 2), (21, 6)], ids=["opset18_per_group", "opset21_per_channel"])
def test_group_norm_scale_per_group_or_channel(opset, params, runner):
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-4)
    # the checker flags GroupNormalization-18 as deprecated; such files exist and ORT runs them
    model = typed_model([node], [("x", [2, 6, 3, 3], F)], [("y", [2, 6, 3, 3], F)], opset, {"s": _f32(params), "b": _f32(params)}, checker=opset >= 21)
    check(runner, model, {"x": _f32(2, 6, 3, 3)}, atol=1e-4)


def test_layer_norm_all_outputs_axis1(runner):
    model = one_op("LayerNormalization", [("x", [2, 3, 4], F)], consts={"s": _f32(3, 4), "b": _f32(3, 4)}, n_out=3, axis=1)
    check(runner, model, {"x": _f32(2, 3, 4)}, atol=1e-4)


# --- operands known only at run time -------------------------------------------------------------
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_runtime_operands(trans_a, trans_b, runner):
    a_shape, b_shape = ([4, 3] if trans_a else [3, 4]), ([5, 4] if trans_b else [4, 5])
    model = one_op("Gemm", [("a", a_shape, F), ("b", b_shape, F), ("c", [1, 5], F)], alpha=0.5, beta=2.0, transA=trans_a, transB=trans_b)
    check(runner, model, {"a": _f32(*a_shape), "b": _f32(*b_shape), "c": _f32(1, 5)})


@pytest.mark.parametrize("bias", ["runtime", "constant"])
@pytest.mark.parametrize("c_shape", [[1, 5], [5], [3, 5], [3, 1], [1, 1], []], ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("trans_a,trans_b", [(1, 0), (1, 1), (0, 0)])
def test_gemm_bias_shapes_with_unit_alpha_beta(trans_a, trans_b, c_shape, bias, runner):
    """alpha = beta = 1 leaves MatMul + Add adjacent, which TF's remapper fuses into one
    _FusedMatMul; with transA a (1, N) addend then failed at run time ("bias must be
    1-dimensional", ONNX test_gemm_transposeA). Every bias shape must give ORT's answer."""
    a_shape, b_shape = ([4, 3] if trans_a else [3, 4]), ([5, 4] if trans_b else [4, 5])
    c = np.asarray(_f32(*c_shape))
    inputs = [("a", a_shape, F), ("b", b_shape, F)] + ([("c", c_shape, F)] if bias == "runtime" else [])
    model = one_op("Gemm", inputs, consts={"c": c} if bias == "constant" else None, transA=trans_a, transB=trans_b)
    feeds = {"a": _f32(*a_shape), "b": _f32(*b_shape)} | ({"c": c} if bias == "runtime" else {})
    check(runner, model, feeds)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_constant_weight_is_one_fully_connected(trans_b, runner):
    w = _f32(6, 4) if trans_b else _f32(4, 6)
    model = one_op("Gemm", [("a", [2, 4], F)], consts={"w": w, "c": _f32(6)}, alpha=0.7, beta=0.3, transB=trans_b)
    check(runner, model, {"a": _f32(2, 4)})
    assert tflite_ops(runner).count("FULLY_CONNECTED") + tflite_ops(runner).count("BATCH_MATMUL") == 1


EINSUM_ATTENTION = {
    "scores": ("bhid,bhjd->bhij", [[2, 3, 4, 5], [2, 3, 6, 5]]),
    "context": ("bhij,bhjd->bhid", [[2, 3, 4, 6], [2, 3, 6, 5]]),
    "qk_3d": ("bqc,bkc->bqk", [[2, 4, 8], [2, 5, 8]]),
    "heads_proj": ("bnc,chd->bhnd", [[2, 4, 6], [6, 3, 2]]),
    "merge_heads": ("bhnd,hdc->bnc", [[2, 3, 4, 2], [3, 2, 6]]),
    "ellipsis_broadcast": ("...ij,...jk->...ik", [[2, 1, 3, 4], [1, 5, 4, 2]]),
    "trace_and_outer": ("ii,j->j", [[3, 3], [4]]),
}


@pytest.mark.parametrize("case", list(EINSUM_ATTENTION))
def test_einsum_forms_float32(case, runner):
    eq, shapes = EINSUM_ATTENTION[case]
    names = [f"x{i}" for i in range(len(shapes))]
    feeds = {n: _f32(*s) for n, s in zip(names, shapes)}
    out = np.einsum(eq, *feeds.values())
    node = helper.make_node("Einsum", names, ["y"], equation=eq)
    model = typed_model([node], [(n, s, F) for n, s in zip(names, shapes)], [("y", list(out.shape), F)], 12)
    check(runner, model, feeds, atol=1e-4)
    if case in ("scores", "qk_3d"):  # K^T by the matmul's adjoint flag, not a TRANSPOSE
        assert "TRANSPOSE" not in tflite_ops(runner)


def test_reshape_runtime_shape_with_zero_and_minus_one(live):
    model = one_op("Reshape", [("x", [2, 3, 4], F), ("s", [3], TensorProto.INT64)])
    check(live, model, {"x": _f32(2, 3, 4), "s": np.array([0, -1, 2], np.int64)})


def test_gather_runtime_negative_indices_and_expand_runtime_shape(live):
    b = Builder()
    x = b.input("x", [5, 3])
    i = b.input("i", [2, 2], TensorProto.INT64)
    s = b.input("s", [3], TensorProto.INT64)
    g = b.op("Gather", [x, i], axis=0)            # (2, 2, 3)
    b.output(b.op("Expand", [g, s]))
    check(live, b.model(), {"x": _f32(5, 3), "i": np.array([[-1, 0], [2, -5]], np.int64), "s": np.array([2, 1, 1], np.int64)})


def test_shape_arithmetic_is_folded_to_constants(runner):
    """Shape -> Gather -> Div -> Concat -> Reshape with static shapes: only the RESHAPE is left."""
    b = Builder()
    x = b.input("x", [2, 8, 6])
    shp = b.op("Shape", [x])
    n = b.op("Gather", [shp, b.const(np.array(1, np.int64), dtype=np.int64)], axis=0)
    half = b.op("Div", [n, b.const(np.array(2, np.int64), dtype=np.int64)])
    dims = b.op("Concat", [b.const(np.array([2, 2], np.int64), dtype=np.int64), b.op("Unsqueeze", [half, b.const(np.array([0], np.int64), dtype=np.int64)]),
                           b.const(np.array([-1], np.int64), dtype=np.int64)], axis=0)
    b.output(b.op("Reshape", [x, dims]))
    check(runner, b.model(), {"x": _f32(2, 8, 6)})
    assert tflite_ops(runner) == ["RESHAPE"]


# --- integer and dtype corners --------------------------------------------------------------------
I32, I64 = TensorProto.INT32, TensorProto.INT64


def test_integer_div_truncates_and_mod_signs(runner):
    a = np.array([7, -7, 7, -7, 9, -9, 0], np.int32)
    d = np.array([2, 2, -2, -2, 3, 4, 5], np.int32)
    b = Builder()
    x, y = b.input("a", [7], I32), b.input("d", [7], I32)
    b.output(b.op("Div", [x, y]))
    b.output(b.op("Mod", [x, y]))
    b.output(b.op("Mod", [x, y], fmod=1))
    check(runner, b.model(), {"a": a, "d": d})


def test_int64_division_is_exact_without_an_integer_div_kernel(runner):
    big = np.iinfo(np.int64).max
    a = np.array([7, -7, 7, -7, big, -big, big - 12345, 10**18 + 7, -(10**17) - 3, 0, 123456789012345678], np.int64)
    d = np.array([2, 2, -2, -2, 3, 7, 1, 10**9 + 7, 97, 5, -(2**40) - 3], np.int64)
    model = one_op("Div", [("a", [a.size], I64), ("d", [a.size], I64)])
    check(runner, model, {"a": a, "d": d})  # TFLite ran it: no TFLite gap for int64 Div


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32])
def test_narrow_integers_compute_in_a_wider_dtype(dtype, runner):
    """TFLite lacks most kernels for these dtypes; they run exactly in a wider one."""
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    b = Builder(18)
    x, y = b.input("x", [2, 6], t), b.input("y", [2, 6], t)
    b.output(b.op("Add", [x, y]))
    b.output(b.op("Mul", [x, y]))
    if dtype not in (np.int16, np.uint16):  # ONNX Runtime's Max stops there
        b.output(b.op("Max", [x, y]))
    b.output(b.op("Less", [x, y]))
    b.output(b.op("Transpose", [x], perm=[1, 0]))
    if dtype in (np.int8, np.uint8):  # ONNX Runtime's ReduceMax stops there
        b.output(b.op("ReduceMax", [x, b.const(np.array([1], np.int64), dtype=np.int64)], keepdims=0))
    hi = np.iinfo(dtype).max
    feeds = {"x": RNG.integers(0, min(hi, 200), (2, 6)).astype(dtype), "y": RNG.integers(0, min(hi, 200), (2, 6)).astype(dtype)}
    check(runner, b.model(), feeds)


def test_int64_pow_argmax_topk_without_int64_kernels(runner):
    b = Builder()
    base, e = b.input("base", [5], I64), b.input("e", [5], I64)
    b.output(b.op("Pow", [base, e]))
    x = b.input("x", [3, 6], I64)
    b.output(b.op("ArgMax", [x], axis=1, select_last_index=1))
    b.output(b.op("ArgMin", [x], axis=0, keepdims=0))
    vals, idx = b.op("TopK", [x, b.const(np.array([2], np.int64), dtype=np.int64)], n_out=2, largest=0)
    b.output(vals)
    b.output(idx)
    feeds = {"base": np.array([3, -2, 10, 7, 0], np.int64), "e": np.array([30, 63, 15, 0, 5], np.int64),
             "x": np.array([[5, 1, 5, 0, 0, 2], [-3, 7, 7, 1, 9, 9], [4, 4, 4, 4, 4, 4]], np.int64)}
    check(runner, b.model(), feeds)


def test_float64_runs_in_tf_and_is_declared_a_tflite_gap(runner):
    model = one_op("Add", [("a", [3], TensorProto.DOUBLE), ("b", [3], TensorProto.DOUBLE)])
    r = check(runner, model, {"a": np.arange(3.0), "b": np.ones(3)}, tflite="excluded")
    assert "float64" in r.tflite_excluded


def test_inf_constants_stay_exact_in_tflite(runner):
    """TFLite's converter stores an infinite constant as +-FLT_MAX (1 + -FLT_MAX is not -inf): the
    infinities are made at run time, so TFLite gives ORT's +-inf."""
    model = one_op("Add", [("a", [3], F)], consts={"m": np.array([0.0, -np.inf, np.inf], np.float32)})
    check(runner, model, {"a": np.array([1.0, 2.0, -3.0], np.float32)})


def test_inf_from_folded_and_filled_constants_stays_exact_in_tflite(live):
    """A causal mask folded at conversion time (Where of constants) and a run-time-shaped
    ConstantOfShape(-inf): a fully masked row soft-maxes to NaN as in ORT, not to a uniform row."""
    b = Builder(17)
    s = b.input("s", [4, 4])
    shp = b.input("shp", [2], TensorProto.INT64)
    tri = b.const(np.triu(np.ones((4, 4), bool), 1) | (np.arange(4)[:, None] == 3), dtype=np.bool_)
    mask = b.op("Where", [tri, b.const(np.float32(-np.inf)), b.const(np.float32(0))])
    b.output(b.op("Softmax", [b.op("Add", [s, mask])], axis=-1))
    fill = b.op("ConstantOfShape", [shp], value=onnx.numpy_helper.from_array(np.array([-np.inf], np.float32)))
    b.output(b.op("Add", [fill, b.const(np.float32(1))]))
    r = check(live, b.model(), {"s": _f32(4, 4), "shp": np.array([2, 3], np.int64)})
    assert "FILL" in tflite_ops(live)  # the run-time-shaped form
    assert r.tflite == "pass"


# --- numerics in the tails ------------------------------------------------------------------------
def test_erf_gelu_softplus_mish_tails(runner):
    x = np.concatenate([np.linspace(-9, 9, 181), [-1e-6, 1e-7, 0.0, 3.9, -3.99, 4.01, 25.0, -40.0]]).astype(np.float32)
    b = Builder(20)
    feeds = {}
    # one input per op: TFLite fuses each GELU pattern only when the two forms share no subexpression
    for i, (op, attrs) in enumerate((("Erf", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Softplus", {}), ("Mish", {}))):
        feeds[f"x{i}"] = x
        b.output(b.op(op, [b.input(f"x{i}", [x.size])], **attrs))
    check(runner, b.model(), feeds, rtol=1e-5, atol=1e-6)


def test_hyperbolic_and_inverse_trig_near_zero(runner):
    x = np.array([-0.9, -0.3, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 0.2, 0.7, 0.99], np.float32)
    b = Builder()
    t = b.input("x", [x.size])
    for op in ("Sinh", "Asinh", "Atanh", "Asin", "Acos", "Atan", "Tan", "Cosh"):
        b.output(b.op(op, [t]))
    check(runner, b.model(), {"x": x}, rtol=1e-5, atol=1e-7)


# --- emitters decline clearly ----------------------------------------------------------------------
def test_runtime_resize_scales_are_declined_with_node_and_reason(live):
    b = Builder(19)
    x, sc = b.input("x", [1, 1, 4, 4]), b.input("scales", [4])
    b.output(b.op("Resize", [x, "", sc], mode="linear"))
    r = live.run(ort_case(b.model(), {"x": _f32(1, 1, 4, 4), "scales": np.array([1, 1, 2, 2], np.float32)}))
    assert r.status == "unsupported"
    assert "(Resize)" in r.reason and "non-constant roi/scales/sizes is not supported" in r.reason


def test_tflite_gaps_belong_to_their_trace(runner):
    model = one_op("Add", [("a", [3], TensorProto.DOUBLE), ("b", [3], TensorProto.DOUBLE)])
    from graph_convert.ir import from_onnx
    from graph_convert.backends.tensorflow.emitter import build_function

    traced = build_function(from_onnx(model), runner.registry.emitters)
    assert [(op, why) for _, op, why in traced.gaps] == [("Add", "TFLite has no add kernel for float64")]
    clean = one_op("Add", [("a", [3], TensorProto.FLOAT), ("b", [3], TensorProto.FLOAT)])
    assert build_function(from_onnx(clean), runner.registry.emitters).gaps == []  # nothing carried over


@pytest.mark.parametrize("shape,perm,decomposed", [
    ((1, 8, 8, 2, 16), (0, 1, 2, 4, 3), True),   # channel shuffle, channels-last
    ((3, 4, 1, 8, 5), (0, 3, 2, 1, 4), False),   # size-1 axis skipped in the middle; block of 5
    ((2, 6, 3, 4), (0, 1, 3, 2), False),         # 3x4 matrices: too small to pay for three passes
    ((2, 6, 2, 9), (0, 1, 3, 2), True),          # [12, 2, 9] -> [12, 9, 2]
    ((5, 1, 3, 1, 7), (0, 4, 3, 2, 1), True),    # size-1 axes around: [5, 3, 7] -> [5, 7, 3]
    ((4, 6, 2, 8), (2, 3, 0, 1), False),         # a plain 2-D transpose once merged
    ((2, 3, 4, 5), (1, 0, 3, 2), False),
])
def test_transpose_forms_match_onnx_runtime(shape, perm, decomposed, runner):
    """Batched small-matrix transposes are emitted as three row-moving transposes; every form
    still computes exactly what ONNX Runtime does, in TF and in TFLite."""
    m = one_op("Transpose", [("x", list(shape), F)], perm=list(perm))
    check(runner, m, {"x": _f32(*shape)}, rtol=0, atol=0)
    n = tflite_ops(runner).count("TRANSPOSE")
    assert (n > 1) == decomposed, tflite_ops(runner)  # the TFLite converter may merge two of the three


COL2IM_CASES = {
    "plain": dict(image=[6, 6], block=[2, 2], attrs={}),
    "stride_pad_dilation": dict(image=[7, 6], block=[3, 2], attrs=dict(strides=[2, 1], pads=[1, 0, 1, 1], dilations=[1, 2])),
    "uncovered_tail": dict(image=[7, 7], block=[2, 2], attrs=dict(strides=[2, 2])),  # row/col 6 get no block
    "one_d": dict(image=[9], block=[3], attrs=dict(strides=[2], pads=[1, 1])),
}


@pytest.mark.parametrize("case", list(COL2IM_CASES))
def test_col2im(runner, case):
    """Col2Im (torch F.fold) against ORT: channels, block offsets, strides, pads, dilations."""
    cfg = COL2IM_CASES[case]
    image, block, attrs = cfg["image"], cfg["block"], cfg["attrs"]
    n = len(image)
    st, dl = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    pd = attrs.get("pads", [0] * (2 * n))
    grid = [(image[i] + pd[i] + pd[i + n] - dl[i] * (block[i] - 1) - 1) // st[i] + 1 for i in range(n)]
    c, k = 3, int(np.prod(block))
    model = one_op("Col2Im", [("x", [2, c * k, int(np.prod(grid))], TensorProto.FLOAT)], opset=18,
                   consts={"image": np.array(image, np.int64), "block": np.array(block, np.int64)}, **attrs)
    check(runner, model, {"x": RNG.standard_normal((2, c * k, int(np.prod(grid)))).astype(np.float32)})


# --- recurrent layers (unrolled) ------------------------------------------------------------------
def _rnn_model(op: str, *, T=5, N=2, I=3, H=4, dirs=1, layout=0, bias=True, init=True, peep=False, seq=False, n_out=None, **attrs):
    ng = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(7)  # the same weights and inputs for the same arguments

    def _f32(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    b = Builder(14)
    xs = [T, N, I] if layout == 0 else [N, T, I]
    hs = [dirs, N, H] if layout == 0 else [N, dirs, H]
    ins = [b.input("X", xs), b.const(_f32(dirs, ng * H, I, scale=0.5), name="W"), b.const(_f32(dirs, ng * H, H, scale=0.5), name="R"),
           b.const(_f32(dirs, 2 * ng * H), name="B") if bias else "",
           b.const(np.full([N], T, np.int32), name="seq", dtype=np.int32) if seq else "",
           b.input("h0", hs) if init else ""]
    if op == "LSTM":
        ins += [b.input("c0", hs) if init else "", b.const(_f32(dirs, 3 * H), name="P") if peep else ""]
    while ins[-1] == "":
        ins.pop()
    n_out = n_out or (3 if op == "LSTM" else 2)
    direction = {1: "forward", 2: "bidirectional"}[dirs] if "direction" not in attrs else attrs.pop("direction")
    outs = b.op(op, ins, n_out=n_out, hidden_size=H, layout=layout, direction=direction, **attrs)
    for y in outs:
        b.output(y)
    feeds = {"X": _f32(*xs)}
    if init:
        feeds["h0"] = _f32(*hs)
        if op == "LSTM":
            feeds["c0"] = _f32(*hs)
    return b.model(), feeds


@pytest.mark.parametrize("op,kw", [
    ("LSTM", dict(dirs=2, peep=True, seq=True, clip=1.5)),
    ("LSTM", dict(dirs=1, direction="reverse", init=False, input_forget=1)),
    ("LSTM", dict(dirs=2, activations=["HardSigmoid", "Tanh", "Softsign", "Sigmoid", "ScaledTanh", "Tanh"],
                  activation_alpha=[0.3, 0.7], activation_beta=[0.4, 1.3])),
    ("GRU", dict(dirs=2, linear_before_reset=1)),
    ("GRU", dict(dirs=1, bias=False, init=False)),
    ("GRU", dict(dirs=1, direction="reverse", linear_before_reset=1, clip=0.8, activations=["Sigmoid", "Relu"])),
    ("RNN", dict(dirs=2, activations=["Relu", "LeakyRelu"], activation_alpha=[0.2])),
    ("RNN", dict(dirs=1, seq=True, init=False)),
])
def test_recurrent_unrolled(runner, op, kw):
    model, feeds = _rnn_model(op, **kw)
    check(runner, model, feeds, rtol=1e-5, atol=1e-5)
    ops_ = set(tflite_ops(runner))
    assert "FULLY_CONNECTED" in ops_ and not any(o.startswith("FLEX") or o == "WHILE" for o in ops_), ops_


@pytest.mark.parametrize("op,kw", [
    ("LSTM", dict(dirs=2, peep=True, clip=1.5)),
    ("GRU", dict(dirs=2, linear_before_reset=1)),
    ("RNN", dict(dirs=1, init=False)),
])
def test_recurrent_batch_first_layout(runner, op, kw):
    """layout=1 (ONNX Runtime's CPU kernels refuse it): the reference is the same model in layout 0
    run by ONNX Runtime, its I/O transposed to batch-first."""
    m0, f0 = _rnn_model(op, layout=0, **kw)
    m1, f1 = _rnn_model(op, layout=1, **kw)
    feeds1 = {k: np.swapaxes(v, 0, 1) for k, v in f0.items()}
    ref = run_ort(m0, f0)
    outs = [ref[o.name] for o in m0.graph.output]
    expect = [np.transpose(outs[0], (2, 0, 1, 3))] + [np.swapaxes(o, 0, 1) for o in outs[1:]]
    inputs = [feeds1[vi.name] for vi in m1.graph.input if vi.name in feeds1]
    case = TestCase(name=m1.graph.name, model_name=m1.graph.name, url=None, model_dir=None, model=m1,
                    data_sets=[(inputs, expect)], kind="node", rtol=1e-5, atol=1e-5)
    r = runner.run(case)
    assert r.tf == "pass" and r.tflite == "pass", f"{r.reason_class}: {r.reason}"


def test_recurrent_partial_sequence_lens_is_declined(runner):
    from graph_convert.errors import ConvertError

    b = Builder(14)
    ins = [b.input("X", [3, 2, 3]), b.const(_f32(1, 4, 3), name="W"), b.const(_f32(1, 4, 4), name="R"), "",
           b.const(np.array([3, 1], np.int32), name="seq", dtype=np.int32)]
    y, yh = b.op("RNN", ins, n_out=2, hidden_size=4)
    b.output(y)
    b.output(yh)
    r = runner.run(ort_case(b.model(), {"X": _f32(3, 2, 3)}))
    assert r.tf != "pass" and "sequence_lens" in r.reason
