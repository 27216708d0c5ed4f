"""A conv-attention hybrid block (LeViT / EfficientViT-like): attention over a feature map with
q/k/v from one 1x1 conv, split per head and flattened over the spatial dims, ``qᵀ @ k`` plus a
learned attention bias gathered from a table by relative offset, softmax, ``v @ attnᵀ``, heads
merged back into channels, GELU spelled out as Erf, 1x1 projection conv; a conv MLP. Conv stem
in front, pooled head behind."""
from __future__ import annotations

import itertools

import torch
from torch import nn

from graph_convert_models._parts import ErfGELU, erf_gelu, randomize

INPUT_SHAPE = (1, 3, 32, 32)


class ConvAttention(nn.Module):
    def __init__(self, dim, heads, key_dim, res):
        super().__init__()
        self.heads, self.key_dim, self.d, self.scale = heads, key_dim, dim // heads, key_dim ** -0.5
        self.qkv = nn.Conv2d(dim, heads * (2 * key_dim + self.d), 1)
        self.proj = nn.Conv2d(heads * self.d, dim, 1)
        points = list(itertools.product(range(res), range(res)))
        offsets, idx = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idx.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.empty(heads, len(offsets)))
        self.register_buffer("bias_idx", torch.tensor(idx, dtype=torch.long).view(len(points), len(points)), persistent=False)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.heads, -1, h * w).split([self.key_dim, self.key_dim, self.d], dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale + self.attention_biases[:, self.bias_idx]
        x = (v @ attn.softmax(dim=-1).transpose(-2, -1)).reshape(b, self.heads * self.d, h, w)
        return self.proj(erf_gelu(x))


class Net(nn.Module):
    def __init__(self, dim=32, heads=4, key_dim=8, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), ErfGELU(), nn.Conv2d(dim, dim, 3, 2, 1))
        self.attn = ConvAttention(dim, heads, key_dim, INPUT_SHAPE[2] // 4)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), ErfGELU(), nn.Conv2d(2 * dim, dim, 1))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return self.head(x.mean((2, 3)))


def make():
    torch.manual_seed(0)
    return randomize(Net(), seed=3).eval()
