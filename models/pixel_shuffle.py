"""Sub-pixel convolution (ESPCN-like): PixelUnshuffle down, convs, PixelShuffle up
(DepthToSpace / SpaceToDepth in the exported graph)."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 32, 32)


class PixelShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)  # 12 x 16 x 16
        self.body = nn.Sequential(nn.Conv2d(12, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 3 * 16, 3, 1, 1))
        self.shuffle = nn.PixelShuffle(4)  # 3 x 64 x 64

    def forward(self, x):
        return self.shuffle(self.body(self.unshuffle(x)))


def make():
    torch.manual_seed(0)
    return PixelShuffleNet().eval()
