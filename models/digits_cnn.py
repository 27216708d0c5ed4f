"""A small CNN for scikit-learn's bundled 8x8 handwritten digits, trained in seconds with fixed seeds:
real data, offline, for measuring what quantization costs (float32 vs fp16 vs int8 vs int8-full).

``make()`` returns the untrained net (like every model here); ``trained()`` trains it and returns
the net with its data split. The split is fixed (stratified, seed 0): 1,257 training images,
540 held-out test images, pixels scaled to [0, 1] (the data set's 0..16 divided by 16).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

INPUT_SHAPE = (1, 1, 8, 8)


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),  # 4x4
            nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def make() -> nn.Module:
    torch.manual_seed(0)
    return DigitsCNN().eval()


@dataclass
class Digits:
    """The fixed split, NCHW float32 images in [0, 1] and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits() -> Digits:
    """The bundled data set (ships inside scikit-learn, nothing is downloaded)."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target.astype(np.int64), test_size=0.3, random_state=0, stratify=d.target)
    return Digits(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te)


def train(model: nn.Module, data: Digits, epochs: int = 8, seed: int = 0, batch: int = 32) -> nn.Module:
    """Adam, cross-entropy, fixed seeds and one thread so the weights are the same on every run."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.from_numpy(data.x_train)
        y = torch.from_numpy(data.y_train)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch):
                idx = order[i:i + batch]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def trained(epochs: int = 8, seed: int = 0) -> tuple[nn.Module, Digits]:
    data = load_digits()
    return train(make(), data, epochs, seed), data


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(np.argmax(logits.reshape(len(labels), -1), axis=1) == labels) * 100.0)
