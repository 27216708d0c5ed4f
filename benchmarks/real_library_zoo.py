"""Real-library model zoo: ONNX files exported the usual way by ultralytics, segmentation-models-pytorch,
torchvision, Hugging Face transformers and onnxruntime.quantization (every parameter random), and a
side-by-side run of graph-convert, onnx2tf 1.28.8 and onnx2tf 2.6.9 on them (issues 21 and 22).

Two steps, in two interpreters (the libraries' torch/torchvision pins clash with the project's):

``build`` runs in a *library venv* and writes the ONNX files, ``manifest.json`` and ``INDEX.md``::

    python3.11 -m venv /tmp/zoo/lib          # Python 3.11: torch/torchvision come from local disk
    /tmp/zoo/lib/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/zoo/lib/bin/pip install ultralytics segmentation-models-pytorch timm transformers \
        onnx onnxruntime onnxscript
    /tmp/zoo/lib/bin/python benchmarks/real_library_zoo.py build --out /tmp/zoo/onnx [--only NAME,...]

Nothing is downloaded: every model is built from its config (``pretrained=False``, ``weights=None``,
``encoder_weights=None``, ultralytics ``*.yaml``, HF ``from_config``) and then every parameter is
drawn again (seeded), BatchNorm running statistics and frozen BatchNorm buffers included, so that no
weight is one, zero or an identity. Structural constants that are not learned stay (ultralytics'
DFL arange kernel, rotary ``inv_freq``, anchors). A model that fails to build or export is listed in
``manifest.json`` ``failed`` with the reason; the rest are still written.

``run`` runs in the *project's venv* (graph_convert importable, TensorFlow, ai-edge-litert) and
converts each file with graph-convert and both onnx2tf versions, each in a subprocess::

    python -m venv /tmp/zoo/o2t1 && /tmp/zoo/o2t1/bin/pip install "onnx2tf==1.28.8" \
        "tensorflow-cpu==2.21.*" onnx-graphsurgeon sng4onnx psutil ai-edge-litert onnx onnxruntime \
        && /tmp/zoo/o2t1/bin/pip install --no-deps "tf-keras==2.21.0" \
        && /tmp/zoo/o2t1/bin/pip install --only-binary=:all: onnxsim           # as .ci/run does
    $(pyenv root)/versions/3.12.*/bin/python -m venv /tmp/zoo/o2t2      # onnx2tf 2.x needs 3.12
    /tmp/zoo/o2t2/bin/pip install "onnx2tf[tensorflow]==2.6.9"
    PYTHONPATH=. python benchmarks/real_library_zoo.py run --zoo /tmp/zoo/onnx \
        --onnx2tf1-python /tmp/zoo/o2t1/bin/python --onnx2tf2-python /tmp/zoo/o2t2/bin/python \
        [--set 21|22] [--only NAME,...] [--skip-onnx2tf]

(or the environment variables ``ZOO_ONNX2TF1_PYTHON`` / ``ZOO_ONNX2TF2_PYTHON``). For each file and
converter: converts (exit 0 and a float32 .tflite), verifies (``graph-convert verify SOURCE
CANDIDATE``: the same draws, rule and tolerance for every converter's file), the 1-thread TFLite
latency (median, the converters' files interleaved in one process) and the TRANSPOSE count, with
ratios ours/theirs. ONNX files with symbolic dims are given ``--input-shape`` at their recorded
example size for onnx2tf (``-ois``) and verify (graph-convert keeps what it can). The onnx2tf runs
get a random ``calibration_image_sample_data_20x128x128x3_float32.npy`` in their working folder (it
loads that file by relative path). Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from typing import Any, Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB_NAME = "calibration_image_sample_data_20x128x128x3_float32.npy"

# ============================================================================================
# build (library venv)
# ============================================================================================

BUILDERS: dict[str, tuple[str, Callable[[str], list[dict]]]] = {}  # name -> (issue set, builder)


def builder(name: str, issue: str):
    def deco(fn):
        BUILDERS[name] = (issue, fn)
        return fn
    return deco


def randomize(module, seed: int = 0) -> None:
    """Draw every learned parameter and every BatchNorm statistic again (seeded).

    Weights of rank >= 2: normal with std 1/sqrt(fan_in) (keeps activations of deep random nets in
    range); rank-1 'weight'-like parameters (norm scales, layer scales): uniform [0.5, 1.5); biases
    and other rank-1/0 parameters: normal(0, 0.1) -- never zero, never one. BatchNorm running_mean
    normal(0, 0.1), running_var uniform [0.5, 1.5); torchvision's FrozenBatchNorm2d buffers likewise.
    Parameters that do not require grad are structural (ultralytics' DFL arange kernel) and stay."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def draw(shape, kind):
        if kind == "scale":
            return torch.rand(shape, generator=g) + 0.5
        if kind == "shift":
            return torch.randn(shape, generator=g) * 0.1
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        return torch.randn(shape, generator=g) / max(fan_in, 1) ** 0.5

    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.requires_grad or not p.dtype.is_floating_point:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() >= 2:
                kind = "weight"
            elif leaf in ("weight", "gamma", "scale", "layer_scale", "ls", "lambda1", "lambda2") or "scale" in leaf:
                kind = "scale"
            else:
                kind = "shift"
            if kind == "weight" and ("embed" in name or "position" in name or "cls_token" in name or "query_pos" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.copy_(draw(tuple(p.shape), kind).to(p.dtype))
        for mod in module.modules():
            for bname in ("running_mean", "running_var", "weight", "bias"):
                buf = mod._buffers.get(bname) if hasattr(mod, "_buffers") else None
                if buf is None or not buf.dtype.is_floating_point:
                    continue
                if bname == "running_var" or bname == "weight":
                    buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
                else:
                    buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)


def _single_file(src: str, dst: str) -> None:
    """Store ``src`` (maybe with external data) as one self-contained file ``dst``."""
    import onnx

    m = onnx.load(src)
    onnx.save_model(m, dst, save_as_external_data=False)


def export_torchscript(model, args: tuple, path: str, *, input_names, output_names=None, dynamic_axes=None,
                       opset: int = 17) -> None:
    import torch

    with tempfile.TemporaryDirectory() as td:
        tmp = os.path.join(td, "m.onnx")
        torch.onnx.export(model, args, tmp, dynamo=False, opset_version=opset, input_names=list(input_names),
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
        _single_file(tmp, path)


def export_dynamo(model, args: tuple, path: str, *, input_names, output_names=None, dynamic_shapes=None,
                  opset: int | None = None) -> None:
    import torch

    with tempfile.TemporaryDirectory() as td:
        tmp = os.path.join(td, "m.onnx")
        kw: dict[str, Any] = {}
        if opset is not None:
            kw["opset_version"] = opset
        prog = torch.onnx.export(model, args, dynamo=True, input_names=list(input_names), output_names=output_names,
                                 dynamic_shapes=dynamic_shapes, verbose=False, **kw)
        prog.save(tmp, external_data=False)
        _single_file(tmp, path)


def onnx_facts(path: str) -> dict:
    """Opset, inputs (symbolic dims by name), outputs and op counts of one ONNX file (subgraphs too)."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}

    def vi(v):
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?",
                "shape": dims}

    ops: Counter = Counter()

    def walk(g):
        for n in g.node:
            ops[(n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type] += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)

    walk(m.graph)
    opset = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
    return {"opset": opset, "inputs": [vi(v) for v in m.graph.input if v.name not in inits],
            "outputs": [vi(v) for v in m.graph.output], "ops": dict(sorted(ops.items())),
            "bytes": os.path.getsize(path)}


def ort_check(path: str, feeds: dict[str, np.ndarray]) -> str:
    """'ok' if ONNX Runtime runs the file on the example feeds, else the first line of its error."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        s.run(None, feeds)
        return "ok"
    except Exception as e:  # recorded, not raised: the file is still part of the zoo
        return f"ORT fails: {str(e).splitlines()[0][:200]}"


def entry(path: str, *, library: str, exporter: str, how: str, example: dict[str, np.ndarray], note: str = "") -> dict:
    facts = onnx_facts(path)
    return {"file": os.path.basename(path), "library": library, "exporter": exporter, "how": how, "note": note,
            "example_shapes": {k: list(v.shape) for k, v in example.items()},
            "example_dtypes": {k: v.dtype.name for k, v in example.items()},
            "ort": ort_check(path, example), **facts}


def _img(shape, seed=0):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _both_exporters(out: str, stem: str, model, args: tuple, names: list[str], *, library: str, how: str,
                    dyn_axes: dict | None, dyn_shapes: Any, output_names=None, ts_opset=17, dynamo_opset=None,
                    note: str = "", kinds: tuple[str, ...] = ("ts", "dynamo")) -> list[dict]:
    """Export with TorchScript (opset ``ts_opset``) and dynamo; an exporter that fails is a failure row."""
    res = []
    model.eval()  # wrappers too: the dynamo path exports in the mode the top module is in
    ex = {n: a.detach().numpy() for n, a in zip(names, args)}
    for kind in kinds:
        path = os.path.join(out, f"{stem}_{kind}.onnx")
        try:
            if kind == "ts":
                export_torchscript(model, args, path, input_names=names, output_names=output_names,
                                   dynamic_axes=dyn_axes, opset=ts_opset)
                exporter = f"torch.onnx.export(dynamo=False, opset_version={ts_opset})"
            else:
                export_dynamo(model, args, path, input_names=names, output_names=output_names,
                              dynamic_shapes=dyn_shapes, opset=dynamo_opset)
                exporter = f"torch.onnx.export(dynamo=True{f', opset_version={dynamo_opset}' if dynamo_opset else ''})"
            res.append(entry(path, library=library, exporter=exporter, how=how, example=ex, note=note))
        except Exception as e:
            res.append({"file": os.path.basename(path), "failed": f"{kind} export: {type(e).__name__}: "
                        f"{_first_line(e)}"})
            if os.path.exists(path):
                os.remove(path)
    return res


def _first_line(e: BaseException) -> str:
    """The line of an exception that says why: for torch.export's long reports, the first line naming
    the underlying error (data-dependent guard, unsupported op, ...) rather than its banner."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "torch.export" in lines[0] or "Failed to" in lines[0]:
        cause = e.__cause__
        while cause is not None and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is not None:
            return f"{lines[0][:80]} ... caused by {type(cause).__name__}: {_first_line(cause)}"[:400]
        for ln in lines[1:]:
            if re.search(r"(Error|Exception|Could not|not supported|Unsupported|guard)", ln):
                return f"{lines[0][:80]} ... {ln}"[:400]
    return lines[0][:300]


def _hw_dims():
    import torch

    D = torch.export.Dim
    return D("height", min=32, max=1024), D("width", min=32, max=1024)


# ---------------------------------------------------------------------------------- issue 21


def _yolo(out: str, stem: str, *, dynamic: bool, nms: bool = False, imgsz: int = 320) -> list[dict]:
    """ultralytics YOLOv8n from its yaml (random init), randomised, exported by ultralytics itself."""
    import ultralytics
    from ultralytics import YOLO

    y = YOLO("yolov8n.yaml")
    randomize(y.model, seed=1)
    y.model.eval()
    with tempfile.TemporaryDirectory() as td:
        cwd = os.getcwd()
        os.chdir(td)
        try:
            kw = dict(format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=False, opset=17, verbose=False)
            if nms:
                kw["nms"] = True
            f = y.export(**kw)
        finally:
            os.chdir(cwd)
        path = os.path.join(out, f"{stem}.onnx")
        _single_file(os.path.join(td, str(f)), path)  # ultralytics returns a path relative to the cwd it ran in
    return [entry(path, library=f"ultralytics {ultralytics.__version__} YOLO('yolov8n.yaml')",
                  exporter=f"YOLO.export(format='onnx', imgsz={imgsz}, dynamic={dynamic}, opset=17, simplify=False"
                           f"{', nms=True' if nms else ''})",
                  how="randomize(model.model); ultralytics' exporter (fuses Conv+BN)",
                  example={"images": _img((1, 3, imgsz, imgsz)).numpy()})]


@builder("yolov8n_dynamic", "21")
def b_yolo_dyn(out):
    return _yolo(out, "yolov8n_dynamic", dynamic=True)


@builder("yolov8n_static", "21")
def b_yolo_static(out):
    return _yolo(out, "yolov8n_static", dynamic=False)


@builder("smp_unet", "21")
def b_unet(out):
    import segmentation_models_pytorch as smp

    m = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2).eval()
    randomize(m, 2)
    return _both_exporters(out, "smp_unet_resnet18", m, (_img((1, 3, 160, 160)),), ["x"],
                           library=f"segmentation-models-pytorch {smp.__version__} Unet('resnet18', "
                                   f"encoder_weights=None, classes=2)",
                           how="free height/width (multiples of 32)", output_names=["mask"],
                           dyn_axes={"x": {2: "height", 3: "width"}, "mask": {2: "height", 3: "width"}},
                           dyn_shapes=({2: 32 * torch_dim("h32", 1, 32), 3: 32 * torch_dim("w32", 1, 32)},))


def torch_dim(name, lo, hi):
    import torch

    return torch.export.Dim(name, min=lo, max=hi)


class _SuperRes:
    """ESPCN-style super-resolution (the PyTorch ONNX tutorial's net): convs + PixelShuffle(3)."""

    @staticmethod
    def make():
        import torch.nn as nn

        class SR(nn.Module):
            def __init__(self, r=3):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(1, 64, 5, padding=2), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                                          nn.ReLU(), nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(32, r * r, 3, padding=1))
                self.shuffle = nn.PixelShuffle(r)

            def forward(self, x):
                return self.shuffle(self.body(x))

        return SR()


@builder("superres", "21")
def b_superres(out):
    m = _SuperRes.make().eval()
    randomize(m, 3)
    h, w = _hw_dims()
    return _both_exporters(out, "superres_espcn", m, (_img((1, 1, 96, 96)),), ["x"], library="torch.nn (ESPCN, PixelShuffle 3)",
                           how="free height/width", output_names=["y"],
                           dyn_axes={"x": {2: "height", 3: "width"}, "y": {2: "height3", 3: "width3"}},
                           dyn_shapes=({2: h, 3: w},))


def _tv_classifier(out, arch, seed):
    import torchvision

    m = getattr(torchvision.models, arch)(weights=None).eval()
    randomize(m, seed)
    h, w = _hw_dims()
    return _both_exporters(out, f"tv_{arch}", m, (_img((1, 3, 224, 224)),), ["x"],
                           library=f"torchvision {torchvision.__version__} {arch}(weights=None)",
                           how="free batch/height/width (global average pool before the classifier)", output_names=["logits"],
                           dyn_axes={"x": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
                           dyn_shapes=({0: torch_dim("batch", 1, 64), 2: h, 3: w},))


@builder("tv_resnet18", "21")
def b_resnet18(out):
    return _tv_classifier(out, "resnet18", 4)


@builder("tv_mobilenet_v3_small", "21")
def b_mnv3(out):
    return _tv_classifier(out, "mobilenet_v3_small", 5)


def _hf_text(out, stem, model, library, vocab, seed, seq=16, how="free batch/sequence"):
    import torch

    randomize(model, seed)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.int64)
    mask[1, seq - 3:] = 0

    class Wrap(torch.nn.Module):  # plain tensors in, last hidden state out (no ModelOutput dict)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)[0]

    b, s = torch_dim("batch", 1, 64), torch_dim("sequence", 2, 512)
    return _both_exporters(out, stem, Wrap(model), (ids, mask), ["input_ids", "attention_mask"], library=library,
                           how=how, output_names=["last_hidden_state"],
                           dyn_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                                     "last_hidden_state": {0: "batch", 1: "sequence"}},
                           dyn_shapes=({0: b, 1: s}, {0: b, 1: s}))


@builder("hf_bert_tiny", "21")
def b_bert(out):
    import transformers
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=512, max_position_embeddings=512)
    m = BertModel(cfg, add_pooling_layer=False)
    return _hf_text(out, "hf_bert_tiny", m, f"transformers {transformers.__version__} BertModel(BertConfig(hidden 128, "
                    f"2 layers, 2 heads, vocab 1000)) from config", 1000, 6)


