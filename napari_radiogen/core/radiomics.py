"""Hand-crafted tumour features ("radiomics") from a case and a whole-tumour mask.

Used by the ``predict_radiomics`` model: the case is segmented first (the model's own
segmentation models, never the expert mask at inference), features are computed inside the
predicted whole-tumour mask, and one random forest per task (``src_models.forest``) turns them,
with age and sex, into IDH / 1p19q / grade probabilities. The feature set follows
``../shared/BASELINES.md``'s classical baseline (volume, extent, position, shape, intensity
statistics normalised by the head median, channel ratios, GLCM texture), computed here with
scipy and scikit-image: PyRadiomics publishes source archives only, and their build fails in
this project's environment.

Everything is in physical units where the grid matters (mL, mm, per mm), so a pack (nominal
1.875 mm x 5 mm) and a 1 mm NIfTI volume give comparable numbers; intensities are ratios to the
median of the head (the foreground of that sequence), since MRI has no absolute scale.
Missing sequences give NaN features (the model imputes its training medians).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from .errors import RadiogenError

CHANNELS = ("flair", "t1", "t1ce")
_SHAPE = ("volume_ml", "log_volume", "extent_z_mm", "max_area_cm2", "centroid_z_rel",
          "centroid_ap_mm", "centroid_lr_abs_mm", "surface_per_mm", "n_components",
          "largest_fraction", "bbox_fill", "elongation")
_INTENSITY = ("mean", "sd", "p10", "p50", "p90", "ring_ratio", "cv", "bright_fraction",
              "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation")
_RATIOS = (("flair", "t1"), ("t1ce", "t1"), ("flair", "t1ce"))
IMAGE_FEATURES: List[str] = (list(_SHAPE) + [f"{s}_{q}" for s in CHANNELS for q in _INTENSITY]
                             + [f"ratio_{a}_{b}" for a, b in _RATIOS])
CLINICAL_FEATURES = ["age", "sex_male"]
FEATURES: List[str] = IMAGE_FEATURES + CLINICAL_FEATURES
RING_MM = 5.6            # width of the peritumoural ring, in-plane
GLCM_LEVELS = 16


def head_mask(a: np.ndarray) -> np.ndarray:
    """Foreground of one sequence: voxels above 10 % of its 99th percentile."""
    p99 = float(np.percentile(a, 99)) if a.size else 0.0
    return a > 0.1 * p99 if p99 > 0 else np.zeros(a.shape, bool)


def _inplane(structure_rank: int = 2) -> np.ndarray:
    from scipy import ndimage
    s = np.zeros((3, 3, 3), bool)
    s[1] = ndimage.generate_binary_structure(structure_rank, 1)
    return s


def glcm_features(img: np.ndarray, m: np.ndarray, levels: int = GLCM_LEVELS) -> List[float]:
    """Contrast, homogeneity, energy, correlation of the grey-level co-occurrence matrix (scikit-
    image) of one slice inside ``m`` (intensities quantised between the 1st and 99th
    percentile of the tumour; 4 directions, distance 1 pixel, averaged)."""
    from skimage.feature import graycomatrix, graycoprops
    v = img[m]
    if v.size < 16:
        return [np.nan] * 4
    lo, hi = np.percentile(v, [1, 99])
    q = np.clip((img - lo) / max(hi - lo, 1e-6) * (levels - 1), 0, levels - 1).astype(np.uint8)
    q = q + 1
    q[~m] = 0                                   # level 0 = outside, dropped below
    g = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels + 1,
                     symmetric=True, normed=False)[1:, 1:].astype(np.float64)
    tot = g.sum(axis=(0, 1), keepdims=True)
    g = g / np.maximum(tot, 1)
    return [float(graycoprops(g, p).mean())
            for p in ("contrast", "homogeneity", "energy", "correlation")]


class FeatureContext:
    """What the features need from a case that does not depend on the mask (per sequence: the
    head foreground's median and 95th percentile; the reference sequence's head mask and its
    extent), computed once so that many masks of one case (occlusion maps) cost little."""

    def __init__(self, arrays: Mapping[str, Optional[np.ndarray]], shape: Sequence[int]):
        self.present = {s: np.asarray(a, np.float32) for s, a in arrays.items()
                        if a is not None and s in CHANNELS}
        if not self.present:
            raise RadiogenError("radiomics needs at least one of " + ", ".join(CHANNELS))
        for s, a in self.present.items():
            if a.shape != tuple(shape):
                raise RadiogenError(f"{s} has shape {a.shape}, the mask {tuple(shape)}: "
                                    "not one grid")
        self.hmed: Dict[str, float] = {}
        self.p95: Dict[str, float] = {}
        for s, a in self.present.items():
            hs = head_mask(a)
            if hs.any():
                v = a[hs]
                self.hmed[s] = float(np.median(v)) or 1.0
                self.p95[s] = float(np.percentile(v, 95))
        ref = self.present.get("flair", next(iter(self.present.values())))
        self.head = head_mask(ref)
        self.head_extent = None
        if self.head.any():
            hz, hy, hx = np.nonzero(self.head)
            self.head_extent = (hz.min(), hz.max(), hy.mean(), hx.mean())


def image_features(arrays: Mapping[str, Optional[np.ndarray]], mask: np.ndarray,
                   spacing_xyz: Sequence[float],
                   context: Optional[FeatureContext] = None) -> Dict[str, float]:
    """Features of ``IMAGE_FEATURES`` for (z, y, x) ``arrays`` on the grid of ``mask``.
    ``context``: the case's :class:`FeatureContext` (made here when not given). The mask's
    computations run on its bounding box (plus the ring's margin in-plane): the same numbers
    as on the whole grid, at a cost that follows the tumour's size."""
    from scipy import ndimage

    m = np.asarray(mask) > 0
    if m.ndim != 3:
        raise RadiogenError(f"radiomics needs a 3D mask (slices, y, x), got shape {m.shape}")
    ctx = context if context is not None else FeatureContext(arrays, m.shape)
    sx, sy, sz = (float(v) for v in spacing_xyz)
    f: Dict[str, float] = {k: np.nan for k in IMAGE_FEATURES}
    nv = int(m.sum())
    f["volume_ml"] = nv * sx * sy * sz / 1000.0
    f["log_volume"] = float(np.log1p(f["volume_ml"]))
    if nv == 0:
        return f
    ring_it = max(1, int(round(RING_MM / np.sqrt(sx * sy))))
    # bounding box: all of the mask in z (in-plane structures never grow it), the ring's margin
    # in y and x
    zz, yy, xx = (np.nonzero(m.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1)))
    pad = ring_it + 1
    box = (slice(zz[0], zz[-1] + 1), slice(max(0, yy[0] - pad), yy[-1] + 1 + pad),
           slice(max(0, xx[0] - pad), xx[-1] + 1 + pad))
    off = np.array([b.start for b in box])
    mb = m[box]
    per_slice = mb.reshape(mb.shape[0], -1).sum(1)
    z, y, x = np.nonzero(mb)
    f["extent_z_mm"] = float((z.max() - z.min() + 1) * sz)
    f["max_area_cm2"] = float(per_slice.max() * sx * sy / 100.0)
    if ctx.head_extent is not None:
        z0, z1, hy_mean, hx_mean = ctx.head_extent
        f["centroid_z_rel"] = float((z.mean() + off[0] - z0) / max(z1 - z0, 1))
        f["centroid_ap_mm"] = float((y.mean() + off[1] - hy_mean) * sy)
        f["centroid_lr_abs_mm"] = float(abs(x.mean() + off[2] - hx_mean) * sx)
    edge = mb & ~ndimage.binary_erosion(mb, structure=_inplane())
    f["surface_per_mm"] = float(edge.sum()) / nv / np.sqrt(sx * sy)
    lab, k = ndimage.label(mb)
    sizes = ndimage.sum(mb, lab, range(1, k + 1))
    f["n_components"] = float(k)
    f["largest_fraction"] = float(sizes.max() / nv)
    bz, by, bx = z.max() - z.min() + 1, y.max() - y.min() + 1, x.max() - x.min() + 1
    f["bbox_fill"] = nv / float(bz * by * bx)
    ey, ex = by * sy, bx * sx
    f["elongation"] = float(max(ey, ex) / max(min(ey, ex), 1e-6))
    ring = (ndimage.binary_dilation(mb, structure=_inplane(), iterations=ring_it) & ~mb
            & ctx.head[box])
    big = int(np.argmax(per_slice))
    for s, a in ctx.present.items():
        if nv < 10 or s not in ctx.hmed:
            continue
        hmed = ctx.hmed[s]
        ab = a[box]
        v = ab[mb] / hmed
        f[f"{s}_mean"], f[f"{s}_sd"] = float(v.mean()), float(v.std())
        f[f"{s}_p10"], f[f"{s}_p50"], f[f"{s}_p90"] = (float(q) for q in
                                                       np.percentile(v, [10, 50, 90]))
        if ring.any():
            f[f"{s}_ring_ratio"] = float(v.mean() / (ab[ring].mean() / hmed + 1e-6))
        f[f"{s}_cv"] = float(v.std() / (abs(v.mean()) + 1e-6))
        f[f"{s}_bright_fraction"] = float((ab[mb] > ctx.p95[s]).mean())
        (f[f"{s}_glcm_contrast"], f[f"{s}_glcm_homogeneity"], f[f"{s}_glcm_energy"],
         f[f"{s}_glcm_correlation"]) = glcm_features(a[off[0] + big], m[off[0] + big])
    for a_, b_ in _RATIOS:
        ma, mb_ = f[f"{a_}_mean"], f[f"{b_}_mean"]
        if np.isfinite(ma) and np.isfinite(mb_) and mb_ != 0:
            f[f"ratio_{a_}_{b_}"] = float(ma / mb_)
    return f


