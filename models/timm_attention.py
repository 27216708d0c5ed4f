"""A timm-style ViT block: one qkv Linear -> reshape(B, N, 3, H, D) -> permute(2, 0, 3, 1, 4) ->
unbind, q scaled, ``q @ kᵀ``, softmax, ``@ v``, ``transpose(1, 2).reshape``, proj; LayerScale;
an MLP with GELU spelled out as Erf. Patch-embedding conv in front, mean-pooled head behind."""
from __future__ import annotations

import torch
from torch import nn

from graph_convert_models._parts import ErfGELU, randomize

INPUT_SHAPE = (1, 3, 32, 32)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.ls1 = nn.Parameter(torch.empty(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), ErfGELU(), nn.Linear(dim * 2, dim))
        self.ls2 = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class Net(nn.Module):
    def __init__(self, dim=32, heads=4, patch=8, num_classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.empty(1, (INPUT_SHAPE[2] // patch) ** 2, dim))
        self.block = Block(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.block(t)).mean(1))


def make():
    torch.manual_seed(0)
    return randomize(Net(), seed=1).eval()
