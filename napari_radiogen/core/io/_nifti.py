"""NIfTI geometry that SimpleITK alone gets wrong: qform vs sform on load, the source's codes on
write.

* **Load.** A NIfTI file holds up to two transforms, the qform (rigid + voxel size) and the sform
  (any affine), each with a code saying which space it maps to (0 unset, 1 scanner, 2 aligned,
  3 Talairach, 4 MNI, 5 template). ITK's NIfTI reader takes the qform unless the sform code is 1
  (scanner) and falls back to the qform for a sheared sform, whereas nibabel, FSL and MRIcron
  take the sform whenever its code is set. Where the two disagree, :func:`choose_affine` picks
  the sform (the NIfTI standard's priority for aligned spaces and the convention of the
  nibabel/FSL tools) and says so in a warning the user sees.
* **Write.** ITK's NIfTI writer always writes codes 1/1 and cannot store a shear.
  :func:`write_nifti` writes with nibabel: a result on the source grid gets the source's qform
  and sform verbatim (so it opens where the source opens in every viewer, whatever rule the
  viewer follows); a result on another grid gets its affine in both, with the source's codes;
  a sheared grid keeps its full affine in the sform (with a :class:`GeometryWarning`).
"""
from __future__ import annotations

import warnings as _warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..case import Geometry

#: how far (mm, at the corners of the volume) two transforms may differ and still be the same
TOL_MM = 1e-3
#: NIfTI spatial units -> mm
UNIT_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
XFORM_NAMES = {0: "unset", 1: "scanner", 2: "aligned", 3: "Talairach", 4: "MNI", 5: "template"}
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryWarning(UserWarning):
    """A geometry that a file format or a viewer cannot represent exactly."""


Matrix = Tuple[Tuple[float, ...], ...]


@dataclass(frozen=True)
class NiftiInfo:
    """What a NIfTI source file says about its geometry: codes, qform, sform (RAS, mm, the
    file's own voxel order), shape (x, y, z), and which transform the volume was read with."""

    qform_code: int
    sform_code: int
    qform: Matrix
    sform: Matrix
    shape: Tuple[int, int, int]
    used: str = "sform"                 # "sform", "qform" or "itk" (no code set)

    @property
    def qform_matrix(self) -> np.ndarray:
        return np.asarray(self.qform, dtype=float)

    @property
    def sform_matrix(self) -> np.ndarray:
        return np.asarray(self.sform, dtype=float)


@dataclass(frozen=True, eq=False)
class SourceGeometry(Geometry):
    """A :class:`Geometry` that remembers the NIfTI header it was read from (``nifti``), so
    :func:`~napari_radiogen.core.io.writers.write_volume` can write results with the source's
    qform/sform codes. Equal to (and hashed as) the plain Geometry with the same grid."""

    nifti: Optional[NiftiInfo] = field(default=None, compare=False, repr=False)

    def _grid_key(self) -> Tuple[Any, ...]:
        return _grid_key(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Geometry):
            return _grid_key(self) == _grid_key(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_grid_key(self))


def _grid_key(g: Geometry) -> Tuple[Any, ...]:
    return tuple(getattr(g, f.name) for f in fields(Geometry))


def _as_tuple(m: np.ndarray) -> Matrix:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(m, dtype=float))


# -- affine helpers ----------------------------------------------------------------------------
def corner_points(shape_xyz: Tuple[int, ...]) -> np.ndarray:
    """Homogeneous (4, 8) voxel-corner indices of a grid (the outer faces of the edge voxels)."""
    nx, ny, nz = (int(s) for s in shape_xyz[:3])
    return np.array([[i, j, k, 1.0] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5)
                     for k in (-0.5, nz - 0.5)]).T


