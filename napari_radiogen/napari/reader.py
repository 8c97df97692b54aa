"""npe2 reader: case folders, single volumes, DICOM series, TCGA-LGG HDF5 slice packs.

``get_reader(path)`` answers quickly (no pixel data read) with a reader function, or ``None``
for paths this plugin cannot handle, so napari can try another reader. The reader function
loads through :mod:`napari_radiogen.core.io` and returns one image layer per sequence (each at
its physical position, see :mod:`.layers`) and a labels layer with named classes. What the
user must know is said in napari warnings: the readers' warnings (a NIfTI whose qform and
sform disagree: the sform is used), and oblique grids, which napari's 2D view draws without
their tilt (a case whose sequences are on different oblique grids is shown resampled onto the
reference grid, see :func:`.layers.display_case`).

Errors: a file that looks like ours but cannot be read raises the core's
:class:`~napari_radiogen.core.errors.RadiogenError` with its one-line message. napari wraps
reader exceptions in ``ReaderPluginError`` ("Tried opening with napari-radiogen, but
failed. ... Original error from plugin "napari-radiogen": CaseLoadError: <message>") and, in
the GUI, shows that as an error notification; ``viewer.open`` in a script raises it with the
original error as ``original_error`` / ``__cause__``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from .layers import LayerData, case_to_layer_data, image_layer_data, labels_layer_data

PathOrPaths = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PACK_SUFFIXES = (".h5", ".hdf5")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


def _suffix(p: Path, options: Sequence[str]) -> Optional[str]:
    low = p.name.lower()
    return next((s for s in options if low.endswith(s)), None)


def classify(path: Union[str, os.PathLike]) -> Optional[str]:
    """``"case"`` (folder of volumes), ``"dicom"`` (DICOM file or folder), ``"pack"``
    (HDF5), ``"volume"`` (one image file) or ``None`` (not for this plugin). Cheap: looks at
    names and, for extension-less files, the DICOM preamble only."""
    p = Path(path)
    if p.is_dir():
        try:
            entries = sorted(p.iterdir())
        except OSError:
            return None
        files = [e for e in entries if e.is_file() and not e.name.startswith(".")]
        if any(_suffix(e, VOLUME_SUFFIXES) for e in files):
            return "case"
        if any(_suffix(e, PACK_SUFFIXES) for e in files) and len(files) == 1:
            return "pack"
        from ..core.io.dicom import has_dicom
        if has_dicom(p):
            return "dicom"
        # a study folder whose sub-folders hold DICOM series; several sub-folders of volume
        # files are a cohort (radiogen's cohort browser), not one case
        with_volumes = 0
        for sub in (e for e in entries if e.is_dir() and not e.name.startswith(".")):
            try:
                inner = [f for f in sub.iterdir() if f.is_file()]
            except OSError:
                continue
            if any(_suffix(f, VOLUME_SUFFIXES) for f in inner):
                with_volumes += 1
            elif has_dicom(sub):
                return "dicom"
        return "case" if with_volumes == 1 else None
    if not p.is_file():
        return None
    if _suffix(p, VOLUME_SUFFIXES):
        return "volume"
    if _suffix(p, PACK_SUFFIXES):
        return "pack"
    if _suffix(p, DICOM_SUFFIXES):
        return "dicom"
    from ..core.io.dicom import is_dicom_file
    return "dicom" if is_dicom_file(p) else None


def get_reader(path: PathOrPaths) -> Optional[Callable[[PathOrPaths], List[LayerData]]]:
    """npe2 ``get_reader``: a reader function for paths this plugin reads, else ``None``."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None            # stacks of files are not cases
        path = path[0]
    if classify(path) is None:
        return None
    return read_path


def _case_id_from_file(p: Path, sequence: Optional[str]) -> str:
    from ..core.io.detect import strip_extension
    from ..core.io.synthetic import strip_synth_suffix

    stem = strip_synth_suffix(strip_extension(p.name))     # P1_t1ce_synth -> P1_t1ce
    if sequence:
        # BraTS2021_00006_flair -> BraTS2021_00006; BraTS-GLI-00000-000-t2f -> ...-000
        for sep in ("_", "-", "."):
            head, s, tail = stem.rpartition(sep)
            if s and head and tail.lower() in {"t1", "t1ce", "t1c", "t1n", "t2", "t2w", "t2f",
                                                 "flair", "fla", "seg", "labels", "label",
                                                 "mask", "t1w"}:
                return head
    return stem


