"""Cases: a folder of sequence files (NIfTI/NRRD/MetaImage, DICOM series), a single volume file,
or a TCGA-LGG HDF5 pack -> :class:`~napari_radiogen.core.case.Case`; cohorts -> case paths.

The package's own synthetic volumes (``<case>_<sequence>_synth.<ext>``, or a header that says so,
see :mod:`.synthetic`) are read as synthetic sequences (``Case.synthetic_inputs()`` names them,
``case.meta["synthesized"]`` has their provenance). Where a case holds both an acquired file and
a synthetic one of the same sequence, the acquired one is read and the synthetic one set aside
(``case.meta["synthetic_set_aside"]``); any other two files claiming one sequence are an error.

The package's result maps (heatmaps of ``radiogen explain``/``analyze``, differentiation maps of
``radiogen rank-sequences``; by their names or their headers, see :mod:`.maps`) are not
sequences: a case folder that holds copies of them is read without them, and
``case.meta["ignored_outputs"]`` says which files were ignored and why."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..case import SEQUENCES, Case, Geometry, Volume
from ..errors import CaseLoadError, GeometryError, RadiogenError
from . import maps as _maps
from .detect import (DICOM_EXTENSIONS, PACK_EXTENSIONS, canonical_sequence_name, detect_sequence,
                     strip_extension)
from .dicom import (SeriesInfo, first_header, has_dicom, is_dicom_file, list_series,
                    read_series, series_matches)
from .pack import is_slice_pack, load_pack, pack_info
from .synthetic import has_synth_suffix
from .volume import (file_header, file_map, file_synthetic, image_to_volume, load_volume,
                     volume_extension, volume_warnings)

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
OVERRIDE_VALUES = ", ".join(SEQUENCES) + ", labels, ignore"


class GridError(CaseLoadError, GeometryError):
    """The sequences (or labels) of a case cannot be put on one grid."""


# -- the items of a case folder -----------------------------------------------------------------
@dataclass
class Item:
    """One candidate volume of a case: a file or a DICOM series."""

    display: str                       # shown in messages: file name, "sub/ 'series'"
    path: Path                         # file, or the DICOM folder
    keys: Tuple[str, ...]              # what an override may name it by (lower case)
    series: Optional[SeriesInfo] = None
    name: Optional[str] = None         # t1 t1ce t2 flair labels ignore
    how: str = "detected"              # detected | override
    synthetic: Optional[bool] = None   # a synthetic volume of the package (None: not checked)
    ignored: Optional[str] = None      # why the reader leaves it out (a result map of ours)


def _is_pack(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(PACK_EXTENSIONS)


def _file_item(p: Path, root: Path) -> Item:
    rel = os.path.relpath(p, root)
    keys = {p.name.lower(), strip_extension(p.name).lower(), rel.lower(), str(p).lower()}
    name, kind = detect_sequence(p.name)
    it = Item(display=p.name, path=p, keys=tuple(keys), name=name if name else None)
    rmap = _maps.from_name(p.name)
    if rmap is not None:                 # a heatmap / differentiation map of ours: no sequence
        it.name, it.ignored = "ignore", _maps.reason(rmap, "name")
    return it


def _dicom_items(folder: Path, root: Path) -> List[Item]:
    infos = list_series(folder)
    rel = "" if folder == root else os.path.relpath(folder, root)
    out = []
    for s in infos:
        name, _ = detect_sequence(s.description) if s.description else (None, "image")
        if name is None and len(infos) == 1:
            name, _ = detect_sequence(folder.name)
        disp = (f"{rel}/ " if rel else "") + (f"series '{s.description}'" if s.description
                                             else f"series {s.uid}")
        keys = {s.uid.lower(), s.description.lower()} - {""}
        if rel:
            keys |= {rel.lower(), folder.name.lower(), str(folder).lower()}
        out.append(Item(display=disp, path=folder, keys=tuple(keys), series=s, name=name))
    return out


@dataclass
class FolderScan:
    """What a folder holds, without reading pixel data."""

    folder: Path
    files: List[Path] = field(default_factory=list)          # volume files directly inside
    dicom_here: bool = False                                 # DICOM files directly inside
    dicom_subs: List[Path] = field(default_factory=list)     # subfolders with DICOM files
    case_subs: List[Path] = field(default_factory=list)      # subfolders holding volume files
    other_subs: List[Path] = field(default_factory=list)
    packs: List[Path] = field(default_factory=list)
    others: List[Path] = field(default_factory=list)         # files we do not read
    depth: int = 0

    @cached_property
    def kind(self) -> str:
        """``case``, ``cohort``, ``empty`` or ``none`` (nothing readable)."""
        if self.files and self.groups:
            return "cohort"                 # a flat folder of several patients' files
        if self.files or self.dicom_here:
            return "case"
        if self.dicom_subs:
            named = [d for d in self.dicom_subs if detect_sequence(d.name)[0] is not None]
            if named or not (self.case_subs or self.packs):
                # T1/ FLAIR/ ... subfolders, or a scanner/PACS export's 001/ 003/ ... (a
                # subfolder per series of one patient's study): one case; patient folders of
                # DICOM: a cohort
                if named or len(self.dicom_subs) == 1 or self.one_study \
                        or self.series_of_one_patient:
                    return "case"
                return "cohort"
        if self.case_subs or self.packs or self.other_subs and self._nested_cases():
            return "cohort"
        if not (self.other_subs or self.others):
            return "empty"
        return "none"

    @cached_property
    def _sub_studies(self) -> Optional[List[Tuple[str, str]]]:
        """(PatientID, StudyInstanceUID) of each DICOM subfolder's first file, when they are
        all one patient's; None where a header cannot be read, names no study or another
        patient (the reading stops there: a cohort of patients costs two header reads)."""
        keys: List[Tuple[str, str]] = []
        for d in self.dicom_subs:
            h = first_header(d)
            if h is None or not h["study_uid"] or (keys and h["patient_id"] != keys[0][0]):
                return None
            keys.append((h["patient_id"], h["study_uid"]))
        return keys

    @cached_property
    def one_study(self) -> bool:
        """The DICOM subfolders all hold series of one study of one patient (their first files
        share a StudyInstanceUID and PatientID): the subfolder-per-series layout of a scanner or
        PACS export, one case whatever the subfolders are named."""
        keys = self._sub_studies
        return bool(keys) and len(set(keys)) == 1

    @cached_property
    def series_of_one_patient(self) -> bool:
        """The DICOM subfolders are one patient's series from several studies, at least one
        study spanning several subfolders: a subfolder-per-series export of more than one
        study, read as one case (whose loading refuses studies of different dates, see
        :func:`_check_one_session`), not as a cohort of one-series cases. Subfolders that
        are each a study of their own stay a cohort."""
        keys = self._sub_studies
        return bool(keys) and bool(keys[0][0]) and len(set(keys)) < len(keys)

    @cached_property
    def groups(self) -> Dict[str, List[Path]]:
        """A flat cohort (``P1_t1.nii.gz P1_flair.nii.gz P2_t1.nii.gz ...``): files grouped by
        case id, when the folder's sequences clash but every group is clean; else ``{}``."""
        return file_groups(self.files)

    def _nested_cases(self) -> bool:
        if self.depth >= 2:
            return False
        return any(scan_folder(s, _depth=self.depth + 1).kind in ("case", "cohort")
                   for s in self.other_subs)


