"""``radiogen classify-slices PATH --out DIR [--model NAME]``: tumour-type triage of 2D slices.

PATH is an image (PNG/JPG/TIF/BMP), a folder of images (searched recursively), or a volume /
case (NIfTI, NRRD, MHA, DICOM, HDF5, case folder): then every axial slice of the reference
sequence (or ``--sequence``) is classified. Writes ``DIR/tumour_type.csv`` with columns
``file`` (path relative to the folder, or ``<case_id>:<slice>``), one probability per class
(glioma, meningioma, pituitary, notumor), ``predicted`` (left empty for a slice with no
foreground, which gets no call), ``empty`` (1 for such a slice), ``status`` and ``message``.

Images, like the cases of the other batch commands, go on past a bad one: an image that
cannot be read is reported on stderr (``<file>: FAILED: <why>``) and gets a row with status
``failed`` and the reason (naming the file relative to the folder); the others are classified,
the summary line counts the failed ones and the exit status is 1. Errors of the request itself
(PATH, ``--out``, ``--device``, the model, a case that cannot be read) stop before any work
with exit 2.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ._common import add_device_argument
    p.add_argument("path", help="image, folder of images, or a volume/case")
    p.add_argument("--out", required=True, help="output folder (tumour_type.csv is written there)")
    p.add_argument("--model", default=None,
                   help="triage model name or .safetensors path (default: the shipped CNN; "
                        "`radiogen models` lists them)")
    p.add_argument("--sequence", action="append", default=[], metavar="SEQ|FILE=SEQ",
                   help="for a case: the sequence whose axial slices are classified "
                        "(default: the case's reference sequence); FILE=SEQ names a file's "
                        "sequence when the file name does not tell (t1, t1ce, t2, flair, "
                        "labels, ignore), as in the other commands; repeatable")
    add_device_argument(p, default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..core import progress
    from ..core import triage
    from ..core.errors import CaseLoadError, RadiogenError
    from ._common import check_device, check_out_dir, ensure_out_dir, parse_overrides

    # --sequence SEQ (the sequence classified) and --sequence FILE=SEQ (overrides)
    chosen = [s for s in args.sequence if "=" not in s]
    overrides = parse_overrides([s for s in args.sequence if "=" in s]) or None
    if len(chosen) > 1:
        raise RadiogenError(f"--sequence names the one sequence to classify; got "
                            f"{', '.join(chosen)}")
    sequence = chosen[0] if chosen else None
    src = Path(args.path)
    if not src.exists():
        raise CaseLoadError(f"{src}: no such file or folder")
    check_out_dir(args.out)
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    model = triage.load_triage_model(args.model, device=args.device)

    def on_progress(p):
        if not args.quiet and p.total and (p.done == p.total or p.done == 0):
            print(str(p), file=sys.stderr)

    if triage.is_image_input(src):
        # a folder of images is a batch: an unreadable image is a failed row, the rest go on
        table = progress.run(triage.classify_images(src, model, skip_unreadable=src.is_dir()),
                             on_progress)
    else:
        from ..core.io import load_case
        case = load_case(src, overrides=overrides)
        table = progress.run(triage.classify_volume(case, model, sequence=sequence),
                             on_progress)
    out = table.write_csv(ensure_out_dir(args.out) / "tumour_type.csv")
    counts = table.counts()              # empty slices get no call and are not counted
    summary = ", ".join(f"{c} {counts.get(c, 0)}" for c in table.classes)
    if table.n_empty:
        summary += f"; {table.n_empty} empty slice(s), no call"
    for name, why in table.failed:
        why = why[len(name) + 2:] if why.startswith(f"{name}: ") else why
        print(f"{name}: FAILED: {why}", file=sys.stderr, flush=True)
    if table.failed:
        summary += f"; {len(table.failed)} image(s) could not be read"
    print(f"{len(table.names)} slice(s) classified with {model.name}: {summary}")
    if table.caveat:
        print(f"warning: {table.caveat}")
    print(f"wrote {out}")
    if table.failed:
        n = len(table.names) + len(table.failed)
        print(f"radiogen: {len(table.failed)} of {n} image(s) failed: "
              f"{', '.join(name for name, _ in table.failed)}", file=sys.stderr)
        return 1
    return 0
