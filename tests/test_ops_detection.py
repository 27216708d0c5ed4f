"""Detection post-processing, sampling and indexing ops through the real pipeline.

NonMaxSuppression, RoiAlign, GridSample, AffineGrid, DeformConv, MaxUnpool, LpPool, CumProd,
ReverseSequence, CenterCropPad, Compress, Unique: each model goes ONNX -> passes -> TF SavedModel
-> TFLite, ``convert`` checks both against ONNX Runtime (it raises otherwise) and the test reads the
verified figures and the .tflite op list (builtin ops only, never Flex or custom). Every constant
parameter is drawn at random (seeded); ops that plain PyTorch exports (F.grid_sample,
F.affine_grid, F.lp_pool2d) go through both torch.onnx exporters. torchvision (nms, roi_align,
deform_conv2d) does not install beside torch 2.13.0, so those ops are built with onnx.helper.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graph_convert.conversion.pipeline import ConvertResult, convert
from graph_convert.errors import ConvertError, PassError, VerificationError
from tests.helpers import Builder


def _convert(model, tmp_path, **kwargs) -> ConvertResult:
    try:
        return convert(model, None, tmp_path / "out", **kwargs)
    except (ConvertError, PassError, VerificationError) as e:
        pytest.fail(f"convert raised {type(e).__name__}: {e}")


def _checked(result: ConvertResult, model: onnx.ModelProto, max_abs: float = 1e-4) -> dict[str, int]:
    """Every output verified at every stage; the .tflite holds builtin ops only. Returns its op counts."""
    report = result.report
    outputs = sorted(o.name for o in model.graph.output)
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        figs = report["verification"][stage]
        assert sorted(figs) == outputs, f"{stage}: verified outputs {sorted(figs)}"
        for name, f in figs.items():
            assert f["ok"] and f["max_abs"] <= max_abs, f"{stage} output {name}: {f}"
    ops = report["tflite"]["ops"]
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    return ops


def _torch_onnx(module, args, tmp_path, exporter: str, opset: int | None = None) -> onnx.ModelProto:
    import torch

    path = tmp_path / f"{exporter}.onnx"
    kw = {"dynamo": exporter == "dynamo"}
    if opset is not None:
        kw["opset_version"] = opset
    torch.onnx.export(module.eval(), args, str(path), **kw)
    return onnx.load(str(path))


def _conv(b: Builder, rng, x: str, cin: int, cout: int, k: int = 3) -> str:
    w = b.const(rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k)).astype(np.float32))
    return b.op("Conv", [x, w], kernel_shape=[k, k], pads=[k // 2] * 4)


# --- NonMaxSuppression ---------------------------------------------------------------------------
def _nms_model(rng, center: bool, score_thr: bool, batches: int, classes: int, boxes: int, iou=(0.2, 0.7)) -> onnx.ModelProto:
    b = Builder(opset=11)
    bx = b.input("boxes", [batches, boxes, 4])
    sc = b.input("scores", [batches, classes, boxes])
    inputs = [bx, sc, b.const(np.array([rng.integers(1, 8)], np.int64)), b.const(np.array([rng.uniform(*iou)], np.float32))]
    if score_thr:
        inputs.append(b.const(np.array([rng.uniform(0.1, 0.6)], np.float32)))
    y = b.op("NonMaxSuppression", inputs, center_point_box=int(center))
    b.output(y, TensorProto.INT64)
    return b.model()


@pytest.mark.parametrize("center,score_thr,iou", [(False, True, (0.2, 0.7)), (True, False, (0.2, 0.7)), (False, False, (1.0, 1.0))])
def test_nms_matches_onnx_runtime(tmp_path, center, score_thr, iou):
    """Random boxes: flipped corners, and in centre format negative widths (boxes that never
    overlap anything in ONNX); an IoU threshold >= 1 suppresses nothing."""
    rng = np.random.default_rng(10 + 2 * center + score_thr + int(iou[0]))
    model = _nms_model(rng, center, score_thr, batches=int(rng.integers(1, 3)), classes=int(rng.integers(1, 4)),
                       boxes=int(rng.integers(12, 40)), iou=iou)
    ops = _checked(_convert(model, tmp_path), model)
    # a constant threshold >= 1 suppresses nothing: the converter drops the kernel as dead code
    assert ops.get("NON_MAX_SUPPRESSION_V4", 0) >= (1 if iou[0] < 1 else 0)


def test_detection_graph_keeps_backbone_channels_last(tmp_path):
    """conv backbone -> box and score heads -> NonMaxSuppression: no TRANSPOSE inside the backbone;
    the only one left lays the score map out as (batch, class, box), which NMS's input needs."""
    rng = np.random.default_rng(3)
    b = Builder(opset=13)
    x = b.input("image", [1, 3, 16, 16])
    h = b.op("Relu", [_conv(b, rng, x, 3, 8)])
    h = b.op("Relu", [_conv(b, rng, h, 8, 8)])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Relu", [_conv(b, rng, h, 8, 16)])
    boxes = _conv(b, rng, h, 16, 4, k=1)  # (1, 4, 8, 8): one box per cell
    boxes = b.op("Transpose", [b.op("Reshape", [boxes, b.const(np.array([1, 4, 64], np.int64))])], perm=[0, 2, 1])
    classes = int(rng.integers(2, 4))
    scores = b.op("Sigmoid", [_conv(b, rng, h, 16, classes, k=1)])
    scores = b.op("Reshape", [scores, b.const(np.array([1, classes, 64], np.int64))])
    sel = b.op("NonMaxSuppression", [boxes, scores, b.const(np.array([5], np.int64)),
                                     b.const(np.array([rng.uniform(0.3, 0.6)], np.float32)),
                                     b.const(np.array([0.3], np.float32))])
    b.output(sel, TensorProto.INT64)
    model = b.model()
    ops = _checked(_convert(model, tmp_path), model)
    assert ops.get("CONV_2D") == 5 and ops.get("NON_MAX_SUPPRESSION_V4", 0) >= 1
    assert ops.get("TRANSPOSE", 0) <= 1, str(ops)


