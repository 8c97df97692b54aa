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
Imports only the headless I/O (no torch).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..core.outputs import dumps
from ._common import add_sequence_argument, parse_overrides  # noqa: F401  (parse_overrides: API)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="case folder, volume file, DICOM folder, .h5 slice pack, "
                                     "or a cohort folder of cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_sequence_argument(parser)
    parser.add_argument("--series", default=None, metavar="S",
                        help="DICOM: pick the series whose description or UID contains S")
    parser.add_argument("--reference", default=None, metavar="SEQ",
                        help="reference sequence (default: flair > t1ce > t2 > t1)")


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


def _cohort_text(folder: Path, entries: List[Dict[str, Any]], skipped=()) -> str:
    lines = [f"cohort {folder}  ({len(entries)} case(s))"]
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
        lines.append(txt)
    for name, reason in skipped:        # sub-folders with no case in them: said, not dropped
        lines.append(f"  skipped: {name}/: {reason}")
    return "\n".join(lines)


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
                for c in cases:
                    try:
                        entries.append(scan_case(c))
                    except RadiogenError as e:
                        entries.append({"case_id": c.name, "error": str(e)})
                if args.json:
                    return _emit(dumps({"cohort": str(path), "n_cases": len(entries),
                                        "cases": entries,
                                        "skipped": [{"folder": f"{n}/", "message": m}
                                                    for n, m in skipped]}))
                return _emit(_cohort_text(path, entries, skipped))
        case = load_case(path, overrides=overrides or None, series=args.series,
                         reference=args.reference)
        d = describe_case(case)
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
