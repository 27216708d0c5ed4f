"""Shared by the tests that export a PyTorch module and convert it: export with either exporter
(quietly), run the converted .tflite on the module's own inputs (through the I/O layout the
conversion chose), and list the ops that are not TFLite builtins."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch


def export(module: torch.nn.Module, inputs: tuple, path: str, exporter: str, opset: int) -> None:
    """``exporter``: ``"dynamo"`` or ``"torchscript"``."""
    kw = {"dynamo": exporter == "dynamo", "opset_version": opset}
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, path, **kw)


def run_tflite(result, inputs: tuple) -> list[np.ndarray]:
    """The converted .tflite's outputs for ``inputs``, in the source layout and order."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=result.tflite).get_signature_runner("serving_default")
    io_ = result.report["io"]
    feeds = {i["tf_name"]: t.numpy().transpose(i["layout_perm"]) if i["layout_perm"] else t.numpy()
             for i, t in zip(io_["inputs"], inputs)}
    got = runner(**feeds)
    outs = []
    for o in io_["outputs"]:
        y = got[o["tf_name"]]
        outs.append(y.transpose(np.argsort(o["layout_perm"])) if o["layout_perm"] else y)
    return outs


def flex_or_custom(result) -> list[str]:
    """Ops in the .tflite that are not builtin kernels (Flex delegates or custom ops)."""
    ops = result.report["tflite"]["ops"]
    return [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]


def max_error_over_scale(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| over max |ref|: the error against the output's own scale."""
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))