def file_groups(files: Sequence[Path]) -> Dict[str, List[Path]]:
    """See :attr:`FolderScan.groups`."""
    det = {f: detect_sequence(f.name)[0] for f in files}
    names = [n for n in det.values() if n]
    if len(names) == len(set(names)):
        return {}                           # no clash: one case
    groups: Dict[str, List[Path]] = {}
    for f in files:
        if _maps.from_name(f.name) is not None:
            continue                        # a result map of ours: in no case's group
        if det[f] and not _SUFFIX_RE.match(strip_extension(f.name)):
            return {}                       # not <id>_<sequence> naming: not a flat cohort
        groups.setdefault(_case_id_from_file(f), []).append(f)
    if len(groups) < 2:
        return {}
    for g in groups.values():
        ns = _names_preferring_acquired([(det[f], f) for f in g if det[f]])
        if not ns or len(ns) != len(set(ns)):
            return {}
    return groups


def _names_preferring_acquired(named: Sequence[Tuple[str, Path]]) -> List[str]:
    """The sequence names of ``(name, file)`` pairs, a ``_synth`` file left out where an
    acquired file has its name (as :func:`load_case` reads the group)."""
    acquired = {n for n, f in named if not has_synth_suffix(f.name)}
    return [n for n, f in named if not (has_synth_suffix(f.name) and n in acquired)]


def _entries(folder: Path) -> List[Tuple[str, bool]]:
    """(name, is_dir) of the visible entries, sorted; one directory read."""
    try:
        with os.scandir(folder) as it:
            return sorted((e.name, e.is_dir()) for e in it if not e.name.startswith("."))
    except OSError as e:
        raise CaseLoadError(f"{folder}: cannot list the folder ({e.strerror or e})") from None


def _maybe_dicom_name(name: str) -> bool:
    suffix = os.path.splitext(name)[1].lower()
    return suffix in DICOM_EXTENSIONS or suffix == "" or suffix[1:].isdigit()


def _any_dicom(folder: Path, names: Sequence[str], limit: int = 20) -> bool:
    cands = [n for n in names if _maybe_dicom_name(n)][:limit]
    return any(is_dicom_file(folder / n) for n in cands)


def _peek(folder: Path) -> str:
    """What a subfolder holds, cheaply: ``volumes``, ``dicom``, ``packs`` or ``other``."""
    try:
        files = [n for n, d in _entries(folder) if not d]
    except CaseLoadError:
        return "other"
    if any(volume_extension(n) for n in files):
        return "volumes"
    if _any_dicom(folder, files):
        return "dicom"
    if any(n.lower().endswith(PACK_EXTENSIONS) and is_slice_pack(folder / n) for n in files):
        return "packs"
    return "other"


