"""Copies of the bundled sample case for tests that change its files."""
import shutil
from pathlib import Path

CASE = "BraTS2021_00006"


def sample_copy(dest: Path, shift=(0.0, 0.0, 0.0), keep=("t1", "t1ce", "t2", "flair")) -> Path:
    """A copy of the bundled sample case in ``dest`` with its T2 header moved by ``shift`` (mm)
    and only the sequences of ``keep``; its files are named after ``dest`` (the case id)."""
    import SimpleITK as sitk

    from napari_radiogen.core.sample import sample_case_path
    shutil.copytree(sample_case_path(), dest)
    for s in ("t1", "t1ce", "t2", "flair"):
        if s not in keep:
            (dest / f"{CASE}_{s}.nii.gz").unlink()
    for f in dest.glob(f"{CASE}_*"):
        f.rename(dest / f.name.replace(CASE, dest.name))
    if any(shift):
        t2 = dest / f"{dest.name}_t2.nii.gz"
        img = sitk.ReadImage(str(t2))
        img.SetOrigin(tuple(o + d for o, d in zip(img.GetOrigin(), shift)))
        sitk.WriteImage(img, str(t2))
    return dest
