"""Read one 3D volume (NIfTI, NRRD, MetaImage or a DICOM series) into a canonical LPS
:class:`~napari_radiogen.core.case.Volume`, with checks that turn every bad input into a
one-line :class:`~napari_radiogen.core.errors.CaseLoadError`."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..case import Geometry, Volume, canonicalize
from ..errors import CaseLoadError, GeometryError
from . import _nifti
from . import maps as _maps
from . import synthetic as _syn
from ._util import captured_stderr, percent, sitk_message
from .detect import VOLUME_EXTENSIONS, detect_sequence
from .dicom import SeriesInfo, has_dicom, is_dicom_file, list_series, pick_series, read_series

PathLike = Union[str, Path]


def volume_extension(path: PathLike) -> Optional[str]:
    """The recognised volume extension of ``path`` (``.nii.gz`` ...) or ``None``."""
    low = Path(path).name.lower()
    for ext in VOLUME_EXTENSIONS:
        if low.endswith(ext):
            return ext
    return None


# -- integrity checks that ITK does not do ------------------------------------------------------
def _check_gzip(path: Path) -> int:
    """Stream-decompress a gzip file; return the uncompressed size. ITK silently zero-fills a
    truncated ``.nii.gz``, so this is where truncation is caught."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    n = 0
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                n += len(d.decompress(chunk))
                while d.unused_data and d.eof:      # concatenated gzip members
                    rest = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    n += len(d.decompress(rest))
            n += len(d.flush())
    except zlib.error as e:
        raise CaseLoadError(f"{path}: corrupt gzip data ({e})") from None
    if not d.eof:
        raise CaseLoadError(f"{path}: truncated gzip file (ends before the end of the compressed "
                            f"stream, {n} bytes decompressed); the download or copy is incomplete")
    return n


def _check_nifti(path: Path, ext: str) -> Tuple[Any, "_nifti.NiftiInfo"]:
    """Header readable, voxel size recorded, and enough voxel bytes present. Returns the
    nibabel image (header open, voxels not read unless floating point) and its geometry."""
    import nibabel as nib
    from nibabel.imageglobals import LoggingOutputSuppressor

    uncompressed = _check_gzip(path) if ext == ".nii.gz" else path.stat().st_size
    zero = _nifti.zero_spacing(path, ext)
    if zero is not None:
        raise CaseLoadError(f"{path}: {zero}")
    try:
        with LoggingOutputSuppressor():        # nibabel logs header fixes to stderr
            img = nib.load(str(path))
        hdr = img.header
        shape = tuple(int(s) for s in hdr.get_data_shape())
        itemsize = np.dtype(hdr.get_data_dtype()).itemsize
        offset = int(hdr.get("vox_offset", 352)) if hasattr(hdr, "get") else 352
        info = _nifti.header_info(hdr)
    except CaseLoadError:
        raise
    except Exception as e:  # nibabel raises many kinds here
        raise CaseLoadError(f"{path}: not a valid NIfTI file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'bad header'})") from None
    need = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    if uncompressed < need:
        raise CaseLoadError(f"{path}: truncated NIfTI file ({uncompressed} of {need} bytes of "
                            f"header + voxels for a {'x'.join(map(str, shape))} image)")
    if np.dtype(hdr.get_data_dtype()).kind in "fc":
        # ITK's NIfTI reader turns NaN into 0 silently: count non-finite voxels here
        try:
            data = np.asarray(img.dataobj)
        except Exception as e:
            raise CaseLoadError(f"{path}: cannot read the voxel data ({type(e).__name__})"
                                ) from None
        nbad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if nbad:
            raise CaseLoadError(f"{path}: {nbad} NaN/Inf voxel(s) of {data.size} "
                                f"({percent(nbad, data.size)}); fix or mask the file first")
    return img, info


