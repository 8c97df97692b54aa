"""The bundled sample case (BraTS2021_00006, brain-cropped; UCSF-PDGM, TCIA, CC BY 4.0).

See ``napari_radiogen/data/BraTS2021_00006/README.md`` for its provenance and attribution, and
``scripts/make_sample_case.py`` for how it was made.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CaseLoadError

SAMPLE_CASE_ID = "BraTS2021_00006"
_PARTS = ("t1", "t1ce", "t2", "flair", "seg")


def sample_case_path() -> Path:
    """Folder of the bundled sample case (four sequences + expert segmentation, NIfTI)."""
    path = Path(__file__).resolve().parent.parent / "data" / SAMPLE_CASE_ID
    missing = [p for p in _PARTS if not (path / f"{SAMPLE_CASE_ID}_{p}.nii.gz").is_file()]
    if missing:
        raise CaseLoadError(f"the bundled sample case is incomplete at {path} (missing "
                            f"{', '.join(missing)}); reinstall napari-radiogen")
    return path


def load_sample_case():
    """The sample case as a :class:`~napari_radiogen.core.case.Case`."""
    from .io import load_case

    return load_case(sample_case_path())
