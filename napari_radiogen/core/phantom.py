"""Synthetic glioma cases for fast, deterministic tests (no real data needed).

:func:`make_phantom` builds a small 3D head (scalp, skull, CSF, grey and white matter,
ventricles) with a tumour made of a necrotic core (label 1), an enhancing rim (label 4) and
surrounding oedema (label 2), imaged as four sequences with plausible relative contrasts:

========  ====================================================================
T1        WM > GM > CSF; tumour hypo-intense
T1ce      T1 + a bright enhancing rim
T2        CSF bright, oedema and necrosis bright, WM darker than GM
FLAIR     CSF dark (suppressed), oedema bright
========  ====================================================================

A smooth multiplicative bias field and Rician noise are added; arrays are float32 in
(z, y, x) order, with a :class:`~napari_radiogen.core.case.Geometry` that has a non-trivial
origin. Everything is a pure function of ``seed``.

:func:`make_pack_phantom` mimics one TCGA-LGG 2D slice pack (``kind="slices"``): three
sequences ``t1, flair, t1ce`` of 128 x 128 slices (float32 holding 0-255 values, as
``core.io.load_pack`` returns them) and a binary FLAIR-abnormality mask (label 1).
Its clinical fields are random by seed, and IDH-mutant phantoms have no enhancing rim (a
learnable signal for smoke tests of the prediction pipeline; not a biological claim).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .case import Case, Geometry, Volume

#: tissue classes of :func:`phantom_tissue`
_BG, _SCALP, _SKULL, _CSF, _GM, _WM, _NEC, _ENH, _OED = range(9)
TISSUE: Dict[str, int] = {"background": _BG, "scalp": _SCALP, "skull": _SKULL, "csf": _CSF,
                          "gm": _GM, "wm": _WM, "necrosis": _NEC, "enhancing": _ENH,
                          "oedema": _OED}

#: relative intensities per tissue class, per sequence (index = tissue class above)
_CONTRAST: Dict[str, Tuple[float, ...]] = {
    #          bg   scalp skull csf   gm    wm    nec   enh   oed
    "t1":    (0.0, 0.90, 0.08, 0.25, 0.72, 1.00, 0.30, 0.55, 0.58),
    "t1ce":  (0.0, 0.95, 0.08, 0.27, 0.74, 1.00, 0.32, 1.45, 0.60),
    "t2":    (0.0, 0.60, 0.06, 1.25, 0.68, 0.48, 1.10, 0.80, 1.00),
    "flair": (0.0, 0.55, 0.06, 0.15, 0.72, 0.55, 0.70, 0.95, 1.20),
}
_SCALE = 600.0      # arbitrary scanner-like units


def _grid_mm(shape_zyx: Tuple[int, int, int], spacing_xyz: Tuple[float, float, float]):
    """Centred physical coordinates (z, y, x) in mm, broadcastable (sparse) arrays."""
    nz, ny, nx = shape_zyx
    sx, sy, sz = spacing_xyz
    z = (np.arange(nz, dtype=np.float32) - (nz - 1) / 2) * sz
    y = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sy
    x = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sx
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _tissue_map(rng: np.random.Generator, shape_zyx, spacing_xyz, tumour: bool,
                enhancing: bool = True, skull_stripped: bool = False):
    """Integer tissue map (z, y, x) and BraTS labels (uint8)."""
    z, y, x = _grid_mm(shape_zyx, spacing_xyz)
    nz, ny, nx = shape_zyx
    sx, sy, sz = spacing_xyz
    # head semi-axes (mm): fill most of the field of view, a little random
    a = 0.44 * nx * sx * rng.uniform(0.95, 1.02)
    b = 0.46 * ny * sy * rng.uniform(0.95, 1.02)
    c = 0.44 * nz * sz * rng.uniform(0.95, 1.02)
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)

    tissue = np.zeros(shape_zyx, dtype=np.uint8)
    tissue[r <= 1.0] = _SCALP
    tissue[r <= 0.91] = _SKULL
    tissue[r <= 0.85] = _CSF
    # gyral folding: a smooth angular modulation of the GM/WM boundary
    theta = np.arctan2(y, x)
    phi = np.arctan2(z, np.sqrt(x ** 2 + y ** 2) + 1e-3)
    k1, k2 = rng.integers(6, 11, size=2)
    fold = 0.04 * np.sin(k1 * theta + rng.uniform(0, 6.28)) * np.cos(k2 * phi)
    brain = r <= 0.81
    tissue[brain] = _GM
    tissue[(r + fold) <= 0.62] = _WM
    # lateral ventricles: two small ellipsoids either side of the midline
    for side in (-1.0, 1.0):
        cx = side * 0.12 * a
        v = np.sqrt(((x - cx) / (0.09 * a)) ** 2 + ((y + 0.05 * b) / (0.30 * b)) ** 2
                    + ((z - 0.05 * c) / (0.16 * c)) ** 2)
        tissue[v <= 1.0] = _CSF

    labels = np.zeros(shape_zyx, dtype=np.uint8)
    info: Dict[str, object] = {}
    if tumour:
        # centre in one hemisphere, well inside the brain
        side = rng.choice([-1.0, 1.0])
        tc = np.array([side * rng.uniform(0.22, 0.40) * a,
                       rng.uniform(-0.30, 0.30) * b,
                       rng.uniform(-0.25, 0.25) * c])
        radius = rng.uniform(0.20, 0.28) * min(a, b, c)
        radius = float(np.clip(radius, 3.0 * max(spacing_xyz), 0.45 * min(a, b, c)))
        ax = rng.uniform(0.8, 1.25, size=3)          # anisotropy of the lesion
        d = np.sqrt(((x - tc[0]) / ax[0]) ** 2 + ((y - tc[1]) / ax[1]) ** 2
                    + ((z - tc[2]) / ax[2]) ** 2) / radius
        # irregular oedema boundary
        wob = 0.15 * np.sin(rng.integers(3, 6) * np.arctan2(y - tc[1], x - tc[0])
                            + rng.uniform(0, 6.28))
        oed = (d <= 1.5 + wob) & brain
        core = d <= 0.8
        nec = d <= 0.45
        labels[oed] = 2
        tissue[oed] = _OED
        if enhancing:
            labels[core] = 4
            tissue[core] = _ENH
            labels[nec] = 1
            tissue[nec] = _NEC
        else:      # non-enhancing tumour core (label 1), no rim
            labels[core] = 1
            tissue[core] = _NEC
        info = {"tumour_centre_mm": [float(v) for v in tc], "tumour_radius_mm": radius}
    if skull_stripped:
        tissue[~brain & (labels == 0)] = _BG
    return tissue, labels, info


def _image(rng: np.random.Generator, tissue: np.ndarray, seq: str, bias: np.ndarray,
           noise: float, skull_stripped: bool) -> np.ndarray:
    lut = np.asarray(_CONTRAST[seq], dtype=np.float32) * _SCALE
    img = lut[tissue]
    # within-tissue texture, then partial-volume blur
    img *= 1.0 + 0.03 * rng.standard_normal(tissue.shape, dtype=np.float32)
    img = ndimage.gaussian_filter(img, 0.6, mode="nearest")
    img *= bias
    sigma = noise * _SCALE
    n1 = rng.standard_normal(tissue.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(tissue.shape, dtype=np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)                  # Rician magnitude
    if skull_stripped:
        img[tissue == _BG] = 0.0                              # BraTS-like exact-zero background
    return img.astype(np.float32, copy=False)


def _bias_field(rng: np.random.Generator, shape_zyx, strength: float = 0.15) -> np.ndarray:
    nz, ny, nx = shape_zyx
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    c = rng.uniform(-1, 1, size=6).astype(np.float32)
    f = c[0] * x + c[1] * y + c[2] * z + 0.5 * (c[3] * x * y + c[4] * y * z + c[5] * x * x)
    f = f / (np.abs(f).max() + 1e-6)
    return (1.0 + strength * f).astype(np.float32)


def _clinical(rng: np.random.Generator) -> Dict[str, object]:
    idh = "mutant" if rng.random() < 0.6 else "wildtype"
    codel = "codel" if (idh == "mutant" and rng.random() < 0.35) else "non-codel"
    grade = int(rng.choice([2, 3])) if idh == "mutant" else int(rng.choice([3, 4]))
    os_days = int(rng.integers(200, 3000) * (1.6 if idh == "mutant" else 0.6))
    return {"idh": idh, "codel_1p19q": codel, "grade": grade,
            "age": int(rng.integers(22, 80)), "gender": str(rng.choice(["MALE", "FEMALE"])),
            "os_days": os_days,
            "os_event": int(rng.random() < (0.3 if idh == "mutant" else 0.7)),
            "synthetic": True}


def phantom_tissue(seed: int = 0, shape: Tuple[int, int, int] = (64, 80, 72),
                   spacing: Tuple[float, float, float] = (1.5, 1.5, 1.5), tumour: bool = True, *,
                   skull_stripped: bool = False) -> np.ndarray:
    """The tissue-class map (z, y, x) behind ``make_phantom`` with the same arguments (classes:
    ``TISSUE``), for tests of contrasts and masks."""
    rng = np.random.default_rng(seed)
    _clinical(rng)
    return _tissue_map(rng, tuple(int(s) for s in shape), tuple(float(s) for s in spacing),
                       tumour, enhancing=True, skull_stripped=skull_stripped)[0]


def make_phantom(seed: int = 0, shape: Tuple[int, int, int] = (64, 80, 72),
                 spacing: Tuple[float, float, float] = (1.5, 1.5, 1.5),
                 sequences: Sequence[str] = ("t1", "t1ce", "t2", "flair"),
                 tumour: bool = True, case_id: Optional[str] = None, *,
                 skull_stripped: bool = False, noise: float = 0.02,
                 origin: Optional[Tuple[float, float, float]] = None) -> Case:
    """A deterministic synthetic 3D case.

    ``shape`` is numpy (z, y, x); ``spacing`` and ``origin`` are ITK (x, y, z) in mm. All
    sequences share one grid; ``labels`` holds BraTS labels 0/1/2/4 (all zero when
    ``tumour=False``). ``skull_stripped=True`` gives a BraTS-like case (brain only, background
    exactly 0); the default keeps scalp and skull and a noisy background, like a native scan.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError("shape (z, y, x) and spacing (x, y, z) must have 3 entries")
    rng = np.random.default_rng(seed)
    clinical = _clinical(rng)
    tissue, labels, info = _tissue_map(rng, shape, spacing, tumour, enhancing=True,
                                       skull_stripped=skull_stripped)
    size = (shape[2], shape[1], shape[0])
    if origin is None:   # non-trivial, centre of the grid near (0, -20, 10) mm
        origin = (-(size[0] - 1) * spacing[0] / 2 + 0.75,
                  -(size[1] - 1) * spacing[1] / 2 - 20.25,
                  -(size[2] - 1) * spacing[2] / 2 + 10.5)
    geom = Geometry(size=size, spacing=spacing, origin=tuple(float(o) for o in origin))
    bias = _bias_field(rng, shape)
    seqs = {}
    for s in sequences:
        if s not in _CONTRAST:
            raise ValueError(f"unknown sequence {s!r}; expected one of {sorted(_CONTRAST)}")
        seqs[s] = Volume(_image(rng, tissue, s, bias, noise, skull_stripped), geom,
                         meta={"phantom": True})
    cid = case_id or f"PHANTOM_{seed:04d}"
    return Case(case_id=cid, sequences=seqs, labels=Volume(labels, geom, meta={"phantom": True}),
                clinical=clinical, source=None, kind="volume",
                meta={"phantom": True, "seed": int(seed), "skull_stripped": skull_stripped,
                      **info})


