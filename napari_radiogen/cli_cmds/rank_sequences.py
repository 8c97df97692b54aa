"""``radiogen rank-sequences CASE|COHORT --out DIR``: Seq2Seq-style sequence ranking.

For every ordered pair of acquired sequences (source -> target) the synthesis model generates
the target from that single source; PSNR and brain SSIM are z-scored over the pairs into
contribution scores (how well a sequence generates the others, how hard it is to generate from
them). Writes ``DIR/ranking.json``, ``DIR/ranking.png`` (bar chart) and, per case and target,
the imaging-differentiation map ``DIR/<case_id>_<target>_diffmap.nii.gz`` (per-voxel mean
absolute error of generating the target from each source, on the case's grid; its NIfTI
``descrip`` says ``napari-radiogen differentiation map <target> ...``, and the case reader never
reads it as a sequence).

In a cohort each case is ranked on its own and the pair metrics are averaged over the cases; a
case that cannot be loaded or ranked is reported on stderr, listed under ``"failed"`` in
``ranking.json`` (``{"case", "message"}``, the message naming the case's files relative to the
cohort folder) and skipped: the exit status is then 1 (2 when no case could be ranked). A
sub-folder of the cohort that holds no case (empty, no images) is said (``skipped: <name>/:
<reason>``) and listed under ``"skipped"`` (``{"folder", "message"}``), not counted as a failed
case. The map files are named in ``ranking.json`` relative to ``DIR`` (``map_files``).

Each case's ``warnings`` in ``ranking.json`` say a sequence that looks offset from the reference
(not co-registered; ``core.prepare.case_registration_warnings``, as ``radiogen info`` says it):
the synthesis takes the sequences as their headers place them. ``--register`` first shifts each
acquired sequence of each case onto its reference (as ``radiogen analyze``, ``segment`` and
``predict`` do); each shift leads that case's warnings.
"""
from __future__ import annotations


def add_arguments(p) -> None:
    from ._common import (REGISTER_HELP, add_device_argument, add_sequence_argument,
                          add_threads_argument, positive_int)
    p.add_argument("path", help="a case (folder, file, .h5 pack) or a folder of cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="synthesis model name or path")
    add_device_argument(p)
    add_sequence_argument(p)
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="a folder: rank only its first N cases (N >= 1)")
    p.add_argument("--no-maps", action="store_true", help="scores only, no NIfTI maps")
    add_threads_argument(p)
    p.add_argument("--register", action="store_true", help=REGISTER_HELP)


def bar_chart(scores, path, title: str = "sequence contribution") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.synthesize import plot_scores
    fig = plt.figure(figsize=(5, 3.2))
    plot_scores(fig.add_subplot(111), scores, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def checked(case, args):
    """``(case, warnings)``: ``case`` registered (``--register``, ``_common.registered``) and
    what was done, then the co-registration check's warnings of the case ranked (with
    ``--register``: an offset left, a shift that was not applied)."""
    from ..core.prepare import case_registration_warnings
    from ._common import registered
    case, notes = registered(case, args)
    return case, list(notes) + case_registration_warnings(case)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..core import progress
    from ..core.errors import CaseLoadError
    from ..core.io import case_id_of, list_cases, load_case, write_volume
    from ..core.outputs import relative_to_folder, write_json
    from ..core.outputs import strip_folder
    from ._batch import say_skipped, skipped_folders
    from ..core.synthesize import RankFailure, rank_cohort, rank_sequences
    from ._common import ProgressLine, check_device, check_out_dir, ensure_out_dir
    from ._common import sequence_overrides, set_threads

    set_threads(args)
    out = check_out_dir(args.out)
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    overrides = sequence_overrides(args)
    p = Path(args.path)
    failed = []                                  # cohort: [{"case", "message"}] of skipped cases
    skipped = []                                 # cohort: sub-folders with no case in them

    show = ProgressLine()
    try:
        case = load_case(p, overrides=overrides)
        paths = None
    except CaseLoadError:
        if overrides:                            # --sequence names the files of one case
            raise
        paths = list_cases(p) if p.is_dir() else []
        if not paths or (len(paths) == 1 and Path(paths[0]).resolve() == p.resolve()):
            raise                                # one case that cannot be read: exit 2
        skipped = skipped_folders(p, paths)
        say_skipped(skipped)
        paths = paths[: args.limit]              # None (no --limit): every case
    by_id = {case_id_of(q): q for q in (paths or [])}
    said_by_case = {}                            # case id -> registration, offsets

    def prepared(case):
        case, said = checked(case, args)
        said_by_case[case.case_id] = said
        return case
    with show:
        if paths is None:
            case = prepared(case)
            res = progress.run(rank_sequences(case, args.model, device=args.device,
                                              maps=not args.no_maps), show)
        else:
            # the cohort, one case at a time (core.synthesize.rank_cohort), each registered
            # and checked once loaded: a bad case is reported on its line and skipped
            res = None
            for item in rank_cohort(paths, args.model, device=args.device,
                                    maps=not args.no_maps, prepare=prepared):
                if isinstance(item, progress.Progress):
                    show(item)
                elif isinstance(item, RankFailure):
                    show.end()
                    # the case's files relative to the cohort folder (a path may name a
                    # patient), as radiogen analyze writes its summary
                    failed.append({"case": item.case, "message": strip_folder(
                        item.message, by_id.get(item.case, p / item.case))})
                    print(f"{item.case}: FAILED, skipped: {item.message}", file=sys.stderr,
                          flush=True)
                else:
                    res = item
    js = res.to_json()
    js["failed"] = failed
    js["skipped"] = [{"folder": f"{n}/", "message": m} for n, m in skipped]
    warnings = [said_by_case.get(c.case_id, []) for c in res.cases]
    ensure_out_dir(out)
    for c, cj, said in zip(res.cases, js["cases"], warnings):
        cj["warnings"] = said
        files = {}
        for t, vol in c.maps.items():
            # the header says it is a differentiation map (no reader takes it for a scan)
            f = write_volume(vol, out / f"{c.case_id}_{t}_diffmap.nii.gz",
                             radiogen_map={"kind": "differentiation map", "target": t})
            files[t] = f
        cj["map_files"] = relative_to_folder(files, out)     # beside ranking.json
    write_json(out / "ranking.json", js)
    scores = res.cohort_scores if len(res.cases) > 1 else res.cases[0].scores
    bar_chart(scores, out / "ranking.png",
              f"{len(res.cases)} cases" if len(res.cases) > 1 else res.cases[0].case_id)
    print(f"wrote {out / 'ranking.json'}")
    for s, v in sorted(scores.items(), key=lambda kv: -kv[1]["contribution"]):
        print(f"  {s:<6} contribution {v['contribution']:+.2f}  (as source {v['as_source']:+.2f},"
              f" as target {v['as_target']:+.2f})")
    for c, said in zip(res.cases, warnings):
        for w in said:
            print(f"    warning: {c.case_id}: {w}" if len(res.cases) > 1 else f"    warning: {w}")
    for w in res.warnings:                       # e.g. the GPU ran out of memory
        print(f"    warning: {w}")
    if failed:
        print(f"radiogen: {len(failed)} of {len(res.cases) + len(failed)} case(s) failed: "
              f"{', '.join(f['case'] for f in failed)}", file=sys.stderr)
        return 1
    return 0
