"""Benchmark the Analyze widget inside napari: main-thread stalls and napari overhead.

Opens the bundled sample case in a napari viewer, runs the Analyze widget twice (first run adds
the result layers, the rerun updates them in place) with the installed default models, and
samples the Qt event loop with a 10 ms timer. Reports, per run:

- the worst event-loop gap outside result deliveries (target < 50 ms: the models run on a worker);
- the worst gap overall, and the longest delivery (napari building a layer in the main thread);
- the wall time, beside the same analysis run headless (target: napari <= 1.1x headless).

Speed is measured here, not in the test suite (the suite checks behaviour only). Run it under a
display, e.g. ``xvfb-run -a python scripts/bench_viewer.py [--json] [--device cpu]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_radiogen.core.progress import run
    from napari_radiogen.core.sample import sample_case_path
    from napari_radiogen.napari.diagnostics import EventLoopMeter
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget

    viewer = napari.Viewer(show=True)
    viewer.open(str(sample_case_path()), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    w.device.setCurrentText(args.device)
    viewer.window.add_dock_widget(w, name="Analyze")
    app = QApplication.instance()

    spans = []
    orig = w._stage_done

    def timed(item):
        t = time.perf_counter()
        orig(item)
        spans.append((t, time.perf_counter() + 0.1))   # the repaint follows in the next ticks

    w._stage_done = timed
    rows = []
    for i in range(args.runs):
        spans.clear()
        meter = EventLoopMeter().start()
        t0 = time.perf_counter()
        w.run()
        while not w.job.done:
            app.processEvents()
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        worst = meter.stop()
        rows.append({"run": "new layers" if i == 0 else "in-place rerun",
                     "worst_gap_outside_delivery_ms": 1000 * meter.worst_outside(spans),
                     "worst_gap_ms": 1000 * worst,
                     "longest_delivery_ms": 1000 * max((e - 0.1 - s for s, e in spans),
                                                       default=0.0),
                     "seconds": elapsed})
        if w.job.error is not None:
            print(f"analysis failed: {w.job.error}", file=sys.stderr)
            return 1
    t1 = time.perf_counter()
    run(w.analyzer.analyze(w.case_combo.case()))
    headless = time.perf_counter() - t1
    out = {"device": args.device, "runs": rows, "headless_seconds": headless,
           "napari_over_headless": rows[-1]["seconds"] / headless}
    viewer.close()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{'run':16s} {'gap outside ms':>14s} {'worst gap ms':>12s} "
              f"{'delivery ms':>11s} {'seconds':>8s}")
        for r in rows:
            print(f"{r['run']:16s} {r['worst_gap_outside_delivery_ms']:14.0f} "
                  f"{r['worst_gap_ms']:12.0f} {r['longest_delivery_ms']:11.0f} "
                  f"{r['seconds']:8.2f}")
        print(f"headless {headless:.2f} s; napari / headless = {out['napari_over_headless']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
