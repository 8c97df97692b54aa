"""What the package writes: strict JSON, and de-identified analysis outputs.

**Strict JSON.** Python's ``json`` writes ``NaN`` / ``Infinity`` for non-finite floats, which
strict parsers (JavaScript's ``JSON.parse``, ``jq``, most non-Python readers) reject; HD95 is
undefined (nan) when exactly one of two masks is empty. :func:`json_safe` turns every
non-finite number into ``None`` (JSON ``null``) and numpy values into Python ones;
:func:`dumps` / :func:`write_json` are the one way the analysis writes its JSON files
(``allow_nan=False``: a non-finite number that got through would fail loudly, not write
invalid JSON).

**De-identification.** The analysis outputs are de-identified by default: no clinical fields.
The prediction still uses age and sex (the models were trained with them), but the values it
read are left out of every file written (:func:`deidentified_prediction`), and the files say
which fields were removed. ``deidentify=False`` (``radiogen analyze --identified``) keeps them.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .radiomics import CLINICAL_FEATURES      # numpy only: cheap to import

#: the clinical record's other spellings of those fields (``--age/--sex``, TCGA's
#: ``clinical.csv``: ``age_at_initial_pathologic``, ``gender``)
_CLINICAL_SPELLINGS = ("sex", "gender", "age_at_initial_pathologic")
#: fields of a prediction's ``features`` that come from the patient's clinical record (the
#: radiomics model's ``core.radiomics.CLINICAL_FEATURES`` and their usual spellings)
CLINICAL_FEATURE_KEYS = tuple(dict.fromkeys([*(str(f).lower() for f in CLINICAL_FEATURES),
                                             *_CLINICAL_SPELLINGS]))
#: what a de-identified file says about the removed fields
DEIDENTIFIED_NOTE = ("de-identified: no clinical fields (age, sex, survival...); those the "
                     "prediction read are left out of every file written (removed_fields), not "
                     "out of the prediction; an identified analysis keeps them")


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON can hold it: non-finite numbers -> ``None``, numpy scalars and
    arrays -> Python numbers and lists, tuples and sets -> lists, paths -> strings, mapping keys
    -> strings where JSON needs it. Strings (``core.notes.Note`` included) are kept as they
    are."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, dict):
        return {_key(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [json_safe(v) for v in sorted(obj, key=str)]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    try:                                    # e.g. a 0-d tensor (what ``default=float`` did)
        return json_safe(float(obj))
    except (TypeError, ValueError):
        return str(obj)


def _key(k: Any) -> Any:
    if k is None or isinstance(k, (str, bool, int)):
        return k
    if isinstance(k, np.generic):
        return _key(k.item())
    return str(k)


def dumps(obj: Any, *, indent: Optional[int] = 2) -> str:
    """Strict JSON text of ``obj`` (:func:`json_safe`, then ``allow_nan=False``)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON to ``path``; returns the path."""
    p = Path(path)
    p.write_text(dumps(obj, indent=indent))
    return p


def strip_folder(text: str, case_path: Any) -> str:
    """``text`` (a case's error message) with the folder that holds the case left out of the
    file paths it names: ``nancase/nancase_flair.nii.gz: ...`` rather than
    ``/data/cohort/nancase/nancase_flair.nii.gz: ...`` (a path may name a patient). What the
    cohort summaries of ``radiogen analyze`` and the batch commands write."""
    import os
    parent = Path(case_path).parent
    text = str(text)
    for p in {str(parent.resolve()), str(parent.absolute()), str(parent)}:
        if p not in ("", "."):
            text = text.replace(p.rstrip(os.sep) + os.sep, "")
    return text


def relative_to_folder(obj: Any, folder: Any) -> Any:
    """``obj`` (a path, or a dict / list of them, nested) with every path that lies in
    ``folder`` written relative to it, with forward slashes (``case_seg.nii.gz``,
    ``sub/x.png``): what a JSON file written in ``folder`` names its sibling files by, so that
    it holds neither the output path as the user typed it (which may be absolute and name a
    person) nor one that breaks when the folder is moved. A path outside ``folder`` and any
    other value are kept as they are (paths as strings); ``None`` stays ``None``."""
    import os

    base = os.path.abspath(os.fspath(folder))

    def one(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [one(x) for x in v]
        if isinstance(v, (str, Path)) and str(v):
            p = os.path.abspath(os.fspath(v))
            if p == base or p.startswith(base.rstrip(os.sep) + os.sep):
                return Path(os.path.relpath(p, base)).as_posix()
            return str(v)
        return v

    return one(obj)


def deidentified_prediction(pred: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """A copy of a prediction's JSON (``PredictionResult.to_json()``) without the clinical
    fields it carries (age and sex among the features of a segment-then-classify model), and
    the removed fields as dotted paths (``features.age``). The input is not changed."""
    out = copy.deepcopy(pred)
    removed: List[str] = []
    feats = out.get("features")
    if isinstance(feats, dict):
        for k in list(feats):
            if k.lower() in CLINICAL_FEATURE_KEYS:
                del feats[k]
                removed.append(f"features.{k}")
    if "clinical" in out:
        del out["clinical"]
        removed.append("clinical")
    return out, removed


def prediction_for_output(pred: Dict[str, Any], deidentify: bool
                          ) -> Tuple[Dict[str, Any], List[str]]:
    """What a file written with ``deidentify`` holds of a prediction's JSON, with the fields
    left out (none when identified); the prediction itself is never changed."""
    if not deidentify:
        return pred, []
    return deidentified_prediction(pred)


def deidentification_fields(deidentify: bool, removed: List[str]) -> Dict[str, Any]:
    """The keys a written JSON file carries about its de-identification."""
    out: Dict[str, Any] = {"deidentified": bool(deidentify)}
    if deidentify:
        out["removed_fields"] = list(removed)
        out["deidentification"] = DEIDENTIFIED_NOTE
    return out


__all__ = ["json_safe", "dumps", "write_json", "strip_folder", "relative_to_folder", "deidentified_prediction",
           "prediction_for_output", "deidentification_fields", "CLINICAL_FEATURE_KEYS",
           "DEIDENTIFIED_NOTE"]


def check_out_dir(path, shown=str) -> Path:
    """Check, without creating anything, that ``path`` can be (or is) an output folder: a
    :class:`~napari_radiogen.core.errors.ConfigError` (one line) when it is an existing file
    or a broken link, when a folder on the way to it is a file, or when the folder that would
    hold it is not writable. ``shown`` writes a path in the message. The ``radiogen``
    commands call it before any long computation, the training engine before any data is
    read."""
    import os

    from .errors import ConfigError
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise ConfigError(f"{shown(p)}: cannot create the output folder (a broken link of "
                          "that name exists)")
    q = p
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{shown(p)}: cannot create the output folder (a file of that "
                              "name exists)")
    else:
        while not q.exists() and q.parent != q:
            q = q.parent
        if q.exists() and not q.is_dir():
            raise ConfigError(f"{shown(p)}: cannot create the output folder ({shown(q)} is a "
                              "file)")
    if q.exists() and not os.access(q, os.W_OK | os.X_OK):
        raise ConfigError(f"{shown(p)}: cannot write there (permission denied on {shown(q)})")
    return p
