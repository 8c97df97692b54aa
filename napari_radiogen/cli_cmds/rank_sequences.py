"""``radiogen rank-sequences CASE|COHORT --out DIR``: Seq2Seq-style sequence ranking.

For every ordered pair of acquired sequences (source -> target) the synthesis model generates
the target from that single source; PSNR and brain SSIM are z-scored over the pairs into
contribution scores (how well a sequence generates the others, how hard it is to generate from
them). Writes ``DIR/ranking.json``, ``DIR/ranking.png`` (bar chart) and, per case and target,
the imaging-differentiation map ``DIR/<case_id>_<target>_diffmap.nii.gz`` (per-voxel mean
absolute error of generating the target from each source, on the case's grid).
"""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("path", help="a case (folder, file, .h5 pack) or a folder of cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="synthesis model name or path")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="rank only the first N cases")
    p.add_argument("--no-maps", action="store_true", help="scores only, no NIfTI maps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


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


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    import torch

    from ..core import progress
    from ..core.errors import CaseLoadError
    from ..core.io import list_cases, load_case, write_volume
    from ..core.synthesize import rank_sequences

    if args.threads:
        torch.set_num_threads(int(args.threads))
    p = Path(args.path)
    try:
        cases = [load_case(p)]
    except CaseLoadError:
        paths = list_cases(p) if p.is_dir() else []
        if not paths:
            raise
        cases = [load_case(c) for c in paths[: args.limit or None]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = progress.run(rank_sequences(cases, args.model, device=args.device,
                                      maps=not args.no_maps),
                       lambda pr: print(f"\r{pr}", end="", file=sys.stderr)
                       if sys.stderr.isatty() else None)
    js = res.to_json()
    for c, cj in zip(res.cases, js["cases"]):
        files = {}
        for t, vol in c.maps.items():
            f = write_volume(vol.array, vol.geometry, out / f"{c.case_id}_{t}_diffmap.nii.gz")
            files[t] = str(f)
        cj["map_files"] = files
    (out / "ranking.json").write_text(json.dumps(js, indent=2))
    scores = res.cohort_scores if len(res.cases) > 1 else res.cases[0].scores
    bar_chart(scores, out / "ranking.png",
              f"{len(res.cases)} cases" if len(res.cases) > 1 else res.cases[0].case_id)
    print(("\n" if sys.stderr.isatty() else "") + f"wrote {out / 'ranking.json'}")
    for s, v in sorted(scores.items(), key=lambda kv: -kv[1]["contribution"]):
        print(f"  {s:<6} contribution {v['contribution']:+.2f}  (as source {v['as_source']:+.2f},"
              f" as target {v['as_target']:+.2f})")
    return 0
