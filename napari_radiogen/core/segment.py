"""Tumour segmentation: inference, volumes, and agreement with a ground truth.

Two kinds of model (card ``task: segmentation``):

* ``dims: 3`` sub-region models for 4-sequence volumes: the case is put on one grid, cropped to
  the brain, resampled to the card's ``spacing_mm`` and z-scored (:mod:`core.prepare`); the net
  predicts 3 sigmoid channels (WT, TC, ET, the nested BraTS regions); the probabilities go back
  to the reference sequence's native grid (linear interpolation) and are thresholded (0.5, or the
  card's ``postprocess.thresholds``; the card may also take ET from T1ce enhancement inside the
  predicted core, ``postprocess.enhancement``) into BraTS labels 1 (necrotic / non-enhancing
  core), 2 (oedema), 4 (enhancing tumour).
* ``dims: 2`` whole-tumour models for the TCGA-LGG 2D slice packs: each 128 x 128 slice gets
  FLAIR (required), T1 and T1ce (optional; a missing one is zeros plus an availability channel of
  zeros, never a copy of FLAIR); one sigmoid channel, label 1 = FLAIR abnormality.

:func:`segment` is a generator (progress, then a :class:`SegResult`); drive it with
``core.progress.run``. The input-building helpers here are shared with the training tasks
(``core/train/tasks/segmentation.py``), so training and inference see identical tensors.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .case import REGIONS, Case, Geometry
from .errors import (CaseLoadError, GeometryError, MissingSequenceError, ModelFileError,
                     RadiogenError)
from .insample import DICE, SEGMENTATION, case_in_sample_note
from .notes import NOT_SKULL_STRIPPED, Note, synthetic_note
from .models import oom_fallback
from .progress import CancelToken, Progress, check

TASK = "segmentation"
#: what a GPU out-of-memory fallback says was done on the CPU (core.models.oom_note)
SEGMENTED = "this case was segmented"
#: shipped models in order of preference (the CV comparisons in their cards); the first one
#: installed that fits the case's kind (2D slice pack / 3D volume) is the default
PREFERRED_MODELS: Tuple[str, ...] = ("seg_brats_attunet2mm", "seg_brats_attunet",
                                     "seg_brats_segresnet", "seg_lgg_segresnet2d")


def fits_case(card: Dict[str, Any], case) -> bool:
    """A 2D model for slice packs, a 3D model for volumes."""
    return (int(card.get("dims", 3)) == 2) == (case.kind == "slices")


def default_model_name(case) -> str:
    """The installed segmentation model used for ``case`` when none is named."""
    from .models import list_models
    names = [m["name"] for m in list_models(TASK) if fits_case(m["card"], case)]
    pick = next((p for p in PREFERRED_MODELS if p in names), names[0] if names else None)
    if pick is None:
        raise ModelFileError("no segmentation model for "
                             + ("2D slice packs" if case.kind == "slices" else "3D volumes")
                             + " is installed")
    return pick
REGION_ORDER: Tuple[str, ...] = ("WT", "TC", "ET")
#: channel order of the 2D slice models (FLAIR first: the one they need)
SLICE_SEQUENCES: Tuple[str, ...] = ("flair", "t1", "t1ce")
#: a volume thinner than this (mm) in any axis, or with fewer slices, is treated as 2D input
MIN_EXTENT_MM = 60.0
MIN_SLICES = 8


# ------------------------------------------------------------------------------------------
# labels <-> regions, metrics
# ------------------------------------------------------------------------------------------

def labels_to_regions(labels: np.ndarray) -> np.ndarray:
    """BraTS labels (0/1/2/4; 3 is read as 4) -> bool (3, ...) regions WT, TC, ET."""
    lab = np.asarray(labels)
    et = (lab == 4) | (lab == 3)
    tc = et | (lab == 1)
    wt = tc | (lab == 2)
    return np.stack([wt, tc, et])


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
    """bool/prob (3, ...) WT, TC, ET -> uint8 BraTS labels; nesting enforced (ET in TC in WT)."""
    r = np.asarray(regions)
    if r.dtype != bool:
        r = r >= 0.5
    wt, tc, et = r[0], r[1] & r[0], r[2] & r[1] & r[0]
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = 2
    out[tc] = 1
    out[et] = 4
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (BraTS convention)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    if s == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / s)


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float] = (1, 1, 1)) -> float:
    """95th percentile symmetric Hausdorff distance (mm) between two masks' surfaces.

    0 when both are empty; ``nan`` when exactly one is empty (undefined)."""
    from scipy import ndimage

    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("nan")
    # crop to the union's bounding box (+1) for speed
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = idx.max(0) + 3
    sl = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    a, b = a[sl], b[sl]
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)[sb]
    return float(np.percentile(np.concatenate([da, db]), 95))


def compare_to_truth(labels: np.ndarray, truth: np.ndarray, geometry: Optional[Geometry] = None,
                     *, regions: Sequence[str] = REGION_ORDER, with_hd95: bool = True
                     ) -> Dict[str, Dict[str, float]]:
    """Dice (and HD95 in mm) per region of a predicted label map against a ground truth.

    Both are label maps on the same grid. For whole-tumour masks (values 0/1) use
    ``regions=("WT",)``: any non-zero label is tumour."""
    if labels.shape != truth.shape:
        raise GeometryError(f"prediction {labels.shape} and ground truth {truth.shape} are not "
                            "on the same grid")
    sp = geometry.napari_scale if geometry is not None else (1.0, 1.0, 1.0)
    # both maps cropped to the bounding box of their labels (+ a margin wider than hd95's):
    # the same counts and surfaces, without full-grid region masks of a fine grid
    labels, truth = np.asarray(labels), np.asarray(truth)
    idx = np.nonzero((labels != 0) | (truth != 0))
    if idx[0].size:
        box = tuple(slice(max(int(i.min()) - 3, 0), int(i.max()) + 4) for i in idx)
        labels, truth = labels[box], truth[box]
    pr = labels_to_regions(labels)
    gt = labels_to_regions(truth)
    if tuple(regions) == ("WT",):
        pr = (np.asarray(labels) > 0)[None]
        gt = (np.asarray(truth) > 0)[None]
    out: Dict[str, Dict[str, float]] = {}
    for i, r in enumerate(regions):
        m = {"dice": dice(pr[i], gt[i])}
        if with_hd95:
            m["hd95_mm"] = hd95(pr[i], gt[i], sp)
        out[r] = m
    return out


def region_volumes_ml(labels: np.ndarray, geometry: Geometry) -> Dict[str, float]:
    """Volumes (mL) of WT/TC/ET and of each label present in the BraTS label set."""
    vox = geometry.voxel_volume_ml
    lab = np.asarray(labels)
    out = {r: float(np.isin(lab, v).sum() * vox) for r, v in REGIONS.items()}
    for v in (1, 2, 4):
        out[f"label_{v}"] = float((lab == v).sum() * vox)
    return out


# ------------------------------------------------------------------------------------------
# inputs (shared with training)
# ------------------------------------------------------------------------------------------

def zscore_stack(x: np.ndarray) -> np.ndarray:
    """z-score a (n, H, W) stack over its non-zero pixels (the head); zeros stay 0."""
    x = np.asarray(x, dtype=np.float32)
    fg = x > 0
    if fg.sum() < 16:
        return np.zeros_like(x)
    v = x[fg]
    mu, sd = float(v.mean()), float(v.std())
    out = (x - mu) / max(sd, 1e-6)
    out[~fg] = 0.0
    return out.astype(np.float32)


def slices_input(channels: Dict[str, Optional[np.ndarray]],
                 order: Sequence[str] = SLICE_SEQUENCES) -> np.ndarray:
    """(n, 2C, H, W) float32 input of the 2D models: C z-scored sequences (zeros where missing)
    then C availability channels (1 = present)."""
    ref = next(v for v in channels.values() if v is not None)
    n, h, w = ref.shape
    out = np.zeros((n, 2 * len(order), h, w), dtype=np.float32)
    for i, s in enumerate(order):
        a = channels.get(s)
        if a is not None:
            out[:, i] = zscore_stack(a)
            out[:, len(order) + i] = 1.0
    return out


def pack_channels(case: Case) -> Dict[str, Optional[np.ndarray]]:
    """The sequences of a slice pack that are really available (a channel the source filled
    with a copy of FLAIR is marked unavailable by the reader)."""
    avail = case.meta.get("available") or {}
    out: Dict[str, Optional[np.ndarray]] = {}
    for s in SLICE_SEQUENCES:
        v = case.sequences.get(s)
        ok = v is not None and bool(avail.get(s, True)) and bool(v.meta.get("available", True))
        out[s] = np.asarray(v.array) if ok else None
    return out


# ------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------

@dataclass
class SegResult:
    case_id: str
    labels: np.ndarray                     # (z, y, x) uint8 on the reference native grid
    geometry: Geometry
    volumes_ml: Dict[str, float]
    model: str
    kind: str = "volume"                   # "volume" (labels 0/1/2/4) or "slices" (0/1)
    reference: str = "flair"
    warnings: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    metrics: Optional[Dict[str, Dict[str, float]]] = None   # vs the case's labels, if any
    synthetic_inputs: List[str] = field(default_factory=list)  # generated, not acquired
    model_sha256: Optional[str] = None     # the weights file's (core.models.weights_sha256)

    def summary(self) -> Dict[str, Any]:
        """The result for JSON: strict (an undefined metric, HD95 when exactly one of the two
        masks is empty, is None, JSON null, never NaN: ``core.outputs.json_safe``)."""
        from .outputs import json_safe
        return {"case_id": self.case_id, "model": self.model,
                "model_sha256": self.model_sha256, "kind": self.kind,
                "reference_sequence": self.reference, "device": self.device,
                "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
                "metrics_vs_labels": json_safe(self.metrics), "warnings": list(self.warnings),
                "synthetic_inputs": list(self.synthetic_inputs),
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
                "shape_zyx": list(self.labels.shape),
                "spacing_xyz_mm": list(self.geometry.spacing)}


# ------------------------------------------------------------------------------------------
# model running
# ------------------------------------------------------------------------------------------

def _predict_probs(module, x: np.ndarray, *, roi: Sequence[int], device: str,
                   overlap: float = 0.25, sw_batch_size: int = 1) -> np.ndarray:
    """Sigmoid probabilities of a (C, *spatial) input, float32 (K, *spatial), on ``device``."""
    import torch
    from monai.inferers import sliding_window_inference

    t = torch.from_numpy(np.ascontiguousarray(x))[None].to(device)
    roi = tuple(int(min(r, s)) if s >= r else int(r) for r, s in zip(roi, x.shape[1:]))
    with torch.inference_mode():
        ctx = (torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda")
               else _nullcontext())
        with ctx:
            if all(r >= s for r, s in zip(roi, x.shape[1:])):
                y = _run_whole(module, t)
            else:
                y = sliding_window_inference(t, roi, sw_batch_size, module, overlap=overlap,
                                             mode="gaussian")
        return torch.sigmoid(y.float())[0].cpu().numpy()


def _run_whole(module, t):
    """One forward pass of the whole input, padded to a multiple of 16 per axis."""
    import torch.nn.functional as F

    sp = t.shape[2:]
    tgt = [int(np.ceil(s / 16) * 16) for s in sp]
    pad: List[int] = []
    for s, g in reversed(list(zip(sp, tgt))):
        pad += [(g - s) // 2, g - s - (g - s) // 2]
    y = module(F.pad(t, pad))
    sl = [slice(None), slice(None)]
    for s, g in zip(sp, tgt):
        lo = (g - s) // 2
        sl.append(slice(lo, lo + s))
    return y[tuple(sl)]


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------

def check_case(case: Case, card: Dict[str, Any]) -> None:
    """Clear errors for inputs the model cannot handle (wrong kind, 2D, non-brain, missing
    sequence)."""
    dims = int(card.get("dims", 3))
    needed = list(card.get("required_sequences") or card.get("sequences") or [])
    missing = [s for s in needed if s not in case.sequences]
    if dims == 3:
        if case.kind == "slices":
            raise CaseLoadError(
                f"{case.case_id} is a 2D slice pack; the model {card.get('name')} segments 3D "
                "volumes (choose a whole-tumour slice model, e.g. seg_lgg_segresnet2d)")
        if missing:
            raise MissingSequenceError(missing, needed, case.present)
        check_brain_volume(case)
    else:
        if case.kind != "slices":
            raise CaseLoadError(
                f"{case.case_id} is a 3D volume; the model {card.get('name')} segments 2D slice "
                "packs (TCGA-LGG style). Choose a 3D model, e.g. seg_brats_segresnet")
        if missing:
            raise MissingSequenceError(missing, needed, case.present)


def check_brain_volume(case: Case) -> None:
    """A 3D volume's grid must be able to hold a head: not 2D or a few slices thin, not
    metres wide (clear errors instead of an answer about noise)."""
    g = case.geometry
    ext = [n * s for n, s in zip(g.size, g.spacing)]
    if min(g.size) < MIN_SLICES or min(ext) < MIN_EXTENT_MM:
        raise CaseLoadError(
            f"{case.case_id} looks 2D or too thin for a 3D brain model (grid "
            f"{'x'.join(map(str, g.size))}, extent {'x'.join(f'{e:.0f}' for e in ext)} mm); "
            "the model needs a 3D brain MRI volume")
    if max(ext) > 400:
        raise CaseLoadError(
            f"{case.case_id} covers {max(ext):.0f} mm: not a brain MRI volume (the model "
            "segments brain tumours in head MRI)")


def _brain_check(arr: np.ndarray, case_id: str) -> None:
    """After cropping: a brain MRI has a compact, sizeable foreground."""
    fg = np.abs(arr).sum(0) > 0
    if fg.sum() < 1000:
        raise CaseLoadError(f"{case_id}: the images are (almost) empty after cropping to the "
                            "head; is this a brain MRI?")


# ------------------------------------------------------------------------------------------
# the generator
# ------------------------------------------------------------------------------------------

def segment(case: Case, model, device: str = "auto", cancel: Optional[CancelToken] = None,
            *, compare: bool = True) -> Iterator[Any]:
    """Segment ``case`` with a loaded segmentation model (``core.models.LoadedModel``) or a model
    name. Yields :class:`Progress`, then a :class:`SegResult` (labels on the reference
    sequence's native grid). ``compare``: score against ``case.labels`` when it has them."""
    from .models import load_model, resolve_device, weights_sha256

    t0 = time.perf_counter()
    timings: Dict[str, float] = {}
    yield Progress("segment", 0, 4, "loading the model")
    dev = resolve_device(device)
    if isinstance(model, str):
        model = load_model(model, task=TASK, device=dev)
    elif model.device != dev:
        model.module.to(dev)
        model.device = dev
    card = model.card
    if card.get("task") != TASK:
        raise RadiogenError(f"{model.name} is a {card.get('task')!r} model, not a segmentation "
                            "model")
    check_case(case, card)
    timings["load"] = time.perf_counter() - t0
    check(cancel)
    warn: List[str] = []
    syn = [s for s in case.synthetic_inputs() if s in (card.get("sequences") or [])]
    if syn:
        warn.append(synthetic_note(syn, " (generated, not acquired); interpret the "
                                        "segmentation with care"))
    if "t1ce" in syn and int(card.get("dims", 3)) == 3:
        # enhancement is what ET is, and a synthesised T1ce rarely reproduces it
        warn.append("T1ce is synthetic: the enhancing tumour (ET, label 4) and the tumour core "
                    "(TC) depend on contrast enhancement, which a synthesised T1ce does not "
                    "reliably show; their volumes here are not reliable (an ET of 0 mL may "
                    "only mean that)")
    if int(card.get("dims", 3)) == 3:
        gen = _segment_volume(case, model, dev, cancel, timings, warn)
    else:
        gen = _segment_slices(case, model, dev, cancel, timings, warn)
    labels = geom = None
    for item in gen:
        if isinstance(item, Progress):
            yield item
        else:
            labels, geom, dev = item
    check(cancel)
    kind = "slices" if int(card.get("dims", 3)) == 2 else "volume"
    vols = (region_volumes_ml(labels, geom) if kind == "volume"
            else {"WT": float((labels > 0).sum() * geom.voxel_volume_ml)})
    if getattr(geom, "nominal", False):
        warn.append(nominal_volume_note(geom))
    res = SegResult(case_id=case.case_id, labels=labels, geometry=geom,
                    volumes_ml=vols, model=model.name, kind=kind,
                    reference=case.reference, warnings=warn, timings=timings, device=dev,
                    synthetic_inputs=syn, model_sha256=weights_sha256(model.path))
    if compare and case.labels is not None and case.labels.array.shape == labels.shape:
        t = time.perf_counter()
        res.metrics = compare_to_truth(labels, case.labels.array, geom,
                                       regions=("WT",) if kind == "slices" else REGION_ORDER)
        timings["compare"] = time.perf_counter() - t
    # a case the model was trained on: its Dice (or, unscored, the segmentation) is in-sample
    note = case_in_sample_note(case, model.name, card, DICE if res.metrics else SEGMENTATION)
    if note is not None:
        warn.append(note)
    timings["total"] = time.perf_counter() - t0
    yield Progress("segment", 4, 4, "done")
    yield res


def prepare_volume(case: Case, card: Dict[str, Any]):
    """The case on the model's grid (crop to brain, spacing, z-score): a PreparedCase."""
    from .prepare import prepare

    sp = card.get("spacing_mm") or 2.0
    return prepare(case, list(card["sequences"]), spacing=sp, crop=True,
                   norm=card.get("normalisation") or "zscore")


def volume_probs(model_module, prepared_array: np.ndarray, card: Dict[str, Any], device: str
                 ) -> np.ndarray:
    roi = card.get("roi_size") or card.get("input_size") or [96, 112, 96]
    return _predict_probs(model_module, prepared_array.astype(np.float32), roi=roi,
                          device=device, overlap=float(card.get("overlap", 0.25)))


def probs_to_native(prepared, probs: np.ndarray) -> np.ndarray:
    """Sigmoid region probabilities on the prepared grid -> (3, z, y, x) float32 on the native
    grid (linear interpolation)."""
    from .prepare import to_native

    return np.stack([np.asarray(to_native(prepared, p.astype(np.float32), labels=False),
                                dtype=np.float32) for p in probs])


def native_box(prepared, probs: Optional[np.ndarray] = None,
               spec: Optional[Dict[str, Any]] = None) -> Optional[Tuple[slice, slice, slice]]:
    """The (z, y, x) box of the native grid outside which the labels brought back from the
    prepared grid are 0 (the fill value), or None when it is (nearly) all of the grid.

    Without ``probs``: the native voxels the cropped working grid covers. With the prepared
    grid's WT/TC/ET ``probs`` of a resampled case: the native voxels near the working voxels
    whose WT probability reaches the card's WT threshold (less 1e-3): a linearly interpolated
    value is a weighted mean of its neighbours, so no other native voxel can reach it, and
    every label needs the whole tumour. An empty box (no such voxel) is ``(slice(0, 0),) * 3``.
    """
    from .prepare import _source_box, crop_geometry
    if not prepared.resampled:
        return tuple(prepared.box)
    geom = prepared.geometry
    if probs is not None:
        wt = np.asarray(probs[0]) >= region_thresholds(spec)[0] - 1e-3
        if not wt.any():
            return (slice(0, 0),) * 3
        idx = np.nonzero(wt)
        sub = tuple(slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n))
                    for i, n in zip(idx, wt.shape))
        geom = crop_geometry(geom, sub)
    return _source_box(prepared.native_geometry, geom, pad=1)