def clinical_features(clinical: Optional[Mapping]) -> Dict[str, float]:
    """``age`` (years) and ``sex_male`` (1/0) from a clinical row; NaN when unknown."""
    from .predict import _sex_code, age_years
    clinical = clinical or {}
    age = age_years(clinical)
    sex = _sex_code(clinical.get("sex", clinical.get("gender")))
    return {"age": np.nan if age is None else age,
            "sex_male": np.nan if sex is None else float(sex)}


def case_arrays(case) -> Dict[str, Optional[np.ndarray]]:
    """The case's available sequences among ``CHANNELS`` on its reference grid (unavailable
    pack channels are left out)."""
    from .predict import _on_reference_grid
    use = [s for s in CHANNELS if s in case.sequences
           and case.sequences[s].meta.get("available", True)]
    if case.kind == "slices":
        return {s: np.asarray(case.sequences[s].array, np.float32) for s in use}
    return _on_reference_grid(case, use)


def case_features(case, wt_mask: np.ndarray,
                  clinical: Optional[Mapping] = None) -> Dict[str, float]:
    """All of ``FEATURES`` for ``case`` with the whole-tumour mask ``wt_mask`` (reference grid);
    ``clinical`` overrides the case's own clinical row."""
    src = dict(case.clinical or {})
    src.update({k: v for k, v in (clinical or {}).items() if v is not None})
    g = case.sequences[case.reference].geometry
    f = image_features(case_arrays(case), wt_mask, g.spacing)
    f.update(clinical_features(src))
    return f