# --- RoiAlign ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,coord", [("avg", "half_pixel"), ("max", "output_half_pixel")])
def test_roi_align_after_conv(tmp_path, mode, coord):
    rng = np.random.default_rng(20 + (mode == "max"))
    n, c, h, w = 2, 4, int(rng.integers(8, 14)), int(rng.integers(8, 14))
    b = Builder(opset=16)
    x = b.op("Relu", [_conv(b, rng, b.input("x", [n, 3, h, w]), 3, c)])
    r = int(rng.integers(3, 7))
    scale = float(rng.choice([0.5, 1.0]))
    x1 = rng.uniform(-2, w / scale * 0.6, r)
    y1 = rng.uniform(-2, h / scale * 0.6, r)
    rois = np.stack([x1, y1, x1 + rng.uniform(0.5, w / scale, r), y1 + rng.uniform(0.5, h / scale, r)], 1).astype(np.float32)
    y = b.op("RoiAlign", [x, b.const(rois), b.const(rng.integers(0, n, r).astype(np.int64))], mode=mode,
             coordinate_transformation_mode=coord, output_height=int(rng.integers(2, 5)), output_width=int(rng.integers(2, 5)),
             sampling_ratio=int(rng.integers(1, 4)), spatial_scale=scale)
    b.output(y)
    model = b.model()
    ops = _checked(_convert(model, tmp_path), model)
    assert ops.get("TRANSPOSE", 0) == 0, str(ops)  # I/O channels-last, RoiAlign reads and writes it


# --- GridSample / AffineGrid (PyTorch, both exporters) -------------------------------------------
GRID_CASES = [  # (mode, padding_mode, align_corners, exporter)
    ("bilinear", "zeros", False, "dynamo"),
    ("nearest", "border", True, "legacy"),
    ("bicubic", "reflection", False, "dynamo"),
    ("bilinear", "reflection", True, "legacy"),
    ("nearest", "zeros", False, "dynamo"),
    ("bicubic", "border", True, "legacy"),
]


@pytest.mark.parametrize("mode,padding,align,exporter", GRID_CASES)
def test_grid_sample_torch(tmp_path, mode, padding, align, exporter):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(hash((mode, padding, align)) % 1000)
    cin, cout = 3, int(torch.randint(2, 6, ()).item())

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1)

        def forward(self, x, grid):
            y = F.grid_sample(torch.relu(self.conv(x)), grid * 1.3, mode=mode, padding_mode=padding, align_corners=align)
            return y * 2

    x = torch.randn(2, cin, 9, 11)
    grid = torch.randn(2, 5, 7, 2)
    model = _torch_onnx(Net(), (x, grid), tmp_path, exporter)
    assert "GridSample" in {n.op_type for n in model.graph.node}
    ops = _checked(_convert(model, tmp_path), model)
    assert ops.get("GATHER", 0) >= 1


