"""Layout passes on tiny graphs: golden structure (marks, weights, Transpose counts) + ORT equivalence."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import helper

from graph_convert.ir import perm as P
from graph_convert.ir import Graph, from_onnx
from graph_convert.pass_manager import PassManager
from graph_convert.plugins import builtin_registry
from tests.helpers import Builder, assert_equivalent, registry, run_pipeline

I64 = np.int64


class ShapedBuilder(Builder):
    """``Builder`` whose graph outputs always get their inferred type and shape, also when an
    output is a graph input passed straight through (not in the inferred value_info)."""

    def model(self) -> onnx.ModelProto:
        probe = helper.make_model(helper.make_graph(self.nodes, "probe", self.inputs, [], self.inits),
                                  opset_imports=[helper.make_opsetid("", self.opset)])
        probe.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
        known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.input]}
        declared = self.outputs
        self.outputs = [known.get(o.name, o) for o in declared]
        try:
            return super().model()
        finally:
            self.outputs = declared

    def array(self, shape, scale: float = 0.5) -> tuple[np.ndarray, str]:
        """A random float32 constant, returned with its value so tests can compare rewrites."""
        w = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        return w, self.const(w)

    def ints(self, values) -> str:
        return self.const(np.array(values, dtype=I64))

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, pad: int = 1, rank: int = 4, **attrs) -> str:
        n = rank - 2
        return self.op("Conv", [x, self.weight([c_out, c_in] + [k] * n), self.weight([c_out])],
                       kernel_shape=[k] * n, pads=[pad] * (2 * n), **attrs)

    def batchnorm(self, x: str, c: int, seed: int = 3) -> str:
        r = np.random.default_rng(seed)
        gamma, beta, mean = (r.standard_normal(c).astype(np.float32) for _ in range(3))
        var = (r.random(c) + 0.5).astype(np.float32)
        return self.op("BatchNormalization", [x, *(self.const(v) for v in (gamma, beta, mean, var))], epsilon=1e-3)


def ops_of(g: Graph, op_type: str):
    return [n for n in g.nodes if n.op_type == op_type]


def transposes(g: Graph) -> list:
    return [tuple(n.attr("perm")) for n in ops_of(g, "Transpose")]


# ---------------------------------------------------------------------------------------------
# Conv: rank 3/4/5 x stride x padding x groups x dilation
# ---------------------------------------------------------------------------------------------
SPATIAL = {3: 9, 4: 7, 5: 5}
ASYM_PADS = {3: [0, 1], 4: [0, 1, 1, 0], 5: [0, 1, 1, 1, 0, 0]}
PADDINGS = ["pads0", "pads1", "pads_asym", "SAME_UPPER", "SAME_LOWER", "VALID"]


def _conv_params():
    for rank, stride, padding, groups, dilation in itertools.product((3, 4, 5), (1, 2), PADDINGS, ("1", "2", "dw"), (1, 2)):
        if dilation > 1 and padding.startswith("SAME"):
            continue  # ONNX Runtime (the reference) refuses dilation with auto_pad SAME_*
        yield pytest.param(rank, stride, padding, groups, dilation, id=f"r{rank}-s{stride}-{padding}-g{groups}-d{dilation}")


def _padding_attrs(padding: str, rank: int) -> dict:
    n = rank - 2
    if padding == "pads0":
        return {"pads": [0] * (2 * n)}
    if padding == "pads1":
        return {"pads": [1] * (2 * n)}
    if padding == "pads_asym":
        return {"pads": ASYM_PADS[rank]}
    return {"auto_pad": padding}


@pytest.mark.parametrize("rank,stride,padding,groups,dilation", list(_conv_params()))
def test_conv_switched_to_channels_last(rank, stride, padding, groups, dilation):
    """Conv -> Relu -> Conv with channels-last IO: HWIO weights in place, no Transpose left."""
    n = rank - 2
    c_in, c_out = 4, 8
    group = {"1": 1, "2": 2, "dw": c_in}[groups]  # dw: depthwise, multiplier 2
    b = ShapedBuilder()
    x = b.input("x", [1, c_in] + [SPATIAL[rank]] * n)
    w, w_name = b.array([c_out, c_in // group] + [3] * n)
    attrs = dict(strides=[stride] * n, dilations=[dilation] * n, group=group, **_padding_attrs(padding, rank))
    y = b.op("Conv", [x, w_name, b.weight([c_out])], **attrs)
    y = b.op("Relu", [y])
    y = b.conv(y, c_out, c_out, rank=rank)
    b.output(y)
    model = b.model()

    g, _ = run_pipeline(model)
    assert_equivalent(model, g)

    convs = ops_of(g, "Conv")
    assert len(convs) == 2
    first = convs[0]
    cl = P.channels_last(rank)
    kernel_perm = (*range(2, rank), 1, 0)
    assert first.is_layout_marked
    assert tuple(first.in_perms[0]) == cl and tuple(first.out_perms[0]) == cl
    assert tuple(first.in_perms[1]) == kernel_perm, f"weight perm {first.in_perms[1]}, expected HWIO {kernel_perm}"
    stored = g.initializer(first.inputs[1])
    np.testing.assert_array_equal(stored, np.transpose(w, kernel_perm))
    # geometry attributes stay in ONNX terms (the lowering and the emitter read them as such)
    assert first.attr("strides") == [stride] * n and first.attr("group", 1) == group
    assert all(c.is_layout_marked for c in convs)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    assert g.io_perms == {"x": cl, y: cl}


# ---------------------------------------------------------------------------------------------
# ConvTranspose corners
# ---------------------------------------------------------------------------------------------
def _spatial(values: list, n: int) -> list:
    return (values * 3)[:n]


CONV_T_CASES = {
    "groups2": lambda n: dict(group=2, strides=[2] * n),
    "output_padding": lambda n: dict(strides=[2] * n, output_padding=[1] * n, pads=[1] * (2 * n)),
    "output_padding_no_pads": lambda n: dict(strides=[2] * n, output_padding=_spatial([1, 0], n)),
    "asym_pads": lambda n: dict(strides=[2] * n, pads=ASYM_PADS[n + 2]),
    "dilation2": lambda n: dict(strides=[2] * n, dilations=[2] * n, pads=[1] * (2 * n)),
    "output_shape": lambda n: dict(strides=[2] * n, output_shape=[10] * n),
    "output_shape_odd": lambda n: dict(strides=[2] * n, output_shape=[11] * n),
    "same_upper": lambda n: dict(strides=[2] * n, auto_pad="SAME_UPPER"),
    "same_lower": lambda n: dict(strides=[2] * n, auto_pad="SAME_LOWER"),
    "valid": lambda n: dict(strides=[2] * n, auto_pad="VALID"),
    "groups2_output_padding_asym": lambda n: dict(group=2, strides=[2] * n, output_padding=_spatial([1, 0], n), pads=ASYM_PADS[n + 2]),
}


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("case", list(CONV_T_CASES))
def test_conv_transpose_switched_to_channels_last(case, rank):
    n = rank - 2
    attrs = CONV_T_CASES[case](n)
    group = attrs.get("group", 1)
    b = ShapedBuilder()
    x = b.input("x", [1, 4] + [5] * n)
    w, w_name = b.array([4, 6 // group] + [3] * n)  # ONNX ConvTranspose weight: (C_in, C_out/group, k...)
    y = b.op("ConvTranspose", [x, w_name, b.weight([6])], **attrs)
    b.output(y)
    model = b.model()

    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    (ct,) = ops_of(g, "ConvTranspose")
    kernel_perm = (*range(2, rank), 1, 0)
    assert tuple(ct.in_perms[1]) == kernel_perm
    np.testing.assert_array_equal(g.initializer(ct.inputs[1]), np.transpose(w, kernel_perm))
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"


# ---------------------------------------------------------------------------------------------
# Transpose pushing
# ---------------------------------------------------------------------------------------------
def _between_convs(op_builder, opset: int = 17, c_mid: int = 4) -> onnx.ModelProto:
    b = ShapedBuilder(opset)
    x = b.input("x", [1, 4, 6, 6])
    y = b.conv(x, 4, 4)
    y = op_builder(b, y)
    y = b.conv(y, c_mid, 4)
    b.output(y)
    return b.model()


UNARY_CASES = {
    "Relu": lambda b, y: b.op("Relu", [y]),
    "Sigmoid": lambda b, y: b.op("Sigmoid", [y]),
    "Tanh": lambda b, y: b.op("Tanh", [y]),
    "LeakyRelu": lambda b, y: b.op("LeakyRelu", [y], alpha=0.1),
    "HardSwish": lambda b, y: b.op("HardSwish", [y]),
    "Elu": lambda b, y: b.op("Elu", [y]),
    "Abs": lambda b, y: b.op("Abs", [y]),
    "Neg": lambda b, y: b.op("Neg", [y]),
    "Clip_min_max_inputs": lambda b, y: b.op("Clip", [y, b.const(np.float32(0)), b.const(np.float32(6))]),
    "Relu_Sigmoid_chain": lambda b, y: b.op("Sigmoid", [b.op("Relu", [y])]),
}


@pytest.mark.parametrize("case", list(UNARY_CASES))
def test_push_through_unary(case):
    model = _between_convs(UNARY_CASES[case])
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"


BROADCAST_CONSTS = {"per_channel_C11": (4, 1, 1), "per_channel_1C11": (1, 4, 1, 1), "scalar": (), "scalar_1": (1,),
                    "along_W": (6,), "full_CHW": (4, 6, 6)}


@pytest.mark.parametrize("const_first", [False, True], ids=["x_op_c", "c_op_x"])
@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
@pytest.mark.parametrize("shape_id", list(BROADCAST_CONSTS))
def test_push_through_broadcast_with_constant(shape_id, op, const_first):
    shape = BROADCAST_CONSTS[shape_id]
    value = (np.random.default_rng(1).random(shape) + 0.5).astype(np.float32)

    def build(b, y):
        c = b.const(value)
        return b.op(op, [c, y] if const_first else [y, c])

    model = _between_convs(build)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    if shape_id == "per_channel_C11":
        (node,) = ops_of(g, op)
        const = node.inputs[0 if const_first else 1]
        # golden: the (C,1,1) constant is broadcast-aligned and moved to the channels-last axis
        assert g.shape(const) == (1, 1, 1, 4)
        np.testing.assert_array_equal(g.constant_value(const).reshape(-1), value.reshape(-1))


def test_push_through_residual_add_of_two_conv_branches():
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Add", [b.conv(x, 4, 4), b.op("Relu", [b.conv(x, 4, 4)])])
    y = b.conv(y, 4, 4)
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (add,) = ops_of(g, "Add")
    assert {g.producer(t).op_type for t in add.inputs} == {"Conv", "Relu"}


def test_push_through_residual_add_with_graph_input():
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Add", [x, b.op("Relu", [b.conv(x, 4, 4)])])
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"


@pytest.mark.parametrize("axis", [1, -3])
def test_push_through_concat_on_channel_axis(axis):
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Concat", [b.conv(x, 4, 3), b.conv(x, 4, 5)], axis=axis)
    y = b.conv(y, 8, 4)
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (cat,) = ops_of(g, "Concat")
    assert cat.attr("axis") % 4 == 3, f"channel axis {axis} of NCHW must become axis 3 of NHWC, got {cat.attr('axis')}"


def test_push_through_concat_with_constant_operand():
    const = np.random.default_rng(2).standard_normal((1, 2, 6, 6)).astype(np.float32)
    model = _between_convs(lambda b, y: b.op("Concat", [y, b.const(const)], axis=1), c_mid=6)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"


def test_push_through_split_on_channel_axis():
    def build(b, y):
        a, c = b.op("Split", [y, b.ints([1, 3])], n_out=2, axis=1)
        return b.op("Concat", [c, a], axis=1)

    model = _between_convs(build, opset=13)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (split,) = ops_of(g, "Split")
    assert split.attr("axis") == 3


# ReduceMean: axes as attribute (opset 13) or input (opset 18), keepdims 0/1
# expected Transposes: keepdims=1 keeps rank 4 (channels-last output); keepdims=0 over [2,3] or [1]
# leaves the remaining axes in the same order in both layouts; over [-1] the (N,H,C) result really
# needs a move back to (N,C,H).
REDUCE_CASES = [
    ([2, 3], 1, 0), ([1], 1, 0), ([-1], 1, 0),
    ([2, 3], 0, 0), ([1], 0, 0), ([-1], 0, 1),
]


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes,keepdims,expected_transposes", REDUCE_CASES,
                         ids=[f"axes{a}-keep{k}" for a, k, _ in REDUCE_CASES])
def test_push_through_reduce_mean(opset, axes, keepdims, expected_transposes):
    b = ShapedBuilder(opset)
    x = b.input("x", [1, 4, 6, 6])
    y = b.conv(x, 4, 4)
    if opset >= 18:
        y = b.op("ReduceMean", [y, b.ints(axes)], keepdims=keepdims)
    else:
        y = b.op("ReduceMean", [y], axes=axes, keepdims=keepdims)
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    (red,) = ops_of(g, "ReduceMean")
    got_axes = [int(a) for a in (g.constant_value(red.inputs[1]) if opset >= 18 else red.attr("axes"))]
    expected_axes = sorted(P.channels_first(4)[a % 4] for a in axes)
    assert sorted(a % 4 for a in got_axes) == expected_axes, "reduced axes must be remapped to the NHWC layout"
    assert g.count("Transpose") == expected_transposes, (
        f"expected {expected_transposes} Transpose(s), found perms {transposes(g)} "
        "(an identity-perm Transpose is a no-op the pusher should not leave behind)")


PAD_CASES = {
    "spatial": ([0, 0, 1, 2, 0, 0, 2, 1], [0, 1, 2, 0, 0, 2, 1, 0]),
    "channels": ([0, 1, 0, 0, 0, 2, 0, 0], [0, 0, 0, 1, 0, 0, 0, 2]),
    "all": ([0, 1, 1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 0, 1, 1, 0]),
}


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("case", list(PAD_CASES))
def test_push_through_pad(case, mode):
    pads, nhwc_pads = PAD_CASES[case]
    model = _between_convs(lambda b, y: b.op("Pad", [y, b.ints(pads)], mode=mode), c_mid=4 + pads[1] + pads[5])
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (pad,) = ops_of(g, "Pad")
    assert [int(v) for v in g.constant_value(pad.inputs[1])] == nhwc_pads


def test_push_through_pad_attribute_form_opset10():
    model = _between_convs(lambda b, y: b.op("Pad", [y], pads=[0, 0, 1, 0, 0, 0, 0, 2]), opset=10)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (pad,) = ops_of(g, "Pad")
    assert pad.attr("pads") == [0, 1, 0, 0, 0, 0, 2, 0]


SLICE_CASES = {
    "spatial_axes": ([1, 1], [5, 4], [2, 3], None),
    "channel_axis": ([0], [2], [1], None),
    "steps": ([1, 0], [3, 4], [1, 3], [1, 2]),
    "no_axes": ([0, 0, 0, 0], [1, 3, 5, 5], None, None),
    "negative_step": ([-1], [-100], [3], [-1]),
}


@pytest.mark.parametrize("case", list(SLICE_CASES))
def test_push_through_slice(case):
    starts, ends, axes, steps = SLICE_CASES[case]
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.conv(x, 4, 4)
    ins = [y, b.ints(starts), b.ints(ends)]
    if axes is not None or steps is not None:
        ins.append(b.ints(axes) if axes is not None else "")
    if steps is not None:
        ins.append(b.ints(steps))
    y = b.op("Relu", [b.op("Slice", ins)])
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (sl,) = ops_of(g, "Slice")
    original_axes = axes if axes is not None else list(range(len(starts)))
    assert [int(a) for a in g.constant_value(sl.inputs[3])] == [P.channels_first(4)[a % 4] for a in original_axes]


def test_push_through_slice_attribute_form_opset9():
    model = _between_convs(lambda b, y: b.op("Slice", [y], starts=[0, 0], ends=[4, 4], axes=[1, 3]), opset=9)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (sl,) = ops_of(g, "Slice")
    assert sl.attr("axes") == [3, 2]


@pytest.mark.parametrize("axis,nhwc_axis", [(1, 3), (-3, 3), (2, 1), (-1, 2)])
def test_push_through_softmax_opset13(axis, nhwc_axis):
    model = _between_convs(lambda b, y: b.op("Softmax", [y], axis=axis), opset=13)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    (sm,) = ops_of(g, "Softmax")
    assert sm.attr("axis") % 4 == nhwc_axis


def test_softmax_opset11_is_not_pushed_and_stays_correct():
    """Before opset 13 Softmax flattens the trailing axes: no axis remap is valid, so it must stay NCHW."""
    model = _between_convs(lambda b, y: b.op("Softmax", [y], axis=1), opset=11)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    (sm,) = ops_of(g, "Softmax")
    assert sm.attr("axis") == 1
    assert sorted(transposes(g)) == [(0, 2, 3, 1), (0, 3, 1, 2)]


def _gap_head(tail, opset: int = 17) -> onnx.ModelProto:
    b = ShapedBuilder(opset)
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("GlobalAveragePool", [b.op("Relu", [b.conv(x, 4, 8)])])
    y = tail(b, y)
    y = b.op("Gemm", [y, b.weight([3, 8]), b.weight([3])], transB=1)
    b.output(y)
    return b.model()


GAP_TAILS = {
    "Flatten": (lambda b, y: b.op("Flatten", [y]), 17),
    "Reshape_1_-1": (lambda b, y: b.op("Reshape", [y, b.ints([1, -1])]), 17),
    "Reshape_0_-1": (lambda b, y: b.op("Reshape", [y, b.ints([0, -1])]), 17),
    "Squeeze_axes_input": (lambda b, y: b.op("Squeeze", [y, b.ints([2, 3])]), 13),
    "Squeeze_axes_attr": (lambda b, y: b.op("Squeeze", [y], axes=[2, 3]), 11),
    "ReduceMean_keepdims0": (lambda b, y: b.op("ReduceMean", [y], axes=[2, 3], keepdims=0), 13),
}


@pytest.mark.parametrize("tail", list(GAP_TAILS))
def test_global_pool_head_needs_no_transpose(tail):
    """The Transpose after GlobalAveragePool only moves size-1 axes: it must disappear."""
    fn, opset = GAP_TAILS[tail]
    model = _gap_head(fn, opset)
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0, f"Transposes left: {transposes(g)}"
    assert g.io_perms == {"x": (0, 2, 3, 1)}, "the rank-2 Gemm output must keep its layout"


MUST_KEEP_TAILS = {
    "Reshape_1_-1_output": lambda b, y: [b.op("Reshape", [y, b.ints([1, -1])])],
    "Flatten_output": lambda b, y: [b.op("Flatten", [y])],
    "Flatten_Relu_output": lambda b, y: [b.op("Relu", [b.op("Flatten", [y])])],
    # the flat tensor is read twice (graph output and Gemm): no weight can absorb the order
    "Flatten_output_and_Gemm": lambda b, y: (lambda f: [f, b.op("Gemm", [f, b.weight([5, 12])], transB=1)])(b.op("Flatten", [y])),
}


@pytest.mark.parametrize("tail", list(MUST_KEEP_TAILS))
def test_flatten_of_spatial_map_keeps_exactly_one_transpose(tail):
    """Flattening a real 2x2 map depends on the element order: one Transpose must remain."""
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 4, 4])
    y = b.conv(x, 4, 3, k=3, pad=0)  # (1, 3, 2, 2)
    for out in MUST_KEEP_TAILS[tail](b, y):
        b.output(out)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert transposes(g) == [(0, 3, 1, 2)], f"expected exactly one NHWC->NCHW Transpose, found {transposes(g)}"


@pytest.mark.parametrize("flatten", ["Reshape", "Flatten"])
def test_flatten_of_spatial_map_into_gemm_is_never_wrong(flatten):
    """Flatten -> Gemm with a constant weight: the order may be folded into the weight rows
    (0 Transposes) or kept (1 Transpose), never answered wrongly."""
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 4, 4])
    y = b.conv(x, 4, 3, k=3, pad=0)  # (1, 3, 2, 2)
    y = b.op("Reshape", [y, b.ints([1, -1])]) if flatten == "Reshape" else b.op("Flatten", [y])
    y = b.op("Gemm", [y, b.weight([5, 12]), b.weight([5])], transB=1)
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") <= 1, f"Transposes left: {transposes(g)}"


def test_user_transpose_merges_with_layout_transposes():
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Transpose", [b.conv(x, 4, 4)], perm=[0, 2, 3, 1])
    y = b.op("Relu", [y])
    b.output(y)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 1  # the output itself is image-like: one move to channels-last


# ---------------------------------------------------------------------------------------------
# graph inputs/outputs
# ---------------------------------------------------------------------------------------------
def _chain(rank: int = 4) -> onnx.ModelProto:
    b = ShapedBuilder()
    x = b.input("x", [1, 4] + [6] * (rank - 2))
    y = b.conv(x, 4, 4, rank=rank)
    y = b.op("Relu", [y])
    y = b.conv(y, 4, 4, rank=rank)
    b.output(y)
    return b.model()


def test_keep_io_layout_keeps_boundary_shapes():
    model = _chain()
    y = model.graph.output[0].name
    g, _ = run_pipeline(model, keep_io_layout=True)
    assert_equivalent(model, g)
    assert g.io_perms == {}
    assert g.shape("x") == (1, 4, 6, 6)
    assert g.shape(y) == (1, 4, 6, 6)
    # one Transpose in, one out: nothing else
    assert sorted(transposes(g)) == [(0, 2, 3, 1), (0, 3, 1, 2)]


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_default_io_layout_is_channels_last(rank):
    model = _chain(rank)
    y = model.graph.output[0].name
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    cl = P.channels_last(rank)
    assert g.io_perms == {"x": cl, y: cl}
    assert g.shape("x") == P.apply_to_shape((1, 4) + (6,) * (rank - 2), cl)
    assert g.shape(y) == P.apply_to_shape((1, 4) + (6,) * (rank - 2), cl)
    assert g.count("Transpose") == 0


def test_non_image_inputs_keep_their_layout():
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6])  # rank 3 not feeding a channels-last op
    v = b.input("v", [2, 8])
    y = b.op("Relu", [x])
    z = b.op("Gemm", [v, b.weight([3, 8])], transB=1)
    b.output(y)
    b.output(z)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.io_perms == {}
    assert g.shape("x") == (1, 4, 6) and g.shape("v") == (2, 8)


@pytest.mark.parametrize("with_conv", [False, True], ids=["identity_model", "conv_plus_passthrough"])
def test_graph_input_that_is_also_a_graph_output(with_conv):
    """An input returned unchanged as an output: its declared shape and its io perm must agree."""
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    if with_conv:
        b.output(b.conv(x, 4, 4))
    b.output(x)
    model = b.model()
    g, _ = run_pipeline(model)
    perm = g.io_perms.get("x")
    expected = (1, 4, 6, 6) if perm is None else P.apply_to_shape((1, 4, 6, 6), perm)
    assert g.shape("x") == expected, (
        f"io_channels_last changed input 'x' (also a graph output) to shape {g.shape('x')} "
        f"but recorded io_perms[x] = {perm}: the rewritten model no longer accepts the source layout")
    assert_equivalent(model, g)


# ---------------------------------------------------------------------------------------------
# BatchNormalization
# ---------------------------------------------------------------------------------------------
def _record(records, name):
    return [r for r in records if r.name == name and r.changed]


def test_fold_batchnorm_into_conv():
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.batchnorm(b.conv(x, 4, 4), 4)
    b.output(b.op("Relu", [y]))
    model = b.model()
    g, records = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("BatchNormalization") == 0
    assert [r.details for r in _record(records, "fold_batchnorm")] == [{"folded": 1}]
    assert g.count("Mul") == 0 and g.count("Add") == 0
    assert g.count("Transpose") == 0


def test_fold_batchnorm_into_conv_without_bias():
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Conv", [x, b.weight([8, 2, 3, 3])], pads=[1, 1, 1, 1], group=2)
    b.output(b.batchnorm(y, 8))
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("BatchNormalization") == 0
    (conv,) = ops_of(g, "Conv")
    assert len(conv.inputs) == 3 and g.constant_value(conv.inputs[2]).shape == (8,)


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_fold_batchnorm_into_grouped_conv_transpose(rank):
    n = rank - 2
    b = ShapedBuilder()
    x = b.input("x", [1, 4] + [5] * n)
    y = b.op("ConvTranspose", [x, b.weight([4, 3] + [3] * n), b.weight([6])], group=2, strides=[2] * n)
    b.output(b.batchnorm(y, 6))
    model = b.model()
    g, records = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("BatchNormalization") == 0
    assert [r.details for r in _record(records, "fold_batchnorm")] == [{"folded": 1}]
    assert g.count("Transpose") == 0


def test_batchnorm_after_non_conv_becomes_affine():
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    b.output(b.batchnorm(b.op("Relu", [x]), 4))
    model = b.model()
    g, records = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("BatchNormalization") == 0
    assert not _record(records, "fold_batchnorm")
    assert [r.details for r in _record(records, "batchnorm_to_affine")] == [{"rewritten": 1}]
    assert g.count("Mul") == 1 and g.count("Add") == 1
    assert g.count("Transpose") == 0


def test_batchnorm_after_shared_conv_output_becomes_affine():
    """The conv output has a second reader, so folding would change it: rewrite as Mul+Add instead."""
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    c = b.conv(x, 4, 4)
    b.output(b.op("Add", [b.batchnorm(c, 4), c]))
    model = b.model()
    g, records = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("BatchNormalization") == 0
    assert not _record(records, "fold_batchnorm")
    assert g.count("Transpose") == 0


# ---------------------------------------------------------------------------------------------
# pipeline properties
# ---------------------------------------------------------------------------------------------
def _bn_model() -> onnx.ModelProto:
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.batchnorm(b.conv(x, 4, 4), 4)
    y = b.batchnorm(b.op("Relu", [y]), 4, seed=5)
    b.output(y)
    return b.model()


def _head_model() -> onnx.ModelProto:
    return _gap_head(GAP_TAILS["Flatten"][0])


def _concat_model() -> onnx.ModelProto:
    b = ShapedBuilder()
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Concat", [b.conv(x, 4, 3), b.conv(x, 4, 5)], axis=1)
    b.output(b.op("Add", [y, b.const(np.ones((8, 1, 1), np.float32))]))
    return b.model()


@pytest.mark.parametrize("make", [_chain, _bn_model, _head_model, _concat_model], ids=lambda f: f.__name__.strip("_"))
def test_pipeline_is_idempotent(make):
    model = make()
    g = from_onnx(model)
    PassManager(registry()).run(g)
    second = PassManager(registry()).run(g)
    changed = [(r.name, r.details) for r in second if r.changed]
    assert changed == [], f"second run of the pipeline still changed the graph: {changed}"
    assert_equivalent(model, g)


def test_plugin_transpose_handler_overrides_builtin():
    reg = builtin_registry()

    def never(graph, node, perm, created_by) -> bool:
        return False

    reg.add_transpose_handler("Relu", never)
    assert reg.transpose_handlers["Relu"] is never

    model = _chain()
    g = from_onnx(model)
    PassManager(reg).run(g)
    assert_equivalent(model, g)
    assert g.count("Transpose") > 0, "the plugin's Relu handler refuses to push, so Transposes must stay around Relu"
    (relu,) = ops_of(g, "Relu")
    assert g.producer(relu.inputs[0]).op_type == "Transpose"

    # the shared built-in registry is untouched
    g2, _ = run_pipeline(model)
    assert g2.count("Transpose") == 0


@pytest.mark.parametrize("acts", [["Relu"], ["Sigmoid", "Clip"]])
def test_crd_depth_to_space_folds_into_conv_through_activations(acts):
    """PixelShuffle (CRD) after Conv -> activation(s): the channel reorder still folds into the
    Conv's output channels (elementwise ops commute with a channel permutation)."""
    b = ShapedBuilder()
    x = b.input("x", [1, 3, 6, 6])
    y = b.conv(x, 3, 8)
    for op in acts:
        y = b.op(op, [y, b.const(np.float32(-0.2)), b.const(np.float32(0.7))]) if op == "Clip" else b.op(op, [y])
    b.output(b.op("DepthToSpace", [y], blocksize=2, mode="CRD"))
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    (d2s,) = ops_of(g, "DepthToSpace")
    assert d2s.attr("mode") == "DCR"
    assert g.count("Transpose") == 0


