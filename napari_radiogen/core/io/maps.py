"""The package's result maps on disk: images that lie on a case's grid but are not sequences.

* heatmaps of ``radiogen explain`` / ``radiogen analyze``: ``<case>_<task>_<method>.nii.gz``
  (``<task>`` one of ``idh codel_1p19q grade``, ``<method>`` one of ``gradcam gradcampp
  layercam attention occlusion``);
* imaging-differentiation maps of ``radiogen rank-sequences``: ``<case>_<target>_diffmap.nii.gz``
  (``P1_t1ce_diffmap`` would otherwise read as a T1ce scan).

Such a file says what it is in its header (NIfTI ``descrip``, e.g. ``napari-radiogen heatmap
idh gradcam++ by test_mil`` or ``napari-radiogen differentiation map t1ce from t1,t2,flair by
synth_seq2seq2d``; NRRD/MetaImage: ``radiogen_map`` and related key/value fields and the same
sentence in ``ITK_FileNotes``). :func:`~.detect.detect_sequence` gives no sequence for these
names, and the case reader ignores such a file (by its name or its header) with the reason in
``case.meta["ignored_outputs"]``, so a map copied into a case folder is never read as a scan.

Segmentations (``<case>_seg.nii.gz``) are not maps: they are read as the case's labels.

Headless and import-light (no torch): the task and method names are spelled out here (a test
checks that they match :mod:`napari_radiogen.core.explain`).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence

from ..case import SEQUENCES
from . import _marks
from ._marks import (clean_token, fit_description, from_notes, listed, sequence_name,
                     sequence_names, split_list)

HEATMAP = "heatmap"
DIFFMAP = "differentiation map"
KINDS = (HEATMAP, DIFFMAP)

#: the start of NIfTI's ``descrip`` (and ``ITK_FileNotes``) for each kind of map
DESCRIP_PREFIX = {HEATMAP: "napari-radiogen heatmap",
                  DIFFMAP: "napari-radiogen differentiation map"}
DESCRIP_BYTES = _marks.DESCRIP_BYTES           # shared with .synthetic
KEY_MAP = "radiogen_map"
KEY_TASK = "radiogen_task"
KEY_METHOD = "radiogen_method"
KEY_TARGET = "radiogen_target"
KEY_SOURCES = "radiogen_sources"
KEY_MODEL = "radiogen_model"
HEADER_KEYS = (KEY_MAP, KEY_TASK, KEY_METHOD, KEY_TARGET, KEY_SOURCES, KEY_MODEL)
NOTES_KEYS = _marks.NOTES_KEYS

#: :data:`napari_radiogen.core.explain.TASKS` and the file-name spelling of its METHODS
TASKS = ("idh", "codel_1p19q", "grade")
METHOD_SLUGS = ("gradcam", "gradcampp", "layercam", "attention", "occlusion")
#: what writes each kind (for messages)
WRITTEN_BY = {HEATMAP: "radiogen explain / analyze", DIFFMAP: "radiogen rank-sequences"}

_HEATMAP_RE = re.compile(r"^(?P<case>.+?)[_\-.](?P<task>" + "|".join(TASKS) + r")[_\-.]"
                         r"(?P<method>" + "|".join(METHOD_SLUGS) + r"|gradcam\+\+)$", re.I)
_DIFFMAP_RE = re.compile(r"^(?:(?P<case>.+?)[_\-.])??(?:(?P<target>" + "|".join(SEQUENCES)
                         + r")[_\-.])?diffmap$", re.I)
_DESCRIP_RE = re.compile(r"^napari-radiogen (?P<kind>heatmap|differentiation map)(?P<rest>.*)$",
                         re.I)


def info(kind: str, *, task: Optional[str] = None, method: Optional[str] = None,
         target: Optional[str] = None, sources: Optional[Sequence[str]] = None,
         model: Optional[str] = None) -> Dict[str, Any]:
    """A map record ``{"kind", ...}`` (``task``/``method`` for heatmaps, ``target`` and
    ``sources`` for differentiation maps, ``model``; missing parts left out)."""
    k = str(kind).strip().lower().replace("-", " ")
    if k in ("diffmap", "differentiation", "differentiation map"):
        k = DIFFMAP
    if k not in KINDS:
        raise ValueError(f"unknown map kind {kind!r}; one of {', '.join(KINDS)}")
    out: Dict[str, Any] = {"kind": k}
    if task:
        out["task"] = clean_token(task).lower()
    if method:
        out["method"] = clean_token(method).lower()
    tgt = sequence_name(target)
    if tgt:
        out["target"] = tgt
    src = sequence_names(sources)
    if src:
        out["sources"] = src
    if model:
        out["model"] = clean_token(model)
    return out


def from_mapping(given: Mapping[str, Any]) -> Dict[str, Any]:
    """The map a caller gives as a mapping (``kind`` and ``task``, ``method``, ``target``,
    ``sources``, ``model``); ValueError for a kind that is no map."""
    return info(given.get("kind", ""), task=given.get("task"), method=given.get("method"),
                target=given.get("target"), sources=listed(given.get("sources")),
                model=given.get("model"))


def from_stem(stem: str) -> Optional[Dict[str, Any]]:
    """The map a file stem (no extension) names: ``P1_idh_gradcampp`` -> a heatmap,
    ``P1_t1ce_diffmap`` -> a differentiation map; None for any other name."""
    m = _HEATMAP_RE.match(stem)
    if m:
        method = m.group("method").lower().replace("gradcampp", "gradcam++")
        return info(HEATMAP, task=m.group("task"), method=method)
    m = _DIFFMAP_RE.match(stem)
    if m:
        return info(DIFFMAP, target=m.group("target"))
    return None


def case_of_stem(stem: str) -> Optional[str]:
    """The case id a map's file stem starts with (``P1_idh_gradcampp`` -> ``P1``,
    ``P1_t1ce_diffmap`` -> ``P1``), or None (``diffmap``, or no map name)."""
    m = _HEATMAP_RE.match(stem) or _DIFFMAP_RE.match(stem)
    return (m.group("case") or None) if m else None


def from_name(name: Any) -> Optional[Dict[str, Any]]:
    """The map a file name names (any volume extension), or None."""
    from pathlib import Path

    from .detect import strip_extension
    return from_stem(strip_extension(Path(str(name)).name))


def from_volume_meta(meta: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The map a Volume's ``meta`` describes (``core.synthesize.rank_sequences`` gives its maps
    ``kind: "differentiation-map"``), or None."""
    kind = str(meta.get("kind") or "").strip().lower().replace("-", " ")
    if kind not in KINDS:
        return None
    return from_mapping({**meta, "kind": kind})