def test_grid_sample_volumetric(tmp_path):
    rng = np.random.default_rng(31)
    b = Builder(opset=20)
    x = b.input("x", [1, 2, 4, 5, 6])
    g = b.input("grid", [1, 3, 4, 2, 3])
    y = b.op("GridSample", [x, g], mode=str(rng.choice(["linear", "nearest"])), padding_mode=str(rng.choice(["zeros", "border"])),
             align_corners=int(rng.integers(0, 2)))
    b.output(y)
    model = b.model()
    _checked(_convert(model, tmp_path), model)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_spatial_transformer_torch(tmp_path, exporter):
    """theta from a small localisation net -> F.affine_grid -> F.grid_sample."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(5 if exporter == "dynamo" else 6)
    align = exporter == "dynamo"

    class STN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Linear(3 * 8 * 8, 6)

        def forward(self, x):
            theta = self.loc(x.flatten(1)).view(-1, 2, 3)
            grid = F.affine_grid(theta, [x.shape[0], 3, 6, 10], align_corners=align)
            return F.grid_sample(x, grid, align_corners=align)

    model = _torch_onnx(STN(), (torch.randn(2, 3, 8, 8),), tmp_path, exporter, opset=20)
    ops_in = {n.op_type for n in model.graph.node}
    assert "GridSample" in ops_in
    _checked(_convert(model, tmp_path), model)


# --- DeformConv ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_deform_conv(tmp_path, seed):
    rng = np.random.default_rng(40 + seed)
    group, og = (1, 2) if seed == 0 else (2, 1)
    cin, cout, kh, kw = 4, 2 * int(rng.integers(1, 3)), int(rng.integers(2, 4)), int(rng.integers(2, 4))
    stride, pad, dil = int(rng.integers(1, 3)), int(rng.integers(0, 2)), int(rng.integers(1, 3))
    b = Builder(opset=19)
    x = b.op("Relu", [_conv(b, rng, b.input("x", [1, 3, 10, 9]), 3, cin)])
    oh = (10 + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (9 + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    # offsets and mask predicted from the features, as deformable networks do
    pooled = b.op("Resize", [x, "", "", b.const(np.array([1, cin, oh, ow], np.int64))], mode="linear")
    offset = b.op("Mul", [_conv(b, rng, pooled, cin, og * kh * kw * 2), b.const(np.float32(rng.uniform(1, 3)))])
    inputs = [x, b.const(rng.normal(0, 0.3, (cout, cin // group, kh, kw)).astype(np.float32)), offset,
              b.const(rng.normal(0, 1, cout).astype(np.float32))]
    if seed == 0:
        inputs.append(b.op("Sigmoid", [_conv(b, rng, pooled, cin, og * kh * kw)]))
    y = b.op("DeformConv", inputs, kernel_shape=[kh, kw], strides=[stride] * 2, pads=[pad] * 4, dilations=[dil] * 2,
             group=group, offset_group=og)
    b.output(y)
    model = b.model()
    _checked(_convert(model, tmp_path), model)


# --- pooling: LpPool, MaxUnpool ------------------------------------------------------------------
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_lp_pool_torch(tmp_path, exporter):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(7)
    p = 2.0 if exporter == "dynamo" else 3.0

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.lp_pool2d(torch.relu(self.conv(x)), p, kernel_size=(2, 3), stride=2)

    model = _torch_onnx(Net(), (torch.randn(1, 3, 12, 13),), tmp_path, exporter)
    _checked(_convert(model, tmp_path), model)


def test_lp_pool_onnx_attributes(tmp_path):
    rng = np.random.default_rng(50)
    b = Builder(opset=18)
    x = b.input("x", [1, 3, 11, 10])
    y = b.op("LpPool", [x], kernel_shape=[3, 2], p=int(rng.integers(1, 5)), pads=[int(v) for v in rng.integers(0, 2, 4)],
             strides=[int(v) for v in rng.integers(1, 3, 2)], dilations=[2, 1])
    b.output(b.op("Relu", [_conv(b, rng, y, 3, 2)]))
    model = b.model()
    ops = _checked(_convert(model, tmp_path), model)
    assert ops.get("TRANSPOSE", 0) == 0, str(ops)  # I/O channels-last, LpPool and Conv both take it


def test_max_unpool(tmp_path):
    """Indices as MaxPool(2, 2) over a (2h+1, 2w+2) input picks them (one position per window, random),
    that output_shape given, and a duplicate position."""
    rng = np.random.default_rng(60)
    n, c, h, w = 2, 3, 4, 5
    dy, dx = rng.integers(0, 2, (n, c, h, w)), rng.integers(0, 2, (n, c, h, w))
    nn, cc, yy, xx = np.meshgrid(range(n), range(c), range(h), range(w), indexing="ij")
    idx = (((nn * c + cc) * (2 * h + 1) + 2 * yy + dy) * (2 * w + 2) + 2 * xx + dx).astype(np.int64)
    idx.reshape(-1)[-1] = idx.reshape(-1)[0]  # a duplicate position: the later element wins
    b = Builder(opset=11)
    x = b.input("x", [n, c, h, w])
    y = b.op("MaxUnpool", [x, b.const(idx), b.const(np.array([n, c, 2 * h + 1, 2 * w + 2], np.int64))],
             kernel_shape=[2, 2], strides=[2, 2])
    b.outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [n, c, 2 * h + 1, 2 * w + 2]))
    model = b.model()
    ops = _checked(_convert(model, tmp_path), model)
    assert ops.get("GATHER") == 1  # constant indices: the winners are folded at conversion time


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_indices_and_unpool_torch(tmp_path, k):
    """SegNet's encoder/decoder step: MaxPool's Indices output feeding max_unpool2d (overlapping
    windows for k=3). The dynamo exporter only: the TorchScript one fails on max_unpool2d in torch
    2.13 ("cond must be a bool")."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(k)
    exporter = "dynamo"

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.dec = torch.nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            h = torch.relu(self.enc(x))
            p, idx = F.max_pool2d(h, k, stride=2, return_indices=True)
            return self.dec(F.max_unpool2d(p, idx, k, stride=2, output_size=h.shape[-2:]))

    model = _torch_onnx(Net(), (torch.randn(1, 3, 12, 14),), tmp_path, exporter)
    _checked(_convert(model, tmp_path), model)