def test_channel_gather_folds_into_conv_through_activation_not_when_shared():
    b = ShapedBuilder()
    x = b.input("x", [1, 3, 6, 6])
    y = b.op("Relu", [b.conv(x, 3, 4)])
    g1 = b.op("Gather", [y, b.ints([2, 0, 3, 1])], axis=1)
    b.output(b.op("Add", [g1, b.op("Sigmoid", [g1])]))
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Gather") == 0
    # the Relu output is also read elsewhere: the permutation must stay
    b = ShapedBuilder()
    x = b.input("x", [1, 3, 6, 6])
    y = b.op("Relu", [b.conv(x, 3, 4)])
    g1 = b.op("Gather", [y, b.ints([2, 0, 3, 1])], axis=1)
    b.output(b.op("Add", [g1, y]))
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert g.count("Gather") == 1


def _torch_style_group_norm(b: "ShapedBuilder", x: str, shape: list, groups: int, affine: bool) -> str:
    """``F.group_norm`` as exporters spell it: Reshape(N, G, -1) -> InstanceNormalization -> Reshape -> Mul/Add."""
    c = shape[1]
    y = b.op("Reshape", [x, b.ints([shape[0], groups, -1])])
    y = b.op("InstanceNormalization", [y, b.const(np.ones(groups, np.float32)), b.const(np.zeros(groups, np.float32))],
             epsilon=1e-5)
    y = b.op("Reshape", [y, b.ints(shape)])
    if affine:
        bshape = [c] + [1] * (len(shape) - 2)
        y = b.op("Mul", [y, b.array(bshape)[1]])
        y = b.op("Add", [y, b.array(bshape)[1]])
    return y