def scan_folder(folder: PathLike, *, _depth: int = 0) -> FolderScan:
    """Classify what ``folder`` holds (see :attr:`FolderScan.kind`) without reading images."""
    folder = Path(folder)
    sc = FolderScan(folder=folder, depth=_depth)
    for name, is_dir in _entries(folder):
        p = folder / name
        if is_dir:
            what = _peek(p)
            if what in ("volumes", "packs"):     # a case folder, or a folder of packs
                sc.case_subs.append(p)
            elif what == "dicom":
                sc.dicom_subs.append(p)
            else:
                sc.other_subs.append(p)
        elif volume_extension(name):
            sc.files.append(p)
        elif _is_pack(p) and is_slice_pack(p):
            sc.packs.append(p)
        else:
            sc.others.append(p)
    # an unreadable .h5 beside real packs is a (bad) case of the cohort, not an unrelated file:
    # listing it lets batch modes report it instead of skipping it silently
    if sc.packs:
        bad = [q for q in sc.others if _is_pack(q)]
        sc.packs.extend(bad)
        sc.packs.sort()
        sc.others = [q for q in sc.others if q not in bad]
    if not sc.files and sc.others and _any_dicom(folder, [q.name for q in sc.others]):
        sc.dicom_here = True
    return sc


def _pictures_below(folder: Path, limit_dirs: int = 50) -> bool:
    n = 0
    for root, dirs, files in os.walk(folder):
        if any(f.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"))
               for f in files):
            return True
        n += 1
        if n > limit_dirs:
            break
    return False


def _not_a_case(sc: FolderScan) -> CaseLoadError:
    f = sc.folder
    kind = sc.kind
    if kind == "empty":
        return CaseLoadError(f"{f}: empty folder (no image files)")
    if kind == "cohort":
        cases = list_cases(f)
        names = ", ".join(p.name for p in cases[:5]) + (", ..." if len(cases) > 5 else "")
        return CaseLoadError(f"{f}: a cohort folder of {len(cases)} case(s) ({names}); open one "
                             "case, or use a batch command on the folder")
    hint = ""
    if _pictures_below(f):
        hint = ("; it holds 2D pictures (.png/.jpg), which are not MRI volumes (tumour-type "
                "triage of 2D slices: radiogen classify-slices)")
    return CaseLoadError(f"{f}: no MRI volumes found (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, "
                         f"DICOM or .h5 slice packs){hint}")


# -- overrides ----------------------------------------------------------------------------------
def normalise_overrides(overrides: Optional[Mapping[str, str]]) -> List[Tuple[str, str]]:
    """``{file: seq}`` or ``{seq: file}`` -> ``[(file_key_lower, canonical_seq)]``."""
    out: List[Tuple[str, str]] = []
    for k, v in (overrides or {}).items():
        k, v = str(k).strip(), str(v).strip()
        cv = canonical_sequence_name(v)
        ck = canonical_sequence_name(k)
        if cv is not None:
            out.append((k, cv))
        elif ck is not None:
            out.append((v, ck))
        else:
            raise CaseLoadError(f"cannot read the sequence override '{k}={v}': one side must be "
                                f"a sequence name ({OVERRIDE_VALUES})")
    return out


def _matches(item: Item, key: str) -> bool:
    k = key.lower()
    if k in item.keys:
        return True
    try:
        if str(Path(key).expanduser().resolve()).lower() in {
                str(Path(x).resolve()).lower() for x in (item.path,) if item.series is None}:
            return True
    except OSError:  # pragma: no cover
        pass
    return bool(item.series is not None and series_matches(item.series, key))


def _apply_overrides(items: List[Item], overrides: List[Tuple[str, str]], where: Path) -> None:
    for key, seq in overrides:
        hits = [it for it in items if _matches(it, key)]
        if not hits:
            listing = ", ".join(it.display for it in items) or "none"
            raise CaseLoadError(f"{where}: the override '{key}={seq}' names no file of the case "
                                f"(files: {listing})")
        if len(hits) > 1:
            # a name said in full wins over names that merely contain it (a series UID that
            # begins another's, 1.2.3.1 and 1.2.3.10)
            exact = [it for it in hits if key.lower() in it.keys]
            if len(exact) == 1:
                hits = exact
        if len(hits) > 1:
            if any(h.series is not None for h in hits):
                raise CaseLoadError(f"{where}: the override '{key}={seq}' matches "
                                    f"{len(hits)} series ({'; '.join(_ids(h) for h in hits)}); "
                                    "name the series by its UID")
            raise CaseLoadError(f"{where}: the override '{key}={seq}' matches "
                                f"{len(hits)} files ({', '.join(h.display for h in hits)}); "
                                "use the full file name")
        hits[0].name = seq
        hits[0].how = "override"


# -- loading ------------------------------------------------------------------------------------
def _bbox(g: Geometry) -> np.ndarray:
    c = g.corners_lps()
    half = 0.5 * float(max(g.spacing))
    return np.stack([c.min(axis=0) - half, c.max(axis=0) + half])


def _overlap(a: Geometry, b: Geometry) -> float:
    """Volume (ml) of the intersection of the two grids' bounding boxes (0 if disjoint)."""
    ba, bb = _bbox(a), _bbox(b)
    lo = np.maximum(ba[0], bb[0])
    hi = np.minimum(ba[1], bb[1])
    ext = np.clip(hi - lo, 0, None)
    return float(np.prod(ext)) / 1000.0


def _fmt_box(g: Geometry) -> str:
    b = _bbox(g)
    return "[" + ", ".join(f"{lo:.0f}..{hi:.0f}" for lo, hi in zip(b[0], b[1])) + "] mm"


def _vol_name(v: Volume) -> str:
    """A volume as messages name it: its file's name; a DICOM series by its description."""
    m = v.meta or {}
    if m.get("format") == "dicom" and m.get("series_uid"):
        d = m.get("series_description")
        return f"series '{d}'" if d else f"series {m['series_uid']}"
    return Path(v.path or "?").name


