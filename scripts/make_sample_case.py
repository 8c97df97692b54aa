"""Regenerate the bundled sample case ``napari_radiogen/data/BraTS2021_00006``.

It is a brain-cropped copy of the BraTS 2021 training case BraTS2021_00006 (UCSF-PDGM-116,
TCIA, CC BY 4.0): the four sequences and the expert segmentation are cut to the bounding box of
the brain (non-zero voxels of any sequence) plus a small margin. The NIfTI affine is shifted by
the crop offset, so every voxel keeps its physical position (same 1 mm grid as the source).

To keep the package small (about 5.0 MB instead of 9.5 MB), each sequence's intensities
(arbitrary MR units) are rescaled linearly to uint8: ``round(v * 255 / p99.95)`` clipped to
255, where p99.95 is the 99.95th percentile of the brain voxels; brain voxels stay >= 1, so the
brain mask is unchanged. That is finer than the image noise; the segmentation is copied exactly
(uint8). Files are gzip level 9 with a fixed mtime (reproducible bytes).

    python scripts/make_sample_case.py [--src ../shared/data/brats2021/BraTS2021_00006]
                                       [--out napari_radiogen/data/BraTS2021_00006]
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CASE = "BraTS2021_00006"
PARTS = ("t1", "t1ce", "t2", "flair", "seg")


def brain_bbox(arrays, margin: int, shape):
    mask = np.zeros(shape, dtype=bool)
    for a in arrays:
        mask |= a != 0
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + 1 + margin, np.array(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def quantize_uint8(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    brain = a > 0
    hi = float(np.percentile(a[brain], 99.95))
    q = np.clip(np.round(a * (255.0 / hi)), 0, 255)
    q[brain & (q < 1)] = 1
    q[~brain] = 0
    return q.astype(np.uint8)


def save_gz9(img: nib.Nifti1Image, path: Path) -> None:
    """Write a .nii.gz with gzip level 9 and a fixed mtime (reproducible bytes)."""
    tmp = path.with_suffix("")  # .nii
    nib.save(img, tmp)
    with open(tmp, "rb") as src, open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            shutil.copyfileobj(src, gz)
    tmp.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path,
                    default=ROOT.parent / "shared" / "data" / "brats2021" / CASE)
    ap.add_argument("--out", type=Path, default=ROOT / "napari_radiogen" / "data" / CASE)
    ap.add_argument("--margin", type=int, default=3, help="voxels kept around the brain")
    args = ap.parse_args(argv)

    imgs = {p: nib.load(str(args.src / f"{CASE}_{p}.nii.gz")) for p in PARTS}
    shape = imgs["flair"].shape
    seqs = [np.asanyarray(imgs[p].dataobj) for p in PARTS if p != "seg"]
    box = brain_bbox(seqs, args.margin, shape)
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for p, img in imgs.items():
        src = np.asarray(img.dataobj)[box]
        hdr = img.header.copy()
        if p == "seg":
            data = src.astype(np.uint8)
        else:
            data = quantize_uint8(src)
            hdr["descrip"] = b"BraTS2021_00006 brain crop, uint8 rescaled"
        dtype = np.uint8
        # affine of the crop: voxel (0,0,0) of the crop is voxel (lo) of the source
        lo = np.array([s.start for s in box] + [1.0])
        affine = img.affine.copy()
        affine[:, 3] = img.affine @ lo
        hdr.set_data_dtype(dtype)
        hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
        out = nib.Nifti1Image(data, affine, hdr)
        out.set_qform(affine, code=int(img.header["qform_code"]) or 1)
        out.set_sform(affine, code=int(img.header["sform_code"]) or 1)
        path = args.out / f"{CASE}_{p}.nii.gz"
        save_gz9(out, path)
        total += path.stat().st_size
        print(f"{path.name}: {data.shape} {data.dtype} {path.stat().st_size / 1e6:.2f} MB")
    print(f"crop (x, y, z voxels of the source): {[(s.start, s.stop) for s in box]}; "
          f"total {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
