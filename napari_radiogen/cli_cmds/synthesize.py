"""``radiogen synthesize CASE --target t1ce --out DIR``: synthesise a sequence on the case's grid.

Writes ``DIR/<case_id>_<target>_synth.nii.gz`` (on the reference sequence's source grid, so it
opens aligned with the acquired scans; intensities in normalised units 0..1), whose header says it
is synthetic, from which sources and with which model (NIfTI ``descrip``), and a JSON beside it
saying the same, with the PSNR/SSIM against the real sequence when the case has it.

The JSON's warnings say a source (or the real target) that looks offset from the reference
sequence (not co-registered; ``core.prepare.case_registration_warnings``, as ``radiogen info``
says it). ``--register`` first shifts each acquired sequence onto the reference (as ``radiogen
analyze``, ``segment`` and ``predict`` do); each shift leads the JSON's warnings.

The JSON is de-identified by default (``"deidentified": true``): its ``case_source`` is the case
id, not the path the case was read from (which may name the patient); ``--identified`` writes
the path.
"""
from __future__ import annotations

SEQUENCES = ("t1", "t1ce", "t2", "flair")


def add_arguments(p) -> None:
    from ._common import (REGISTER_HELP, add_device_argument, add_sequence_argument,
                          add_threads_argument)
    p.add_argument("case", help="case folder, volume file or TCGA-LGG .h5 pack")
    p.add_argument("--target", required=True, choices=list(SEQUENCES) + ["missing"],
                   help="sequence to synthesise ('missing' = every sequence the case lacks)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sources", nargs="+", choices=SEQUENCES, default=None,
                   help="sequences to synthesise from (default: every acquired one but the "
                        "target)")
    p.add_argument("--model", default=None, help="synthesis model name or .safetensors path "
                   "(default: the installed synthesis model)")
    add_device_argument(p)
    add_sequence_argument(p)
    add_threads_argument(p)
    p.add_argument("--register", action="store_true", help=REGISTER_HELP)
    p.add_argument("--identified", action="store_true",
                   help="write the case's path in the JSON files (default: de-identified, "
                        "the case id)")


def run(args) -> int:
    from ..core import progress
    from ..core.errors import RadiogenError
    from ..core.io import write_volume
    from ..core.outputs import write_json
    from ..core.prepare import case_registration_warnings_by_sequence
    from ..core.synthesize import _resolve_model, synthesize
    from ._common import (ProgressLine, check_device, check_out_dir, ensure_out_dir,
                          load_case_arg, registered, set_threads)

    set_threads(args)
    out = check_out_dir(args.out)
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    case = load_case_arg(args.case, args)
    if args.target == "missing":
        targets = list(case.missing)
        if not targets:
            print(f"{case.case_id}: no missing sequence (has {', '.join(case.present)})")
            return 0
    else:
        targets = [args.target]
    case, notes = registered(case, args)
    # the synthesis resamples its sources onto the reference grid as their headers place them
    # and does not check their alignment: the check is made here (after --register: an offset
    # left, a shift that was not applied) and said per target for the sequences it used
    offsets = case_registration_warnings_by_sequence(case)
    from ..core.outputs import relative_to_folder
    model = _resolve_model(args.model, args.device)
    for t in targets:
        if args.sources is None and not [s for s in case.present if s != t]:
            raise RadiogenError(f"{case.case_id} has no sequence to synthesise {t} from")
        with ProgressLine() as show:
            res = progress.run(synthesize(case, model, t, sources=args.sources,
                                          device=args.device), show)
        used = set(res.sources) | {t}
        res.warnings[:0] = notes + [w for s, w in offsets.items() if s in used]
        ensure_out_dir(out)
        # the synthetic Volume itself: its header records the sequence, sources and model
        # (NIfTI descrip 'napari-radiogen synthetic t1ce from t1,t2,flair by <model>')
        path = write_volume(res.volume, out / f"{case.case_id}_{t}_synth.nii.gz")
        info = res.to_json()
        info.update({"file": str(path),
                     "case_source": case.source if args.identified else case.case_id,
                     "reference_sequence": case.reference,
                     "deidentified": not args.identified})
        write_json(out / f"{case.case_id}_{t}_synth.json", relative_to_folder(info, out))
        msg = f"{path}  ({t} from {'+'.join(res.sources)}, {res.seconds:.1f} s"
        if res.psnr is not None:
            msg += f", PSNR {res.psnr:.2f} dB, SSIM {res.ssim:.3f} vs the real {t}"
        print(msg + ")")
        for w in res.warnings:
            print(f"    warning: {w}")
    return 0
