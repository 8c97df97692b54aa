"""Writers: volumes on the **source** grid of the file the geometry came from, HDF5 pack masks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..case import Geometry, to_source_image
from ..errors import RadiogenError
from ._util import captured_stderr, sitk_message

PathLike = Union[str, Path]
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class WriteError(RadiogenError):
    """An output file could not be written (bad name, bad array, disk)."""


def _ext(path: Path) -> Optional[str]:
    low = path.name.lower()
    return next((e for e in WRITE_EXTENSIONS if low.endswith(e)), None)


def _labels_uint8(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(np.mod(a, 1) == 0):
            raise WriteError("labels must be whole numbers (got non-integer or NaN values)")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise WriteError(f"labels must be in 0..255 (got {a.min()}..{a.max()})")
    return a.astype(np.uint8)


def write_volume(array: np.ndarray, geometry: Geometry, path: PathLike, *,
                 labels: bool = False) -> Path:
    """Write a (z, y, x) array that lives on ``geometry`` (canonical LPS) to ``path``.

    The file is written on the **source** grid: same voxel order and affine as the file the
    geometry was read from (``geometry.source_orientation``), so it overlays the original scan
    in any viewer. ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``. Labels are
    written as uint8, images as float32. Returns the path written.
    """
    p = Path(path)
    ext = _ext(p)
    if ext is None:
        raise WriteError(f"{p}: cannot write this file type; use one of "
                         f"{', '.join(WRITE_EXTENSIONS)}")
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise WriteError(f"{p}: a volume must be 3D (z, y, x), got shape {arr.shape}")
    if labels:
        arr = _labels_uint8(arr)
    elif arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    img = to_source_image(np.ascontiguousarray(arr), geometry)   # GeometryError on misfit
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{p}: cannot create the folder ({e.strerror or e})") from None
    noise: list = []
    try:
        with captured_stderr(noise):
            sitk.WriteImage(img, str(p), useCompression=ext != ".nii")
    except RuntimeError as e:
        raise WriteError(f"{p}: cannot write ({sitk_message(e)})") from None
    return p


def write_pack_mask(mask: np.ndarray, path: PathLike, *,
                    attrs: Optional[Dict[str, Any]] = None) -> Path:
    """Write a (n_slices, y, x) mask to an HDF5 file as dataset ``mask`` (uint8, gzip), the
    layout of the TCGA-LGG packs. ``attrs`` go on the dataset (e.g. model name, meaning)."""
    import h5py

    p = Path(path)
    m = _labels_uint8(np.asarray(mask))
    if m.ndim != 3:
        raise WriteError(f"{p}: a pack mask must be (n_slices, y, x), got shape {m.shape}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(p, "w") as f:
            ds = f.create_dataset("mask", data=m, compression="gzip", compression_opts=4)
            ds.attrs["axes"] = "slice, y, x"
            for k, v in (attrs or {}).items():
                ds.attrs[k] = v
    except OSError as e:
        raise WriteError(f"{p}: cannot write ({e})") from None
    return p