@builder("hf_distilbert", "21")
def b_distilbert(out):
    import transformers
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(vocab_size=1000, dim=128, n_layers=2, n_heads=4, hidden_dim=512, max_position_embeddings=512)
    m = DistilBertModel(cfg)
    return _hf_text(out, "hf_distilbert", m, f"transformers {transformers.__version__} DistilBertModel(dim 128, 2 layers, "
                    f"4 heads, vocab 1000) from config", 1000, 7)


@builder("text_baked_seq16", "21")
def b_baked(out):
    """A BERT-tiny encoder with a classifier head over all 16 tokens flattened: the export keeps the
    sequence axis symbolic (dynamic_axes) but bakes Reshape(-1, 16*128) -- the file claims a free
    sequence it cannot take (issue 21's "not really free" text encoder)."""
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=512, max_position_embeddings=64)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = BertModel(cfg, add_pooling_layer=False)
            self.cls = torch.nn.Linear(16 * 128, 4)

        def forward(self, ids):
            h = self.enc(input_ids=ids)[0]
            return self.cls(h.reshape(-1, 16 * 128))

    m = Head().eval()
    randomize(m, 8)
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(8))
    path = os.path.join(out, "text_baked_seq16_ts.onnx")
    export_torchscript(m, (ids,), path, input_names=["ids"], output_names=["logits"],
                       dynamic_axes={"ids": {0: "batch", 1: "sequence"}})
    return [entry(path, library=f"transformers {transformers.__version__} BertModel (tiny) + Linear over 16 flattened tokens",
                  exporter="torch.onnx.export(dynamo=False, opset_version=17)",
                  how="dynamic_axes says ids[batch, sequence]; the Reshape to (-1, 2048) bakes sequence 16",
                  example={"ids": ids.numpy()}, note="sequence is not really free: any other length fails in ORT")]


