"""MMDLM-style multiple-instance predictor: per-sequence 2D slice encoders, gated attention
pooling per sequence (Ilse, Tomczak, Welling, ICML 2018), fusion (+ optional age/sex), one head
per task and an optional Cox risk head.

Shapes (B patients, S sequences, N slices, H x W pixels):

* ``forward(x, slice_mask, seq_mask, clinical)`` with ``x`` (B, S, N, H, W) float,
  ``slice_mask`` (B, N) bool (True = a real slice, False = padding), ``seq_mask`` (B, S) bool
  (False = the sequence is missing: its pooled embedding is zeroed and flagged, never imputed),
  ``clinical`` (B, 2) float ``[age_z, sex]`` (sex 1 = male, 0 = female) or None.
* ``forward_features(feats, ...)`` does the same from cached slice features (B, S, N, D), so the
  attention/fusion stage can be trained quickly on frozen encoders.

Returned dict: ``logits`` {task: (B, C)}, ``risk`` (B,) when the survival head exists,
``attention`` (B, S, N) (softmax over real slices of each sequence).

Builders (JSON-able kwargs only): :func:`build_mil`, :func:`build_mil_ensemble`,
:func:`build_slice_encoder`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TASKS = {"idh": 2, "codel_1p19q": 2, "grade": 2}


class SliceEncoder(nn.Module):
    """A MONAI 2D ResNet (from scratch) mapping (n, 1, H, W) slices to (n, feat_dim) features.

    ``widths=[64, 128, 256, 512]`` with ``layers=[2, 2, 2, 2]`` is ResNet-18 (512-d features,
    ``[3, 4, 6, 3]`` is ResNet-34); the shipped CPU model uses reduced widths.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), layers: Sequence[int] = (1, 1, 1, 1),
                 feat_dim: Optional[int] = None, conv1_stride: int = 2):
        super().__init__()
        from monai.networks.nets import ResNet
        self.net = ResNet(block="basic", layers=list(layers), block_inplanes=list(widths),
                          spatial_dims=2, n_input_channels=1, conv1_t_size=7,
                          conv1_t_stride=conv1_stride, feed_forward=False)
        out = int(widths[-1])
        self.proj = nn.Linear(out, feat_dim) if feat_dim and feat_dim != out else nn.Identity()
        self.out_dim = int(feat_dim or out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x))


class GatedAttention(nn.Module):
    """Gated attention MIL pooling: a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i)))."""

    def __init__(self, in_dim: int, hidden: int = 64):
        super().__init__()
        self.V = nn.Linear(in_dim, hidden)
        self.U = nn.Linear(in_dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor):
        """h (B, N, D), mask (B, N) bool -> pooled (B, D), weights (B, N)."""
        s = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        s = s.masked_fill(~mask, float("-inf"))
        a = torch.softmax(s, dim=1)
        a = torch.nan_to_num(a, nan=0.0)          # a bag with no real slice: all zeros
        return torch.bmm(a.unsqueeze(1), h).squeeze(1), a


