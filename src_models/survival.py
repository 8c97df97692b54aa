"""Survival pieces: a linear Cox risk head and the negative Cox partial log-likelihood.

The training code uses ``napari_radiogen.core.train.losses.cox_ph_loss`` (Breslow ties); the
pure-torch function here is the same quantity without tie handling, kept so ``src_models`` has
no dependency on the package.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class RiskHead(nn.Module):
    """Linear log-hazard-ratio head: (B, D) -> (B,)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h).squeeze(-1)


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor
                           ) -> torch.Tensor:
    """Negative Cox partial log-likelihood averaged over events (no tie correction)."""
    order = torch.argsort(time.reshape(-1), descending=True)
    r = risk.reshape(-1)[order].float()
    e = event.reshape(-1)[order].float()
    lse = torch.logcumsumexp(r, dim=0)
    n = e.sum()
    if n.item() == 0:
        return (risk * 0).sum()
    return -((r - lse) * e).sum() / n


def build_risk_head(in_dim: int = 64) -> RiskHead:
    return RiskHead(in_dim)
