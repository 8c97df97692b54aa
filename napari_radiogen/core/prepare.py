"""Preparation of a case for the models, and the exact way back to the native grid.

The walk::

    Case (sequences on their own grids)
      -> one grid: every sequence resampled onto the *working grid* (the reference sequence's
         grid, or that grid's physical extent at a requested ``spacing``), in one interpolation
         per sequence, using each image's own geometry (outside its field of view -> 0)
      -> brain (or head) mask on the working grid             (:func:`brain_mask`)
      -> crop box around the mask + margin                    (:func:`crop_box`)
      -> per-sequence intensity normalisation inside the mask (:func:`normalise`)
      -> :class:`PreparedCase`: ``array`` (C, z, y, x) float32 in the requested sequence order

and back with :func:`to_native`: undo the crop by padding, then, only when the working grid
differs from the reference sequence's native grid, resample with SimpleITK (nearest neighbour
for labels, linear for maps). When no resampling was needed (e.g. BraTS: four sequences on one
1 mm grid, ``spacing=None``) the round trip of a label array is exact.

Masks (:func:`brain_mask`):

* **skull-stripped data** (BraTS, SRI24 atlas space: background exactly 0, detected by
  :func:`is_skull_stripped`): the union of the non-zero voxels of the sequences, a real brain
  mask;
* **otherwise** (native scans with scalp and skull, the TCGA-LGG packs, phantoms): an Otsu
  *head* mask (see :func:`otsu_head_mask`: smoothed reference sequence above half its Otsu
  threshold, closed, holes filled, largest connected component, eroded by about 2 mm). This
  is **not** a brain mask: non-zero is meaningless on native scans (noise everywhere) and no
  skull stripping is done here.

Everything here is plain numpy + SimpleITK + scipy.ndimage and takes well under a second for a
240 x 240 x 155 BraTS case.
"""
from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import progress as _progress
from .case import SEQUENCES, Case, Geometry, Volume
from .errors import GeometryError, MissingSequenceError, RadiogenError
from .io import percent

__all__ = [
    "PreparedCase", "prepare", "to_native", "uncrop", "denormalise",
    "resample_to_reference", "resample_spacing", "resample_volume", "working_geometry",
    "overlap_fraction", "brain_mask", "is_skull_stripped", "otsu_threshold", "normalise",
    "crop_box", "crop_geometry", "check_array", "coverage_warnings",
    "case_registration_warnings", "case_registration_warnings_by_sequence",
    "registration_warnings", "registration_warnings_by_sequence", "sequence_offsets",
]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
    "lanczos": sitk.sitkLanczosWindowedSinc,
}

SpacingLike = Union[None, float, Sequence[float]]

#: a sequence covering less of the reference field of view than this is said to be zero-filled
#: (when part of the head/brain mask is among what it misses; see :func:`prepare`)
FOV_WARN_FRACTION = 0.9
#: ... or when it misses more of the head/brain mask than this, whatever its field of view
MASK_WARN_FRACTION = 0.9
#: the part of the mask a sequence may miss (edge voxels) before its small field of view matters
MASK_NEGLIGIBLE_MISS = 0.01


# ------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------
def check_array(array: np.ndarray, name: str = "image") -> None:
    """Raise a clear :class:`RadiogenError` for a non-3D array or NaN/Inf values."""
    a = np.asarray(array)
    if a.ndim != 3:
        raise GeometryError(f"{name} must be a 3D volume (z, y, x), got an array of shape "
                            f"{a.shape}" + (" (a 2D image: load a slice pack or a 3D scan)"
                                            if a.ndim == 2 else ""))
    if a.size == 0:
        raise RadiogenError(f"{name} is empty (shape {a.shape})")
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
        with np.errstate(all="ignore"):
            if np.isfinite(a.sum(dtype=np.float64 if a.dtype == np.float64 else None)):
                return          # NaN/Inf propagate into the sum (fast path)
        finite = np.isfinite(a)
        if not finite.all():
            n = int(a.size - np.count_nonzero(finite))
            raise RadiogenError(f"{name} contains {n} NaN or infinite value(s); fix the file or "
                                "replace them before analysis")


def _interp(name: str) -> int:
    try:
        return _INTERPOLATORS[name]
    except KeyError:
        raise RadiogenError(f"unknown interpolator {name!r}; choose one of "
                            f"{', '.join(_INTERPOLATORS)}") from None


# ------------------------------------------------------------------------------------------
# grids and resampling
# ------------------------------------------------------------------------------------------
def _spacing3(spacing: SpacingLike) -> Optional[Tuple[float, float, float]]:
    if spacing is None:
        return None
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise RadiogenError(f"spacing must be positive millimetres, got {spacing!r}")
    return tuple(float(s) for s in sp)


def working_geometry(reference: Geometry, spacing: SpacingLike = None) -> Geometry:
    """The grid covering ``reference``'s field of view at ``spacing`` (mm, scalar or (x, y, z)).

    Same direction; voxel *edges* of the first and last voxels are kept where the extent
    divides evenly (origin shifted by half the difference of spacings). ``spacing=None`` or a
    spacing equal to the reference's returns ``reference`` itself.
    """
    sp = _spacing3(spacing)
    if sp is None or np.allclose(sp, reference.spacing, rtol=0, atol=1e-6):
        return reference
    old = np.asarray(reference.spacing, dtype=float)
    new = np.asarray(sp, dtype=float)
    extent = np.asarray(reference.size, dtype=float) * old
    size = np.maximum(1, np.ceil(extent / new - 1e-3)).astype(int)
    origin = (np.asarray(reference.origin, dtype=float)
              + reference.direction_matrix @ ((new - old) / 2.0))
    return reference.with_(size=tuple(int(s) for s in size), spacing=tuple(new.tolist()),
                           origin=tuple(origin.tolist()))


def overlap_fraction(moving: Geometry, reference: Geometry, n: int = 9) -> float:
    """Fraction of a coarse lattice (n^3 points) of ``reference``'s grid that lies inside
    ``moving``'s field of view (voxel extents). 0 means the images do not overlap."""
    axes = [np.linspace(0, s - 1, min(n, s)) for s in reference.size]
    ii, jj, kk = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    world = reference.affine_lps() @ pts
    idx = np.linalg.solve(moving.affine_lps(), world)[:3]
    size = np.asarray(moving.size, dtype=float)[:, None]
    inside = np.all((idx >= -0.5) & (idx <= size - 0.5), axis=0)
    return float(inside.mean())