# ---------------------------------------------------------------------------------- issue 22


def _tv_detector(out, stem, model, library, size=320, seed=10, ts_opset=17):
    """torchvision detection model (eval mode: post-processing with NMS inside), one image in,
    boxes/scores/labels (+masks) out; TorchScript export at opset 17 (the documented path) and dynamo."""
    import torch

    randomize(model, seed)
    model.eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            d = self.m([image[0]])[0]
            outs = [d["boxes"], d["scores"], d["labels"]]
            if "masks" in d:
                outs.append(d["masks"])
            return tuple(outs)

    img = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    names_out = ["boxes", "scores", "labels"] + (["masks"] if "mask" in stem else [])
    return _both_exporters(out, stem, Wrap(model), (img,), ["image"], library=library,
                           how=f"eval mode, one {size}x{size} image, post-processing (NMS) inside",
                           output_names=names_out, dyn_axes=None, dyn_shapes=None, ts_opset=ts_opset)


def _small_resnet_fpn(extra_p6p7: bool):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    kw = {}
    if extra_p6p7:
        kw = dict(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, **kw)


@builder("tv_ssdlite", "22")
def b_ssdlite(out):
    import torchvision
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    m = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    return _tv_detector(out, "tv_ssdlite320", m, f"torchvision {torchvision.__version__} ssdlite320_mobilenet_v3_large"
                        f"(weights=None, weights_backbone=None)")


@builder("tv_fasterrcnn", "22")
def b_frcnn(out):
    import torchvision
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    m = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=224,
                                              max_size=224, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
    return _tv_detector(out, "tv_fasterrcnn_mnv3", m, f"torchvision {torchvision.__version__} fasterrcnn_mobilenet_v3_large_"
                        f"320_fpn(weights=None, min_size=max_size=224, rpn top-n 100/50)", size=224)


@builder("tv_maskrcnn", "22")
def b_mrcnn(out):
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    from torchvision.models.detection.anchor_utils import AnchorGenerator

    bb = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)  # 3 FPN levels, as fasterrcnn_mobilenet_v3
    m = MaskRCNN(bb, num_classes=91, rpn_anchor_generator=anchors, min_size=224, max_size=224, rpn_pre_nms_top_n_test=100,
                 rpn_post_nms_top_n_test=50, box_detections_per_img=20)
    return _tv_detector(out, "tv_maskrcnn_mnv3", m, f"torchvision {torchvision.__version__} MaskRCNN(mobilenet_backbone("
                        f"'mobilenet_v3_large', weights=None, fpn=True), min_size=max_size=224)", size=224)


@builder("tv_fcos", "22")
def b_fcos(out):
    import torchvision
    from torchvision.models.detection import FCOS

    m = FCOS(_small_resnet_fpn(True), num_classes=91, min_size=224, max_size=224, topk_candidates=100,
             detections_per_img=20)
    return _tv_detector(out, "tv_fcos_r18", m, f"torchvision {torchvision.__version__} FCOS(resnet_fpn_backbone('resnet18', "
                        f"weights=None, P6P7), min_size=max_size=224)", size=224)


@builder("tv_retinanet", "22")
def b_retina(out):
    import torchvision
    from torchvision.models.detection import RetinaNet

    m = RetinaNet(_small_resnet_fpn(True), num_classes=91, min_size=224, max_size=224, topk_candidates=100,
                  detections_per_img=20)
    return _tv_detector(out, "tv_retinanet_r18", m, f"torchvision {torchvision.__version__} RetinaNet(resnet_fpn_backbone("
                        f"'resnet18', weights=None, P6P7), min_size=max_size=224)", size=224)


@builder("yolov8n_nms", "22")
def b_yolo_nms(out):
    return _yolo(out, "yolov8n_nms", dynamic=False, nms=True)


@builder("hf_rtdetr", "22")
def b_rtdetr(out):
    import torch
    import transformers
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    # layer_type "bottleneck": transformers' "basic" RT-DETR ResNet does not run (its shortcut skips the stride)
    bb = RTDetrResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="bottleneck",
                            out_features=["stage2", "stage3", "stage4"])
    cfg = RTDetrConfig(backbone_config=bb, use_pretrained_backbone=False, use_timm_backbone=False,
                       encoder_hidden_dim=64, encoder_in_channels=[64, 128, 256], d_model=64,
                       decoder_in_channels=[64, 64, 64], encoder_ffn_dim=128, decoder_ffn_dim=128,
                       encoder_attention_heads=4, decoder_attention_heads=4, decoder_layers=2, num_queries=50,
                       num_labels=10, eval_size=None, num_denoising=0)
    m = RTDetrForObjectDetection(cfg).eval()
    randomize(m, 11)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            o = self.m(pixel_values=pixel_values)
            return o.logits, o.pred_boxes

    img = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(11))
    return _both_exporters(out, "hf_rtdetr_small", Wrap(m), (img,), ["pixel_values"],
                           library=f"transformers {transformers.__version__} RTDetrForObjectDetection(RTDetrConfig: "
                                   f"ResNet-basic 16..256, d_model 64, 2 decoder layers, 50 queries) from config",
                           how="one 224x224 image; logits + boxes (top-k query selection inside)",
                           output_names=["logits", "pred_boxes"], dyn_axes=None, dyn_shapes=None)


