"""DenseNet-style: dense blocks (each layer's output concatenated onto all previous features
along channels), then a transition 1x1 conv + 2x2 average pool."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 32, 32)


class DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, 1, 1, bias=False)

    def forward(self, feats):
        return self.conv(torch.relu(self.bn(torch.cat(feats, 1))))


class DenseBlock(nn.Module):
    def __init__(self, c_in, growth, n):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(c_in + i * growth, growth) for i in range(n))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.block1 = DenseBlock(16, 8, 3)
        self.trans = nn.Sequential(nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 20, 1), nn.AvgPool2d(2, 2))
        self.block2 = DenseBlock(20, 8, 2)
        self.head = nn.Conv2d(36, 10, 1)

    def forward(self, x):
        return self.head(self.block2(self.trans(self.block1(self.stem(x)))))


def make():
    from graph_convert_models.resnet_style import _randomize_bn

    torch.manual_seed(0)
    m = DenseNet()
    _randomize_bn(m)
    return m.eval()
