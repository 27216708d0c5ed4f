"""A small Conv3d net (video/volume): Conv3d with stride and padding, BatchNorm3d, MaxPool3d,
AvgPool3d, ConvTranspose3d, NCDHW -> NDHWC."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 2, 8, 16, 16)


class VolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(2, 8, 3, 1, 1), nn.BatchNorm3d(8), nn.ReLU(), nn.MaxPool3d(2),
                                 nn.Conv3d(8, 16, 3, (1, 2, 2), 1), nn.ReLU(), nn.AvgPool3d((1, 2, 2)))
        self.up = nn.ConvTranspose3d(16, 8, 2, 2)
        self.out = nn.Conv3d(8, 3, 1)

    def forward(self, x):
        return self.out(torch.relu(self.up(self.enc(x))))


def make():
    torch.manual_seed(0)
    return VolNet().eval()