def make_pack_phantom(seed: int = 0, n_slices: int = 20, *, size: int = 128,
                      case_id: Optional[str] = None) -> Case:
    """A synthetic TCGA-LGG-style 2D slice pack: ``kind="slices"``, sequences ``t1, flair,
    t1ce`` (n_slices, 128, 128), ``labels`` = FLAIR abnormality (label 1, uint8).

    Like ``core.io.load_pack`` on a real pack: arrays are float32 holding uint8 values (0-255),
    spacing is nominal (1.875 mm in-plane, 5 mm between slices, ``Geometry.nominal=True``,
    centred on the origin), the reference is FLAIR. Clinical fields are random by seed with the
    pack's names (``idh``, ``codel_1p19q``, ``grade``, ``os_days``, ``os_event``, ...).
    IDH-mutant phantoms have no enhancing rim.
    """
    rng = np.random.default_rng(10_000 + int(seed))
    clinical = _clinical(rng)
    shape = (int(n_slices), int(size), int(size))
    spacing = (1.875, 1.875, 5.0)      # as core.io.pack (nominal)
    # head that fills the slices in-plane; through-plane scaled so the pack covers the head
    # (slices are sampled through the tumour-bearing part, like the real packs)
    zsp = 110.0 / max(n_slices, 1)
    tissue, labels, info = _tissue_map(rng, shape, (spacing[0], spacing[1], zsp), True,
                                       enhancing=clinical["idh"] == "wildtype")
    bias = _bias_field(rng, shape, 0.1)
    seqs = {}
    for s in ("t1", "flair", "t1ce"):
        img = _image(rng, tissue, s, bias, 0.02, False)
        img = np.clip(img / (1.5 * _SCALE) * 255.0, 0, 255)
        seqs[s] = Volume(np.rint(img).astype(np.float32),
                         Geometry(size=(shape[2], shape[1], shape[0]), spacing=spacing,
                                  origin=tuple(-(n - 1) * sp / 2.0 for n, sp in
                                               zip((shape[2], shape[1], shape[0]), spacing)),
                                  nominal=True),
                         meta={"phantom": True})
    geom = seqs["flair"].geometry
    mask = (labels > 0).astype(np.uint8)
    clinical["age_at_initial_pathologic"] = clinical["age"]
    cid = case_id or f"PHANTOM_PACK_{seed:04d}"
    return Case(case_id=cid, sequences=seqs, labels=Volume(mask, geom, meta={"phantom": True}),
                clinical=clinical, kind="slices",
                meta={"phantom": True, "seed": int(seed), "reference": "flair",
                      "format": "phantom-slices", "n_slices": int(n_slices), "unavailable": [],
                      "labels_meaning": "1 = FLAIR abnormality (synthetic)", **info})