def _check_size(path: Path, dim: int, size: Tuple[int, ...], ncomp: int) -> None:
    shape_txt = "x".join(map(str, size))
    if ncomp != 1:
        raise CaseLoadError(f"{path}: {ncomp} values per voxel (RGB or vector image, size "
                            f"{shape_txt}); expected one scalar 3D volume")
    if dim < 3 or (dim == 3 and min(size) == 1):
        raise CaseLoadError(f"{path}: 2D image (size {shape_txt}); a 3D volume is needed")
    if dim > 4 or (dim == 4 and size[3] != 1):
        n = int(np.prod(size[3:]))
        raise CaseLoadError(f"{path}: {dim}D image with {n} volumes (size {shape_txt}); one 3D "
                            "volume is needed (split the series, e.g. with fslsplit)")
    if min(size[:3]) == 1:
        raise CaseLoadError(f"{path}: 2D image (size {shape_txt}); a 3D volume is needed")


def _read_nifti2(path: Path, nimg: Any) -> sitk.Image:
    """A NIfTI-2 file (ITK reads NIfTI-1 only), read with nibabel."""
    shape = tuple(int(s) for s in nimg.header.get_data_shape())
    _check_size(path, len(shape), shape + (1,) * max(0, 3 - len(shape)), 1)
    try:
        return _nifti.nibabel_image(nimg)
    except Exception as e:
        raise CaseLoadError(f"{path}: cannot read the NIfTI-2 voxel data ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _read_file(path: Path, warnings: List[str]) -> Tuple[sitk.Image, Dict[str, Any]]:
    if not path.exists():
        raise CaseLoadError(f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise CaseLoadError(f"{path}: empty file (0 bytes)")
    ext = volume_extension(path)
    if ext is None:
        raise CaseLoadError(f"{path}: unsupported file type; expected one of "
                            f"{', '.join(VOLUME_EXTENSIONS)} or a DICOM series folder")
    nimg, ninfo = None, None
    if ext in (".nii", ".nii.gz"):
        nimg, ninfo = _check_nifti(path, ext)
    elif path.name.lower().endswith(".gz"):  # pragma: no cover - other gzip'd formats
        _check_gzip(path)
    if nimg is not None and type(nimg).__name__.startswith("Nifti2"):
        img = _read_nifti2(path, nimg)
        meta: Dict[str, Any] = {"format": "nifti2", "source_pixel_type":
                                img.GetPixelIDTypeAsString()}
        descrip = bytes(nimg.header["descrip"]).split(b"\0")[0].decode("ascii", "replace")
        fields = {"ITK_FileNotes": descrip} if descrip else {}
        _add_header_meta(meta, fields)
        _nifti_geometry(img, ninfo, meta)
        return img, meta
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with captured_stderr(warnings):
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise CaseLoadError(f"{path}: {_read_error(path, ext, e, header=True)}") from None
    size = tuple(int(s) for s in reader.GetSize())
    _check_size(path, reader.GetDimension(), size, reader.GetNumberOfComponents())
    try:
        with captured_stderr(warnings):
            img = reader.Execute()
    except RuntimeError as e:
        raise CaseLoadError(f"{path}: {_read_error(path, ext, e, header=False)}") from None
    if img.GetDimension() == 4:
        img = sitk.Extract(img, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
    meta = {"format": ext.lstrip("."), "source_pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID())}
    _add_header_meta(meta, _header_fields(reader))
    if ninfo is not None and _nifti_geometry(img, ninfo, meta):
        # ITK's own note on the transform it did not take ("unexpected scales in sform"):
        # meta["warnings"] now says what was used, and why
        warnings[:] = [w for w in warnings if "sform" not in w and "qform" not in w]
    return img, meta


def _add_header_meta(meta: Dict[str, Any], fields: Dict[str, str]) -> None:
    rmap = _maps.from_header(fields)
    if rmap is not None:
        meta["radiogen_map"] = rmap        # a result map of the package, not a sequence
    else:
        prov = _syn.from_header(fields)
        if prov is not None:
            meta["_synthetic_header"] = prov


def _nifti_geometry(img: sitk.Image, info: "_nifti.NiftiInfo", meta: Dict[str, Any]) -> bool:
    """Give a NIfTI image the transform nibabel/FSL use (the sform when its code is set),
    where ITK read another one; record the header and say what was decided. True when the
    geometry ITK read was replaced."""
    target, info, msgs = _nifti.choose_affine(info, _nifti.image_affine_ras(img))
    if target is not None:
        _nifti.set_image_affine_ras(img, target)
    meta["_nifti"] = info
    meta["nifti_codes"] = {"qform": info.qform_code, "sform": info.sform_code,
                           "used": info.used}
    if msgs:
        meta.setdefault("warnings", []).extend(msgs)
    return target is not None


def _header_lines(path: Path) -> List[str]:
    """The lines of a text header at the start of ``path`` (its first 64 KiB; [] when
    unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return []
    return head.decode("latin-1").split("\n")


def _meta_fields(path: Path) -> Dict[str, str]:
    """A MetaImage header's fields (``Key = value``), {} when unreadable."""
    out: Dict[str, str] = {}
    for line in _header_lines(path):
        k, eq, v = line.partition("=")
        if eq:
            out[k.strip()] = v.strip()
            if k.strip() == "ElementDataFile":
                break
    return out


_META_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4,
               "MET_INT": 4, "MET_ULONG": 8, "MET_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
               "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8}


def _nrrd_fields(path: Path) -> Dict[str, str]:
    """A NRRD header's fields (``key: value``, keys lower-case), {} when unreadable."""
    out: Dict[str, str] = {}
    for line in _header_lines(path)[1:]:
        if not line.strip():
            break
        k, colon, v = line.partition(":")
        if colon and not k.startswith("#"):
            out[k.strip().lower()] = v.strip().lstrip("=").strip()
    return out


def _read_error(path: Path, ext: str, e: RuntimeError, *, header: bool) -> str:
    """One clear sentence for an ITK read failure (ITK's own text says 'No such file or
    directory' for a truncated .mha, names the .mhd for a missing .raw, and gives a teem trace
    for a truncated NRRD)."""
    import re

    raw = str(e)
    stage = "the image header" if header else "the voxel data"
    if ext in (".mha", ".mhd"):
        f = _meta_fields(path)
        data_file = f.get("ElementDataFile", "")
        if ext == ".mhd" or (data_file and data_file.upper() != "LOCAL"):
            if data_file and data_file.upper() not in ("LOCAL", "LIST") and "%" not in data_file:
                target = (path.parent / data_file) if not Path(data_file).is_absolute() \
                    else Path(data_file)
                if not target.exists():
                    return (f"its voxel data file {data_file} is missing (looked for "
                            f"{target}); copy it next to the header")
                return (f"cannot read {stage} from its voxel data file {data_file} (truncated "
                        "or corrupt; compare its size with the header's DimSize and "
                        "ElementType)")
        if data_file.upper() == "LOCAL" and not header:
            dims = [int(v) for v in f.get("DimSize", "").split() if v.isdigit()]
            nbytes = _META_BYTES.get(f.get("ElementType", ""), 0)
            comp = f.get("CompressedData", "False").lower() == "true"
            if comp:
                return "truncated or corrupt compressed voxel data in this MetaImage file"
            if dims and nbytes:
                need = int(np.prod(dims)) * nbytes * int(f.get("ElementNumberOfChannels", "1")
                                                          or 1)
                return (f"truncated MetaImage file: the header asks for {need} bytes of voxel "
                        f"data ({'x'.join(map(str, dims))} {f.get('ElementType')}); the "
                        "download or copy is incomplete")
            return "truncated MetaImage file (the voxel data ends early)"
    if ext in (".nrrd", ".nhdr"):
        f = _nrrd_fields(path)
        data_file = f.get("data file") or f.get("datafile")
        if data_file and not data_file.upper().startswith("LIST") and "%" not in data_file:
            target = path.parent / data_file
            if not target.exists():
                return (f"its data file {data_file} is missing (looked for {target}); copy it "
                        "next to the header")
        m = re.search(r"expected (\d+) bytes but received (\d+)", raw) or re.search(
            r"expected (\d+) bytes and got (\d+)", raw)
        if m:
            return (f"truncated NRRD voxel data ({m.group(2)} of {m.group(1)} bytes); the "
                    "download or copy is incomplete")
        if "teem" in raw.lower() or "[nrrd]" in raw:
            lines = [ln.split("]", 1)[-1].strip() for ln in raw.splitlines() if "[nrrd]" in ln]
            last = next((ln.split(":", 1)[-1].strip() for ln in reversed(lines)
                         if ln.split(":", 1)[-1].strip()), "")
            return f"cannot read {stage} (NRRD: {last[:160] or 'unreadable'})"
    if "Unable to determine ImageIO reader" in raw:
        return "no reader recognises this file (wrong extension, or not an image file)"
    return f"cannot read {stage} ({sitk_message(e)})"


_HEADER_KEYS = tuple(dict.fromkeys((_syn.KEY_SYNTHETIC, _syn.KEY_SEQUENCE, _syn.KEY_SOURCES,
                                    _syn.KEY_MODEL) + _syn.NOTES_KEYS + _maps.HEADER_KEYS))


def _header_fields(reader: sitk.ImageFileReader) -> Dict[str, str]:
    """The header fields in which the package records what a file is (see :mod:`.synthetic`
    and :mod:`.maps`)."""
    keys = set(reader.GetMetaDataKeys())
    out: Dict[str, str] = {}
    for k in _HEADER_KEYS:
        if k in keys:
            try:
                out[k] = reader.GetMetaData(k)
            except RuntimeError:  # pragma: no cover - a key listed but unreadable
                pass
    return out


def _header_synthetic(reader: sitk.ImageFileReader) -> Optional[Dict[str, Any]]:
    """The synthetic provenance the file's header records (see :mod:`.synthetic`), or None."""
    return _syn.from_header(_header_fields(reader))


def file_header(path: PathLike) -> Dict[str, str]:
    """The header fields of a volume file in which the package records what the file is (a
    synthetic sequence, a result map), without reading its voxels; ``{}`` for a file whose
    header cannot be read (loading it says what is wrong) or that is no volume file."""
    p = Path(path)
    if volume_extension(p) is None or not p.is_file():
        return {}
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        with captured_stderr([]):
            reader.ReadImageInformation()
        return _header_fields(reader)
    except RuntimeError:
        return {}


def file_synthetic(path: PathLike, header: Optional[Dict[str, str]] = None
                   ) -> Optional[Dict[str, Any]]:
    """Whether a volume file is one of the package's synthetic volumes, without reading its
    voxels: the provenance its header, its ``_synth`` name or the JSON beside it gives, or
    None. An unreadable header counts as not synthetic here (loading it says what is wrong).
    ``header``: the file's :func:`file_header`, when already read."""
    p = Path(path)
    name = _syn.from_name(p.name)
    fields = file_header(p) if header is None else header
    head = None if _maps.from_header(fields) is not None else _syn.from_header(fields)
    if head is None and name is None:
        return None
    return _syn.merge(head, _syn.from_sidecar(p), name)


def file_map(path: PathLike, header: Optional[Dict[str, str]] = None
             ) -> Optional[Tuple[Dict[str, Any], str]]:
    """Whether a volume file is one of the package's result maps (a heatmap, a differentiation
    map; see :mod:`.maps`), by its header or its name, without reading its voxels: ``(map,
    how)`` with ``how`` ``"header"`` or ``"name"``, or None. ``header``: the file's
    :func:`file_header`, when already read."""
    name = _maps.from_name(Path(path).name)
    head = _maps.from_header(file_header(path) if header is None else header)
    if head is not None:
        return _syn.merge(head, name), "header"
    return (name, "name") if name is not None else None


def _read_dicom(path: Path, series: Optional[str], warnings: List[str]
                ) -> Tuple[sitk.Image, Dict[str, Any], SeriesInfo]:
    if path.is_file():                       # one file of a series: read the whole series
        folder = path.parent
        infos = list_series(folder)
        info = next((s for s in infos if str(path) in s.files
                     or any(Path(f).name == path.name for f in s.files)), None)
        if info is None:
            raise CaseLoadError(f"{path}: not part of any readable DICOM series in {folder}")
    else:
        infos = list_series(path)
        info = pick_series(infos, series, path)
    img = read_series(info, warnings)
    if img.GetDimension() != 3 or min(img.GetSize()) == 1:
        raise CaseLoadError(f"{info.folder}: DICOM series {info.label} is not a 3D volume "
                            f"(size {'x'.join(map(str, img.GetSize()))})")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CaseLoadError(f"{info.folder}: DICOM series {info.label} is not a scalar image")
    meta = {"format": "dicom", "series_uid": info.uid, "series_description": info.description,
            "n_files": len(info.files), "modality": info.modality,
            "source_pixel_type": img.GetPixelIDTypeAsString()}
    return img, meta, info


def _labels_array(arr: np.ndarray, where: str, meta: Dict[str, Any]) -> np.ndarray:
    """Labels as uint8 with BraTS 2023's enhancing-tumour label 3 mapped to 4."""
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise CaseLoadError(f"{where}: labels contain {int(bad.sum())} NaN/Inf voxel(s)")
        if not np.all(np.mod(arr, 1) == 0):
            raise CaseLoadError(f"{where}: labels have non-integer values (e.g. "
                                f"{float(arr[np.mod(arr, 1) != 0].flat[0])}); is this an image?")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise CaseLoadError(f"{where}: label values outside 0..255 (min {arr.min()}, max "
                            f"{arr.max()}); is this an image?")
    out = arr.astype(np.uint8)
    values = np.unique(out)
    if 3 in values and 4 not in values:        # BraTS 2023: ET is 3 -> project convention 4
        out[out == 3] = 4
        meta["label_map"] = "3->4 (BraTS 2023 enhancing tumour)"
        values = np.unique(out)
    meta["label_values"] = [int(v) for v in values]
    return out


def image_to_volume(img: sitk.Image, *, where: str, labels: bool, path: Optional[str],
                    meta: Dict[str, Any]) -> Volume:
    """Canonicalise to LPS, convert the voxel type, check values, wrap as a Volume."""
    try:
        canon, code = canonicalize(img)
    except RuntimeError as e:
        raise CaseLoadError(f"{where}: cannot reorient to LPS ({sitk_message(e)})") from None
    arr = sitk.GetArrayFromImage(canon)
    if labels:
        arr = _labels_array(arr, where, meta)
    else:
        arr = arr.astype(np.float32, copy=False)
        bad = ~np.isfinite(arr)
        nbad = int(bad.sum())
        if nbad:
            raise CaseLoadError(f"{where}: {nbad} NaN/Inf voxel(s) of {arr.size} "
                                f"({percent(nbad, arr.size)}); fix or mask the file first")
    nifti = meta.pop("_nifti", None)
    if nifti is not None:       # remembers the NIfTI header, for write_volume
        geom: Geometry = _nifti.SourceGeometry.from_image(canon, source_orientation=code,
                                                          nifti=nifti)
    else:
        geom = Geometry.from_image(canon, source_orientation=code)
    try:
        return Volume(array=np.ascontiguousarray(arr), geometry=geom, path=path, meta=meta)
    except GeometryError as e:  # pragma: no cover - shapes come from the same image
        raise CaseLoadError(f"{where}: {e}") from None


def load_volume(path: PathLike, *, labels: Optional[bool] = None,
                series: Optional[str] = None) -> Volume:
    """Read one 3D volume (.nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd or a DICOM series folder).

    The image is reoriented to LPS (``Geometry.source_orientation`` keeps the file's own code, so
    :func:`write_volume` can write results back on the exact source grid). Images come back as
    float32; labels (``labels=True``, or ``None`` and a file name that says seg/label/mask) as
    uint8 with BraTS 2023's label 3 mapped to 4. A DICOM folder with several series needs
    ``series`` (part of the SeriesDescription or UID).

    A synthetic image (a file the package wrote from a generated sequence: its header says so,
    or its name ends in ``_synth``, see :mod:`.synthetic`) comes back with ``synthetic=True``
    and its provenance (``sequence``, ``sources``, ``model``) in ``meta``. A result map of the
    package (a heatmap or differentiation map whose header says so, see :mod:`.maps`) comes
    back as a plain image with ``meta["radiogen_map"]`` saying what it is.

    NIfTI geometry: where the qform and sform disagree, the sform is used (as nibabel, FSL and
    MRIcron do; ITK alone would take the qform unless the sform code is 1) and
    ``meta["warnings"]`` says so; the header's codes travel with the geometry
    (:class:`~napari_radiogen.core.io._nifti.SourceGeometry`) so :func:`write_volume` keeps them.
    NIfTI-2 files are read with nibabel. What the reader library printed is in
    ``meta["reader_warnings"]`` (see :func:`volume_warnings`).

    Raises :class:`CaseLoadError` (one line, naming the file) for missing, empty, corrupt or
    truncated files, a zero voxel size in a NIfTI header, 2D or 4D images, vector images,
    NaN/Inf voxels and unreadable DICOM.
    """
    p = Path(path)
    warnings: List[str] = []
    if p.is_dir():
        if not has_dicom(p):
            raise CaseLoadError(f"{p}: a folder without DICOM files; expected a volume file or a "
                                "DICOM series folder")
        img, meta, info = _read_dicom(p, series, warnings)
        where = f"{p} (series '{info.description or info.uid}')"
    elif p.is_file() and volume_extension(p) is None and is_dicom_file(p):
        img, meta, info = _read_dicom(p, series, warnings)
        p = Path(info.folder)
        where = f"{p} (series '{info.description or info.uid}')"
    else:
        img, meta = _read_file(p, warnings)
        where = str(p)
    if labels is None:
        labels = detect_sequence(p.name)[1] == "labels"
    if warnings:
        meta["reader_warnings"] = reader_warnings_text(warnings)
    head = meta.pop("_synthetic_header", None)
    if "radiogen_map" not in meta and head is None and p.is_file():
        # the package's map names, when the header does not say otherwise (a synthetic
        # volume saved as P1_idh_gradcam.nii.gz says so in its header: it stays synthetic)
        by_name = _maps.from_name(p.name)
        if by_name is not None:
            meta["radiogen_map"] = by_name
    vol = image_to_volume(img, where=where, labels=bool(labels), path=str(p), meta=meta)
    if not labels and "radiogen_map" not in vol.meta:
        _mark_synthetic(vol, p, head)
    return vol


def reader_warnings_text(warnings: List[str]) -> str:
    """What a reader library printed, on one line: ITK's source-file/line/object prefixes
    dropped and repeats said once."""
    import re

    seen: List[str] = []
    for w in warnings:
        for part in re.split(r"(?=WARNING: In )", w):
            t = re.sub(r"WARNING: In \S+, line \d+\s*", "", part)
            t = re.sub(r"\b\w+ \(0x[0-9a-f]+\): ", "", t)
            t = " ".join(t.split())
            if t and t not in seen:
                seen.append(t)
    return " | ".join(x[:300] for x in seen)[:1000]


def volume_warnings(vol: Volume) -> List[str]:
    """What the user should be told about a loaded volume: the geometry decisions
    (``meta["warnings"]``) and what the reader library printed (``meta["reader_warnings"]``)."""
    out = [str(w) for w in vol.meta.get("warnings") or []]
    rw = vol.meta.get("reader_warnings")
    if rw:
        out.append(f"reader said: {rw}")
    return out


def _mark_synthetic(vol: Volume, p: Path, head: Optional[Dict[str, Any]]) -> None:
    """A volume the package generated (its header says so, or its name carries the ``_synth``
    suffix of the package's synthetic outputs) is read back as synthetic, with its
    provenance (header, then the JSON ``radiogen synthesize`` writes beside it, then the name)
    in ``meta``."""
    name = _syn.from_name(p.name) if p.is_file() else None
    if head is None and name is None:
        return
    marked_by = (["file header"] if head is not None else []) + (
        ["file name (_synth)"] if name is not None else [])
    side = _syn.from_sidecar(p)
    if side is not None:
        marked_by.append("sidecar JSON")
    vol.synthetic = True
    _syn.mark(vol.meta, _syn.merge(head, side, name), marked_by)
