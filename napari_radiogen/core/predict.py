"""IDH / 1p19q / grade prediction (and an OS risk score) for one case.

:func:`predict` is a generator (``Progress`` items, then a :class:`PredictionResult`). It works
on a TCGA-LGG slice pack (``case.kind == "slices"``) and on a 3D case (NIfTI folder etc.).

Input preparation (``PREP``, the same code is used for training, see
``core/train/tasks/prediction.py``):

* **Packs**: the stored 128 x 128 axial slices (about 1.9 mm in-plane) are binned 2 x 2 to
  64 x 64 (about 3.75 mm); all slices are kept (they are the brain slices of the source).
* **3D cases**: every sequence is resampled (linear) onto the reference sequence's grid if
  needed; axial slices are taken about every 4 mm (nearest stored slice, no interpolation
  across slices) among slices that contain head/brain (>= 2 % foreground); each slice is
  resampled in-plane to 3.75 mm (Gaussian anti-aliasing + linear) and cropped/padded to 64 x 64
  around the centre of the foreground.
* **Normalisation** per sequence per case: foreground = voxels > 10 % of the 99th percentile;
  z-score with the foreground mean/SD; clipped to [-5, 5].
* Sequences: the model's card lists ``sequences`` (channel order) and
  ``required_sequences``. A missing required sequence raises
  :class:`~napari_radiogen.core.errors.MissingSequenceError`; a missing optional one (or one a
  pack marks unavailable) is masked (its pooled embedding is zero and flagged) and reported in
  ``warnings``. A sequence the model was not trained with (e.g. T2 for the TCGA-LGG models) is
  ignored, with a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError, MissingSequenceError
from .insample import PREDICTION, case_in_sample_note
from .notes import (AGE_UNKNOWN, IN_SAMPLE, OUTSIDE_DOMAIN_3D, SEX_UNKNOWN, SYNTHETIC_KEYS,
                    SYNTHETIC_SEGMENTATION, Note, synthetic_note, warning_key)
from .progress import CancelToken, Progress, check
from .models import oom_fallback

TASK = "prediction"
#: the default prediction models, first installed wins: the tumour-centred slice model, then
#: the whole-brain one (same protocol and folds; see the README's model table)
DEFAULT_MODELS = ("predict_ensemble", "predict_mil_roi", "predict_mil")
SIZE = 64
SPACING_MM = 3.75            # in-plane spacing of the network input
SLICE_STEP_MM = 4.0          # axial sampling for 3D cases
MIN_FG_FRACTION = 0.02
#: label encodings: class index -> name (index 1 is the "positive" class for AUCs)
CLASSES: Dict[str, List[str]] = {"idh": ["wildtype", "mutant"],
                                 "codel_1p19q": ["non-codel", "codel"],
                                 "grade": ["2", "3"]}
PREP = {"version": "slices-v1", "size": SIZE, "spacing_mm": SPACING_MM,
        "pack": "2x2 block mean of the stored 128x128 slices (~1.9 mm) -> 64x64 (~3.75 mm)",
        "volume": "axial slices every ~4 mm with >= 2% foreground; in-plane linear resampling "
                  "to 3.75 mm (Gaussian anti-aliasing), crop/pad 64x64 around the foreground "
                  "centre; sequences resampled onto the reference grid first",
        "normalisation": "per sequence per case: z-score over foreground (> 0.1 * p99), "
                         "clipped to [-5, 5]"}


# -- input preparation ---------------------------------------------------------------------
def normalise(arr: np.ndarray) -> np.ndarray:
    v = np.asarray(arr, dtype=np.float32)
    st = _norm_stats(v)
    if st is None:
        return np.zeros_like(v)
    return np.clip((v - st[0]) / st[1], -5, 5).astype(np.float32)


def _norm_stats(arr: np.ndarray) -> Optional[Tuple[float, float]]:
    """(mean, SD) over the foreground (> 10 % of the 99th percentile), or None when there is
    too little of it."""
    v = np.asarray(arr, dtype=np.float32)
    p99 = float(np.percentile(v, 99)) if v.size else 0.0
    fg = v > 0.1 * p99
    if p99 <= 0 or fg.sum() < 10:
        return None
    return float(v[fg].mean()), float(v[fg].std()) + 1e-6


def foreground(arr: np.ndarray) -> np.ndarray:
    v = np.asarray(arr, dtype=np.float32)
    p99 = float(np.percentile(v, 99)) if v.size else 0.0
    return v > 0.1 * p99 if p99 > 0 else np.zeros(v.shape, bool)


def bin2(arr: np.ndarray) -> np.ndarray:
    """(n, 2h, 2w) -> (n, h, w) block mean."""
    n, h, w = arr.shape
    a = arr[:, : h // 2 * 2, : w // 2 * 2].astype(np.float32)
    return a.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


@dataclass
class SliceInput:
    x: np.ndarray                      # (S, N, SIZE, SIZE) float32, zeros for masked sequences
    seq_mask: np.ndarray               # (S,) bool
    slice_index: np.ndarray            # (N,) index of each slice on the case's reference z axis
    n_ref_slices: int                  # number of slices of the reference volume
    sequences: List[str]
    warnings: List[str] = field(default_factory=list)
    #: in-plane sampling of 3D cases: (cy, cx, fy, fx) = centre (reference voxel rows/cols) and
    #: factors (reference spacing / input spacing); None for packs (2x2 binning)
    inplane: Optional[tuple] = None
    #: tumour-centred inputs: the whole-tumour mask sampled like the images, (N, SIZE, SIZE)
    tumour: Optional[np.ndarray] = field(default=None, repr=False)
    #: tumour-centred inputs: voxels of the tumour part the window is placed on (reference grid)
    window_voxels: Optional[int] = None


def pack_arrays_to_input(arrays: Dict[str, np.ndarray], sequences: Sequence[str],
                         available: Optional[Dict[str, bool]] = None) -> SliceInput:
    """Pack slices (n, 128, 128) per sequence -> network input. Sequences absent from
    ``arrays`` or marked unavailable are masked."""
    available = available or {}
    n = next(iter(arrays.values())).shape[0]
    x = np.zeros((len(sequences), n, SIZE, SIZE), np.float32)
    mask = np.zeros(len(sequences), bool)
    for i, s in enumerate(sequences):
        if s in arrays and available.get(s, True):
            a = np.asarray(arrays[s])
            if a.shape[1] != 2 * SIZE or a.shape[2] != 2 * SIZE:
                a = _resize_stack(a.astype(np.float32), (2 * SIZE, 2 * SIZE))
            x[i] = normalise(bin2(a))
            mask[i] = True
    return SliceInput(x=x, seq_mask=mask, slice_index=np.arange(n), n_ref_slices=n,
                      sequences=list(sequences))


def _resize_stack(a: np.ndarray, hw) -> np.ndarray:
    from scipy import ndimage
    f = (1.0, hw[0] / a.shape[1], hw[1] / a.shape[2])
    return ndimage.zoom(a, f, order=1)


def _on_reference_grid(case, names: Sequence[str]) -> Dict[str, np.ndarray]:
    import SimpleITK as sitk
    ref = case.sequences[case.reference]
    out = {}
    for s in names:
        v = case.sequences[s]
        if v.geometry.same_grid(ref.geometry):
            out[s] = np.asarray(v.array, dtype=np.float32)
        else:
            img = sitk.Resample(sitk.Cast(v.to_image(), sitk.sitkFloat32), ref.to_image(),
                                sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            out[s] = sitk.GetArrayFromImage(img)
    return out


def volume_case_to_input(case, sequences: Sequence[str]) -> SliceInput:
    """A 3D case -> network input (see the module docstring)."""
    from scipy import ndimage
    use = [s for s in sequences if s in case.sequences]
    arrays = _on_reference_grid(case, use)
    g = case.sequences[case.reference].geometry
    sx, sy, sz = g.spacing
    ref_arr = arrays.get("flair", next(iter(arrays.values())))
    nz = ref_arr.shape[0]
    fg = np.zeros(ref_arr.shape, bool)
    for a in arrays.values():
        fg |= foreground(a)
    frac = fg.reshape(nz, -1).mean(1) * (ref_arr.shape[1] * sy * ref_arr.shape[2] * sx) / (
        (SIZE * SPACING_MM) ** 2)
    cand = np.where(frac >= MIN_FG_FRACTION)[0]
    if cand.size == 0:
        cand = np.arange(nz)
    step = max(1, int(round(SLICE_STEP_MM / max(sz, 1e-3))))
    sel = cand[::step] if cand.size > step else cand
    # in-plane: centre of the foreground, crop/pad to SIZE at SPACING_MM
    yy, xx = np.where(fg[sel].any(0))
    cy = (yy.min() + yy.max()) / 2 if yy.size else ref_arr.shape[1] / 2
    cx = (xx.min() + xx.max()) / 2 if xx.size else ref_arr.shape[2] / 2
    fy, fx = sy / SPACING_MM, sx / SPACING_MM
    x = np.zeros((len(sequences), len(sel), SIZE, SIZE), np.float32)
    mask = np.zeros(len(sequences), bool)
    for i, s in enumerate(sequences):
        if s not in arrays:
            continue
        a = arrays[s][sel].astype(np.float32)
        sig = (0, max(0.0, 0.5 / fy - 0.5), max(0.0, 0.5 / fx - 0.5))
        if sig[1] > 0 or sig[2] > 0:
            a = ndimage.gaussian_filter(a, sig)
        # sample a SIZE x SIZE grid centred on (cy, cx) with spacing SPACING_MM
        ys = cy + (np.arange(SIZE) - (SIZE - 1) / 2) / fy
        xs = cx + (np.arange(SIZE) - (SIZE - 1) / 2) / fx
        Y, X = np.meshgrid(ys, xs, indexing="ij")
        out = np.empty((len(sel), SIZE, SIZE), np.float32)
        for k in range(len(sel)):
            out[k] = ndimage.map_coordinates(a[k], [Y, X], order=1, mode="constant", cval=0.0)
        x[i] = normalise(out)
        mask[i] = True
    return SliceInput(x=x, seq_mask=mask, slice_index=sel.astype(int), n_ref_slices=int(nz),
                      sequences=list(sequences), inplane=(float(cy), float(cx), fy, fx))


# -- tumour-centred input (``input.kind`` in ``ROI_KINDS``) -----------------------------------
#: input kinds whose window rests on the case's tumour segmentation: the slice MIL and the
#: 3D CNN on the same tumour-centred slices
ROI_KINDS = ("mil_roi", "volume3d_roi")
#: input kinds whose network takes the slice stack as one volume (``to_volume3d``)
VOLUME_KINDS = ("volume3d", "volume3d_roi")
ROI_SIZE = 64
ROI_SPACING_MM = 1.875       # the packs' stored in-plane spacing: no resampling of packs
ROI_MARGIN_SLICES = 1        # slices kept above and below the tumour
#: the card's ``input.segmentation`` of a tumour-centred model: the models placing its window
ROI_SEGMENTATION = {"slices": "seg_lgg_segresnet2d",
                    "volume": "default 3D model (whole tumour = labels 1+2+4)"}
PREP_ROI = {"version": "roi-v2", "size": ROI_SIZE, "spacing_mm": ROI_SPACING_MM,
            "slices": "every slice from one below to one above the whole tumour's largest "
                      "connected component (axial sampling "
                      f"about every {SLICE_STEP_MM:g} mm for thinner slices)",
            "inplane": f"{ROI_SIZE} x {ROI_SIZE} at {ROI_SPACING_MM} mm "
                       f"({ROI_SIZE * ROI_SPACING_MM:g} mm field of view) centred on the "
                       "bounding box of the whole tumour's largest connected component; packs "
                       "are not resampled (1.875 mm), 3D cases are resampled in-plane "
                       "(Gaussian anti-aliasing + linear) on the reference grid",
            "tumour": "the whole tumour (labels > 0) of the case's segmentation: the model's own "
                      "segmentation at inference, the expert mask in training",
            "normalisation": "per sequence per case: z-score over the foreground (> 0.1 * p99) "
                             "of the whole volume, clipped to [-5, 5]"}


def roi_arrays_to_input(arrays: Dict[str, np.ndarray], sequences: Sequence[str],
                        tumour: np.ndarray, spacing_xyz: Sequence[float],
                        available: Optional[Dict[str, bool]] = None,
                        size: int = ROI_SIZE, window: Optional[Dict[str, Any]] = None
                        ) -> SliceInput:
    """Arrays (z, y, x) on one grid (``spacing_xyz`` in mm) and a whole-tumour mask on the same
    grid -> the tumour-centred slice stack of ``PREP_ROI``. Sequences absent from ``arrays`` or
    marked unavailable are masked. ``size`` > ``ROI_SIZE`` gives a wider window with the same
    centre (training crops it at random: window-placement jitter). ``window`` (a card's
    ``input.window``): ``None`` or ``{"mode": "fixed"}`` for the fixed 120 mm window;
    ``{"mode": "fit", "margin_mm": m, "min_mm": a, "max_mm": b}`` for a square window of the
    tumour's largest in-plane extent + 2 m, clipped to [a, b] mm, still ``ROI_SIZE`` pixels
    (the tumour fills a similar share of every window; its absolute size is not seen)."""
    from scipy import ndimage

    from .errors import RadiogenError
    available = available or {}
    tumour = np.asarray(tumour) > 0
    if not tumour.any():
        raise RadiogenError("no tumour was segmented: the tumour-centred model has nothing to "
                            "look at (check the segmentation, or use a whole-brain model such "
                            "as predict_mil)")
    sx, sy, sz = (float(v) for v in spacing_xyz)
    nz = tumour.shape[0]
    place = main_component(tumour)     # stray specks of a segmentation do not move the window
    zs = np.where(place.reshape(nz, -1).any(1))[0]
    z0, z1 = max(0, zs.min() - ROI_MARGIN_SLICES), min(nz - 1, zs.max() + ROI_MARGIN_SLICES)
    step = max(1, int(round(SLICE_STEP_MM / max(sz, 1e-3))))
    sel = np.arange(z0, z1 + 1)[::step] if step > 1 else np.arange(z0, z1 + 1)
    yy, xx = np.where(place.any(0))
    cy, cx = (yy.min() + yy.max()) / 2, (xx.min() + xx.max()) / 2
    spacing_mm = window_spacing(window, (yy.max() - yy.min() + 1) * sy,
                                (xx.max() - xx.min() + 1) * sx)
    fy, fx = sy / spacing_mm, sx / spacing_mm
    if abs(fy - 1) < 1e-3 and abs(fx - 1) < 1e-3:      # same spacing: whole-pixel crop, no blur
        cy, cx = np.floor(cy) + 0.5, np.floor(cx) + 0.5
    ys = cy + (np.arange(size) - (size - 1) / 2) / fy
    xs = cx + (np.arange(size) - (size - 1) / 2) / fx
    Y, X = np.meshgrid(ys, xs, indexing="ij")
    sig = (0, max(0.0, 0.5 / fy - 0.5), max(0.0, 0.5 / fx - 0.5))

    def sample(a: np.ndarray, slices=sel) -> np.ndarray:
        a = np.asarray(a[slices], np.float32)
        if sig[1] > 0 or sig[2] > 0:
            a = ndimage.gaussian_filter(a, sig)
        return np.stack([ndimage.map_coordinates(a[k], [Y, X], order=1, mode="constant",
                                                 cval=0.0) for k in range(len(a))])

    x = np.zeros((len(sequences), len(sel), size, size), np.float32)
    mask = np.zeros(len(sequences), bool)
    # outside the image (a tumour near the edge) is background: the normalised value of 0
    # (every slice is sampled alike: one plane tells)
    plane = np.ones((1,) + tumour.shape[1:], np.float32)
    outside = ~(sample(plane, slices=[0])[0] > 0.5)
    for i, s in enumerate(sequences):
        if s not in arrays or not available.get(s, True):
            continue
        st = _norm_stats(arrays[s])
        if st is None:
            continue
        x[i] = np.clip((sample(arrays[s]) - st[0]) / st[1], -5, 5)
        x[i][:, outside] = np.clip(-st[0] / st[1], -5, 5)
        mask[i] = True
    return SliceInput(x=x, seq_mask=mask, slice_index=sel.astype(int), n_ref_slices=int(nz),
                      sequences=list(sequences), inplane=(float(cy), float(cx), fy, fx),
                      tumour=sample(tumour.astype(np.float32)),
                      window_voxels=int(place.sum()))


def main_component(mask: np.ndarray) -> np.ndarray:
    """The largest 3D connected component of a mask (26-connectivity): where the window is
    placed, in training (expert masks) and inference (segmentations) alike."""
    from .prepare import _largest_component
    return _largest_component(np.asarray(mask, bool), np.ones((3, 3, 3), bool))


def window_spacing(window: Optional[Dict[str, Any]], extent_y_mm: float,
                   extent_x_mm: float) -> float:
    """The in-plane spacing (mm) of the tumour-centred window (see
    :func:`roi_arrays_to_input`)."""
    mode = (window or {}).get("mode", "fixed")
    if mode == "fixed":
        return ROI_SPACING_MM
    if mode != "fit":
        raise ConfigError(f"unknown window mode {mode!r} in the model card (fixed or fit)")
    side = max(extent_y_mm, extent_x_mm) + 2 * float(window.get("margin_mm", 15.0))
    side = min(max(side, float(window.get("min_mm", 60.0))), float(window.get("max_mm", 180.0)))
    return side / ROI_SIZE


def roi_case_to_input(case, sequences: Sequence[str], tumour: np.ndarray,
                      window: Optional[Dict[str, Any]] = None) -> SliceInput:
    """A case (pack or 3D) and its whole-tumour mask on the reference grid -> the
    tumour-centred input (``PREP_ROI``)."""
    use = [s for s in sequences if s in case.sequences]
    if not use:
        raise MissingSequenceError(list(sequences), list(sequences), case.present)
    arrays = _on_reference_grid(case, use)
    avail = {s: bool(case.sequences[s].meta.get("available", True)) for s in use}
    g = case.sequences[case.reference].geometry
    tumour = _on_reference_labels(case, tumour)
    return roi_arrays_to_input(arrays, sequences, tumour, g.spacing, avail, window=window)


def case_to_input(case, sequences: Sequence[str]) -> SliceInput:
    if case.kind == "slices":
        arrays = {s: case.sequences[s].array for s in sequences if s in case.sequences}
        if not arrays:
            raise MissingSequenceError(list(sequences), list(sequences), case.present)
        avail = {s: bool(case.sequences[s].meta.get("available", True)) for s in arrays}
        return pack_arrays_to_input(arrays, sequences, avail)
    return volume_case_to_input(case, sequences)


def to_volume3d(inp: SliceInput, depth: int) -> np.ndarray:
    """(S, N, H, W) slice stack -> (S, depth, H, W) by linear interpolation along z."""
    from scipy import ndimage
    S, N, H, W = inp.x.shape
    if N == depth:
        return inp.x.copy()
    return ndimage.zoom(inp.x, (1, depth / N, 1, 1), order=1).astype(np.float32)


# -- warnings (kinds: core.notes) ----------------------------------------------------------
def merge_member_warnings(members: Sequence[Tuple[str, Sequence[str]]],
                          said: Sequence[str] = ()) -> List[str]:
    """An ensemble's warnings from its members' ``(model, warnings)``: each kind
    (:func:`warning_key`) once, after the names of the members that gave it
    (``"predict_mil_roi, predict_radiomics: age unknown: ..."``), so the user does not read it
    twice; where the members' words differ, each member's words are kept with its name. A
    kind the ensemble has already ``said`` itself (t2 ignored...) is left out."""
    own = {warning_key(w) for w in said}
    groups: Dict[str, List[Tuple[str, str]]] = {}
    for model, warns in members:
        for w in warns:
            k = warning_key(w)
            if k in own:
                continue
            group = groups.setdefault(k, [])
            if (model, str(w)) not in group:
                group.append((model, str(w)))
    return [Note(f"{', '.join(dict.fromkeys(m for m, _ in g))}: {_merge_texts(g)}", k)
            for k, g in groups.items()]


def _merge_texts(said: List[Tuple[str, str]]) -> str:
    """One text for a warning the members give in different words: the words they share once,
    where they differ each member's words with its name ("the training mean (a) / median (b)
    was used"); nothing any member said is dropped."""
    texts = list(dict.fromkeys(t for _, t in said))
    if len(texts) == 1:
        return texts[0]
    who = {t: ", ".join(m for m, u in said if u == t) for t in texts}
    words = [t.split(" ") for t in texts]
    n = min(len(w) for w in words)
    pre = 0
    while pre < n and all(w[pre] == words[0][pre] for w in words):
        pre += 1
    suf = 0
    while suf < n - pre and all(w[-1 - suf] == words[0][-1 - suf] for w in words):
        suf += 1
    mids = [" ".join(w[pre:len(w) - suf]) for w in words]
    if not all(mids) or any("," in m for m in mids):
        # one text is the other with words added, or they differ inside a list (cutting it
        # at words would garble it): each in full
        return "; ".join(f"{t} ({who[t]})" for t in texts)
    mid = " / ".join(f"{m} ({who[t]})" for m, t in zip(mids, texts))
    return " ".join([*words[0][:pre], mid, *words[0][len(words[0]) - suf:]])


