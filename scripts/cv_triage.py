#!/usr/bin/env python
"""Reproduce the tumour-type triage table (CNN vs ViT vs baseline on the same folds) and ship
the models.

Protocol: the images of ``../shared/data/brain-tumour-4class/train`` are de-duplicated (exact
duplicates by SHA-256 merged, one kept), then split into K stratified folds (the engine's
``splits.kfold``, seed 0; the ViT and the CNN use the identical folds, checked here). Inside each
training part 10 % is held out as the inner validation set (best-epoch and best-fold choice); the
test fold is used only for the reported metrics. Baseline: logistic regression on 16x16 block
means + intensity histogram of the normalised slices, fitted on the same training parts.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/cv_triage.py --out /tmp/triage/runs --ship

runs ``radiogen train napari_radiogen/configs/triage_resnet.yaml`` and ``triage_vit.yaml``
(the project's training engine; each config carries its ``train.max_minutes`` budget), prints
the table, and with ``--ship`` writes ``napari_radiogen/weights/triage_{resnet,vit}.safetensors``
(the best-inner-validation fold model of each run) with cards extended by the pooled confusion
matrix, per-class recall, the architecture comparison, CPU timings, a fingerprint of the test
folds (``folds_sha1``) and ``previous_model``: the paired per-fold comparison with the card it
replaces (when the folds are the same). ``--summarise-only`` rebuilds from finished runs in
``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARCHS = {"resnet": "triage_resnet", "vit": "triage_vit"}


def run_engine(cfg_name: str, out: Path) -> None:
    from napari_radiogen.core import progress
    from napari_radiogen.core.train.engine import TrainProgress, train

    def show(p):
        if isinstance(p, TrainProgress) and (p.epoch_end or p.phase in ("test", "report")):
            print(f"  {cfg_name}: {p.message}", flush=True)

    progress.run(train(str(ROOT / "napari_radiogen" / "configs" / f"{cfg_name}.yaml"), out,
                       device="cpu", install=False), show)


def pooled(report: dict, classes):
    """Per-fold and pooled metrics from the held-out predictions of a run's report."""
    from napari_radiogen.core.train.tasks.triage import classification_metrics

    preds = [p for p in report["predictions"] if p.get("target") == "tumour_type"]
    folds = sorted({p["fold"] for p in preds})
    per_fold = {}
    for f in folds:
        ps = [p for p in preds if p["fold"] == f]
        per_fold[f] = classification_metrics([p["y_true"] for p in ps],
                                             np.array([p["y_prob"] for p in ps]))
    allm = classification_metrics([p["y_true"] for p in preds],
                                  np.array([p["y_prob"] for p in preds]))
    ids = {f: sorted(p["patient_id"] for p in preds if p["fold"] == f) for f in folds}
    return per_fold, allm, ids


def sample_case_check(model) -> dict:
    """Out-of-domain check on the bundled BraTS2021_00006 (glioblastoma, skull-stripped 3D):
    per sequence, what the model says on slices with > 200 tumour voxels and on the others."""
    from collections import Counter
    from napari_radiogen.core import progress, triage
    from napari_radiogen.core.sample import load_sample_case

    case = load_sample_case()
    seg = case.labels.array
    tum = (seg > 0).reshape(seg.shape[0], -1).sum(1) > 200
    out = {"case": case.case_id, "truth": "glioblastoma (IDH-wildtype), UCSF-PDGM-116",
           "tumour_slices": int(tum.sum()), "other_slices": int((~tum).sum())}
    for seq in case.present:
        t = progress.run(triage.classify_volume(case, model, sequence=seq))
        pred = np.array(t.predicted)
        out[seq] = {"tumour_slices": dict(Counter(pred[tum].tolist())),
                    "other_slices": dict(Counter(pred[~tum].tolist())),
                    "glioma_rate_on_tumour_slices": float(np.mean(pred[tum] == "glioma"))}
    return out


def mean_ci(v):
    from napari_radiogen.core.evaluate.metrics import mean_ci as mc
    return mc([float(x) for x in v])