def check_grids(case: Case) -> None:
    """Raise :class:`GridError` when sequences do not overlap in space; labels whose grid
    matches no sequence grid are left out of the case, with a warning in its meta."""
    ref = case.reference
    g = case.sequences[ref].geometry
    for s, v in case.sequences.items():
        if s == ref:
            continue
        if _overlap(v.geometry, g) <= 0.0:
            raise GridError(f"{case.source}: {s} ({_vol_name(v)}, LPS box "
                            f"{_fmt_box(v.geometry)}) and {ref} ({_vol_name(case.sequences[ref])}, "
                            f"{_fmt_box(g)}) do not overlap in space, so they cannot be put on "
                            "one grid (different patients or sessions?)")
    if case.labels is not None:
        lg = case.labels.geometry
        hit = next((s for s in (ref,) + tuple(case.sequences) if
                    case.sequences[s].geometry.same_grid(lg)), None)
        if hit is None:
            # the images are still a case: the labels are left out (no Dice, no reference
            # labels) and that is said, rather than refusing to segment or predict
            case.meta.setdefault("warnings", []).append(
                f"labels ({Path(case.labels.path or '?').name}, shape "
                f"{'x'.join(map(str, lg.shape))}, spacing "
                f"{'x'.join(f'{x:.3g}' for x in lg.spacing)} mm) are on no sequence's grid "
                "and are left out (no Dice or reference labels for this case); labels must "
                "share the grid of one sequence")
            case.meta["labels_left_out"] = Path(case.labels.path or "?").name
            case.labels = None
            return
        case.meta["labels_grid"] = hit


def _where(it: Item) -> str:
    """An item as the readers' messages name it: the file's path; a DICOM series' folder and
    the series."""
    return f"{it.path} ({it.display})" if it.series is not None else str(it.path)


def _ids(it: Item) -> str:
    """An item with what tells it from another of the same name: a series' number, file count
    and UID (which ``--sequence UID=...`` takes)."""
    return f"{it.display} ({it.series.ids})" if it.series is not None else it.display


def _load_item(it: Item) -> Volume:
    labels = it.name == "labels"
    if it.series is not None:
        warnings: List[str] = []
        img = read_series(it.series, warnings)
        meta: Dict[str, Any] = {"format": "dicom", "series_uid": it.series.uid,
                                "series_description": it.series.description,
                                "n_files": len(it.series.files),
                                "source_pixel_type": img.GetPixelIDTypeAsString()}
        if warnings:
            meta["reader_warnings"] = " | ".join(warnings)[:1000]
        return image_to_volume(img, where=_where(it), labels=labels,
                               path=str(it.path), meta=meta)
    return load_volume(it.path, labels=labels)


_SUFFIX_RE = re.compile(r"^(.*?)[_\-.](t1|t1ce|t1c|t1n|t2|t2w|t2f|flair|fla|seg)"
                        r"(?:[_\-.](?:synth|synthetic))?$", re.I)


def case_id_of(path: PathLike) -> str:
    """The case id a path stands for before it is loaded (``TCGA_CS_4943.h5`` ->
    ``TCGA_CS_4943``, ``P1_flair.nii.gz`` -> ``P1_flair``, a folder -> its name)."""
    name = Path(path).name
    return strip_extension(name) or name


#: patient identifiers of the public collections the shipped models were trained on: a TCGA
#: barcode (``TCGA-FG-6692``, also with ``_``), a BraTS 2021 id, a UCSF-PDGM id
_PATIENT_ID_RE = re.compile(r"(?<![A-Za-z0-9])(TCGA[-_][A-Z0-9]{2}[-_][A-Z0-9]{4}"
                            r"|BraTS20\d\d_\d{5}|UCSF-PDGM-\d{3,4})(?![A-Za-z0-9])",
                            re.IGNORECASE)


def patient_ids_in(names: Iterable[str]) -> List[str]:
    """The patient identifiers (see ``_PATIENT_ID_RE``) written in ``names`` (file and folder
    names), in order of appearance, each once (``-``/``_`` and case ignored)."""
    out: List[str] = []
    seen = set()
    for n in names:
        for m in _PATIENT_ID_RE.finditer(str(n)):
            key = m.group(1).upper().replace("_", "-")
            if key not in seen:
                seen.add(key)
                out.append(m.group(1))
    return out


def _patient_ids(case_id: str, source: Path, items: List[Item]) -> List[str]:
    """Patient ids a case's file and folder names (and its DICOM series' PatientID) carry
    besides its case id (a case read from ``TCGA-FG-6692/native/`` is the case ``native`` of
    patient ``TCGA-FG-6692``): the in-sample check looks at them too. Only where the names
    agree on one patient, and none when the case id is itself a patient id."""
    if patient_ids_in([case_id]):
        return []
    ids = (patient_ids_in([it.path.name for it in items])
           # a DICOM series' PatientID (0010,0020), where it is such an id
           or patient_ids_in([it.series.patient_id for it in items
                              if it.series is not None and it.name != "ignore"])
           or patient_ids_in([source.parent.name]))    # the folder holding the case
    return ids if len(ids) == 1 else []


def _case_id_from_file(p: Path) -> str:
    stem = strip_extension(p.name)
    m = _SUFFIX_RE.match(stem)
    return m.group(1) if m and m.group(1) else stem