# -- clinical ------------------------------------------------------------------------------
def clinical_vector(clinical: Optional[Dict[str, Any]], card: Dict[str, Any]
                    ) -> (np.ndarray, List[str]):
    """``[age_z, sex]`` as the model was trained (card ``clinical``); missing values -> the
    training mean (0) with a warning."""
    spec = card.get("clinical") or {}
    warns: List[str] = []
    vec = np.zeros(2, np.float32)
    clinical = clinical or {}
    age = age_years(clinical)
    if age is None:
        warns.append(Note("age unknown: the training mean was used", AGE_UNKNOWN))
    else:
        vec[0] = (age - float(spec.get("age_mean", 45.0))) / float(spec.get("age_sd", 14.0))
    sex = clinical.get("sex", clinical.get("gender"))
    code = _sex_code(sex)
    if code is None:
        vec[1] = float(spec.get("sex_mean", 0.5))
        warns.append(Note("sex unknown: the training proportion was used", SEX_UNKNOWN))
    else:
        vec[1] = code
    return vec, warns


def age_years(clinical: Dict[str, Any]) -> Optional[float]:
    """Age in years from a clinical row (``age`` or TCGA ``age_at_initial_pathologic``), or
    None when absent or unreadable."""
    age = clinical.get("age", clinical.get("age_at_initial_pathologic"))
    try:
        age = float(age) if age is not None and str(age) != "" else None
    except (TypeError, ValueError):
        return None
    return age if age is not None and np.isfinite(age) else None


