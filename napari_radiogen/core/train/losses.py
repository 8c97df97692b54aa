"""Losses the tasks pick from the config's ``train.loss`` entry.

* ``ce``: cross-entropy (optional ``class_weights``, ``label_smoothing``)
* ``focal``: focal loss (Lin et al. 2017), ``gamma`` and optional ``class_weights`` (alpha)
* ``dicece``: MONAI ``DiceCELoss`` for segmentation (softmax, one-hot targets)
* ``cox``: negative Cox partial log-likelihood (Breslow ties) for survival risk heads
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class FocalLoss(nn.Module):
    """Multi-class focal loss on logits ``(N, C, ...)`` with integer targets ``(N, ...)``."""

    def __init__(self, gamma: float = 2.0, class_weights: Optional[Sequence[float]] = None,
                 reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.gamma = float(gamma)
        self.reduction = reduction
        self.ignore_index = ignore_index
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", w, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        valid = target != self.ignore_index
        t = target.clamp_min(0)
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, t.unsqueeze(1)).squeeze(1)
        p_t = logp_t.exp()
        loss = -((1 - p_t) ** self.gamma) * logp_t
        if self.weight is not None:
            loss = loss * self.weight.to(loss.device)[t]
        loss = loss * valid
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "none":
            return loss
        if self.weight is not None:
            denom = (self.weight.to(loss.device)[t] * valid).sum().clamp_min(1e-8)
        else:
            denom = valid.sum().clamp_min(1)
        return loss.sum() / denom


def cox_ph_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow handling of ties), mean over events.

    ``risk``: (N,) log hazard ratios (higher = worse); ``time``: (N,); ``event``: (N,) 1 = death.
    Returns 0 (with a gradient) when the batch has no event.
    """
    risk = risk.reshape(-1).float()
    time = time.reshape(-1).float()
    event = event.reshape(-1).float()
    order = torch.argsort(time, descending=True)
    r, t, e = risk[order], time[order], event[order]
    # log of the sum of exp(risk) over the risk set {j: t_j >= t_i}; with ties, the risk set of
    # every tied subject includes all subjects of the tie (Breslow)
    lse = torch.logcumsumexp(r, dim=0)
    # for ties, use the value at the last index of each tied block (largest risk set)
    uniq, inverse, counts = torch.unique_consecutive(t, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0) - 1
    lse = lse[last][inverse]
    n_events = e.sum()
    if n_events.item() == 0:
        return (risk * 0).sum()
    return -((r - lse) * e).sum() / n_events


class CoxPHLoss(nn.Module):
    def forward(self, risk, time, event):  # noqa: D401
        return cox_ph_loss(risk, time, event)


def make_loss(spec: Optional[Dict[str, Any]] = None, *, n_classes: Optional[int] = None
              ) -> nn.Module:
    """Build the loss named by ``spec`` (the config's ``train.loss``)."""
    spec = dict(spec or {"name": "ce"})
    name = str(spec.pop("name", "ce")).lower()
    cw = spec.pop("class_weights", None)
    if cw is not None and n_classes is not None and len(cw) != n_classes:
        raise ConfigError(f"train.loss.class_weights has {len(cw)} values for {n_classes} classes")
    if name in ("ce", "cross_entropy", "crossentropy"):
        w = None if cw is None else torch.as_tensor(cw, dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=w, label_smoothing=float(spec.pop("label_smoothing", 0)))
    if name == "focal":
        return FocalLoss(gamma=float(spec.pop("gamma", 2.0)), class_weights=cw)
    if name in ("dicece", "dice_ce", "dice+ce"):
        from monai.losses import DiceCELoss
        kw = {"to_onehot_y": True, "softmax": True}
        kw.update(spec)
        if cw is not None:
            kw["weight"] = torch.as_tensor(cw, dtype=torch.float32)
        return DiceCELoss(**kw)
    if name == "dice":
        from monai.losses import DiceLoss
        kw = {"to_onehot_y": True, "softmax": True}
        kw.update(spec)
        return DiceLoss(**kw)
    if name in ("cox", "coxph"):
        return CoxPHLoss()
    raise ConfigError(f"unknown loss {name!r} (known: ce, focal, dicece, dice, cox)")


def balanced_class_weights(labels: Sequence[int], n_classes: int) -> list:
    """Inverse-frequency weights normalised to mean 1 (classes absent get weight 0)."""
    import numpy as np
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    return [float(x) for x in w]
