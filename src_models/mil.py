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

    ``tumour_pool=True``: the encoder also predicts a coarse in-plane tumour map from its
    ``layer2`` features (8 x 8 for a 64 px input; trained with the expert masks as auxiliary
    supervision, see :class:`SliceAuxModel`) and appends to the global feature the ``layer3``
    features pooled with that map as weights, plus the map's mean: the slice feature looks at
    the tumour the network itself finds (no mask is needed at inference).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), layers: Sequence[int] = (1, 1, 1, 1),
                 feat_dim: Optional[int] = None, conv1_stride: int = 2, tumour_pool: bool = False):
        super().__init__()
        from monai.networks.nets import ResNet
        self.net = ResNet(block="basic", layers=list(layers), block_inplanes=list(widths),
                          spatial_dims=2, n_input_channels=1, conv1_t_size=7,
                          conv1_t_stride=conv1_stride, feed_forward=False)
        out = int(widths[-1])
        self.tumour_pool = bool(tumour_pool)
        if self.tumour_pool:
            c2 = int(widths[1])
            self.tumour_map = nn.Sequential(nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, 1, 1))
            out = out + int(widths[2]) + 1
        self.proj = nn.Linear(out, feat_dim) if feat_dim and feat_dim != out else nn.Identity()
        self.out_dim = int(feat_dim or out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tumour_pool:
            return self.proj(self.net(x))
        return self.forward_maps(x)[0]

    def forward_maps(self, x: torch.Tensor, layer: str = "layer2"):
        """Like :meth:`forward` (same result) and also the feature map after ``layer``
        (``layer1`` .. ``layer4``): ``(features (n, D), map (n, C, h, w))``; with
        ``tumour_pool`` also the tumour-map logits (n, 1, h2, w2) as a third item."""
        n = self.net
        h = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            h = n.maxpool(h)
        fmap, maps = None, {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(n, name)(h)
            maps[name] = h
            if name == layer:
                fmap = h
        h = n.avgpool(h).flatten(1)
        if n.fc is not None:
            h = n.fc(h)
        if not self.tumour_pool:
            return self.proj(h), fmap
        logits = self.tumour_map(maps["layer2"])
        prob = torch.sigmoid(logits)
        f3 = maps["layer3"]
        w = F.adaptive_avg_pool2d(prob, f3.shape[-2:])
        pooled = (f3 * w).sum((-2, -1)) / (w.sum((-2, -1)) + 1e-3)
        feat = torch.cat([h, pooled, prob.mean((-2, -1))], dim=1)
        return self.proj(feat), fmap, logits


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
                 dropout: float = 0.25, input_size: int = 64, tumour_pool: bool = False):
        super().__init__()
        self.sequences = list(sequences)
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.use_clinical = bool(clinical)
        self.input_size = int(input_size)
        self.encoders = nn.ModuleDict({s: SliceEncoder(widths, layers, feat_dim, tumour_pool=tumour_pool)
                                       for s in self.sequences})
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
    (each slice inherits its patient's labels, as MMDLM does).

    ``tumour_heads=True`` adds, per sequence, two auxiliary TRAINING-ONLY heads supervised with
    the expert tumour masks of the training packs: a slice-level tumour-presence logit on the
    pooled feature (key ``"tumour"``, (n,)) and a coarse in-plane tumour map from the feature
    map after ``tumour_layer`` (key ``"tumour_map"``, (n, 1, h, w) logits; 8 x 8 for a 64 px
    input after ``layer2``). Only the encoders go into the :class:`MILPredictor`, so inference
    stays segmentation-free and the shipped architecture is unchanged."""

    def __init__(self, sequences: Sequence[str] = ("t1", "flair", "t1ce"),
                 tasks: Optional[Dict[str, int]] = None,
                 widths: Sequence[int] = (16, 32, 64, 128), layers: Sequence[int] = (1, 1, 1, 1),
                 feat_dim: Optional[int] = None, dropout: float = 0.25,
                 tumour_heads: bool = False, tumour_layer: str = "layer2", tumour_pool: bool = False,
                 **_ignored):
        super().__init__()
        self.sequences = list(sequences)
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.encoders = nn.ModuleDict({s: SliceEncoder(widths, layers, feat_dim, tumour_pool=tumour_pool)
                                       for s in self.sequences})
        self.tumour_pool = bool(tumour_pool)
        d = self.encoders[self.sequences[0]].out_dim
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({s: nn.ModuleDict({t: nn.Linear(d, int(c)) for t, c in self.tasks.items()})
                                    for s in self.sequences})
        self.tumour_heads = bool(tumour_heads)
        self.tumour_layer = str(tumour_layer)
        if self.tumour_heads:
            c = int(widths[int(self.tumour_layer[-1]) - 1])
            self.presence = nn.ModuleDict({s: nn.Linear(d, 1) for s in self.sequences})
            if not self.tumour_pool:      # else the encoders' own tumour map is supervised
                self.tumour_map = nn.ModuleDict({s: nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                                                  nn.Conv2d(c, 1, 1))
                                                 for s in self.sequences})

    def forward(self, x: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        """x (n, S, H, W) -> {seq: {task: logits (n, C)}} (+ ``tumour``, ``tumour_map``)."""
        out = {}
        for i, s in enumerate(self.sequences):
            if self.tumour_heads:
                r = self.encoders[s].forward_maps(x[:, i:i + 1], self.tumour_layer)
                f = r[0]
            else:
                f = self.encoders[s](x[:, i:i + 1])
            fd = self.drop(f)
            out[s] = {t: h(fd) for t, h in self.heads[s].items()}
            if self.tumour_heads:
                out[s]["tumour"] = self.presence[s](fd).squeeze(-1)
                out[s]["tumour_map"] = r[2] if self.tumour_pool else self.tumour_map[s](r[1])
        return out


def masked_ce(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """Cross-entropy ignoring targets < 0 (missing labels); 0 when nothing is labelled."""
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep], weight=weight)


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`masked_ce` with a per-sample weight (e.g. down-weighting tumour-free slices that
    inherit their patient's label); 0 when nothing is labelled or all weights are 0."""
    if sample_weight is None:
        return masked_ce(logits, target, weight)
    keep = (target >= 0) & (sample_weight > 0)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    t = target[keep]
    ce = F.cross_entropy(logits[keep], t, weight=weight, reduction="none")
    w = sample_weight[keep].to(ce.dtype)
    if weight is not None:
        w = w * weight.to(ce.dtype)[t]
    return (ce * sample_weight[keep].to(ce.dtype)).sum() / w.sum().clamp_min(1e-8)


def tumour_aux_loss(presence_logit: torch.Tensor, map_logit: torch.Tensor, mask: torch.Tensor,
                    keep: Optional[torch.Tensor] = None, pos_weight: float = 3.0) -> torch.Tensor:
    """Auxiliary tumour supervision of a slice encoder.

    ``presence_logit`` (n,), ``map_logit`` (n, 1, h, w), ``mask`` (n, H, W) tumour fraction in
    [0, 1] on the input grid (the expert mask), ``keep`` (n,) bool (False: the sequence is
    missing for that slice, no loss). Loss = BCE(presence, any tumour) + BCE(map, mask
    area-downsampled to h x w, positives weighted ``pos_weight``) + soft Dice of the map over
    the batch."""
    if keep is not None:
        if not bool(keep.any()):
            return presence_logit.sum() * 0.0 + map_logit.sum() * 0.0
        presence_logit, map_logit, mask = presence_logit[keep], map_logit[keep], mask[keep]
    mask = mask.to(map_logit.dtype)
    present = (mask.flatten(1).amax(1) > 0).to(presence_logit.dtype)
    l_pres = F.binary_cross_entropy_with_logits(presence_logit, present)
    tgt = F.adaptive_avg_pool2d(mask.unsqueeze(1), map_logit.shape[-2:])
    l_map = F.binary_cross_entropy_with_logits(
        map_logit, tgt, pos_weight=torch.tensor(float(pos_weight), dtype=map_logit.dtype))
    from monai.losses import DiceLoss
    dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)(map_logit, tgt)
    return l_pres + l_map + dice


def attention_kl(attention: torch.Tensor, tumour_area: torch.Tensor, slice_mask: torch.Tensor,
                 seq_mask: Optional[torch.Tensor] = None, smooth: float = 0.1) -> torch.Tensor:
    """KL(q || attention) pulling each sequence's slice attention towards the normalised
    per-slice tumour area ``q`` (mixed with ``smooth`` of a uniform distribution over the real
    slices). ``attention`` (B, S, N), ``tumour_area`` (B, N) >= 0, ``slice_mask`` (B, N) bool,
    ``seq_mask`` (B, S) bool. Bags without tumour or sequences masked out give no loss."""
    B, S, N = attention.shape
    m = slice_mask.to(attention.dtype)
    area = tumour_area.to(attention.dtype) * m
    tot = area.sum(1, keepdim=True)
    has = tot.squeeze(1) > 0
    uni = m / m.sum(1, keepdim=True).clamp_min(1)
    q = (1 - smooth) * area / tot.clamp_min(1e-8) + smooth * uni                   # (B, N)
    logq = torch.log(q.clamp_min(1e-12))
    loga = torch.log(attention.clamp_min(1e-8))
    kl = (q.unsqueeze(1) * (logq.unsqueeze(1) - loga) * m.unsqueeze(1)).sum(-1)       # (B, S)
    w = has.unsqueeze(1).to(attention.dtype).expand(B, S)
    if seq_mask is not None:
        w = w * seq_mask.to(attention.dtype)
    return (kl * w).sum() / w.sum().clamp_min(1.0)


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
