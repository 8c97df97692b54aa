"""Helpers shared by the synthesis tests: a tiny untrained generator and a thin slab of the
bundled sample case (fast on 2 CPU cores)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np


def tiny_model(path: Path) -> Path:
    import torch
    from napari_radiogen.core.models import new_card, save_model
    from src_models.seq2seq import seq2seq_unet2d
    torch.manual_seed(0)
    arch = {"builder": "src_models.seq2seq:seq2seq_unet2d",
            "kwargs": {"base": 4, "depth": 3, "n_seq": 4, "cond_hidden": 8}}
    m = seq2seq_unet2d(**arch["kwargs"])
    with torch.no_grad():                 # the zero-initialised heads would output zeros only
        for name, p in m.named_parameters():
            if name.startswith(("head", "linear")):
                p.normal_(0.0, 0.1)
    return save_model(path, m.state_dict(), new_card("tiny-synth", "synthesis", arch))


def slab(case, n: int = 12):
    """The middle ``n`` axial slices of every sequence (geometry shifted accordingly)."""
    from napari_radiogen.core.case import Volume
    g = case.geometry
    z0 = g.shape[0] // 2 - n // 2
    origin = tuple(np.asarray(g.origin) + z0 * g.spacing[2] * g.direction_matrix[:, 2])
    g2 = g.with_(size=(g.size[0], g.size[1], n), origin=origin)
    seqs = {s: Volume(v.array[z0:z0 + n].copy(), g2, path=v.path) for s, v in case.sequences.items()}
    return replace(case, sequences=seqs, labels=None)


def without(case, *names):
    return replace(case, sequences={k: v for k, v in case.sequences.items() if k not in names})
