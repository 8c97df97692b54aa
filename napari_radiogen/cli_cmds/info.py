"""``radiogen info PATH``: what a case (or a cohort folder) holds.

For a case: case id, kind, each detected sequence with its file, shape, spacing, orientation,
obliquity (degrees from the nearest axis-aligned orientation), data type (as stored in the file:
the NIfTI header's, the pixel type SimpleITK reads for other formats; in the JSON ``dtype``, with
the type it is read into memory as in ``dtype_in_memory``), the labels file and its values;
what the readers warned about (NIfTI qform/sform disagreements, library warnings); a synthetic sequence (one the package generated, see
``core.io.synthetic``) is flagged with its provenance, and the files left aside (a synthetic file
where an acquired one of that sequence is read, the package's own result maps) are listed. For a
cohort folder: one line per case (header-only scan), and one line per sub-folder that holds
no case (``skipped: <name>/: <reason>``; ``"skipped"`` in the JSON).

A cohort listing checks each volume file of each case without reading its voxels
(:func:`file_problem`): the header is read (nibabel for NIfTI, SimpleITK for NRRD/MetaImage)
and a NIfTI file's size is checked against its header (an empty file, a truncated or corrupt
``.nii.gz``, a 2D or 4D image, a zero voxel size). A case with such a file is marked on its
line (``unreadable: <file>: <reason>``; ``"unreadable": {file: reason}`` in the JSON): the
analysis commands would refuse it. What only the voxels tell (NaN/Inf values, a blank volume,
labels outside the BraTS set) is not checked there, as it would mean decompressing every
file: ``--check-voxels`` reads each case as the analysis commands do (slow on a big cohort),
and ``radiogen info CASE`` reads the one case. DICOM series are not checked in the listing.
Imports only the headless I/O (no torch).

Exit status: 0 the case (or every case of the folder) can be read; 1 a folder with a case
marked unreadable (or one that could not be scanned), as the other commands exit on a folder
with a failed case (the cases are named on stderr); 2 an input error (one case that cannot be
read, no such path).

The JSON of a case gives each volume's ``origin_xyz_mm`` and ``orientation`` as the file has
them (the origin in LPS mm, as SimpleITK/ITK report it: the centre of the file's first voxel),
and ``reoriented_origin_xyz_mm``, the origin of the grid as loaded (re-oriented to LPS voxel
order, the grid the viewer and the results use; ``shape_zyx`` and ``spacing_xyz_mm`` are that
grid's).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..core.outputs import dumps
from ._common import add_sequence_argument, parse_overrides  # noqa: F401  (parse_overrides: API)


EPILOG = """\
exit status: 0 the case, or every case of the folder, can be read; 1 a folder with a case the
analysis commands would refuse (an unreadable file, or with --check-voxels also NaN/Inf voxels
or a blank volume; each is marked on its line, and named on stderr); 2 an input error (no such
path, a single case that cannot be read, a bad option).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("path", help="case folder, volume file, DICOM folder, .h5 slice pack, "
                                     "or a cohort folder of cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_sequence_argument(parser)
    parser.add_argument("--series", default=None, metavar="S",
                        help="DICOM: pick the series whose description or UID contains S")
    parser.add_argument("--reference", default=None, metavar="SEQ",
                        help="reference sequence (default: flair > t1ce > t2 > t1)")
    parser.add_argument("--check-voxels", action="store_true",
                        help="a cohort folder: read every case as the analysis commands do "
                             "(also finds NaN/Inf voxels and blank volumes; slow on a big "
                             "cohort). Without it the listing reads file headers and checks "
                             "file sizes only")


def _fmt_num(x: float) -> str:
    return f"{x:.4g}"


def _case_text(d: Dict[str, Any]) -> str:
    lines = [f"case {d['case_id']}  ({d['kind']})  {d['source']}"]
    rows = [("", "file", "shape z,y,x", "spacing x,y,z mm", "orient.", "oblique", "dtype")]
    in_memory = {}                       # stored dtype -> the dtype it is read as, if other

    def row(name: str, v: Dict[str, Any]) -> None:
        sp = " x ".join(_fmt_num(s) for s in v["spacing_xyz_mm"])
        if v.get("nominal_spacing"):
            sp += " (nominal)"
        tilt = v.get("obliquity_deg")
        # a DICOM series is named by its description (its path is the folder of all series)
        shown = (f"series '{v['series_description']}'" if v.get("series_description")
                 else Path(v["file"]).name if v["file"] else "-")
        rows.append((name, shown,
                     "x".join(str(s) for s in v["shape_zyx"]), sp, v["orientation"],
                     "-" if tilt is None else f"{tilt:.1f} deg", v["dtype"]))
        mem = v.get("dtype_in_memory")
        if mem and mem != v["dtype"]:
            in_memory.setdefault(mem, []).append(name.split(" ")[0])

    for s, v in d["sequences"].items():
        row(f"{s} (synthetic)" if v.get("synthetic") else s, v)
    if d.get("labels"):
        row("labels", d["labels"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if in_memory:                       # dtype is the file's; say what it is read as
        lines.append("  dtype: as stored in the file; read into memory as "
                     + ", ".join(f"{m} ({', '.join(names)})" for m, names in in_memory.items()))
    if d.get("labels"):
        lab = d["labels"]
        vals = lab.get("values")
        extra = f"  values {', '.join(map(str, vals))}" if vals is not None else ""
        meaning = lab.get("meaning")
        lines.append(f"  labels: {Path(lab['file']).name if lab['file'] else '-'}{extra}"
                     + (f"  ({meaning})" if meaning else ""))
    else:
        lines.append("  labels: none")
    lines.append(f"  missing: {', '.join(d['missing']) or 'none'}    reference: "
                 f"{d.get('reference')}    on one grid: {'yes' if d['on_one_grid'] else 'no'}")
    for s, v in d["sequences"].items():
        if v.get("synthetic"):
            lines.append(f"  {s} is synthetic: "
                         f"{synthetic_text(v.get('synthetic_provenance') or {})}")
    meta = d.get("meta") or {}
    for f in meta.get("synthetic_set_aside") or []:
        lines.append(f"  set aside: {f}")
    for f in meta.get("ignored_outputs") or []:
        lines.append(f"  ignored: {f}")
    if meta.get("unrecognised"):
        lines.append(f"  not recognised (ignored): {', '.join(meta['unrecognised'])}")
    if meta.get("unavailable"):
        lines.append(f"  unavailable in the source (not loaded): "
                     f"{', '.join(meta['unavailable'])}")
    if meta.get("nominal_geometry"):
        lines.append(f"  geometry: {meta['nominal_geometry']}")
    for w in meta.get("warnings") or []:
        lines.append(f"  warning: {w}")
    clin = d.get("clinical") or {}
    if clin:
        keys = [k for k in ("age_at_initial_pathologic", "gender", "idh", "codel_1p19q", "grade",
                            "os_days", "os_event") if k in clin]
        if keys:
            lines.append("  clinical: " + ", ".join(f"{k}={clin[k]}" for k in keys))
    return "\n".join(lines)


def synthetic_text(prov: Dict[str, Any]) -> str:
    """``generated from t1,t2,flair by synth_x (recognised by its file header), not an
    acquired scan``; the parts the file does not record are left out."""
    txt = "generated"
    if prov.get("sources"):
        txt += f" from {','.join(prov['sources'])}"
    if prov.get("model"):
        txt += f" by {prov['model']}"
    notes = [] if prov.get("sources") or prov.get("model") else ["sources and model not recorded"]
    if prov.get("synthetic_marked_by"):
        notes.append(f"recognised by its {' and '.join(prov['synthetic_marked_by'])}")
    return txt + (f" ({'; '.join(notes)})" if notes else "") + ", not an acquired scan"


def _unrecognised_text(entry: Dict[str, Any]) -> str:
    """``2 file(s), 3 DICOM file(s) in ./`` for a cohort entry's ``unrecognised`` list
    (``core.io.scan_case``: file names, and ``<folder>/ (DICOM)`` for a DICOM folder whose
    sequence its name does not tell, counted by the files in it)."""
    import os

    files = [u for u in entry["unrecognised"] if not str(u).endswith("/ (DICOM)")]
    parts = [f"{len(files)} file(s)"] if files else []
    base = Path(entry.get("path") or ".")
    for u in entry["unrecognised"]:
        if not str(u).endswith("/ (DICOM)"):
            continue
        sub = str(u)[: -len(" (DICOM)")]
        try:
            with os.scandir(base / sub) as it:
                n = sum(1 for e in it if not e.name.startswith(".") and e.is_file())
        except OSError:
            n = None
        parts.append(f"DICOM in {sub}" if n is None else f"{n} DICOM file(s) in {sub}")
    return ", ".join(parts)


def _cohort_text(folder: Path, entries: List[Dict[str, Any]], skipped=(),
                 checked: str = "") -> str:
    bad = sum(1 for e in entries if e.get("unreadable") or "error" in e)
    lines = [f"cohort {folder}  ({len(entries)} case(s)" + (f", {bad} unreadable" if bad else "")
             + ")"]
    w = max([len(e["case_id"]) for e in entries] + [4])
    for e in entries:
        if "error" in e:
            lines.append(f"  {e['case_id'].ljust(w)}  error: {e['error']}")
            continue
        seqs = e["sequences"]
        names = list(seqs) if isinstance(seqs, list) else list(seqs.keys())
        order = [s for s in ("t1", "t1ce", "t2", "flair") if s in names]
        txt = f"  {e['case_id'].ljust(w)}  {e['kind']:<7} {' '.join(order) or '-'}"
        if e["kind"] == "slices":
            txt += f"  {e['n_slices']} slices"
            if e.get("unavailable"):
                txt += f"  (unavailable: {', '.join(e['unavailable'])})"
            txt += "  mask" if e.get("has_mask") else ""
        else:
            txt += "  + labels" if e.get("labels") else ""
            if e.get("synthetic"):
                txt += f"  (synthetic: {', '.join(e['synthetic'])})"
            if e.get("ignored_outputs"):
                txt += f"  ({len(e['ignored_outputs'])} napari-radiogen map(s) ignored)"
            if e.get("unrecognised"):
                txt += f"  (not recognised: {_unrecognised_text(e)})"
        if e.get("unreadable"):
            txt += "  unreadable: " + "; ".join(f"{f}: {why}"
                                                for f, why in e["unreadable"].items())
        lines.append(txt)
    for name, reason in skipped:        # sub-folders with no case in them: said, not dropped
        lines.append(f"  skipped: {name}/: {reason}")
    if checked == "headers" and any(_entry_files(e) for e in entries if "error" not in e):
        lines.append("  checked: file headers and sizes, not the voxels (NaN/Inf, blank "
                     "volumes): --check-voxels reads them")
    return "\n".join(lines)


# -- the cohort listing's file checks ------------------------------------------------------------
def _strip_path(msg: str, path: Path) -> str:
    """A core error message without the ``<path>: `` it starts with."""
    for prefix in (str(path), str(Path(path).resolve())):
        if msg.startswith(prefix + ": "):
            return msg[len(prefix) + 2:]
    return msg


def _gzip_size_ok(path: Path, need: int) -> bool:
    """Does the gzip trailer (the uncompressed size, modulo 2**32) say ``need`` bytes? A
    complete ``.nii.gz`` holds exactly its header and voxels; the last 4 bytes of a truncated
    one are compressed data, which matches by chance once in 2**32."""
    import struct

    try:
        with open(path, "rb") as f:
            f.seek(-4, 2)
            return struct.unpack("<I", f.read(4))[0] == need % (1 << 32)
    except OSError:
        return False


def file_problem(path: Path) -> Any:
    """Why the analysis commands could not read the volume file ``path``, found without
    reading its voxels, else None: an empty file, a header no reader takes, a 2D/4D/vector
    image, a zero voxel size, and for NIfTI fewer bytes than the header asks for (for a
    ``.nii.gz``: its gzip trailer, and only when that disagrees, a decompression, which tells
    a truncated file from one with extra bytes). The reasons are the reader's own
    (``core.io.load_volume``), without the path. NaN/Inf voxels and blank volumes are not
    looked for (see ``--check-voxels``), nor is a truncated NRRD or MetaImage (its header
    reads); folders (DICOM) are not checked."""
    import numpy as np

    from ..core.errors import CaseLoadError
    from ..core.io import volume as V
    from ..core.io._nifti import zero_spacing

    p = Path(path)
    if not p.is_file():
        return None
    ext = V.volume_extension(p)
    if ext is None:
        return None
    try:
        if p.stat().st_size == 0:
            return "empty file (0 bytes)"
        if ext in (".nii", ".nii.gz"):
            import nibabel as nib
            from nibabel.imageglobals import LoggingOutputSuppressor

            try:
                with LoggingOutputSuppressor():
                    img = nib.load(str(p))
                shape = tuple(int(x) for x in img.header.get_data_shape())
                need = int(img.dataobj.offset) + int(np.prod(shape, dtype=np.int64)) * \
                    np.dtype(img.header.get_data_dtype()).itemsize
            except Exception as e:  # nibabel raises many kinds here (as load_volume says)
                if ext == ".nii.gz":
                    V._check_gzip(p)      # a gzip that ends early says so (as load_volume)
                return (f"not a valid NIfTI file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'bad header'})")
            zero = zero_spacing(p, ext)
            if zero is not None:
                return zero
            V._check_size(p, len(shape), shape, 1)
            if ext == ".nii":
                have = p.stat().st_size
            elif _gzip_size_ok(p, need):
                return None
            else:
                have = V._check_gzip(p)           # raises for a truncated or corrupt file
            if have < need:
                return (f"truncated NIfTI file ({have} of {need} bytes of header + voxels for "
                        f"a {'x'.join(map(str, shape))} image)")
            return None
        import SimpleITK as sitk
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            return V._read_error(p, ext, e, header=True)
        V._check_size(p, reader.GetDimension(), tuple(int(x) for x in reader.GetSize()),
                      reader.GetNumberOfComponents())
    except CaseLoadError as e:
        return _strip_path(str(e), p)
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    return None


def _entry_files(entry: Dict[str, Any]) -> Dict[str, Path]:
    """The files of a cohort entry (``core.io.scan_case``), by the name the listing shows."""
    base = Path(entry.get("path") or ".")
    if not base.is_dir():               # a file, or a group of files named by a prefix
        base = base.parent
    seqs = entry.get("sequences") or {}
    names = list(seqs.values()) if isinstance(seqs, dict) else []
    if entry.get("labels"):
        names.append(entry["labels"])
    return {n: base / n for n in names if isinstance(n, str) and not n.endswith("/")}


def header_problems(entry: Dict[str, Any]) -> Dict[str, str]:
    """``{file: reason}`` for the files of a cohort entry that cannot be read
    (:func:`file_problem`)."""
    out = {}
    for name, f in _entry_files(entry).items():
        why = file_problem(f)
        if why:
            out[name] = " ".join(str(why).split())
    return out


def voxel_problems(entry: Dict[str, Any], path: Path) -> Dict[str, str]:
    """``{file: reason}``: the case read as the analysis commands read it (every voxel); its
    files that fail, each with the reader's reason. A case that fails as a whole raises."""
    from ..core.io import load_case

    case = load_case(path, skip_unreadable=True)
    seqs = dict(entry.get("sequences") or {}) if isinstance(entry.get("sequences"), dict) else {}
    if entry.get("labels"):
        seqs["labels"] = entry["labels"]
    out = {}
    for name, msg in (case.meta.get("unreadable") or {}).items():
        f = seqs.get(name, name)
        msg = str(msg)
        for full in _entry_files(entry).values():
            msg = _strip_path(msg, full)
        out[f] = " ".join(msg.split())
    return out


#: SimpleITK's pixel type names -> numpy's
_SITK_DTYPES = {"8-bit unsigned integer": "uint8", "8-bit signed integer": "int8",
                "16-bit unsigned integer": "uint16", "16-bit signed integer": "int16",
                "32-bit unsigned integer": "uint32", "32-bit signed integer": "int32",
                "64-bit unsigned integer": "uint64", "64-bit signed integer": "int64",
                "32-bit float": "float32", "64-bit float": "float64"}


def stored_dtype(v) -> Any:
    """The data type of ``v``'s file as stored (not the in-memory array's): the NIfTI header's
    (nibabel ``get_data_dtype``, header only) for ``.nii``/``.nii.gz``, else the pixel type the
    reader recorded (``meta['source_pixel_type']``: SimpleITK's for NRRD/MHA/DICOM, the
    dataset's for a slice pack), as a numpy name where it has one. ``None`` when not known (a
    volume with no file, e.g. a synthesised one)."""
    path = getattr(v, "path", None)
    if path and str(path).lower().endswith((".nii", ".nii.gz")) and Path(path).is_file():
        try:
            import nibabel as nib
            import numpy as np
            return np.dtype(nib.load(str(path)).header.get_data_dtype()).name
        except Exception:               # the reader recorded it; fall back to that
            pass
    src = (getattr(v, "meta", None) or {}).get("source_pixel_type")
    if not src:
        return None
    return _SITK_DTYPES.get(str(src), str(src))


def describe_case(case) -> Dict[str, Any]:
    """``Case.describe()`` plus label values/meaning and the reference sequence."""
    d = case.describe()
    d["reference"] = case.reference
    if case.labels is not None and d.get("labels") is not None:
        m = case.labels.meta
        d["labels"]["values"] = m.get("label_values")
        if m.get("labels_meaning"):
            d["labels"]["meaning"] = m["labels_meaning"]
        if m.get("label_map"):
            d["labels"]["label_map"] = m["label_map"]
    from ..core.io._nifti import obliquity_deg

    vols = dict(case.sequences)
    if case.labels is not None and d.get("labels") is not None:
        vols["labels"] = case.labels
    for s, v in vols.items():
        entry = d["labels"] if s == "labels" else d["sequences"].get(s)
        if entry is None:
            continue
        if v.meta.get("series_description") is not None:
            entry["series_description"] = v.meta["series_description"]
        # the grid's tilt from the nearest axis-aligned orientation (napari's 2D view
        # draws a tilted grid without its tilt)
        entry["obliquity_deg"] = round(obliquity_deg(v.geometry.direction_matrix), 2)
        if v.meta.get("nifti_codes"):
            entry["nifti_codes"] = dict(v.meta["nifti_codes"])
        # the file's data type (uint8 on disk), and what it is read as (float32)
        mem = str(v.array.dtype)
        entry["dtype"] = stored_dtype(v) or mem
        entry["dtype_in_memory"] = mem
    return d


def run(args: argparse.Namespace) -> int:
    from ..core.errors import RadiogenError
    from ..core.io import list_cases, load_case, scan_case, scan_folder

    path = Path(args.path)
    overrides = parse_overrides(args.sequence)
    try:
        cohort = path.is_dir() and scan_folder(path).kind != "case"
        if cohort and not overrides and not args.series:
            try:
                cases = list_cases(path)
            except RadiogenError:
                cases = []
            if cases and not (len(cases) == 1 and cases[0] == path):
                from ._batch import skipped_folders
                skipped = skipped_folders(path, cases)
                entries = []
                checked = "voxels" if args.check_voxels else "headers"
                for c in cases:
                    try:
                        e = scan_case(c)
                        bad = (voxel_problems(e, c) if args.check_voxels
                               else header_problems(e))
                        if bad:         # the commands would refuse the case: said
                            e["unreadable"] = bad
                        entries.append(e)
                    except RadiogenError as e:
                        entries.append({"case_id": c.name, "error": str(e)})
                    except Exception as e:      # one case's odd file: its line says so
                        msg = str(e).splitlines()[0] if str(e) else ""
                        entries.append({"case_id": c.name,
                                        "error": f"{type(e).__name__}: {msg}"})
                if args.json:
                    _emit(dumps({"cohort": str(path), "n_cases": len(entries),
                                 "checked": checked, "cases": entries,
                                 "skipped": [{"folder": f"{n}/", "message": m}
                                             for n, m in skipped]}))
                else:
                    _emit(_cohort_text(path, entries, skipped, checked))
                # as the other commands on a folder: a case they would refuse makes it 1
                refused = [e["case_id"] for e in entries
                           if e.get("unreadable") or "error" in e]
                if refused:
                    print(f"radiogen: {len(refused)} of {len(entries)} case(s) unreadable: "
                          f"{', '.join(refused)}", file=sys.stderr)
                    return 1
                return 0
        case = load_case(path, overrides=overrides or None, series=args.series,
                         reference=args.reference)
        d = describe_case(case)
        # sequences that look offset from the reference (not co-registered), as analyze says
        from ..core.prepare import case_registration_warnings
        offsets = case_registration_warnings(case)
        if offsets:
            meta = d.setdefault("meta", {})
            meta["warnings"] = list(meta.get("warnings") or []) + offsets
    except RadiogenError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:   # defensive: stay one line
        raise RadiogenError(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            ) from None
    return _emit(dumps(d) if args.json else _case_text(d))


def _emit(text: str) -> int:
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:          # `radiogen info ... | head`
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