@pytest.mark.parametrize("opset,rank,groups,affine", [(17, 4, 2, True), (18, 4, 1, False), (20, 4, 8, True),
                                                      (18, 3, 4, True), (18, 5, 2, False)])
def test_group_norm_between_convs_needs_no_transpose(opset, rank, groups, affine):
    b = ShapedBuilder(opset)
    shape = [1, 8] + [5] * (rank - 2)
    x = b.input("x", [1, 3] + [5] * (rank - 2))
    y = b.conv(x, 3, 8, rank=rank)
    y = _torch_style_group_norm(b, y, shape, groups, affine)
    b.output(b.conv(b.op("Relu", [y]), 8, 4, rank=rank))
    model = b.model()
    g, records = run_pipeline(model)
    assert_equivalent(model, g, atol=1e-4)
    assert [r.details for r in _record(records, "split_group_norm")] == [{"rewritten": 1}]
    assert g.count("InstanceNormalization") == 0
    assert g.count("Transpose") == 0


def test_instance_norm_with_other_reshapes_is_left_alone():
    """The second Reshape does not restore the input shape: not a group norm, nothing rewritten."""
    b = ShapedBuilder(18)
    x = b.input("x", [1, 8, 4, 4])
    y = b.op("Reshape", [x, b.ints([1, 2, -1])])
    y = b.op("InstanceNormalization", [y, b.const(np.ones(2, np.float32)), b.const(np.zeros(2, np.float32))])
    b.output(b.op("Reshape", [y, b.ints([1, 8, 16])]))
    model = b.model()
    g, records = run_pipeline(model)
    assert_equivalent(model, g)
    assert not _record(records, "split_group_norm") and g.count("InstanceNormalization") == 1