def read_volume_file(path: Union[str, os.PathLike], tell: bool = True) -> List[LayerData]:
    """One volume file as one layer: labels when the name says seg/label/mask; a result map
    of the package (a heatmap, a differentiation map) as the widgets that make one show it;
    else an image named ``<case> <sequence>`` (the sequence guessed from the file name).
    ``tell``: say what the user must know about the file (napari warnings); off for a result
    the package wrote on a grid the viewer shows already (the cohort browser's)."""
    from ..core.io import load_volume
    from ..core.io.detect import detect_sequence
    from .layers import label_names_for

    p = Path(path)
    seq, kind = detect_sequence(p.name)
    case_id = _case_id_from_file(p, seq)
    vol = load_volume(p)
    if tell:
        _tell_volume(vol, p.name)
    if kind == "labels":
        return [labels_layer_data(vol, case_id=case_id, source=str(p),
                                  label_names=label_names_for(None))]
    if vol.meta.get("radiogen_map"):
        return [_map_layer_data(vol, p, vol.meta["radiogen_map"], case_id)]
    if vol.synthetic and not seq:
        seq = vol.meta.get("sequence")          # a name that says nothing, a header of ours
    name = f"{case_id} {seq}" if seq else case_id
    return [image_layer_data(vol, case_id=case_id, sequence=seq or "image", source=str(p),
                             name=name + (" (synthetic)" if vol.synthetic else ""),
                             **_synthetic_meta(vol))]


def _tell_volume(vol, name: str) -> None:
    """Say what the user must know about one volume file: the readers' warnings (NIfTI
    qform/sform, library notes) and an oblique grid (napari's 2D view draws it untilted)."""
    from ..core.io.volume import volume_warnings
    from .layers import OBLIQUE_DEG, notify, obliquity, offset_2d

    for w in volume_warnings(vol):
        notify(f"{name}: {w}")
    tilt = obliquity(vol.geometry)
    if tilt > OBLIQUE_DEG:
        notify(f"{name}: oblique grid ({tilt:.1f} deg from the scanner axes); napari's 2D view "
               f"draws it without the tilt, up to {offset_2d(vol.geometry):.0f} mm from its "
               "true position, so in 2D it overlays only layers on the same grid, not scans on "
               "other grids: use the 3D view (or open the whole case folder, whose sequences "
               "are shown on one grid)")