def _set_reference(case: Case, reference: Optional[str]) -> None:
    if reference is None:
        return
    r = canonical_sequence_name(reference)
    if r not in case.sequences:
        raise CaseLoadError(f"{case.source}: reference sequence '{reference}' is not in the case "
                            f"(it has {', '.join(case.present) or 'none'})")
    case.meta["reference"] = r


PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def _not_a_volume(p: Path) -> str:
    """Why a file is not a case, said for a 2D picture in so many words."""
    expected = ("a 3D volume (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), a DICOM series folder "
                "or a TCGA-LGG .h5 slice pack")
    if p.suffix.lower() in PICTURE_EXTENSIONS:
        return (f"a 2D picture ({p.suffix.lower()[1:].upper()}) is not an MRI case; the models "
                f"need {expected} (a folder of 2D slices is for `radiogen classify-slices`)")
    return f"unsupported file type; expected {expected}"


def _check_not_blank(vol: Volume, name: str, where: str) -> None:
    """A sequence whose voxels all hold one value carries no image: refuse it by name (the
    models would otherwise read it as a real, featureless scan and answer without a word)."""
    a = vol.array
    lo, hi = float(a.min()), float(a.max())
    if lo == hi:
        raise CaseLoadError(f"{where}: the {name} image is blank (every voxel is {lo:g}); "
                            "remove it from the case (a missing sequence can be synthesised) "
                            "or replace the file")


def _item_synthetic(it: Item) -> bool:
    """A file item that is one of the package's synthetic volumes (name or header)."""
    if it.series is not None:
        return False
    if it.synthetic is None:
        it.synthetic = file_synthetic(it.path) is not None
    return bool(it.synthetic)


def _acquired_over_synthetic(a: Item, b: Item) -> Optional[Tuple[Item, Item]]:
    """Of two detected images claiming one sequence, ``(acquired, synthetic)`` when exactly
    one is a synthetic volume of the package (a ``radiogen synthesize`` output copied into the
    case folder): the acquired scan is read, the synthetic one left aside. None otherwise
    (labels, a choice made by an override, two acquired or two synthetic files)."""
    if a.name in (None, "labels", "ignore") or "override" in (a.how, b.how):
        return None
    sa, sb = _item_synthetic(a), _item_synthetic(b)
    if sa == sb:
        return None
    return (b, a) if sa else (a, b)


