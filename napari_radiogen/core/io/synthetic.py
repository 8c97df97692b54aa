"""Synthetic volumes on disk: how a volume the package generated says so in its file, and how the
readers recognise one again.

A synthetic sequence (a :class:`~napari_radiogen.core.case.Volume` with ``synthetic=True``) is
written with its provenance in the file:

* NIfTI: the header's ``descrip`` field (80 bytes), e.g.
  ``napari-radiogen synthetic t1ce from t1,t2,flair by synth_seq2seq2d``;
* NRRD / MetaImage: the key/value fields ``radiogen_synthetic`` (``true``),
  ``radiogen_sequence``, ``radiogen_sources`` (comma separated), ``radiogen_model`` and
  ``ITK_FileNotes`` (the same sentence as NIfTI's ``descrip``).

The package names its synthetic outputs ``<case>_<sequence>_synth.<ext>`` (``radiogen
synthesize``, ``radiogen analyze``); a file so named is synthetic too, whatever its header says
(files written before the header was filled, or by hand). ``radiogen synthesize`` also writes a
JSON beside the volume (``<case>_<sequence>_synth.json``) with the sources and the model: the
reader takes the provenance from it when the header does not carry it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from . import _marks
from ._marks import (clean_token, fit_description, from_notes, listed, sequence_name,
                     sequence_names, split_list)
from .detect import detect_sequence, strip_extension

PathLike = Union[str, Path]

#: the start of NIfTI's ``descrip`` (and of ``ITK_FileNotes``) for a synthetic volume
DESCRIP_PREFIX = "napari-radiogen synthetic"
KEY_SYNTHETIC = "radiogen_synthetic"
KEY_SEQUENCE = "radiogen_sequence"
KEY_SOURCES = "radiogen_sources"
KEY_MODEL = "radiogen_model"
#: NIfTI's ``descrip`` holds 80 bytes, the last one a NUL (shared with :mod:`.maps`)
DESCRIP_BYTES = _marks.DESCRIP_BYTES
NOTES_KEYS = _marks.NOTES_KEYS
#: provenance records merged, the first that has a field wins
merge = _marks.merge

#: ``..._t1ce_synth``, ``...-flair-synthetic``: the suffix the package gives synthetic outputs
_SYNTH_SUFFIX_RE = re.compile(r"^(.*?)[_\-.](?:synth|synthetic)$", re.I)
_DESCRIP_RE = re.compile(r"^" + re.escape(DESCRIP_PREFIX)
                         + r"(?: (?!from\b|by\b)(?P<seq>[a-z0-9]+))?(?: from (?P<src>[a-z0-9,]+))?"
                           r"(?: by (?P<model>\S+))?", re.I)


def strip_synth_suffix(stem: str) -> str:
    """``P1_t1ce_synth`` -> ``P1_t1ce``; a stem without the suffix comes back unchanged."""
    m = _SYNTH_SUFFIX_RE.match(stem)
    return m.group(1) if m and m.group(1) else stem


def has_synth_suffix(name: PathLike) -> bool:
    """True for a file (or DICOM description) named ``<...>_synth`` / ``<...>_synthetic``
    (any volume extension), the package's name for its synthetic outputs."""
    stem = strip_extension(Path(str(name)).name)
    return strip_synth_suffix(stem) != stem


def provenance(sequence: Optional[str] = None, sources: Optional[Sequence[str]] = None,
               model: Optional[str] = None) -> Dict[str, Any]:
    """A provenance record ``{"sequence", "sources", "model"}`` (missing parts left out)."""
    out: Dict[str, Any] = {}
    seq = sequence_name(sequence)
    if seq:
        out["sequence"] = seq
    src = sequence_names(sources)
    if src:
        out["sources"] = src
    if model:
        out["model"] = str(model)
    return out


def from_volume_meta(meta: Mapping[str, Any], sequence: Optional[str] = None) -> Dict[str, Any]:
    """The provenance of a synthetic volume from its ``meta`` (as :func:`synthesize` sets it)."""
    return provenance(meta.get("sequence") or meta.get("target") or sequence,
                      listed(meta.get("sources")), meta.get("model"))


