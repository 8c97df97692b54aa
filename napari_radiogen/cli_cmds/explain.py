"""``radiogen explain CASE --task idh|codel_1p19q|grade --out DIR [--method ...]``.

Writes ``DIR/<case_id>_<task>_<method>.nii.gz`` (float32 in [0, 1] on the case's reference
grid, with its affine), a still PNG and a turntable GIF of the 3D rendering (off-screen), and
``DIR/<case_id>_<task>_<method>.json`` with the localisation score and provenance (with
``synthetic_inputs``: the synthetic sequences the heatmap rests on, the model's own and those of
the tumour segmentation it was placed on or scored against). ``<method>`` is the method name
with ``+`` spelled ``p`` (``gradcam++`` -> ``gradcampp``).

For a TCGA-LGG slice pack the NIfTI lies on the pack's nominal grid (as the outputs of
``synthesize`` and ``rank-sequences``), the same heatmap is also written as
``<stem>.h5`` (dataset ``heatmap``), and the PNG shows the key slices with the heatmap (a pack
has no 3D rendering, so there is no GIF).

De-identified by default: the 3D rendering of a scan that is not skull-stripped is left out
(its translucent surface is the head's, and a face rendered from an MRI can be recognised; the
JSON's warnings say so); ``--identified`` renders it. The JSON says ``"deidentified"``.

``--register`` first shifts each acquired sequence onto the reference (as ``radiogen analyze``,
``segment`` and ``predict`` do); each shift leads the JSON's warnings. Without it, a sequence
the explained network reads that looks offset from the reference is said in the warnings
(the whole-brain models by ``core.predict.offset_warnings``, the tumour-centred one by the
segmentation its window rests on).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._common import (REGISTER_HELP, add_device_argument, add_sequence_argument,
                          non_negative_int)
    parser.add_argument("case", help="case folder, volume, or TCGA-LGG .h5 pack")
    parser.add_argument("--task", default="idh", choices=["idh", "codel_1p19q", "grade"],
                        help="the prediction to explain, one per run (default: idh, as in the "
                             "Explain widget and radiogen analyze --explain; run again with "
                             "--task codel_1p19q or grade for the others)")
    parser.add_argument("--method", default=None,
                        choices=["gradcam", "gradcam++", "layercam", "attention", "occlusion"],
                        help="default: gradcam for the networks (predict_mil_roi, predict_mil, "
                             "predict_cnn3d, and predict_ensemble, whose image network is "
                             "explained), occlusion for predict_radiomics (its only method)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", default=None,
                        help="prediction model name or file (default: the default prediction "
                             "model, as in radiogen predict)")
    parser.add_argument("--target", default=None,
                        help="class to explain (default: the positive class, e.g. mutant)")
    parser.add_argument("--layer", default=None,
                        help="network layer for the CAM methods (default: net.layer3 for the "
                             "slice models, net.layer2 for the 3D CNNs); an unknown name is "
                             "refused with the valid ones")
    parser.add_argument("--no-render", action="store_true", help="skip the PNG/GIF rendering")
    parser.add_argument("--frames", type=non_negative_int, default=24, metavar="N",
                        help="GIF frames (default 24; 0: no GIF)")
    parser.add_argument("--register", action="store_true", help=REGISTER_HELP)
    parser.add_argument("--identified", action="store_true",
                        help="render a scan that is not skull-stripped too (its head surface "
                             "can show the face; default: de-identified, no rendering of it)")
    add_device_argument(parser)
    add_sequence_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..core.case_report import may_show_face
    from ..core.explain import explain, method_slug, render_explanation
    from ..core.io import write_volume
    from ..core.outputs import write_json
    from ..core.progress import run as drive
    from ._common import (ProgressLine, check_device, check_out_dir, ensure_out_dir,
                          load_case_arg, registered)

    out = check_out_dir(args.out)
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    case = load_case_arg(args.case, args)
    case, notes = registered(case, args)
    with ProgressLine() as show:
        res = drive(explain(case, args.model, task=args.task, method=args.method,
                            target=args.target, layer=args.layer, device=args.device), show)
    stem = f"{case.case_id}_{args.task}_{method_slug(res.method)}"
    info = dict(res.metadata)
    info["seconds"] = round(res.seconds, 2)
    info["warnings"] = list(notes) + list(res.warnings)
    ensure_out_dir(out)
    # the heatmap as NIfTI on the case's grid (a pack's nominal grid, as synthesize and
    # rank-sequences write them), for packs also the .h5 beside it
    path = out / f"{stem}.nii.gz"
    # the header says it is a heatmap (no reader takes it for a scan)
    write_volume(res.heatmap.astype("float32"), res.geometry, path,
                 radiogen_map={"kind": "heatmap", "task": res.task, "method": res.method,
                               "model": res.model})
    info["heatmap"] = str(path)
    if case.kind == "slices":
        import h5py
        h5 = out / f"{stem}.h5"
        with h5py.File(h5, "w") as f:
            f.create_dataset("heatmap", data=res.heatmap, compression="gzip")
        info["heatmap_h5"] = str(h5)
    if not args.no_render:
        if case.kind == "slices":
            from ..core.case_report import pack_slices_figure
            title = f"{case.case_id}  {res.task} ({res.target_class})  {res.method}"
            if res.localisation is not None:
                title += f"  localisation {res.localisation:.2f}"
            pack_slices_figure(case, out / f"{stem}.png", heat=res.heatmap, title=title)
            info["png"] = str(out / f"{stem}.png")
            info["gif"] = None
            info["warnings"].append("a 2D slice pack has no 3D rendering: the PNG shows the "
                                    "key slices, and no GIF is written")
        elif not args.identified and may_show_face(case):
            info["warnings"].append("3D rendering left out: the scan is not skull-stripped, "
                                    "and a rendering of its head surface can show the "
                                    "patient's face (--identified renders it)")
        else:
            r = render_explanation(case, res, out / f"{stem}.png",
                                   out / f"{stem}.gif" if args.frames > 0 else None,
                                   n_frames=max(args.frames, 1))
            info.update(r)
    # the JSON names its sibling files relative to its folder (not the --out path as typed)
    from ..core.outputs import relative_to_folder
    info["deidentified"] = not args.identified
    write_json(out / f"{stem}.json", relative_to_folder(info, out))
    print(f"{case.case_id}: {args.task} {res.target_class} {res.method}: localisation "
          f"{res.localisation_text}; "
          f"wrote {path}")
    for w in info["warnings"]:
        print(f"    warning: {w}")
    return 0