def _assemble(items: List[Item], root: Path, case_id: str, reference: Optional[str],
              source: Path, meta: Dict[str, Any], skip_unreadable: bool = False) -> Case:
    by_name: Dict[str, Item] = {}
    unknown: List[Item] = []
    set_aside: List[Item] = []
    for it in items:
        if it.series is not None or it.how == "override" or it.name == "ignore":
            continue
        # what the package recorded in the file's header (one header read per file)
        head = file_header(it.path)
        fm = file_map(it.path, head)
        if fm is not None:
            # a result map of ours under a name that does not say so: not a sequence
            it.name, it.ignored = "ignore", _maps.reason(fm[0], fm[1])
            continue
        prov = file_synthetic(it.path, head)
        it.synthetic = prov is not None
        if it.name is None and prov is not None and prov.get("sequence"):
            # a name that says nothing, but a header of ours that names the sequence
            it.name = prov["sequence"]
    ignored = [it for it in items if it.name == "ignore" and it.ignored]
    for it in ignored:
        log.debug("%s: %s ignored: %s", root, it.display, it.ignored)
    _check_one_patient(items, root)
    _check_one_session(items, root)
    for it in items:
        if it.name == "ignore":
            continue
        if it.name is None:
            unknown.append(it)
            continue
        if it.name in by_name:
            a, b = by_name[it.name], it
            pick = _acquired_over_synthetic(a, b)
            if pick is not None:
                by_name[it.name] = pick[0]
                set_aside.append(pick[1])
                continue
            what = "labels" if it.name == "labels" else f"sequence '{it.name}'"
            if a.series is None and b.series is None:
                raise CaseLoadError(f"{root}: two files claim the {what}: {a.display} and "
                                    f"{b.display}; choose with --sequence FILE=ignore (or "
                                    "FILE=<sequence>)")
            # DICOM series of one description: their UIDs tell them apart (an override by
            # the description would match them all)
            claim = [x for x in items if x.name == it.name]
            n = "two" if len(claim) == 2 else str(len(claim))
            whom = "series" if all(x.series is not None for x in claim) else "files"
            key = "UID" if whom == "series" else "UID (or FILE)"
            raise CaseLoadError(f"{root}: {n} {whom} claim the {what}: "
                                f"{'; '.join(_ids(x) for x in claim)}; leave one out with "
                                f"--sequence {key}=ignore (or name it with --sequence "
                                f"{key}=SEQ)")
        by_name[it.name] = it
    seq_items = {k: v for k, v in by_name.items() if k in SEQUENCES}
    if not seq_items:
        also = ("; ignored: " + "; ".join(f"{it.display} ({it.ignored})" for it in ignored)
                if ignored else "")
        if unknown:
            if all(u.series is not None for u in unknown):
                # DICOM series whose descriptions do not say the sequence: named by
                # description, or by UID where descriptions repeat
                descs = [u.series.description for u in unknown]
                listing = ", ".join(_ids(u) if descs.count(u.series.description) > 1
                                    else u.display for u in unknown)
                raise CaseLoadError(f"{root}: no recognised sequence (t1, t1ce, t2, flair) "
                                    f"among the DICOM series: {listing}; name them with "
                                    f"--sequence 'DESCRIPTION=SEQ' (or UID=SEQ){also}")
            listing = ", ".join(u.display for u in unknown)
            raise CaseLoadError(f"{root}: no recognised sequence (t1, t1ce, t2, flair) among: "
                                f"{listing}; name them with --sequence FILE=SEQ{also}")
        raise CaseLoadError((f"{root}: no image sequence, only labels "
                             f"({by_name['labels'].display})" if "labels" in by_name
                             else f"{root}: no image sequence found") + also)
    unreadable: Dict[str, str] = {}

    def read(name: str, it: Item) -> Optional[Volume]:
        try:
            v = _load_item(it)
            if name != "labels":
                _check_not_blank(v, name, _where(it))
            return v
        except RadiogenError as e:
            if not skip_unreadable:
                if isinstance(e, CaseLoadError) and any(s != name for s in seq_items):
                    # the way on without it, which the reader does not take for the user
                    key = it.series.uid if it.series is not None else it.path.name
                    raise CaseLoadError(f"{e} (to read the case without this file, as if its "
                                        f"{name} were missing: --sequence '{key}=ignore')"
                                        ) from None
                raise
            unreadable[name] = str(e)            # one line, naming the file
            return None
    sequences = {s: read(s, seq_items[s]) for s in SEQUENCES if s in seq_items}
    sequences = {s: v for s, v in sequences.items() if v is not None}
    if not sequences:
        raise CaseLoadError(next(iter(unreadable.values())))
    labels = read("labels", by_name["labels"]) if "labels" in by_name else None
    meta = dict(meta)
    if unreadable:
        # the files that could not be read, left out: the rest of the case is shown
        meta["unreadable"] = unreadable
        seq_items = {k: v for k, v in seq_items.items() if k not in unreadable}
    meta["files"] = {s: it.display for s, it in by_name.items() if s not in unreadable}
    # what the readers decided or printed (qform/sform, library warnings), said per file
    said = [f"{s} ({seq_items[s].display}): {w}" for s, v in sequences.items()
            for w in volume_warnings(v)]
    if labels is not None:
        said += [f"labels ({by_name['labels'].display}): {w}" for w in volume_warnings(labels)]
    if said:
        meta["warnings"] = said
    synthetic = [s for s in sequences if sequences[s].synthetic]
    if synthetic:
        # read back as generated, not acquired: every result lists them (Case.synthetic_inputs)
        meta["synthetic"] = synthetic
        info = dict(meta.get("synthesized") or {})
        for s in synthetic:
            vm = sequences[s].meta
            info[s] = {k: vm[k] for k in ("sources", "model") if vm.get(k)}
            info[s]["file"] = seq_items[s].display
        meta["synthesized"] = info
    if set_aside:
        meta["synthetic_set_aside"] = [
            f"{it.display} (synthetic {it.name}; the acquired {by_name[it.name].display} is "
            "read)" for it in set_aside]
    overridden = [f"{it.display}={s}" for s, it in by_name.items() if it.how == "override"]
    if overridden:
        meta["overrides"] = overridden
    if unknown:
        meta["unrecognised"] = [u.display for u in unknown]
    if ignored:
        # the package's own result maps copied beside the scans: left out, and said
        meta["ignored_outputs"] = [f"{it.display} ({it.ignored})" for it in ignored]
    pids = _patient_ids(case_id, source, items)
    if pids:
        meta["patient_ids"] = pids
    case = Case(case_id=case_id, sequences=sequences, labels=labels, source=str(source),
                kind="volume", meta=meta)
    _set_reference(case, reference)
    check_grids(case)
    return case


def _series_by(items: List[Item], field_name: str) -> Dict[str, List[Item]]:
    """The DICOM series of ``items`` not left out with ``ignore``, grouped by one of their
    header fields (e.g. ``patient_id``); series without it are in no group."""
    groups: Dict[str, List[Item]] = {}
    for it in items:
        key = getattr(it.series, field_name, "") if it.series is not None else ""
        if key and it.name != "ignore":
            groups.setdefault(key, []).append(it)
    return groups


def _series_listing(what: str, groups: Dict[str, List[Item]]) -> str:
    """``<what> 1: <series>, ...; <what> 2: ...`` (each series by description, number and
    UID; never the groups' keys, which may identify the patient)."""
    return "; ".join(f"{what} {i}: " + ", ".join(_ids(x) for x in its)
                     for i, its in enumerate(groups.values(), 1))


def _check_one_patient(items: List[Item], root: Path) -> None:
    """Refuse a case whose DICOM series (those not left out with ``ignore``) belong to
    different patients (PatientID): read together they would be segmented as one patient. The
    message names the series of each patient, not the patients' ids."""
    by_patient = _series_by(items, "patient_id")
    if len(by_patient) < 2:
        return
    groups = _series_listing("patient", by_patient)
    raise CaseLoadError(f"{root}: DICOM series of {len(by_patient)} different patients "
                        f"(PatientID) in one case ({groups}); open one patient's series on "
                        "their own (a folder per patient), or leave the other patient's series "
                        "out with --sequence UID=ignore")


