"""Pieces shared by the attention blocks of issue 12: a GELU spelled out as Erf (what the
TorchScript exporter writes for ``nn.GELU``, and what hand-written models do), a patch embedding,
and a pass that gives every parameter random values (no zero bias, no unit LayerNorm gamma, no
tiny layer scale a converter could fold away)."""
from __future__ import annotations

import math

import torch
from torch import nn


def erf_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class ErfGELU(nn.Module):
    def forward(self, x):
        return erf_gelu(x)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every floating parameter drawn at random (scaled to its fan-in for matrices)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            fan = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan))
        for name, b in module.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g) + 0.5 if "var" in name else torch.randn(b.shape, generator=g) * 0.1)
    return module