def folds_sha1(splits) -> str:
    """Fingerprint of the test folds (sorted ids per fold): equal fingerprints = same folds."""
    import hashlib
    key = json.dumps([sorted(s["test"]) for s in splits])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def previous_comparison(old: dict, new_cv: dict, splits) -> dict:
    """Paired per-fold comparison of a new run with the card it replaces. The folds are the
    same when the old card's fold fingerprint matches, or (older cards without one) when the
    old shipped fold model's training ids equal the training part of that fold here."""
    same = None
    if old.get("folds_sha1"):
        same = old["folds_sha1"] == folds_sha1(splits)
    else:
        fold = (old.get("final_model") or {}).get("fold")
        pats = (old.get("training_data") or {}).get("patients")
        if fold and pats:
            s = splits[int(fold) - 1]
            same = sorted(pats) == sorted(list(s["train"]) + list(s["val"]))
    ocv = old["metrics"]["cv"]
    out = {"date": old.get("date"), "model": (old.get("config") or {}).get("model"),
           "epochs": ((old.get("config") or {}).get("train") or {}).get("epochs"),
           "same_folds": same}
    for k in ("macro_f1", "accuracy"):
        out[k] = {"mean": ocv[k]["mean"], "per_fold": ocv[k]["per_fold"]}
        if same and len(ocv[k]["per_fold"]) == len(new_cv[k]["per_fold"]):
            d = np.subtract(new_cv[k]["per_fold"], ocv[k]["per_fold"])
            out[f"new_minus_previous_{k}"] = {"per_fold": d.tolist(), **mean_ci(d)}
    return out


