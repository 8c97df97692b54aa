"""npe2 single-layer writers: labels and images back to NIfTI / NRRD / MHA on the source grid.

The geometry comes from ``meta["metadata"]["radiogen"]["geometry"]`` (set by the reader, so
the file lands on the exact grid, voxel order and affine of the file it was read from); for
layers without it, from the layer's ``scale``/``translate``/``rotate``/``affine`` (LPS mm,
z/y/x). Writing goes through :func:`napari_radiogen.core.io.write_volume`. A sequence the
reader showed resampled onto the reference grid (an oblique case, ``layers.display_case``) is
written as it was read, on its own grid, unless the layer was edited.

An image layer whose radiogen metadata says ``synthetic`` (a synthesised sequence) is written as
a synthetic volume: the file records it (NIfTI ``descrip`` "napari-radiogen synthetic t1ce from
t1,t2,flair", NRRD/MetaImage key/value fields), so reading it back, alone or in a case folder,
gives a synthetic sequence again. A heatmap or differentiation-map layer (the Explain, Analyze
and Synthesis widgets' layers, or a map file opened with the reader) is written as a map, never
synthetic, whatever the file's name; a synthetic layer is written synthetic even under a map's
name (``P1_idh_gradcam.nii.gz``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..core.errors import RadiogenError
from .layers import geometry_from_meta, radiogen_meta

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _write(path: str, data: Any, meta: Dict[str, Any], *, labels: bool) -> List[str]:
    from ..core.io import write_volume

    path = os.fspath(path)
    if not any(path.lower().endswith(s) for s in WRITE_SUFFIXES + (".nhdr", ".mhd")):
        raise RadiogenError(f"{path}: choose a file name ending in "
                            f"{', '.join(WRITE_SUFFIXES)}")
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise RadiogenError(f"{path}: only 3D (z, y, x) layers can be written as volumes "
                            f"(this one has shape {arr.shape})")
    geometry = geometry_from_meta(meta or {}, arr.shape)
    rg = radiogen_meta(meta or {})
    if rg.get("display_source") is not None and rg.get("display_digest"):
        from .layers import unedited_display_source
        src = unedited_display_source(meta, arr)
        if src is not None:
            # a sequence shown resampled onto the reference grid, not edited: the volume as
            # read is written, on its own grid (the display copy is for the eye only)
            arr, geometry = np.asarray(src.array), src.geometry
        else:
            import warnings
            warnings.warn(f"{os.path.basename(path)}: this layer was shown resampled onto the "
                          f"{rg.get('display_resampled_onto')} grid and was edited; it is "
                          "written on that grid, not on its source file's grid",
                          UserWarning, stacklevel=2)
    result_map = None if labels else _result_map(meta or {})
    written = write_volume(arr, geometry, path, labels=labels,
                           synthetic=(None if labels else
                                      False if result_map else _synthetic(meta or {})),
                           radiogen_map=result_map)
    return [os.fspath(written)]


def _result_map(meta: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The map record of a heatmap or differentiation-map layer (its file then says it is no
    scan, whatever its name), else None."""
    rg = radiogen_meta(meta)
    if rg.get("kind") == "differentiation-map":
        return {"kind": "differentiation map", "target": rg.get("target"),
                "sources": rg.get("sources"), "model": rg.get("model")}
    if rg.get("sequence") == "heatmap" and rg.get("task"):
        return {"kind": "heatmap", "task": rg.get("task"), "method": rg.get("method"),
                "model": rg.get("model")}
    read = rg.get("radiogen_map")           # a map file read by the reader, as its file said
    if isinstance(read, dict) and read.get("kind"):
        return dict(read)
    return None


def _synthetic(meta: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The provenance to record for a layer whose radiogen metadata says synthetic (its
    sequence, sources and model), else None (then only a ``_synth`` file name marks it)."""
    rg = radiogen_meta(meta)
    if not rg.get("synthetic"):
        return None
    return {"sequence": rg.get("sequence") or rg.get("target"), "sources": rg.get("sources"),
            "model": rg.get("model")}


def write_labels(path: str, data: Any, meta: Dict[str, Any]) -> List[str]:
    """Write a labels layer (uint8) with its case geometry; returns ``[path]``."""
    return _write(path, data, meta, labels=True)


def write_image(path: str, data: Any, meta: Dict[str, Any]) -> List[str]:
    """Write an image layer (float32) with its case geometry; returns ``[path]``."""
    return _write(path, data, meta, labels=False)