@builder("tv_raft_small", "22")
def b_raft(out):
    import torch
    import torchvision
    from torchvision.models.optical_flow import raft_small

    m = raft_small(weights=None, progress=False).eval()
    randomize(m, 12)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image1, image2):
            return self.m(image1, image2, num_flow_updates=4)[-1]

    g = torch.Generator().manual_seed(12)
    a, b = torch.rand(1, 3, 128, 128, generator=g) * 2 - 1, torch.rand(1, 3, 128, 128, generator=g) * 2 - 1
    return _both_exporters(out, "tv_raft_small", Wrap(m), (a, b), ["image1", "image2"],
                           library=f"torchvision {torchvision.__version__} raft_small(weights=None), 4 flow updates",
                           how="two 128x128 frames, last flow estimate", output_names=["flow"], dyn_axes=None, dyn_shapes=None)


@builder("stn", "22")
def b_stn(out):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class STN(nn.Module):  # the PyTorch spatial-transformer tutorial's net, on 3x64x64
        def __init__(self):
            super().__init__()
            self.loc = nn.Sequential(nn.Conv2d(3, 8, 7), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(8, 10, 5), nn.MaxPool2d(2), nn.ReLU())
            self.fc = nn.Sequential(nn.Linear(10 * 12 * 12, 32), nn.ReLU(), nn.Linear(32, 6))
            self.head = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            theta = self.fc(self.loc(x).flatten(1)).view(-1, 2, 3)
            theta = theta * 0.2 + torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # near identity, like a trained STN
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            return self.head(F.grid_sample(x, grid, align_corners=False))

    m = STN().eval()
    randomize(m, 13)
    return _both_exporters(out, "stn_affine_grid_sample", m, (_img((1, 3, 64, 64), 13),), ["x"],
                           library="torch.nn.functional affine_grid + grid_sample (bilinear, zeros)",
                           how="spatial transformer on a 64x64 image", output_names=["y"], dyn_axes=None, dyn_shapes=None,
                           ts_opset=20)  # aten::affine_grid_generator exports from opset 20 on


@builder("deform_conv", "22")
def b_deform(out):
    import torch
    import torch.nn as nn
    import torchvision
    from torchvision.ops import DeformConv2d

    class DCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.offset = nn.Conv2d(16, 2 * 9, 3, padding=1)
            self.mask = nn.Conv2d(16, 9, 3, padding=1)
            self.dcn = DeformConv2d(16, 16, 3, padding=1)

        def forward(self, x):
            h = self.stem(x)
            return torch.relu(self.dcn(h, self.offset(h) * 2.0, torch.sigmoid(self.mask(h))))

    m = DCN().eval()
    randomize(m, 14)
    return _both_exporters(out, "tv_deform_conv2d", m, (_img((1, 3, 64, 64), 14),), ["x"],
                           library=f"torchvision {torchvision.__version__} ops.DeformConv2d (modulated, 3x3)",
                           how="offsets and mask predicted by convs", output_names=["y"], dyn_axes=None, dyn_shapes=None,
                           ts_opset=19)


def _small_cnn():
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 64, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class _CalibReader:
    def __init__(self, name: str, arrays: list[np.ndarray]):
        self.data = iter([{name: a} for a in arrays])

    def get_next(self):
        return next(self.data, None)


@builder("quantized", "22")
def b_quant(out):
    """onnxruntime.quantization of a float CNN (QDQ and QOperator static, dynamic -> ConvInteger) and
    of a BERT-tiny encoder (dynamic -> MatMulInteger/DynamicQuantizeLinear; static QDQ)."""
    import onnxruntime
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from transformers import BertConfig, BertModel

    res = []
    rng = np.random.default_rng(15)
    with tempfile.TemporaryDirectory() as td:
        cnn = _small_cnn().eval()
        randomize(cnn, 15)
        x = _img((1, 3, 64, 64), 15)
        fp = os.path.join(td, "cnn.onnx")
        export_torchscript(cnn, (x,), fp, input_names=["x"], output_names=["logits"], opset=17)
        pre = os.path.join(td, "cnn_pre.onnx")
        quant_pre_process(fp, pre, skip_symbolic_shape=True)
        calib = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(8)]

        class R(CalibrationDataReader):
            def __init__(self, name, arrays):
                self.it = iter([{name: a} for a in arrays])

            def get_next(self):
                return next(self.it, None)

        lib = f"onnxruntime {onnxruntime.__version__} quantization"
        for fmt, tag in ((QuantFormat.QDQ, "qdq"), (QuantFormat.QOperator, "qop")):
            path = os.path.join(out, f"quant_cnn_static_{tag}.onnx")
            try:
                quantize_static(pre, path, R("x", calib), quant_format=fmt, per_channel=True,
                                activation_type=QuantType.QUInt8 if tag == "qop" else QuantType.QInt8,
                                weight_type=QuantType.QInt8)
                res.append(entry(path, library=f"{lib}: small CNN (3 convs, depthwise, linear), torch.onnx opset 17",
                                 exporter=f"quantize_static(quant_format={fmt.name}, per_channel=True)",
                                 how="calibrated on 8 random images (MinMax)", example={"x": x.numpy()}))
            except Exception as e:
                res.append({"file": os.path.basename(path), "failed": f"quantize_static {tag}: {_first_line(e)}"})
        path = os.path.join(out, "quant_cnn_dynamic.onnx")
        try:
            quantize_dynamic(pre, path, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"])
            res.append(entry(path, library=f"{lib}: the same small CNN", exporter="quantize_dynamic(weight_type=QUInt8, Conv/MatMul/Gemm)",
                             how="dynamic: ConvInteger + DynamicQuantizeLinear", example={"x": x.numpy()}))
        except Exception as e:
            res.append({"file": os.path.basename(path), "failed": f"quantize_dynamic cnn: {_first_line(e)}"})

        cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
        bert = BertModel(cfg, add_pooling_layer=False).eval()
        randomize(bert, 16)

        class W(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                return self.m(input_ids=input_ids)[0]

        ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(16))
        bp = os.path.join(td, "bert.onnx")
        export_torchscript(W(bert), (ids,), bp, input_names=["input_ids"], output_names=["last_hidden_state"], opset=17)
        path = os.path.join(out, "quant_bert_tiny_dynamic.onnx")
        try:
            quantize_dynamic(bp, path, weight_type=QuantType.QInt8)
            res.append(entry(path, library=f"{lib}: BERT-tiny (hidden 128, 2 layers) from config, torch.onnx opset 17",
                             exporter="quantize_dynamic(weight_type=QInt8)", how="dynamic: MatMulInteger + DynamicQuantizeLinear",
                             example={"input_ids": ids.numpy()}))
        except Exception as e:
            res.append({"file": os.path.basename(path), "failed": f"quantize_dynamic bert: {_first_line(e)}"})
        path = os.path.join(out, "quant_bert_tiny_static_qdq.onnx")
        try:
            calib_ids = [rng.integers(0, 1000, (1, 16)).astype(np.int64) for _ in range(8)]
            quantize_static(bp, path, R("input_ids", calib_ids), quant_format=QuantFormat.QDQ, per_channel=False,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
            res.append(entry(path, library=f"{lib}: the same BERT-tiny", exporter="quantize_static(quant_format=QDQ)",
                             how="calibrated on 8 random id sequences", example={"input_ids": ids.numpy()}))
        except Exception as e:
            res.append({"file": os.path.basename(path), "failed": f"quantize_static bert: {_first_line(e)}"})
    return res


@builder("audio_frontend", "22")
def b_audio(out):
    """torch.stft (Hann window, n_fft 256, hop 128) -> power -> mel filterbank (40 bands) -> log, then a small conv."""
    import torch
    import torch.nn as nn

    def mel_fb(n_freqs, n_mels, sr=16000):  # HTK mel triangles, as torchaudio.functional.melscale_fbanks
        f = np.linspace(0, sr / 2, n_freqs)
        mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)
        hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)
        pts = hz(np.linspace(mel(0), mel(sr / 2), n_mels + 2))
        fb = np.zeros((n_freqs, n_mels), np.float32)
        for i in range(n_mels):
            lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
            fb[:, i] = np.maximum(0, np.minimum((f - lo) / (c - lo), (hi - f) / (hi - c)))
        return torch.from_numpy(fb)

    class Frontend(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("window", torch.hann_window(256))
            self.register_buffer("fb", mel_fb(129, 40))
            self.conv = nn.Conv1d(40, 32, 3, padding=1)

        def forward(self, wav):
            spec = torch.stft(wav, 256, hop_length=128, window=self.window, center=False, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2  # (B, 129, frames)
            mel = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)
            return self.conv(torch.log(mel + 1e-6))

    class FrontendReal(Frontend):  # the TorchScript exporter's STFT path needs return_complex=False
        def forward(self, wav):
            spec = torch.stft(wav, 256, hop_length=128, window=self.window, center=False, return_complex=False)
            power = spec[..., 0] ** 2 + spec[..., 1] ** 2
            mel = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)
            return self.conv(torch.log(mel + 1e-6))

    res = []
    wav = _img((1, 4096), 17)
    for cls, kind in ((FrontendReal, "ts"), (Frontend, "dynamo")):
        m = cls().eval()
        randomize(m, 17)
        r = _both_exporters(out, "audio_stft_mel", m, (wav,), ["wav"], library="torch.stft (Hann 256, hop 128) + mel filterbank (40) + log + Conv1d",
                            how="1 x 4096 samples", output_names=["feat"], dyn_axes={"wav": {1: "samples"}, "feat": {2: "frames"}},
                            dyn_shapes=({1: torch_dim("samples", 512, 64000)},), kinds=(kind,))
        res += r
    return res


