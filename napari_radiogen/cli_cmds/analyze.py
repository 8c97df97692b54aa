"""``radiogen analyze CASE|FOLDER --out DIR``: the one-click analysis, headless.

For each case: load -> synthesise a missing sequence the models need -> segment -> predict IDH,
1p/19q and grade -> Grad-CAM heatmap(s) -> ``DIR/<case_id>/`` with the segmentation (NIfTI on
the case's grid, or .h5 for slice packs), predictions JSON, heatmaps, a de-identified HTML report
and ``analysis.json``. A folder of cases runs as a batch that keeps going past a bad case and
writes ``DIR/summary.csv``; unchanged cases are not recomputed (``--no-cache`` forces it).

One case: its summary is printed (volumes, Dice per region against the case's own labels
when it has them, a BraTS ``*_seg`` or a slice pack's mask, predictions, heatmaps, warnings).
A folder: a line per case, then once for the cohort the cases a model was trained on
(``warning: in-sample: N of M cases were in <model>'s training data (A, B, C and K more):
...``, see ``core.insample``); each case's ``analysis.json`` keeps its own note.

Exit status (also in ``radiogen analyze --help``, :data:`EPILOG`): 0 when every stage that was
asked for ran. One case: 1 when a stage failed (``warning: <stage> skipped: <why>``) but
others gave results, which are written; 2 when nothing could be analysed (neither a
segmentation nor a prediction: the reasons are printed, nothing is written), as for any error
in the input (PATH, ``--out``, ``--device``, a model name), which is checked before any work.
A folder: 1 when a case failed (as a case with nothing analysed is reported) or was analysed
with a failed stage (``done, with errors (...)`` on its line); the other cases go on. A
sub-folder of the folder that holds no case (empty, no images) is said (``skipped: <name>/:
<reason>``) and gets a ``skipped`` row in ``summary.csv``; it is not a failed case.
"""
from __future__ import annotations

import argparse
from pathlib import Path