def corner_distance(a: np.ndarray, b: np.ndarray, shape_xyz: Tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the corners of a grid."""
    c = corner_points(shape_xyz)
    return float(np.linalg.norm((np.asarray(a) @ c - np.asarray(b) @ c)[:3], axis=0).max())


def shear(linear: np.ndarray) -> float:
    """How far the columns of a 3x3 linear map are from orthogonal (max |cos| between axes)."""
    m = np.asarray(linear, dtype=float)[:3, :3]
    n = m / np.linalg.norm(m, axis=0)
    g = n.T @ n
    return float(np.abs(g - np.eye(3)).max())


def is_sheared(linear: np.ndarray, tol: float = 1e-4) -> bool:
    return shear(linear) > tol


def obliquity_deg(direction: np.ndarray) -> float:
    """Angle (degrees) between a grid's axes and the nearest axis-aligned orientation (any
    permutation/flip of the world axes): 0 for an axis-aligned grid."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    u, _, vt = np.linalg.svd(d)                 # nearest rotation (removes any shear)
    r = u @ vt
    p = np.zeros((3, 3))
    used: List[int] = []
    for col in np.argsort(-np.abs(r).max(axis=0)):          # most decided axes first
        order = [i for i in np.argsort(-np.abs(r[:, col])) if i not in used]
        row = order[0]
        used.append(row)
        p[row, col] = 1.0 if r[row, col] >= 0 else -1.0
    c = (np.trace(p.T @ r) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def image_affine_ras(img: sitk.Image) -> np.ndarray:
    """The 4x4 RAS affine of a 3D SimpleITK image (voxel (i, j, k) in file order)."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(
        img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return _LPS @ a


def set_image_affine_ras(img: sitk.Image, affine_ras: np.ndarray) -> None:
    """Give a 3D SimpleITK image the geometry of a RAS affine (a shear stays in the
    direction matrix, which ITK allows)."""
    lps = _LPS @ np.asarray(affine_ras, dtype=float)
    lin = lps[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lin / spacing).ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])


# -- load ----------------------------------------------------------------------------------------
def header_info(hdr: Any) -> NiftiInfo:
    """The geometry a nibabel NIfTI header records, in mm (the header's units applied)."""
    unit = UNIT_MM.get(hdr.get_xyzt_units()[0], 1.0)
    scale = np.diag([unit, unit, unit, 1.0])
    q = scale @ hdr.get_qform(coded=False)
    s = scale @ hdr.get_sform(coded=False)
    shape = tuple(int(v) for v in (tuple(hdr.get_data_shape()) + (1, 1, 1))[:3])
    return NiftiInfo(qform_code=int(hdr["qform_code"]), sform_code=int(hdr["sform_code"]),
                     qform=_as_tuple(q), sform=_as_tuple(s), shape=shape)  # type: ignore[arg-type]


def _code(c: int) -> str:
    return f"code {c}, {XFORM_NAMES.get(c, 'unknown')}"


def choose_affine(info: NiftiInfo, itk_ras: np.ndarray
                  ) -> Tuple[Optional[np.ndarray], NiftiInfo, List[str]]:
    """The affine the volume should have (None: keep what ITK read), the info with ``used``
    set, and the warnings to show. The sform wins whenever its code is set (nibabel, FSL,
    MRIcron), then the qform; with neither set ITK's default orientation is kept, and said."""
    qc, sc = info.qform_code, info.sform_code
    q, s, shape = info.qform_matrix, info.sform_matrix, info.shape
    msgs: List[str] = []
    if sc > 0:
        target, used = s, "sform"
    elif qc > 0:
        target, used = q, "qform"
    else:
        target, used = None, "itk"
        msgs.append("the NIfTI header sets no orientation (qform and sform codes are 0): the "
                    "orientation is a guess (ITK's LPS default); viewers may disagree on it")
    if sc > 0 and qc > 0:
        d = corner_distance(q, s, shape)
        if d > TOL_MM:
            what = ("the sform is sheared (not a rigid grid), which the qform cannot hold"
                    if is_sheared(s[:3, :3]) else "they are different transforms")
            msgs.append(f"the NIfTI qform ({_code(qc)}) and sform ({_code(sc)}) disagree by up "
                        f"to {d:.3g} mm ({what}); using the sform, as nibabel, FSL and MRIcron "
                        "do (ITK-based viewers such as ITK-SNAP or 3D Slicer may use the qform "
                        "and show this file elsewhere); results written for it keep both")
    elif sc > 0 and is_sheared(s[:3, :3]):
        msgs.append("the NIfTI sform is sheared (not a rigid grid); it is used as is (ITK-based "
                    "viewers may not show it at the same place)")
    if target is not None and corner_distance(itk_ras, target, shape) <= TOL_MM:
        target = None                        # ITK read it the same way: nothing to change
    return target, _replace_used(info, used), msgs


def _replace_used(info: NiftiInfo, used: str) -> NiftiInfo:
    from dataclasses import replace
    return replace(info, used=used)


def zero_spacing(path: Path, ext: str) -> Optional[str]:
    """A message when the header's voxel size (pixdim[1..3]) has a zero, read without nibabel's
    automatic fix (which sets it to 1 mm and prints to stderr); else None."""
    import gzip

    import nibabel as nib

    try:
        opener = gzip.open if ext == ".nii.gz" else open
        with opener(path, "rb") as f:           # type: ignore[operator]
            raw = f.read(540)
        klass = nib.Nifti2Header if len(raw) >= 4 and int.from_bytes(
            raw[:4], "little") in (540, 540 << 24) else nib.Nifti1Header
        hdr = klass.from_fileobj(__import__("io").BytesIO(raw), check=False)
        ndim = int(hdr["dim"][0])
        pix = [float(v) for v in hdr["pixdim"][1:4]]
        if int(hdr["sform_code"]) > 0:      # the sform gives the voxel size: usable
            srow = np.array([hdr["srow_x"], hdr["srow_y"], hdr["srow_z"]], dtype=float)
            if np.all(np.isfinite(srow)) and np.all(np.linalg.norm(srow[:, :3], axis=0) > 0):
                return None
    except Exception:          # not readable here: the full header check says what is wrong
        return None
    if not 1 <= ndim <= 7:
        return None
    zero = [i + 1 for i, v in enumerate(pix[:max(3, ndim)]) if v == 0.0 or not np.isfinite(v)]
    if not zero:
        return None
    return (f"voxel size pixdim[{','.join(map(str, zero))}] is 0 in the NIfTI header (recorded "
            f"pixdim {', '.join(f'{v:g}' for v in pix)}): the voxel spacing is unknown, so "
            "positions and volumes (mL) would be wrong; fix the header (e.g. with fslhd/"
            "nibabel) before using this file")


def nibabel_image(img: Any) -> sitk.Image:
    """A SimpleITK image of a nibabel NIfTI image (NIfTI-2, which ITK does not read): the
    voxels (scaling applied) with the header's best affine in mm."""
    data = np.asanyarray(img.dataobj)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    nd = data.ndim
    if nd < 3:
        data = data.reshape(data.shape + (1,) * (3 - nd))
    if nd > 3 and all(s == 1 for s in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)
    if out.GetDimension() == 3:
        info = header_info(img.header)
        best = info.sform_matrix if info.sform_code > 0 else info.qform_matrix
        set_image_affine_ras(out, best)
    return out


# -- write ---------------------------------------------------------------------------------------
def write_nifti(img: sitk.Image, path: Path, geometry: Geometry, description: Optional[str]
                ) -> List[str]:
    """Write a SimpleITK image (already on the source grid, in the source's voxel order) as
    NIfTI with nibabel. Returns warnings (also issued as :class:`GeometryWarning`)."""
    import nibabel as nib

    arr = sitk.GetArrayFromImage(img).T                      # (x, y, z)
    a = image_affine_ras(img)
    info = geometry.nifti if isinstance(geometry, SourceGeometry) else None
    sheared = is_sheared(a[:3, :3])
    verbatim = False
    if info is not None and tuple(info.shape) == tuple(arr.shape[:3]):
        used = (info.sform_matrix if info.used == "sform" else info.qform_matrix
                if info.used == "qform" else None)
        verbatim = used is not None and corner_distance(a, used, arr.shape) <= TOL_MM
    if verbatim:
        assert info is not None
        q, s, qc, sc = info.qform_matrix, info.sform_matrix, info.qform_code, info.sform_code
    else:
        q = s = a
        if info is not None and (info.qform_code or info.sform_code):
            qc, sc = info.qform_code, info.sform_code
        else:
            qc, sc = 1, 1
        if sheared and sc == 0:
            sc = qc or 1                     # the sform is the only place for a shear
    out = nib.Nifti1Image(arr, None)
    hdr = out.header
    hdr.set_data_dtype(arr.dtype)
    out.set_qform(q, code=int(qc))
    out.set_sform(s, code=int(sc))
    hdr.set_xyzt_units("mm", "sec")
    if description:
        hdr["descrip"] = description.encode("ascii", "replace")[:79]
    notes: List[str] = []
    if sheared and not verbatim:
        err = corner_distance(hdr.get_qform(), a, arr.shape)
        if err > TOL_MM:
            notes.append(f"{path}: the grid is sheared (not rigid), which a NIfTI qform cannot "
                         f"hold: the full affine is in the sform (nibabel, FSL, MRIcron read it), "
                         f"viewers that read the qform (ITK-SNAP, 3D Slicer) place it up to "
                         f"{err:.2g} mm off; write .nrrd or .mha to keep it exact everywhere")
    nib.save(out, str(path))
    for n in notes:
        _warnings.warn(n, GeometryWarning, stacklevel=3)
    return notes


def describe_fields(header_fields: Dict[str, str]) -> Optional[str]:
    """The NIfTI ``descrip`` text among the header fields the writers set."""
    return header_fields.get("ITK_FileNotes") or header_fields.get("descrip")