class MILPredictor(nn.Module):
    def __init__(self, sequences: Sequence[str] = ("t1", "flair", "t1ce"),
                 tasks: Optional[Dict[str, int]] = None,
                 widths: Sequence[int] = (16, 32, 64, 128), layers: Sequence[int] = (1, 1, 1, 1),
                 feat_dim: Optional[int] = None, attn_hidden: int = 64, embed_dim: int = 64,
                 fusion_hidden: int = 64, clinical: bool = True, survival: bool = True,
                 dropout: float = 0.25, input_size: int = 64):
        super().__init__()
        self.sequences = list(sequences)
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.use_clinical = bool(clinical)
        self.input_size = int(input_size)
        self.encoders = nn.ModuleDict({s: SliceEncoder(widths, layers, feat_dim) for s in self.sequences})
        d = self.encoders[self.sequences[0]].out_dim
        self.feat_dim = d
        # per sequence: a small embedding then its own gated attention
        self.embed = nn.ModuleDict({s: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, embed_dim), nn.ReLU(),
                                                     nn.Dropout(dropout))
                                    for s in self.sequences})
        self.attention = nn.ModuleDict({s: GatedAttention(embed_dim, attn_hidden) for s in self.sequences})
        S = len(self.sequences)
        fused_in = S * embed_dim + S + (2 if self.use_clinical else 0)
        self.fusion = nn.Sequential(nn.Linear(fused_in, fusion_hidden), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({t: nn.Linear(fusion_hidden, int(c)) for t, c in self.tasks.items()})
        self.risk_head = nn.Linear(fusion_hidden, 1) if survival else None

    # -- stages -------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, slice_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, S, N, H, W) -> (B, S, N, D) slice features (padding slices are encoded too)."""
        B, S, N, H, W = x.shape
        out = []
        for i, s in enumerate(self.sequences):
            f = self.encoders[s](x[:, i].reshape(B * N, 1, H, W))
            out.append(f.reshape(B, N, -1))
        return torch.stack(out, dim=1)

    def forward_features(self, feats: torch.Tensor, slice_mask: torch.Tensor,
                         seq_mask: Optional[torch.Tensor] = None,
                         clinical: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        B, S, N, D = feats.shape
        if seq_mask is None:
            seq_mask = torch.ones(B, S, dtype=torch.bool, device=feats.device)
        pooled, atts = [], []
        for i, s in enumerate(self.sequences):
            h = self.embed[s](feats[:, i])
            p, a = self.attention[s](h, slice_mask)
            m = seq_mask[:, i].to(p.dtype).unsqueeze(1)
            pooled.append(p * m)
            atts.append(a * m)
        z = [torch.cat(pooled, dim=1), seq_mask.to(feats.dtype)]
        if self.use_clinical:
            if clinical is None:
                clinical = torch.zeros(B, 2, device=feats.device, dtype=feats.dtype)
            z.append(clinical.to(feats.dtype))
        h = self.fusion(torch.cat(z, dim=1))
        out = {"logits": {t: head(h) for t, head in self.heads.items()},
               "attention": torch.stack(atts, dim=1), "embedding": h}
        if self.risk_head is not None:
            out["risk"] = self.risk_head(h).squeeze(-1)
        return out

    def forward(self, x: torch.Tensor, slice_mask: torch.Tensor,
                seq_mask: Optional[torch.Tensor] = None,
                clinical: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return self.forward_features(self.encode(x, slice_mask), slice_mask, seq_mask, clinical)


class MILEnsemble(nn.Module):
    """K members (e.g. the K fold models of a CV run); the spread of their probabilities is the
    reported uncertainty. ``forward`` returns per-member outputs stacked on dim 0."""

    def __init__(self, n_members: int = 5, **kwargs):
        super().__init__()
        self.members = nn.ModuleList([MILPredictor(**kwargs) for _ in range(int(n_members))])
        m0 = self.members[0]
        self.sequences, self.tasks, self.input_size = m0.sequences, m0.tasks, m0.input_size
        self.use_clinical = m0.use_clinical

    def forward(self, x, slice_mask, seq_mask=None, clinical=None) -> Dict[str, torch.Tensor]:
        outs = [m(x, slice_mask, seq_mask, clinical) for m in self.members]
        res = {"probs": {t: torch.stack([torch.softmax(o["logits"][t], -1) for o in outs])
                         for t in self.tasks},
               "attention": torch.stack([o["attention"] for o in outs])}
        if "risk" in outs[0]:
            res["risk"] = torch.stack([o["risk"] for o in outs])
        return res


class SliceAuxModel(nn.Module):
    """Stage 1 of the two-stage training: the per-sequence encoders with slice-level heads
    (each slice inherits its patient's labels, as MMDLM does)."""

    def __init__(self, sequences: Sequence[str] = ("t1", "flair", "t1ce"),
                 tasks: Optional[Dict[str, int]] = None,
                 widths: Sequence[int] = (16, 32, 64, 128), layers: Sequence[int] = (1, 1, 1, 1),
                 feat_dim: Optional[int] = None, dropout: float = 0.25, **_ignored):
        super().__init__()
        self.sequences = list(sequences)
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.encoders = nn.ModuleDict({s: SliceEncoder(widths, layers, feat_dim) for s in self.sequences})
        d = self.encoders[self.sequences[0]].out_dim
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({s: nn.ModuleDict({t: nn.Linear(d, int(c)) for t, c in self.tasks.items()})
                                    for s in self.sequences})

    def forward(self, x: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        """x (n, S, H, W) -> {seq: {task: logits (n, C)}}."""
        out = {}
        for i, s in enumerate(self.sequences):
            f = self.drop(self.encoders[s](x[:, i:i + 1]))
            out[s] = {t: h(f) for t, h in self.heads[s].items()}
        return out


def masked_ce(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """Cross-entropy ignoring targets < 0 (missing labels); 0 when nothing is labelled."""
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep], weight=weight)


# -- builders (JSON-able kwargs) -------------------------------------------------------------
def build_mil(**kwargs) -> MILPredictor:
    return MILPredictor(**kwargs)


def build_mil_ensemble(**kwargs) -> MILEnsemble:
    return MILEnsemble(**kwargs)


def build_slice_encoder(**kwargs) -> SliceEncoder:
    return SliceEncoder(**kwargs)


def build_slice_aux(**kwargs) -> SliceAuxModel:
    return SliceAuxModel(**kwargs)


def copy_encoders(aux: SliceAuxModel, mil: MILPredictor) -> None:
    """Load the stage-1 encoders into a MIL predictor."""
    for s in mil.sequences:
        mil.encoders[s].load_state_dict(aux.encoders[s].state_dict())


def set_encoders_trainable(model: MILPredictor, trainable: bool) -> List[str]:
    names = []
    for n, p in model.encoders.named_parameters():
        p.requires_grad_(trainable)
        names.append(n)
    return names
