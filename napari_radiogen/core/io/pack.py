"""TCGA-LGG HDF5 slice packs (one patient per file).

Layout (see ``shared/data/README.md``): ``image`` uint8 (n, 3, 128, 128), channels
``[t1, flair, t1ce]``; ``mask`` uint8 (n, 128, 128), 1 = FLAIR abnormality; attribute
``available`` (bool per channel; an unavailable channel is a copy of FLAIR and is NOT loaded).
Pixel spacing is not recorded: about 0.94 mm at 256 px, binned 2x2 -> nominal 1.875 mm in-plane,
slice spacing nominal 5 mm (``Geometry.nominal`` is True).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..case import SEQUENCES, Case, Geometry, Volume
from ..errors import CaseLoadError

PathLike = Union[str, Path]
DEFAULT_CHANNELS = ("t1", "flair", "t1ce")
NOMINAL_INPLANE_MM = 1.875
NOMINAL_SLICE_MM = 5.0
MASK_MEANING = "1 = FLAIR abnormality (manual), not BraTS labels"


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return [_decode(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _parse_cell(s: str) -> Any:
    s = s.strip()
    if s == "":
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def clinical_row(csv_path: PathLike, case_id: str) -> Dict[str, Any]:
    """The row of ``clinical.csv`` whose ``patient_id`` (or ``Patient``) is ``case_id``."""
    p = Path(csv_path)
    if not p.is_file():
        return {}
    try:
        with open(p, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if case_id in (row.get("patient_id"), row.get("Patient")):
                    return {k: _parse_cell(v or "") for k, v in row.items() if k}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return {}


def pack_geometry(n_slices: int, ny: int, nx: int, *, inplane: float = NOMINAL_INPLANE_MM,
                  slice_mm: float = NOMINAL_SLICE_MM) -> Geometry:
    """Nominal LPS geometry centred on the origin."""
    spacing = (float(inplane), float(inplane), float(slice_mm))
    size = (int(nx), int(ny), int(n_slices))
    origin = tuple(-(s - 1) * sp / 2.0 for s, sp in zip(size, spacing))
    return Geometry(size=size, spacing=spacing, origin=origin, nominal=True)


def is_slice_pack(path: PathLike) -> bool:
    """An HDF5 file with an ``image`` dataset (mask-only outputs of write_pack_mask are not)."""
    import h5py

    try:
        with h5py.File(Path(path), "r") as f:
            return "image" in f
    except (OSError, ValueError):
        return False


def pack_info(path: PathLike) -> Dict[str, Any]:
    """Header-only summary of a pack (no pixel data): for cohort listings."""
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            img = f["image"]
            names = [str(x) for x in _decode(f.attrs.get("channel_names", img.attrs.get(
                "channel_names", DEFAULT_CHANNELS)))]
            avail = [bool(a) for a in np.asarray(f.attrs.get("available", [True] * len(names)))]
            return {"case_id": p.stem, "n_slices": int(img.shape[0]),
                    "sequences": [n for n, a in zip(names, avail) if a],
                    "unavailable": [n for n, a in zip(names, avail) if not a],
                    "has_mask": "mask" in f}
    except (OSError, KeyError) as e:
        raise CaseLoadError(f"{p}: not a readable slice pack ({e})") from None


def load_pack(path: PathLike, *, reference: Optional[str] = None) -> Case:
    """Read a TCGA-LGG HDF5 pack as a ``Case`` of kind ``"slices"``."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise CaseLoadError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise CaseLoadError(f"{p}: empty file (0 bytes)")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise CaseLoadError(f"{p}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
    try:
        with f:
            if "image" not in f:
                raise CaseLoadError(f"{p}: HDF5 file without an 'image' dataset "
                                    f"(has: {', '.join(f.keys()) or 'nothing'})")
            ds = f["image"]
            if ds.ndim != 4:
                raise CaseLoadError(f"{p}: 'image' must be (slices, channels, y, x), got shape "
                                    f"{ds.shape}")
            image = np.asarray(ds[()])
            names = [str(x).lower() for x in _decode(f.attrs.get(
                "channel_names", ds.attrs.get("channel_names", list(DEFAULT_CHANNELS))))]
            if len(names) != image.shape[1]:
                raise CaseLoadError(f"{p}: {image.shape[1]} channels but channel_names "
                                    f"{names}")
            avail_attr = f.attrs.get("available", None)
            avail = ([True] * len(names) if avail_attr is None
                     else [bool(a) for a in np.asarray(avail_attr).ravel()])
            if len(avail) != len(names):
                raise CaseLoadError(f"{p}: 'available' has {len(avail)} entries for "
                                    f"{len(names)} channels")
            mask = np.asarray(f["mask"][()]) if "mask" in f else None
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
    except CaseLoadError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CaseLoadError(f"{p}: cannot read the slice pack ({e})") from None

    n, _, ny, nx = image.shape
    if n < 1:
        raise CaseLoadError(f"{p}: the pack has no slices")
    geom = pack_geometry(n, ny, nx)
    sequences: Dict[str, Volume] = {}
    unavailable: List[str] = []
    for c, (name, ok) in enumerate(zip(names, avail)):
        if name not in SEQUENCES:
            continue
        if not ok:
            unavailable.append(name)
            continue
        arr = np.ascontiguousarray(image[:, c].astype(np.float32))
        sequences[name] = Volume(array=arr, geometry=geom, path=str(p),
                                 meta={"format": "hdf5", "channel": c,
                                       "source_pixel_type": str(image.dtype)})
    if not sequences:
        raise CaseLoadError(f"{p}: no available sequence channel in the pack")
    labels = None
    if mask is not None:
        if mask.shape != (n, ny, nx):
            raise CaseLoadError(f"{p}: mask shape {mask.shape} does not match the image "
                                f"slices {(n, ny, nx)}")
        m = mask.astype(np.uint8)
        if m.size and m.max() > 1:            # 0/255 masks -> 0/1
            m = (m > 0).astype(np.uint8)
        labels = Volume(array=np.ascontiguousarray(m), geometry=geom, path=str(p),
                        meta={"format": "hdf5", "labels_meaning": MASK_MEANING,
                              "label_values": [int(v) for v in np.unique(m)]})
    case_id = p.stem
    meta: Dict[str, Any] = {"format": "hdf5-slices", "n_slices": int(n),
                            "unavailable": unavailable,
                            "labels_meaning": MASK_MEANING,
                            "nominal_geometry": (f"in-plane {NOMINAL_INPLANE_MM} mm (0.94 mm x 2 "
                                                 f"binning), slices {NOMINAL_SLICE_MM} mm: not "
                                                 "recorded in the source"),
                            "source_slice_numbers": [int(x) for x in np.asarray(
                                attrs.get("source_slice_numbers", []), dtype=int).ravel()]}
    if reference is not None:
        meta["reference"] = reference
    clinical: Dict[str, Any] = {}
    # the table beside the pack, or beside the file a symbolic link points to
    for table in dict.fromkeys([p.parent / "clinical.csv", p.resolve().parent / "clinical.csv"]):
        for pid in dict.fromkeys([case_id, str(attrs.get("patient_id") or "")]):
            if pid and not clinical:
                clinical = clinical_row(table, pid)
    return Case(case_id=case_id, sequences=sequences, labels=labels, clinical=clinical,
                source=str(p), kind="slices", meta=meta)