@builder("fnet", "22")
def b_fnet(out):
    """FNet-like token mixer: Re(FFT2(x)) over (sequence, hidden) then a feed-forward block."""
    import torch
    import torch.nn as nn

    class FNetBlock(nn.Module):
        def __init__(self, d=64):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 128), nn.GELU(), nn.Linear(128, d))

        def forward(self, x):
            x = self.n1(x + torch.fft.fft2(x.to(torch.complex64), dim=(-2, -1)).real)
            return self.n2(x + self.ff(x))

    m = nn.Sequential(FNetBlock(), FNetBlock()).eval()
    randomize(m, 18)
    return _both_exporters(out, "fnet_fft_mixer", m, (_img((1, 32, 64), 18),), ["x"], library="torch.fft.fft2 (FNet token mixing), 2 blocks",
                           how="(1, 32 tokens, 64)", output_names=["y"], dyn_axes=None, dyn_shapes=None)


@builder("opset23_attention", "22")
def b_attn23(out):
    """HF Llama (tiny config, RoPE + SDPA) exported by dynamo at opset 23 (Attention / RotaryEmbedding
    if the exporter emits them), and a bare F.scaled_dot_product_attention block at opset 24."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import transformers
    from transformers import LlamaConfig, LlamaModel

    res = []
    cfg = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa")
    m = LlamaModel(cfg).eval()
    randomize(m, 19)

    class W(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False)[0]

    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(19))
    for opset in (23,):
        path = os.path.join(out, f"hf_llama_tiny_dynamo_opset{opset}.onnx")
        try:
            export_dynamo(W(m), (ids,), path, input_names=["input_ids"], output_names=["last_hidden_state"], opset=opset)
            res.append(entry(path, library=f"transformers {transformers.__version__} LlamaModel(hidden 128, 2 layers, 4 heads, "
                             f"2 kv heads, sdpa) from config", exporter=f"torch.onnx.export(dynamo=True, opset_version={opset})",
                             how="(1, 16) ids", example={"input_ids": ids.numpy()}))
        except Exception as e:
            res.append({"file": os.path.basename(path), "failed": f"dynamo opset {opset}: {_first_line(e)}"})

    class SDPA(nn.Module):
        def __init__(self, d=64, h=4):
            super().__init__()
            self.h = h
            self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)

        def forward(self, x):
            b, s, d = x.shape
            q, k, v = self.qkv(x).view(b, s, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o(y.transpose(1, 2).reshape(b, s, d))

    sm = SDPA().eval()
    randomize(sm, 20)
    x = _img((1, 16, 64), 20)
    for opset in (23, 24):
        path = os.path.join(out, f"sdpa_block_dynamo_opset{opset}.onnx")
        try:
            export_dynamo(sm, (x,), path, input_names=["x"], output_names=["y"], opset=opset)
            res.append(entry(path, library="torch.nn.functional.scaled_dot_product_attention (causal, 4 heads)",
                             exporter=f"torch.onnx.export(dynamo=True, opset_version={opset})", how="(1, 16, 64)",
                             example={"x": x.numpy()}))
        except Exception as e:
            res.append({"file": os.path.basename(path), "failed": f"dynamo opset {opset}: {_first_line(e)}"})
    return res


@builder("misc_ops", "22")
def b_misc(out):
    """MaxUnpool (SegNet-style), LPPool2d, cumprod, flip-per-length (ReverseSequence), a scripted loop (Loop)."""
    import torch
    import torch.nn as nn

    res = []

    class SegNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.pool = nn.MaxPool2d(2, 2, return_indices=True)
            self.unpool = nn.MaxUnpool2d(2, 2)
            self.dec = nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, x):
            h = self.enc(x)
            p, idx = self.pool(h)
            return self.dec(self.unpool(p, idx, output_size=h.shape))

    class LpNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.p = nn.LPPool2d(2, 2, stride=2)

        def forward(self, x):
            return self.p(torch.relu(self.c(x)))

    class CumProd(nn.Module):  # e.g. a stick-breaking / survival head
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(32, 16)

        def forward(self, x):
            return torch.cumprod(torch.sigmoid(self.l(x)), dim=-1)

    # a scripted recurrence (compiled from source: this file imports torch only inside functions)
    cu = torch.jit.CompilationUnit(
        "def loop(x, w, b):\n"
        "    h = torch.zeros(x.size(0), x.size(2))\n"
        "    for t in range(x.size(1)):\n"
        "        h = torch.tanh(torch.nn.functional.linear(x[:, t] + h, w, b))\n"
        "    return h\n")

    class Scripted(nn.Module):  # traced module calling a scripted loop: Loop in the TorchScript export
        def __init__(self):
            super().__init__()
            self.cell = nn.Linear(16, 16)

        def forward(self, x):
            return cu.loop(x, self.cell.weight, self.cell.bias)

    for stem, mk, shape, seed in (("segnet_maxunpool", SegNetish, (1, 3, 64, 64), 21), ("lppool2d", LpNet, (1, 3, 64, 64), 22),
                                  ("cumprod_head", CumProd, (2, 32), 23)):
        m = mk().eval()
        randomize(m, seed)
        res += _both_exporters(out, stem, m, (_img(shape, seed),), ["x"], library=f"torch.nn ({mk.__name__})", how=str(shape),
                               output_names=["y"], dyn_axes=None, dyn_shapes=None)
    m = Scripted().eval()
    randomize(m, 24)
    x = _img((1, 8, 16), 24)
    path = os.path.join(out, "scripted_loop_ts.onnx")
    try:
        export_torchscript(m, (x,), path, input_names=["x"], output_names=["y"], dynamic_axes={"x": {1: "steps"}}, opset=17)
        res.append(entry(path, library="torch.jit.script: an RNN-like recurrence over the sequence (for loop)",
                         exporter="torch.onnx.export(dynamo=False, opset_version=17), the loop a torch.jit script function", how="(1, 8, 16)",
                         example={"x": x.numpy()}))
    except Exception as e:
        res.append({"file": "scripted_loop_ts.onnx", "failed": f"scripted export: {_first_line(e)}"})
    return res


def cmd_build(a) -> int:
    os.makedirs(a.out, exist_ok=True)
    only = set(a.only.split(",")) if a.only else None
    man_path = os.path.join(a.out, "manifest.json")
    man = {"models": [], "failed": []}
    if os.path.exists(man_path) and only:  # a partial rebuild keeps the other rows
        with open(man_path) as f:
            man = json.load(f)
    for name, (issue, fn) in BUILDERS.items():
        if only and name not in only:
            continue
        t = time.time()
        print(f"[build] {name} ...", flush=True)
        try:
            rows = fn(a.out)
        except Exception as e:
            if a.debug:
                traceback.print_exc()
            rows = [{"file": name, "failed": f"{type(e).__name__}: {_first_line(e)}"}]
        files = {r["file"] for r in rows}
        man["models"] = [r for r in man["models"] if r["file"] not in files]
        man["failed"] = [r for r in man["failed"] if r["file"] not in files and r["file"] != name]
        for r in rows:
            r["builder"], r["issue"] = name, issue
            (man["failed"] if "failed" in r else man["models"]).append(r)
            print(f"  {r['file']}: " + (f"FAILED {r['failed']}" if "failed" in r else
                  f"ok, opset {r['opset'].get('ai.onnx')}, ORT {r['ort']}, {len(r['ops'])} op types"), flush=True)
        print(f"  ({time.time() - t:.1f}s)", flush=True)
    man["versions"] = _versions(["torch", "torchvision", "ultralytics", "segmentation-models-pytorch", "timm",
                                 "transformers", "onnx", "onnxruntime", "onnxscript"])
    with open(man_path, "w") as f:
        json.dump(man, f, indent=1)
    write_index(a.out, man)
    return 0


def _versions(dists):
    import importlib.metadata as md

    out = {}
    for d in dists:
        try:
            out[d] = md.version(d)
        except Exception:
            pass
    out["python"] = sys.version.split()[0]
    return out


def _shape_str(v: dict) -> str:
    return f"{v['name']}[{','.join(str(d) for d in v['shape'])}] {v['dtype']}"


# issue 22 names these ops; with torch 2.14.1 / onnxscript 0.7.2 no exporter used here emits them
NOT_PRODUCED = [
    "MaxUnpool: nn.MaxUnpool2d exports (dynamo) as ScatterND into a zero tensor; the TorchScript exporter fails "
    "on it (`cond must be a bool, but got a Tensor`, with or without output_size)",
    "LpPool: nn.LPPool2d exports (both exporters) as Pow -> AveragePool -> Sign/Abs/Relu/Mul -> Pow",
    "CumProd: torch.cumprod fails in both exporters (TorchScript: no symbolic at opset 17; dynamo: no ONNX "
    "function for prims.prod, at opsets 20 and 23-26)",
    "ReverseSequence, Scan, Unique, Compress, CenterCropPad: no torch op exports to them",
    "RotaryEmbedding: dynamo at opset 23 emits Attention and RMSNormalization for HF Llama but leaves RoPE as "
    "Slice/Neg/Concat/Mul; onnxscript's onnx_fusions.fuse() finds no rotary pattern in it either",
    "HannWindow / MelWeightMatrix: torch.hann_window and a mel matrix are constants in the export (STFT gets "
    "the window as an initializer)",
]


def write_index(out: str, man: dict, unsupported: dict[str, str] | None = None) -> None:
    """INDEX.md: one row per file (library+config, exporter, opset, inputs, ops of note, how made)."""
    note_ops = {"NonMaxSuppression", "RoiAlign", "If", "Loop", "Scan", "TopK", "NonZero", "GridSample", "AffineGrid",
                "DeformConv", "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                "ConvInteger", "DynamicQuantizeLinear", "STFT", "DFT", "HannWindow", "MelWeightMatrix", "Attention",
                "RotaryEmbedding", "MaxUnpool", "LpPool", "CumProd", "CumSum", "ReverseSequence", "Resize", "Range",
                "Expand", "ConstantOfShape", "ScatterND", "ScatterElements", "GatherND", "Unique", "Compress",
                "QLinearAdd", "QLinearGlobalAveragePool", "QGemm", "SequenceConstruct", "Einsum"}
    lines = ["# Real-library model zoo (issues 21 and 22)", "",
             "Built by `benchmarks/real_library_zoo.py build` (every parameter random, nothing downloaded); "
             f"versions: {', '.join(f'{k} {v}' for k, v in man.get('versions', {}).items())}.", "",
             "Symbolic dims are shown by name; `ORT` says whether ONNX Runtime runs the file on its example inputs. "
             "`not emitted by graph_convert` is what `graph-convert convert` on main refused (filled by the `run` step)."
             , "", "| file | set | library + config | exporter | opset | inputs | ops of note | ORT | not emitted by graph_convert | how made |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(man["models"], key=lambda r: (r["issue"], r["file"])):
        ops = [f"{o}×{n}" for o, n in r["ops"].items() if o.split("::")[-1] in note_ops or "::" in o]
        uns = (unsupported or {}).get(r["file"], "")
        how = r["how"] + (f"; {r['note']}" if r.get("note") else "")
        lines.append(f"| {r['file']} | {r['issue']} | {r['library']} | {r['exporter']} | {r['opset'].get('ai.onnx')} | "
                     f"{'; '.join(_shape_str(v) for v in r['inputs'])} | {', '.join(ops) or '—'} | {r['ort']} | {uns} | {how} |")
    lines += ["", "## Ops the exporters here do not produce", ""] + [f"- {t}" for t in NOT_PRODUCED]
    if man["failed"]:
        lines += ["", "## Failed to build", "", "| file | why |", "|---|---|"]
        for r in man["failed"]:
            lines.append(f"| {r['file']} | {r['failed'].replace('|', '/')} |")
    with open(os.path.join(out, "INDEX.md"), "w") as f:
        f.write("\n".join(lines) + "\n")



# ============================================================================================
# run (project venv)
# ============================================================================================

CONVERTERS = ("graph_convert", "onnx2tf 1.28.8", "onnx2tf 2.6.9")


def _tail(text: str, n: int = 2) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:240]


def _run(cmd: list[str], cwd: str, env: dict, timeout: float) -> tuple[int | None, float, str]:
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return p.returncode, time.perf_counter() - t, (p.stdout or "") + (p.stderr or "")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, time.perf_counter() - t, out + f"\ntimeout after {timeout:.0f}s"


def _ours_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _theirs_env(python: str) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    # onnx2tf runs the `onnxsim` executable by name: its interpreter's bin folder first
    env["PATH"] = os.path.dirname(os.path.abspath(python)) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _fixed_shapes(row: dict) -> dict[str, list[int]]:
    """The example size of every input that has a symbolic dim (name -> dims)."""
    out = {}
    for v in row["inputs"]:
        if any(not isinstance(d, int) for d in v["shape"]):
            out[v["name"]] = row["example_shapes"][v["name"]]
    return out


def _tflite_in(out: str, ours: bool) -> str | None:
    if not os.path.isdir(out):
        return None
    if ours:
        p = os.path.join(out, "model_float32.tflite")
        return p if os.path.exists(p) else None
    hits = sorted(f for f in os.listdir(out) if f.endswith("_float32.tflite"))
    return os.path.join(out, hits[0]) if hits else None


def _unsupported(text: str) -> str:
    """The op types graph-convert's 'unsupported ops ...: Op (node 'n'), ...' line names, each once."""
    m = re.search(r"unsupported ops?[^:]*:\s*(.+)", text)
    if not m:
        return ""
    ops = re.findall(r"([A-Za-z][\w.:]*) \(node", m.group(1))
    return ", ".join(dict.fromkeys(ops)) if ops else m.group(1).strip()[:200]


