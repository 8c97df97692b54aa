"""Cases <-> napari layer data, in one place.

Every layer made from a case carries ``metadata={"radiogen": {...}}`` with ``case_id``,
``geometry`` (:class:`~napari_radiogen.core.case.Geometry`, canonical LPS), ``sequence``
(``t1 t1ce t2 flair``, ``"labels"`` or a result name), ``source`` (path read from) and
``synthetic`` (plus ``case_source``, the folder/file the case was read from, and
``case_kind``; labels layers also ``label_names``). World coordinates are physical LPS
millimetres in (z, y, x) order: ``scale`` is the voxel spacing, ``translate`` the origin, and
``rotate`` the direction cosines when the grid is oblique (scanner-native scans).

Oblique grids and napari's 2D view: napari (0.9) draws a layer in 2D without the out-of-plane
part of its rotation, so an oblique grid is drawn up to tens of mm from its true position, and
sequences on *different* oblique grids do not overlay in 2D (the 3D view is exact). So
:func:`case_to_layer_data` by default (``display_grid="auto"``) shows the sequences of such a
case resampled onto the reference sequence's grid (:func:`~napari_radiogen.core.prepare.
resample_volume`, linear; labels nearest), which is what the models see too, and says so in a
napari warning; ``display_grid="native"`` (or the environment variable
``NAPARI_RADIOGEN_DISPLAY_GRID=native``) keeps every sequence on its own grid (exact in 3D,
misaligned in 2D), ``"reference"`` resamples whenever the grids differ. A case on one grid, or
on axis-aligned grids, is shown as read; an oblique grid is still said (its 2D position is off).

This module needs no Qt and no viewer: it builds plain ``(data, kwargs, layer_type)`` tuples
(napari's *LayerData*) and reads back from layers or their ``as_layer_data_tuple()`` meta.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.case import LABEL_NAMES, SEQUENCES, Case, Geometry, Volume
from ..core.errors import GeometryError

LayerData = Tuple[Any, Dict[str, Any], str]

#: BraTS-viewer style colours (ITK-SNAP defaults used by the BraTS viewers): RGBA 0..1
LABEL_COLORS: Dict[int, Tuple[float, float, float, float]] = {
    1: (0.90, 0.10, 0.10, 1.0),   # necrotic / non-enhancing core: red
    2: (0.10, 0.80, 0.20, 1.0),   # oedema: green
    3: (0.20, 0.40, 1.00, 1.0),   # (unused in BraTS 2021; blue as in ITK-SNAP)
    4: (1.00, 0.85, 0.00, 1.0),   # enhancing tumour: yellow
}
#: label names of the 2D TCGA-LGG slice packs (their masks are not BraTS labels)
PACK_LABEL_NAMES: Dict[int, str] = {0: "background", 1: "FLAIR abnormality"}
_PACK_COLORS = {1: (1.0, 0.55, 0.0, 1.0)}       # orange
_UNKNOWN_COLOR = (1.0, 0.0, 1.0, 1.0)           # magenta: any label without a name
_PERM = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)   # x,y,z <-> z,y,x


# -- geometry <-> napari transforms --------------------------------------------------------------
def geometry_kwargs(geometry: Geometry) -> Dict[str, Any]:
    """``scale``/``translate`` (and ``rotate`` for oblique grids) placing a (z, y, x) array at
    its physical LPS position in napari's (z, y, x) world."""
    kw: Dict[str, Any] = {"scale": tuple(float(s) for s in geometry.napari_scale),
                          "translate": tuple(float(t) for t in geometry.napari_translate)}
    if not geometry.is_axis_aligned(tol=1e-6):
        rot = _PERM @ geometry.direction_matrix @ _PERM
        if np.linalg.det(rot) > 0:
            kw["rotate"] = rot
        else:   # a reflection cannot be a napari rotation: use the full affine instead
            kw = {"affine": geometry.napari_affine()}
    return kw


