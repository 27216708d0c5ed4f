"""A Hugging Face-style (BERT/ViT) self-attention layer: separate query/key/value Linears ->
view(B, N, H, D) -> transpose(1, 2), ``scaled_dot_product_attention`` (as Hugging Face calls it by
default; the dynamo exporter writes it with a NaN guard after the softmax), transpose back,
output dense + residual + LayerNorm, an intermediate dense with GELU spelled out as Erf.
Patch-embedding conv in front, mean-pooled head behind."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graph_convert_models._parts import erf_gelu, randomize

INPUT_SHAPE = (1, 3, 32, 32)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_size = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def split(self, t):
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_size).transpose(1, 2)

    def forward(self, x):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        ctx = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, n, self.heads * self.head_size)


class Layer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.output = nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)
        self.intermediate, self.out = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = self.ln1(x + self.output(self.attention(x)))
        return self.ln2(x + self.out(erf_gelu(self.intermediate(x))))


class Net(nn.Module):
    def __init__(self, dim=32, heads=4, patch=8, num_classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.layer = Layer(dim, heads)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.layer(t).mean(1))


def make():
    torch.manual_seed(0)
    return randomize(Net(), seed=2).eval()