# --- indexing ------------------------------------------------------------------------------------
def test_cum_prod(tmp_path):
    rng = np.random.default_rng(70)
    b = Builder(opset=26)
    x = b.input("x", [3, 7, 5])
    axis = int(rng.integers(-3, 3))
    y = b.op("CumProd", [x, b.const(np.array(axis, np.int64))], exclusive=int(rng.integers(0, 2)), reverse=int(rng.integers(0, 2)))
    z = b.op("CumProd", [b.op("Cast", [x], to=TensorProto.INT32), b.const(np.array(1, np.int32), dtype=np.int32)], reverse=1)
    b.output(y)
    b.output(z, TensorProto.INT32)
    model = b.model()
    _checked(_convert(model, tmp_path), model)


def test_reverse_sequence_and_center_crop_pad(tmp_path):
    rng = np.random.default_rng(80)
    b = Builder(opset=18)
    x = b.input("x", [6, 4, 3])
    lens = rng.integers(1, 7, 4).astype(np.int64)
    r = b.op("ReverseSequence", [x, b.const(lens)], batch_axis=1, time_axis=0)
    target = np.array([int(rng.integers(2, 9)), int(rng.integers(2, 9))], np.int64)
    y = b.op("CenterCropPad", [r, b.const(target)], axes=[0, 2])
    b.output(y)
    model = b.model()
    _checked(_convert(model, tmp_path), model)


def test_compress_and_unique(tmp_path):
    """Data-dependent output sizes: Compress by a condition computed from the input, Unique of
    rounded values (duplicates guaranteed), sorted and in order of first occurrence."""
    b = Builder(opset=11)
    x = b.input("x", [5, 4])
    keep = b.op("Greater", [b.op("ReduceSum", [x], axes=[1], keepdims=0), b.const(np.float32(0.0))])
    comp = b.op("Compress", [x, keep], axis=0)
    q = b.op("Floor", [b.op("Mul", [x, b.const(np.float32(1.5))])])
    u_sorted = b.op("Unique", [q], 4, sorted=1)
    u_first = b.op("Unique", [q], 4, axis=0, sorted=0)
    b.output(comp)
    for outs in (u_sorted, u_first):
        b.output(outs[0])
        for o in outs[1:]:
            b.output(o, TensorProto.INT64)
    model = b.model()
    ops = _checked(_convert(model, tmp_path), model)
    assert ops.get("WHERE", 0) >= 1


