"""A target-conditioned 2D generator for multi-sequence MRI synthesis (after Seq2Seq).

One network generates any target sequence from any non-empty subset of the others:

* input: the 4 sequence channels ``(t1, t1ce, t2, flair)`` with absent ones (and the target)
  zeroed, plus the 4-d availability mask (which sources are given), broadcast as 4 more planes;
* a small U-Net encoder; the **decoder is conditioned** on the target code (one-hot, 4-d) and the
  availability mask through FiLM (per-channel scale and shift after each decoder block);
* a conditional linear path plus the U-Net's residual, so the net starts from a per-target
  regression and learns the non-linear, spatial part on top (this trains far faster on a CPU
  budget). Two kinds of linear path (``linear=``):

  - ``"mlp"`` (the first shipped model): the source weights and offset are predicted from the
    condition by a small MLP, initialised at zero;
  - ``"table"``: one weight vector + offset per (target, source subset), stored in the model
    (buffer ``lin_init``, filled by the training task with the least-squares fit on the training
    patients, plus a learnable correction ``lin_scale * lin_delta``, zero at the start). With
    the residual head also zero at the start, the network **starts as the per-voxel linear
    regression baseline** and learns only what it adds; the linear prediction is also given to
    the U-Net as one more input plane;
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

    def __init__(self, base: int = 16, depth: int = 3, n_seq: int = N_SEQ, cond_hidden: int = 64,
                 linear: str = "mlp", lin_scale: float = 0.05):
        super().__init__()
        if linear not in ("mlp", "table"):
            raise ValueError(f"linear must be 'mlp' or 'table', not {linear!r}")
        self.n_seq = n_seq
        self.depth = depth
        self.linear_kind = linear
        self.lin_scale = float(lin_scale)
        chans: List[int] = [base * 2 ** i for i in range(depth + 1)]
        cond_dim = 2 * n_seq
        self.enc = nn.ModuleList()
        cin = 2 * n_seq + (1 if linear == "table" else 0)
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
        # coefficients per target and source subset; the U-Net adds a residual to it.
        if linear == "mlp":      # coefficients predicted from the condition; start at zero
            self.linear = nn.Sequential(nn.Linear(cond_dim, cond_hidden), nn.SiLU(),
                                        nn.Linear(cond_hidden, n_seq + 1))
            nn.init.zeros_(self.linear[-1].weight)
            nn.init.zeros_(self.linear[-1].bias)
        else:                    # a table (target, subset code) -> weights + offset
            shape = (n_seq, 2 ** n_seq, n_seq + 1)
            self.register_buffer("lin_init", torch.zeros(shape))
            self.lin_delta = nn.Parameter(torch.zeros(shape))
            self.register_buffer("_pow2", 2 ** torch.arange(n_seq), persistent=False)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, avail: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target.long(), self.n_seq).to(x.dtype)
        avail = avail.to(x.dtype) * (1 - target)          # never let the target leak in
        x = x * avail[:, :, None, None]
        planes = avail[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        cond = torch.cat([target, avail], dim=1)
        coef = self._coefficients(cond)                            # (B, n_seq + 1)
        lin = (x * coef[:, :-1, None, None]).sum(1, keepdim=True) + coef[:, -1, None, None, None]
        if self.linear_kind == "table":
            h = torch.cat([x, planes, lin], dim=1)
        else:
            h = torch.cat([x, planes], dim=1)
        skips = []
        for blk in self.enc:
            h = blk(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h, cond)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            h = up(h)
            h = dec(torch.cat([h, skip], dim=1), cond)
        return lin + self.head(h)

    # -- the linear path ---------------------------------------------------------------------
    def _coefficients(self, cond: torch.Tensor) -> torch.Tensor:
        if self.linear_kind == "mlp":
            return self.linear(cond)
        n = self.n_seq
        tidx = cond[:, :n].argmax(1)
        code = (cond[:, n:].round().long() * self._pow2).sum(1)
        table = self.lin_init + self.lin_scale * self.lin_delta
        return table[tidx, code]

    def linear_coefficients(self, avail: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, n_seq + 1): the linear path's weights of each source and its offset."""
        return self._coefficients(_cond(self, avail, target))

    @torch.no_grad()
    def set_linear_init(self, target: int, sources: Sequence[int], weights: Sequence[float]
                        ) -> None:
        """Table models: the starting regression of ``target`` from ``sources`` (weights in the
        order of ``sources``, then the offset)."""
        if self.linear_kind != "table":
            raise ValueError("set_linear_init needs linear='table'")
        code = sum(2 ** int(c) for c in sources)
        row = torch.zeros(self.n_seq + 1)
        for c, w in zip(sources, weights):
            row[int(c)] = float(w)
        row[-1] = float(weights[len(sources)])
        self.lin_init[int(target), code] = row.to(self.lin_init)


def subset_code(sources: Sequence[int]) -> int:
    """Index of a source subset in a table model's linear path."""
    return sum(2 ** int(c) for c in sources)


def _cond(model: "Seq2SeqUNet2D", avail: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == 1:
        target = F.one_hot(target.long(), model.n_seq).to(avail.dtype)
    return torch.cat([target, avail * (1 - target)], dim=1)


def linear_coefficients(model: "Seq2SeqUNet2D", avail: torch.Tensor, target: torch.Tensor
                        ) -> torch.Tensor:
    """(B, n_seq + 1): the linear path's weights of each source and its offset."""
    return model.linear_coefficients(avail, target)


def seq2seq_unet2d(base: int = 16, depth: int = 3, n_seq: int = N_SEQ,
                   cond_hidden: int = 64, linear: str = "mlp",
                   lin_scale: float = 0.05) -> Seq2SeqUNet2D:
    """Builder named in model cards: ``src_models.seq2seq:seq2seq_unet2d``. ``linear="table"``:
    the residual-over-regression variant (see the module docstring); the default ``"mlp"``
    rebuilds the first shipped model."""
    return Seq2SeqUNet2D(base=base, depth=depth, n_seq=n_seq, cond_hidden=cond_hidden,
                         linear=linear, lin_scale=lin_scale)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__: Sequence[str] = ("Seq2SeqUNet2D", "seq2seq_unet2d", "subset_code", "count_parameters")