def _zyx_matrix(meta: Mapping[str, Any], ndim: int) -> np.ndarray:
    """The 4x4 data(z, y, x) -> world(z, y, x) matrix of layer kwargs (last 3 dims)."""
    from_last3 = slice(ndim - 3, ndim)

    def vec(key: str, default: float) -> np.ndarray:
        v = meta.get(key)
        if v is None:
            return np.full(3, default)
        return np.asarray(v, dtype=float).ravel()[-3:]

    scale, translate = vec("scale", 1.0), vec("translate", 0.0)
    rot = np.eye(3)
    r = meta.get("rotate")
    if r is not None:
        r = np.asarray(r, dtype=float)
        if r.ndim == 2:
            rot = r[from_last3, from_last3] if r.shape[0] == ndim else r[-3:, -3:]
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(scale)
    m[:3, 3] = translate
    aff = meta.get("affine")
    if aff is not None:
        a = np.asarray(getattr(aff, "affine_matrix", aff), dtype=float)
        a4 = np.eye(4)
        a4[:3, :3] = a[-4:-1, -4:-1]
        a4[:3, 3] = a[-4:-1, -1]
        m = a4 @ m
    return m


def geometry_from_transform(meta: Mapping[str, Any], shape_zyx: Sequence[int]) -> Geometry:
    """Geometry from a layer's ``scale``/``translate``/``rotate``/``affine`` (as in
    ``layer.as_layer_data_tuple()[1]``) for an array of shape ``shape_zyx``."""
    if len(shape_zyx) != 3:
        raise GeometryError(f"a volume must be 3D (z, y, x), got shape {tuple(shape_zyx)}")
    m = _zyx_matrix(meta, len(shape_zyx))
    lin = _PERM @ m[:3, :3] @ _PERM            # x,y,z index -> x,y,z LPS
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise GeometryError("the layer's transform has a zero scale")
    direction = lin / spacing
    origin = _PERM @ m[:3, 3]
    nz, ny, nx = (int(s) for s in shape_zyx)
    return Geometry(size=(nx, ny, nz), spacing=tuple(spacing.tolist()),
                    origin=tuple(origin.tolist()), direction=tuple(direction.ravel().tolist()))


def _as_geometry(g: Any) -> Optional[Geometry]:
    if isinstance(g, Geometry):
        return g
    if isinstance(g, Mapping):            # e.g. dataclasses.asdict(...) after a round trip
        names = {f.name for f in fields(Geometry)}
        kw = {k: (tuple(v) if isinstance(v, (list, np.ndarray)) else v)
              for k, v in g.items() if k in names}
        try:
            return Geometry(**kw)
        except TypeError:
            return None
    return None


def radiogen_meta(layer_or_meta: Any) -> Dict[str, Any]:
    """The ``radiogen`` metadata of a layer, or of a layer-data ``meta`` dict ({} if none)."""
    if isinstance(layer_or_meta, Mapping):
        md = layer_or_meta.get("metadata") or {}
    else:
        md = getattr(layer_or_meta, "metadata", None) or {}
    rg = md.get("radiogen") if isinstance(md, Mapping) else None
    return dict(rg) if isinstance(rg, Mapping) else {}


def geometry_from_meta(meta: Mapping[str, Any], shape_zyx: Sequence[int]) -> Geometry:
    """The geometry of layer data: ``meta["metadata"]["radiogen"]["geometry"]`` when it fits
    ``shape_zyx``, else the layer's scale/translate/rotate/affine."""
    g = _as_geometry(radiogen_meta(meta).get("geometry"))
    if g is not None and tuple(g.shape) == tuple(int(s) for s in shape_zyx):
        return g
    return geometry_from_transform(meta, shape_zyx)


def layer_geometry(layer: Any) -> Geometry:
    """Geometry of a napari layer (radiogen metadata first, then its transform)."""
    g = _as_geometry(radiogen_meta(layer).get("geometry"))
    shape = tuple(np.shape(layer.data))
    if g is not None and tuple(g.shape) == shape:
        return g
    meta = {"scale": layer.scale, "translate": layer.translate,
            "rotate": getattr(layer, "rotate", None),
            "affine": getattr(layer, "affine", None)}
    return geometry_from_transform(meta, shape)


