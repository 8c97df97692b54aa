"""What :mod:`.synthetic` and :mod:`.maps` share: how the package records in a file's header
what the file is (a synthetic sequence, a result map), and how it reads that back.

Private: the two public modules re-export what their callers use (``DESCRIP_BYTES``,
``NOTES_KEYS``, ``synthetic.merge``).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..case import SEQUENCES

#: NIfTI's ``descrip`` holds 80 bytes, the last one a NUL
DESCRIP_BYTES = 79
#: the header fields that hold the package's sentence (NIfTI's ``descrip``; ITK's
#: ``ITK_FileNotes``, which ITK writes to and reads from ``descrip``, and which NRRD/MetaImage
#: keep as a key/value field)
NOTES_KEYS = ("descrip", "ITK_FileNotes")

_TOKEN_RE = re.compile(r"[^A-Za-z0-9_.+\-]+")

Record = Dict[str, Any]


def clean_token(x: Any) -> str:
    """``x`` as one word of a header sentence (runs of other characters -> ``_``)."""
    return _TOKEN_RE.sub("_", str(x)).strip("_")


def sequence_name(x: Any) -> Optional[str]:
    """``x`` lower-cased when it is one of the package's sequences, else None."""
    if not x:
        return None
    s = str(x).lower()
    return s if s in SEQUENCES else None


def sequence_names(xs: Optional[Iterable[Any]]) -> List[str]:
    """The package's sequences among ``xs``, lower-cased, in order (others left out)."""
    return [str(s).lower() for s in (xs or []) if str(s).lower() in SEQUENCES]


def listed(x: Any) -> Optional[Sequence[Any]]:
    """``x`` when it is a list or tuple (a mapping's ``sources``), else None."""
    return x if isinstance(x, (list, tuple)) else None


def split_list(text: Optional[str]) -> Optional[List[str]]:
    """A header's comma-separated field (``t1,t2,flair``) as a list, None when empty."""
    return [s.strip() for s in text.split(",")] if text else None


def fit_description(candidates: Iterable[str], head: str) -> str:
    """The first of ``candidates`` that fits NIfTI's ``descrip``, else ``head`` cut to fit."""
    for text in candidates:
        if len(text.encode("ascii", "replace")) <= DESCRIP_BYTES:
            return text
    return head[:DESCRIP_BYTES]


def header_fields(description: str, nifti: bool,
                  keyed: Iterable[Tuple[str, Any]]) -> Dict[str, str]:
    """The metadata to set on a SimpleITK image before writing it: the sentence as
    ``ITK_FileNotes`` (which ITK writes to NIfTI's ``descrip``) and, for NRRD/MetaImage, the
    ``keyed`` fields that have a value (lists joined by commas)."""
    out = {"ITK_FileNotes": description}
    if not nifti:
        for key, value in keyed:
            if value:
                out[key] = (",".join(map(str, value)) if isinstance(value, (list, tuple))
                            else str(value))
    return out


def from_notes(fields: Mapping[str, str],
               parse: Callable[[Optional[str]], Optional[Record]]) -> Optional[Record]:
    """The first record ``parse`` finds in a header's sentence fields (:data:`NOTES_KEYS`)."""
    for k in NOTES_KEYS:
        rec = parse(fields.get(k))
        if rec is not None:
            return rec
    return None


def merge(*records: Optional[Mapping[str, Any]]) -> Record:
    """Records merged, the first that has a field wins."""
    out: Record = {}
    for r in records:
        for k, v in (r or {}).items():
            out.setdefault(k, v)
    return out