def _source_box(src: Geometry, target: Geometry, pad: int = 2) -> Optional[Tuple[slice, ...]]:
    """The (z, y, x) box of ``src`` voxels that can contribute to resampling onto ``target``
    (the target grid's corners mapped into source index space, + ``pad``), or None when it is
    (nearly) the whole source. Resampling from that sub-image gives identical values."""
    corners = np.c_[target.corners_lps(), np.ones(8)].T
    idx = np.linalg.solve(src.affine_lps(), corners)[:3]
    lo = np.floor(idx.min(axis=1)).astype(int) - pad
    hi = np.ceil(idx.max(axis=1)).astype(int) + pad + 1
    size = np.asarray(src.size)
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(hi, lo + 1, size)
    if np.prod(hi - lo) > 0.8 * np.prod(size):
        return None
    return (slice(int(lo[2]), int(hi[2])), slice(int(lo[1]), int(hi[1])),
            slice(int(lo[0]), int(hi[0])))


def resample_volume(vol: Volume, geometry: Geometry, *, interpolator: str = "linear",
                    labels: bool = False, name: str = "image", default: float = 0.0) -> Volume:
    """Resample ``vol`` onto ``geometry`` (physical space, each image's own geometry; outside
    the source's field of view -> ``default``). Images become float32, labels keep an integer
    type (uint8 when the values fit, else int32).
    Returns ``vol`` unchanged (not copied) when it is already on that grid."""
    if vol.geometry.same_grid(geometry):
        return vol
    if overlap_fraction(vol.geometry, geometry) == 0.0:
        raise GeometryError(f"{name} does not overlap the reference grid (its field of view "
                            f"and the reference's are disjoint in physical space)")
    arr = vol.array
    if labels:
        interp = sitk.sitkNearestNeighbor
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        out_type = sitk.sitkUInt8 if arr.max(initial=0) < 256 and arr.min(initial=0) >= 0 \
            else sitk.sitkInt32
        if out_type == sitk.sitkUInt8 and arr.dtype != np.uint8:
            arr = arr.astype(np.uint8)
    else:
        interp = _interp(interpolator)
        out_type = sitk.sitkFloat32
        if arr.dtype == bool:
            arr = arr.astype(np.float32)
    src_geom = vol.geometry
    sub = _source_box(src_geom, geometry, pad=2 if interp in (sitk.sitkLinear,
                                                              sitk.sitkNearestNeighbor) else 5)
    if sub is not None:     # only wrap the part of the source the target grid can see
        arr = arr[sub]
        src_geom = crop_geometry(src_geom, sub)
    img = src_geom.to_image(arr)
    out = sitk.Resample(img, geometry.size, sitk.Transform(3, sitk.sitkIdentity), interp,
                        geometry.origin, geometry.spacing, geometry.direction, float(default),
                        out_type)
    meta = dict(vol.meta)
    meta["resampled_from"] = {"size": list(vol.geometry.size),
                              "spacing": list(vol.geometry.spacing),
                              "origin": list(vol.geometry.origin)}
    return Volume(sitk.GetArrayFromImage(out), geometry, path=vol.path,
                  synthetic=vol.synthetic, meta=meta)


def _resample_case(case: Case, geometry: Geometry, reference: str, interpolator: str,
                   names: Optional[Iterable[str]] = None, cancel=None) -> Case:
    seqs: Dict[str, Volume] = {}
    for s in (names if names is not None else case.sequences):
        _progress.check(cancel)
        v = case.sequences[s]
        check_array(v.array, f"sequence {s}")
        seqs[s] = resample_volume(v, geometry, interpolator=interpolator, name=f"sequence {s}")
    lab = None
    if case.labels is not None:
        lab = resample_volume(case.labels, geometry, labels=True, name="the label image")
    meta = dict(case.meta)
    meta["reference"] = reference
    return replace(case, sequences=seqs, labels=lab, meta=meta)


def resample_to_reference(case: Case, reference: Optional[str] = None, *,
                          interpolator: str = "linear") -> Case:
    """Put every sequence (linear or ``interpolator``) and the labels (nearest neighbour) onto
    the reference sequence's grid. Raises :class:`GeometryError` if one does not overlap it."""
    ref = _reference_name(case, reference)
    return _resample_case(case, case.sequences[ref].geometry, ref, interpolator)


def resample_spacing(case: Case, spacing_mm: SpacingLike, *, reference: Optional[str] = None,
                     interpolator: str = "linear") -> Case:
    """Resample every sequence and the labels (nearest) onto the reference sequence's field of
    view at ``spacing_mm`` (scalar or (x, y, z) mm), in one interpolation per image."""
    ref = _reference_name(case, reference)
    geom = working_geometry(case.sequences[ref].geometry, spacing_mm)
    return _resample_case(case, geom, ref, interpolator)


def _reference_name(case: Case, reference: Optional[str]) -> str:
    if not case.sequences:
        raise MissingSequenceError(list(SEQUENCES), list(SEQUENCES), [])
    if reference is None:
        return case.reference
    if reference not in case.sequences:
        raise MissingSequenceError([reference], [reference], list(case.sequences))
    return reference


# ------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------
def background_value(array: np.ndarray, *, min_fraction: float = 0.05) -> float:
    """The value of an image's constant padding background: 0, or the image's minimum where
    that value is negative, fills at least ``min_fraction`` of it and 0 does not fill a
    twentieth (a background, or the corners outside a round field of view, padded with a
    negative value of a signed type, e.g. -1024 or -32768: counting every voxel that is not 0
    as brain would make the whole field of view brain, and an Otsu threshold would split the
    padding from the rest). A constant positive background is not taken for padding (MRI
    intensities are >= 0)."""
    a = np.asarray(array)
    if a.size == 0 or np.count_nonzero(a == 0) >= 0.05 * a.size:
        return 0.0
    lo = a.min()
    if not np.isfinite(lo) or lo >= 0 or np.count_nonzero(a == lo) < min_fraction * a.size:
        return 0.0
    return float(lo)


