"""A small decoder: ConvTranspose2d upsampling (stride 2 with output_padding 1, one layer with
groups > 1, one with dilation 2), BN, ReLU, two upsampling paths concatenated along channels,
and a 1x1 output conv."""
from __future__ import annotations

import torch
from torch import nn

from graph_convert_models.resnet_style import _randomize_bn

INPUT_SHAPE = (1, 16, 8, 8)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(16, 32, 3, stride=2, padding=1, output_padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.up2 = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.up3 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.up3_side = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=2, output_padding=1, dilation=2)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        y = torch.relu(self.bn1(self.up1(x)))  # 32 x 16 x 16
        y = torch.relu(self.bn2(self.up2(y)))  # 16 x 32 x 32
        y = torch.cat([self.up3(y), torch.relu(self.up3_side(y))], dim=1)  # 16 x 64 x 64
        return torch.sigmoid(self.out(y))


def make() -> nn.Module:
    torch.manual_seed(0)
    m = Decoder()
    _randomize_bn(m)
    return m.eval()
