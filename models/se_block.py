"""Squeeze-and-excitation: global average pool -> 1x1 convs (one block) or Linear (another) ->
sigmoid / hardsigmoid -> broadcast multiply with the feature map; Hardswish activations."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 32, 32)


class SEConv(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class SELinear(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Linear(c, c // r)
        self.fc2 = nn.Linear(c // r, c)

    def forward(self, x):
        b, c = x.shape[0], x.shape[1]
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s)))).view(b, c, 1, 1)
        return x * s


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.se1 = SEConv(16)
        self.conv = nn.Conv2d(16, 32, 3, 1, 1)
        self.se2 = SELinear(32)
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        x = nn.functional.hardswish(self.stem(x))
        x = self.se1(x)
        x = nn.functional.hardswish(self.conv(x))
        return self.head(self.se2(x))


def make():
    torch.manual_seed(0)
    return SENet().eval()