def probs_to_native_labels(prepared, probs: np.ndarray,
                           spec: Optional[Dict[str, Any]] = None, case: Optional[Case] = None,
                           *, geometry: Optional[Geometry] = None) -> np.ndarray:
    """Sigmoid region probabilities on the prepared grid -> BraTS labels on the native grid
    (threshold 0.5, or the card's ``postprocess`` label-assembly options: see
    :func:`assemble_labels`); with ``geometry`` (the native grid, for volumes in mL) also the
    card's cleanup (:func:`postprocess_labels`).

    Only the box of native voxels that can be labelled (:func:`native_box`: about the whole
    tumour) is resampled, assembled and cleaned; everywhere else the labels are 0. The result
    is identical to doing it on the whole native grid, without (3, z, y, x) float32 copies of
    a fine native grid (a 0.5 mm scan: 71 M voxels, 0.85 GB each)."""
    from .case import Volume
    from .prepare import crop_geometry, resample_volume

    native = prepared.native_geometry
    box = native_box(prepared, probs, spec)
    if box is None:
        labels = native_labels(probs_to_native(prepared, probs), spec, case, prepared)
    elif any(b.stop <= b.start for b in box):
        return np.zeros(native.shape, dtype=np.uint8)     # no whole tumour anywhere
    else:
        if prepared.resampled:
            target = crop_geometry(native, box)
            part = np.stack([resample_volume(Volume(p.astype(np.float32), prepared.geometry),
                                             target, interpolator="linear",
                                             name="the result").array for p in probs])
        else:
            part = np.asarray(probs)
        labels = native_labels(part, spec, case, prepared, box=box)
    if geometry is not None and spec:
        labels = postprocess_labels(labels, geometry, spec)
    if box is None:
        return labels
    full = np.zeros(native.shape, dtype=labels.dtype)
    full[box] = labels
    return full


