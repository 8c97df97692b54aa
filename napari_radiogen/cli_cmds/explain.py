"""``radiogen explain CASE --task idh|codel_1p19q|grade --out DIR [--method ...]``.

Writes ``DIR/<case_id>_<task>_<method>.nii.gz`` (float32 in [0, 1] on the case's reference
grid, with its affine), a still PNG and a turntable GIF of the 3D rendering (off-screen), and
``DIR/<case_id>_<task>_<method>.json`` with the localisation score and provenance.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", help="case folder, volume, or TCGA-LGG .h5 pack")
    parser.add_argument("--task", default="idh", choices=["idh", "codel_1p19q", "grade"])
    parser.add_argument("--method", default=None,
                        choices=["gradcam", "gradcam++", "layercam", "attention", "occlusion"],
                        help="default: gradcam for the networks (predict_mil, predict_cnn3d), "
                             "occlusion for predict_radiomics (its only method)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", default=None, help="prediction model name or file")
    parser.add_argument("--target", default=None,
                        help="class to explain (default: the positive class, e.g. mutant)")
    parser.add_argument("--layer", default=None, help="network layer for the CAM")
    parser.add_argument("--no-render", action="store_true", help="skip the PNG/GIF rendering")
    parser.add_argument("--frames", type=int, default=24, help="GIF frames (0: no GIF)")
    parser.add_argument("--device", default="cpu", help="cpu (CAMs run on the CPU)")


def run(args: argparse.Namespace) -> int:
    from ..core.explain import explain, render_explanation
    from ..core.io import load_case, write_volume
    from ..core.progress import run as drive

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    case = load_case(args.case)

    def show(p):
        print(f"\r{p}", end="", file=sys.stderr, flush=True)

    res = drive(explain(case, args.model, task=args.task, method=args.method,
                        target=args.target, layer=args.layer, device=args.device), show)
    print(file=sys.stderr)
    stem = f"{case.case_id}_{args.task}_{res.method.replace('+', 'pp')}"
    info = dict(res.metadata)
    info["seconds"] = round(res.seconds, 2)
    info["warnings"] = res.warnings
    if case.kind == "slices":
        import h5py
        path = out / f"{stem}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("heatmap", data=res.heatmap, compression="gzip")
        info["heatmap"] = str(path)
    else:
        path = out / f"{stem}.nii.gz"
        write_volume(res.heatmap.astype("float32"), res.geometry, path)
        info["heatmap"] = str(path)
        if not args.no_render:
            r = render_explanation(case, res, out / f"{stem}.png",
                                   out / f"{stem}.gif" if args.frames > 0 else None,
                                   n_frames=max(args.frames, 1))
            info.update(r)
    (out / f"{stem}.json").write_text(json.dumps(info, indent=2))
    loc = f"{res.localisation:.2f}" if res.localisation is not None else "n/a (no tumour mask)"
    print(f"{case.case_id}: {args.task} {res.target_class} {res.method}: localisation {loc}; "
          f"wrote {path}")
    return 0
