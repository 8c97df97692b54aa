"""Regenerate the README screenshots (docs/sample_2d.png, docs/sample_3d.png) of the bundled
sample case. napari needs a display: run under a virtual one,

    xvfb-run -a python scripts/make_screenshots.py [--out docs]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--size", type=int, nargs=2, default=(1200, 760), help="window w h")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="radiogen-shots-")
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        os.environ.setdefault(var, os.path.join(tmp, var.lower()))

    import napari
    from PIL import Image

    viewer = napari.Viewer(show=True, title="napari-radiogen: BraTS2021_00006")
    viewer.window.resize(*args.size)
    layers = viewer.open_sample("napari-radiogen", "brats2021_00006")
    seg = next(ly for ly in layers if isinstance(ly, napari.layers.Labels))
    # the axial slice through the centre of the tumour
    idx = np.argwhere(seg.data > 0).mean(0)
    world = seg.data_to_world(idx)
    viewer.dims.current_step = tuple(int(round(w)) for w in world)
    viewer.dims.set_point(0, float(world[0]))
    viewer.layers.selection.active = seg
    viewer.reset_view()
    args.out.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> None:
        path = args.out / name
        arr = viewer.screenshot(canvas_only=False, flash=False)
        Image.fromarray(arr[..., :3]).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                               dither=Image.Dither.NONE).save(path,
                                                                               optimize=True)
        print(f"{path}: {arr.shape[1]}x{arr.shape[0]}, {path.stat().st_size / 1e3:.0f} kB, "
              f"mean {arr[..., :3].mean():.1f}")

    save("sample_2d.png")

    # 3D: FLAIR as an attenuated MIP, the segmentation as 3D labels (iso surfaces)
    viewer.dims.ndisplay = 3
    flair = next(ly for ly in layers if ly.metadata["radiogen"]["sequence"] == "flair")
    flair.rendering = "attenuated_mip"
    flair.attenuation = 0.02
    lo, hi = flair.contrast_limits
    flair.contrast_limits = (lo, hi * 0.8)
    seg.rendering = "iso_categorical"
    seg.opacity = 1.0
    viewer.reset_view()
    viewer.camera.angles = (-20, 40, 120)
    save("sample_3d.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