def from_mapping(given: Mapping[str, Any]) -> Dict[str, Any]:
    """The provenance a caller gives as a mapping (``sequence``, ``sources``, ``model``)."""
    return provenance(given.get("sequence"), listed(given.get("sources")), given.get("model"))


def from_name(name: PathLike) -> Optional[Dict[str, Any]]:
    """The provenance a ``<...>_<sequence>_synth`` file name gives (its sequence), or None
    when the name does not carry the suffix."""
    if not has_synth_suffix(name):
        return None
    seq, kind = detect_sequence(Path(str(name)).name)
    return provenance(seq if kind == "image" else None)


def description(prov: Mapping[str, Any]) -> str:
    """``napari-radiogen synthetic t1ce from t1,t2,flair by <model>``, cut to fit NIfTI's
    ``descrip`` (the model goes first, then the sources)."""
    head = DESCRIP_PREFIX + (f" {prov['sequence']}" if prov.get("sequence") else "")
    src = f" from {','.join(prov['sources'])}" if prov.get("sources") else ""
    model = f" by {clean_token(prov['model'])}" if prov.get("model") else ""
    return fit_description((head + src + model, head + src, head), head)


def header_fields(prov: Mapping[str, Any], nifti: bool) -> Dict[str, str]:
    """The metadata to set on a SimpleITK image before writing it (NIfTI: ``ITK_FileNotes``,
    which ITK writes to ``descrip``; NRRD/MetaImage: the ``radiogen_*`` keys as well)."""
    return _marks.header_fields(description(prov), nifti, (
        (KEY_SYNTHETIC, "true"), (KEY_SEQUENCE, prov.get("sequence")),
        (KEY_SOURCES, prov.get("sources")),
        (KEY_MODEL, clean_token(prov["model"]) if prov.get("model") else None)))


def parse_description(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """The provenance in a ``napari-radiogen synthetic ...`` sentence, or None for any other
    text (other tools' descriptions are not ours to interpret)."""
    if not text:
        return None
    m = _DESCRIP_RE.match(str(text).strip().strip("\x00"))
    if m is None:
        return None
    src = m.group("src").split(",") if m.group("src") else None
    return provenance(m.group("seq"), src, m.group("model"))


def from_header(fields: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    """The provenance a file's header gives (``radiogen_*`` keys, or a ``descrip`` /
    ``ITK_FileNotes`` sentence of ours), or None when the header does not say synthetic."""
    flag = str(fields.get(KEY_SYNTHETIC, "")).strip().lower()
    if flag in ("1", "true", "yes"):
        return provenance(fields.get(KEY_SEQUENCE), split_list(fields.get(KEY_SOURCES)),
                          fields.get(KEY_MODEL))
    return from_notes(fields, parse_description)


def from_sidecar(path: PathLike) -> Optional[Dict[str, Any]]:
    """The provenance in the JSON ``radiogen synthesize`` writes beside its volume
    (``<stem>.json`` with ``"synthetic": true``), or None."""
    p = Path(path)
    side = p.with_name(strip_extension(p.name) + ".json")
    try:
        if not side.is_file() or side.stat().st_size > 1_000_000:
            return None
        info = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("synthetic") is not True:
        return None
    return provenance(info.get("target"), listed(info.get("sources")), info.get("model"))


def mark(meta: Dict[str, Any], prov: Mapping[str, Any], marked_by: List[str]) -> None:
    """Record a read volume's synthetic provenance in its ``meta`` (the keys
    :func:`~napari_radiogen.core.synthesize.synthesize` uses, plus how it was recognised)."""
    meta["synthetic"] = True
    for k in ("sequence", "sources", "model"):
        if prov.get(k):
            meta[k] = list(prov[k]) if k == "sources" else prov[k]
    meta["synthetic_marked_by"] = list(marked_by)
