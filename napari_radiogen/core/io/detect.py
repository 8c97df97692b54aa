"""Sequence-name detection from file names (and DICOM series descriptions).

:func:`detect_sequence` maps a file name to a canonical sequence name (``t1``, ``t1ce``, ``t2``,
``flair``) or to labels. It understands

* BraTS 2021: ``BraTS2021_00006_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``;
* BraTS 2023: ``BraTS-GLI-00000-000-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``;
* scanner / TCIA style names: ``MRHR_T1_AX_POST_GAD_..._t1c.nii.gz``, ``..._FLAIR_...``,
  ``..._fla.nii.gz``, ``..._fla_bet``, ``T2_AX_...``, ``..._t2_bet``, ``..._t1_bet``;
* BIDS-ish suffixes: ``T1w``, ``T2w``, ``FLAIR``, ``ce-gadolinium_T1w``;
* labels: a word that is or ends in ``seg``, ``label(s)``, ``mask(s)`` (``fused_algorithms_seg``,
  ``brainmask``, ``segmentation``); inside another word (``SEGTRUNC_t1``, a case id) only when
  the name names no sequence;
* the package's synthetic outputs: ``BraTS2021_00006_t1ce_synth.nii.gz`` is T1ce (the readers
  mark it synthetic, see :mod:`.synthetic`);
* the package's result maps are no sequence: ``P1_t1ce_diffmap`` (``radiogen rank-sequences``)
  and ``P1_idh_gradcampp`` (``radiogen explain`` / ``analyze`` heatmaps) give ``(None,
  "image")`` (see :mod:`.maps`; the case reader ignores them).

Precedence matters: the package's maps first, then labels, then FLAIR (``T2_FLAIR`` is FLAIR,
not T2), then post-contrast T1 (``T1_AX_POST_GAD`` is T1ce, not T1), then T2, then T1.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Tuple, Union

from . import maps as _maps

#: File extensions read as single volumes (longest first so ``.nii.gz`` wins over ``.gz``).
VOLUME_EXTENSIONS: Tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PACK_EXTENSIONS: Tuple[str, ...] = (".h5", ".hdf5")
DICOM_EXTENSIONS: Tuple[str, ...] = (".dcm", ".ima", ".dicom")

_ALL_EXT = VOLUME_EXTENSIONS + PACK_EXTENSIONS + DICOM_EXTENSIONS + (".gz",)

# tokens (lower case, split at anything not a letter or digit)
_LABEL_SUBSTRINGS = ("seg", "label", "labels", "mask", "masks")
#: label words that do not end in one of the substrings above
_LABEL_WORDS = {"segs", "segmentation", "segmentations", "segm", "labelmap", "labelmaps"}
_FLAIR_TOKENS = {"flair", "fla", "t2f", "t2flair", "flairbet", "darkfluid", "tirm", "t2fl"}
_T1CE_TOKENS = {"t1ce", "t1c", "t1gd", "t1post", "t1wce", "t1cgd", "t1contrast", "t1postgad",
                "t1pc", "ce", "gad", "gd", "gado", "gadolinium", "contrast", "postcontrast",
                "post"}
_T1CE_STRONG = {"t1ce", "t1c", "t1gd", "t1post", "t1wce", "t1cgd", "t1contrast", "t1postgad",
                "t1pc", "postcontrast"}
_T2_TOKENS = {"t2", "t2w", "t2wi", "t2tse", "t2bet"}
_T1_TOKENS = {"t1", "t1n", "t1w", "t1wi", "t1native", "t1pre", "t1bet", "mprage", "t1mprage",
              "spgr", "t1se"}
_T2STAR = {"t2star", "t2s", "swi", "gre", "dwi", "adc", "perfusion", "dsc", "dti", "bold"}


def strip_extension(name: str) -> str:
    """``BraTS2021_00006_t1.nii.gz`` -> ``BraTS2021_00006_t1``."""
    low = name.lower()
    for ext in _ALL_EXT:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _tokens(stem: str):
    return [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]


def detect_sequence(filename: Union[str, Path]) -> Tuple[Optional[str], str]:
    """Guess the sequence of a file (or DICOM series description) from its name.

    Returns ``(name, kind)``: ``kind`` is ``"image"`` or ``"labels"``. For images ``name`` is
    one of ``t1 t1ce t2 flair`` or ``None`` when the name says nothing certain; for labels it is
    ``"labels"``.
    """
    stem = strip_extension(Path(str(filename)).name)
    # 0. the package's own result maps (heatmaps, differentiation maps): images, no sequence
    if _maps.from_stem(stem) is not None:
        return None, "image"
    low = stem.lower()
    toks = _tokens(stem)
    tokset = set(toks)

    # 1. labels: a word that is (or ends in) seg, label(s), mask (``_seg``, ``brainmask``,
    # ``segmentation``); "seg"/"label"/"mask" inside another word (a case id such as
    # ``SEGTRUNC_t1``) marks labels only when the name names no sequence
    if tokset & _LABEL_WORDS or any(t.endswith(s) for t in toks for s in _LABEL_SUBSTRINGS):
        return "labels", "labels"
    label_inside = any(s in low for s in _LABEL_SUBSTRINGS)

    # T2*, diffusion, perfusion: not one of our four sequences
    if tokset & _T2STAR or "t2*" in low:
        return None, "image"

    # 2. FLAIR before T2 (T2_FLAIR, t2f)
    if tokset & _FLAIR_TOKENS or "flair" in low:
        return "flair", "image"

    # 3. post-contrast T1 before T1 (T1_AX_POST_GAD, t1c, t1ce)
    has_t1 = bool(tokset & (_T1_TOKENS | _T1CE_STRONG)) or any(t.startswith("t1") for t in toks)
    if tokset & _T1CE_STRONG:
        return "t1ce", "image"
    if has_t1 and tokset & _T1CE_TOKENS:
        return "t1ce", "image"
    if tokset & {"gad", "gd", "gado", "gadolinium", "postcontrast", "postgad"}:
        return "t1ce", "image"     # contrast named without "t1": still a post-contrast T1

    # 4. T2 (t2, t2w, T2_AX...)
    if tokset & _T2_TOKENS:
        return "t2", "image"

    # 5. T1 (t1, t1n, t1w, MPRAGE ...)
    if tokset & _T1_TOKENS:
        return "t1", "image"

    if label_inside:
        return "labels", "labels"
    return None, "image"


#: sequence names users may type (CLI ``--sequence FILE=SEQ``) -> canonical
SEQUENCE_ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1pre": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "fla": "flair",
    "seg": "labels", "labels": "labels", "label": "labels", "mask": "labels",
    "ignore": "ignore", "skip": "ignore", "none": "ignore",
}


def canonical_sequence_name(name: str) -> Optional[str]:
    """``"T1c"`` -> ``"t1ce"``; ``"seg"`` -> ``"labels"``; unknown -> ``None``."""
    return SEQUENCE_ALIASES.get(str(name).strip().lower().replace("-", "").replace("_", ""))
