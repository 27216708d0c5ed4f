"""Reproducible outputs: the same source and options, converted by the real CLI in two separate
processes (with different hash seeds, so nothing may depend on ``hash()`` or set order), give
byte-identical files into two folders: an .onnx source (with the quantized TFLite variants) and a
PyTorch ``file.py:factory`` source.

Compared byte by byte: ``model.rewritten.onnx``, every ``.tflite`` file and every file of the
SavedModel, with two exclusions, both of values that are *meant* to differ per run:

- ``report.json`` is compared as JSON without its timings (every key ``seconds`` or ``*_seconds``:
  ``timings_seconds``, the per-pass ``seconds``, ``source.export_seconds``) and its memory
  measurements (``peak_rss_gb_after_stage``);
- ``saved_model/fingerprint.pb`` is compared without its ``uuid`` field: TensorFlow writes a fresh
  random UUID into every SavedModel it saves, to tell saves apart; its content hashes
  (``saved_model_checksum``, ``graph_def_program_hash``, ``signature_def_hash``,
  ``saved_object_graph_hash``, ``checkpoint_hash``) are compared and must be equal.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import onnx
import pytest

from tests.helpers import Builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_SOURCE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.cat([y[:, :8:2], self.branch(y)], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 2), 1)[:, :12])


def make():
    torch.manual_seed(0)
    return Tiny().eval()
'''


def two_branch_onnx(path) -> None:
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Relu", [b.op("Conv", [x, b.weight([6, 3, 3, 3]), b.weight([6])], pads=[1, 1, 1, 1])])
    z = b.op("Conv", [y, b.weight([4, 6, 1, 1])])
    w = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    c = b.op("Concat", [z, w], axis=1)
    b.output(b.op("Sigmoid", [c]))
    b.output(b.op("GlobalAveragePool", [c]))
    onnx.save(b.model(), path)


def convert(cwd, args: list[str], hash_seed: int) -> None:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONHASHSEED=str(hash_seed))
    proc = subprocess.run([sys.executable, "-m", "graph_convert.cli", "convert", *args, "-q"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _files(root) -> dict[str, str]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            out[os.path.relpath(os.path.join(d, n), root)] = os.path.join(d, n)
    return out


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if not (k == "seconds" or k.endswith("_seconds") or k == "peak_rss_gb_after_stage")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _fingerprint_without_uuid(data: bytes):
    from tensorflow.core.protobuf import fingerprint_pb2

    fp = fingerprint_pb2.FingerprintDef()
    fp.ParseFromString(data)
    assert fp.saved_model_checksum and fp.uuid, "expected a SavedModel fingerprint with checksums and a uuid"
    fp.ClearField("uuid")
    return fp.SerializeToString(deterministic=True)


def _page_is_its_report(path: str, page: bytes) -> bool:
    from graph_convert.conversion.report_html import render_report

    with open(os.path.join(os.path.dirname(path), "report.json")) as f:
        return render_report(json.load(f)) == page.decode("utf-8")


def differences(a, b) -> list[str]:
    """Relative paths that differ between output folders ``a`` and ``b`` (with the exclusions above)."""
    fa, fb = _files(a), _files(b)
    diff = [f"{p}: only in one folder" for p in sorted(set(fa) ^ set(fb))]
    for rel in sorted(set(fa) & set(fb)):
        with open(fa[rel], "rb") as f:
            x = f.read()
        with open(fb[rel], "rb") as f:
            y = f.read()
        if rel == "report.json":
            x, y = _without_timings(json.loads(x)), _without_timings(json.loads(y))
        elif rel == "report.html":  # a function of report.json (compared above), whose timings it shows
            x, y = _page_is_its_report(fa[rel], x), _page_is_its_report(fb[rel], y)
        elif rel == os.path.join("saved_model", "fingerprint.pb"):
            x, y = _fingerprint_without_uuid(x), _fingerprint_without_uuid(y)
        if x != y:
            diff.append(rel)
    return diff


EXPECTED = {"model.rewritten.onnx", "model_float32.tflite", "report.json", os.path.join("saved_model", "saved_model.pb"),
            os.path.join("saved_model", "fingerprint.pb")}


@pytest.mark.parametrize("kind", ["onnx_file", "pytorch_file_factory"])
def test_two_runs_in_two_processes_give_identical_files(kind, tmp_path):
    if kind == "onnx_file":
        two_branch_onnx(tmp_path / "m.onnx")
        args = ["m.onnx", "--quantize", "fp16,int8,int8-full", "--calibration", "random"]
    else:
        (tmp_path / "tiny_net.py").write_text(TORCH_SOURCE)
        args = ["tiny_net.py:make", "--input-shape", "1,3,8,8"]
    convert(tmp_path, [*args, "-o", "first"], hash_seed=1)
    convert(tmp_path, [*args, "-o", "second"], hash_seed=2)
    first, second = tmp_path / "first", tmp_path / "second"
    files = set(_files(first))
    assert EXPECTED <= files, sorted(files)
    if kind == "onnx_file":
        assert {"model_float16.tflite", "model_dynamic_range_quant.tflite", "model_full_integer_quant.tflite"} <= files
    assert any(p.startswith(os.path.join("saved_model", "variables")) for p in files), sorted(files)
    assert differences(first, second) == []

    # the comparison itself sees a change in any file and in a non-timing report entry
    third = tmp_path / "third"
    shutil.copytree(first, third)
    data = bytearray((third / "model_float32.tflite").read_bytes())
    data[len(data) // 2] ^= 1
    (third / "model_float32.tflite").write_bytes(bytes(data))
    report = json.loads((third / "report.json").read_text())
    report["rewritten_graph"]["nodes"] += 1
    report["timings_seconds"]["total"] += 1.0
    (third / "report.json").write_text(json.dumps(report))
    # (report.html no longer shows the report.json beside it)
    assert differences(first, third) == ["model_float32.tflite", "report.html", "report.json"]


def test_a_large_model_in_two_processes_gives_identical_files(tmp_path, monkeypatch):
    """The large-model path (threshold lowered): the .tflite made from stand-ins and filled from
    the SavedModel, with its buffers after the flatbuffer, is byte for byte the same in two runs."""
    from graph_convert.ir.tensors import EXTERNAL_DATA_ENV
    from tests.test_big_models import square_net

    onnx.save(square_net(), tmp_path / "big.onnx")
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "1000")
    convert(tmp_path, ["big.onnx", "-o", "first"], hash_seed=1)
    convert(tmp_path, ["big.onnx", "-o", "second"], hash_seed=2)
    files = set(_files(tmp_path / "first"))
    assert EXPECTED | {"model.rewritten.onnx.data"} <= files, sorted(files)
    report = json.loads((tmp_path / "first" / "report.json").read_text())
    assert report["weights"]["tflite"].startswith("converted with stand-ins"), report["weights"]
    assert differences(tmp_path / "first", tmp_path / "second") == []
