"""Late fusion of trained predictors as a plain torch module (no I/O): the member models run
on their own (each with its own input), and this module combines what they output. It holds
no learnt weights, only the scale of each member's survival risk, so that risks of different
models (a Cox head, a Cox model on features) can be averaged."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn


class LateFusion(nn.Module):
    """Equal-weight fusion of ``members`` (model names, kept for the card): the mean of their
    class probabilities, and the mean of their risks standardised by ``risk_mean`` /
    ``risk_sd`` (each member's risk over its training patients)."""

    def __init__(self, members: Sequence[str], risk_mean: Optional[Sequence[float]] = None,
                 risk_sd: Optional[Sequence[float]] = None):
        super().__init__()
        self.members = list(members)
        n = len(self.members)
        self.register_buffer("risk_mean", torch.tensor(
            list(risk_mean) if risk_mean is not None else [0.0] * n, dtype=torch.float32))
        self.register_buffer("risk_sd", torch.tensor(
            list(risk_sd) if risk_sd is not None else [1.0] * n, dtype=torch.float32))

    def forward(self, probs: Dict[str, torch.Tensor], risks: Optional[torch.Tensor] = None
                ) -> Dict[str, torch.Tensor]:
        """``probs[task]``: (members, classes) probabilities; ``risks``: (members,) or None.
        Returns ``{"probs": {task: (classes,)}, "risk": ()}`` (risk only with ``risks``)."""
        out = {"probs": {t: p.mean(0) for t, p in probs.items()}}
        if risks is not None:
            out["risk"] = ((risks - self.risk_mean) / self.risk_sd.clamp_min(1e-6)).mean()
        return out


def late_fusion(**kwargs) -> LateFusion:
    return LateFusion(**kwargs)
