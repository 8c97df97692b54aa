"""``radiogen predict CASE --out DIR``: IDH, 1p/19q co-deletion and grade (+ an OS risk score)
for a case or a folder of cases.

Writes ``DIR/<case_id>_predictions.json`` per case::

    {"case_id", "model", "card": {...summary...},
     "tasks": {"idh": {"wildtype": p, "mutant": p}, "codel_1p19q": {...}, "grade": {"2":, "3":}},
     "uncertainty": {...fold-ensemble spread...}, "risk": r,
     "attention": {"flair": [...one weight per slice of the reference volume...], ...},
     "attention_slices": [...], "synthetic_inputs": [...], "warnings": [...]}

A folder (cohort) also gets ``DIR/summary.csv`` (one row per case). Age and sex are taken from
``--age/--sex`` or from the case's clinical table (packs next to a ``clinical.csv``).
"""
from __future__ import annotations

import sys

CSV_COLUMNS = ["case_id", "model", "p_idh_mutant", "p_codel", "p_grade3", "sd_idh", "sd_codel",
               "sd_grade", "risk", "seconds", "status", "message"]


def add_arguments(p) -> None:
    p.add_argument("case", help="a case (folder of sequences, volume file, .h5 slice pack) or a "
                   "folder of cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="model name or .safetensors path (default: predict_mil)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--age", type=float, help="age in years (used when the model fuses clinical data)")
    p.add_argument("--sex", choices=["M", "F", "m", "f"], help="sex (used when the model fuses it)")


def _row(res=None, case_id="", status="ok", message="", seconds=0.0) -> dict:
    row = {c: "" for c in CSV_COLUMNS}
    row.update(case_id=case_id, status=status, message=message, seconds=f"{seconds:.2f}")
    if res is not None:
        t, u = res.tasks, res.uncertainty
        row.update(case_id=res.case_id, model=res.model,
                   p_idh_mutant=f"{t['idh']['mutant']:.4f}",
                   p_codel=f"{t['codel_1p19q']['codel']:.4f}", p_grade3=f"{t['grade']['3']:.4f}",
                   sd_idh=f"{u['idh']['sd']:.4f}", sd_codel=f"{u['codel_1p19q']['sd']:.4f}",
                   sd_grade=f"{u['grade']['sd']:.4f}",
                   risk="" if res.risk is None else f"{res.risk:.4f}")
    return row


def run(args) -> int:
    import csv
    import json
    import time
    from pathlib import Path

    from ..core.errors import RadiogenError
    from ..core.io import list_cases, load_case
    from ..core.models import atomic_write_text, default_model, load_model, resolve_device
    from ..core.predict import TASK, predict
    from ..core.progress import run as drive

    device = resolve_device(args.device)
    paths = list_cases(args.case)
    batch = len(paths) > 1 or Path(args.case).resolve() != Path(paths[0]).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model or default_model(TASK, prefer=("predict_mil",)), task=TASK,
                       device=device)
    clinical = {}
    if args.age is not None:
        clinical["age"] = args.age
    if args.sex:
        clinical["sex"] = args.sex.upper()
    rows, failed = [], []
    for i, p in enumerate(paths, 1):
        t0 = time.perf_counter()
        cid = Path(p).name
        try:
            case = load_case(p)
            cid = case.case_id
            res = drive(predict(case, model, clinical=clinical or None, device=device))
            j = out / f"{res.case_id}_predictions.json"
            atomic_write_text(j, json.dumps(res.to_json(), indent=2))
            dt = time.perf_counter() - t0
            t = res.tasks
            print(f"[{i}/{len(paths)}] {cid}: IDH-mutant {t['idh']['mutant']:.2f}, "
                  f"1p/19q-codel {t['codel_1p19q']['codel']:.2f}, grade 3 {t['grade']['3']:.2f}"
                  f" ({dt:.1f} s) -> {j}", flush=True)
            for w in res.warnings:
                print(f"    warning: {w}", flush=True)
            rows.append(_row(res, seconds=dt))
        except RadiogenError as e:
            if not batch:
                raise
            failed.append(cid)
            print(f"[{i}/{len(paths)}] {cid}: FAILED: {e}", file=sys.stderr, flush=True)
            rows.append(_row(case_id=cid, status="failed", message=str(e),
                             seconds=time.perf_counter() - t0))
    if batch:
        with open(out / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        print(f"summary: {out / 'summary.csv'}")
    if failed:
        print(f"radiogen: {len(failed)} of {len(paths)} case(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
