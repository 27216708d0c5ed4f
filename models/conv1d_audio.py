"""A Conv1d audio front-end: strided Conv1d on a waveform, depthwise/grouped Conv1d, MaxPool1d,
BatchNorm1d, then a global pool and a Linear classifier (NCW -> NWC)."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 1, 400)


class AudioNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 16, 10, 5), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 16, 3, 1, 1, groups=16), nn.Conv1d(16, 32, 1), nn.ReLU(),
            nn.MaxPool1d(2), nn.Conv1d(32, 32, 3, 2, 1, groups=4), nn.ReLU(),
        )
        self.fc = nn.Linear(32, 6)

    def forward(self, x):
        return self.fc(self.net(x).mean(-1))


def make():
    from graph_convert_models.resnet_style import _randomize_bn

    torch.manual_seed(0)
    m = AudioNet()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.running_var.uniform_(0.5, 1.5)
            mod.running_mean.uniform_(-0.1, 0.1)
    _randomize_bn(m)
    return m.eval()
