"""DICOM series: find the series in a folder, pick one, read it with SimpleITK/GDCM."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import SimpleITK as sitk

from ..errors import CaseLoadError
from ._util import captured_stderr, sitk_message
from .detect import DICOM_EXTENSIONS

_SKIP_NAMES = {"dicomdir", ".ds_store", "thumbs.db"}


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series in a folder."""

    uid: str
    description: str
    files: Tuple[str, ...]
    folder: str
    modality: str = ""
    patient_id: str = ""
    study_uid: str = ""
    number: str = ""                   # SeriesNumber (0020,0011), as written
    study_date: str = ""               # StudyDate (0008,0020): compared, never shown

    @property
    def label(self) -> str:
        d = self.description or "(no description)"
        return f"'{d}' ({len(self.files)} files, UID {self.uid})"

    @property
    def ids(self) -> str:
        """``series number 3, 155 files, UID 1.2...``: what tells a series from another of
        the same description (the UID is what ``--sequence UID=...`` takes)."""
        num = f"series number {self.number}, " if self.number else ""
        return f"{num}{len(self.files)} files, UID {self.uid}"


def is_dicom_file(path: Union[str, Path]) -> bool:
    """True for ``.dcm``/``.ima`` files and for files with the ``DICM`` preamble marker."""
    p = Path(path)
    if p.name.lower() in _SKIP_NAMES or p.name.startswith("."):
        return False
    if p.suffix and p.suffix.lower() not in DICOM_EXTENSIONS and not p.suffix[1:].isdigit():
        return False                               # IM0001, 1.2.840....7 are checked below
    if not p.is_file():
        return False
    if p.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Union[str, Path], limit: Optional[int] = None) -> List[Path]:
    """DICOM-looking files directly inside ``folder`` (not recursive)."""
    out: List[Path] = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return out
    for p in entries:
        if is_dicom_file(p):
            out.append(p)
            if limit is not None and len(out) >= limit:
                break
    return out


def has_dicom(folder: Union[str, Path]) -> bool:
    return bool(dicom_files(folder, limit=1))


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    try:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
    except RuntimeError:  # pragma: no cover
        return ""


#: the header fields :func:`first_header` reads
_HEADER_TAGS = {"description": "0008|103e", "modality": "0008|0060", "patient_id": "0010|0020",
                "study_uid": "0020|000d", "number": "0020|0011", "study_date": "0008|0020"}


def _read_tags(path: Union[str, Path], noise: List[str]) -> dict:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.LoadPrivateTagsOn()
    with captured_stderr(noise):
        r.ReadImageInformation()
    return {k: _tag(r, t) for k, t in _HEADER_TAGS.items()}


def first_header(folder: Union[str, Path]) -> Optional[dict]:
    """The identifying fields (``description``, ``modality``, ``patient_id``, ``study_uid``,
    ``number``, ``study_date``) of the first DICOM file directly inside ``folder``, one header
    read; ``None`` when there is none or it cannot be parsed."""
    noise: List[str] = []
    for f in dicom_files(folder, limit=3):
        try:
            return _read_tags(f, noise)
        except RuntimeError:
            continue
    return None


def list_series(folder: Union[str, Path]) -> List[SeriesInfo]:
    """All series GDCM can parse in ``folder``; raises :class:`CaseLoadError` when DICOM-looking
    files are there but none can be parsed."""
    folder = Path(folder)
    noise: List[str] = []
    with captured_stderr(noise):
        try:
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        except RuntimeError as e:
            raise CaseLoadError(f"{folder}: cannot scan for DICOM series ({sitk_message(e)})")
    if not uids:
        n = len(dicom_files(folder))
        raise CaseLoadError(f"{folder}: no readable DICOM series ({n} file(s) look like DICOM "
                            "but none could be parsed; broken or not DICOM)")
    out = []
    for uid in uids:
        with captured_stderr(noise):
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        tags: dict = {}
        if files:
            try:
                tags = _read_tags(files[0], noise)
            except RuntimeError:
                pass
        out.append(SeriesInfo(uid=uid, files=files, folder=str(folder),
                              **{k: tags.get(k, "") for k in _HEADER_TAGS}))
    return out


def series_matches(info: SeriesInfo, key: str) -> bool:
    """``key`` names the series: (part of) its description or its UID, case-insensitive."""
    k = str(key).strip().lower()
    return bool(k) and (k == info.uid.lower() or k in info.uid.lower()
                        or k in info.description.lower())


def pick_series(series: Sequence[SeriesInfo], key: Optional[str], folder: Union[str, Path]
                ) -> SeriesInfo:
    """The one series named by ``key`` (or the only one); a clear error otherwise."""
    listing = "; ".join(s.label for s in series)
    if key:
        hits = [s for s in series if series_matches(s, key)]
        exact = [s for s in hits if s.description.lower() == key.lower() or s.uid == key]
        if len(exact) == 1:
            return exact[0]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise CaseLoadError(f"{folder}: no DICOM series matches '{key}'; series: {listing}")
        raise CaseLoadError(f"{folder}: '{key}' matches {len(hits)} DICOM series; be more "
                            f"specific (description or UID): {listing}")
    if len(series) == 1:
        return series[0]
    raise CaseLoadError(f"{folder}: {len(series)} DICOM series, choose one with --series "
                        f"(description or UID): {listing}")


def read_series(info: SeriesInfo, warnings: Optional[List[str]] = None) -> sitk.Image:
    """Read one series as a 3D SimpleITK image (slices sorted by GDCM)."""
    if len(info.files) < 2:
        raise CaseLoadError(f"{info.folder}: DICOM series {info.label} has a single slice (2D); "
                            "a 3D volume is needed")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    noise: List[str] = warnings if warnings is not None else []
    try:
        with captured_stderr(noise):
            img = reader.Execute()
    except RuntimeError as e:
        raise CaseLoadError(f"{info.folder}: cannot read DICOM series {info.label}: "
                            f"{sitk_message(e)}") from None
    text = " ".join(noise)
    if "Non uniform sampling or missing slices" in text:
        m = re.search(r"nonuniformity:\s*([0-9.eE+-]+)", text)
        how = f" (slice positions off by up to {m.group(1)} mm)" if m else ""
        raise CaseLoadError(f"{info.folder}: DICOM series {info.label} has missing slices or "
                            f"non-uniform slice spacing{how}; unreadable or absent files?")
    return img
