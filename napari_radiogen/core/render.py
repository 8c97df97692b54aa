"""Off-screen 3D renderings for reports (pyvista/VTK; no display server needed with EGL).

:func:`render_3d` draws a translucent brain surface, the tumour regions as coloured surfaces and
heatmap iso-surfaces, and writes a still PNG and optionally a turntable GIF. Arrays are (z, y, x)
with ``spacing_zyx`` in mm, as everywhere in the core: in the canonical LPS voxel order, so x
runs from the patient's right to left, y from anterior to posterior, z from inferior to
superior. The rendering says so: the letters R/L, A/P and S stand beside the volume's faces
(:func:`orientation_marks`) and turn with it in the GIF.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

# BraTS-viewer-like colours for labels 1 / 2 / 4
LABEL_COLOURS = {1: (0.95, 0.25, 0.25), 2: (0.3, 0.85, 0.3), 4: (1.0, 0.85, 0.1)}


def _setup_env() -> None:
    # VTK picks EGL when asked; without a display it otherwise warns about X.
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _grid(arr: np.ndarray, spacing_zyx: Sequence[float], origin_zyx=(0.0, 0.0, 0.0)):
    import pyvista as pv

    nz, ny, nx = arr.shape
    g = pv.ImageData(dimensions=(nx, ny, nz), spacing=(spacing_zyx[2], spacing_zyx[1],
                                                       spacing_zyx[0]),
                     origin=(origin_zyx[2], origin_zyx[1], origin_zyx[0]))
    g.point_data["v"] = np.ascontiguousarray(arr, dtype=np.float32).ravel()
    return g


def _downsample(arr: np.ndarray, factor: int, order: int = 1) -> np.ndarray:
    if factor <= 1:
        return arr
    if order == 0:
        return arr[::factor, ::factor, ::factor]
    return ndimage.zoom(arr.astype(np.float32), 1.0 / factor, order=1)


def _extent_xyz(shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """The (VTK x, y, z) extent in mm of an array laid out as :func:`_grid` lays it out."""
    return np.array([(n - 1) * float(s) for n, s in zip(shape_zyx, spacing_zyx)])[::-1]


def orientation_marks(shape_zyx: Sequence[int], spacing_zyx: Sequence[float],
                      margin: float = 0.08) -> Dict[str, Tuple[float, float, float]]:
    """Where the anatomical letters stand in the rendering's (VTK x, y, z) space of an array of
    ``shape_zyx`` and ``spacing_zyx`` laid out as :func:`_grid` lays it out (origin 0): each
    beside the centre of the face it names, ``margin`` of the volume's largest extent out.
    Canonical LPS voxel order: R at low x, L at high x, A at low y, P at high y, I at low z,
    S at high z."""
    ext = _extent_xyz(shape_zyx, spacing_zyx)
    c = ext / 2.0
    off = margin * float(ext.max())
    out: Dict[str, Tuple[float, float, float]] = {}
    for axis, (low, high) in enumerate((("R", "L"), ("A", "P"), ("I", "S"))):
        for name, sign in ((low, -1.0), (high, 1.0)):
            q = c.copy()
            q[axis] = c[axis] + sign * (ext[axis] / 2.0 + off)
            out[name] = tuple(float(v) for v in q)
    return out


def _surface(mask: np.ndarray, spacing_zyx, sigma: float = 1.0):
    """A smooth iso-surface of a binary mask (None if empty)."""
    if not mask.any():
        return None
    g = _grid(ndimage.gaussian_filter(mask.astype(np.float32), sigma), spacing_zyx)
    s = g.contour([0.5], scalars="v")
    return s if s.n_points else None


def render_3d(*, brain: Optional[np.ndarray], spacing_zyx: Sequence[float],
              labels: Optional[np.ndarray] = None, heatmap: Optional[np.ndarray] = None,
              heat_levels: Sequence[float] = (0.5, 0.75), out_png: os.PathLike,
              out_gif: Optional[os.PathLike] = None, n_frames: int = 24,
              size: Tuple[int, int] = (640, 560), title: Optional[str] = None,
              max_voxels: int = 600_000) -> Dict[str, str]:
    """Render brain surface (translucent), tumour labels and heatmap iso-surfaces.

    ``brain`` is a boolean brain mask (or None), ``labels`` a 0/1/2/4 array, ``heatmap`` float
    in [0, 1]. Large volumes are downsampled to at most ``max_voxels`` for speed. A turntable
    GIF of ``n_frames`` frames is written to ``out_gif`` (none when ``n_frames`` < 1).
    Returns the written paths.
    """
    _setup_env()
    import pyvista as pv

    ref = next(a for a in (brain, labels, heatmap) if a is not None)
    factor = 1
    while np.prod(ref.shape) / factor ** 3 > max_voxels:
        factor += 1
    sp = tuple(float(s) * factor for s in spacing_zyx)

    p = pv.Plotter(off_screen=True, window_size=list(size))
    p.set_background("black")
    if brain is not None:
        s = _surface(_downsample(brain.astype(np.uint8), factor, 0), sp, sigma=1.5)
        if s is not None:
            p.add_mesh(s, color=(0.85, 0.85, 0.85), opacity=0.15, smooth_shading=True)
    if labels is not None:
        lab = _downsample(labels, factor, 0)
        for value, colour in LABEL_COLOURS.items():
            s = _surface(lab == value, sp, sigma=0.8)
            if s is not None:
                p.add_mesh(s, color=colour, opacity=0.55 if value == 2 else 0.9,
                           smooth_shading=True)
    if heatmap is not None:
        h = _downsample(np.clip(heatmap, 0, 1), factor, 1)
        g = _grid(h, sp)
        for lvl, op in zip(heat_levels, (0.35, 0.7, 0.9)):
            if h.max() >= lvl:
                s = g.contour([float(lvl)], scalars="v")
                if s.n_points:
                    p.add_mesh(s, cmap="inferno", scalars=np.full(s.n_points, lvl),
                               clim=(0, 1), opacity=op, show_scalar_bar=False)
    if title:
        p.add_text(title, font_size=10, color="white")
    # I is left out: seen from above, as the views here are, it falls on the nearest letter
    marks = {k: v for k, v in orientation_marks(ref.shape, spacing_zyx).items() if k != "I"}
    p.add_point_labels(np.array(list(marks.values())), list(marks), font_size=18,
                       text_color="white", shape=None, show_points=False, always_visible=True,
                       bold=True)
    # VTK x,y,z = LPS: from anterior/above, framing the whole volume (so its letters too, also
    # where little of it is drawn)
    ext = _extent_xyz(ref.shape, spacing_zyx)
    p.view_vector((0.0, -1.0, 0.6), viewup=(0, 0, 1),
                  bounds=(0.0, float(ext[0]), 0.0, float(ext[1]), 0.0, float(ext[2])))
    p.camera.zoom(1.2)
    out: Dict[str, str] = {}
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    p.screenshot(str(out_png))
    out["png"] = str(out_png)
    if out_gif is not None and n_frames > 0:     # no frames: no GIF (the PNG only)
        from PIL import Image

        frames = []
        step = 360.0 / max(n_frames, 1)
        for _ in range(n_frames):
            p.camera.azimuth = p.camera.azimuth + step
            p.render()
            frames.append(Image.fromarray(p.screenshot(return_img=True)))
        out_gif = Path(out_gif)
        frames[0].save(out_gif, save_all=True, append_images=frames[1:], duration=120, loop=0,
                       optimize=True)
        out["gif"] = str(out_gif)
    p.close()
    return out