@pytest.mark.parametrize("axis", [1, 2, -1])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 1)])
def test_push_through_cumsum(axis, exclusive, reverse):
    b = ShapedBuilder(14)
    x = b.input("x", [1, 3, 5, 6])
    y = b.op("CumSum", [b.conv(x, 3, 4), b.const(np.array(axis, np.int64), dtype=np.int64)],
             exclusive=exclusive, reverse=reverse)
    b.output(b.conv(y, 4, 2))
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    (cs,) = ops_of(g, "CumSum")
    assert int(g.constant_value(cs.inputs[1])) % 4 == P.channels_first(4)[axis % 4]
    assert g.count("Transpose") == 0


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis,keepdims", [(1, 1), (1, 0), (2, 0), (-1, 0), (3, 1)])
def test_push_through_arg_reduce(op, axis, keepdims):
    b = ShapedBuilder(13)
    x = b.input("x", [1, 3, 5, 6])
    y = b.op(op, [b.conv(x, 3, 4)], axis=axis, keepdims=keepdims)
    b.output(y, dtype=onnx.TensorProto.INT64)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    (arg,) = ops_of(g, op)
    assert g.producer(arg.inputs[0]).op_type != "Transpose", "the arg-reduce reads the channels-last conv output"
    assert arg.attr("axis") == P.channels_first(4)[axis % 4]