def _check_one_session(items: List[Item], root: Path) -> None:
    """Refuse a case whose DICOM series (those not left out with ``ignore``) come from studies
    acquired on different dates (StudyInstanceUID, StudyDate): read together, a follow-up's
    series would be segmented with the first visit's. Studies of one day, or with no date,
    are read as one session. The message names the series of each study, not the dates."""
    by_study = _series_by(items, "study_uid")
    if len(by_study) < 2:
        return
    dates = {x.series.study_date for its in by_study.values() for x in its}
    if "" in dates or len(dates) < 2:
        return
    groups = _series_listing("study", by_study)
    raise CaseLoadError(f"{root}: DICOM series of {len(by_study)} studies acquired on different "
                        f"dates in one case ({groups}); a case is one session: open one study's "
                        "series on their own (a folder per study), or leave the other study's "
                        "series out with --sequence UID=ignore")


def _folder_items(folder: Path, sc: FolderScan, series: Optional[str]) -> List[Item]:
    items = [_file_item(p, folder) for p in sc.files]
    dicom_folders = ([folder] if sc.dicom_here else []) + list(sc.dicom_subs)
    dicom_items: List[Item] = []
    for d in dicom_folders:
        dicom_items.extend(_dicom_items(d, folder))
    if series:
        chosen = [it for it in dicom_items if series_matches(it.series, series)]
        if not chosen:
            listing = "; ".join(it.display + f" (UID {it.series.uid})" for it in dicom_items)
            raise CaseLoadError(f"{folder}: no DICOM series matches '{series}'; series: "
                                f"{listing or 'none'}")
        dicom_items = chosen
    items.extend(dicom_items)
    return items


def load_case(path: PathLike, *, overrides: Optional[Dict[str, str]] = None,
              series: Optional[str] = None, reference: Optional[str] = None,
              skip_unreadable: bool = False) -> Case:
    """Read a case: a folder of sequence files (any supported format, DICOM series in the folder
    or in subfolders), a single volume file, or a TCGA-LGG HDF5 slice pack.

    ``overrides`` maps file name -> sequence (or sequence -> file name) where the name detection
    is unsure (``{"scan3.nii.gz": "flair"}``; ``ignore`` drops a file). ``series`` picks DICOM
    series by (part of) their description or UID. ``reference`` sets the reference sequence
    (default per :attr:`Case.reference`).

    Either returns a complete :class:`Case` or raises a :class:`RadiogenError` (one line):
    empty folder, nothing recognised (the unknown files are listed), two files claiming one
    sequence, sequences that do not overlap in space, labels on no sequence's grid, and every
    file-level error of :func:`load_volume`.

    ``skip_unreadable=True`` (a viewer: nothing the user can look at is lost) leaves out a
    sequence or labels file that cannot be read (truncated, 2D, 4D, NaN, blank) and says why
    in ``case.meta["unreadable"]`` (``{name: one-line error}``); the case fails only when no
    sequence can be read. The command line reads strictly: an analysis must not go on with a
    sequence left out (or synthesised) because its file was broken.
    """
    p = Path(path)
    ov = normalise_overrides(overrides)
    if not p.exists():
        group = _group_files(p)
        if group is None:
            raise CaseLoadError(f"{p}: no such file or folder")
        items = [_file_item(f, p.parent) for f in group]
        if ov:
            _apply_overrides(items, ov, p)
        return _assemble(items, p.parent, p.name, reference, p, {"format": "file-group"},
                         skip_unreadable)
    if p.is_file():
        if _is_pack(p):
            if ov:
                raise CaseLoadError(f"{p}: sequence overrides do not apply to an HDF5 slice pack")
            case = load_pack(p)
            _set_reference(case, reference)
            return case
        if volume_extension(p) is None:
            if has_dicom(p.parent) and p.suffix.lower() in (".dcm", ".ima", ".dicom", ""):
                return load_case(p.parent, overrides=overrides, series=series,
                                 reference=reference, skip_unreadable=skip_unreadable)
            raise CaseLoadError(f"{p}: {_not_a_volume(p)}")
        it = _file_item(p, p.parent)
        if ov:
            _apply_overrides([it], ov, p)
        if it.name is None and it.how == "detected":
            fm = file_map(p)                     # a result map of ours under another name
            if fm is not None:
                it.name, it.ignored = "ignore", _maps.reason(fm[0], fm[1])
        if it.name is None:
            raise CaseLoadError(f"{p}: cannot tell which sequence this file is from its name; "
                                f"name it with --sequence {p.name}=SEQ ({OVERRIDE_VALUES})")
        if it.name == "labels":
            raise CaseLoadError(f"{p}: a labels file on its own is not a case; open its case "
                                "folder (or the image file) instead")
        if it.name == "ignore" and it.ignored and it.how == "detected":
            raise CaseLoadError(f"{p}: {it.ignored}, so not a case (to read it as one anyway, "
                                f"name its sequence with --sequence {p.name}=SEQ)")
        if it.name == "ignore":
            raise CaseLoadError(f"{p}: the only file of the case is marked 'ignore'")
        return _assemble([it], p.parent, _case_id_from_file(p), reference, p,
                         {"format": "file"})
    sc = scan_folder(p)
    if sc.kind != "case":
        raise _not_a_case(sc)
    items = _folder_items(p, sc, series)
    if not items:
        raise _not_a_case(sc)
    if ov:
        _apply_overrides(items, ov, p)
    return _assemble(items, p, p.name, reference, p, {"format": "folder"}, skip_unreadable)


