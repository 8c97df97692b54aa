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

The JSON is de-identified by default, as ``radiogen analyze`` writes it: the clinical fields the
prediction read (``features.age``, ``features.sex_male`` of a segment-then-classify model) are
left out, listed in ``removed_fields`` (``"deidentified": true``); ``--identified`` keeps them
(``"deidentified": false``). The prediction itself used them either way.
"""
from __future__ import annotations

CSV_COLUMNS = ["case_id", "model", "p_idh_mutant", "p_codel", "p_grade3", "sd_idh", "sd_codel",
               "sd_grade", "risk", "seconds", "status", "message"]


#: the ages ``--age`` accepts (years)
AGE_RANGE = (0.0, 120.0)


def age_years(text: str) -> float:
    """``--age``: a number of years within :data:`AGE_RANGE` (argparse type; a bad value is a
    usage error, exit 2)."""
    import argparse
    import math

    try:
        age = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an age in years, got {text!r}") from None
    if not math.isfinite(age) or not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise argparse.ArgumentTypeError(f"age {text} is out of range: give the age in years, "
                                         f"{AGE_RANGE[0]:g} to {AGE_RANGE[1]:g}")
    return age


def add_arguments(p) -> None:
    from ..core.predict import DEFAULT_MODELS
    from ._common import REGISTER_HELP, add_device_argument, add_sequence_argument
    p.add_argument("case", help="a case (folder of sequences, volume file, .h5 slice pack) or a "
                   "folder of cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="model name or .safetensors path (default: the first "
                   "installed of " + ", ".join(DEFAULT_MODELS) + ")")
    add_device_argument(p)
    add_sequence_argument(p)
    p.add_argument("--age", type=age_years, metavar="YEARS",
                   help=f"age in years, {AGE_RANGE[0]:g} to {AGE_RANGE[1]:g} (used when the "
                        "model fuses clinical data)")
    p.add_argument("--sex", choices=["M", "F", "m", "f"], help="sex (used when the model fuses it)")
    p.add_argument("--register", action="store_true", help=REGISTER_HELP)
    p.add_argument("--identified", action="store_true",
                   help="include clinical fields (age, sex) in the JSON files (default: "
                        "de-identified)")


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

    from ..core.models import atomic_write_text, load_model, resolve_device
    from ..core.outputs import deidentification_fields, dumps, prediction_for_output
    from ..core.predict import TASK, default_model_name, predict
    from ..core.progress import run as drive
    from ._batch import run_batch
    from ._common import check_out_dir, ensure_out_dir, registered, sequence_overrides

    overrides = sequence_overrides(args)
    out = check_out_dir(args.out)   # created only when a case has a result to write
    device = resolve_device(args.device)
    model = load_model(args.model or default_model_name(), task=TASK,
                       device=device)
    model.extras["as_default"] = not args.model        # the default may give way (no T2...)
    clinical = {}
    if args.age is not None:
        clinical["age"] = args.age
    if args.sex:
        clinical["sex"] = args.sex.upper()

    def one(case):
        case, notes = registered(case, args)
        res = drive(predict(case, model, clinical=clinical or None, device=device))
        res.warnings[:0] = notes
        j = ensure_out_dir(out) / f"{res.case_id}_predictions.json"
        deidentify = not args.identified
        pred, removed = prediction_for_output(res.to_json(), deidentify)
        atomic_write_text(j, dumps({**pred, **deidentification_fields(deidentify, removed)}))
        t = res.tasks
        return res, (f"IDH-mutant {t['idh']['mutant']:.2f}, 1p/19q-codel "
                     f"{t['codel_1p19q']['codel']:.2f}, grade 3 {t['grade']['3']:.2f}"), j

    def row(res=None, **kw) -> dict:
        r = _row(res, **kw)
        if res is None and r["status"] == "failed":     # the model that was asked for
            r["model"] = model.name
        return r

    return run_batch(args.case, one, row, CSV_COLUMNS, out / "summary.csv", overrides=overrides,
                     deidentify=not args.identified)
