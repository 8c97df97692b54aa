"""Training mode for partly frozen networks (plain torch, no I/O)."""
from __future__ import annotations

from torch import nn


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, but normalisation layers whose parameters are all frozen stay in eval
    mode: a frozen block keeps the running statistics it was trained with and normalises with
    them, as it will at inference."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()
    return model