def _map_layer_data(vol, p: Path, rmap: dict, case_id: str) -> LayerData:
    """A result map of the package (a heatmap, a differentiation map: its header or name says
    so, ``vol.meta["radiogen_map"]``) as the widgets that make one show it: a heatmap as the
    Explain/Analyze widgets do (``<case> <task> <method>``, ``sequence="heatmap"``, ``task``,
    ``method``, ``model``), a differentiation map as the Synthesis widget does (``<case> <target>
    differentiation map``, ``kind="differentiation-map"``, ``target``, ``sources``, ``model``);
    a result layer (not a case of its own), whose radiogen metadata keeps the map's record, so
    saving it writes a map again whatever the new file's name."""
    from ..core.io.detect import strip_extension
    from ..core.io.maps import HEATMAP, case_of_stem

    case_id = case_of_stem(strip_extension(p.name)) or case_id
    arr = vol.array
    hi = float(arr.max()) if arr.size else 1.0
    meta = {k: rmap[k] for k in ("model",) if rmap.get(k)}
    if rmap.get("kind") == HEATMAP:
        words = [rmap[k] for k in ("task", "method") if rmap.get(k)]
        name = " ".join([case_id] + words + ([] if words else ["heatmap"]))
        meta.update({k: rmap[k] for k in ("task", "method") if rmap.get(k)})
        lo = float(arr.min()) if arr.size else 0.0
        look = dict(sequence="heatmap", opacity=0.5,
                    contrast=(0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else None)
    else:
        t = rmap.get("target")
        name = f"{case_id} {t} differentiation map" if t else f"{case_id} differentiation map"
        meta.update(kind="differentiation-map", **{k: rmap[k] for k in ("target", "sources")
                                                   if rmap.get(k)})
        look = dict(sequence=f"diffmap-{t}" if t else "diffmap", opacity=0.6,
                    contrast=(0.0, max(0.05, hi)))
    return image_layer_data(vol, case_id=case_id, source=str(p), name=name, colormap="inferno",
                            blending="additive", result=True, radiogen_map=dict(rmap),
                            **look, **meta)


def _synthetic_meta(vol) -> dict:
    """A synthetic volume's provenance for its layer's radiogen metadata (as the synthesis
    widget gives its layers: ``sources``, ``model``), so writing the layer keeps it."""
    if not vol.synthetic:
        return {}
    return {k: vol.meta[k] for k in ("sources", "model") if vol.meta.get(k)}


def _mark_synthetic_layers(case, layers: List[LayerData]) -> List[LayerData]:
    """Image layers of a case's synthetic sequences: named ``<case> <seq> (synthetic)`` (as the
    synthesis widget names its layers) with their provenance in the radiogen metadata."""
    for data, kw, kind in layers:
        rg = (kw.get("metadata") or {}).get("radiogen") or {}
        vol = case.sequences.get(rg.get("sequence")) if kind == "image" else None
        if vol is not None and vol.synthetic:
            rg.update(_synthetic_meta(vol))
            if not str(kw.get("name", "")).endswith(" (synthetic)"):
                kw["name"] = f"{kw.get('name')} (synthetic)"
    return layers


def read_path(path: PathOrPaths, **_: Any) -> List[LayerData]:
    """Read ``path`` (case folder, volume, DICOM, HDF5 pack) into napari layer data."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(path)
    kind = classify(p)
    if kind == "volume":
        return read_volume_file(p)
    from ..core.io import load_case

    from .layers import notify

    from ..core.errors import RadiogenError
    try:
        # a file of the case that cannot be read is left out and said, the rest is shown
        case = load_case(p, skip_unreadable=True)
    except RadiogenError as e:
        if e.args and isinstance(e.args[0], str):
            e.args = (viewer_terms(e.args[0]),) + tuple(e.args[1:])
        raise
    tell_unreadable(case)
    for w in case.meta.get("warnings") or []:
        notify(f"{case.case_id}: {w}")
    tell_misregistered(case)
    return _mark_synthetic_layers(case, case_to_layer_data(case, source=str(p)))


def tell_misregistered(case) -> None:
    """Say which sequences of ``case`` look offset from its reference (not co-registered:
    ``core.prepare.case_registration_warnings``); the layers would show them misaligned."""
    from ..core.prepare import case_registration_warnings

    from .layers import notify
    try:
        said = case_registration_warnings(case)
    except Exception:           # a check: never stops a case from opening
        return
    for w in said:
        notify(f"{case.case_id}: {w}")


def unreadable_notes(case) -> List[str]:
    """What the viewer says of the files of ``case`` that could not be read (left out by
    ``load_case(skip_unreadable=True)``), one line each."""
    out = []
    for name, why in (case.meta.get("unreadable") or {}).items():
        what = "the labels are" if name == "labels" else f"{name} is"
        out.append(f"{case.case_id}: {what} not shown, its file could not be read: "
                   f"{viewer_terms(why)} (an analysis synthesises a missing sequence; "
                   "`radiogen analyze` refuses the case until the file is fixed)")
    return out


def tell_unreadable(case) -> None:
    from .layers import notify
    for line in unreadable_notes(case):
        notify(line)


#: the reader's advice speaks of the command line's ``--sequence`` option, which napari's Open
#: cannot pass: in the viewer the same advice is to rename or move the files (DICOM series: to
#: move their files, or to put each in a subfolder named after its sequence)
_SEQ_WORDS = "(t1, t1ce, t2, flair; e.g. CASE_flair.nii.gz)"
#: DICOM series cannot be renamed: in the viewer a series is named by a subfolder of its own
_SEQ_FOLDERS = "T1/, T1CE/, T2/, FLAIR/"
_VIEWER_PHRASES = [
    # DICOM series of one sequence (a flat folder has no series folder to open on its own)
    (r"leave one out with --sequence UID(?: \(or FILE\))?=ignore \(or name it with "
     r"--sequence UID(?: \(or FILE\))?=SEQ\)",
     "move the files of all but one of them out of the case folder (each DICOM file's header "
     "gives its series number and UID), or read the case with the command line, which can "
     "leave one out with --sequence UID=ignore"),
    # DICOM series of two patients in one folder
    (r"open one patient's series on their own \(a folder per patient\), or leave the other "
     r"patient's series out with --sequence UID=ignore",
     "move each patient's files into a folder of their own and open one of those"),
    # DICOM series of studies of different dates in one folder
    (r"open one study's series on their own \(a folder per study\), or leave the other "
     r"study's series out with --sequence UID=ignore",
     "move each study's series into a folder of their own and open one of those"),
    # DICOM series whose descriptions do not say the sequence
    (r"name them with --sequence 'DESCRIPTION=SEQ' \(or UID=SEQ\)",
     f"put each series in a subfolder of its own named after its sequence ({_SEQ_FOLDERS}) "
     "and open the folder holding them (or name them with the command line's --sequence "
     "'DESCRIPTION=SEQ')"),
    (r"choose with --sequence FILE=ignore \(or FILE=<sequence>\)",
     f"move one of them out of the folder, or rename it so its name says its sequence "
     f"{_SEQ_WORDS}"),
    (r"name them with --sequence FILE=SEQ",
     f"rename them so each name says its sequence {_SEQ_WORDS}"),
    (r"name it with --sequence \S+=SEQ \([^)]*\)",
     f"rename it so its name says its sequence {_SEQ_WORDS}"),
    (r"name its sequence with --sequence \S+=SEQ",
     "rename it so its name says its sequence"),
]


def viewer_terms(text: str) -> str:
    """A reader error in the viewer's terms: the command-line options it advises (the
    ``--sequence FILE=SEQ`` naming, ``--series``) become renaming or moving the files."""
    import re
    for pat, rep in _VIEWER_PHRASES:
        text = re.sub(pat, lambda m, r=rep: r, text)
    return text
