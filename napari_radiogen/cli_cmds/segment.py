"""``radiogen segment CASE --out DIR``: tumour segmentation of a case or a folder of cases.

Writes, per case, on the reference sequence's native grid and geometry:

* 3D cases: ``DIR/<case_id>_seg.nii.gz`` (uint8 labels 0/1/2/4, the source file's affine and
  voxel order) and ``DIR/<case_id>_seg.json`` (region volumes in mL, model, timings, warnings,
  Dice/HD95 against the case's own labels when it has them);
* TCGA-LGG slice packs: ``DIR/<case_id>_seg.h5`` with dataset ``mask`` (the pack's mask shape,
  1 = FLAIR abnormality) and the JSON;
* ``DIR/volumes.csv``: one row per case (volumes in mL, status, the model file's SHA-256).

The JSON is de-identified by default (``"deidentified": true``): its ``source`` is the case id,
not the path the case was read from (which may name the patient); ``--identified`` writes the
path.

A folder of cases is processed one by one (one progress line each); a case that fails is
reported and skipped, and the exit status is 1 if any failed.
"""
from __future__ import annotations

CSV_COLUMNS = ["case_id", "model", "kind", "WT_ml", "TC_ml", "ET_ml", "label_1_ml",
               "label_2_ml", "label_4_ml", "seconds", "status", "message", "model_sha256"]


def add_arguments(p) -> None:
    from ._common import REGISTER_HELP, add_device_argument, add_sequence_argument
    p.add_argument("case", help="a case (folder of sequences, volume file, .h5 slice pack) or a "
                   "folder of cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="model name or .safetensors path (default: the first "
                   "installed model of core.segment.PREFERRED_MODELS that fits the case: "
                   "seg_brats_attunet2mm for 3D cases, seg_lgg_segresnet2d for slice packs)")
    add_device_argument(p)
    add_sequence_argument(p)
    p.add_argument("--csv", help="volume table path (default OUT/volumes.csv)")
    p.add_argument("--register", action="store_true", help=REGISTER_HELP)
    p.add_argument("--identified", action="store_true",
                   help="write the case's path in the JSON files (default: de-identified, "
                        "the case id)")


def write_outputs(res, case, out_dir, *, deidentify: bool = True,
                  registered=()) -> dict:
    """Write labels (NIfTI on the source grid, or the pack mask) and the JSON summary
    (``deidentify``: its ``source`` is the case id, not the case's path); with ``registered``
    (the sequences ``--register`` moved), each of them as the model read it (its voxels, its
    moved header)."""

    from ..core.io import write_pack_mask, write_volume
    from ..core.models import atomic_write_text
    from ..core.outputs import dumps, relative_to_folder
    from ._common import ensure_out_dir

    out = ensure_out_dir(out_dir)
    files = {}
    if res.kind == "slices":
        p = write_pack_mask(res.labels, out / f"{res.case_id}_seg.h5",
                            attrs={"model": res.model, "meaning": "1 = FLAIR abnormality"})
    else:
        p = write_volume(res.labels, res.geometry, out / f"{res.case_id}_seg.nii.gz", labels=True)
    files["labels"] = str(p)
    for s in registered:
        files[f"registered_{s}"] = str(write_volume(
            case.sequences[s], out / f"{res.case_id}_{s}_registered.nii.gz"))
    j = out / f"{res.case_id}_seg.json"
    summary = res.summary()
    # the file's name relative to the output folder (the JSON lies beside it), not the --out
    # path as given (which may be absolute and name a person)
    summary["files"] = relative_to_folder(dict(files), out)
    summary["registered"] = list(registered)
    summary["source"] = case.case_id if deidentify else case.source
    summary["deidentified"] = bool(deidentify)
    atomic_write_text(j, dumps(summary))
    files["json"] = str(j)
    return files


def csv_row(res=None, case_id="", status="ok", message="", seconds=0.0) -> dict:
    row = {c: "" for c in CSV_COLUMNS}
    row.update(case_id=case_id, status=status, message=message, seconds=f"{seconds:.2f}")
    if res is not None:
        row.update(case_id=res.case_id, model=res.model, kind=res.kind,
                   model_sha256=res.model_sha256 or "")
        for k, v in res.volumes_ml.items():
            key = f"{k}_ml"
            if key in row:
                row[key] = f"{v:.3f}"
    return row


def run(args) -> int:
    from pathlib import Path

    from ..core.models import load_model, resolve_device
    from ..core.progress import run as drive
    from ..core.register import moved_sequences
    from ..core.segment import TASK, default_model_name, segment
    from ._batch import run_batch
    from ._common import check_out_dir, registered, sequence_overrides

    overrides = sequence_overrides(args)
    out = check_out_dir(args.out)         # an unusable --out fails now, not after the work
    if args.csv:
        check_out_dir(Path(args.csv).parent)
    device = resolve_device(args.device)
    models = {}

    def get_model(case):
        name = args.model or default_model_name(case)
        if name not in models:
            models[name] = load_model(name, task=TASK, device=device)
        return models[name]

    def one(case):
        before = case
        case, notes = registered(case, args)
        res = drive(segment(case, get_model(case), device=device))
        res.warnings[:0] = notes
        files = write_outputs(res, case, out, deidentify=not args.identified,
                              registered=moved_sequences(before, case))
        v = res.volumes_ml
        text = (f"WT {v['WT']:.1f} mL, TC {v['TC']:.1f} mL, ET {v['ET']:.1f} mL"
                if res.kind == "volume" else
                f"FLAIR abnormality (WT) {v['WT']:.1f} mL at nominal spacing")
        if res.metrics:
            text += "; Dice " + ", ".join(f"{r} {m['dice']:.3f}" for r, m in res.metrics.items())
        return res, text, files["labels"]

    csv_path = Path(args.csv) if args.csv else out / "volumes.csv"
    return run_batch(args.case, one, csv_row, CSV_COLUMNS, csv_path, csv_always=True,
                     csv_name="volume table", overrides=overrides,
                     deidentify=not args.identified)
