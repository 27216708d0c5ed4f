"""Segmentation head (DeepLab/PSP-like): atrous convs, adaptive average pooling to 1 and to 2 and
3, bilinear upsampling (align_corners False and True), nearest upsampling, concat of levels."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INPUT_SHAPE = (1, 3, 48, 48)


class SegHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU())
        self.a1 = nn.Conv2d(24, 8, 1)
        self.a6 = nn.Conv2d(24, 8, 3, padding=2, dilation=2)
        self.a12 = nn.Conv2d(24, 8, 3, padding=4, dilation=4)
        self.p1 = nn.Conv2d(24, 8, 1)
        self.p2 = nn.Conv2d(24, 8, 1)
        self.p3 = nn.Conv2d(24, 8, 1)
        self.fuse = nn.Conv2d(48, 16, 1)
        self.cls = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        f = self.backbone(x)  # 12 x 12
        size = f.shape[-2:]
        g = F.interpolate(self.p1(F.adaptive_avg_pool2d(f, 1)), size=size, mode="nearest")
        p2 = F.interpolate(self.p2(F.adaptive_avg_pool2d(f, 2)), size=size, mode="bilinear", align_corners=False)
        p3 = F.interpolate(self.p3(F.adaptive_avg_pool2d(f, 3)), size=size, mode="bilinear", align_corners=True)
        y = torch.cat([self.a1(f), self.a6(f), self.a12(f), g, p2, p3], 1)
        y = self.cls(torch.relu(self.fuse(y)))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.interpolate(y, scale_factor=2.0, mode="nearest")


def make():
    torch.manual_seed(0)
    return SegHead().eval()
