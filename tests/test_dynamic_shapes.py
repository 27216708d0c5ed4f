"""Dynamic shapes: every symbolic dim of an ONNX source is fixed by ``--input-shape`` (every shape
downstream static) or kept and proven at several sizes; nothing advertises a dim that was not
checked. The models mirror the usual exports with plain torch (random parameters): a YOLO-style
detector (stride-8 head, nearest Upsample, an anchor grid computed from the feature map's size),
a segmentation-models-style UNet (bilinear resize to the skip connection's size), a HF-style text
encoder (position table sliced to the sequence, token types of zeros, attention), and one whose
export baked the sequence length into a Reshape. Both exporters: dynamo (``dynamic_shapes``) and
TorchScript opset 17 (``dynamic_axes``). Each kept dim is also run here, after
``resize_tensor_input``, at a size the conversion never used, against ONNX Runtime."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from graph_convert.cli import EXIT_USAGE, main

EXPORTERS = ["dynamo", "torchscript"]


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 2, 1)
        self.up, self.head = nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(32, 6, 1)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a))
        c = torch.relu(self.c3(b))
        y = self.head(torch.cat([self.up(c), b], 1))
        n, ch, h, w = y.shape
        gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
        grid = torch.stack([gx, gy], -1).reshape(-1, 2).transpose(0, 1).unsqueeze(0)  # anchors, as ultralytics' make_anchors
        stride = torch.full((h * w, 1), 4.0).transpose(0, 1)  # its stride table
        y = y.reshape(n, ch, h * w)
        return torch.cat([(y[:, :2] + grid) * stride, y[:, 2:].sigmoid()], 1)


class PositionTable(Detector):
    """The Detector with a learned position table over the feature map: a ramp over its h*w cells
    times a weight (a MatMul), a float table from the sizes that the replay does not take (it
    replays shape arithmetic only). (A sinusoidal table, Sin over a ramp, is kept since Sin is
    computed at run time: see test_a_sinusoidal_table_over_the_sizes_is_kept.)"""

    def __init__(self, sin: bool = False):
        super().__init__()
        self.sin = sin
        self.proj = nn.Parameter(torch.randn(1, 3))

    def forward(self, x):
        y = self.head(torch.cat([self.up(torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))),
                                 torch.relu(self.c2(torch.relu(self.c1(x))))], 1))
        n, ch, h, w = y.shape
        ramp = torch.arange(h * w, dtype=torch.float32) * 0.1
        pos = torch.sin(ramp) if self.sin else (ramp[:, None] @ self.proj).sum(-1)
        return y.reshape(n, ch, h * w) + pos


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1, self.e2, self.e3 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 2, 1)
        self.d2, self.d1 = nn.Conv2d(32, 8, 3, 1, 1), nn.Conv2d(16, 4, 3, 1, 1)

    def forward(self, x):
        a = torch.relu(self.e1(x))
        b = torch.relu(self.e2(a))
        c = torch.relu(self.e3(b))
        u = nn.functional.interpolate(c, size=b.shape[-2:], mode="bilinear", align_corners=False)
        u = torch.relu(self.d2(torch.cat([u, b], 1)))
        u = nn.functional.interpolate(u, scale_factor=2.0, mode="nearest")
        return self.d1(torch.cat([u, a], 1))


class TextEncoder(nn.Module):
    def __init__(self, baked: bool = False):
        super().__init__()
        self.tok, self.pos, self.typ = nn.Embedding(50, 32), nn.Embedding(128, 32), nn.Embedding(2, 32)
        self.qkv, self.out, self.baked = nn.Linear(32, 96), nn.Linear(32, 32), baked

    def forward(self, ids):
        n, s = ids.shape
        pos = torch.arange(s).unsqueeze(0)
        x = self.tok(ids) + self.pos(pos) + self.typ(torch.zeros_like(ids))
        q, k, v = self.qkv(x).reshape(n, s, 3, 4, 8).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
        a = a.transpose(1, 2).reshape(1, 16, 32) if self.baked else a.transpose(1, 2).reshape(n, s, 32)
        return self.out(a)


def _export(module: nn.Module, example, path: str, name: str, axes: dict[int, str], exporter: str) -> str:
    torch.manual_seed(0)
    for p in module.parameters():  # random parameters, every one
        nn.init.normal_(p, std=0.3)
    module.eval()
    if exporter == "dynamo":
        dims = {a: torch.export.Dim(n, min=1 if a == 0 else 8, max=4096) for a, n in axes.items()}
        torch.onnx.export(module, (example,), path, dynamo=True, dynamic_shapes=(dims,), input_names=[name])
    else:
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=17, input_names=[name],
                          dynamic_axes={name: axes})
    return path


def _report(out) -> dict:
    return json.loads((out / "report.json").read_text())


def _tflite(path: str):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    return interp, interp.get_input_details()[0]


def _ort(path: str, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def _run_tflite_at(path: str, x: np.ndarray) -> list[np.ndarray]:
    """The .tflite resized to ``x``'s shape (``resize_tensor_input``), run on LiteRT's kernels."""
    interp, d = _tflite(path)
    interp.resize_tensor_input(d["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(d["index"], x)
    interp.invoke()
    return [interp.get_tensor(o["index"]) for o in interp.get_output_details()]


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())), rtol=0)


def _saved_model_signature(path: str) -> list:
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return [tuple(s.shape.as_list()) for s in fn.structured_input_signature[1].values()]


def _kept_checks(rep: dict, dims: list[str]) -> None:
    """Each dim kept, checked at >= 3 sizes that passed on TF and TFLite; every check has a verdict."""
    d = rep["dynamic"]
    for n in dims:
        assert d["dims"][n]["kept"] and len(d["dims"][n]["checked_sizes"]) >= 3, (n, d["dims"][n])
    for e in d["checks"]:
        assert e["verdict"] == "ok" or e["verdict"].startswith("the source model fails in ONNX Runtime")
        if e["verdict"] == "ok":
            assert all(f["ok"] for k in ("tensorflow", "tflite_float32") for f in e[k].values())


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_input_shape_fixes_every_dim_of_a_detector(exporter, tmp_path):
    """Symbolic batch/height/width, Upsample, a Reshape to h*w and an anchor grid from arange:
    --input-shape makes every shape static (at a size that is not a multiple of the stride 32)."""
    src = _export(Detector(), torch.randn(1, 3, 64, 64), str(tmp_path / "det.onnx"), "images", {0: "b", 2: "h", 3: "w"}, exporter)
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q", "--input-shape", "images=1,3,80,112"]) == 0
    rep = _report(out)
    assert {n: (d["kept"], d["fixed"]) for n, d in rep["dynamic"]["dims"].items()} == {"b": (False, 1), "h": (False, 80), "w": (False, 112)}
    interp, d = _tflite(str(out / "model_float32.tflite"))
    assert list(d["shape_signature"]) == list(d["shape"]) == [1, 80, 112, 3]
    assert all(list(o["shape_signature"]) == list(o["shape"]) for o in interp.get_output_details())
    assert _saved_model_signature(str(out / "saved_model")) == [(1, 80, 112, 3)]
    x = np.random.default_rng(1).standard_normal((1, 3, 80, 112)).astype(np.float32)
    _close(_run_tflite_at(str(out / "model_float32.tflite"), x.transpose(0, 2, 3, 1))[0], _ort(src, {"images": x})[0])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_detector_anchor_grid_and_stride_table_are_replayed_and_proven(exporter, tmp_path):
    """The anchor grid (arange over the feature map's height and width, meshgrid, stack) and the
    stride table are float tables computed from the sizes: replayed at run time from the source's
    shape subgraph, checked at every size of the plan; no interior TRANSPOSE, builtin ops only."""
    src = _export(Detector(), torch.randn(1, 3, 64, 64), str(tmp_path / "det.onnx"), "images", {0: "b", 2: "h", 3: "w"}, exporter)
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q"]) == 0
    rep = _report(out)
    _kept_checks(rep, ["b", "h", "w"])
    assert rep["dynamic"]["shape_programs"] >= 1
    assert not any(op.startswith(("FLEX", "CUSTOM")) for op in rep["tflite"]["ops"])
    interp, d = _tflite(str(out / "model_float32.tflite"))
    assert list(d["shape_signature"]) == [-1, -1, -1, 3]
    # no interior TRANSPOSE: the only one gives the output its source layout (n, 6, h*w), as in a
    # static conversion; the tables' own [n, 2] -> [2, n] moves are UNPACK + PACK
    outputs = {o["index"] for o in interp.get_output_details()}
    moves = [op for op in interp._get_ops_details() if op["op_name"] == "TRANSPOSE"]
    assert rep["tflite"]["transpose_ops"] == len(moves) <= 1 and all(set(op["outputs"]) <= outputs for op in moves)
    x = np.random.default_rng(5).standard_normal((2, 3, 72, 104)).astype(np.float32)  # never converted nor checked
    _close(_run_tflite_at(str(out / "model_float32.tflite"), x.transpose(0, 2, 3, 1))[0], _ort(src, {"images": x})[0])


def test_symbolic_dims_with_no_size_are_refused_in_one_line(tmp_path, capsys):
    """A table over the feature map computed with a weight (MatMul) depends on h and w in a way the
    replay does not take: they cannot be kept, and there is no size to fall back to: one line names
    the input, the dims, what depends on them and the fix."""
    src = _export(PositionTable(), torch.randn(1, 3, 64, 64), str(tmp_path / "det.onnx"), "images", {0: "b", 2: "h", 3: "w"},
                  "torchscript")
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Concat" not in err and "Traceback" not in err
    assert "input 'images' dims h (axis 2), w (axis 3)" in err and "--input-shape images=1,3,H,W" in err
    assert "(ReduceSum), not by shape arithmetic" in err  # the last op of the MatMul-then-sum table
    assert not out.exists()


def test_a_sinusoidal_table_over_the_sizes_is_kept(tmp_path):
    """Sin over a ramp of the sizes: the ramp is a run-time range and Sin runs at run time (it is
    not folded: numpy's sin rounds otherwise than ONNX Runtime's), checked at several sizes."""
    src = _export(PositionTable(sin=True), torch.randn(1, 3, 64, 64), str(tmp_path / "det.onnx"), "images",
                  {0: "b", 2: "h", 3: "w"}, "torchscript")
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q"]) == 0
    _kept_checks(_report(out), ["b", "h", "w"])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unet_height_and_width_are_kept_and_proven(exporter, tmp_path):
    src = _export(UNet(), torch.randn(1, 3, 64, 64), str(tmp_path / "unet.onnx"), "x", {0: "b", 2: "h", 3: "w"}, exporter)
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q"]) == 0
    rep = _report(out)
    _kept_checks(rep, ["b", "h", "w"])
    sizes = {(e["sizes"]["h"], e["sizes"]["w"]): e["verdict"] for e in rep["dynamic"]["checks"]}
    assert sizes[(160, 128)] == sizes[(224, 192)] == "ok"  # converted at these
    assert (100, 70) in sizes  # not a multiple of the stride 4: its verdict is reported either way
    assert rep["tflite"]["transpose_ops"] == 0 and not any(op.startswith(("FLEX", "CUSTOM")) for op in rep["tflite"]["ops"])
    interp, d = _tflite(str(out / "model_float32.tflite"))
    assert list(d["shape_signature"]) == [-1, -1, -1, 3]
    assert _saved_model_signature(str(out / "saved_model")) == [(None, None, None, 3)]
    x = np.random.default_rng(2).standard_normal((2, 3, 72, 136)).astype(np.float32)  # never converted nor checked
    _close(_run_tflite_at(str(out / "model_float32.tflite"), x.transpose(0, 2, 3, 1))[0].transpose(0, 3, 1, 2), _ort(src, {"x": x})[0])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_text_encoder_sequence_is_kept_and_proven(exporter, tmp_path):
    src = _export(TextEncoder(), torch.randint(0, 50, (2, 16)), str(tmp_path / "txt.onnx"), "ids", {0: "b", 1: "s"}, exporter)
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q"]) == 0
    rep = _report(out)
    _kept_checks(rep, ["b", "s"])
    assert {8, 16, 24, 77} <= set(rep["dynamic"]["dims"]["s"]["checked_sizes"])
    # 200 is past the 128-row position table: ONNX Runtime rejects it, and the report says so
    at200 = [e for e in rep["dynamic"]["checks"] if e["sizes"]["s"] == 200]
    assert len(at200) == 1 and at200[0]["verdict"].startswith("the source model fails in ONNX Runtime"), at200
    interp, d = _tflite(str(out / "model_float32.tflite"))
    assert list(d["shape_signature"]) == [-1, -1]
    # the attention reshapes keep their static entries (3 x 4 heads x 8): their targets are built
    # from the entries known at conversion time, not tested for ONNX's 0 (copy) at run time; the
    # Squeeze of a dynamic-dims tensor is a SQUEEZE (its shape from its input's)
    sigs = {t["index"]: list(t["shape_signature"]) for t in interp.get_tensor_details()}
    reshaped = [sigs[o["outputs"][0]] for o in interp._get_ops_details() if o["op_name"] in ("RESHAPE", "SQUEEZE")]
    assert len(reshaped) >= 4 and all(v > 0 for s in reshaped for v in s[2:]), reshaped
    ids = np.random.default_rng(3).integers(0, 50, (3, 50)).astype(np.int64)
    _close(_run_tflite_at(str(out / "model_float32.tflite"), ids)[0], _ort(src, {"ids": ids})[0])


def test_a_length_baked_into_the_export_is_never_advertised(tmp_path, capsys):
    """The export baked a Reshape to 16 but declares a free sequence: with --input-shape the files
    are static at 16; without, one line names the input, the dim and why."""
    src = _export(TextEncoder(baked=True), torch.randint(0, 50, (1, 16)), str(tmp_path / "txt.onnx"), "ids", {0: "b", 1: "s"},
                  "torchscript")
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q", "--input-shape", "ids=1,16"]) == 0
    _, d = _tflite(str(out / "model_float32.tflite"))
    assert list(d["shape_signature"]) == [1, 16]
    assert _saved_model_signature(str(out / "saved_model")) == [(1, 16)]
    bad = tmp_path / "bad"
    assert main(["convert", src, "-o", str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "input 'ids'" in err and "s (axis 1)" in err and "Reshape" in err
    assert "--input-shape ids=1,S" in err and not bad.exists()


def test_dim_option_bounds_one_dim_and_fixes_another(tmp_path):
    """--dim h=32..160/32 checks only multiples of 32 up to 160; --dim w=96 and --dim b=1 fix."""
    src = _export(UNet(), torch.randn(1, 3, 64, 64), str(tmp_path / "unet.onnx"), "x", {0: "b", 2: "h", 3: "w"}, "torchscript")
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q", "--dim", "h=32..160/32", "--dim", "w=96", "--dim", "b=1"]) == 0
    rep = _report(out)
    checked = rep["dynamic"]["dims"]["h"]["checked_sizes"]
    assert len(checked) >= 3 and all(v % 32 == 0 and 32 <= v <= 160 for v in checked)
    _, d = _tflite(str(out / "model_float32.tflite"))
    assert list(d["shape_signature"]) == [1, -1, 96, 3]
    assert main(["convert", src, "-o", str(tmp_path / "o2"), "--dim", "height=32"]) == EXIT_USAGE
    assert not os.path.exists(tmp_path / "o2")


def test_verify_takes_fixed_dims_from_a_static_candidate_and_checks_a_dynamic_one_at_several_sizes(tmp_path):
    """The source has symbolic batch/height/width: a static candidate's sizes are used (no ONNX
    Runtime error about size-1 dims), a dynamic candidate is run at every size of the plan."""
    src = _export(UNet(), torch.randn(1, 3, 64, 64), str(tmp_path / "unet.onnx"), "x", {0: "b", 2: "h", 3: "w"}, "torchscript")
    static, dyn = tmp_path / "static", tmp_path / "dyn"
    assert main(["convert", src, "-o", str(static), "-q", "--input-shape", "x=1,3,80,112"]) == 0
    assert main(["convert", src, "-o", str(dyn), "-q"]) == 0
    rep_path = tmp_path / "v.json"
    assert main(["verify", src, str(static / "model_float32.tflite"), "-q", "--report", str(rep_path)]) == 0
    rep = json.loads(rep_path.read_text())
    assert {n: d["fixed"] for n, d in rep["dims"].items()} == {"b": 1, "h": 80, "w": 112}
    assert main(["verify", src, str(dyn / "saved_model"), "-q", "--report", str(rep_path)]) == 0
    rep = json.loads(rep_path.read_text())
    assert all(d["free_in_candidate"] and len(d["checked_sizes"]) >= 3 for d in rep["dims"].values())
    assert len(rep["sizes_checked"]) == 5 and all(e["verdict"] == "equivalent" for e in rep["sizes_checked"])


class MaskedPool(nn.Module):
    """HF-style: the attention mask gathered through indices flattened over batch and sequence
    (``arange(b)[:, None] * s + arange(s)``: folded into one constant whose values and steps both
    move with the dims), then a masked mean."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x, mask):
        n, s, _ = x.shape
        idx = torch.arange(n).unsqueeze(1) * s + torch.arange(s).unsqueeze(0)
        m = mask.reshape(-1)[idx].unsqueeze(-1).to(x.dtype)
        return (self.proj(x) * m).sum(1) / (m.sum(1) + 1.0)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_indices_flattened_over_two_dims_are_computed_at_run_time(exporter, tmp_path):
    torch.manual_seed(0)
    module = MaskedPool()
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    path = str(tmp_path / "pool.onnx")
    args = (torch.randn(2, 16, 8), torch.ones(2, 16, dtype=torch.long))
    if exporter == "dynamo":
        b, s = torch.export.Dim("b", min=1, max=64), torch.export.Dim("s", min=2, max=512)
        torch.onnx.export(module.eval(), args, path, dynamo=True, dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}), input_names=["x", "mask"])
    else:
        torch.onnx.export(module.eval(), args, path, dynamo=False, opset_version=17, input_names=["x", "mask"],
                          dynamic_axes={"x": {0: "b", 1: "s"}, "mask": {0: "b", 1: "s"}})
    out = tmp_path / "out"
    assert main(["convert", path, "-o", str(out), "-q"]) == 0
    _kept_checks(_report(out), ["b", "s"])


