"""How well do the explanations localise? Reproduces the ``explanations`` table of the
prediction model cards.

For each case with an expert mask (the 8 BraTS 2021 cases: whole tumour = labels 1+2+4; and,
with ``--packs N``, N TCGA-LGG packs: the manual FLAIR-abnormality mask), each task and each
method, the heatmap of ``core.explain`` is scored with ``localisation_score``: the fraction of
heatmap mass inside the mask dilated by 5 mm. A uniform heatmap over the head is the reference
(its score is the dilated mask's share of the head), so the table shows what the explanation
adds over chance.

    python scripts/eval_localisation.py --model predict_mil [--packs 88] [--write-card]
    python scripts/eval_localisation.py --model predict_mil --fusion legacy --write-card
    python scripts/eval_localisation.py --model predict_radiomics --packs 88 --no-brats \
        --seg-run runs/seg/lgg_segresnet_xxlong --write-card

``predict_radiomics`` has no image network: its map is occlusion over its own segmented tumour
(``core.radiomics.occlusion_map``), so it lies inside that segmentation by construction and the
score measures how much of the segmented, evidence-weighted region is tumour. ``--seg-run``
(a finished 2D segmentation CV run) segments each pack with the fold model that did not train
on it; without it the shipped segmentation model, trained on these very cases, would make the
score look better than a new patient's.

``--fusion legacy`` scores the previous maps (per-slice min-max normalised CAMs, legacy layers)
and stores them in the card under ``explanations.legacy_heatmaps`` (the default maps go to
``explanations.summary``). The defaults of ``core.explain`` were selected on the TCGA-LGG packs;
the BraTS cases are held-out evidence.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _background(heat, out):
    h = np.asarray(heat, np.float32)
    if not out.any() or h.max() <= 0:
        return None
    return round(float(np.median(h[out]) / h.max()), 4)


class _OutOfFold:
    """Each pack's whole-tumour labels from the fold model of a 2D segmentation CV run that
    did not train on that patient."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        splits = json.loads((self.run_dir / "splits.json").read_text())
        self.fold_of = {pid: k for k, sp in enumerate(splits, 1) for pid in sp["test"]}
        self.models = {}

    def labels(self, case):
        from napari_radiogen.core.models import load_model
        from napari_radiogen.core.progress import run
        from napari_radiogen.core.segment import segment
        k = self.fold_of.get(case.case_id)
        if k is None:
            raise SystemExit(f"{case.case_id} is in no test fold of {self.run_dir}")
        if k not in self.models:
            self.models[k] = load_model(str(self.run_dir / "folds" / f"fold{k}_best.safetensors"),
                                        task="segmentation")
        res = run(segment(case, self.models[k], device="cpu", compare=False))
        return res.labels, f"out-of-fold: fold {k} of {self.run_dir.name}"


