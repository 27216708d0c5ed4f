"""Small example PyTorch models (our own code) used by the demo, the tests and the benchmarks.

Each module has ``make()`` returning an ``nn.Module`` in eval mode and ``INPUT_SHAPE``.
"""
from __future__ import annotations

import importlib

MODELS = ["resnet_style", "mobilenetv2_style", "convtranspose_decoder"]
# the layout families of issue 3 (tests/test_families.py)
FAMILIES = ["se_block", "channel_shuffle", "dense_block", "inception", "convnext_block", "seg_head",
            "flatten_head", "pixel_shuffle", "unet", "conv1d_audio", "conv3d_net"]
# transformers (issue 4): modules may define example_inputs() when the input is not one float tensor
TRANSFORMERS = ["vit_tiny", "swin_block", "bert_tiny"]
# attention as real code writes it (issue 12): timm-style, Hugging Face-style, conv-attention hybrid
ATTENTION = ["timm_attention", "hf_attention", "conv_attention"]
# real-size nets for the conversion speed/memory benchmark (benchmarks/compare.py); too slow for tests
BIG = ["resnet50_style", "vit_small"]


def load(name: str):
    """(module, input_shape) of a bundled model by name."""
    mod = importlib.import_module(f"graph_convert_models.{name}")
    return mod.make(), mod.INPUT_SHAPE


def example_inputs(name: str, seed: int = 0) -> tuple:
    """Example inputs for a bundled model: its own example_inputs(), else one seeded float tensor."""
    import torch

    mod = importlib.import_module(f"graph_convert_models.{name}")
    if hasattr(mod, "example_inputs"):
        return tuple(mod.example_inputs())
    return (torch.randn(*mod.INPUT_SHAPE, generator=torch.Generator().manual_seed(seed)),)