def native_labels(native: np.ndarray, spec: Optional[Dict[str, Any]], case: Optional[Case],
                  prepared, *, box: Optional[Tuple[slice, ...]] = None) -> np.ndarray:
    """Native-grid WT/TC/ET probabilities -> BraTS labels with the card's ``postprocess``
    label assembly (:func:`assemble_labels`; the enhancement rule reads the case's T1ce).
    ``box``: the probabilities are those of this (z, y, x) box of the native grid."""
    enh = None
    if spec and spec.get("enhancement"):
        if case is None:
            raise RadiogenError("the model's ET rule needs the case's images (enhancement)")
        enh = enhancement_z(case, prepared, spec["enhancement"].get("sequence", "t1ce"),
                            box=box)
    return assemble_labels(native, spec, enh)


def region_thresholds(spec: Optional[Dict[str, Any]]) -> Tuple[float, float, float]:
    """Decision thresholds (WT, TC, ET) on the sigmoid probabilities: 0.5 unless the card's
    ``postprocess.thresholds`` sets a region (e.g. ``{"TC": 0.7}``)."""
    th = dict((spec or {}).get("thresholds") or {})
    bad = set(th) - set(REGION_ORDER)
    if bad:
        raise RadiogenError(f"unknown region(s) in postprocess.thresholds: {sorted(bad)}; "
                            f"use {', '.join(REGION_ORDER)}")
    out = tuple(float(th.get(r, 0.5)) for r in REGION_ORDER)
    if not all(0.0 < t < 1.0 for t in out):
        raise RadiogenError(f"postprocess.thresholds must lie in (0, 1), got {th}")
    return out  # type: ignore[return-value]