def fmt(s):
    lo, hi = (s.get("ci95") or [None, None])
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{s['mean']:.3f}{ci}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/triage/runs")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--summarise-only", action="store_true")
    ap.add_argument("--ship", action="store_true", help="write napari_radiogen/weights/triage_*")
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from napari_radiogen.core.triage import CLASSES

    out = Path(args.out)
    runs = {}
    for arch in args.archs:
        d = out / arch
        if not args.summarise_only:
            t0 = time.time()
            run_engine(ARCHS[arch], d)
            print(f"{arch}: trained in {(time.time() - t0) / 60:.1f} min", flush=True)
        card = json.loads((d / f"{ARCHS[arch]}.card.json").read_text())
        report = json.loads((d / "report" / "report.json").read_text())
        splits = json.loads((d / "splits.json").read_text())
        per_fold, allm, ids = pooled(report, CLASSES)
        runs[arch] = {"card": card, "per_fold": per_fold, "pooled": allm, "ids": ids,
                      "splits": splits, "dir": d}

    # identical test folds for every architecture
    tests = {a: [sorted(s["test"]) for s in r["splits"]] for a, r in runs.items()}
    same = len({json.dumps(t) for t in tests.values()}) == 1
    # architectures not retrained this time: compared from their shipped cards, when those
    # cards were made on the same test folds (fold fingerprint)
    from napari_radiogen.core.models import SHIPPED_DIR
    sha = folds_sha1(next(iter(runs.values()))["splits"])
    shipped_only = {}
    for arch in ARCHS:
        p = SHIPPED_DIR / f"{ARCHS[arch]}.card.json"
        if arch not in runs and p.exists():
            c = json.loads(p.read_text())
            if c.get("folds_sha1") == sha:
                shipped_only[arch] = c
                print(f"{ARCHS[arch]}: not retrained; compared from its shipped card "
                      f"({c.get('date')}, same folds)")
            else:
                print(f"{ARCHS[arch]}: not retrained and its shipped card used other folds; "
                      "left out of the comparison")
    print(f"\nfolds identical across architectures: {same}")
    if not same:
        print("WARNING: the runs used different folds; the comparison is not paired")

    # table
    base = next(iter(runs.values()))["card"].get("baseline") or {}
    rows = []
    hdr = ["model", "accuracy", "macro-F1"] + [f"recall {c}" for c in CLASSES]
    for arch, cv in [(a, r["card"]["metrics"]["cv"]) for a, r in runs.items()] + [
            (a, c["metrics"]["cv"]) for a, c in shipped_only.items()]:
        rows.append([ARCHS[arch], fmt(cv["accuracy"]), fmt(cv["macro_f1"])]
                    + [fmt(cv[f"recall_{c}"]) for c in CLASSES])
    if base:
        rows.append(["baseline (logreg)", fmt(base["accuracy"]), fmt(base["macro_f1"])]
                    + [fmt(base[f"recall_{c}"]) for c in CLASSES])
    k = len(next(iter(runs.values()))["splits"])
    n = sum(len(s["test"]) for s in next(iter(runs.values()))["splits"])
    print(f"\n{k}-fold CV on {n} de-duplicated images, mean over folds [95% t-CI]\n")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for arch, r in runs.items():
        print(f"\n{ARCHS[arch]} pooled held-out confusion matrix (rows true, cols predicted; "
              f"{', '.join(CLASSES)}):")
        for c, line in zip(CLASSES, r["pooled"]["confusion"]):
            print(f"  {c:<11} " + " ".join(f"{v:5d}" for v in line))
        print(f"  pooled accuracy {r['pooled']['accuracy']:.4f}, macro-F1 "
              f"{r['pooled']['macro_f1']:.4f}")

    comparison = {"folds_identical": same, "k": k, "n_images": n, "per_fold_macro_f1": {}}
    for arch, r in runs.items():
        comparison["per_fold_macro_f1"][ARCHS[arch]] = [
            r["per_fold"][f]["macro_f1"] for f in sorted(r["per_fold"])]
        comparison.setdefault("per_fold_accuracy", {})[ARCHS[arch]] = [
            r["per_fold"][f]["accuracy"] for f in sorted(r["per_fold"])]
    for arch, c in shipped_only.items():
        for k in ("macro_f1", "accuracy"):
            comparison.setdefault(f"per_fold_{k}", {})[ARCHS[arch]] = \
                c["metrics"]["cv"][k]["per_fold"]
        comparison.setdefault("from_shipped_cards", []).append(ARCHS[arch])
    if base:
        comparison["per_fold_macro_f1"]["baseline"] = base["macro_f1"]["per_fold"]
    if {"resnet", "vit"} <= set(runs) | set(shipped_only) and same:
        d = np.subtract(comparison["per_fold_macro_f1"]["triage_resnet"],
                        comparison["per_fold_macro_f1"]["triage_vit"])
        comparison["resnet_minus_vit_macro_f1"] = {"per_fold": d.tolist(), **mean_ci(d)}
        print(f"\nCNN - ViT macro-F1 per fold: {np.round(d, 4).tolist()}")

    if args.ship:
        from napari_radiogen.core.models import (SHIPPED_DIR, load_state_dict_file, save_model)
        from napari_radiogen.core import triage
        for arch, r in runs.items():
            name = ARCHS[arch]
            card = dict(r["card"])
            src = r["dir"] / f"{name}.safetensors"
            state = load_state_dict_file(src)
            card["name"] = name
            card["metrics"] = dict(card["metrics"])
            card["metrics"]["pooled_held_out"] = r["pooled"]
            card["metrics"]["per_fold_confusion"] = {
                str(f): m["confusion"] for f, m in r["per_fold"].items()}
            card["metrics"]["unit"] = ("de-duplicated images (the source does not identify "
                                       "patients; one patient may contribute several slices, "
                                       "so folds are image-level, not patient-level)")
            card["comparison"] = comparison
            card["reproduce"] = ("OMP_NUM_THREADS=1 .venv/bin/python scripts/cv_triage.py "
                                 "--out /tmp/triage/runs --ship")
            card["training_data"] = dict(card.get("training_data") or {})
            card["training_data"]["datasets"] = card.get("datasets")
            card["folds_sha1"] = folds_sha1(r["splits"])
            old_path = SHIPPED_DIR / f"{name}.card.json"
            if old_path.exists():
                old = json.loads(old_path.read_text())
                if old.get("date") == card.get("date"):      # re-shipping the same run
                    if old.get("previous_model"):
                        card["previous_model"] = old["previous_model"]
                else:
                    card["previous_model"] = previous_comparison(old, card["metrics"]["cv"],
                                                                 r["splits"])
                pm = card.get("previous_model")
                if pm and "new_minus_previous_macro_f1" in pm:
                    d = pm["new_minus_previous_macro_f1"]
                    print(f"{name}: macro-F1 vs the model it replaces ({pm['date']}), same "
                          f"folds: {np.round(d['per_fold'], 4).tolist()} mean {d['mean']:+.4f}")
            path = save_model(SHIPPED_DIR / f"{name}.safetensors", state, card)
            if not args.no_bench:
                model = triage.load_triage_model(str(path))
                b = triage.bench_triage(model)
                card["speed_cpu"] = {**b, "note": "radiogen process, torch threads as shown, "
                                     "shared 2-core machine; medians"}
                card["sample_case_check"] = sample_case_check(model)
                card["sample_case_check"]["note"] = (
                    "out of domain: the training slices are 2D, mostly unstripped, mixed "
                    "sequences; BraTS volumes are skull-stripped and resampled. Shown to make "
                    "the limits visible, not as a metric.")
                print(f"{name}: sample case glioma rate on tumour slices " + ", ".join(
                    f"{q} {card['sample_case_check'][q]['glioma_rate_on_tumour_slices']:.2f}"
                    for q in ("t1", "t1ce", "t2", "flair") if q in card["sample_case_check"]))
                save_model(path, state, card)
                print(f"{name}: one slice {1000 * b['one_slice_s']:.1f} ms, "
                      f"{b['volume_slices']}-slice volume {b['volume_s']:.2f} s, "
                      f"Grad-CAM {1000 * b['gradcam_s']:.0f} ms ({b['threads']} thread(s))")
            print(f"shipped {path} ({path.stat().st_size / 1e6:.2f} MB)")
        for arch, c in shipped_only.items():       # same weights; the comparison refreshed
            path = SHIPPED_DIR / f"{ARCHS[arch]}.safetensors"
            save_model(path, load_state_dict_file(path), {**c, "comparison": comparison})
            print(f"{ARCHS[arch]}: comparison in its card refreshed (weights unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
