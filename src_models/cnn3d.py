"""A 3D CNN predictor on the whole multi-sequence volume (MONAI ResNet, 3D, from scratch), with
one head per task, optional age/sex fusion and a Cox risk head, plus layer-freezing helpers for
low-memory fine-tuning.

Input ``x`` (B, S, D, H, W) with missing sequences as zero channels; ``seq_mask`` (B, S) is
appended to the fused vector so the network knows a channel is absent (never imputed).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .freeze import train_mode  # noqa: F401  (re-exported: frozen stages' BatchNorm)

DEFAULT_TASKS = {"idh": 2, "codel_1p19q": 2, "grade": 2}
#: freezing stages, in order, of the MONAI ResNet trunk
STAGES = ("net.conv1", "net.bn1", "net.layer1", "net.layer2", "net.layer3", "net.layer4")


class CNN3DPredictor(nn.Module):
    def __init__(self, sequences: Sequence[str] = ("t1", "flair", "t1ce"),
                 tasks: Optional[Dict[str, int]] = None,
                 widths: Sequence[int] = (8, 16, 32, 64), layers: Sequence[int] = (1, 1, 1, 1),
                 clinical: bool = True, survival: bool = True, dropout: float = 0.3,
                 depth: int = 32, input_size: int = 64):
        super().__init__()
        from monai.networks.nets import ResNet
        self.sequences = list(sequences)
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.use_clinical = bool(clinical)
        self.depth, self.input_size = int(depth), int(input_size)
        self.net = ResNet(block="basic", layers=list(layers), block_inplanes=list(widths),
                          spatial_dims=3, n_input_channels=len(self.sequences), conv1_t_size=7,
                          conv1_t_stride=2, feed_forward=False)
        S = len(self.sequences)
        d = int(widths[-1]) + S + (2 if self.use_clinical else 0)
        self.fusion = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, 64), nn.ReLU(),
                                    nn.Dropout(dropout))
        self.heads = nn.ModuleDict({t: nn.Linear(64, int(c)) for t, c in self.tasks.items()})
        self.risk_head = nn.Linear(64, 1) if survival else None

    def forward(self, x: torch.Tensor, seq_mask: Optional[torch.Tensor] = None,
                clinical: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        B, S = x.shape[:2]
        if seq_mask is None:
            seq_mask = torch.ones(B, S, dtype=torch.bool, device=x.device)
        x = x * seq_mask.to(x.dtype)[:, :, None, None, None]
        z = [self.net(x), seq_mask.to(x.dtype)]
        if self.use_clinical:
            z.append(torch.zeros(B, 2, device=x.device) if clinical is None else clinical.to(x.dtype))
        h = self.fusion(torch.cat(z, dim=1))
        out = {"logits": {t: hd(h) for t, hd in self.heads.items()}}
        if self.risk_head is not None:
            out["risk"] = self.risk_head(h).squeeze(-1)
        return out


class CNN3DEnsemble(nn.Module):
    def __init__(self, n_members: int = 5, **kwargs):
        super().__init__()
        self.members = nn.ModuleList([CNN3DPredictor(**kwargs) for _ in range(int(n_members))])
        m0 = self.members[0]
        self.sequences, self.tasks, self.use_clinical = m0.sequences, m0.tasks, m0.use_clinical
        self.depth, self.input_size = m0.depth, m0.input_size

    def forward(self, x, seq_mask=None, clinical=None):
        outs = [m(x, seq_mask, clinical) for m in self.members]
        res = {"probs": {t: torch.stack([torch.softmax(o["logits"][t], -1) for o in outs])
                         for t in self.tasks}}
        if "risk" in outs[0]:
            res["risk"] = torch.stack([o["risk"] for o in outs])
        return res


def freeze_stages(model: nn.Module, n_stages: int) -> List[str]:
    """Freeze the first ``n_stages`` stages of the trunk (conv1, bn1, layer1, ...); return the
    frozen parameter names. Frozen BatchNorm layers also stop updating running stats when the
    model is put in train mode through :func:`train_mode` (``src_models.freeze``)."""
    prefixes = STAGES[:max(0, int(n_stages))]
    frozen = []
    for n, p in model.named_parameters():
        if any(n.startswith(s) for s in prefixes):
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def trainable_fraction(model: nn.Module) -> float:
    tot = sum(p.numel() for p in model.parameters())
    tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return tr / max(tot, 1)


def build_cnn3d(**kwargs) -> CNN3DPredictor:
    return CNN3DPredictor(**kwargs)


def build_cnn3d_ensemble(**kwargs) -> CNN3DEnsemble:
    return CNN3DEnsemble(**kwargs)