def enhancement_z(case: Case, prepared, sequence: str = "t1ce", *,
                  box: Optional[Tuple[slice, ...]] = None) -> np.ndarray:
    """``sequence`` (T1ce) on the reference native grid as a z-score with the case's own
    normalisation parameters (brain mean / SD, as the network input), not clipped. ``box``:
    only that (z, y, x) box of the native grid (same values as the whole grid's there)."""
    from .case import Volume
    from .prepare import crop_geometry, resample_volume

    v = case.sequences.get(sequence)
    if v is None:
        raise MissingSequenceError([sequence], [sequence], case.present)
    native = prepared.native_geometry
    if box is not None:
        if v.geometry.same_grid(native):
            v = Volume(v.array[tuple(box)], crop_geometry(native, box))
        native = crop_geometry(native, box)
    if not v.geometry.same_grid(native):
        v = resample_volume(Volume(v.array, v.geometry), native, interpolator="linear",
                            name=f"sequence {sequence}")
    a = np.asarray(v.array, dtype=np.float32)
    p = (prepared.norm_params or {}).get(sequence) or {}
    if p.get("method") == "zscore":
        mu, sd = float(p["mean"]), float(p["std"])
    else:                                   # other normalisations: z-score over the non-zeros
        fg = a[a != 0]
        mu, sd = (float(fg.mean()), float(fg.std())) if fg.size else (0.0, 1.0)
    return (a - np.float32(mu)) / np.float32(max(sd, 1e-6))