def without_padding(vol: Volume) -> Volume:
    """``vol`` with its padding background (:func:`background_value`) set to 0, the background
    of every other image (``vol`` itself when it has none)."""
    a = _without_padding(vol.array)
    if a is vol.array:
        return vol
    return Volume(a, vol.geometry, path=vol.path, synthetic=vol.synthetic, meta=vol.meta)


def _without_padding(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    bg = background_value(a)
    return a if bg == 0.0 else np.where(a == bg, a.dtype.type(0), a)


def is_skull_stripped(array: np.ndarray, *, min_zero_fraction: float = 0.25,
                      min_border_zero_fraction: float = 0.9) -> bool:
    """True when the background is constant, 0 or a padding value
    (:func:`background_value`; BraTS-like): at least a quarter of the volume (or, for a 2D
    slice, of the pixels) is background and nearly all of its outer shell (the six faces of a
    volume, the four edges of a slice) is. Native scans have noise (few exact zeros). Other
    dimensions, and empty arrays, are False; an all-zero array is True (callers that must not
    judge a blank image check that themselves)."""
    a = np.asarray(array)
    if a.ndim not in (2, 3) or a.size == 0:
        return False
    bg = background_value(a)
    if np.count_nonzero(a == bg) < min_zero_fraction * a.size:
        return False
    shell = np.concatenate([face.ravel() for ax in range(a.ndim)
                            for face in (np.take(a, 0, axis=ax), np.take(a, -1, axis=ax))])
    return bool(np.count_nonzero(shell == bg) >= min_border_zero_fraction * shell.size)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (clipped to their 99.5th percentile, so that a few very
    bright voxels do not decide it)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size > 2_000_000:      # a regular subsample is plenty for a histogram
        v = v[:: v.size // 1_000_000]
    hi = np.percentile(v, 99.5)
    lo = v.min()
    if hi <= lo:
        return float(lo)
    hist, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _structure(spacing_xyz: Sequence[float], radius_mm: float) -> np.ndarray:
    """Ellipsoidal structuring element (z, y, x) of about ``radius_mm``; axes whose spacing is
    over ``radius_mm`` (thick slices) get radius 0."""
    r = [int(round(radius_mm / s)) if s <= radius_mm else 0
         for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    r = [max(0, min(x, 5)) for x in r]
    if not any(r):
        r = [0, 1, 1]
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    d = sum((g / max(rr, 1e-9)) ** 2 if rr else (g != 0) * 2.0 for g, rr in
            zip((zz, yy, xx), r))
    return d <= 1.0


def _largest_component(mask: np.ndarray, structure: Optional[np.ndarray] = None) -> np.ndarray:
    """The largest connected component (``structure``: scipy's connectivity, default faces).
    Labelled within the mask's bounding box: the same components, and a short hold of the
    interpreter (scipy's labelling holds it throughout) for a small mask in a large volume."""
    if not np.any(mask):
        return mask
    box = crop_box(mask, 0)
    lab, n = ndimage.label(mask[box], structure=structure)
    if n <= 1:
        return mask
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    out = np.zeros(np.shape(mask), bool)
    out[box] = lab == int(np.argmax(counts))
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (which also fills every enclosed 3D cavity): background
    components (4-connected in-plane) that do not touch the slice border become foreground."""
    m = np.asarray(mask, dtype=bool)
    st = np.zeros((3, 3, 3), dtype=bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(~m, structure=st)
    if n == 0:
        return m.copy()
    border = np.zeros(n + 1, dtype=bool)
    for face in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = True                      # label 0 = the mask itself
    return m | ~border[lab]


def otsu_head_mask(array: np.ndarray, spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
                   *, erode_mm: float = 2.0) -> np.ndarray:
    """Head mask of a non-skull-stripped scan.

    Gaussian smoothing (~2 mm in-plane), threshold at half the Otsu threshold (keeps dark
    CSF and bone inside the scalp outline), closing (~4 mm), hole filling (per axial slice,
    which also fills enclosed 3D cavities), opening (~3 mm, drops thin bridges to noise),
    largest connected component, erosion (~``erode_mm``). Large volumes are processed at half
    resolution along fine axes.
    """
    a = np.asarray(array)
    check_array(a, "image")
    sp = np.array([spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]], dtype=float)  # z, y, x
    step = [1, 1, 1]
    if a.size > 3_000_000:
        step = [2 if s <= 1.5 and n >= 32 else 1 for s, n in zip(sp, a.shape)]
    small = a[::step[0], ::step[1], ::step[2]].astype(np.float32, copy=False)
    ssp = sp * np.asarray(step)
    sp_xyz = (ssp[2], ssp[1], ssp[0])
    sigma = [0.0 if s > 3.0 else 2.0 / s for s in ssp]
    sm = ndimage.gaussian_filter(small, sigma) if any(sigma) else small
    m = sm > 0.5 * otsu_threshold(sm)
    if not m.any():
        return np.zeros(a.shape, dtype=bool)
    m = ndimage.binary_closing(m, _structure(sp_xyz, 4.0), border_value=0)
    m = _fill_holes(m)
    m = ndimage.binary_opening(m, _structure(sp_xyz, 3.0))
    m = _largest_component(m)
    if erode_mm > 0:
        e = ndimage.binary_erosion(m, _structure(sp_xyz, erode_mm))
        m = e if e.any() else m
    if step != [1, 1, 1]:
        for ax, k in enumerate(step):
            if k > 1:
                m = np.repeat(m, k, axis=ax)
        m = np.ascontiguousarray(m[: a.shape[0], : a.shape[1], : a.shape[2]])
    return m


def brain_mask(case_or_volume: Union[Case, Volume, np.ndarray], *, method: str = "auto",
               reference: Optional[str] = None,
               spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Boolean mask (z, y, x) on the reference grid.

    ``method="auto"`` (default): if the reference image is skull-stripped
    (:func:`is_skull_stripped`), the union of the non-zero voxels of every sequence on the
    reference grid ("nonzero", a brain mask); otherwise an Otsu head mask of the reference
    sequence ("otsu", see :func:`otsu_head_mask`; a head mask, not a brain mask). ``method`` can
    force "nonzero" or "otsu". ``spacing`` is only used for a bare array.
    """
    return _brain_mask(case_or_volume, method=method, reference=reference, spacing=spacing)[0]


def _brain_mask(obj, *, method: str = "auto", reference: Optional[str] = None,
                spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Tuple[np.ndarray, str]:
    if method not in ("auto", "nonzero", "otsu"):
        raise RadiogenError(f"unknown mask method {method!r}; choose auto, nonzero or otsu")
    if isinstance(obj, Case):
        ref = _reference_name(obj, reference)
        rv = obj.sequences[ref]
        arrays = [v.array for v in obj.sequences.values() if v.geometry.same_grid(rv.geometry)]
        ref_arr, spacing = rv.array, rv.geometry.spacing
    elif isinstance(obj, Volume):
        ref_arr, spacing, arrays = obj.array, obj.geometry.spacing, [obj.array]
    else:
        ref_arr = np.asarray(obj)
        arrays = [ref_arr]
    check_array(ref_arr, "the reference image")
    # a padded background (-1024, -32768) reads as the 0 background of other images
    ref_arr, arrays = _without_padding(ref_arr), [_without_padding(a) for a in arrays]
    if method == "auto":
        method = "nonzero" if is_skull_stripped(ref_arr) else "otsu"
    if method == "nonzero":
        m = np.zeros(ref_arr.shape, dtype=bool)
        for a in arrays:
            m |= a != 0
        return m, "nonzero"
    return otsu_head_mask(ref_arr, spacing), "otsu"


# ------------------------------------------------------------------------------------------
# normalisation and cropping
# ------------------------------------------------------------------------------------------
def _norm_params(array: np.ndarray, mask: np.ndarray, method: str) -> Dict[str, Any]:
    v = np.asarray(array)[mask]
    if v.size == 0:
        raise RadiogenError("cannot normalise: the mask is empty")
    if method == "zscore":
        if v.size > 2_000_000:      # a regular subsample: mean/std to ~1e-3
            v = v[:: v.size // 1_000_000]
        v = v.astype(np.float64, copy=False)
        mean = float(v.mean())
        std = float(v.std())
        return {"method": "zscore", "mean": mean, "std": std if std > 0 else 1.0}
    if method == "percentile":
        if v.size > 2_000_000:
            v = v[:: v.size // 1_000_000]
        lo, hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
        return {"method": "percentile", "lo": lo, "hi": hi if hi > lo else lo + 1.0}
    if method == "none":
        return {"method": "none"}
    raise RadiogenError(f"unknown normalisation {method!r}; choose zscore, percentile or none")


def _apply_norm(array: np.ndarray, mask: Optional[np.ndarray], p: Dict[str, Any],
                clip: float, outside: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    a = np.asarray(array)
    if out is None:
        out = np.empty(a.shape, dtype=np.float32)
    if p["method"] == "zscore":
        np.subtract(a, np.float32(p["mean"]), out=out, dtype=np.float32, casting="unsafe")
        np.multiply(out, np.float32(1.0 / p["std"]), out=out)
        if clip:
            np.clip(out, -clip, clip, out=out)
    elif p["method"] == "percentile":
        np.subtract(a, np.float32(p["lo"]), out=out, dtype=np.float32, casting="unsafe")
        np.multiply(out, np.float32(1.0 / (p["hi"] - p["lo"])), out=out)
        np.clip(out, 0.0, 1.0, out=out)
    else:
        out[...] = a
    if mask is not None:
        np.copyto(out, np.float32(outside), where=~mask)
    return out


def normalise(array: np.ndarray, mask: Optional[np.ndarray] = None, method: str = "zscore", *,
              clip: float = 5.0, outside: float = 0.0, return_params: bool = False):
    """Normalise intensities using the voxels inside ``mask`` (all voxels if None).

    * ``"zscore"``: (x - mean) / std inside the mask, clipped to +/- ``clip`` (0 = no clip);
    * ``"percentile"``: scaled so the 0.5th / 99.5th percentiles inside the mask map to 0 / 1,
      clipped to [0, 1];
    * ``"none"``: a float32 copy.

    Voxels outside the mask are set to ``outside``. Returns float32 (and the parameters as a
    dict with ``return_params=True``, see :func:`denormalise`).
    """
    a = np.asarray(array)
    if mask is None:
        m = np.ones(a.shape, dtype=bool)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise GeometryError(f"mask of shape {m.shape} does not match the image {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise RadiogenError("image contains NaN or infinite values; cannot normalise")
    p = _norm_params(a, m, method)
    out = _apply_norm(a, None if mask is None else m, p, clip, outside)
    return (out, p) if return_params else out


def crop_box(mask: np.ndarray, margin_vox: Union[int, Sequence[int]] = 4) -> Tuple[slice, ...]:
    """Bounding box of ``mask`` (z, y, x) grown by ``margin_vox`` (int or per axis), clipped to
    the array. An empty mask gives the whole array."""
    m = np.asarray(mask, dtype=bool)
    margin = np.broadcast_to(np.asarray(margin_vox, dtype=int), (m.ndim,))
    box = []
    for ax in range(m.ndim):
        other = tuple(i for i in range(m.ndim) if i != ax)
        idx = np.flatnonzero(m.any(axis=other))
        if idx.size == 0:
            return tuple(slice(0, s) for s in m.shape)
        lo = max(0, int(idx[0]) - int(margin[ax]))
        hi = min(m.shape[ax], int(idx[-1]) + 1 + int(margin[ax]))
        box.append(slice(lo, hi))
    return tuple(box)


def crop_geometry(geometry: Geometry, box: Sequence[slice]) -> Geometry:
    """Geometry of ``array[box]`` for an array on ``geometry`` (box in (z, y, x))."""
    start = np.array([box[2].start or 0, box[1].start or 0, box[0].start or 0], dtype=float)
    size = tuple(len(range(*b.indices(n))) for b, n in zip((box[2], box[1], box[0]),
                                                             geometry.size))
    origin = (np.asarray(geometry.origin, dtype=float)
              + geometry.direction_matrix @ (np.asarray(geometry.spacing) * start))
    return geometry.with_(size=size, origin=tuple(origin.tolist()))


# ------------------------------------------------------------------------------------------
# the prepared case and its inverse
# ------------------------------------------------------------------------------------------
@dataclass
class PreparedCase:
    """A case ready for a model, and what is needed to go back to the native grid.

    ``array`` (C, z, y, x) float32 holds ``sequences`` in that order on the cropped working
    grid ``geometry``. ``box`` locates it in the uncropped working grid ``working_geometry``,
    which is either the reference sequence's native grid ``native_geometry`` (``resampled`` is
    False) or that field of view at another spacing.
    """

    array: np.ndarray
    sequences: Tuple[str, ...]
    mask: np.ndarray                       # bool (z, y, x), cropped working grid
    box: Tuple[slice, slice, slice]        # into the working grid (z, y, x)
    geometry: Geometry                     # cropped working grid
    working_geometry: Geometry             # uncropped working grid
    native_geometry: Geometry              # the reference sequence's grid (results go there)
    reference: str
    resampled: bool                        # working grid != native reference grid
    case_id: str = ""
    labels: Optional[np.ndarray] = None    # case labels on the cropped working grid (nearest)
    norm: str = "zscore"
    norm_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    mask_method: str = "nonzero"           # "nonzero" (brain) or "otsu" (head)
    spacing: Optional[Tuple[float, float, float]] = None
    synthetic: Tuple[str, ...] = ()        # input sequences that were generated by a model
    kind: str = "volume"
    warnings: List[str] = field(default_factory=list)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(z, y, x) of the cropped working grid."""
        return tuple(self.array.shape[1:])

    def channel(self, name: str) -> np.ndarray:
        return self.array[self.sequences.index(name)]

    def to_native(self, array: np.ndarray, *, labels: bool = False) -> np.ndarray:
        return to_native(self, array, labels=labels)

    def summary(self) -> Dict[str, Any]:
        """JSON-able description (for logs, reports and model cards)."""
        return {"case_id": self.case_id, "sequences": list(self.sequences),
                "shape_zyx": list(self.shape),
                "spacing_xyz_mm": [round(float(v), 4) for v in self.geometry.spacing],
                "native_shape_zyx": list(self.native_geometry.shape),
                "reference": self.reference, "resampled": self.resampled,
                "crop_box_zyx": [[b.start, b.stop] for b in self.box],
                "norm": self.norm, "mask_method": self.mask_method,
                "synthetic_inputs": list(self.synthetic), "warnings": list(self.warnings)}


def uncrop(prepared: PreparedCase, array: np.ndarray, *, fill: float = 0) -> np.ndarray:
    """Pad an array on the cropped working grid ((z, y, x) or (C, z, y, x)) back to the
    uncropped working grid."""
    a = np.asarray(array)
    if a.ndim not in (3, 4) or tuple(a.shape[-3:]) != tuple(prepared.shape):
        raise GeometryError(f"array of shape {a.shape} does not fit the prepared grid "
                            f"{prepared.shape} (z, y, x)")
    full_shape = a.shape[:-3] + tuple(prepared.working_geometry.shape)
    full = np.full(full_shape, fill, dtype=a.dtype)
    full[(Ellipsis,) + tuple(prepared.box)] = a
    return full


def to_native(prepared: PreparedCase, array: np.ndarray, *, labels: bool = False,
              fill: float = 0) -> np.ndarray:
    """Bring an array computed on the prepared grid ((z, y, x), or (C, z, y, x) for maps) onto
    the reference sequence's native grid (``prepared.native_geometry``).

    The crop is undone by padding with ``fill``; if the working grid was resampled, SimpleITK
    resamples back with nearest neighbour (``labels=True``, same dtype) or linear interpolation
    (maps, float32), only over the native voxels the cropped grid covers (``fill`` elsewhere).
    Without resampling the result is exact (same dtype as the input).
    """
    if not prepared.resampled:
        return uncrop(prepared, array, fill=fill)
    a = np.asarray(array)
    if a.ndim not in (3, 4) or tuple(a.shape[-3:]) != tuple(prepared.shape):
        raise GeometryError(f"array of shape {a.shape} does not fit the prepared grid "
                            f"{prepared.shape} (z, y, x)")
    if a.ndim == 4:
        return np.stack([_back_to_native(prepared, c, labels, fill) for c in a])
    return _back_to_native(prepared, a, labels, fill)


def _back_to_native(prepared: PreparedCase, arr: np.ndarray, labels: bool,
                    fill: float) -> np.ndarray:
    native = prepared.native_geometry
    sub = _source_box(native, prepared.geometry, pad=1)   # native voxels the crop covers
    target = crop_geometry(native, sub) if sub is not None else native
    out = resample_volume(Volume(arr, prepared.geometry), target, labels=labels,
                          interpolator="linear", name="the result", default=fill).array
    if labels and out.dtype != arr.dtype:
        out = out.astype(arr.dtype)
    if sub is None:
        return out
    full = np.full(native.shape, fill, dtype=out.dtype)
    full[sub] = out
    return full


def denormalise(prepared: PreparedCase, array: np.ndarray, sequence: str) -> np.ndarray:
    """Map a normalised image (e.g. a synthesised sequence) back to the intensity scale that
    ``sequence`` had in this case (inverse of the stored normalisation parameters)."""
    p = prepared.norm_params.get(sequence)
    if p is None:
        raise MissingSequenceError([sequence], [sequence], list(prepared.norm_params))
    a = np.asarray(array, dtype=np.float32)
    if p["method"] == "zscore":
        return a * np.float32(p["std"]) + np.float32(p["mean"])
    if p["method"] == "percentile":
        return a * np.float32(p["hi"] - p["lo"]) + np.float32(p["lo"])
    return a.copy()


# ------------------------------------------------------------------------------------------
# the whole preparation
# ------------------------------------------------------------------------------------------
def coverage_warnings(sequences: Sequence[str], reference: str, fov: Dict[str, float],
                      in_mask: Dict[str, float], mask_method: str) -> List[str]:
    """A warning for each sequence whose field of view leaves part of the reference grid's
    head/brain zero-filled: it covers less than :data:`FOV_WARN_FRACTION` of the reference field
    of view and misses some of the mask (more than :data:`MASK_NEGLIGIBLE_MISS`), or it misses
    more than ``1 - MASK_WARN_FRACTION`` of the mask. ``fov``: fraction of the reference field
    of view each resampled sequence covers; ``in_mask``: fraction of the mask (1 when absent)."""
    what = "brain" if mask_method == "nonzero" else "head"
    out: List[str] = []
    for s in sequences:
        f, c = fov.get(s, 1.0), in_mask.get(s, 1.0)
        if c < MASK_WARN_FRACTION or (f < FOV_WARN_FRACTION and c < 1 - MASK_NEGLIGIBLE_MISS):
            out.append(f"{s} covers {percent(f, 1)} of the reference ({reference}) field of "
                       f"view and {percent(c, 1)} of the {what} mask; the rest is zero-filled")
    return out


def prepare(case: Case, sequences: Optional[Sequence[str]] = None, *,
            spacing: SpacingLike = None, crop: bool = True,
            margin: Union[int, Sequence[int]] = 4, norm: str = "zscore",
            reference: Optional[str] = None, cancel=None, mask_method: str = "auto",
            clip: float = 5.0, interpolator: str = "linear") -> PreparedCase:
    """Prepare ``case`` for a model needing ``sequences`` (in that channel order; default: all
    present, canonical order).

    * ``spacing``: None keeps the reference sequence's grid (no resampling when the case is on
      one grid, exact inverse); a value in mm (scalar or (x, y, z)) resamples its field of view.
    * ``crop``: crop to the mask's bounding box + ``margin`` voxels (working grid).
    * ``norm``: "zscore" (clipped to +/- ``clip``), "percentile" or "none", inside the mask;
      voxels outside the mask are 0.
    * ``reference``: the sequence whose native grid results go back to (default
      ``case.reference``: FLAIR > T1ce > T2 > T1).
    * ``mask_method``: see :func:`brain_mask`.

    Raises :class:`MissingSequenceError` if a needed sequence is absent, :class:`GeometryError`
    if a sequence does not overlap the reference, :class:`RadiogenError` for NaN/Inf or 2D data.
    A sequence whose field of view leaves part of the head/brain mask zero-filled is said in
    ``PreparedCase.warnings`` (see :func:`coverage_warnings`).
    """
    if not isinstance(case, Case):
        raise RadiogenError(f"prepare needs a Case, got {type(case).__name__}")
    present = list(case.sequences)
    seqs = tuple(sequences) if sequences is not None else case.present
    if not seqs:
        raise MissingSequenceError(list(SEQUENCES), list(SEQUENCES), present)
    missing = [s for s in seqs if s not in case.sequences]
    if missing:
        raise MissingSequenceError(missing, list(seqs), present)
    if norm not in ("zscore", "percentile", "none"):
        raise RadiogenError(f"unknown normalisation {norm!r}; choose zscore, percentile or none")
    ref = _reference_name(case, reference)
    # a padded background (-1024, -32768) reads as the 0 background of other images, for the
    # mask (either method) and the normalisation
    vols = {s: without_padding(case.sequences[s]) for s in dict.fromkeys(list(seqs) + [ref])}
    native = case.sequences[ref].geometry
    wg = working_geometry(native, spacing)
    resampled = wg is not native and not wg.same_grid(native)
    warnings: List[str] = []
    fov: Dict[str, float] = {}          # fraction of the working grid each sequence covers

    # 1. checks: finite 3D arrays, fields of view overlapping the working grid
    for s in dict.fromkeys(list(seqs) + [ref]):
        _progress.check(cancel)
        v = vols[s]
        check_array(v.array, f"sequence {s}")
        if not v.geometry.same_grid(wg):
            if overlap_fraction(v.geometry, wg) == 0.0:
                raise GeometryError(f"sequence {s} does not overlap the reference sequence "
                                    f"{ref} (disjoint fields of view)")
            fov[s] = overlap_fraction(v.geometry, wg, n=33)     # finer: said in a warning

    # 2. mask, computed on a native grid (the skull-stripped test on a native array, which
    # resampling never zero-pads), carried to the working grid by nearest neighbour. A
    # synthetic reference (made by a model, zero outside its own mask) does not decide it: the
    # first acquired sequence (FLAIR > T1ce > T2 > T1) does.
    src_name = ref
    if case.sequences[ref].synthetic:
        real = [s for s in ("flair", "t1ce", "t2", "t1")
                if s in case.sequences and not case.sequences[s].synthetic]
        if real:
            src_name = real[0]
            check_array(case.sequences[src_name].array, f"sequence {src_name}")
    src = vols[src_name] if src_name in vols else without_padding(case.sequences[src_name])
    if mask_method == "auto":
        mask_method = "nonzero" if is_skull_stripped(src.array) else "otsu"
    if mask_method == "nonzero":
        use = [s for s in seqs if not case.sequences[s].synthetic] or list(seqs)
        m = np.zeros(native.shape, dtype=bool)
        for s in use:
            v = vols[s]
            if not v.geometry.same_grid(native):
                v = resample_volume(v, native, interpolator=interpolator, name=f"sequence {s}")
            m |= v.array != 0
        mgeom = native
    elif mask_method == "otsu":
        m = otsu_head_mask(src.array, src.geometry.spacing)
        mgeom = src.geometry
    else:
        raise RadiogenError(f"unknown mask method {mask_method!r}; choose auto, nonzero or otsu")
    if not mgeom.same_grid(wg):
        m = resample_volume(Volume(m.view(np.uint8), mgeom), wg, labels=True,
                            name="the mask").array.astype(bool)
    if not m.any():
        raise RadiogenError(f"case {case.case_id}: the {mask_method} mask is empty (is the "
                            f"{src_name} image blank?)")

    # 3. crop box on the working grid; sequences are resampled straight onto the cropped grid
    box = crop_box(m, margin) if crop else tuple(slice(0, n) for n in wg.shape)
    geom = crop_geometry(wg, box)
    m = np.ascontiguousarray(m[box])

    labels = None
    if case.labels is not None:
        if case.labels.geometry.same_grid(wg):
            labels = np.ascontiguousarray(case.labels.array[box])
        else:
            labels = resample_volume(case.labels, geom, labels=True,
                                     name="the label image").array

    # 4. normalise each channel inside the mask (and inside its own field of view: voxels a
    # resampled sequence does not cover are 0 and do not count), stack
    out = np.empty((len(seqs),) + tuple(m.shape), dtype=np.float32)
    params: Dict[str, Dict[str, Any]] = {}
    outside = ~m
    n_mask = int(np.count_nonzero(m))
    in_mask: Dict[str, float] = {}      # fraction of the mask each resampled sequence covers
    for i, s in enumerate(seqs):
        _progress.check(cancel)
        v = vols[s]
        inside, out_i = m, outside
        if v.geometry.same_grid(wg):
            a = v.array[box]
        else:
            a = resample_volume(v, geom, interpolator=interpolator, name=f"sequence {s}",
                                default=np.nan).array
            nofov = np.isnan(a)
            if nofov.any():
                a[nofov] = 0.0
                inside = m & ~nofov
                n_in = int(np.count_nonzero(inside))
                if n_in == 0:
                    raise GeometryError(f"sequence {s} does not cover any of the {ref} "
                                        f"{'brain' if mask_method == 'nonzero' else 'head'} "
                                        "mask")
                in_mask[s] = n_in / n_mask
                out_i = ~inside
        p = _norm_params(a, inside, norm)
        _apply_norm(a, None, p, clip, 0.0, out=out[i])
        np.copyto(out[i], np.float32(0.0), where=out_i)
        params[s] = p
    warnings.extend(coverage_warnings(seqs, ref, fov, in_mask, mask_method))
    # judged on the reference's own grid (its slice thickness), whatever the working spacing
    acquired = [s for s in dict.fromkeys([ref] + list(seqs)) if not case.sequences[s].synthetic]
    warnings.extend(registration_warnings({s: vols[s] for s in acquired}, native,
                                          cancel=cancel))
    # what the file readers said about the files used (a qform/sform conflict, a sheared grid:
    # core.io), "<sequence> (<file>): ..." in the case's meta
    used = set(seqs) | {ref, "labels"}
    warnings.extend(w for w in case.meta.get("warnings") or []
                    if str(w).split(" ", 1)[0] in used and w not in warnings)

    return PreparedCase(
        array=out, sequences=tuple(seqs), mask=m, box=tuple(box), geometry=geom,
        working_geometry=wg, native_geometry=native, reference=ref, resampled=bool(resampled),
        case_id=case.case_id, labels=labels, norm=norm, norm_params=params,
        mask_method=mask_method, spacing=_spacing3(spacing),
        synthetic=tuple(s for s in seqs if case.sequences[s].synthetic), kind=case.kind,
        warnings=warnings)


# ------------------------------------------------------------------------------------------
# co-registration check
# ------------------------------------------------------------------------------------------
#: an acquired sequence whose edges are offset from the reference's by more than this (mm, in
#: the reference grid's finely sampled axes) is said in a warning: it may not be co-registered
MISREGISTRATION_WARN_MM = 5.0
#: the largest offset looked for, mm
MISREGISTRATION_SEARCH_MM = 20.0
#: the images are compared at this spacing (mm) or the grid's, if coarser
MISREGISTRATION_GRID_MM = 2.0
#: axes with coarser spacing (thick slices) are not reported
MISREGISTRATION_MAX_SPACING_MM = 3.0


#: the last results of :func:`sequence_offsets`, by what they depend on (:func:`_offsets_key`):
#: a case's check runs when it is opened (the viewer, ``radiogen info``) and again in the
#: prepare step of every analysis of it, which the same voxels and grids answer alike
_OFFSETS: "OrderedDict[tuple, Dict[str, Optional[Tuple[float, float, float]]]]" = OrderedDict()
_OFFSETS_KEPT = 8
_OFFSETS_LOCK = threading.Lock()


def _offsets_key(volumes: Dict[str, Volume], grid: Geometry) -> tuple:
    """The grid, and each volume's name, geometry, shape, type and a CRC-32 of its voxels
    (a few ms per volume; an edit anywhere in the voxels changes it)."""
    def voxels(a: np.ndarray) -> tuple:
        a = np.ascontiguousarray(a)
        return a.shape, a.dtype.str, zlib.crc32(a.reshape(-1).view(np.uint8))
    return (grid,) + tuple((s, v.geometry) + voxels(np.asarray(v.array))
                           for s, v in volumes.items())


def sequence_offsets(volumes: Dict[str, Volume], grid: Geometry, *,
                     cancel=None) -> Dict[str, Optional[Tuple[float, float, float]]]:
    """Offset (mm, along ``grid``'s x, y, z axes) of each volume after the first from the first
    one (see :func:`image_offset`; None for a blank image). The volumes are compared on
    ``grid``'s field of view at :data:`MISREGISTRATION_GRID_MM` (enough for offsets of
    millimetres, and cheap), where every one has data. The same voxels on the same grids are
    not compared again (the last few results are kept)."""
    if len(volumes) < 2:
        return {}
    key = _offsets_key(volumes, grid)
    try:
        hash(key)
    except TypeError:                    # a geometry built with unhashable fields: no reuse
        return _sequence_offsets(volumes, grid, cancel=cancel)
    with _OFFSETS_LOCK:
        if key in _OFFSETS:
            _OFFSETS.move_to_end(key)
            return dict(_OFFSETS[key])
    out = _sequence_offsets(volumes, grid, cancel=cancel)
    with _OFFSETS_LOCK:
        _OFFSETS[key] = dict(out)
        while len(_OFFSETS) > _OFFSETS_KEPT:
            _OFFSETS.popitem(last=False)
    return out


def _sequence_offsets(volumes: Dict[str, Volume], grid: Geometry, *,
                      cancel=None) -> Dict[str, Optional[Tuple[float, float, float]]]:
    names = list(volumes)
    coarse = working_geometry(grid, tuple(max(float(h), MISREGISTRATION_GRID_MM)
                                          for h in grid.spacing))
    covered = np.ones(coarse.shape, dtype=bool)
    arrays: Dict[str, np.ndarray] = {}
    for s in names:
        _progress.check(cancel)
        a = resample_volume(volumes[s], coarse, default=np.nan, name=f"sequence {s}").array
        nan = np.isnan(a)
        covered &= ~nan
        a[nan] = 0.0
        arrays[s] = a
    inner = ndimage.binary_erosion(covered, iterations=2)
    ref = edge_image(arrays[names[0]], inner)
    out: Dict[str, Optional[Tuple[float, float, float]]] = {}
    for s in names[1:]:
        _progress.check(cancel)
        out[s] = image_offset(ref, edge_image(arrays[s], inner), coarse.spacing)
    return out


def acquired_sequences(case: Case) -> List[str]:
    """The sequences of ``case`` not made by a model, its reference first (when acquired),
    then in canonical order: what the co-registration check and ``core.register`` compare."""
    order = [case.reference] + [s for s in SEQUENCES if s in case.sequences]
    return [s for s in dict.fromkeys(order) if not case.sequences[s].synthetic]


def case_registration_warnings(case: Case, *, cancel=None) -> List[str]:
    """:func:`registration_warnings` for every acquired sequence of ``case`` against its
    reference (the first acquired sequence when the reference is synthetic), on the
    reference's grid: what the viewer and ``radiogen info`` say when a case is opened."""
    return list(case_registration_warnings_by_sequence(case, cancel=cancel).values())


def case_registration_warnings_by_sequence(case: Case, *, cancel=None) -> Dict[str, str]:
    """:func:`case_registration_warnings` keyed by the sequence each is about."""
    acquired = acquired_sequences(case)
    if len(acquired) < 2:
        return {}
    vols = {s: without_padding(case.sequences[s]) for s in acquired}
    return registration_warnings_by_sequence(vols, vols[acquired[0]].geometry, cancel=cancel)


def registration_warnings(volumes: Dict[str, Volume], grid: Geometry, *,
                          limit_mm: float = MISREGISTRATION_WARN_MM, cancel=None) -> List[str]:
    """A warning for each volume whose edges are offset from the first one's by more than
    ``limit_mm`` (:func:`sequence_offsets`), along the axes of ``grid`` whose spacing is at most
    :data:`MISREGISTRATION_MAX_SPACING_MM` (thick slices do not place an edge across them)."""
    return list(registration_warnings_by_sequence(volumes, grid, limit_mm=limit_mm,
                                                  cancel=cancel).values())


def registration_warnings_by_sequence(volumes: Dict[str, Volume], grid: Geometry, *,
                                      limit_mm: float = MISREGISTRATION_WARN_MM,
                                      cancel=None) -> Dict[str, str]:
    """:func:`registration_warnings` keyed by the sequence each is about."""
    axes = [h <= MISREGISTRATION_MAX_SPACING_MM for h in grid.spacing]
    if len(volumes) < 2 or not any(axes):
        return {}
    ref = next(iter(volumes))
    out: Dict[str, str] = {}
    for s, d in sequence_offsets(volumes, grid, cancel=cancel).items():
        if d is None:
            continue
        size = float(np.sqrt(sum(v * v for v, ok in zip(d, axes) if ok)))
        if size > limit_mm:
            parts = ", ".join(f"{n} {v:+.1f}" for n, v, ok in zip("xyz", d, axes) if ok)
            out[s] = (f"{s} looks offset from {ref} by about {size:.0f} mm ({parts} mm along "
                      f"{ref}'s grid): the sequences may not be co-registered, and the models "
                      "expect aligned sequences; check them overlaid, or register them first")
    return out


def edge_image(array: np.ndarray, inside: np.ndarray) -> Optional[np.ndarray]:
    """Gradient magnitude of ``array`` scaled by its 99th percentile (of the positive voxels of
    ``inside``) and clipped, 0 outside ``inside``: the edges (head, ventricles, sulci) that
    sequences of different contrasts share. None for a blank image."""
    v = array[inside]
    v = v[v > 0]
    if v.size < 100:
        return None
    top = float(np.percentile(v, 99))
    if not top > 0:
        return None
    g = ndimage.gaussian_gradient_magnitude(np.clip(array / top, 0.0, 1.5).astype(np.float32),
                                            1.0)
    g[~inside] = 0.0
    return g


def image_offset(fixed: Optional[np.ndarray], moving: Optional[np.ndarray],
                 spacing_xyz: Sequence[float],
                 max_mm: float = MISREGISTRATION_SEARCH_MM) -> Optional[Tuple[float, float, float]]:
    """Offset (mm, along the grid's x, y, z axes) of ``moving`` from ``fixed``, two (z, y, x)
    images on one grid: the shift (within ``max_mm``) that maximises their cross-correlation
    (FFT, zero-padded), refined below a voxel by a parabola through the peak along each axis.
    None when either is None."""
    if fixed is None or moving is None:
        return None
    shape = fixed.shape
    lim = [max(1, min(int(max_mm / float(h)), n // 2 - 1))
           for h, n in zip(tuple(spacing_xyz)[::-1], shape)]
    from scipy import fft as _fft
    size = [_fft.next_fast_len(n + k, real=True) for n, k in zip(shape, lim)]
    axes = (0, 1, 2)
    f = _fft.rfftn(fixed - fixed.mean(), s=size, axes=axes)
    g = _fft.rfftn(moving - moving.mean(), s=size, axes=axes)
    cc = _fft.irfftn(np.conj(f) * g, s=size, axes=axes)   # cc[l] = sum fixed[i] moving[i + l]
    # the lags within the limits, in order -lim..lim along each axis
    idx = [np.r_[n - k:n, 0:k + 1] for n, k in zip(size, lim)]
    sub = cc[np.ix_(*idx)]
    k = np.unravel_index(int(np.argmax(sub)), sub.shape)
    lag = []
    for ax in range(3):
        frac = 0.0
        if 0 < k[ax] < sub.shape[ax] - 1:
            lo, hi = list(k), list(k)
            lo[ax] -= 1
            hi[ax] += 1
            y0, y1, y2 = sub[tuple(lo)], sub[k], sub[tuple(hi)]
            d = y0 - 2 * y1 + y2
            if d < 0:
                frac = 0.5 * (y0 - y2) / d
        lag.append(k[ax] - lim[ax] + frac)
    z, y, x = (lag[i] * float(spacing_xyz[2 - i]) for i in range(3))
    return (x, y, z)