def convert_one(conv: str, src: str, row: dict, work: str, a) -> dict:
    """Convert ``src`` with one converter; returns {ok, secs, tflite, why}."""
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    fixed = _fixed_shapes(row)
    if conv == "graph_convert":
        cmd = [sys.executable, "-m", "graph_convert.cli", "convert", src, "-o", out, "-q"]
        if a.fixed:
            for n, d in fixed.items():
                cmd += ["--input-shape", f"{n}={','.join(map(str, d))}"]
        env = _ours_env()
    else:
        py = a.onnx2tf1_python if conv.endswith("1.28.8") else a.onnx2tf2_python
        # onnx2tf runs onnxsim on its input IN PLACE (the file is overwritten with the simplified,
        # input-shape-fixed graph): it gets a copy, never the zoo's file
        copy = os.path.join(work, os.path.basename(src))
        shutil.copyfile(src, copy)
        cmd = [py, "-m", "onnx2tf", "-i", copy, "-o", out, "-n"]
        if fixed:  # onnx2tf's own answer to symbolic dims: the input-shape override
            cmd += ["-ois", *[f"{n}:{','.join(map(str, d))}" for n, d in fixed.items()]]
        env = _theirs_env(py)
    try:
        rc, secs, text = _run(cmd, work, env, a.timeout)
    finally:
        if conv != "graph_convert":
            os.remove(copy)
    tfl = _tflite_in(out, conv == "graph_convert")
    res = {"rc": rc, "secs": secs, "tflite": tfl, "ok": rc == 0 and tfl is not None}
    if not res["ok"]:
        errs = [ln for ln in text.splitlines() if re.search(r"(Error|ERROR|Exception|error:)", ln)
                and "absl::InitializeLog" not in ln]  # onnx2tf's last lines are often TF's log noise
        res["why"] = (f"exit {rc}: " if rc is not None else "") + (_tail("\n".join(errs[-2:])) if errs else _tail(text))
        if rc is None:
            res["why"] += f" (timeout after {a.timeout:.0f}s)"
        if conv == "graph_convert":
            res["unsupported"] = _unsupported(text)
    if conv == "graph_convert" and rc == 0:
        try:
            with open(os.path.join(out, "report.json")) as f:
                res["report_verified"] = json.load(f).get("verification", {}).get("verified")
        except Exception:
            pass
    return res