def assemble_labels(native_probs: np.ndarray, spec: Optional[Dict[str, Any]] = None,
                    enhancement: Optional[np.ndarray] = None) -> np.ndarray:
    """(3, ...) WT/TC/ET probabilities on the native grid -> BraTS labels 0/1/2/4.

    Card-driven options (a model card's ``postprocess``; none of them = threshold 0.5, the
    nesting ET in TC in WT of :func:`regions_to_labels`):

    * ``thresholds``: ``{"WT": t, "TC": t, "ET": t}`` decision thresholds per region (missing
      regions: 0.5);
    * ``enhancement``: ``{"sequence": "t1ce", "min_z": k}``: the enhancing tumour is not read
      from the ET channel but taken as the voxels of the predicted tumour core whose T1ce
      z-score (``enhancement``, see :func:`enhancement_z`) is >= k (the radiological
      definition of enhancement); the tumour core and the whole tumour are unchanged.
    """
    tw, tt, te = region_thresholds(spec)
    p = np.asarray(native_probs)
    reg = np.stack([p[0] >= tw, p[1] >= tt, p[2] >= te])
    rule = (spec or {}).get("enhancement")
    if rule:
        if enhancement is None:
            raise RadiogenError("postprocess.enhancement needs the T1ce z-score map")
        if enhancement.shape != reg.shape[1:]:
            raise GeometryError(f"enhancement map {enhancement.shape} and probabilities "
                                f"{reg.shape[1:]} are not on the same grid")
        reg[2] = np.asarray(enhancement) >= float(rule["min_z"])
    return regions_to_labels(reg)


