"""A small UNet: conv encoder with max pooling, ConvTranspose2d upsampling, skip concatenation,
1x1 output conv."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 32, 32)


def double_conv(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1 = double_conv(3, 8)
        self.e2 = double_conv(8, 16)
        self.mid = double_conv(16, 32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.d2 = double_conv(32, 16)
        self.up1 = nn.ConvTranspose2d(16, 8, 2, 2)
        self.d1 = double_conv(16, 8)
        self.out = nn.Conv2d(8, 2, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.d2(torch.cat([self.up2(m), e2], 1))
        d1 = self.d1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


def make():
    from graph_convert_models.resnet_style import _randomize_bn

    torch.manual_seed(0)
    m = UNet()
    _randomize_bn(m)
    return m.eval()
