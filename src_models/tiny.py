"""Tiny 2D CNN classifier (used by the training engine's demo tasks and by tests).

Plain torch, JSON-able builder kwargs, no I/O.
"""
from __future__ import annotations

import torch
from torch import nn


class TinyCNN2d(nn.Module):
    """conv-bn-relu x depth with stride-2 downsampling, global average pool, linear head."""

    def __init__(self, in_channels: int = 1, n_classes: int = 2, width: int = 8, depth: int = 3):
        super().__init__()
        layers = []
        c = in_channels
        for i in range(depth):
            w = width * (2 ** i)
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def build_tiny_cnn2d(in_channels: int = 1, n_classes: int = 2, width: int = 8,
                     depth: int = 3) -> TinyCNN2d:
    return TinyCNN2d(in_channels=in_channels, n_classes=n_classes, width=width, depth=depth)
