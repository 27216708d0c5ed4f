"""Small example PyTorch models (our own code) used by the demo, the tests and the benchmarks.

Each module has ``make()`` returning an ``nn.Module`` in eval mode and ``INPUT_SHAPE``.
"""
from __future__ import annotations

import importlib

MODELS = ["resnet_style", "mobilenetv2_style", "convtranspose_decoder"]


def load(name: str):
    """(module, input_shape) of a bundled model by name."""
    mod = importlib.import_module(f"models.{name}")
    return mod.make(), mod.INPUT_SHAPE