# --- data-dependent counts (a two-stage detector's RoI bookkeeping) ------------------------------
def _two_stage_module():
    """conv -> objectness per cell -> NonZero (score > 0, a run-time count) -> TopK with k computed
    from that count -> the kept cells' features gathered -> split in two 'levels' by a test on
    the data -> each level's rows written back into zeros of the run-time count, one by
    ``scatter`` (ONNX ScatterElements, torchvision's MultiScaleRoIAlign) and one by index_put
    (ScatterND). Every dim after the NonZero is known only at run time."""
    import torch
    import torch.onnx.operators
    from torch import nn

    class TwoStage(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.obj = nn.Conv2d(8, 1, 1)
            self.head = nn.Linear(8, 6)

        def forward(self, x):
            f = torch.relu(self.conv(x))
            s = self.obj(f).flatten()
            keep = torch.nonzero(s > 0).squeeze(1)
            k = torch.clamp(torch.onnx.operators.shape_as_tensor(keep)[0], max=12)  # traced, as torchvision's _topk_min
            top, order = torch.topk(s[keep], k)
            feats = f.flatten(2)[0].t()[keep[order]]
            level = feats.sum(1) > feats.mean()
            out = torch.zeros(feats.shape[0], 6, dtype=feats.dtype)
            at = torch.nonzero(level).squeeze(1)
            out = out.scatter(0, at[:, None].expand(-1, 6), self.head(feats[at]) * 2.0)
            at = torch.nonzero(~level).squeeze(1)
            out[at] = self.head(feats[at]) - 1.0
            return out, top

    torch.manual_seed(5)
    m = TwoStage().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def test_data_dependent_counts_feed_scatter_and_gather(tmp_path):
    """ScatterElements/ScatterND/Gather/TopK over counts known only at run time convert with exact
    ONNX shapes (no padding) and follow the count of another input through the same .tflite.
    TorchScript only: the dynamo exporter refuses a TopK whose k is a data-dependent count
    (GuardOnDataDependentSymNode), as it refuses torchvision's detectors."""
    import torch

    from tests.torch_io import export, run_tflite

    module = _two_stage_module()
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    path = str(tmp_path / "two_stage.onnx")
    export(module, (x,), path, "torchscript", 17)
    model = onnx.load(path)
    assert {"NonZero", "TopK"} <= {n.op_type for n in model.graph.node}
    assert {"ScatterElements", "ScatterND"} & {n.op_type for n in model.graph.node}
    result = _convert(model, tmp_path)
    ops = _checked(result, model, max_abs=1e-3)
    assert ops.get("WHERE", 0) >= 2 and ops.get("TOPK_V2", 0) >= 1
    counts = set()
    for seed in (2, 3, 4, 6):  # inputs the conversion never saw, with other counts
        xi = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = [t.numpy() for t in module(xi)]
        got = run_tflite(result, (xi,))
        counts.add(want[1].shape[0])
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert np.abs(g - w).max() <= 1e-4 * max(np.abs(w).max(), 1.0)
    assert len(counts) > 1, counts
    # the .tflite as a candidate of `graph-convert verify`: its data-dependent outputs have no shape
    # in the file (as a scalar has none); they are matched by name and compared once run
    from graph_convert import verify_file

    res = verify_file(path, str(tmp_path / "out" / "model_float32.tflite"))
    assert res.equivalent, res.report["verification"]


# --- transpose handlers ---------------------------------------------------------------------------
def test_handlers_push_through_and_decline_with_reasons():
    from graph_convert_passes.lib.indexing_handlers import HANDLERS

    from graph_convert.ir import from_onnx

    b = Builder(opset=18)
    x = b.input("x", [2, 6, 5])
    t = b.op("Transpose", [x], perm=[2, 0, 1])  # (5, 2, 6)
    y = b.op("CenterCropPad", [t, b.const(np.array([3, 4], np.int64))], axes=[0, 2])
    r = b.op("ReverseSequence", [t, b.const(np.array([1, 2], np.int64))], batch_axis=1, time_axis=0)
    u = b.op("Unique", [t], 4, sorted=1)
    b.output(y)
    b.output(r)
    b.output(u[0])
    g = from_onnx(b.model())
    by_type = {n.op_type: n for n in g.nodes}
    assert HANDLERS["CenterCropPad"](g, by_type["CenterCropPad"], (2, 0, 1), "test")
    assert by_type["CenterCropPad"].attr("axes") == [2, 1]
    moved = HANDLERS["ReverseSequence"](g, by_type["ReverseSequence"], (2, 0, 1), "test")
    assert not moved and "time_axis" in moved.reason  # time would land on axis 2
    why = HANDLERS["Unique"](g, by_type["Unique"], (2, 0, 1), "test")
    assert not why and "sorted order" in why.reason