def _sex_code(sex: Any) -> Optional[float]:
    """1.0 for male, 0.0 for female (TCGA ``gender`` code 2 -> male, 1 -> female, see card)."""
    if sex is None:
        return None
    s = str(sex).strip().lower()
    if s in ("m", "male", "2", "2.0"):
        return 1.0
    if s in ("f", "female", "1", "1.0"):
        return 0.0
    return None


# -- result ----------------------------------------------------------------------------------
@dataclass
class PredictionResult:
    case_id: str
    model: str
    card: Dict[str, Any]
    tasks: Dict[str, Dict[str, float]]
    uncertainty: Dict[str, Any]
    attention: Dict[str, List[float]]
    slice_index: List[int]
    risk: Optional[float] = None
    synthetic_inputs: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    # the slice stack the model saw (not serialised): ``explain`` reuses it for the same case
    inputs: Optional[SliceInput] = field(default=None, repr=False, compare=False)
    #: segmentation-based models: the tumour features the model saw, and where the mask came from
    features: Optional[Dict[str, Optional[float]]] = None
    #: segmentation-based models (radiomics, tumour-centred networks): where the mask came from
    features_source: Optional[str] = None
    #: the model whose slice attention ``attention`` is when it is not ``model`` itself: an
    #: ensemble has none of its own and shows its image member's
    attention_model: Optional[str] = None
    #: where the network ran: the device asked for, or ``cpu`` after a CUDA out-of-memory
    #: fallback (an ensemble: ``cpu`` when any member fell back)
    device: str = "cpu"

    def to_json(self) -> Dict[str, Any]:
        extra = ({"features": self.features} if self.features is not None else {})
        if self.features_source is not None:
            extra["features_source"] = self.features_source
        if self.attention_model is not None:
            extra["attention_model"] = self.attention_model
        from .outputs import json_safe
        # strict JSON: a non-finite number (a feature of an empty mask...) is None, not NaN
        return json_safe({"case_id": self.case_id, "model": self.model, "card": self.card,
                          "tasks": self.tasks, "uncertainty": self.uncertainty,
                          "risk": self.risk, "attention": self.attention,
                          "attention_slices": self.slice_index,
                          "synthetic_inputs": self.synthetic_inputs, "warnings": self.warnings,
                          "device": self.device, "seconds": round(self.seconds, 3), **extra})