def postprocess_labels(labels: np.ndarray, geometry: Optional[Geometry],
                       spec: Optional[Dict[str, Any]]) -> np.ndarray:
    """Card-driven cleanup of a BraTS label map (0/1/2/4) on its native grid.

    ``spec`` (a model card's ``postprocess``; empty/None = no change; its label-assembly keys
    ``thresholds`` / ``enhancement`` act before, in :func:`assemble_labels`):

    * ``wt_min_component_fraction`` f: whole-tumour connected components (26-connectivity)
      smaller than f x the largest one are removed (f = 1: largest component only);
    * ``et_min_component_ml``: enhancing-tumour components below this volume become label 1
      (necrotic / non-enhancing core, so the tumour core is unchanged);
    * ``et_min_total_ml``: if the remaining enhancing tumour is below this volume in total, all
      of it becomes label 1 (BraTS convention: an empty ET scores 1 when the truth is empty).
    """
    if not spec:
        return labels
    from scipy import ndimage

    out = np.array(labels, dtype=np.uint8, copy=True)
    vox_ml = geometry.voxel_volume_ml if geometry is not None else 1e-3
    conn = np.ones((3, 3, 3), bool)
    f = spec.get("wt_min_component_fraction")
    if f is not None and (out > 0).any():
        lab, n = ndimage.label(out > 0, structure=conn)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            keep = np.flatnonzero(sizes >= float(f) * sizes.max()) + 1
            out[~np.isin(lab, keep) & (lab > 0)] = 0
    et = out == 4
    cmin = spec.get("et_min_component_ml")
    if cmin and et.any():
        lab, n = ndimage.label(et, structure=conn)
        sizes = np.bincount(lab.ravel())[1:] * vox_ml
        small = np.flatnonzero(sizes < float(cmin)) + 1
        out[np.isin(lab, small) & et] = 1
        et = out == 4
    tmin = spec.get("et_min_total_ml")
    if tmin and et.any() and et.sum() * vox_ml < float(tmin):
        out[et] = 1
    return out


THICK_SLICE_MM = 3.0


def nominal_volume_note(geometry) -> str:
    """What a volume in mL means on a grid whose spacing the file does not record (a slice
    pack: the FLAIR abnormality of its slices on the nominal spacing)."""
    sp = " x ".join(f"{s:g}" for s in geometry.spacing)
    return (f"volumes use the nominal spacing {sp} mm (the file does not record its spacing): "
            "approximate; a slice pack's 'WT' is its FLAIR abnormality over the pack's slices")


def domain_warnings(case: Case, card: Dict[str, Any], mask_method: str) -> List[str]:
    """Where a 3D case lies outside what a 3D model was trained on, said plainly.

    The 3D models here were trained on skull-stripped BraTS volumes (1 mm isotropic sources;
    a card may say otherwise with ``skull_stripped_input: false``). On a native scan with scalp
    and skull (detected as no exact-zero background: the head mask was used) they can label
    scalp, orbits or neck and miss the tumour: seen on the native TCGA-FG-6692 scan."""
    out: List[str] = []
    if card.get("skull_stripped_input", int(card.get("dims", 3)) == 3) and mask_method != "nonzero":
        out.append(Note("the input is not skull-stripped (its background is not exactly zero): "
                        "this model was trained on skull-stripped BraTS volumes and can label "
                        "scalp, orbits or neck and miss the tumour; skull-strip the case first "
                        "for a reliable result", NOT_SKULL_STRIPPED))
    thick = max(case.geometry.spacing)
    if thick > THICK_SLICE_MM:
        out.append(f"voxels of up to {thick:.1f} mm (thick slices): this model was trained on "
                   "1 mm volumes; small or thin regions are unreliable")
    return out


def _segment_volume(case, model, dev, cancel, timings, warn):
    t = time.perf_counter()
    yield Progress("segment", 1, 4, "preparing (crop to brain, resample, normalise)")
    prepared = prepare_volume(case, model.card)
    arr = np.asarray(prepared.array, dtype=np.float32)
    _brain_check(arr, case.case_id)
    # e.g. a sequence whose field of view leaves part of the brain zero-filled
    warn.extend(w for w in prepared.warnings if w not in warn)
    warn.extend(domain_warnings(case, model.card, prepared.mask_method))
    timings["prepare"] = time.perf_counter() - t
    check(cancel)
    yield Progress("segment", 2, 4, f"running the network on {'x'.join(map(str, arr.shape[1:]))}")
    t = time.perf_counter()
    probs, dev = oom_fallback(lambda d: volume_probs(model.module, arr, model.card, d), dev,
                              models=[model], warn=warn, what=SEGMENTED)
    timings["network"] = time.perf_counter() - t
    check(cancel)
    yield Progress("segment", 3, 4, "back to the native grid")
    t = time.perf_counter()
    # assembled and cleaned on the part of the native grid the brain crop covers
    labels = probs_to_native_labels(prepared, probs, model.card.get("postprocess"), case,
                                    geometry=case.geometry)
    del probs
    timings["to_native"] = time.perf_counter() - t
    yield labels, case.geometry, dev


