"""Conv/pool corners end to end: ONNX -> passes -> TF SavedModel -> TFLite, each checked against ORT.

``convert`` already raises VerificationError when TF or TFLite disagree with ONNX Runtime; the tests
also read the figures and the TFLite op counts from the report themselves.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from graph_convert.ir import perm as P
from graph_convert.conversion.pipeline import ConvertResult, convert
from graph_convert.errors import ConvertError, PassError, VerificationError
from tests.helpers import Builder

MAX_ABS = 1e-4


def _convert(model: onnx.ModelProto, tmp_path, **kwargs) -> ConvertResult:
    try:
        return convert(model, None, tmp_path / "out", **kwargs)
    except (ConvertError, PassError, VerificationError) as e:
        pytest.fail(f"convert raised {type(e).__name__}: {e}")


def _check_figures(result: ConvertResult, model: onnx.ModelProto) -> dict[str, int]:
    """Every output verified at every stage within MAX_ABS; returns the TFLite op counts."""
    report = result.report
    outputs = [o.name for o in model.graph.output]
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        figs = report["verification"][stage]
        assert sorted(figs) == sorted(outputs), f"{stage}: verified outputs {sorted(figs)}"
        for name, f in figs.items():
            assert f["ok"] and f["max_abs"] <= MAX_ABS, f"{stage} output {name}: max_abs {f['max_abs']}"
    ops = report["tflite"]["ops"]
    assert report["tflite"]["transpose_ops"] == ops.get("TRANSPOSE", 0)
    return ops


def _single_op_model(op: str, shape: list, inputs_extra=(), relu: bool = False, **attrs) -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", shape)
    extra = [b.weight(s) if isinstance(s, list) else s for s in inputs_extra]
    y = b.op(op, [x, *extra], **attrs)
    if relu:
        y = b.op("Relu", [y])
    b.output(y)
    return b.model()


# ---------------------------------------------------------------------------------------------
# Conv
# ---------------------------------------------------------------------------------------------
# id: (input shape, weight shape, attrs, TFLite ops that must appear, ops that must not appear)
CONV_CASES = {
    # k=3, s=2, p=1 on an even size is NOT TF "SAME" (SAME would pad (0, 1)): explicit PAD needed
    "conv2d_s2_p1_even_not_same": ([1, 4, 8, 8], [8, 4, 3, 3], dict(strides=[2, 2], pads=[1, 1, 1, 1]), {"CONV_2D", "PAD"}, set()),
    "conv2d_p1_is_same": ([1, 4, 9, 9], [8, 4, 3, 3], dict(pads=[1, 1, 1, 1]), {"CONV_2D"}, {"PAD"}),
    "conv2d_asym_pads": ([1, 4, 9, 9], [8, 4, 3, 3], dict(pads=[0, 1, 1, 0]), {"CONV_2D", "PAD"}, set()),
    # SAME_LOWER puts the extra pixel at the start: not TF SAME
    "conv2d_same_lower_s2": ([1, 4, 8, 8], [8, 4, 3, 3], dict(strides=[2, 2], auto_pad="SAME_LOWER"), {"CONV_2D", "PAD"}, set()),
    "depthwise_multiplier2": ([1, 4, 9, 9], [8, 1, 3, 3], dict(group=4, pads=[1, 1, 1, 1]), {"DEPTHWISE_CONV_2D"}, {"CONV_2D"}),
    "depthwise_s2_dilation2": ([1, 4, 9, 9], [8, 1, 3, 3], dict(group=4, strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2]), {"DEPTHWISE_CONV_2D"}, set()),
    "grouped_g2": ([1, 4, 9, 9], [6, 2, 3, 3], dict(group=2, pads=[1, 1, 1, 1]), {"CONV_2D"}, set()),
    "dilated2_stride2": ([1, 4, 9, 9], [8, 4, 3, 3], dict(strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2]), {"CONV_2D"}, set()),
    "conv1d_s2_p1": ([1, 4, 9], [8, 4, 3], dict(strides=[2], pads=[1, 1]), {"CONV_2D"}, set()),
    "conv3d_s2_p1": ([1, 2, 5, 5, 5], [4, 2, 3, 3, 3], dict(strides=[2, 2, 2], pads=[1, 1, 1, 1, 1, 1]), {"CONV_3D"}, set()),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case, tmp_path):
    shape, wshape, attrs, must, must_not = CONV_CASES[case]
    # a rank-3 output stays channels-last only when it comes straight from the Conv: no Relu there
    model = _single_op_model("Conv", shape, [wshape, [wshape[0]]], relu=len(shape) != 3, **attrs)
    result = _convert(model, tmp_path)
    ops = _check_figures(result, model)
    assert must <= set(ops), f"TFLite ops {ops} lack {must - set(ops)}"
    assert not (must_not & set(ops)), f"TFLite ops {ops} should not contain {must_not & set(ops)}"
    assert result.report["tflite"]["transpose_ops"] == 0, f"TFLite ops: {ops}"
    cl = list(P.channels_last(len(shape)))
    assert result.report["io"]["inputs"][0]["layout_perm"] == cl
    assert result.report["io"]["inputs"][0]["shape"] == list(P.apply_to_shape(shape, cl))


# ---------------------------------------------------------------------------------------------
# ConvTranspose
# ---------------------------------------------------------------------------------------------
# id: (weight shape (C_in, C_out/group, k...), attrs)
CONV_T_CASES = {
    "s2_output_padding1": ([4, 6, 3, 3], dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    "s2_output_padding_past_full": ([4, 6, 3, 3], dict(strides=[3, 3], output_padding=[2, 1])),
    "groups2": ([4, 3, 3, 3], dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1])),
    "dilation2": ([4, 6, 3, 3], dict(strides=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])),
    "asym_pads": ([4, 6, 3, 3], dict(strides=[2, 2], pads=[0, 1, 1, 0])),
    "output_shape": ([4, 6, 3, 3], dict(strides=[2, 2], output_shape=[11, 10])),
    "same_upper_k4": ([4, 6, 4, 4], dict(strides=[2, 2], auto_pad="SAME_UPPER")),
}


@pytest.mark.parametrize("case", list(CONV_T_CASES))
def test_conv_transpose(case, tmp_path):
    wshape, attrs = CONV_T_CASES[case]
    c_out = wshape[1] * attrs.get("group", 1)
    model = _single_op_model("ConvTranspose", [1, 4, 5, 5], [wshape, [c_out]], **attrs)
    result = _convert(model, tmp_path)
    ops = _check_figures(result, model)
    assert ops.get("TRANSPOSE_CONV", 0) == attrs.get("group", 1), f"TFLite ops: {ops}"
    assert result.report["tflite"]["transpose_ops"] == 0, f"TFLite ops: {ops}"


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
# id: (input shape, op, attrs, TFLite op that must appear)
POOL_CASES = {
    "maxpool_pads_ceil_mode": ([1, 4, 8, 8], "MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), "MAX_POOL_2D"),
    # pads equal to TF SAME: TF SAME average pooling also leaves the padding out of the count
    "avgpool_same_exclude_pad": ([1, 4, 9, 9], "AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0), "AVERAGE_POOL_2D"),
    "avgpool_pads_exclude_pad": ([1, 4, 8, 8], "AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0), "AVERAGE_POOL_2D"),
    "avgpool_pads_include_pad": ([1, 4, 9, 9], "AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), "AVERAGE_POOL_2D"),
    "avgpool_ceil_mode_include_pad": ([1, 4, 8, 8], "AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1), "AVERAGE_POOL_2D"),
    "avgpool_ceil_mode_no_pads": ([1, 4, 8, 8], "AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), "AVERAGE_POOL_2D"),
    "global_average_pool": ([1, 4, 9, 9], "GlobalAveragePool", {}, "MEAN"),
    # rank-5 pools are switched to channels-last too, so they must survive TFLite conversion
    "maxpool3d": ([1, 2, 4, 4, 4], "MaxPool", dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2]), None),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pool(case, tmp_path):
    shape, op, attrs, tflite_op = POOL_CASES[case]
    model = _single_op_model(op, shape, **attrs)
    result = _convert(model, tmp_path)
    ops = _check_figures(result, model)
    if tflite_op is not None:
        assert ops.get(tflite_op, 0) == 1, f"TFLite ops: {ops}"
    assert result.report["tflite"]["transpose_ops"] == 0, f"TFLite ops: {ops}"


# ---------------------------------------------------------------------------------------------
# DepthToSpace / SpaceToDepth, chained with a conv
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode, tmp_path):
    b = Builder()
    x = b.input("x", [1, 4, 5, 5])
    y = b.op("Conv", [x, b.weight([8, 4, 3, 3])], pads=[1, 1, 1, 1])
    y = b.op("DepthToSpace", [y], blocksize=2, mode=mode)
    b.output(y)
    model = b.model()
    result = _convert(model, tmp_path)
    ops = _check_figures(result, model)
    if mode == "DCR":  # TF's depth_to_space is DCR: one native op, no data movement around it
        assert ops.get("DEPTH_TO_SPACE", 0) == 1, f"TFLite ops: {ops}"
        assert result.report["tflite"]["transpose_ops"] == 0, f"TFLite ops: {ops}"
    else:  # CRD is a real channel reorder (reshape/transpose/reshape in the emitter)
        assert result.report["tflite"]["transpose_ops"] <= 1, f"TFLite ops: {ops}"


def test_space_to_depth(tmp_path):
    b = Builder()
    x = b.input("x", [1, 2, 6, 6])
    y = b.op("SpaceToDepth", [x], blocksize=2)
    y = b.op("Conv", [y, b.weight([4, 8, 1, 1])])
    b.output(y)
    model = b.model()
    result = _convert(model, tmp_path)
    ops = _check_figures(result, model)
    assert ops.get("SPACE_TO_DEPTH", 0) == 1, f"TFLite ops: {ops}"
    assert result.report["tflite"]["transpose_ops"] == 0, f"TFLite ops: {ops}"


def test_combined_conv_pool_chain_with_two_outputs(tmp_path):
    b = Builder()
    x = b.input("x", [1, 4, 9, 9])
    y = b.op("Conv", [x, b.weight([8, 4, 3, 3]), b.weight([8])], strides=[2, 2], pads=[1, 1, 1, 1])
    y = b.op("Relu", [y])
    y = b.op("DepthToSpace", [y], blocksize=2, mode="DCR")
    y = b.op("SpaceToDepth", [y], blocksize=2)
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    z = b.op("GlobalAveragePool", [y])
    b.output(y)
    b.output(z)
    model = b.model()
    result = _convert(model, tmp_path)
    ops = _check_figures(result, model)
    assert result.report["tflite"]["transpose_ops"] == 0, f"TFLite ops: {ops}"
    assert result.report["rewritten_graph"]["transposes"] == 0


# ---------------------------------------------------------------------------------------------
# keep_io_layout
# ---------------------------------------------------------------------------------------------
def test_keep_io_layout(tmp_path):
    model = _single_op_model("Conv", [1, 4, 8, 8], [[8, 4, 3, 3], [8]], relu=True, strides=[2, 2], pads=[1, 1, 1, 1])
    result = _convert(model, tmp_path, keep_io_layout=True)
    ops = _check_figures(result, model)
    io = result.report["io"]
    assert io["keep_io_layout"] is True
    assert io["inputs"][0]["shape"] == [1, 4, 8, 8] and io["inputs"][0]["layout_perm"] is None
    assert io["outputs"][0]["shape"] == [1, 8, 4, 4] and io["outputs"][0]["layout_perm"] is None
    # the conv itself runs channels-last: exactly one move in and one move out
    assert result.report["tflite"]["transpose_ops"] == 2, f"TFLite ops: {ops}"
    for key in ("saved_model", "tflite_float32", "rewritten_onnx", "report"):
        assert os.path.exists(result.paths[key]), key

    # the written TFLite model takes and returns NCHW tensors
    from graph_convert.backends.tensorflow.runner import run_tflite

    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    out = run_tflite(result.tflite, {"x": x})
    assert [v.shape for v in out.values()] == [(1, 8, 4, 4)]
