"""A tiny BERT-like encoder: int64 token ids and attention mask inputs, word/position/token-type
embedding gathers, additive attention mask, multi-head attention, GELU FFN, pooler with tanh."""
from __future__ import annotations

import torch
from torch import nn

SEQ = 16
VOCAB = 100
INPUT_SHAPE = (1, SEQ)  # token ids; the attention mask has the same shape


class Layer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def split(self, t):
        b, s, c = t.shape
        return t.view(b, s, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x, ext_mask):
        b, s, c = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5 + ext_mask
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, c)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.ff(x))


class BertTiny(nn.Module):
    def __init__(self, dim=32, heads=4, depth=2):
        super().__init__()
        self.word = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(SEQ, dim)
        self.token_type = nn.Embedding(2, dim)
        self.ln = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(depth))
        self.pool = nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask):
        s = input_ids.shape[1]
        pos = torch.arange(s, device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.pos(pos) + self.token_type(torch.zeros_like(input_ids))
        x = self.ln(x)
        ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, ext)
        return x, torch.tanh(self.pool(x[:, 0]))


def make():
    torch.manual_seed(0)
    return BertTiny().eval()


def example_inputs(batch: int = 1):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    mask = torch.ones(batch, SEQ, dtype=torch.int64)
    mask[:, SEQ - 4:] = 0
    return ids, mask