def card_summary(card: Dict[str, Any]) -> Dict[str, Any]:
    from .evaluate.metrics import clip_interval
    m = card.get("metrics") or {}
    auc = {t: {k: m.get(t, {}).get(k) for k in ("auc_mean", "auc_ci95", "brier")}
           for t in CLASSES if isinstance(m.get(t), dict)}
    cv = m.get("cv") or {}          # cards written by the training engine
    for t in CLASSES:
        v = cv.get(f"auc_{t}")
        if t not in auc and isinstance(v, dict) and v.get("mean") is not None:
            auc[t] = {"auc_mean": v["mean"], "auc_ci95": v.get("ci95"), "brier": None}
    # an AUC lies in [0, 1]: so does its interval as shown (older cards stored unclipped
    # t-intervals over folds; the cards themselves are left as they are)
    for a in auc.values():
        if a.get("auc_ci95") is not None:
            a["auc_ci95"] = clip_interval(a["auc_ci95"], (0.0, 1.0))
    c_index = (m.get("survival") or {}).get("c_index_mean")
    if c_index is None and isinstance(cv.get("c_index"), dict):
        c_index = cv["c_index"].get("mean")
    seen = ((card.get("fine_tuned_from") or {}).get("test_patients_seen") or [])
    return {"name": card.get("name"), "task": card.get("task"),
            "architecture": (card.get("architecture") or {}).get("builder"),
            "sequences": card.get("sequences"),
            "required_sequences": card.get("required_sequences"),
            "uses_clinical": bool((card.get("clinical") or {}).get("used")),
            "validated": auc, "c_index": c_index, "held_out": not seen,
            "protocol": m.get("protocol"), "date": card.get("date")}