def main(argv=None) -> int:
    from napari_radiogen.core import predict as P
    from napari_radiogen.core.explain import DEFAULT_LAYER, KIND_METHODS, LEGACY_LAYER, \
        explain, localisation_score
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import find_model, load_model, read_card, save_model, \
        load_state_dict_file
    from napari_radiogen.core.progress import run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="predict_mil")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--tasks", default="idh,codel_1p19q,grade")
    ap.add_argument("--methods", default="gradcam,gradcam++,layercam,attention")
    ap.add_argument("--packs", type=int, default=0, help="also score N TCGA-LGG packs")
    ap.add_argument("--no-brats", action="store_true", help="skip the BraTS cases")
    ap.add_argument("--fusion", default="raw", choices=["raw", "legacy"],
                    help="heatmap fusion of core.explain (default raw)")
    ap.add_argument("--seg-run", default=None,
                    help="(predict_radiomics) 2D segmentation CV run: each pack is segmented by "
                         "the fold model that did not train on it (out-of-fold masks)")
    ap.add_argument("--layer", default=None,
                    help="torchcam target layer inside one member (default: core.explain's)")
    ap.add_argument("--select-layers", nargs="+", default=None, metavar="LAYER",
                    help="score each of these target layers on the TCGA-LGG packs only (needs "
                         "--no-brats: the BraTS cases stay held out) and, with --write-card, "
                         "store the comparison as explanations.layer_selection")
    ap.add_argument("--note", default=None, help="note stored with the table in the card")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--write-card", action="store_true",
                    help="store the table in the model card (weights unchanged)")
    a = ap.parse_args(argv)
    if a.select_layers and not (a.no_brats and a.packs):
        ap.error("--select-layers selects on the packs: give --packs N and --no-brats")
    if a.select_layers and a.layer:
        ap.error("--select-layers compares layers: --layer does not apply")
    data = Path(a.data)
    lm = load_model(a.model, task="prediction")
    kind = (lm.card.get("input") or {}).get("kind", "mil")
    default_layer = (LEGACY_LAYER if a.fusion == "legacy" else DEFAULT_LAYER).get(kind)
    try_layers = a.select_layers or [a.layer or default_layer]
    if a.select_layers and default_layer not in try_layers:
        ap.error(f"--select-layers must include the layer in use ({default_layer}), the "
                 "reference of the comparison")
    methods = ([m for m in a.methods.split(",") if m in KIND_METHODS[kind]]
               or list(KIND_METHODS[kind]))
    oof = _OutOfFold(a.seg_run) if a.seg_run else None
    tasks = a.tasks.split(",")
    cases = [] if a.no_brats else sorted((data / "brats2021").glob("BraTS2021_*"))
    if a.packs:
        cases += sorted((data / "tcga-lgg").glob("*.h5"))[: a.packs]
    rows = []
    for path in cases:
        case = load_case(path)
        if case.labels is None or not (case.labels.array > 0).any():
            continue
        ref = case.sequences[case.reference]
        g = ref.geometry
        sp = (g.spacing[2], g.spacing[1], g.spacing[0])
        wt = case.labels.array > 0
        head = np.zeros(wt.shape, bool)
        for v in case.sequences.values():
            if v.geometry.same_grid(g):
                head |= P.foreground(v.array)
        chance = localisation_score(head.astype(np.float32), wt, sp)
        from scipy import ndimage
        away = head & (ndimage.distance_transform_edt(~wt, sampling=sp) > 5.0)
        seg, seg_source, window, window_inp = None, None, None, None
        if kind in P.ROI_KINDS:
            # the window the tumour-centred model sees, placed on the shipped segmentation
            # model's mask (as a user gets it); a map uniform over it is this model's chance
            from napari_radiogen.core.explain import slices_to_native
            labels, source = run(P.tumour_labels(case, lm.card, "cpu", None, None, "", []))
            seg_source = f"{source} (the shipped model; in-sample on its training cases)"
            # the windowed input is made once per case and reused by every task and method
            window_inp = inp = P.roi_case_to_input(case, lm.card["sequences"], labels > 0,
                                                   lm.card["input"].get("window"))
            fov = slices_to_native(np.ones(inp.x.shape[1:], np.float32), inp, wt.shape, head)
            window = localisation_score(fov, wt, sp)
        if kind == "radiomics":
            seg, seg_source = (oof.labels(case) if oof is not None and case.kind == "slices"
                               else (None, "the shipped segmentation model (trained on the "
                                           "training cases: in-sample)"))
        for task, m, layer in ((t_, m_, l_) for t_ in tasks for m_ in methods
                               for l_ in try_layers):
            t = time.perf_counter()
            r = run(explain(case, lm, task=task, method=m, fusion=a.fusion,
                            segmentation=seg, layer=layer, inputs=window_inp))
            rows.append({"case": case.case_id, "dataset": "brats2021" if case.kind != "slices"
                         else "tcga-lgg", "task": task, "method": m, "layer": layer,
                         "localisation": r.localisation, "chance": chance,
                         **({"chance_window": window} if window is not None else {}),
                         # background: median heat (max = 1) in the head outside the
                         # dilated mask (a floor offset would put mass everywhere)
                         "background": _background(r.heatmap, away),
                         **({"segmentation": seg_source} if seg_source else {}),
                         "seconds": round(time.perf_counter() - t, 2)})
            print(f"{case.case_id:18s} {task:12s} {m:10s} {layer or '':11s} "
                  + (f"{r.localisation:.3f} " if r.localisation is not None
                     else "none (an empty map) ") +
                  f"(uniform {chance:.3f}" + (f", window {window:.3f}" if window is not None else "")
                  + f") {rows[-1]['seconds']:.1f}s", flush=True)
    selection = None
    if a.select_layers:
        per = {lay: [r["localisation"] for r in rows if r["layer"] == lay
                     and r["localisation"] is not None] for lay in try_layers}
        selection = {
            "what": "target layer of the Grad-CAM family, selected on the TCGA-LGG packs (mean "
                    f"localisation over tasks {', '.join(tasks)} and methods "
                    f"{', '.join(methods)}); the BraTS cases were not used",
            "command": f"python scripts/eval_localisation.py --model {a.model} --packs "
                       f"{a.packs} --no-brats --tasks {a.tasks} --methods {','.join(methods)} "
                       f"--select-layers {' '.join(try_layers)}"
                       + (f" --fusion {a.fusion}" if a.fusion != "raw" else "")
                       + (f" --seg-run {a.seg_run}" if a.seg_run else ""),
            "mean": {lay: round(float(np.mean(v)), 3) for lay, v in per.items() if v},
            # maps with no mass at all have no score: left out of the means, counted here
            "empty_maps": {lay: sum(1 for r in rows if r["layer"] == lay
                                    and r["localisation"] is None) for lay in try_layers},
            "by_task_method": {f"{t}/{m}/{lay}": round(float(np.mean(v)), 3)
                               for t in tasks for m in methods for lay in try_layers
                               for v in [[r["localisation"] for r in rows if r["layer"] == lay
                                          and r["task"] == t and r["method"] == m
                                          and r["localisation"] is not None]] if v},
            "in_use": default_layer}
        selection["best"] = max(selection["mean"], key=selection["mean"].get)
        print(json.dumps(selection, indent=1))
        selection["per_case"] = rows
        rows = [r for r in rows if r["layer"] == default_layer]
    summary = {}
    for ds in sorted({r["dataset"] for r in rows}):
        for task in tasks:
            for m in methods:
                v = [r["localisation"] for r in rows if r["dataset"] == ds and r["task"] == task
                     and r["method"] == m and r["localisation"] is not None]
                c = [r["chance"] for r in rows if r["dataset"] == ds and r["task"] == task
                     and r["method"] == m and r["chance"] is not None]
                b = [r["background"] for r in rows if r["dataset"] == ds and r["task"] == task
                     and r["method"] == m and r["background"] is not None]
                w = [r["chance_window"] for r in rows if r["dataset"] == ds and r["task"] == task
                     and r["method"] == m and r.get("chance_window") is not None]
                if v:
                    n_empty = sum(1 for r in rows if r["dataset"] == ds and r["task"] == task
                                  and r["method"] == m and r["localisation"] is None)
                    summary[f"{ds}/{task}/{m}"] = {"mean": round(float(np.mean(v)), 3),
                                                   "sd": round(float(np.std(v)), 3), "n": len(v),
                                                   **({"empty_maps": n_empty} if n_empty else {}),
                                                   "uniform_mean": round(float(np.mean(c)), 3),
                                                   "background_median": round(float(np.mean(b)), 3)
                                                   if b else None,
                                                   **({"uniform_window_mean":
                                                       round(float(np.mean(w)), 3)} if w else {})}
    layers = LEGACY_LAYER if a.fusion == "legacy" else DEFAULT_LAYER
    table = {"protocol": "fraction of heatmap mass inside the expert whole-tumour mask dilated "
                         "by 5 mm (BraTS 2021: labels 1+2+4; TCGA-LGG: FLAIR abnormality); "
                         "'uniform' = the same score for a heatmap uniform over the head; "
                         + ("'uniform_window' = the same for a heatmap uniform over the model's "
                            "tumour-centred window (its maps lie inside it by construction); "
                            if kind in P.ROI_KINDS else "") +
                         "'background_median' = median heatmap value (max 1) in the head outside "
                         "the dilated mask; heatmaps restricted to the head foreground",
             "command": "python scripts/eval_localisation.py --model " + a.model
                        + (f" --packs {a.packs}" if a.packs else "")
                        + (" --no-brats" if a.no_brats else "")
                        + (f" --fusion {a.fusion}" if a.fusion != "raw" else "")
                        + (f" --layer {a.layer}" if a.layer else "")
                        + (f" --seg-run {a.seg_run}" if a.seg_run else ""),
             "settings": ({"fusion": a.fusion, "layer": a.layer or layers[kind],
                           **({"window_segmentation": sorted({
                               r["segmentation"] for r in rows if r.get("segmentation")})}
                              if kind in P.ROI_KINDS else {})} if kind in layers else
                          {"method": "occlusion", "segmentation": sorted({
                              r["segmentation"] for r in rows if r.get("segmentation")})})
                         | {"target": "the positive class (e.g. mutant)"},
             "summary": summary, "per_case": rows}
    if selection is not None:
        table["layer_selection"] = selection
    print(json.dumps(summary, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(table, indent=1))
    if a.write_card and selection is not None:
        path = find_model(a.model)
        card = read_card(path)
        card["explanations"] = {**(card.get("explanations") or {}), "layer_selection": {
            k: v for k, v in selection.items() if k != "per_case"}}
        save_model(path, load_state_dict_file(path), card)
        print(f"card updated (layer_selection): {path}")
        return 0
    if a.write_card:
        path = find_model(a.model)
        card = read_card(path)
        new = {k: v for k, v in table.items() if k != "per_case"}
        old = dict(card.get("explanations") or {})              # keeps cv_prediction's entries
        if a.fusion == "raw":
            if a.note:
                new["note"] = a.note
            card["explanations"] = {**old, **new}
        else:
            new["what"] = ("the previous heatmaps (per-slice / per-member min-max normalised "
                           "CAMs, corner-aligned upsampling, legacy layers), same protocol")
            card["explanations"] = {**old, f"{a.fusion}_heatmaps": new}
        save_model(path, load_state_dict_file(path), card)
        print(f"card updated: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