def test_push_through_topk_keeps_both_outputs_consistent():
    b = ShapedBuilder(13)
    x = b.input("x", [1, 3, 5, 6])
    v, i = b.op("TopK", [b.conv(x, 3, 4), b.const(np.array([2], np.int64), dtype=np.int64)], n_out=2, axis=1)
    b.output(b.conv(v, 2, 2))
    b.output(i, dtype=onnx.TensorProto.INT64)
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    (tk,) = ops_of(g, "TopK")
    assert tk.attr("axis") == 3


def test_push_when_the_moved_transpose_cancels_below():
    """Transpose(p) -> Add(., y) -> Transpose(p^-1): pushing costs one Transpose on ``y`` but the
    moved one cancels with the reader below, 2 -> 1 (the sequence-first attention pattern of
    nn.MultiheadAttention at a run-time batch size)."""
    b = ShapedBuilder(17)
    a = b.input("a", [2, 3, 4])
    y = b.input("y", [3, 2, 4])
    t = b.op("Transpose", [a], perm=[1, 0, 2])
    s = b.op("Add", [t, y])
    b.output(b.op("Relu", [b.op("Transpose", [s], perm=[1, 0, 2])]))
    model = b.model()
    g, _ = run_pipeline(model)
    assert_equivalent(model, g)
    assert transposes(g) == [(1, 0, 2)]
    (add,) = ops_of(g, "Add")
    assert a in add.inputs, "the Add reads the untransposed input"