EPILOG = """\
exit status: 0 when every stage that was asked for ran.
  one case: 1 when a stage failed ("warning: <stage> skipped: ...") but others gave results,
  which are written; 2 when nothing could be analysed (neither a segmentation nor a
  prediction: the reasons are printed, nothing is written), and for an error in the input
  (PATH, --out, --device, a model name), checked before any work.
  a folder of cases: 1 when a case failed or was analysed with a failed stage ("done, with
  errors (...)" on its line); the other cases go on.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._common import REGISTER_HELP, add_device_argument, add_sequence_argument
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("path", help="case folder, volume, .h5 pack, or a folder of cases")
    parser.add_argument("--out", required=True, help="output folder")
    add_device_argument(parser)
    add_sequence_argument(parser)
    parser.add_argument("--seg-model", default=None,
                        help="segmentation model name or .safetensors path (default: the "
                             "preferred installed model that fits the case)")
    parser.add_argument("--pred-model", default=None,
                        help="prediction model name or .safetensors path (default: the "
                             "default prediction model, as in radiogen predict)")
    parser.add_argument("--synth-model", default=None,
                        help="synthesis model name or .safetensors path (default: the "
                             "installed synthesis model)")
    parser.add_argument("--explain", default="idh",
                        help="comma-separated tasks to explain (idh,codel_1p19q,grade) or 'none'")
    parser.add_argument("--method", default="gradcam",
                        choices=["gradcam", "gradcam++", "layercam", "attention"],
                        help="heatmap method of the networks (predict_radiomics is always "
                             "explained by occlusion over its segmented tumour)")
    parser.add_argument("--no-synthesis", action="store_true",
                        help="do not synthesise missing sequences")
    parser.add_argument("--register", action="store_true", help=REGISTER_HELP)
    parser.add_argument("--no-render", action="store_true", help="no 3D rendering in reports")
    parser.add_argument("--no-report", action="store_true",
                        help="no HTML/JSON report per case (the segmentation, predictions, "
                             "heatmaps and analysis.json are still written)")
    parser.add_argument("--no-cache", action="store_true",
                        help="a folder of cases: recompute every case, also those already "
                             "analysed into --out with unchanged inputs and options")
    parser.add_argument("--identified", action="store_true",
                        help="include clinical fields in reports, and the 3D rendering of "
                             "a scan that is not skull-stripped (its head surface can show "
                             "the face) (default: de-identified)")


def _check_model(name, task: str, option: str) -> None:
    """A model the user named exists and is a ``task`` model (an input error, exit 2, before
    any work; not a stage that fails on every case)."""
    from ..core.errors import ModelFileError
    from ..core.models import find_model, read_card

    if not name:
        return
    try:
        path = find_model(name, task=task)
        card = read_card(path)
    except ModelFileError as e:
        raise ModelFileError(f"{option}: {e}") from None
    if card.get("task") != task:
        raise ModelFileError(f"{option}: {path.name} is a {card.get('task')!r} model, not a "
                             f"{task!r} model")


def _reasons(errors) -> str:
    """``{stage: message}`` -> ``"segment, predict: <message>; explain idh: <message>"``
    (stages that failed for the same reason said once)."""
    by_msg = {}
    for stage, msg in errors.items():
        by_msg.setdefault(" ".join(str(msg).split()), []).append(stage)
    return "; ".join(f"{', '.join(stages)}: {msg}" for msg, stages in by_msg.items())


def run(args: argparse.Namespace) -> int:
    import sys

    from ..core.errors import RadiogenError
    from ..core.explain import TASKS
    from ..core.io import list_cases
    from ..core.pipeline import (AnalysisOptions, AnalysisResult, Analyzer, CohortItem,
                                 analyze_cohort, write_outputs)
    from ..core.progress import Progress
    from ._common import ProgressLine, check_device, check_out_dir, load_case_arg

    tasks = [] if args.explain.strip().lower() == "none" else \
        [t.strip() for t in args.explain.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise RadiogenError(f"--explain: unknown task(s) {', '.join(bad)} (known: "
                            f"{', '.join(TASKS)}, or 'none')")
    opts = AnalysisOptions(seg_model=args.seg_model, pred_model=args.pred_model,
                           synth_model=args.synth_model, synthesize_missing=not args.no_synthesis,
                           explain_tasks=tasks, explain_method=args.method, device=args.device,
                           register=args.register)
    analyzer = Analyzer(opts)
    path = Path(args.path)
    if not path.exists():
        raise RadiogenError(f"{path} does not exist")
    out = check_out_dir(args.out)
    # errors of the request itself stop here, before any case is read (exit 2), as in
    # radiogen segment / predict: not as a stage that fails on every case
    check_device(args.device)
    _check_model(args.seg_model, "segmentation", "--seg-model")
    _check_model(args.pred_model, "prediction", "--pred-model")
    _check_model(args.synth_model, "synthesis", "--synth-model")
    overrides = bool(args.sequence)          # --sequence names the files of one case
    try:
        cases = list_cases(path) if path.is_dir() and not overrides else []
    except RadiogenError:
        cases = []
    is_cohort = path.is_dir() and len(cases) > 1 or (len(cases) == 1 and cases[0] != path)

    if not is_cohort:
        source = load_case_arg(path, args) if overrides else path
        res = None
        with ProgressLine() as show:
            for item in analyzer.analyze(source):
                if isinstance(item, Progress):
                    show(item)
                elif isinstance(item, AnalysisResult):
                    res = item
        if res.failed:          # no segmentation, no prediction: nothing analysed (exit 2)
            raise RadiogenError(f"{res.case_id}: nothing could be analysed: "
                                f"{_reasons(res.errors)}")
        paths = write_outputs(res, out, report=not args.no_report,
                              render=not args.no_render, deidentify=not args.identified)
        _print_result(res, paths)
        if res.errors:          # analysed in part: the outputs are written, exit 1
            print(f"radiogen: {res.case_id}: analysed in part; {len(res.errors)} stage(s) "
                  f"failed: {_reasons(res.errors)}", file=sys.stderr)
            return 1
        return 0
    from ..core.insample import batch_in_sample_lines
    from ._batch import say_skipped, skipped_folders
    skipped = skipped_folders(path, cases)
    say_skipped(skipped)
    failed = partial = 0
    in_sample = {}
    with ProgressLine() as show:
        for item in analyze_cohort(cases, out, analyzer=analyzer, use_cache=not args.no_cache,
                                   report=not args.no_report, render=not args.no_render,
                                   deidentify=not args.identified,
                                   skipped=[(path / n, why) for n, why in skipped]):
            if isinstance(item, Progress):
                show(item)
            elif isinstance(item, CohortItem):
                show.reset()
                msg = f" ({item.message})" if item.message else ""
                errors = (item.summary or {}).get("errors") if item.status != "failed" else ""
                if errors:      # analysed, but a stage failed: as for one case, exit 1
                    msg += f", with errors ({errors})"
                    partial += 1
                print(f"{item.case_id}: {item.status}{msg}", flush=True)
                failed += item.status == "failed"
                if item.status != "failed":
                    for parts in _in_sample(item.summary):
                        in_sample.setdefault(parts, []).append(item.case_id)
    # the cases a model was trained on: said once for the cohort (analysis.json says it per case)
    for line in batch_in_sample_lines(in_sample, len(cases)):
        print(f"warning: {line}", flush=True)
    extra = f", {partial} with errors" if partial else ""
    if skipped:
        extra += f"; {len(skipped)} folder(s) skipped, no case in them"
    print(f"summary: {out / 'summary.csv'} ({len(cases)} cases, {failed} failed{extra})")
    return 1 if failed or partial else 0


def _in_sample(summary) -> list:
    """The ``(model, meaning)`` of each in-sample note among a cohort row's warnings (a
    ``" | "``-joined text in the summary: the notes are recognised by their wording)."""
    from ..core.insample import in_sample_parts

    text = (summary or {}).get("warnings") or ""
    found = [in_sample_parts(w.strip()) for w in str(text).split(" | ")]
    return list(dict.fromkeys(f for f in found if f is not None))


def _labels_name(case) -> str:
    """``its labels (<file>)``, or ``its mask`` for a slice pack: what the Dice is against."""
    labels = getattr(case, "labels", None)
    if getattr(case, "kind", None) == "slices":
        return "its mask"
    path = getattr(labels, "path", None)
    return f"its labels ({Path(path).name})" if path else "its labels"


def _print_result(res, paths) -> None:
    print(f"case {res.case_id}")
    if res.segmentation is not None:
        v = res.segmentation.volumes_ml
        print("  volumes (mL): " + ", ".join(f"{k} {v[k]:.1f}" for k in v))
        metrics = res.segmentation.metrics
        if metrics:             # against the case's own labels (a BraTS *_seg, a pack's mask)
            print(f"  Dice vs {_labels_name(res.case)}: "
                  + ", ".join(f"{r} {m['dice']:.3f}" for r, m in metrics.items())
                  + (f" (with HD95 in {Path(paths['segmentation_json']).name})"
                     if paths.get("segmentation_json") else ""))
    if res.prediction is not None:
        for t, probs in res.prediction.tasks.items():
            best = max(probs, key=probs.get)
            print(f"  {t}: {best} {probs[best]:.2f}")
    for e in res.explanations:
        loc = f"{e.localisation:.2f}" if e.localisation is not None else "n/a"
        print(f"  {e.method} {e.task}: localisation {loc}")
    for c in res.cautions():          # unreliable results: said first, apart
        print(f"  CAUTION: {c}")
    for w in res.warnings:
        print(f"  warning: {w}")
    print("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items()))
    print(f"  report: {paths.get('report_html', '-')}")