def verify_one(src: str, tfl: str, row: dict, work: str, a) -> tuple[bool, str]:
    """``graph-convert verify`` of one candidate: the same draws and rule for every converter's file."""
    cmd = [sys.executable, "-m", "graph_convert.cli", "verify", src, tfl, "-q", "--no-locate"]
    for n, d in _fixed_shapes(row).items():
        cmd += ["--input-shape", f"{n}={','.join(map(str, d))}"]
    if a.atol is not None:
        cmd += ["--atol", str(a.atol)]
    rc, _, text = _run(cmd, work, _ours_env(), a.timeout)
    return rc == 0, ("" if rc == 0 else f"exit {rc}: {_tail(text, 1)}")


def _feed_shape(detail: dict, example: list[int]) -> list[int]:
    """The shape to run a TFLite input at: its static shape, or (dynamic dims) the example size in the
    layout its static dims fit (as given, or channels-last)."""
    sig = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    if all(d > 0 for d in sig):
        return sig
    cands = [list(example)]
    if len(example) in (3, 4, 5):
        cands.append([example[0], *example[2:], example[1]])
    for c in cands:
        if len(c) == len(sig) and all(s < 0 or s == e for s, e in zip(sig, c)):
            return c
    return [e if s < 0 else s for s, e in zip(sig, example)] if len(sig) == len(example) else [max(d, 1) for d in sig]


class _Timed:
    def __init__(self, path: str, row: dict, seed: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=path, num_threads=1)
        dets = self.interp.get_input_details()
        examples = list(row["example_shapes"].values())
        rng = np.random.default_rng(seed)
        for k, d in enumerate(dets):
            ex = examples[k] if k < len(examples) else list(d["shape"])
            shape = _feed_shape(d, ex)
            if list(d["shape"]) != shape:
                self.interp.resize_tensor_input(d["index"], shape)
        self.interp.allocate_tensors()  # raises for Flex ops: this runtime has no Flex delegate
        for d in self.interp.get_input_details():
            dt = np.dtype(d["dtype"])
            x = (rng.random(d["shape"]).astype(dt) if dt.kind == "f" else rng.integers(0, 16, d["shape"]).astype(dt))
            self.interp.set_tensor(d["index"], x)
        self.ops = Counter(o["op_name"] for o in self.interp._get_ops_details())
        self.interp.invoke()  # a file that loads but cannot run (a kernel error) fails here, not mid-timing


def latencies(models: list[_Timed], rounds: int, per: int) -> list[float]:
    """Median invoke() ms per model, the models interleaved round by round (they share the drift)."""
    for m in models:
        for _ in range(3):
            m.interp.invoke()
    samples: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for k, m in enumerate(models):
            for _ in range(per):
                t = time.perf_counter_ns()
                m.interp.invoke()
                samples[k].append((time.perf_counter_ns() - t) / 1e6)
    return [statistics.median(s) for s in samples]