def _group_files(p: Path) -> Optional[List[Path]]:
    """``folder/P1`` names the files ``folder/P1_*`` of a flat cohort folder (see
    :func:`list_cases`); ``None`` when it does not."""
    if not p.parent.is_dir():
        return None
    try:
        sc = scan_folder(p.parent)
    except CaseLoadError:
        return None
    return sc.groups.get(p.name)


# -- cohorts ------------------------------------------------------------------------------------
def list_cases(folder: PathLike, *, _depth: int = 0) -> List[Path]:
    """The cases inside ``folder`` for batch modes: case folders, HDF5 packs, single volumes.

    A folder whose files are sequences is one case (``[folder]``); a folder of such folders, or
    of ``.h5`` packs, is a cohort (nested cohort folders are walked, up to 3 levels). A flat
    folder holding several patients' files (``P1_t1.nii.gz``, ``P1_flair.nii.gz``,
    ``P2_t1.nii.gz`` ...) gives one path ``folder/P1`` per volume group: it does not exist on
    disk, but :func:`load_case` and :func:`scan_case` accept it. Raises
    :class:`CaseLoadError` when nothing is found.
    """
    p = Path(folder)
    if not p.exists():
        raise CaseLoadError(f"{p}: no such file or folder")
    if p.is_file():
        if _is_pack(p) or volume_extension(p):
            return [p]
        raise CaseLoadError(f"{p}: {_not_a_volume(p)}")
    sc = scan_folder(p)
    kind = sc.kind
    if kind == "case":
        return [p]
    out: List[Path] = [p / g for g in sc.groups]   # flat cohort: folder/<case id> per group
    if kind == "cohort" or (kind == "none" and _depth < 3):
        out.extend(sc.packs)
        for sub in sorted(sc.case_subs + sc.dicom_subs + sc.other_subs):
            if _depth >= 3:
                break
            try:
                out.extend(list_cases(sub, _depth=_depth + 1))
            except CaseLoadError:
                continue
    if not out and _depth == 0:
        if kind in ("empty",):
            raise CaseLoadError(f"{p}: empty folder (no cases)")
        raise _not_a_case(sc) if kind == "none" else CaseLoadError(f"{p}: no cases found")
    return sorted(out)


def scan_case(path: PathLike) -> Dict[str, Any]:
    """A cheap, header-free summary of one case path (for cohort listings): the detected
    sequences and their files, without reading pixel data."""
    p = Path(path)
    if not p.exists():
        group = _group_files(p)
        if group is None:
            raise CaseLoadError(f"{p}: no such file or folder")
        seqs = {}
        labels = None
        for f in group:
            name, kind = detect_sequence(f.name)
            if kind == "labels":
                labels = f.name
            elif name:
                _scan_pick(seqs, name, f.name)
        return {"case_id": p.name, "kind": "volume", "path": str(p), "sequences": seqs,
                "labels": labels, "unrecognised": [], **_scan_synthetic(seqs)}
    if _is_pack(p):
        info = pack_info(p)
        info.update(kind="slices", path=str(p))
        return info
    if p.is_file():
        name, kind = detect_sequence(p.name)
        seqs = {name: p.name} if name and kind == "image" else {}
        return {"case_id": _case_id_from_file(p), "kind": "volume", "path": str(p),
                "sequences": seqs, "labels": None, "unrecognised": [] if name else [p.name],
                **_scan_synthetic(seqs)}
    sc = scan_folder(p)
    seqs: Dict[str, str] = {}
    labels = None
    unknown: List[str] = []
    maps: List[str] = []
    for f in sc.files:
        if _maps.from_name(f.name) is not None:
            maps.append(f.name)                 # a result map of ours (load_case ignores it)
            continue
        name, kind = detect_sequence(f.name)
        if kind == "labels":
            labels = f.name
        elif name:
            _scan_pick(seqs, name, f.name)
        else:
            unknown.append(f.name)
    for d in sc.dicom_subs + ([p] if sc.dicom_here else []):
        name, _ = detect_sequence(d.name) if d != p else (None, "image")
        if name is None and d != p:
            # a subfolder per series (001/ 003/ ...): its first file's SeriesDescription, as
            # load_case reads it (one header read)
            h = first_header(d)
            if h and h["description"]:
                name, _ = detect_sequence(h["description"])
        if name:
            seqs.setdefault(name, d.name + "/")
        else:
            unknown.append((d.name if d != p else ".") + "/ (DICOM)")
    return {"case_id": p.name, "kind": "volume", "path": str(p), "sequences": seqs,
            "labels": labels, "unrecognised": unknown, **_scan_synthetic(seqs),
            **({"ignored_outputs": maps} if maps else {})}


def _scan_pick(seqs: Dict[str, str], name: str, fname: str) -> None:
    """The first file of a sequence, an acquired one over a ``_synth`` one (as
    :func:`load_case` picks)."""
    have = seqs.get(name)
    if have is None or (has_synth_suffix(have) and not has_synth_suffix(fname)):
        seqs[name] = fname


def _scan_synthetic(seqs: Mapping[str, str]) -> Dict[str, Any]:
    """``{"synthetic": [...]}`` for the sequences whose file is named as synthetic (header-free
    scan: a header of ours is only read by :func:`load_case`), else ``{}``."""
    syn = [s for s, f in seqs.items() if has_synth_suffix(f)]
    return {"synthetic": syn} if syn else {}
