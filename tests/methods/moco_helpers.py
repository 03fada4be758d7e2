"""Tiny backbones and in-memory loaders for the MoCo tests (importable: pytest puts this
folder on sys.path)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


def tiny_backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def tiny_moco(**kw):
    from ssl_cropmix.methods.moco import MoCoCropMix

    args = dict(backbone=tiny_backbone(), proj_hidden_dim=16, out_dim=8, queue_size=32, lr=0.05)
    args.update(kw)
    return MoCoCropMix(**args)


class PairDataset(Dataset):
    """``((query, key), label)`` with fixed base images; the key gets torch-RNG noise so
    the RNG stream matters for resume tests."""

    def __init__(self, n: int = 8, size: int = 16, noise: bool = True) -> None:
        g = torch.Generator().manual_seed(123)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.arange(n) % 3
        self.noise = noise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        k = x + 0.1 * torch.randn_like(x) if self.noise else x.flip(-1)
        return (x, k), self.labels[i]


def pair_loader(n: int = 8, batch_size: int = 4, shuffle: bool = True, **kw) -> DataLoader:
    return DataLoader(PairDataset(n, **kw), batch_size=batch_size, shuffle=shuffle, drop_last=True)