def vector(feats: Mapping[str, float], names: Sequence[str] = FEATURES) -> np.ndarray:
    return np.array([float(feats.get(k, np.nan)) for k in names], np.float64)

#: occlusion maps: edge of the cubic blocks removed from the mask one at a time (mm), grown by
#: 25 % steps until the mask has at most OCCLUSION_MAX_BLOCKS of them
OCCLUSION_BLOCK_MM = 10.0
OCCLUSION_MAX_BLOCKS = 64


def occlusion_blocks(mask: np.ndarray, spacing_xyz: Sequence[float],
                     block_mm: float = OCCLUSION_BLOCK_MM,
                     max_blocks: int = OCCLUSION_MAX_BLOCKS):
    """Cut ``mask`` by a grid of ``block_mm`` cubes (in mm; at least one voxel per side):
    (int32 block id per voxel, 0 outside the mask, ids 1..n; n; the edge used in mm)."""
    m = np.asarray(mask) > 0
    sx, sy, sz = (float(v) for v in spacing_xyz)
    idx = np.nonzero(m)
    edge = float(block_mm)
    while True:
        cells = [np.floor(i * sp / edge).astype(np.int64) if sp < edge else i.astype(np.int64)
                 for i, sp in zip(idx, (sz, sy, sx))]
        key = (cells[0] * (1 << 20) + cells[1]) * (1 << 20) + cells[2]
        uniq, inv = np.unique(key, return_inverse=True)
        if len(uniq) <= max_blocks or not len(uniq):
            break
        edge *= 1.25
    ids = np.zeros(m.shape, np.int32)
    ids[idx] = inv.reshape(-1).astype(np.int32) + 1
    return ids, int(len(uniq)), edge


def occlusion_map(arrays: Mapping[str, Optional[np.ndarray]], mask: np.ndarray,
                  spacing_xyz: Sequence[float], clinical: Mapping[str, float],
                  probability, *, block_mm: float = OCCLUSION_BLOCK_MM,
                  max_blocks: int = OCCLUSION_MAX_BLOCKS, cancel=None):
    """Which parts of the tumour mask the prediction rests on, by occlusion: each block of
    :func:`occlusion_blocks` is removed from the mask in turn, the features are recomputed
    and ``probability`` ((B, F) feature vectors -> (B,) probabilities of the explained class)
    is asked again; a block's value is the absolute change of the probability. A generator:
    ``Progress`` items, then returns ``(heat, info)`` with ``heat`` float32 on the mask's grid
    (0 outside the mask, not normalised) and ``info`` (blocks, edge in mm, base probability,
    the largest change)."""
    from .progress import Progress, check

    m = np.asarray(mask) > 0
    ctx = FeatureContext(arrays, m.shape)
    clin = dict(clinical)
    ids, n, edge = occlusion_blocks(m, spacing_xyz, block_mm, max_blocks)
    rows = [vector({**image_features(arrays, m, spacing_xyz, ctx), **clin})]
    for b in range(1, n + 1):
        if b % 8 == 1:
            check(cancel)
            yield Progress("explain", b - 1, n, f"occlusion block {b}/{n}")
        rows.append(vector({**image_features(arrays, m & (ids != b), spacing_xyz, ctx),
                            **clin}))
    p = np.asarray(probability(np.stack(rows)), np.float64).reshape(-1)
    change = np.abs(p[1:] - p[0])
    heat = np.zeros(m.shape, np.float32)
    if n:
        heat[ids > 0] = change[ids[ids > 0] - 1]
    return heat, {"blocks": n, "block_mm": round(edge, 2), "probability": float(p[0]),
                  "max_change": float(change.max()) if n else 0.0}


__all__ = ["FEATURES", "IMAGE_FEATURES", "CLINICAL_FEATURES", "image_features",
           "FeatureContext", "occlusion_blocks", "occlusion_map",
           "clinical_features", "case_features", "case_arrays", "glcm_features", "vector"]