def default_model_name() -> str:
    """The prediction model used when none is named: the first installed of
    :data:`DEFAULT_MODELS` (else the first listed)."""
    from .models import default_model
    return default_model(TASK, prefer=DEFAULT_MODELS)


def named(model) -> bool:
    """Did the user name this model? (None, or a model loaded as the default, means no: the
    default may give way where it cannot predict, see :func:`window_or_fallback`.)"""
    from .models import LoadedModel
    if model is None:
        return False
    return not (isinstance(model, LoadedModel) and model.extras.get("as_default"))


def _load(model) :
    from .models import LoadedModel, load_model
    if isinstance(model, LoadedModel):
        return model
    return load_model(model or default_model_name(), task=TASK)


def predict(case, model=None, *, clinical: Optional[Dict[str, Any]] = None,
            device: str = "auto", cancel: Optional[CancelToken] = None,
            segmentation: Optional[np.ndarray] = None,
            segmentation_source: str = "supplied by the caller",
            segmentation_synthetic: Sequence[str] = ()
            ) -> Iterator[Union[Progress, PredictionResult]]:
    """Predict IDH, 1p/19q and grade (+ OS risk) for ``case`` with ``model`` (a name, a path, a
    LoadedModel, or None for the default shipped model). ``segmentation``: labels on the case's
    reference grid that a segmentation-based model (``predict_radiomics``) uses instead of
    segmenting the case itself (``segmentation_source`` says where it came from,
    ``segmentation_synthetic`` which synthetic sequences it was made from: they went into the
    prediction too, and the result lists them)."""
    import time
    from .models import resolve_device

    t0 = time.perf_counter()
    yield Progress("predict", 0, 3, "loading model")
    lm = _load(model)
    lm, fallback = window_or_fallback(case, lm, explicit=named(model),
                                      segmenting=segmentation is None)
    card = lm.card
    dev = resolve_device(device)
    tensors = [*lm.module.parameters(), *lm.module.buffers()]   # a forest has buffers only
    if tensors and str(tensors[0].device) != dev:
        lm.module.to(dev)
    check(cancel)
    seqs = list(card.get("sequences") or [])
    required = list(card.get("required_sequences") or seqs)
    present = set(case.sequences)
    miss_req = [s for s in required if s not in present
                or not case.sequences[s].meta.get("available", True)]
    if miss_req:
        raise MissingSequenceError(miss_req, required, case.present)
    if case.kind != "slices":
        from .segment import check_brain_volume
        check_brain_volume(case)
    warns: List[str] = [fallback] if fallback else []
    # a case the model was trained on: said first (an ensemble's members then leave theirs out)
    in_sample = case_in_sample_note(case, lm.name, card, PREDICTION)
    if in_sample is not None:
        warns.append(in_sample)
    if case.kind != "slices" and trained_on_slice_packs(card) \
            and (card.get("input") or {}).get("kind") not in (*ROI_KINDS, "ensemble", "radiomics"):
        # (the windowed and radiomics models say it in their own words; an ensemble's
        # members say it)
        warns.append(Note(f"3D volume: {lm.name} was trained on TCGA-LGG slice packs (not "
                          "skull-stripped); this input is outside its validated domain",
                          OUTSIDE_DOMAIN_3D))
    extra = sorted(present - set(seqs))
    if extra:
        # "by the predictor": a tumour segmentation (the predictor's window, an analysis's)
        # may still read it, and says so in its own warnings
        warns.append(Note(f"{', '.join(extra)} ignored by the predictor: the model was trained "
                          f"on {', '.join(seqs)}", f"{', '.join(extra)} ignored"))
    # the synthetic sequences the tumour segmentation was made from: the caller's for its
    # segmentation; tumour_labels adds those of the segmentation it makes
    seg_synth = list(segmentation_synthetic) if segmentation is not None else []
    if (card.get("input") or {}).get("kind") == "radiomics":
        yield from _predict_radiomics(case, lm, card, dev, clinical, segmentation,
                                      segmentation_source, warns, cancel, t0, seg_synth)
        return
    if (card.get("input") or {}).get("kind") == "ensemble":
        yield from _predict_ensemble(case, lm, card, dev, clinical, segmentation,
                                     segmentation_source, warns, cancel, t0, seg_synth)
        return
    kind = (card.get("input") or {}).get("kind", "mil")
    source = None
    if kind in ROI_KINDS:
        labels, source = yield from tumour_labels(case, card, dev, cancel, segmentation,
                                                  segmentation_source, warns,
                                                  synthetic=seg_synth)
        yield Progress("predict", 1, 3, "preparing tumour-centred slices")
        inp = roi_case_to_input(case, seqs, labels > 0, card["input"].get("window"))
        warns.extend(window_warnings(case, inp))
    else:
        yield Progress("predict", 1, 3, "preparing slices")
        inp = case_to_input(case, seqs)
        warns.extend(offset_warnings(case, seqs))
    warns.extend(masked_warnings(seqs, inp))
    synth = synthetic_used(case, seqs, seg_synth if kind in ROI_KINDS else [], warns,
                           source if segmentation is not None else None)
    clin_used = bool((card.get("clinical") or {}).get("used"))
    cvec = np.zeros(2, np.float32)
    if clin_used:
        src = dict(case.clinical or {})
        src.update({k: v for k, v in (clinical or {}).items() if v is not None})
        cvec, cw = clinical_vector(src, card)
        warns.extend(cw)
    check(cancel)
    yield Progress("predict", 2, 3, "running the network")
    (out, att), dev = oom_fallback(lambda d: run_network(lm.module, kind, inp, cvec, card, d),
                                   dev, models=[lm], warn=warns, what=f"{lm.name} ran")
    tasks, unc = {}, {}
    for t, probs in out["probs"].items():
        p = probs[:, 0].cpu().numpy()                                     # (members, C)
        mean = p.mean(0)
        names = card.get("classes", CLASSES).get(t, [str(i) for i in range(len(mean))])
        tasks[t] = {names[i]: float(mean[i]) for i in range(len(mean))}
        pos = p[:, -1]
        unc[t] = {"sd": float(pos.std()), "min": float(pos.min()), "max": float(pos.max()),
                  "members": [float(v) for v in pos],
                  "method": ("fold-ensemble spread (SD of the members' probabilities)"
                             if len(pos) > 1 else "none (a single network)")}
    risk = None
    if "risk" in out:
        r = out["risk"][:, 0].cpu().numpy()
        risk = float(r.mean())
        unc["risk"] = {"sd": float(r.std()), "members": [float(v) for v in r]}
    attention: Dict[str, List[float]] = {}
    if att is not None:
        for i, s in enumerate(seqs):
            if not inp.seq_mask[i]:
                continue
            full = np.zeros(inp.n_ref_slices, np.float32)
            full[inp.slice_index] = att[i]
            attention[s] = [round(float(v), 6) for v in full]
    yield Progress("predict", 3, 3, "done")
    yield PredictionResult(case_id=case.case_id, model=lm.name, card=card_summary(card),
                           tasks=tasks, uncertainty=unc, attention=attention,
                           slice_index=[int(i) for i in inp.slice_index], risk=risk,
                           synthetic_inputs=synth, warnings=warns, device=dev,
                           seconds=time.perf_counter() - t0, inputs=inp,
                           features_source=source)


