"""The case model: sequences (array + geometry), optional labels, clinical fields.

Conventions (used everywhere in the project):

* Arrays are numpy in **(z, y, x)** order, as SimpleITK's ``GetArrayFromImage`` returns them.
* :class:`Geometry` holds the ITK physical geometry in **(x, y, z)** order: ``spacing`` (mm),
  ``origin`` (mm, LPS world), ``direction`` (row-major 3x3). It converts to and from
  SimpleITK images and NIfTI (RAS) affines exactly.
* On load, each image is reoriented to the canonical **LPS** voxel order (direction close to the
  identity), so napari can show it with ``scale``/``translate`` alone (axial slices, radiological
  convention). The orientation code of the source file is kept in ``Geometry.source_orientation``
  so results can be written back on the exact source grid (see :func:`to_source_image`).
* Sequence names are canonical: ``t1``, ``t1ce``, ``t2``, ``flair``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import GeometryError

SEQUENCES: Tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
CANONICAL_ORIENTATION = "LPS"

#: BraTS label values and names (BraTS 2023 uses 3 for enhancing tumour; readers map 3 -> 4).
LABEL_NAMES: Dict[int, str] = {0: "background", 1: "necrotic/non-enhancing core", 2: "oedema",
                              4: "enhancing tumour"}
#: Regions as sets of labels.
REGIONS: Dict[str, Tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
REGION_NAMES: Dict[str, str] = {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}


@dataclass(frozen=True)
class Geometry:
    """Physical geometry of a 3D grid, ITK conventions, (x, y, z) order."""

    size: Tuple[int, int, int]                     # (nx, ny, nz)
    spacing: Tuple[float, float, float]            # mm
    origin: Tuple[float, float, float]             # mm, LPS
    direction: Tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)  # row-major 3x3
    source_orientation: Optional[str] = None       # e.g. "RAI"; None = as is
    nominal: bool = False                          # True when spacing is not recorded in source

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_image(cls, img: sitk.Image, **kw: Any) -> "Geometry":
        return cls(size=tuple(int(s) for s in img.GetSize()),
                   spacing=tuple(float(s) for s in img.GetSpacing()),
                   origin=tuple(float(o) for o in img.GetOrigin()),
                   direction=tuple(float(d) for d in img.GetDirection()), **kw)

    @classmethod
    def from_affine(cls, affine_ras: np.ndarray, shape_xyz: Tuple[int, int, int],
                    **kw: Any) -> "Geometry":
        """From a NIfTI-style RAS affine (voxel (i,j,k) in x,y,z file order)."""
        a = np.asarray(affine_ras, dtype=float)
        lps = np.diag([-1.0, -1.0, 1.0]) @ a[:3, :4]
        m = lps[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        direction = m / spacing
        return cls(size=tuple(int(s) for s in shape_xyz), spacing=tuple(spacing.tolist()),
                   origin=tuple(lps[:3, 3].tolist()), direction=tuple(direction.ravel().tolist()),
                   **kw)

    # -- views --------------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int, int]:
        """numpy (z, y, x) shape."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def affine_lps(self) -> np.ndarray:
        """4x4 voxel (x,y,z index) -> LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a

    def affine_ras(self) -> np.ndarray:
        """4x4 voxel (x,y,z index) -> RAS mm, as NIfTI stores it."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def napari_affine(self) -> np.ndarray:
        """4x4 affine for napari in (z, y, x) array order -> (z, y, x) LPS world order."""
        perm = np.zeros((4, 4))
        perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0   # swaps x<->z, keeps homog.
        return perm @ self.affine_lps() @ perm

    @property
    def napari_scale(self) -> Tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def napari_translate(self) -> Tuple[float, float, float]:
        return (self.origin[2], self.origin[1], self.origin[0])

    @property
    def source_origin(self) -> Tuple[float, float, float]:
        """The origin of the source file's own grid (LPS mm, as SimpleITK/ITK report it for
        the file: the centre of its first voxel), where :attr:`origin` is that of this grid,
        re-oriented to LPS voxel order. The two differ when the file's axes run otherwise (a
        file stored LAS starts at the other end of y): the file's first voxel is the corner of
        this grid reached by going, along each axis the file runs the other way (R, A or I),
        to its last voxel."""
        code = self.source_orientation
        if not code or code == CANONICAL_ORIENTATION:
            return tuple(float(o) for o in self.origin)
        idx = [0.0, 0.0, 0.0, 1.0]
        for letter in code.upper():
            axis = "LPS".find(letter) if letter in "LPS" else "RAI".find(letter)
            if letter in "RAI":
                idx[axis] = float(self.size[axis] - 1)
        return tuple(float(v) for v in (self.affine_lps() @ np.array(idx))[:3])

    def is_axis_aligned(self, tol: float = 1e-3) -> bool:
        return bool(np.allclose(self.direction_matrix, np.eye(3), atol=tol))

    def corners_lps(self) -> np.ndarray:
        """The 8 corners of the grid (voxel centres) in LPS mm, shape (8, 3)."""
        nx, ny, nz = (s - 1 for s in self.size)
        idx = np.array([[i, j, k, 1.0] for i in (0, nx) for j in (0, ny) for k in (0, nz)])
        return (self.affine_lps() @ idx.T).T[:, :3]

    def same_grid(self, other: "Geometry", tol: float = 1e-4) -> bool:
        return (tuple(self.size) == tuple(other.size)
                and np.allclose(self.spacing, other.spacing, atol=tol)
                and np.allclose(self.origin, other.origin, atol=max(tol, 1e-3))
                and np.allclose(self.direction, other.direction, atol=tol))

    # -- conversion ---------------------------------------------------------------------------
    def to_image(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array as a SimpleITK image with this geometry."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise GeometryError(f"array of shape {array.shape} does not fit a grid of shape "
                                f"{self.shape} (z, y, x)")
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def with_(self, **kw: Any) -> "Geometry":
        return replace(self, **kw)