def cmd_run(a) -> int:
    with open(os.path.join(a.zoo, "manifest.json")) as f:
        man = json.load(f)
    only = [o for o in (a.only or "").split(",") if o]
    rows = [r for r in man["models"] if (not a.set or r["issue"] == a.set) and (not only or any(o in r["file"] for o in only))]
    if only:  # in the order given (the most wanted first on a busy machine)
        rows.sort(key=lambda r: min(k for k, o in enumerate(only) if o in r["file"]))
    convs = ["graph_convert"] + ([] if a.skip_onnx2tf else [c for c, p in (("onnx2tf 1.28.8", a.onnx2tf1_python),
                                                                          ("onnx2tf 2.6.9", a.onnx2tf2_python)) if p])
    if a.converters:  # e.g. convert with onnx2tf ahead of time into --cache, graph_convert later with --reuse
        convs = [c for c in convs if c in a.converters]
    work_root = tempfile.mkdtemp(prefix="zoo_run_")
    np.save(os.path.join(work_root, CALIB_NAME), np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    results: dict[str, dict] = {}
    try:
        for r in rows:
            src = os.path.join(a.zoo, r["file"])
            res = results[r["file"]] = {}
            for c in convs:
                tag = re.sub(r"\W", "_", c)
                work = os.path.join(work_root, tag)
                os.makedirs(work, exist_ok=True)
                calib = os.path.join(work, CALIB_NAME)
                if not os.path.exists(calib):
                    os.symlink(os.path.join(work_root, CALIB_NAME), calib)
                keep = os.path.join(a.cache or os.path.join(work_root, "tfl"), tag)
                os.makedirs(keep, exist_ok=True)
                dst = os.path.join(keep, r["file"].replace(".onnx", ".tflite"))
                cached = os.path.join(keep, r["file"].replace(".onnx", ".json"))
                reuse = a.cache and os.path.exists(cached) and (c in a.reuse or "all" in a.reuse)
                if reuse:  # onnx2tf's result does not depend on graph_convert: converted once, reused
                    with open(cached) as f:
                        cr = json.load(f)
                    cr["reused"] = True
                    if cr["ok"]:  # the verdict is graph-convert verify's of today: checked again
                        cr["verified"], cr["verify_why"] = verify_one(src, cr["tflite"], r, work, a)
                elif a.cached_only:
                    res[c] = {"ok": False, "not_run": True, "secs": 0.0, "why": "not run (no cached result)"}
                    continue
                else:
                    cr = convert_one(c, src, r, work, a)
                    if cr["ok"]:
                        shutil.copy(cr["tflite"], dst)
                        cr["tflite"] = dst
                        cr["verified"], cr["verify_why"] = verify_one(src, dst, r, work, a)
                    with open(cached, "w") as f:
                        json.dump(cr, f)
                if cr["ok"]:
                    try:
                        cr["timed"] = _Timed(cr["tflite"], r, a.seed)
                    except Exception as e:
                        cr["run_why"] = f"LiteRT: {_first_line(e)[:160]}"
                res[c] = cr
                print(f"[run] {r['file']:42s} {c:15s} " + ("converts" if cr["ok"] else "FAILS  ") +
                      (f", verifies" if cr.get("verified") else (f", verify {cr.get('verify_why', '')}" if cr["ok"] else
                       f" {cr.get('why', '')}")) + f" ({cr['secs']:.1f}s{', cached' if reuse else ''})", flush=True)
            timed = [(c, res[c]["timed"]) for c in convs if res[c].get("timed")]
            if timed:
                for (c, _), ms in zip(timed, latencies([t for _, t in timed], a.rounds, a.per_round)):
                    res[c]["ms"] = ms
                    res[c]["transposes"] = res[c]["timed"].ops.get("TRANSPOSE", 0)
                    res[c]["n_ops"] = sum(res[c]["timed"].ops.values())
            for c in convs:
                res[c].pop("timed", None)
        table = render_table(rows, results, convs)
        print(table)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"results": results, "convs": convs}, f, indent=1, default=str)
        if a.index:  # record what graph_convert refused in the zoo's INDEX.md
            uns = {f: _unsupported("unsupported ops: " + res["graph_convert"]["unsupported"])
                   if "(node" in (res["graph_convert"].get("unsupported") or "") else (res["graph_convert"].get("unsupported") or "")
                   for f, res in results.items() if "graph_convert" in res}
            old = {}
            if os.path.exists(os.path.join(a.zoo, "unsupported.json")):
                with open(os.path.join(a.zoo, "unsupported.json")) as f:
                    old = json.load(f)
            old.update(uns)
            with open(os.path.join(a.zoo, "unsupported.json"), "w") as f:
                json.dump(old, f, indent=1)
            write_index(a.zoo, man, old)
    finally:
        if not a.keep:
            shutil.rmtree(work_root, ignore_errors=True)
        else:
            print(f"(work folder kept: {work_root})")
    return 0


def render_table(rows: list[dict], results: dict, convs: list[str]) -> str:
    short = {"graph_convert": "ours", "onnx2tf 1.28.8": "o2t 1.28.8", "onnx2tf 2.6.9": "o2t 2.6.9"}

    def cell(res):
        if res.get("not_run"):
            return "not run"
        if not res["ok"]:
            return "no"
        if res.get("verified"):
            return "yes / **yes**"
        return "yes / no"

    def ms(res):
        return f"{res['ms']:.2f}" if res.get("ms") is not None else ("Flex/fails" if res.get("run_why") else "—")

    hdr = ["file"] + [f"{short[c]} converts / verifies" for c in convs] + [f"{short[c]} ms" for c in convs]
    hdr += [f"ours/{short[c]}" for c in convs[1:]] + ["TRANSPOSE " + " / ".join(short[c] for c in convs)]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    tally = {c: [0, 0, 0] for c in convs}
    notes = []
    for r in rows:
        res = results[r["file"]]
        cells = [r["file"]]
        for c in convs:
            cells.append(cell(res[c]))
            tally[c][2] += not res[c].get("not_run")
            tally[c][0] += res[c]["ok"]
            tally[c][1] += bool(res[c].get("verified"))
        cells += [ms(res[c]) for c in convs]
        o = res[convs[0]].get("ms") if convs[0] == "graph_convert" else None
        for c in convs[1:]:
            t = res[c].get("ms")
            cells.append(f"{o / t:.2f}" if o and t else "—")
        cells.append(" / ".join(str(res[c].get("transposes", "—")) for c in convs))
        lines.append("| " + " | ".join(cells) + " |")
        for c in convs:
            why = res[c].get("why") or res[c].get("verify_why") or res[c].get("run_why")
            if why and not res[c].get("not_run"):
                notes.append(f"- {r['file']}, {c}: {why}")
    lines.append("")
    lines.append("Totals (converts / verifies / files run): " +
                 "; ".join(f"{c} {tally[c][0]} / {tally[c][1]} / {tally[c][2]}" for c in convs))
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="export the zoo (library venv)")
    b.add_argument("--out", default=os.environ.get("ZOO_DIR", "/tmp/zoo/onnx"))
    b.add_argument("--only", help="comma-separated builder names: " + ", ".join(BUILDERS))
    b.add_argument("--debug", action="store_true")
    r = sub.add_parser("run", help="convert with graph-convert and onnx2tf, verify, time (project venv)")
    r.add_argument("--zoo", default=os.environ.get("ZOO_DIR", "/tmp/zoo/onnx"))
    r.add_argument("--set", choices=["21", "22"], help="only issue 21's or 22's files")
    r.add_argument("--only", help="comma-separated substrings of file names")
    r.add_argument("--onnx2tf1-python", default=os.environ.get("ZOO_ONNX2TF1_PYTHON", ""))
    r.add_argument("--onnx2tf2-python", default=os.environ.get("ZOO_ONNX2TF2_PYTHON", ""))
    r.add_argument("--skip-onnx2tf", action="store_true")
    r.add_argument("--fixed", action="store_true", help="give graph-convert --input-shape at the example size too")
    r.add_argument("--atol", type=float, default=None, help="verify tolerance (default: graph-convert verify's)")
    r.add_argument("--timeout", type=float, default=900.0)
    r.add_argument("--rounds", type=int, default=10)
    r.add_argument("--per-round", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", help="write the raw results here")
    r.add_argument("--index", action="store_true", help="record graph-convert's refusals in the zoo's INDEX.md")
    r.add_argument("--keep", action="store_true", help="keep the work folder")
    r.add_argument("--cached-only", action="store_true", help="convert nothing: table the cached results "
                   "(a converter without one for a file is 'not run'); latency is still measured")
    r.add_argument("--converters", default="", help="comma-separated subset of: " + ", ".join(CONVERTERS))
    r.add_argument("--cache", help="keep each converter's .tflite and result here (one folder per converter)")
    r.add_argument("--reuse", default="", help="comma-separated converters whose cached conversions to reuse (verified again) "
                   "(e.g. 'onnx2tf 1.28.8,onnx2tf 2.6.9' or all)")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        a.reuse = [x.strip() for x in a.reuse.split(",") if x.strip()]
        a.converters = [x.strip() for x in a.converters.split(",") if x.strip()]
        return cmd_run(a)
    if a.cmd == "build":
        return cmd_build(a)
    return 2


if __name__ == "__main__":
    sys.exit(main())
