"""A target-conditioned 2D generator for multi-sequence MRI synthesis (after Seq2Seq).

One network generates any target sequence from any non-empty subset of the others:

* input: the 4 sequence channels ``(t1, t1ce, t2, flair)`` with absent ones (and the target)
  zeroed, plus the 4-d availability mask (which sources are given), broadcast as 4 more planes;
* a small U-Net encoder; the **decoder is conditioned** on the target code (one-hot, 4-d) and the
  availability mask through FiLM (per-channel scale and shift after each decoder block);
* a conditional linear path (coefficients of the given sources predicted from the condition)
  plus the U-Net's residual, so the net starts from a per-target regression and learns the
  non-linear, spatial part on top (this trains far faster on a CPU budget);
* output: one channel, the target in normalised intensity units ([0, 1] = 0 .. the volume's
  99.5th brain percentile).

Plain ``nn.Module`` only: no files, no numpy I/O. Build with :func:`seq2seq_unet2d` (kwargs are
JSON-able so a model card can rebuild it).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

N_SEQ = 4


def _norm(c: int) -> nn.Module:
    g = 8 if c % 8 == 0 else (4 if c % 4 == 0 else 1)
    return nn.GroupNorm(g, c)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.n1 = _norm(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.n2 = _norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.n1(self.c1(x)), 0.1)
        return F.leaky_relu(self.n2(self.c2(x)), 0.1)


class FiLMBlock(nn.Module):
    """Conv block whose output is modulated by ``(1 + gamma) * x + beta`` from the condition."""

    def __init__(self, cin: int, cout: int, cond_dim: int, hidden: int):
        super().__init__()
        self.block = ConvBlock(cin, cout)
        self.film = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 2 * cout))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        gamma, beta = self.film(cond).chunk(2, dim=1)
        return h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class Seq2SeqUNet2D(nn.Module):
    """Small conditional U-Net. ``forward(x, avail, target)``:

    * ``x``: (B, 4, H, W) sequences in SEQUENCES order (values for absent channels are ignored:
      the network zeroes them with ``avail``);
    * ``avail``: (B, 4) float 0/1, which channels are given as sources (the target must be 0);
    * ``target``: (B,) long index of the target sequence, or (B, 4) one-hot float.

    H and W must be divisible by ``2 ** depth``.
    """

    def __init__(self, base: int = 16, depth: int = 3, n_seq: int = N_SEQ, cond_hidden: int = 64):
        super().__init__()
        self.n_seq = n_seq
        self.depth = depth
        chans: List[int] = [base * 2 ** i for i in range(depth + 1)]
        cond_dim = 2 * n_seq
        self.enc = nn.ModuleList()
        cin = 2 * n_seq
        for c in chans[:-1]:
            self.enc.append(ConvBlock(cin, c))
            cin = c
        self.bottleneck = FiLMBlock(chans[-2], chans[-1], cond_dim, cond_hidden)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            self.dec.append(FiLMBlock(2 * chans[i], chans[i], cond_dim, cond_hidden))
        self.head = nn.Conv2d(chans[0], 1, 1)
        # conditional linear path: per-pixel linear combination of the given sources with
        # coefficients from the condition (a learned, target- and subset-specific regression);
        # the U-Net adds a residual to it. Both start at zero.
        self.linear = nn.Sequential(nn.Linear(cond_dim, cond_hidden), nn.SiLU(),
                                    nn.Linear(cond_hidden, n_seq + 1))
        nn.init.zeros_(self.linear[-1].weight)
        nn.init.zeros_(self.linear[-1].bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, avail: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target.long(), self.n_seq).to(x.dtype)
        avail = avail.to(x.dtype) * (1 - target)          # never let the target leak in
        x = x * avail[:, :, None, None]
        planes = avail[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        h = torch.cat([x, planes], dim=1)
        cond = torch.cat([target, avail], dim=1)
        skips = []
        for blk in self.enc:
            h = blk(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h, cond)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            h = up(h)
            h = dec(torch.cat([h, skip], dim=1), cond)
        coef = self.linear(cond)                                   # (B, n_seq + 1)
        lin = (x * coef[:, :-1, None, None]).sum(1, keepdim=True) + coef[:, -1, None, None, None]
        return lin + self.head(h)


def _cond(model: "Seq2SeqUNet2D", avail: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == 1:
        target = F.one_hot(target.long(), model.n_seq).to(avail.dtype)
    return torch.cat([target, avail * (1 - target)], dim=1)


def linear_coefficients(model: "Seq2SeqUNet2D", avail: torch.Tensor, target: torch.Tensor
                        ) -> torch.Tensor:
    """(B, n_seq + 1): the conditional linear path's weights of each source and its offset."""
    return model.linear(_cond(model, avail, target))


Seq2SeqUNet2D.linear_coefficients = linear_coefficients


def seq2seq_unet2d(base: int = 16, depth: int = 3, n_seq: int = N_SEQ,
                   cond_hidden: int = 64) -> Seq2SeqUNet2D:
    """Builder named in model cards: ``src_models.seq2seq:seq2seq_unet2d``."""
    return Seq2SeqUNet2D(base=base, depth=depth, n_seq=n_seq, cond_hidden=cond_hidden)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__: Sequence[str] = ("Seq2SeqUNet2D", "seq2seq_unet2d", "count_parameters")