def slices_probs(model_module, x: np.ndarray, device: str, batch: int = 16,
                 cancel: Optional[CancelToken] = None) -> np.ndarray:
    """(n, 2C, H, W) -> (n, H, W) sigmoid probabilities, in batches."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            check(cancel)
            t = torch.from_numpy(x[i:i + batch]).to(device)
            ctx = (torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda")
                   else _nullcontext())
            with ctx:
                y = _run_whole(model_module, t)
            out.append(torch.sigmoid(y.float())[:, 0].cpu().numpy())
    return np.concatenate(out, 0)


#: the postprocess keys a 2D slice model's card may carry (see :func:`slices_labels`)
SLICE_POSTPROCESS_KEYS = ("flip_tta", "wt_min_component_fraction")


def slice_postprocess_problems(spec: Optional[Dict[str, Any]]) -> List[str]:
    """What is wrong with a 2D slice model's ``postprocess`` (empty: nothing); checked by
    :func:`slices_labels` on a card and by the training engine on a config."""
    spec = dict(spec or {})
    out = []
    unknown = sorted(set(spec) - set(SLICE_POSTPROCESS_KEYS))
    if unknown:
        out.append(f"unknown postprocess key(s) for a 2D slice model: {unknown}; "
                   f"known: {list(SLICE_POSTPROCESS_KEYS)}")
    f = spec.get("wt_min_component_fraction")
    if f is not None and not (isinstance(f, (int, float)) and 0 < float(f) <= 1):
        out.append(f"postprocess.wt_min_component_fraction must lie in (0, 1], got {f!r}")
    return out


def slices_labels(model_module, x: np.ndarray, device: str, spec: Optional[Dict[str, Any]] = None,
                  batch: int = 16, cancel: Optional[CancelToken] = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """A slice stack's FLAIR-abnormality mask (n, H, W) uint8 and the probabilities it was cut
    from, as the card's ``postprocess`` says (none: the network's probability >= 0.5):

    * ``flip_tta``: the mean of the probabilities of the slices and of their left-right mirror
      images (the network runs twice);
    * ``wt_min_component_fraction`` f: connected components of the mask over the stack
      (26-connectivity) smaller than f x the largest are removed (f = 1: the largest only).

    The training engine scores held-out patients with this function, so the card's metrics are
    those of what inference returns."""
    spec = dict(spec or {})
    problems = slice_postprocess_problems(spec)
    if problems:
        raise RadiogenError("; ".join(problems))
    probs = slices_probs(model_module, x, device, batch=batch, cancel=cancel)
    if spec.get("flip_tta"):
        mirrored = slices_probs(model_module, np.ascontiguousarray(x[..., ::-1]), device,
                                batch=batch, cancel=cancel)
        probs = 0.5 * (probs + mirrored[..., ::-1])
    labels = (probs >= 0.5).astype(np.uint8)
    if spec.get("wt_min_component_fraction") is not None:
        labels = postprocess_labels(labels, None, {"wt_min_component_fraction":
                                                   spec["wt_min_component_fraction"]})
    return labels, probs


def _segment_slices(case, model, dev, cancel, timings, warn):
    t = time.perf_counter()
    yield Progress("segment", 1, 4, "normalising slices")
    ch = pack_channels(case)
    if ch.get("flair") is None:
        raise MissingSequenceError(["flair"], ["flair"], case.present)
    absent = [s for s in SLICE_SEQUENCES if ch.get(s) is None]
    if absent:
        warn.append(f"sequence(s) not available: {', '.join(absent)}; the model ran without "
                    "them (its availability channels say so)")
    x = slices_input(ch)
    timings["prepare"] = time.perf_counter() - t
    yield Progress("segment", 2, 4, f"running the network on {len(x)} slices")
    t = time.perf_counter()
    spec = model.card.get("postprocess")
    (labels, _), dev = oom_fallback(
        lambda d: slices_labels(model.module, x, d, spec, cancel=cancel), dev,
        models=[model], warn=warn, what=SEGMENTED)
    timings["network"] = time.perf_counter() - t
    yield labels, case.geometry, dev


# ------------------------------------------------------------------------------------------
# classical baselines (BASELINES.md), reported beside the models on the same folds
# ------------------------------------------------------------------------------------------

def _largest_component(m: np.ndarray) -> np.ndarray:
    from .prepare import _largest_component as largest
    return largest(m)


def threshold_baseline(flair: np.ndarray, region: np.ndarray, k: float) -> np.ndarray:
    """Whole-tumour floor: FLAIR > mean + k SD inside ``region`` (brain or head mask), largest
    3D connected component."""
    f = np.asarray(flair, dtype=np.float32)
    v = f[region]
    if v.size == 0:
        return np.zeros(f.shape, bool)
    m = (f > v.mean() + k * v.std()) & region
    return _largest_component(m) if m.any() else m


def brats_baseline_wt(flair: np.ndarray) -> np.ndarray:
    """BraTS WT floor: FLAIR > brain mean + 1.6 SD (brain = non-zero), largest component."""
    return threshold_baseline(flair, np.asarray(flair) != 0, 1.6)


def pack_baseline_wt(flair: np.ndarray, spacing_xyz=(1.875, 1.875, 1.0),
                     erode_mm: float = 10.0) -> np.ndarray:
    """TCGA-LGG floor: FLAIR > head mean + 1.1 SD inside an Otsu head mask eroded in-plane by
    ``erode_mm`` (about the scalp + skull thickness: the packs are not skull-stripped, and the
    bright scalp would otherwise win), largest 3D component."""
    from scipy import ndimage

    from .prepare import otsu_head_mask
    head = otsu_head_mask(np.asarray(flair, dtype=np.float32), spacing_xyz)
    r = max(1, int(round(erode_mm / spacing_xyz[0])))
    yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
    disk = (yy ** 2 + xx ** 2 <= r * r)[None]
    head = ndimage.binary_erosion(head, disk)
    return threshold_baseline(flair, head, 1.1)


# ------------------------------------------------------------------------------------------
# benchmark: the fast path against the naive MONAI run of the same net
# ------------------------------------------------------------------------------------------

def naive_labels(case: Case, model, *, device: str = "cpu", overlap: float = 0.5,
                 roi: Optional[Sequence[int]] = None, native_spacing: bool = False
                 ) -> np.ndarray:
    """The naive run of the same net, as a MONAI tutorial does it: the whole uncropped volume
    on the model's grid (no brain crop), ``sliding_window_inference`` with the *training patch*
    as window, overlap 0.5, gaussian blending, ``torch.no_grad`` (not inference mode), then the
    probabilities back to the native grid. Same weights, same spacing, same label assembly
    (thresholds / enhancement rule of the card, :func:`assemble_labels`; no postprocessing).

    ``native_spacing=True``: the net on the native (1 mm) grid instead, the textbook full-volume
    run (timing reference only: a net trained on a coarser grid sees the wrong scale there)."""
    native, prepared = _naive_native(case, model, device=device, overlap=overlap, roi=roi,
                                     native_spacing=native_spacing)
    return native_labels(native, model.card.get("postprocess"), case, prepared)


def _naive_native(case: Case, model, *, device: str, overlap: float,
                  roi: Optional[Sequence[int]], native_spacing: bool):
    """Native-grid probabilities of the naive run (see :func:`naive_labels`) and its
    PreparedCase."""
    import torch
    from monai.inferers import sliding_window_inference

    from .prepare import prepare

    card = model.card
    prepared = prepare(case, list(card["sequences"]),
                       spacing=None if native_spacing else card.get("spacing_mm"), crop=False,
                       norm=card.get("normalisation") or "zscore")
    roi = tuple(roi or (card.get("config") or {}).get("model", {}).get("patch_size")
                or [64, 64, 64])
    module = model.module.to(device)
    with torch.no_grad():
        t = torch.from_numpy(np.asarray(prepared.array, np.float32))[None].to(device)
        y = sliding_window_inference(t, roi, 1, module, overlap=overlap, mode="gaussian")
        probs = torch.sigmoid(y)[0].cpu().numpy()
    return probs_to_native(prepared, probs), prepared


def _peak_rss_gib() -> float:
    """Peak resident memory of this process image (GiB): VmHWM from /proc (reset by exec, unlike
    ``ru_maxrss``, which a spawned child inherits from its parent), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def benchmark_naive(case: Case, model, *, device: str = "cpu", repeats: int = 1,
                    native_1mm: bool = False) -> Dict[str, Any]:
    """Time :func:`segment` (fast path) and :func:`naive_labels` on ``case`` with the same
    net; Dice of both against the case's labels when it has them. ``native_1mm`` adds the
    textbook 1 mm full-volume run (roi 128, overlap 0.25). Returns a dict; ``dice_naive*``
    use the card's label assembly, ``dice_naive*_default_assembly`` threshold 0.5 and the ET
    channel (the same probabilities, not timed)."""
    from .progress import run as drive

    out: Dict[str, Any] = {"case_id": case.case_id, "model": model.name, "device": device}
    fast_t = []
    res = None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        res = drive(segment(case, model, device=device, compare=False))
        fast_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    nat, prep = _naive_native(case, model, device=device, overlap=0.5, roi=None,
                              native_spacing=False)
    naive = native_labels(nat, model.card.get("postprocess"), case, prep)
    naive_t = time.perf_counter() - t
    naive0 = regions_to_labels(nat >= 0.5)
    del nat, prep
    out.update(fast_s=min(fast_t), naive_s=naive_t, speedup=naive_t / max(min(fast_t), 1e-9),
               fast_timings=res.timings, peak_rss_gib=_peak_rss_gib())
    n1 = None
    if native_1mm:
        t = time.perf_counter()
        nat, prep = _naive_native(case, model, device=device, overlap=0.25, roi=(128, 128, 128),
                                  native_spacing=True)
        n1 = native_labels(nat, model.card.get("postprocess"), case, prep)
        out["naive_1mm_s"] = time.perf_counter() - t
        n10 = regions_to_labels(nat >= 0.5)
        del nat, prep
        out["speedup_vs_naive_1mm"] = out["naive_1mm_s"] / max(min(fast_t), 1e-9)
    if case.labels is not None:
        gt = case.labels.array
        if n1 is not None:
            out["dice_naive_1mm"] = {r: m["dice"] for r, m in
                                     compare_to_truth(n1, gt, with_hd95=False).items()}
        out["dice_fast"] = {r: m["dice"] for r, m in
                            compare_to_truth(res.labels, gt, with_hd95=False).items()}
        out["dice_naive"] = {r: m["dice"] for r, m in
                             compare_to_truth(naive, gt, with_hd95=False).items()}
        if (model.card.get("postprocess") or {}).keys() & {"thresholds", "enhancement"}:
            out["dice_naive_default_assembly"] = {
                r: m["dice"] for r, m in compare_to_truth(naive0, gt, with_hd95=False).items()}
            if n1 is not None:
                out["dice_naive_1mm_default_assembly"] = {
                    r: m["dice"] for r, m in compare_to_truth(n10, gt, with_hd95=False).items()}
    return out