@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
def test_hugging_face_bert_keeps_batch_and_sequence(exporter, tmp_path):
    """A real transformers BertModel (tiny config, random weights; tests/data/make_hf_bert_tiny.py):
    position ids sliced to the sequence, token types expanded, the mask broadcast (TorchScript) or
    gathered through index tuples (dynamo). Run here at batch 2, sequence 50 (never used)."""
    src = os.path.join(os.path.dirname(__file__), "data", f"hf_bert_tiny_{exporter}.onnx")
    out = tmp_path / "out"
    assert main(["convert", src, "-o", str(out), "-q"]) == 0
    rep = _report(out)
    _kept_checks(rep, ["batch", "sequence"])
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 96, (2, 50)).astype(np.int64)
    mask = np.ones((2, 50), np.int64)
    mask[1, 40:] = 0
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(out / "model_float32.tflite")).get_signature_runner("serving_default")
    names = {io["name"]: io["tf_name"] for io in rep["io"]["inputs"]}
    got = runner(**{names["input_ids"]: ids, names["attention_mask"]: mask})
    _close(np.asarray(next(iter(got.values()))), _ort(src, {"input_ids": ids, "attention_mask": mask})[0])


class DropoutEncoder(TextEncoder):
    """A text encoder with Dropout after the embeddings and the attention, exported in training
    mode (a module built from its config and never put in ``.eval()``): Dropout(training_mode=True)."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, ids):
        n, s = ids.shape
        x = self.drop(self.tok(ids) + self.pos(torch.arange(s).unsqueeze(0)))
        q, k, v = self.qkv(x).reshape(n, s, 3, 4, 8).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
        return self.out(self.drop(a.transpose(1, 2).reshape(n, s, 32)))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dropout_exported_in_training_mode_is_converted_and_checked_as_inference(exporter, tmp_path, capsys):
    """Such a Dropout is random in ONNX Runtime with graph optimizations off, so no check could
    hold (it failed as a wrong rewrite, exit 3); it is read as inference, as ONNX Runtime's default
    session runs it, with a warning and the nodes in report.json. The .tflite matches the PyTorch
    module in eval mode at a size never converted."""
    torch.manual_seed(0)
    module = DropoutEncoder()
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    module.train()
    path = str(tmp_path / "drop.onnx")
    ids = torch.randint(0, 50, (2, 16))
    if exporter == "dynamo":
        dims = {0: torch.export.Dim("b", min=1, max=64), 1: torch.export.Dim("s", min=2, max=128)}
        torch.onnx.export(module, (ids,), path, dynamo=True, dynamic_shapes=(dims,), input_names=["ids"])
    else:
        torch.onnx.export(module, (ids,), path, dynamo=False, opset_version=17, input_names=["ids"],
                          dynamic_axes={"ids": {0: "b", 1: "s"}}, training=torch.onnx.TrainingMode.TRAINING)
    dropouts = [n for n in onnx.load(path).graph.node if n.op_type == "Dropout"]
    assert len(dropouts) == 2 and all(len(n.input) == 3 for n in dropouts)  # training_mode given
    out = tmp_path / "out"
    assert main(["convert", path, "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "2 Dropout node(s) exported in training mode" in stdout and "model.eval()" in stdout
    rep = _report(out)
    assert len(rep["source"]["training_dropout"]["nodes"]) == 2
    _kept_checks(rep, ["b", "s"])
    x = np.random.default_rng(5).integers(0, 50, (3, 37)).astype(np.int64)
    with torch.no_grad():
        ref = module.eval()(torch.from_numpy(x)).numpy()
    _close(_run_tflite_at(str(out / "model_float32.tflite"), x)[0], ref)
    assert len([n for n in onnx.load(path).graph.node if len(n.input) == 3 and n.op_type == "Dropout"]) == 2  # the user's file as it was
    assert main(["verify", path, str(out / "model_float32.tflite")]) == 0
    assert "exported in training mode" in capsys.readouterr().out


def test_a_replayed_table_is_used_only_where_it_gives_the_constant_at_both_sizes():
    """The correspondence rule between the source's replayed tensor and the rewritten constant:
    the same, one permutation or a unit-axis reshape holding at both sizes; anything else (a value
    off at one size, a permutation that holds at one size only) is no correspondence."""
    from graph_convert.conversion.shape_program import layout

    rng = np.random.default_rng(6)
    p1, p2 = rng.standard_normal((1, 2, 20)).astype(np.float32), rng.standard_normal((1, 2, 42)).astype(np.float32)
    assert layout(p1, p2, p1.copy(), p2.copy()) == ("same",)
    assert layout(p1, p2, p1.transpose(0, 2, 1), p2.transpose(0, 2, 1)) == ("perm", [0, 2, 1])
    assert layout(p1, p2, p1.reshape(2, 20), p2.reshape(2, 42)) == ("reshape", [2, -1])
    off = p2.copy()
    off[0, 1, 7] += 1e-3 * max(1.0, float(np.abs(p2).max()))
    assert layout(p1, p2, p1.copy(), off) is None
    assert layout(p1, p2, p1.transpose(0, 2, 1), p2) is None
    assert layout(p1, p2, p1.astype(np.float64), p2.astype(np.float64)) is None
