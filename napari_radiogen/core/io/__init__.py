"""Reading and writing cases: NIfTI / NRRD / MetaImage / DICOM volumes, case folders, TCGA-LGG
HDF5 slice packs, sequence-name detection, and writers that put results back on the source grid.

Headless: SimpleITK, nibabel, h5py only (no Qt, napari or torch).
"""
from ._util import percent  # noqa: F401  (a share as messages write it: 64%, 0.54%, <0.01%)
from .cases import (GridError, case_id_of, list_cases, load_case,  # noqa: F401
                    normalise_overrides, scan_case, scan_folder)
from .detect import (VOLUME_EXTENSIONS, canonical_sequence_name, detect_sequence,  # noqa: F401
                     strip_extension)
from .dicom import SeriesInfo, list_series  # noqa: F401
from .pack import load_pack, pack_info  # noqa: F401
from .volume import load_volume, volume_extension  # noqa: F401
from .writers import WriteError, write_pack_mask, write_volume  # noqa: F401

__all__ = [
    "load_volume", "load_case", "list_cases", "detect_sequence", "write_volume",
    "write_pack_mask", "load_pack", "scan_case", "scan_folder", "list_series", "SeriesInfo",
    "GridError", "WriteError", "canonical_sequence_name", "normalise_overrides",
    "strip_extension", "volume_extension", "pack_info", "VOLUME_EXTENSIONS", "case_id_of",
    "percent",
]
