"""Record the README's workflow GIF: open the sample case, Analyze, watch layers appear, 3D view.

    xvfb-run -a python scripts/make_workflow_gif.py docs/workflow.gif

Runs napari under a (virtual) display, drives the Analyze dock widget exactly as a user would
(press Analyze), grabs the window every ~0.4 s while the job runs and a few frames after, and
writes an animated GIF (downscaled, palette-optimised).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def main(out: str = "docs/workflow.gif") -> int:
    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_radiogen.core.sample import sample_case_path
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 850)
    viewer.open(str(sample_case_path()), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    viewer.window.add_dock_widget(w, name="Analyze case", area="right")
    viewer.dims.set_current_step(0, 70)
    app = QApplication.instance()
    frames = []

    def grab(n=1):
        app.processEvents()
        img = viewer.screenshot(canvas_only=False, flash=False)
        im = Image.fromarray(img).convert("RGB")
        im.thumbnail((900, 900))
        frames.extend([im] * n)

    grab(3)
    w.run()
    last = 0.0
    while not w.job.done:
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - last > 0.4:
            grab()
            last = time.perf_counter()
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    grab(6)
    for l in viewer.layers:
        if l.name.endswith("gradcam"):
            l.visible = False
    viewer.dims.ndisplay = 3
    for l in viewer.layers:
        if type(l).__name__ == "Labels":
            l.rendering = "iso_categorical"
    viewer.camera.angles = (0, -30, 60)
    for k in range(8):
        viewer.camera.angles = (0, -30 + 4 * k, 60 + 10 * k)
        grab()
    grab(5)
    frames = [f.quantize(colors=128) for f in frames]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=350, loop=0,
                   optimize=True)
    print(f"wrote {out}: {len(frames)} frames, {Path(out).stat().st_size / 1e6:.2f} MB")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
