"""Writers: volumes on the **source** grid of the file the geometry came from, HDF5 pack masks.

A synthetic volume says so in its file (see :mod:`.synthetic`), so that a reader never takes the
package's own generated sequence for an acquired one; so does a result map (a heatmap, a
differentiation map, see :mod:`.maps`), so that a reader never takes it for a sequence."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..case import Geometry, Volume, to_source_image
from ..errors import RadiogenError
from . import _marks, _nifti
from . import maps as _maps
from . import synthetic as _syn
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


SyntheticLike = Union[None, bool, Mapping[str, Any]]
MapLike = Union[None, bool, Mapping[str, Any]]


def _explicit(given: Any) -> bool:
    """Whether the caller asked for the marking (True or a mapping; None and False do not)."""
    return given is True or isinstance(given, Mapping)


def _record(given: Any, parse: Callable[[Mapping[str, Any]], Dict[str, Any]],
            *inferred: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """What to record (None: nothing): ``given`` False -> None; a mapping -> it, completed
    from the ``inferred`` records (the Volume's meta, the file name); True or an inferred
    record -> the inferred records merged."""
    if given is False:
        return None
    if isinstance(given, Mapping):
        return _marks.merge(parse(given), *inferred)
    found = [r for r in inferred if r is not None]
    if given is True or found:
        return _marks.merge(*found)
    return None


def _synthetic_provenance(synthetic: SyntheticLike, vol: Optional[Volume],
                          p: Path) -> Optional[Dict[str, Any]]:
    """What to record about a synthetic volume written to ``p`` (None: not synthetic)."""
    return _record(synthetic, _syn.from_mapping,
                   _syn.from_volume_meta(vol.meta) if vol is not None and vol.synthetic else None,
                   _syn.from_name(p.name))


def _map_info(radiogen_map: MapLike, vol: Optional[Volume], p: Path) -> Optional[Dict[str, Any]]:
    """What to record about a result map written to ``p`` (None: not a map)."""
    if radiogen_map is True:
        raise TypeError("write_volume(radiogen_map=True): give the map as a mapping "
                        "({'kind': 'heatmap', ...}) or leave it to the file name")
    return _record(radiogen_map, _maps.from_mapping,
                   _maps.from_volume_meta(vol.meta) if vol is not None else None,
                   _maps.from_name(p.name))


def write_volume(array: Union[np.ndarray, Volume], geometry: Any = None,
                 path: Optional[PathLike] = None, *, labels: bool = False,
                 synthetic: SyntheticLike = None, radiogen_map: MapLike = None) -> Path:
    """Write a (z, y, x) array that lives on ``geometry`` (canonical LPS) to ``path``.

    The file is written on the **source** grid: same voxel order and affine as the file the
    geometry was read from (``geometry.source_orientation``), so it overlays the original scan
    in any viewer. NIfTI is written with nibabel: for a geometry read from a NIfTI file (see
    :func:`load_volume`) a result on the source grid gets the source header's qform and sform
    with their codes (so every viewer puts it where it puts the source), a result on another
    grid gets its affine in both with the source's codes; otherwise codes 1/1 (scanner). A
    sheared grid keeps its full affine in the sform, with a
    :class:`~napari_radiogen.core.io._nifti.GeometryWarning` (use .nrrd/.mha to keep it exact
    for ITK-based viewers too). ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``. Labels are
    written as uint8, images as float32. Returns the path written.

    ``array`` may be a :class:`Volume` (``write_volume(vol, path)``): its geometry is used, and
    a synthetic one (``vol.synthetic``) is written as such with the provenance in its ``meta``.

    Synthetic images say so in the file (NIfTI ``descrip``, NRRD/MetaImage key/value fields;
    see :mod:`.synthetic`): ``synthetic`` is a provenance mapping (``sequence``, ``sources``,
    ``model``), True, or False (never marked); by default (None) an image is marked when it is
    a synthetic ``Volume`` or when ``path`` carries the package's synthetic-output name
    ``<case>_<sequence>_synth.<ext>``. Labels are never marked.

    Result maps say so in the file too (see :mod:`.maps`), so that no reader takes them for a
    sequence: ``radiogen_map`` is a mapping (``kind`` ``"heatmap"`` or ``"differentiation
    map"``, and ``task``, ``method``, ``target``, ``sources``, ``model``) or False (never
    marked); by default (None) an image is marked when it is a ``Volume`` whose ``meta["kind"]``
    names a map (``core.synthesize.rank_sequences``'s maps) or when ``path`` carries the
    package's map names (``<case>_<task>_<method>``, ``<case>_<target>_diffmap``). A map is
    never marked synthetic (``rank_sequences``'s maps are ``synthetic=True`` Volumes).

    What the caller gives explicitly wins over what is inferred: with ``synthetic`` True or a
    mapping, the image is not taken for a map by its file name or its Volume's meta (a
    synthetic layer saved as ``P1_idh_gradcam.nii.gz`` is written synthetic), and with a
    ``radiogen_map`` mapping it is not taken for a synthetic sequence. Giving both explicitly
    is a :class:`WriteError`.
    """
    vol: Optional[Volume] = None
    if isinstance(array, Volume):
        vol = array
        if path is None and geometry is not None and not isinstance(geometry, Geometry):
            geometry, path = None, geometry                  # write_volume(vol, path)
        array = vol.array
        if geometry is None:
            geometry = vol.geometry
    if path is None:
        raise TypeError("write_volume() needs the path to write")
    if not isinstance(geometry, Geometry):
        raise TypeError(f"write_volume() needs a Geometry, got {type(geometry).__name__}")
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
    nifti = ext in (".nii", ".nii.gz")
    if not labels and _explicit(synthetic) and _explicit(radiogen_map):
        raise WriteError(f"{p}: a result map is not a synthetic sequence: write it as one or "
                         "the other, not both")
    # what the caller gives explicitly wins: a synthetic sequence is not taken for a map
    # because of its file name or meta (P1_idh_gradcam.nii.gz), nor a map for a synthetic one
    rmap = (None if labels or _explicit(synthetic) else _map_info(radiogen_map, vol, p))
    if rmap is not None:
        fields = _maps.header_fields(rmap, nifti=nifti)
    else:
        prov = None if labels else _synthetic_provenance(synthetic, vol, p)
        fields = _syn.header_fields(prov, nifti=nifti) if prov is not None else {}
    for k, v in fields.items():
        img.SetMetaData(k, v)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{p}: cannot create the folder ({e.strerror or e})") from None
    noise: list = []
    if nifti:
        # nibabel, not ITK: ITK writes codes 1/1 whatever the source had and drops a shear
        try:
            _nifti.write_nifti(img, p, geometry, _nifti.describe_fields(fields))
        except OSError as e:
            raise WriteError(f"{p}: cannot write ({e.strerror or e})") from None
        except Exception as e:  # nibabel: a header value it cannot store
            raise WriteError(f"{p}: cannot write ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return p
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
