"""``radiogen evaluate MODEL DATA --out DIR``: a trained model on every patient of DATA.

Exit status: 0 every case was scored; 1 some cases failed (each is named with its reason on
stderr, in report.json ``failed_cases`` and in the report), the others' metrics are written; 2
an input error (no such DATA folder, a labels CSV without the model's label columns, ...).

``--json`` prints the metrics with ``failed`` and ``no_labels`` (prediction models) as counts,
the cases beside them (``failed_cases``: ``[{"case", "reason"}]``, ``no_labels_cases``: ids),
``unscored``, ``notes`` and ``report`` (the report's path).
"""
from __future__ import annotations

import sys

from ._common import positive_int     # the argparse type of --limit (N >= 1)


def add_arguments(p) -> None:
    p.add_argument("model", help="installed model name or .safetensors path")
    p.add_argument("data", help="data folder (case folders / HDF5 packs), one labelled case folder "
                                "(3D segmentation models), or a labels CSV")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--labels", help="labels CSV (patient_id + label columns [+ path])")
    from ._common import add_device_argument
    add_device_argument(p)
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="only N patients (N >= 1): a seeded subsample balanced over the "
                        "task's strata (the classes of a classifier; for a prediction model "
                        "the combinations of the IDH, 1p/19q and grade labels), the same "
                        "patients every time, so accuracy, F1 and Brier do not reflect the "
                        "cohort's prevalence (AUC does not depend on it); a note says so")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def run(args) -> int:
    from ..core.evaluate.run import evaluate_model
    from ..core.outputs import dumps
    from ..core.train.engine import EvalResult
    from ._common import ProgressLine, check_device, check_out_dir
    check_out_dir(args.out)
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    res = None
    with ProgressLine(key=lambda p: (getattr(p, "stage", ""), getattr(p, "done", 0), getattr(p, "total", 0))) as show:
        for item in evaluate_model(args.model, args.data, args.out, device=args.device,
                                   labels=args.labels, limit=args.limit):
            if isinstance(item, EvalResult):
                res = item
            else:
                show(item)
    m = dict(res.metrics)
    failed = list(m.get("failed_cases") or [])
    n_failed = m.get("failed") if isinstance(m.get("failed"), int) else len(failed)
    notes = list(m.pop("notes", None) or [])
    for f in failed:
        print(f"radiogen: {f['case']}: failed: {f['reason']}", file=sys.stderr)
    if args.json:
        print(dumps({**m, "notes": notes, "report": str(res.report_path)}, indent=1))
    else:
        unscored = {u["metric"] for u in m.get("unscored") or []}
        for k, v in m.items():
            if k in ("failed", "failed_cases", "unscored", "note", "no_labels",
                     "no_labels_cases") or k in unscored:
                continue
            print(f"  {k:<18} {_value(v)}")
        if n_failed:
            print(f"  {'failed':<18} {n_failed} (left out; reasons on stderr and in the "
                  "report)")
        if m.get("no_labels"):
            print(f"  {'no_labels':<18} {m['no_labels']} (left out: no row in the labels "
                  "table)")
        if m.get("note"):
            print(f"note: {m['note']}")
        for n in notes:
            print(f"note: {n}")
        print(f"report: {res.report_path}")
    return 1 if n_failed else 0