def description(m: Mapping[str, Any]) -> str:
    """``napari-radiogen heatmap idh gradcam++ by test_mil``, ``napari-radiogen differentiation
    map t1ce from t1,t2,flair by synth_seq2seq2d``, cut to fit NIfTI's ``descrip``."""
    head = DESCRIP_PREFIX[m["kind"]]
    if m["kind"] == HEATMAP:
        head += "".join(f" {m[k]}" for k in ("task", "method") if m.get(k))
    elif m.get("target"):
        head += f" {m['target']}"
    src = f" from {','.join(m['sources'])}" if m.get("sources") else ""
    model = f" by {m['model']}" if m.get("model") else ""
    return fit_description((head + src + model, head + model, head), head)


def header_fields(m: Mapping[str, Any], nifti: bool) -> Dict[str, str]:
    """The metadata to set on a SimpleITK image before writing it (NIfTI: ``ITK_FileNotes``,
    which ITK writes to ``descrip``; NRRD/MetaImage: the ``radiogen_*`` keys as well)."""
    return _marks.header_fields(description(m), nifti, (
        (KEY_MAP, m["kind"]), (KEY_TASK, m.get("task")), (KEY_METHOD, m.get("method")),
        (KEY_TARGET, m.get("target")), (KEY_MODEL, m.get("model")),
        (KEY_SOURCES, m.get("sources"))))


def parse_description(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """The map a ``napari-radiogen heatmap ...`` / ``... differentiation map ...`` sentence
    describes, or None for any other text."""
    if not text:
        return None
    mt = _DESCRIP_RE.match(str(text).strip().strip("\x00"))
    if mt is None:
        return None
    kind = mt.group("kind").lower()
    rest = mt.group("rest")
    model = re.search(r" by (\S+)", rest)
    src = re.search(r" from ([a-z0-9,]+)", rest, re.I)
    words = re.split(r" (?:from|by) ", rest, maxsplit=1)[0].split()
    if kind == HEATMAP:
        return info(kind, task=words[0] if words else None,
                    method=words[1] if len(words) > 1 else None,
                    model=model.group(1) if model else None)
    return info(kind, target=words[0] if words else None,
                sources=src.group(1).split(",") if src else None,
                model=model.group(1) if model else None)


def from_header(fields: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    """The map a file's header records (``radiogen_map`` key, or a ``descrip`` /
    ``ITK_FileNotes`` sentence of ours), or None."""
    kind = str(fields.get(KEY_MAP, "")).strip()
    if kind:
        try:
            return info(kind, task=fields.get(KEY_TASK), method=fields.get(KEY_METHOD),
                        target=fields.get(KEY_TARGET), model=fields.get(KEY_MODEL),
                        sources=split_list(fields.get(KEY_SOURCES)))
        except ValueError:
            pass                        # a kind we do not know: look at the sentence
    return from_notes(fields, parse_description)


def reason(m: Mapping[str, Any], how: str = "name") -> str:
    """Why a case reader does not read such a file as a sequence: ``a napari-radiogen heatmap
    for idh by gradcam++ (radiogen explain / analyze), recognised by its name: not a
    sequence``."""
    what = ""
    if m["kind"] == HEATMAP:
        what += f" for {m['task']}" if m.get("task") else ""
        what += f" by {m['method']}" if m.get("method") else ""
    elif m.get("target"):
        what = f" of {m['target']}"
    return (f"a napari-radiogen {m['kind']}{what} ({WRITTEN_BY[m['kind']]}), recognised by its "
            f"{how}: not a sequence")
