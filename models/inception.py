"""Inception-style: parallel 1x1, 3x3, 5x5 and factorised 1x7/7x1 branches (asymmetric kernels with
asymmetric padding), a max-pool branch with padding, a ceil_mode max pool, concat along channels."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 35, 35)


class InceptionBlock(nn.Module):
    def __init__(self, c_in):
        super().__init__()
        self.b1 = nn.Conv2d(c_in, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(c_in, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(c_in, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 5, padding=2))
        self.b7 = nn.Sequential(nn.Conv2d(c_in, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, (1, 7), padding=(0, 3)), nn.ReLU(),
                                nn.Conv2d(8, 8, (7, 1), padding=(3, 0)))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c_in, 8, 1))

    def forward(self, x):
        return torch.relu(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.b7(x), self.bp(x)], 1))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.block = InceptionBlock(16)
        self.pad_conv = nn.Conv2d(44, 16, (3, 2), stride=2, padding=(1, 0))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pad_conv(self.block(self.stem(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def make():
    torch.manual_seed(0)
    return Inception().eval()