def canonicalize(img: sitk.Image) -> Tuple[sitk.Image, str]:
    """Reorient ``img`` to LPS voxel order; return it and the source orientation code."""
    code = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(img.GetDirection())
    if code == CANONICAL_ORIENTATION:
        return img, code
    return sitk.DICOMOrient(img, CANONICAL_ORIENTATION), code


def to_source_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Wrap a (z, y, x) array on ``geometry`` and reorient it back to the source file's grid."""
    img = geometry.to_image(array)
    if geometry.source_orientation and geometry.source_orientation != CANONICAL_ORIENTATION:
        img = sitk.DICOMOrient(img, geometry.source_orientation)
    return img


@dataclass
class Volume:
    """One 3D image: (z, y, x) array + geometry + provenance."""

    array: np.ndarray
    geometry: Geometry
    path: Optional[str] = None
    synthetic: bool = False           # True for sequences generated by a model
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError(f"a volume must be 3D, got an array of shape {self.array.shape}")
        if tuple(self.array.shape) != tuple(self.geometry.shape):
            raise GeometryError(f"array shape {self.array.shape} does not match geometry "
                                f"shape {self.geometry.shape}")

    def to_image(self) -> sitk.Image:
        return self.geometry.to_image(self.array)

    @classmethod
    def from_image(cls, img: sitk.Image, *, path: Optional[str] = None,
                   source_orientation: Optional[str] = None, dtype: Any = None,
                   **kw: Any) -> "Volume":
        arr = sitk.GetArrayFromImage(img)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        geom = Geometry.from_image(img, source_orientation=source_orientation)
        return cls(array=arr, geometry=geom, path=path, **kw)


@dataclass
class Case:
    """A patient's study: sequences on (possibly different) grids, optional labels."""

    case_id: str
    sequences: Dict[str, Volume]
    labels: Optional[Volume] = None
    clinical: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None            # path the case was read from
    kind: str = "volume"                    # "volume" (3D scans) or "slices" (2D slice pack)
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def present(self) -> Tuple[str, ...]:
        return tuple(s for s in SEQUENCES if s in self.sequences)

    @property
    def missing(self) -> Tuple[str, ...]:
        return tuple(s for s in SEQUENCES if s not in self.sequences)

    @property
    def reference(self) -> str:
        """The reference sequence whose grid results are written on (FLAIR > T1ce > T2 > T1,
        unless ``meta['reference']`` says otherwise)."""
        ref = self.meta.get("reference")
        if ref in self.sequences:
            return ref
        for s in ("flair", "t1ce", "t2", "t1"):
            if s in self.sequences:
                return s
        raise GeometryError(f"case {self.case_id} has no sequences")

    @property
    def geometry(self) -> Geometry:
        return self.sequences[self.reference].geometry

    def on_one_grid(self) -> bool:
        g = self.geometry
        ok = all(v.geometry.same_grid(g) for v in self.sequences.values())
        return ok and (self.labels is None or self.labels.geometry.same_grid(g))

    def with_sequence(self, name: str, vol: Volume) -> "Case":
        seqs = dict(self.sequences)
        seqs[name] = vol
        return replace(self, sequences=seqs)

    def synthetic_inputs(self) -> Tuple[str, ...]:
        return tuple(s for s, v in self.sequences.items() if v.synthetic)

    def describe(self) -> Dict[str, Any]:
        """A JSON-able description (used by ``radiogen info``)."""
        def vol(v: Volume) -> Dict[str, Any]:
            g = v.geometry
            return {"file": v.path, "shape_zyx": list(v.array.shape),
                    "spacing_xyz_mm": [round(s, 4) for s in g.spacing],
                    # the file's own origin and orientation (LPS mm, as SimpleITK reads the
                    # file), and the origin of the grid as loaded (re-oriented to LPS order)
                    "origin_xyz_mm": [round(o, 3) for o in g.source_origin],
                    "orientation": g.source_orientation or CANONICAL_ORIENTATION,
                    "reoriented_origin_xyz_mm": [round(o, 3) for o in g.origin],
                    "dtype": str(v.array.dtype), "nominal_spacing": g.nominal,
                    "synthetic": v.synthetic,
                    # a generated sequence's provenance (sources, model, how it was recognised)
                    **({"synthetic_provenance": {
                        k: v.meta[k] for k in ("sources", "model", "synthetic_marked_by")
                        if v.meta.get(k)}} if v.synthetic else {})}
        return {"case_id": self.case_id, "source": self.source, "kind": self.kind,
                "sequences": {s: vol(self.sequences[s]) for s in self.present},
                "missing": list(self.missing),
                "labels": vol(self.labels) if self.labels is not None else None,
                "on_one_grid": self.on_one_grid(),
                "clinical": {k: v for k, v in self.clinical.items()
                             if isinstance(v, (str, int, float, bool)) or v is None},
                **({"meta": {k: v for k, v in self.meta.items()
                             if isinstance(v, (str, int, float, bool, list))}}
                   if self.meta else {})}
