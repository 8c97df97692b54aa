"""``radiogen analyze CASE|FOLDER --out DIR``: the one-click analysis, headless.

For each case: load -> synthesise a missing sequence the models need -> segment -> predict IDH,
1p/19q and grade -> Grad-CAM heatmap(s) -> ``DIR/<case_id>/`` with the segmentation (NIfTI on
the case's grid, or .h5 for slice packs), predictions JSON, heatmaps, a de-identified HTML report
and ``analysis.json``. A folder of cases runs as a batch that keeps going past a bad case and
writes ``DIR/summary.csv``; unchanged cases are not recomputed (``--no-cache`` forces it).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="case folder, volume, .h5 pack, or a folder of cases")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--seg-model", default=None)
    parser.add_argument("--pred-model", default=None)
    parser.add_argument("--synth-model", default=None)
    parser.add_argument("--explain", default="idh",
                        help="comma-separated tasks to explain (idh,codel_1p19q,grade) or 'none'")
    parser.add_argument("--method", default="gradcam",
                        choices=["gradcam", "gradcam++", "layercam", "attention"],
                        help="heatmap method of the networks (predict_radiomics is always "
                             "explained by occlusion over its segmented tumour)")
    parser.add_argument("--no-synthesis", action="store_true",
                        help="do not synthesise missing sequences")
    parser.add_argument("--no-render", action="store_true", help="no 3D rendering in reports")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--identified", action="store_true",
                        help="include clinical fields in reports (default: de-identified)")


def run(args: argparse.Namespace) -> int:
    from ..core.errors import RadiogenError
    from ..core.io import list_cases
    from ..core.pipeline import (AnalysisOptions, AnalysisResult, Analyzer, CohortItem,
                                 analyze_cohort, write_outputs)
    from ..core.progress import Progress
    from ._common import ProgressLine, check_out_dir

    tasks = [] if args.explain.strip().lower() == "none" else \
        [t.strip() for t in args.explain.split(",") if t.strip()]
    opts = AnalysisOptions(seg_model=args.seg_model, pred_model=args.pred_model,
                           synth_model=args.synth_model, synthesize_missing=not args.no_synthesis,
                           explain_tasks=tasks, explain_method=args.method, device=args.device)
    analyzer = Analyzer(opts)
    path = Path(args.path)
    if not path.exists():
        raise RadiogenError(f"{path} does not exist")
    out = check_out_dir(args.out)
    try:
        cases = list_cases(path) if path.is_dir() else []
    except RadiogenError:
        cases = []
    is_cohort = path.is_dir() and len(cases) > 1 or (len(cases) == 1 and cases[0] != path)

    if not is_cohort:
        res = None
        with ProgressLine() as show:
            for item in analyzer.analyze(path):
                if isinstance(item, Progress):
                    show(item)
                elif isinstance(item, AnalysisResult):
                    res = item
        paths = write_outputs(res, out, report=not args.no_report,
                              render=not args.no_render, deidentify=not args.identified)
        _print_result(res, paths)
        return 0
    failed = 0
    with ProgressLine() as show:
        for item in analyze_cohort(cases, out, analyzer=analyzer, use_cache=not args.no_cache,
                                   report=not args.no_report, render=not args.no_render,
                                   deidentify=not args.identified):
            if isinstance(item, Progress):
                show(item)
            elif isinstance(item, CohortItem):
                show.reset()
                msg = f" ({item.message})" if item.message else ""
                print(f"{item.case_id}: {item.status}{msg}", flush=True)
                failed += item.status == "failed"
    print(f"summary: {out / 'summary.csv'} ({len(cases)} cases, {failed} failed)")
    return 1 if failed else 0


def _print_result(res, paths) -> None:
    print(f"case {res.case_id}")
    if res.segmentation is not None:
        v = res.segmentation.volumes_ml
        print("  volumes (mL): " + ", ".join(f"{k} {v[k]:.1f}" for k in v))
    if res.prediction is not None:
        for t, probs in res.prediction.tasks.items():
            best = max(probs, key=probs.get)
            print(f"  {t}: {best} {probs[best]:.2f}")
    for e in res.explanations:
        loc = f"{e.localisation:.2f}" if e.localisation is not None else "n/a"
        print(f"  {e.method} {e.task}: localisation {loc}")
    for w in res.warnings:
        print(f"  warning: {w}")
    print("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items()))
    print(f"  report: {paths.get('report_html', '-')}")