def test_packed_qkv_selection_needs_no_transpose():
    """nn.MultiheadAttention's packed in-projection: (L, B, 3, E) -> Unsqueeze(0) -> Transpose
    (3, 1, 2, 0, 4) -> Squeeze(3) -> Gather(axis 0, scalar) for q, k, v. Squeeze and Gather take
    the Transpose along; after the scalar Gather nothing is left to transpose."""
    b = ShapedBuilder(17)
    x = b.input("x", [5, 2, 3, 4])
    u = b.op("Unsqueeze", [x, b.ints([0])])
    t = b.op("Transpose", [u], perm=[3, 1, 2, 0, 4])
    s = b.op("Squeeze", [t, b.ints([3])])
    for k in range(3):
        b.output(b.op("Gather", [s, b.const(np.array(k, np.int64), dtype=np.int64)], axis=0))
    model = b.model()
    g, _ = run_pipeline(model, keep_io_layout=True)
    assert_equivalent(model, g)
    assert g.count("Transpose") == 0


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[1], [0, 2], None])
def test_push_through_squeeze_that_moves_data(opset, axes):
    b = ShapedBuilder(opset)
    x = b.input("x", [1, 3, 1, 4])
    t = b.op("Transpose", [x], perm=[2, 3, 0, 1])  # (1, 4, 1, 3): not an order-keeping move
    if axes is None:
        s = b.op("Squeeze", [t])
    elif opset >= 13:
        s = b.op("Squeeze", [t, b.ints([2] if axes == [1] else [0, 2])])
    else:
        s = b.op("Squeeze", [t], axes=[2] if axes == [1] else [0, 2])
    b.output(b.op("Relu", [s]))
    model = b.model()
    g, _ = run_pipeline(model, keep_io_layout=True)
    assert_equivalent(model, g)
    (sq,) = ops_of(g, "Squeeze")
    assert g.producer(sq.inputs[0]) is None or g.producer(sq.inputs[0]).op_type != "Transpose"


@pytest.mark.parametrize("idx", [np.array(1, np.int64), np.array([2, 0], np.int64), np.array(-1, np.int64)])
@pytest.mark.parametrize("axis", [0, 2, -1])
def test_push_through_gather(idx, axis):
    b = ShapedBuilder(13)
    x = b.input("x", [3, 4, 5])
    t = b.op("Transpose", [x], perm=[2, 0, 1])  # (5, 3, 4)
    b.output(b.op("Gather", [t, b.const(idx, dtype=np.int64)], axis=axis))
    model = b.model()
    g, _ = run_pipeline(model, keep_io_layout=True)
    assert_equivalent(model, g)
    (ga,) = ops_of(g, "Gather")
    assert ga.inputs[0] == "x"
