"""A Swin-like stage: patch embedding, window partition via reshape/permute, shifted windows via
torch.roll (cyclic shift) with an attention mask, relative position bias gathered from a table,
window reverse, MLP, then patch merging."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 32, 32)


def window_partition(x, w):
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(win, w, h, wd):
    b = win.shape[0] // ((h // w) * (wd // w))
    x = win.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, w):
        super().__init__()
        self.heads, self.w, self.scale = heads, w, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * w - 1) ** 2, heads) * 0.1)
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("index", (rel[..., 0] * (2 * w - 1) + rel[..., 1]).flatten(), persistent=False)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.table[self.index].view(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        y = attn.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, res, w, shift):
        super().__init__()
        self.res, self.w, self.shift = res, w, shift
        self.n1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, heads, w)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        mask = None
        if shift:
            img = torch.zeros(1, res, res, 1)
            cnt = 0
            for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
                for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
                    img[:, hs, ws, :] = cnt
                    cnt += 1
            mw = window_partition(img, w).squeeze(-1)
            mask = (mw.unsqueeze(1) - mw.unsqueeze(2)).ne(0).float() * -100.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        b, l, c = x.shape
        h = wd = self.res
        y = self.n1(x).view(b, h, wd, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = window_reverse(self.attn(window_partition(y, self.w), self.mask), self.w, h, wd)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y.reshape(b, l, c)
        return x + self.mlp(self.n2(x))


class SwinTiny(nn.Module):
    def __init__(self, dim=32, num_classes=10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)  # 8x8 tokens
        self.norm0 = nn.LayerNorm(dim)
        self.b1 = SwinBlock(dim, 4, 8, 4, 0)
        self.b2 = SwinBlock(dim, 4, 8, 4, 2)
        self.merge_norm = nn.LayerNorm(4 * dim)
        self.merge = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.head = nn.Linear(2 * dim, num_classes)

    def forward(self, x):
        t = self.norm0(self.embed(x).flatten(2).transpose(1, 2))
        t = self.b2(self.b1(t))
        b, l, c = t.shape
        g = t.view(b, 8, 8, c)
        g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1).view(b, -1, 4 * c)
        g = self.merge(self.merge_norm(g))
        return self.head(g.mean(1))


def make():
    torch.manual_seed(0)
    return SwinTiny().eval()