def member_cards(card: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The cards of an ensemble's member models (``input.members``), in order."""
    from .models import find_model, read_card
    return [read_card(find_model(n)) for n in (card.get("input") or {}).get("members", [])]


def run_network(module, kind: str, inp: "SliceInput", cvec: np.ndarray, card: Dict[str, Any],
                dev: str) -> Tuple[Dict[str, Any], Optional[np.ndarray]]:
    """The network's forward pass on a prepared input (no gradients): ``out["probs"][task]``
    of shape (members, 1, classes) (a single network is one member; ``out["risk"]`` likewise
    where it has a risk head) and its slice attention (sequences, slices) averaged over the
    members, None for a volume model. Shared by the prediction and the explanation."""
    import torch
    with torch.inference_mode():
        sm = torch.from_numpy(inp.seq_mask[None]).to(dev)
        cl = torch.from_numpy(cvec[None]).to(dev)
        if kind in VOLUME_KINDS:
            vol = to_volume3d(inp, int(card["input"]["depth"]))
            out = module(torch.from_numpy(vol[None]).to(dev), sm, cl)
            att = None
        else:
            x = torch.from_numpy(inp.x[None]).to(dev)
            slm = torch.ones(1, inp.x.shape[1], dtype=torch.bool, device=dev)
            out = module(x, slm, sm, cl)
            att = (out["attention"][:, 0].mean(0).cpu().numpy()         # (S, N)
                   if "probs" in out else True)
        if "probs" not in out:   # a single network (e.g. trained by the engine): one member
            att = None if att is None else out["attention"][0].cpu().numpy()
            out = {"probs": {t: torch.softmax(v, -1)[None] for t, v in out["logits"].items()},
                   **({"risk": out["risk"][None]} if "risk" in out else {})}
    return out, att


def ensemble_sd(member_probs, member_sds) -> float:
    """The SD of an equal-weight mixture of members, each a distribution with mean
    ``member_probs[i]`` and SD ``member_sds[i]`` (its folds' or trees' spread): the square
    root of the mean within-member variance plus the variance of the members' means (the law
    of total variance). The spread between two close members alone understates it."""
    m = np.asarray(member_probs, dtype=float)
    v = np.asarray(member_sds, dtype=float) ** 2
    return float(np.sqrt(v.mean() + m.var()))


def module_device(module) -> Any:
    """The device of a module's first parameter or buffer (the CPU for one with neither)."""
    import itertools
    import torch
    t = next(itertools.chain(module.parameters(), module.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def ensemble_members(lm) -> Dict[str, Any]:
    """A loaded ensemble's member models (name -> LoadedModel), loaded on first use and kept
    with it: predictions and explanations of later runs reuse them."""
    from .models import load_model
    loaded = lm.extras.setdefault("members", {})
    for name in (lm.card.get("input") or {}).get("members", []):
        if name not in loaded:
            loaded[name] = load_model(name, task=TASK)
    return loaded


def _predict_ensemble(case, lm, card, dev, clinical, segmentation, segmentation_source,
                      warns, cancel, t0, seg_synth: List[str]):
    """Late fusion (``input.kind == "ensemble"``): each member model predicts the case (one
    tumour segmentation serves every member that needs one), then ``lm.module`` averages
    their probabilities and their standardised risks. The synthetic inputs of the shared
    segmentation are the ensemble's to list and say (once, not by each member)."""
    import time
    import torch

    names = list(card["input"]["members"])
    loaded = ensemble_members(lm)
    seg_card = next((loaded[n].card for n in names if uses_segmentation(loaded[n].card)), None)
    source, supplied = None, segmentation is not None
    if seg_card is not None:
        segmentation, source = yield from tumour_labels(
            case, seg_card, dev, cancel, segmentation, segmentation_source, warns,
            stage=("predict", 0, len(names) + 1), synthetic=seg_synth)
    synth = synthetic_used(case, (), seg_synth if seg_card is not None else [], warns,
                           source if supplied else None)
    results: List[PredictionResult] = []
    for k, name in enumerate(names):
        for item in predict(case, loaded[name], clinical=clinical, device=dev, cancel=cancel,
                            segmentation=segmentation,
                            segmentation_source=f"shared by the ensemble ({source})"):
            if isinstance(item, PredictionResult):
                results.append(item)
            else:
                yield Progress("predict", k + 1, len(names) + 1, f"{name}: {item.message}")
    warns.extend(merge_member_warnings([(r.model, r.warnings) for r in results], said=warns))
    check(cancel)
    probs, unc = {}, {}
    for t, classes in (card.get("classes") or CLASSES).items():
        if all(t in r.tasks for r in results):
            probs[t] = torch.tensor([[r.tasks[t][c] for c in classes] for r in results])
    risks = [r.risk for r in results]
    # the fusion runs where the ensemble's module lies (the GPU when the case runs there); the
    # members' probabilities stay on the CPU for the uncertainty below
    mdev = module_device(lm.module)
    with torch.inference_mode():
        out = lm.module({t: v.to(mdev) for t, v in probs.items()},
                        torch.tensor(risks, dtype=torch.float32, device=mdev)
                        if all(v is not None for v in risks) else None)
    tasks = {}
    for t, p in out["probs"].items():
        classes = (card.get("classes") or CLASSES)[t]
        tasks[t] = {c: float(p[i]) for i, c in enumerate(classes)}
        pos = probs[t][:, -1].numpy()
        own = [float((r.uncertainty.get(t) or {}).get("sd") or 0.0) for r in results]
        unc[t] = {"sd": ensemble_sd(pos, own), "between_members_sd": float(pos.std()),
                  "min": float(pos.min()), "max": float(pos.max()),
                  "members": [float(v) for v in pos], "member_models": names,
                  "method": "SD of the equal mixture of the members' own spreads (fold models, "
                            "trees): their mean variance plus the variance between the "
                            "members' probabilities",
                  "member_uncertainty": {r.model: r.uncertainty.get(t) for r in results}}
    if "risk" in out:
        unc["risk"] = {"members": [float(v) for v in risks], "member_models": names,
                       "method": "the members' own risks (their scales differ: the fused risk "
                                 "is the mean after standardising each)"}
    net = next((r for r in results if r.attention), None)
    feats = next((r for r in results if r.features is not None), None)
    yield Progress("predict", len(names) + 1, len(names) + 1, "done")
    yield PredictionResult(
        case_id=case.case_id, model=lm.name, card=card_summary(card), tasks=tasks,
        uncertainty=unc, attention=net.attention if net else {},
        slice_index=net.slice_index if net else [], attention_model=net.model if net else None,
        risk=float(out["risk"]) if "risk" in out else None,
        synthetic_inputs=sorted({*synth, *(s for r in results for s in r.synthetic_inputs)}),
        warnings=warns, seconds=time.perf_counter() - t0, inputs=net.inputs if net else None,
        features=feats.features if feats else None, features_source=source,
        device=dev if all(r.device == dev for r in results) else "cpu")


def offset_warnings(case, seqs: Sequence[str]) -> List[str]:
    """The co-registration check (:func:`core.prepare.case_registration_warnings_by_sequence`)
    for the model's sequences of a 3D case, for the whole-brain slice and volume models: they
    read the sequences together on the reference grid without ``core.prepare.prepare``, which
    makes the check for the segmentation (and so for the tumour-centred model's window). Shared
    by the prediction and its explanation; a slice pack has one grid and is not checked."""
    if case.kind == "slices":
        return []
    from .prepare import case_registration_warnings_by_sequence
    return [w for s, w in case_registration_warnings_by_sequence(case).items() if s in seqs]


def masked_warnings(seqs: Sequence[str], inp: "SliceInput") -> List[str]:
    """The warning for the model's sequences the case lacks (masked, as in training); shared by
    the prediction and its explanation."""
    masked = [s for s, m in zip(seqs, inp.seq_mask) if not m]
    return ([f"{', '.join(masked)} missing: masked (the model was trained with missing "
             "sequences masked, expect lower accuracy)"] if masked else [])


def _segment_for(case, card, dev, cancel, stage: Tuple[str, int, int] = ("predict", 1, 3),
                 synthetic: Optional[List[str]] = None):
    """Whole-tumour labels for a segmentation-based predictor: the 2D model its card names for
    slice packs, the default 3D model for volumes (progress relayed as ``stage`` = (name, done,
    total); returns the labels, the model's name and its warnings; the synthetic sequences it
    used are added to ``synthetic``)."""
    from .models import load_model
    from .segment import segment
    name = _window_segmenter(case, card)
    seg = load_model(name, task="segmentation", device=dev)
    res = None
    for item in segment(case, seg, device=dev, cancel=cancel, compare=False):
        if isinstance(item, Progress):
            yield Progress(*stage, f"segmenting ({name}): {item.message}")
        else:
            res = item
    if synthetic is not None:
        synthetic.extend(s for s in res.synthetic_inputs if s not in synthetic)
    return res.labels, name, res.warnings


def _window_segmenter(case, card) -> str:
    """The segmentation model that places a segmentation-based predictor's tumour window."""
    from .segment import default_model_name
    spec = (card.get("input") or {}).get("segmentation") or {}
    return (spec.get("slices") if case.kind == "slices" else None) or default_model_name(case)


def window_or_fallback(case, lm, *, explicit: bool, segmenting: bool = True):
    """A tumour-centred model needs the case segmented (``segmenting``: no segmentation or
    prepared input was given); when the segmentation model lacks a sequence the case does not
    have: the default model gives way to the whole-brain ``predict_mil`` (returns it and a
    warning), a model the user named raises a clear error. Returns ``(model, warning or
    None)``."""
    from .models import find_model, list_models, load_model, read_card
    kind = (lm.card.get("input") or {}).get("kind")
    if kind not in (*ROI_KINDS, "ensemble") or not segmenting:
        return lm, None
    placing = lm.card if kind in ROI_KINDS else next(
        (c for c in member_cards(lm.card) if (c.get("input") or {}).get("kind") in ROI_KINDS),
        None)
    if placing is None:
        return lm, None
    seg_name = _window_segmenter(case, placing)
    seg_card = read_card(find_model(seg_name))
    needed = list(seg_card.get("required_sequences") or seg_card.get("sequences") or [])
    missing = [s for s in needed if s not in case.sequences
               or not case.sequences[s].meta.get("available", True)]
    if not missing:
        return lm, None
    who = lm.name if kind in ROI_KINDS else f"{lm.name} (its member {placing.get('name')})"
    why = (f"{who} centres its window on the tumour segmentation, and the segmentation "
           f"model {seg_name} needs {', '.join(needed)}: the case lacks {', '.join(missing)}")
    if not explicit and "predict_mil" in {m["name"] for m in list_models(TASK)}:
        return (load_model("predict_mil", task=TASK),
                f"{why}; predicted with predict_mil, the whole-brain model, instead")
    err = MissingSequenceError(missing, needed, case.present)
    err.args = (f"{why} (synthesise {', '.join(missing)} first, or choose predict_mil, "
                "which needs FLAIR only)",)
    raise err


def trained_on_slice_packs(card: Optional[Dict[str, Any]]) -> bool:
    """Was the model of ``card`` trained on 2D slice packs (the shipped TCGA-LGG data), so that
    a 3D volume lies outside the domain it was validated on?"""
    ds = ((card or {}).get("training_data") or {}).get("datasets")
    text = "; ".join(map(str, ds)) if isinstance(ds, (list, tuple)) else str(ds or "")
    return "slice pack" in text.lower()


#: a segmented tumour smaller than this (mL) may be a false positive of the segmentation
MIN_WINDOW_TUMOUR_ML = 2.0


def window_warnings(case, inp: SliceInput) -> List[str]:
    """What a user should know about a tumour-centred input ``inp`` of ``case`` (shared by
    the prediction and its explanation): a tiny segmented tumour, and 3D input outside the
    training domain."""
    out = []
    g = case.sequences[case.reference].geometry
    ml = (float(inp.window_voxels) * float(np.prod(g.spacing)) / 1000.0
          if inp.window_voxels is not None else None)
    if ml is not None and ml < MIN_WINDOW_TUMOUR_ML:
        out.append(f"the segmented tumour the window is centred on is only {ml:.1f} mL: it may "
                   "be a false positive of the segmentation, and the prediction then describes "
                   "normal tissue")
    if case.kind != "slices":
        out.append(Note("3D volume: the tumour-centred model was trained on TCGA-LGG slice "
                        "packs (not skull-stripped); this input is outside its validated "
                        "domain", OUTSIDE_DOMAIN_3D))
    return out


def attention_title(res: "PredictionResult") -> Optional[str]:
    """What a slice-attention plot of ``res`` shows when it is not ``res.model``'s own: an
    ensemble has none and shows its image member's (the Predict widget and the case report
    title their plots with this)."""
    if res.attention_model and res.attention_model != res.model:
        return f"slice attention ({res.attention_model}, the image member of {res.model})"
    return None


def synthetic_used(case, seqs: Sequence[str], via_segmentation: Sequence[str],
                   warns: List[str], supplied_source: Optional[str] = None) -> List[str]:
    """Every synthetic input a prediction rests on: the model's own sequences ``seqs`` that
    are synthetic, then those its tumour segmentation was made from (a T2 synthesised for the
    segmentation model only still shapes the tumour window and features). The direct ones are
    said in ``warns``; those of a segmentation the caller supplied (``supplied_source``, as
    :func:`tumour_labels` names it) too, while a segmentation this prediction made has said
    its own in its warnings."""
    # in one order whatever the model's channel order: two members' notes then read the same
    direct = sorted(s for s in seqs if s in case.sequences and case.sequences[s].synthetic)
    if direct:
        warns.append(synthetic_note(direct))
    via = sorted(s for s in set(via_segmentation) if s not in direct)
    if via and supplied_source is not None:
        warns.append(synthetic_note(via, f", through the tumour {supplied_source}",
                                    SYNTHETIC_SEGMENTATION))
    return direct + via


def uses_segmentation(card: Dict[str, Any]) -> bool:
    """A predictor that needs the case's tumour segmentation: the segment-then-classify
    ``predict_radiomics`` and the tumour-centred networks (``input.kind`` in ``ROI_KINDS``)."""
    kind = (card.get("input") or {}).get("kind")
    if kind == "ensemble":
        return any(uses_segmentation(c) for c in member_cards(card))
    return kind in ("radiomics", *ROI_KINDS)


def tumour_labels(case, card, dev, cancel, segmentation, segmentation_source, warns,
                  stage: Tuple[str, int, int] = ("predict", 1, 3),
                  synthetic: Optional[List[str]] = None):
    """The labels a segmentation-based predictor uses: ``segmentation`` when the caller has
    one (checked to be on the reference grid), else the case segmented by the model the card
    names; returns ``(labels, source)`` and adds the segmentation's warnings to ``warns`` and
    the synthetic sequences it was made from to ``synthetic`` (those of the caller's
    segmentation are the caller's to give)."""
    if segmentation is None:
        labels, seg_name, seg_warns = yield from _segment_for(case, card, dev, cancel, stage,
                                                              synthetic)
        said_in_sample = any(warning_key(x) == IN_SAMPLE for x in warns)
        for w in seg_warns:
            if warning_key(w) == IN_SAMPLE and said_in_sample:
                continue        # the prediction has said that this case is in-sample
            text = f"segmentation ({seg_name}): {w}"
            if text not in warns:
                # its synthetic-input note keeps a kind an analysis can recognise
                warns.append(Note(text, SYNTHETIC_SEGMENTATION
                                  if warning_key(w) in SYNTHETIC_KEYS else ""))
        return labels, f"segmented by {seg_name}"
    return _on_reference_labels(case, segmentation), f"segmentation {segmentation_source}"


def _on_reference_labels(case, labels) -> np.ndarray:
    """``labels`` as an array, checked to lie on the case's reference grid."""
    labels = np.asarray(labels)
    ref = case.sequences[case.reference].geometry
    if labels.shape != tuple(ref.shape):
        raise ConfigError(f"the segmentation has shape {labels.shape}, the case's reference "
                          f"grid {tuple(ref.shape)}: not one grid")
    return labels


def _predict_radiomics(case, lm, card, dev, clinical, segmentation, segmentation_source,
                       warns, cancel, t0, seg_synth: List[str]):
    import time
    import torch
    from .radiomics import FEATURES, case_features, vector

    supplied = segmentation is not None
    labels, source = yield from tumour_labels(case, card, dev, cancel, segmentation,
                                              segmentation_source, warns, synthetic=seg_synth)
    check(cancel)
    yield Progress("predict", 2, 3, "tumour features")
    wt = labels > 0
    if not wt.any():
        warns.append("no tumour was segmented: the features describe an empty mask and the "
                     "prediction is not meaningful")
    if case.kind != "slices":
        warns.append(Note("3D volume: the radiomics model was trained on TCGA-LGG slice packs "
                          "(not skull-stripped); this input is outside its validated domain",
                          OUTSIDE_DOMAIN_3D))
    feats = card["input"].get("features", FEATURES)
    if list(feats) != list(FEATURES):
        raise ConfigError(f"{lm.name} was made with another feature set than this version "
                          "computes; retrain it (scripts/cv_prediction.py --models radiomics)")
    f = case_features(case, wt, clinical)
    for k in ("age", "sex_male"):
        if not np.isfinite(f[k]):
            warns.append(Note(f"{'age' if k == 'age' else 'sex'} unknown: the training median "
                              "was used", AGE_UNKNOWN if k == "age" else SEX_UNKNOWN))
    synth = synthetic_used(case, ("flair", "t1", "t1ce"), seg_synth, warns,
                           source if supplied else None)

    def forest(d):
        with torch.inference_mode():
            return lm.module(torch.from_numpy(vector(f)[None]).to(d))
    out, dev = oom_fallback(forest, dev, models=[lm], warn=warns, what=f"{lm.name} ran")
    tasks, unc = {}, {}
    for t, probs in out["probs"].items():
        mean = probs[0, 0].cpu().numpy()
        names = card.get("classes", CLASSES).get(t, [str(i) for i in range(len(mean))])
        tasks[t] = {names[i]: float(mean[i]) for i in range(len(mean))}
        per_tree = out["tree_probs"][t][:, 0, -1].cpu().numpy()
        unc[t] = {"sd": float(per_tree.std()), "min": float(per_tree.min()),
                  "max": float(per_tree.max()),
                  "method": f"SD of the {len(per_tree)} trees' probabilities"}
    risk = float(out["risk"][0]) if "risk" in out else None
    yield Progress("predict", 3, 3, "done")
    res = PredictionResult(case_id=case.case_id, model=lm.name, card=card_summary(card),
                           tasks=tasks, uncertainty=unc, attention={}, slice_index=[],
                           risk=risk, synthetic_inputs=synth, warnings=warns, device=dev,
                           seconds=time.perf_counter() - t0, inputs=None,
                           features={k: (round(float(v), 6) if np.isfinite(v) else None)
                                     for k, v in f.items()},
                           features_source=source)
    yield res


__all__ = ["predict", "PredictionResult", "case_to_input", "pack_arrays_to_input",
           "volume_case_to_input", "normalise", "CLASSES", "PREP", "ConfigError",
           "roi_case_to_input", "roi_arrays_to_input", "PREP_ROI", "ROI_KINDS", "VOLUME_KINDS",
           "ROI_SEGMENTATION", "DEFAULT_MODELS",
           "default_model_name", "uses_segmentation", "tumour_labels"]