# -- display defaults ------------------------------------------------------------------------------
def contrast_limits(array: np.ndarray, lo: float = 0.5, hi: float = 99.5,
                    max_samples: int = 2_000_000) -> Tuple[float, float]:
    """Percentile contrast limits over the non-zero voxels (the brain, for skull-stripped
    scans), on a strided subsample for speed."""
    a = np.asarray(array)
    flat = a.reshape(-1)
    step = max(1, flat.size // max_samples)
    s = flat[::step]
    s = s[np.isfinite(s)] if s.dtype.kind == "f" else s
    nz = s[s != 0]
    if nz.size >= 100:
        s = nz
    if s.size == 0:
        return (0.0, 1.0)
    vmin, vmax = (float(v) for v in np.percentile(s, [lo, hi]))
    if not vmax > vmin:
        vmin, vmax = float(s.min()), float(s.max())
        if not vmax > vmin:
            vmax = vmin + 1.0
    return (vmin, vmax)


def label_values(array: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a label array; a histogram (``bincount``) for the usual
    small non-negative integer labels, which is several times faster than ``np.unique``."""
    a = np.asarray(array)
    if a.size and a.dtype.kind in "biu":
        flat = a.reshape(-1)
        if a.dtype.kind == "b":
            flat = flat.view(np.uint8)
        elif a.dtype.kind == "u" and a.dtype.itemsize >= 8:
            flat = flat.astype(np.int64)      # bincount does not take uint64
        lo, hi = int(flat.min()), int(flat.max())
        if lo >= 0 and hi < 65536:
            return np.flatnonzero(np.bincount(flat, minlength=hi + 1)).astype(a.dtype)
    return np.unique(a)


def label_names_for(case: Optional[Case] = None, kind: str = "volume") -> Dict[int, str]:
    if case is not None:
        names = case.meta.get("label_names") if isinstance(case.meta, Mapping) else None
        if isinstance(names, Mapping) and names:
            return {int(k): str(v) for k, v in names.items()}
        kind = case.kind
    return dict(PACK_LABEL_NAMES if kind == "slices" else LABEL_NAMES)


def label_colormap(label_names: Mapping[int, str]) -> Dict[Any, Tuple[float, ...]]:
    """A direct label colormap (dict) for napari: BraTS colours, background transparent,
    unnamed labels magenta."""
    pack_like = set(label_names) <= {0, 1} and label_names.get(1) == PACK_LABEL_NAMES[1]
    colors = _PACK_COLORS if pack_like else LABEL_COLORS
    cmap: Dict[Any, Tuple[float, ...]] = {None: _UNKNOWN_COLOR, 0: (0.0, 0.0, 0.0, 0.0)}
    for v in label_names:
        if v != 0:
            cmap[int(v)] = colors.get(int(v), _UNKNOWN_COLOR)
    return cmap


def label_features(label_names: Mapping[int, str]) -> Dict[str, List[Any]]:
    """napari ``features`` table for a labels layer: one row per label value (``index``)."""
    items = sorted((int(k), str(v)) for k, v in label_names.items())
    if not items or items[0][0] != 0:
        items.insert(0, (0, "background"))
    return {"index": [k for k, _ in items], "name": [v for _, v in items]}


# -- layer data -----------------------------------------------------------------------------------
def _metadata(case_id: str, geometry: Geometry, sequence: str, source: Optional[str],
              synthetic: bool, **extra: Any) -> Dict[str, Any]:
    rg = {"case_id": case_id, "geometry": geometry, "sequence": sequence,
          "source": None if source is None else str(source), "synthetic": bool(synthetic)}
    rg.update(extra)
    return {"radiogen": rg}


def image_layer_data(vol: Volume, *, case_id: str, sequence: str, source: Optional[str] = None,
                     name: Optional[str] = None, visible: bool = True, colormap: str = "gray",
                     blending: str = "additive", opacity: float = 1.0,
                     contrast: Optional[Tuple[float, float]] = None,
                     **extra_meta: Any) -> LayerData:
    """One image layer for ``vol`` at its physical position."""
    kw: Dict[str, Any] = {
        "name": name or f"{case_id} {sequence}",
        **geometry_kwargs(vol.geometry),
        "contrast_limits": contrast or contrast_limits(vol.array),
        "colormap": colormap,
        "blending": blending,
        "opacity": float(opacity),
        "visible": bool(visible),
        "metadata": _metadata(case_id, vol.geometry, sequence, source or vol.path,
                              vol.synthetic, **extra_meta),
    }
    return (vol.array, kw, "image")


def labels_layer_data(vol: Volume, *, case_id: str, source: Optional[str] = None,
                      name: Optional[str] = None,
                      label_names: Optional[Mapping[int, str]] = None,
                      sequence: str = "labels", opacity: float = 0.6, visible: bool = True,
                      compact: bool = False, **extra_meta: Any) -> LayerData:
    """A labels layer with named classes (``features``) and BraTS colours.

    ``compact``: store integer labels whose values fit as ``uint8`` (what napari draws
    fastest; result layers use it, they are built in the worker thread)."""
    names = dict(label_names) if label_names is not None else dict(LABEL_NAMES)
    values = label_values(vol.array)
    for v in values:
        if int(v) not in names:
            names[int(v)] = f"label {int(v)}"
    data = vol.array
    if data.dtype.kind not in "iu" or (compact and data.dtype != np.uint8):
        fits = data.size == 0 or (values.size and values.min() >= 0 and values.max() <= 255)
        if fits or data.dtype.kind not in "iu":
            data = data.astype(np.uint8 if fits else np.int32)
    kw: Dict[str, Any] = {
        "name": name or f"{case_id} segmentation",
        **geometry_kwargs(vol.geometry),
        "features": label_features(names),
        "colormap": label_colormap(names),
        "opacity": float(opacity),
        "blending": "translucent",
        "visible": bool(visible),
        "metadata": _metadata(case_id, vol.geometry, sequence, source or vol.path,
                              vol.synthetic, label_names={int(k): v for k, v in names.items()},
                              **extra_meta),
    }
    return (data, kw, "labels")


#: tilt (degrees from the nearest axis-aligned orientation) above which a grid counts as oblique
OBLIQUE_DEG = 1.0
DISPLAY_GRID_ENV = "NAPARI_RADIOGEN_DISPLAY_GRID"


def obliquity(geometry: Geometry) -> float:
    """Degrees between the grid's axes and the nearest axis-aligned orientation."""
    from ..core.io._nifti import obliquity_deg
    return obliquity_deg(geometry.direction_matrix)


def offset_2d(geometry: Geometry) -> float:
    """How far (mm) napari's 2D view draws the corners of the grid from their true position
    (it drops the out-of-plane part of the rotation): 0 for an axis-aligned grid."""
    if obliquity(geometry) < 1e-6:
        return 0.0
    a = geometry.napari_affine()
    nz, ny, nx = geometry.shape
    p = np.array([[k, j, i] for k in (0, nz - 1) for j in (0, ny - 1) for i in (0, nx - 1)],
                 dtype=float).T
    true = a[:3, :3] @ p + a[:3, 3:4]
    inv = np.linalg.inv(a)
    if abs(inv[0, 0]) < 1e-9:
        return float("inf")
    shown_z = (p[0] - inv[0, 3]) / inv[0, 0]
    shown_yx = a[1:3, 1:3] @ p[1:] + a[1:3, 3:4]
    err = np.sqrt((true[0] - shown_z) ** 2 + ((true[1:] - shown_yx) ** 2).sum(0))
    return float(err.max())


def notify(message: str) -> None:
    """Tell the napari user (a warning notification; a Python warning without napari)."""
    try:
        from napari.utils.notifications import show_warning
    except Exception:  # pragma: no cover - napari not installed
        import warnings
        warnings.warn(message, UserWarning, stacklevel=2)
        return
    show_warning(message)


def display_case(case: Case, display_grid: Optional[str] = None) -> Tuple[Case, List[str]]:
    """The case as it is best shown in napari, and what the user must be told.

    ``display_grid``: ``"auto"`` (default; from :data:`DISPLAY_GRID_ENV` when None) resamples
    the sequences (and labels) onto the reference grid when the case's grids differ and one of
    them is oblique (napari's 2D view cannot overlay them), ``"reference"`` whenever the grids
    differ, ``"native"`` never. Resampled volumes carry ``meta["display_resampled_onto"]``."""
    import os

    mode = (display_grid or os.environ.get(DISPLAY_GRID_ENV) or "auto").strip().lower()
    if mode not in ("auto", "native", "reference"):
        mode = "auto"
    if not case.sequences or case.kind != "volume":
        return case, []
    ref = case.reference
    vols = dict(case.sequences)
    if case.labels is not None:
        vols["labels"] = case.labels
    tilt = {s: obliquity(v.geometry) for s, v in vols.items()}
    oblique = {s: t for s, t in tilt.items() if t > OBLIQUE_DEG}
    differ = not case.on_one_grid()
    msgs: List[str] = []
    resample = differ and (mode == "reference" or (mode == "auto" and bool(oblique)))
    if resample:
        from dataclasses import replace as _replace

        from ..core.prepare import resample_volume
        g = case.sequences[ref].geometry
        try:
            seqs = {}
            for s, v in case.sequences.items():
                seqs[s] = resample_volume(v, g, name=f"sequence {s}")
            lab = (resample_volume(case.labels, g, labels=True, name="the label image")
                   if case.labels is not None else None)
        except GeometryError as e:
            msgs.append(f"{case.case_id}: could not put the sequences on the {ref} grid for "
                        f"display ({e}); they are shown on their own grids")
            resample = False
        else:
            moved = [s for s in seqs if seqs[s] is not case.sequences[s]]
            if lab is not None and lab is not case.labels:
                moved.append("labels")
            for s in moved:
                v = seqs[s] if s != "labels" else lab
                v.meta = dict(v.meta)
                v.meta["display_resampled_onto"] = ref
                # the volume as read: what the models get and what Save writes (see
                # case_from_layers and the writer), the display copy is for the eye only
                v.meta["display_source"] = case.sequences[s] if s != "labels" else case.labels
            case = _replace(case, sequences=seqs, labels=lab)
            why = (f"the sequences are on different grids, oblique ones among them "
                   f"({', '.join(f'{s} {t:.1f} deg' for s, t in sorted(oblique.items()))}), "
                   "which napari's 2D view cannot overlay" if oblique
                   else "the sequences are on different grids")
            msgs.append(f"{case.case_id}: {why}: {', '.join(moved)} shown resampled (linear; "
                        f"labels nearest) onto the {ref} grid, so all layers overlay; the "
                        f"files are unchanged. To see each sequence on its own grid set "
                        f"{DISPLAY_GRID_ENV}=native (then use the 3D view: in 2D they are "
                        "drawn apart)")
    if not resample and differ and oblique:
        msgs.append(f"{case.case_id}: the sequences are on different oblique grids "
                    f"({', '.join(f'{s} {t:.1f} deg' for s, t in sorted(oblique.items()))}); "
                    "napari's 2D view draws a grid without its tilt, so in 2D they are drawn "
                    f"up to {max(offset_2d(vols[s].geometry) for s in oblique):.0f} mm from "
                    "their true positions and do not overlay: use the 3D view, or open the "
                    f"case with {DISPLAY_GRID_ENV}=auto to see them resampled onto the {ref} "
                    "grid")
    ref_tilt = obliquity(case.sequences[ref].geometry)
    if ref_tilt > OBLIQUE_DEG and (resample or not differ):
        off = offset_2d(case.sequences[ref].geometry)
        msgs.append(f"{case.case_id}: the {ref} grid is oblique ({ref_tilt:.1f} deg from the "
                    f"scanner axes); napari's 2D view draws its slices without the tilt, up to "
                    f"{off:.0f} mm from their true scanner position (the layers still overlay "
                    "each other; the 3D view and written files are exact)")
    return case, msgs


def case_to_layer_data(case: Case, *, source: Optional[str] = None,
                       only_reference_visible: bool = True,
                       display_grid: Optional[str] = None,
                       notify_user: bool = True) -> List[LayerData]:
    """All sequences of ``case`` (canonical order) as image layers, then its labels.

    Each sequence is placed physically on its own grid, except where napari's 2D view could
    not overlay them (grids that differ, oblique ones among them): then they are shown
    resampled onto the reference grid (see :func:`display_case`; ``display_grid``), and a
    napari warning says so (``notify_user``). Only the reference sequence (FLAIR > T1ce > T2 >
    T1) is visible at first, the others are one click away.
    """
    case, msgs = display_case(case, display_grid)
    if notify_user:
        for m in msgs:
            notify(m)
    src = source if source is not None else case.source
    ref = case.reference if case.sequences else None
    order = [s for s in SEQUENCES if s in case.sequences]
    order += [s for s in case.sequences if s not in order]
    out: List[LayerData] = []
    pids = {"patient_ids": list(case.meta["patient_ids"])} \
        if (case.meta or {}).get("patient_ids") else {}
    for seq in order:
        vol = case.sequences[seq]
        extra = {**_display_meta(vol), **pids}
        out.append(_with_digest(image_layer_data(
            vol, case_id=case.case_id, sequence=seq, source=vol.path or src,
            visible=(seq == ref) or not only_reference_visible, case_source=src,
            case_kind=case.kind, **extra)))
    if case.labels is not None:
        extra = {**_display_meta(case.labels), **pids}
        out.append(_with_digest(labels_layer_data(
            case.labels, case_id=case.case_id, source=case.labels.path or src,
            label_names=label_names_for(case), case_source=src, case_kind=case.kind,
            **extra)))
    return out


def registered_layer_data(case: Case, moved: Sequence[str]) -> List[LayerData]:
    """Image layers of the sequences of ``case`` that co-registration moved (``moved``, see
    :func:`core.register.moved_sequences`), named ``"<case> <sequence> (registered)"``: each
    placed by its moved header, shown as the reader shows a case (resampled onto the reference
    grid where napari's 2D view could not overlay it; :func:`display_case`). Their metadata
    say ``registered_onto``; :func:`case_layers` takes such a layer for its sequence."""
    if not moved or case.kind != "volume":
        return []
    ref = case.sequences[moved[0]].meta.get("registered_onto") or case.reference
    sub = Case(case.case_id, {ref: case.sequences[ref],
                              **{s: case.sequences[s] for s in moved}},
               source=case.source, kind=case.kind, meta={**case.meta, "reference": ref})
    out: List[LayerData] = []
    for data, kw, kind in case_to_layer_data(sub, only_reference_visible=False,
                                             notify_user=False):
        rg = kw["metadata"]["radiogen"]
        if rg["sequence"] in moved and rg["sequence"] != ref:
            kw["name"] = f"{kw['name']} (registered)"
            rg["registered_onto"] = ref
            out.append((data, kw, kind))
    return out


def _display_meta(vol: Volume) -> Dict[str, Any]:
    """Radiogen metadata of a layer shown resampled (see :func:`display_case`): the grid it is
    shown on, the volume as read (``display_source``) and a digest of the data shown, so an
    edit of the layer can be told from the display copy (:func:`layer_volume`)."""
    if not vol.meta.get("display_resampled_onto"):
        return {}
    return {"display_resampled_onto": vol.meta["display_resampled_onto"],
            "display_source": vol.meta.get("display_source")}


def _with_digest(ld: LayerData) -> LayerData:
    """A display copy's layer data with the digest of the array the layer gets."""
    data, kw, kind = ld
    rg = kw["metadata"]["radiogen"]
    if rg.get("display_resampled_onto"):
        rg["display_digest"] = data_digest(data)
    return ld


def data_digest(array: Any) -> str:
    """A digest of an array's values (to tell whether a layer's data were edited)."""
    import hashlib
    a = np.ascontiguousarray(np.asarray(array))
    return hashlib.blake2b(a.view(np.uint8), digest_size=16).hexdigest() + str(a.shape)


def unedited_display_source(meta: Any, data: Any) -> Optional[Volume]:
    """The volume as read of a layer (or layer metadata ``meta``) shown resampled onto another
    grid for display (:func:`display_case`) whose ``data`` were not edited since; else None."""
    rg = radiogen_meta(meta)
    src = rg.get("display_source")
    if isinstance(src, Volume) and rg.get("display_digest") == data_digest(data):
        return src
    return None


def layer_volume(layer: Any) -> Volume:
    """The volume a layer stands for: its data on its geometry, except for a layer shown
    resampled onto another grid for display (:func:`display_case`) and not edited since,
    which stands for the volume as read (its own grid: what the command line analyses)."""
    rg = radiogen_meta(layer)
    src = unedited_display_source(layer, layer.data)
    if src is not None:
        return src
    return Volume(array=np.asarray(layer.data), geometry=layer_geometry(layer),
                  path=rg.get("source"), synthetic=bool(rg.get("synthetic", False)))


# -- layers -> case --------------------------------------------------------------------------------
def _layer_type(layer: Any) -> str:
    return type(layer).__name__.lower()


def case_layers(layers: Iterable[Any], case_id: Optional[str] = None) -> Dict[str, Any]:
    """``{sequence: layer}`` of the radiogen layers of one case (the first case found when
    ``case_id`` is None). Labels are under ``"labels"``. An acquired sequence wins over a
    synthetic one of the same name wherever the two sit in the layer list (as the reader
    does with files), and a registered one (:func:`registered_layer_data`, shown in its
    place) over both, so moving a layer never swaps what is analysed."""
    out: Dict[str, Any] = {}
    for layer in layers:
        rg = radiogen_meta(layer)
        if not rg:
            continue
        if case_id is None:
            case_id = rg.get("case_id")
        if rg.get("case_id") != case_id:
            continue
        seq = rg.get("sequence")
        kind = _layer_type(layer)
        if kind == "labels" and seq == "labels":
            out.setdefault("labels", layer)
        elif kind == "image" and seq in SEQUENCES:
            have = out.get(seq)
            if have is None or _rank(rg) > _rank(radiogen_meta(have)):
                out[seq] = layer
    return out


def _rank(rg: Mapping[str, Any]) -> int:
    """Which of a case's layers of one sequence :func:`case_layers` takes: a registered one,
    else an acquired one, else a synthetic one."""
    return 2 if rg.get("registered_onto") else 0 if rg.get("synthetic") else 1


def case_from_layers(layers: Iterable[Any], case_id: Optional[str] = None, *,
                     include_labels: bool = True) -> Case:
    """Rebuild a :class:`Case` from the image (and labels) layers of one case in a viewer.

    Uses each layer's current data, so edits (e.g. painted labels) are included; a layer
    shown resampled for display and not edited stands for its volume as read.
    """
    found = case_layers(list(layers), case_id)
    seqs = {k: v for k, v in found.items() if k != "labels"}
    if not seqs:
        raise GeometryError("no image layers of a case found (open a case with the "
                            "napari-radiogen reader first)")
    first = radiogen_meta(next(iter(seqs.values())))
    cid = case_id or first.get("case_id") or "case"
    # a sequence shown resampled for display is taken as read (layer_volume): the widgets
    # analyse what the command line analyses, not a copy interpolated twice
    vols: Dict[str, Volume] = {seq: layer_volume(layer) for seq, layer in seqs.items()}
    labels = None
    if include_labels and "labels" in found:
        lv = layer_volume(found["labels"])
        labels = Volume(array=lv.array, geometry=lv.geometry, path=lv.path)
    pids = first.get("patient_ids")
    return Case(case_id=str(cid), sequences=vols, labels=labels,
                source=first.get("case_source") or first.get("source"),
                kind=str(first.get("case_kind") or "volume"),
                meta={"patient_ids": list(pids)} if isinstance(pids, (list, tuple)) else {})
