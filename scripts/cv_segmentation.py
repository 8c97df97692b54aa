#!/usr/bin/env python
"""Cross-validate, finalise and ship the segmentation models (reproduces the model cards).

    # 1. train (CV + shipped model) with the project's engine, one run per config:
    OMP_NUM_THREADS=1 radiogen train segmentation_brats         --out runs/seg/brats_segresnet --no-install
    OMP_NUM_THREADS=1 radiogen train segmentation_brats_attunet --out runs/seg/brats_attunet   --no-install
    OMP_NUM_THREADS=1 radiogen train segmentation_lgg           --out runs/seg/lgg_segresnet   --no-install
    # the 2 mm attention U-Net (current 3D default; 4 folds + a retrain on all 8 cases; the
    # shipped model uses the 600-step config segmentation_brats_attunet2mm_long, the same protocol
    # as segmentation_brats_attunet2mm with twice its 300 optimiser steps):
    OMP_NUM_THREADS=1 radiogen train segmentation_brats_attunet2mm_long --out runs/seg/brats_attunet2mm --no-install
    # (or: python scripts/cv_segmentation.py --train --runs runs/seg)
    # 2. finalise: re-score every fold model on its held-out patients through the inference path
    #    (core.segment.segment, native grid, Dice + HD95), per-patient means with bootstrap CIs,
    #    the threshold baselines on the same folds, the architecture comparison, the sample-case
    #    Dice and the speed benchmark; write napari_radiogen/weights/<name>.safetensors + card:
    python scripts/cv_segmentation.py --runs runs/seg --ship
    # (one model only, e.g. the 2 mm net: --only brats_attunet2mm; models whose run folder is
    #  absent are compared through the metrics stored in their shipped cards, same folds)

Nothing here selects or tunes anything on the held-out folds: the configs are fixed, the fold
models are the engine's (last epoch, no inner validation), and the scores are only reported.
The 2 mm model's protocol (config segmentation_brats_attunet2mm, its postprocessing rule
included) was fixed beforehand / on a fold-1 pilot with inner validation (the fold-1 training
cases split 4 + 2), never on test folds; its shipped model is retrained on all 8 cases. The
shipped run uses segmentation_brats_attunet2mm_long: the same protocol with only the optimiser
step count raised from 300 to 600 (fixed from a timing probe, before any fold was trained); the
300-step run's CV numbers stay in the card (architecture_comparison) for the comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = {"brats_segresnet": "segmentation_brats", "brats_attunet": "segmentation_brats_attunet",
        "lgg_segresnet": "segmentation_lgg",
        "brats_attunet2mm": "segmentation_brats_attunet2mm_long"}
BRATS_RUNS = ("brats_segresnet", "brats_attunet", "brats_attunet2mm")
#: shipped model of each BraTS run (its card holds the CV metrics when the run folder is absent)
SHIPPED_NAME = {"brats_segresnet": "seg_brats_segresnet", "brats_attunet": "seg_brats_attunet",
                "brats_attunet2mm": "seg_brats_attunet2mm"}
TARGETS = {"brats": {"WT": 0.88, "TC": 0.80, "ET": 0.75}, "lgg": {"WT": 0.85}}


def optimiser_steps(cfg) -> int:
    """Optimiser steps per model of a BraTS config (epochs x ceil(patches per epoch / batch))."""
    import math
    t, m = cfg.get("train") or {}, cfg.get("model") or {}
    return int(t.get("epochs", 0)) * math.ceil(int(m.get("samples_per_epoch", 24))
                                               / int(t.get("batch_size", 1)))


def previous_run_entry(shipped_card: dict, steps: int):
    """The CV numbers of an earlier shipped run of the same model with another step count (kept
    in the card so the comparison survives re-shipping): (key, entry) or None."""
    if not shipped_card:
        return None
    prev_steps = optimiser_steps(shipped_card.get("config") or {})
    if prev_steps and prev_steps != steps:
        dm = (shipped_card.get("metrics") or {}).get("dice") or {}
        if dm:
            return (f"brats_attunet2mm_{prev_steps}steps",
                    {**{r: {k: v.get(k) for k in ("mean_over_folds", "ci95_t_over_folds",
                                                  "mean_per_patient", "ci95_bootstrap_patients",
                                                  "per_fold")} for r, v in dm.items()},
                     "source": f"the previously shipped {shipped_card.get('name')} "
                               f"({prev_steps} optimiser steps per model, same folds, dated "
                               f"{shipped_card.get('date')})"})
    for k, v in (shipped_card.get("architecture_comparison") or {}).items():
        if k.startswith("brats_attunet2mm_") and k.endswith("steps"):
            return k, v                     # carried over from an earlier re-ship
    return None


def bootstrap_ci(x, n=5000, seed=0):
    x = np.asarray([v for v in x if v is not None and np.isfinite(v)], float)
    if x.size == 0:
        return [None, None]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n, x.size))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def t_ci(x):
    from scipy import stats
    x = np.asarray(x, float)
    if x.size < 2:
        return [None, None]
    h = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return [float(x.mean() - h), float(x.mean() + h)]


def summarise(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    folds = sorted({r["fold"] for r in rows})
    per_fold = [float(np.mean([r[key] for r in rows if r["fold"] == f and r.get(key) is not None
                               and np.isfinite(r[key])] or [np.nan])) for f in folds]
    return {"mean_over_folds": float(np.nanmean(per_fold)), "ci95_t_over_folds": t_ci(per_fold),
            "per_fold": per_fold, "mean_per_patient": float(np.mean(vals)) if vals else None,
            "sd_per_patient": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "ci95_bootstrap_patients": bootstrap_ci(vals), "n_patients": len(vals)}


def train_all(runs_dir: Path, which):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for run in which:
        out = runs_dir / run
        cmd = [sys.executable, "-m", "napari_radiogen", "train", RUNS[run], "--out", str(out),
               "--no-install"]
        if (out / "checkpoint.safetensors").exists():
            cmd.append("--resume")
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)


# ------------------------------------------------------------------------------------------
def rescore_brats(run_dir: Path):
    """Every fold model on its held-out patients through core.segment (native grid)."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.progress import run as drive
    from napari_radiogen.core.segment import brats_baseline_wt, dice, segment

    plan = json.loads((run_dir / "splits.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = []
    for st in plan:
        k = st["fold"] + 1
        m = load_model(str(run_dir / "folds" / f"fold{k}_best.safetensors"), task="segmentation")
        for pid in st["test"]:
            case = load_case(Path(cfg["data"]) / pid)
            res = drive(segment(case, m, device="cpu"))
            row = {"patient_id": pid, "fold": k, "seconds": res.timings.get("total")}
            if m.card.get("postprocess"):       # the raw network output, for the record
                from napari_radiogen.core.segment import compare_to_truth
                raw = drive(segment(case, _without_postprocess(m), device="cpu"))
                for r, d in compare_to_truth(raw.labels, case.labels.array,
                                             with_hd95=False).items():
                    row[f"dice_{r}_no_postprocess"] = d["dice"]
            for r, d in res.metrics.items():
                row[f"dice_{r}"] = d["dice"]
                row[f"hd95_{r}"] = d["hd95_mm"]
            row["baseline_dice_WT"] = dice(brats_baseline_wt(case.sequences["flair"].array),
                                           case.labels.array > 0)
            rows.append(row)
            print(f"  fold {k} {pid}: " + ", ".join(f"{r} {row[f'dice_{r}']:.3f}"
                                                    for r in ("WT", "TC", "ET"))
                  + f" (baseline WT {row['baseline_dice_WT']:.3f})", flush=True)
    return rows


def _without_postprocess(m):
    import copy
    m2 = copy.copy(m)
    m2.card = {k: v for k, v in m.card.items() if k != "postprocess"}
    return m2


def lgg_rows(run_dir: Path):
    from napari_radiogen.core.segment import dice, pack_baseline_wt
    from napari_radiogen.core.train.tasks.segmentation import read_pack_for_training

    rep = json.loads((run_dir / "report" / "report.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = []
    for p in rep["predictions"]:
        it = read_pack_for_training(str(Path(cfg["data"]) / f"{p['patient_id']}.h5"))
        p = dict(p)
        p["baseline_dice_WT"] = dice(pack_baseline_wt(it["img"][:, 0]), it["mask"] > 0)
        rows.append(p)
    return rows


def sample_case_dice(model):
    from napari_radiogen.core.progress import run as drive
    from napari_radiogen.core.sample import SAMPLE_CASE_ID, load_sample_case
    from napari_radiogen.core.segment import segment
    res = drive(segment(load_sample_case(), model, device="cpu"))
    td = model.card.get("training_data") or {}
    trained = SAMPLE_CASE_ID in (td.get("shipped_model_trained_on") or td.get("fold_train") or [])
    return {"case": SAMPLE_CASE_ID + " (bundled, brain-cropped)",
            "dice": {r: round(d["dice"], 4) for r, d in res.metrics.items()},
            "hd95_mm": {r: d["hd95_mm"] for r, d in res.metrics.items()},
            "volumes_ml": {k: round(v, 3) for k, v in res.volumes_ml.items()},
            "in_training_set_of_shipped_model": trained,
            "note": "reproducibility check used by tests/test_segment.py (within 0.02); "
                    + ("the sample case is a TRAINING case of the shipped model, so this is "
                       "not a validation number" if trained else "not a training case")}


def speed(model, threads: int = 2):
    import torch
    from napari_radiogen.core.sample import load_sample_case
    from napari_radiogen.core.segment import benchmark_naive
    from napari_radiogen.core.io import load_case
    torch.set_num_threads(threads)
    out = {"threads": threads, "device": "cpu",
           "note": "measured on a shared 2-core machine under heavy load from other jobs; "
                   "idle timings are lower. Naive = same net, same weights and spacing, whole "
                   "uncropped volume, MONAI sliding_window_inference with the training patch "
                   "as window, overlap 0.5, gaussian blending, torch.no_grad."}
    b = benchmark_naive(load_sample_case(), model, device="cpu")
    out["sample_case"] = b
    full = ROOT.parent / "shared" / "data" / "brats2021" / "BraTS2021_00006"
    if full.exists():
        out["full_brats_case_240x240x155"] = benchmark_naive(load_case(full), model, device="cpu",
                                                             native_1mm=True)
    return out


# ------------------------------------------------------------------------------------------
def finalise(runs_dir: Path, ship: bool, bench: bool, which=tuple(RUNS)):
    from napari_radiogen.core.models import (SHIPPED_DIR, load_model, load_state_dict_file,
                                             read_card, save_model)
    results = {}
    for run in BRATS_RUNS:
        if run not in which and not any(w.startswith("brats") for w in which):
            continue
        d = runs_dir / run
        if not (d / "report" / "report.json").exists():
            print(f"skip {run}: not finished", flush=True)
            continue
        print(f"re-scoring {run}", flush=True)
        rows = rescore_brats(d)
        summ = {r: summarise(rows, f"dice_{r}") for r in ("WT", "TC", "ET")}
        hd = {r: summarise(rows, f"hd95_{r}") for r in ("WT", "TC", "ET")}
        base = summarise(rows, "baseline_dice_WT")
        results[run] = {"rows": rows, "dice": summ, "hd95": hd, "baseline_WT": base}
        if rows and "dice_WT_no_postprocess" in rows[0]:
            results[run]["dice_no_postprocess"] = {
                r: summarise(rows, f"dice_{r}_no_postprocess") for r in ("WT", "TC", "ET")}
    d = runs_dir / "lgg_segresnet"
    if "lgg_segresnet" in which and (d / "report" / "report.json").exists():
        rows = lgg_rows(d)
        results["lgg_segresnet"] = {"rows": rows, "dice": {"WT": summarise(rows, "dice_WT")},
                                    "dice_flair_only": summarise(rows, "dice_WT_flair_only"),
                                    "baseline_WT": summarise(rows, "baseline_dice_WT")}
    (runs_dir / f"segmentation_cv_summary_{'_'.join(which)}.json").write_text(json.dumps(results, indent=1,
                                                                       default=str))
    comparison = {run: {r: {k: v[k] for k in ("mean_over_folds", "ci95_t_over_folds",
                                              "mean_per_patient", "ci95_bootstrap_patients")}
                        for r, v in results[run]["dice"].items()}
                  for run in BRATS_RUNS if run in results}
    for run in BRATS_RUNS:        # not re-scored here: the numbers stored in its shipped card
        if run in comparison:
            continue
        cp = SHIPPED_DIR / f"{SHIPPED_NAME[run]}.card.json"
        if cp.exists():
            dm = (json.loads(cp.read_text()).get("metrics") or {}).get("dice") or {}
            if dm:
                comparison[run] = {r: {k: v.get(k) for k in (
                    "mean_over_folds", "ci95_t_over_folds", "mean_per_patient",
                    "ci95_bootstrap_patients", "per_fold")} for r, v in dm.items()}
                comparison[run]["source"] = f"{cp.name} (same folds)"
    for run, res in results.items():
        if run not in which:
            continue
        d = runs_dir / run
        cfg = json.loads((d / "config.json").read_text())
        name = cfg["name"]
        src = d / f"{name}.safetensors"
        card = read_card(src)
        kind = "lgg" if run.startswith("lgg") else "brats"
        plan = json.loads((d / "splits.json").read_text())
        fold1_train = plan[0]["train"] + plan[0]["val"]
        from napari_radiogen.core.train.tasks.segmentation import DATASET_BRATS, DATASET_LGG
        retrain = cfg.get("final") == "retrain"
        all_ids = sorted({p for st in plan for p in st["train"] + st["val"] + st["test"]})
        card["training_data"] = dict(card.get("training_data") or {}, fold_train=fold1_train,
                                     shipped_model_trained_on=all_ids if retrain else fold1_train,
                                     datasets=DATASET_LGG if kind == "lgg" else DATASET_BRATS)
        if retrain:
            card["final_model"] = {
                "mode": "retrain", "epochs": int(cfg["train"]["epochs"]),
                "note": "retrained on all 8 cases with the folds' fixed schedule (same epochs, "
                        "steps and seed); no inner validation, no selection"}
        elif float(cfg["train"].get("val_fraction", 0.2)) <= 0:
            card["final_model"] = {
                "mode": "best_fold", "fold": 1,
                "note": "no inner validation (val_fraction 0): the fold-1 model is shipped "
                        "(trained on the 6 fold-1 training cases); nothing was selected"}
        card["metrics"]["protocol"] = (
            card["metrics"].get("protocol", "") + ". Fixed schedule (no inner validation, last "
            "epoch), no checkpoint selection or tuning on held-out folds. "
            + ("Re-scored by scripts/cv_segmentation.py through the inference path "
               "(core.segment.segment, native 1 mm grid). " if kind == "brats" else
               "Per-patient Dice over the whole slice stack from the engine's held-out-fold "
               "evaluation (the same slices_input / slices_probs functions as core.segment). ")
            + "95% CIs: t-interval over fold means and bootstrap over patients.")
        card["metrics"]["dice"] = res["dice"]
        if "hd95" in res:
            card["metrics"]["hd95_mm"] = res["hd95"]
        if "dice_no_postprocess" in res:
            card["metrics"]["dice_no_postprocess"] = res["dice_no_postprocess"]
            card["metrics"]["postprocess"] = {
                "rule": card.get("postprocess"),
                "note": "fixed before the CV (config), applied by core.segment on the native "
                        "grid; dice_no_postprocess = the same fold models without it (reported "
                        "only, not used to choose anything)"}
        if "dice_flair_only" in res:
            card["metrics"]["dice_flair_only_inputs"] = res["dice_flair_only"]
        card["metrics"]["per_patient"] = res["rows"]
        card["metrics"]["targets"] = TARGETS[kind]
        card["metrics"]["targets_met"] = {r: bool(res["dice"][r]["mean_over_folds"] >= t)
                                          for r, t in TARGETS[kind].items()}
        card["baseline"] = {
            "method": ("FLAIR > brain mean + 1.6 SD, largest 3D component (WT only)"
                       if kind == "brats" else
                       "FLAIR > head mean + 1.1 SD inside an Otsu head mask eroded in-plane by "
                       "10 mm, largest 3D component"),
            "dice_WT": res["baseline_WT"], "same_folds": True}
        steps = optimiser_steps(cfg)
        if kind == "brats" and run == "brats_attunet2mm":
            cp = SHIPPED_DIR / f"{SHIPPED_NAME[run]}.card.json"
            prev = previous_run_entry(json.loads(cp.read_text()) if cp.exists() else {}, steps)
            if prev:
                comparison[prev[0]] = prev[1]
                pm = np.mean([prev[1][r]["mean_over_folds"] for r in ("WT", "TC", "ET")])
                nm = np.mean([res["dice"][r]["mean_over_folds"] for r in ("WT", "TC", "ET")])
                card["notes"] = (
                    f"{steps} optimiser steps per model (config {RUNS[run]}). The same protocol "
                    f"(net, data, folds, seed, loss, lr, postprocessing) was shipped before with "
                    f"{prev[0].split('_')[-1][:-5]} steps: CV mean of WT/TC/ET Dice {nm:.3f} here "
                    f"vs {pm:.3f} there, same folds (architecture_comparison['{prev[0]}']). The "
                    "step count was the only change, fixed from a timing probe before any fold "
                    "was trained; this run is shipped only because its CV mean is higher (a "
                    "choice between 2 runs: slightly optimistic).")
            card["architecture_comparison"] = {
                "note": "same 8 cases and the same 4 patient-level folds (seed 0); Dice per "
                        "region through core.segment on the native grid. seg_brats_attunet2mm "
                        f"(2 mm grid, 5-level attention U-Net, {steps} optimiser steps per "
                        "model, postprocessing rule) uses a protocol fixed beforehand "
                        "and checked on a fold-1 pilot with inner validation (fold-1 training "
                        "cases split 4 + 2; inner-val Dice WT 0.887 / TC 0.766 / ET 0.5 after "
                        "400 steps; the postprocessing changed nothing there; the CV schedule "
                        "was then cut to 300 steps to fit the shared CPU; a later rerun of the "
                        "same protocol with only the step count raised is compared below under "
                        "brats_attunet2mm_<steps>steps); it became the CLI / widget default "
                        "because its CV mean of WT/TC/ET Dice beats seg_brats_attunet's on these "
                        "folds (a selection between 2 candidates: slightly optimistic).",
                **comparison}
        elif kind == "brats":
            card["architecture_comparison"] = {
                "note": "same data, folds, preprocessing, schedule and budget; Dice per region. "
                        "The CLI / widget default 3D model (seg_brats_attunet) was chosen as "
                        "the better of the two by this CV, so its CV estimate is slightly "
                        "optimistic (selection between 2 candidates).",
                **comparison}
        else:
            card["architecture_comparison"] = {
                "note": "the 2D attention U-Net is selectable (model.arch: attention_unet in "
                        "configs/segmentation_lgg.yaml) but was not cross-validated on TCGA-LGG "
                        "within the CPU budget; SegResNet vs attention U-Net is compared on the "
                        "3D BraTS task (same folds and schedule)", **comparison}
        if kind == "brats":                  # 3D models: the sample case and the speed
            m = load_model(str(src), task="segmentation")
            m.card = card
            print(f"sample case {run}", flush=True)
            card["sample_case"] = sample_case_dice(m)
            if bench:
                print(f"benchmark {run}", flush=True)
                card["speed"] = speed(m)
        card["reproduce"] = (f"OMP_NUM_THREADS=1 radiogen train {RUNS[run]} --out runs/seg/{run} "
                             "--no-install && python scripts/cv_segmentation.py --runs runs/seg "
                             "--ship")
        card["limitations"] = (
            (f"Trained on a shared 2-core CPU (1 thread per run): small net, {steps} optimiser "
             f"steps ({steps * int(cfg['train']['batch_size'])} patches of 96 mm) per model, "
             "about 12-25 minutes each depending on the load. 8 BraTS 2021 cases only (6 per "
             "training fold); the shipped model is "
             "retrained on all 8 with the same schedule, so the sample case is one of its "
             "training cases. " if run == "brats_attunet2mm" else
             "Trained on a shared 2-core CPU (1 thread) within ~100 minutes for CV + final "
             "model. 8 BraTS 2021 cases only (6 per training fold; the shipped model: all 8, so "
             "the sample case is a training case). "
             if retrain else
             "Trained on a 2-core shared CPU within a ~45-minute budget for all segmentation "
             "runs: small nets, coarse grid, few optimisation steps. ")
            + ("" if retrain or run == "brats_attunet2mm" else
               "8 BraTS 2021 cases only (6 per training fold); the shipped model is the fold-1 "
               "model (6 training cases). " if kind == "brats" else
               "TCGA-LGG 2D packs at 128 x 128 (binned 2x2), 3-fold CV; shipped = fold-1 model. ")
            + "Targets from the issue (BraTS WT 0.88 / TC 0.80 / ET 0.75; LGG 0.85) are NOT "
              "reached where targets_met is false: these are honest CV numbers.")
        results[run]["card"] = card
        if ship:
            state = load_state_dict_file(src)
            out = save_model(SHIPPED_DIR / f"{name}.safetensors", state, card)
            print(f"shipped {out} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)
    for run, res in results.items():
        if run not in which:
            continue
        print(run, {r: round(v["mean_over_folds"], 3) for r, v in res["dice"].items()},
              "baseline WT", round(res["baseline_WT"]["mean_over_folds"], 3), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/seg", help="folder of the training runs")
    ap.add_argument("--train", action="store_true", help="run the trainings first")
    ap.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--ship", action="store_true",
                    help="write the models + cards into napari_radiogen/weights/")
    ap.add_argument("--no-bench", action="store_true", help="skip the speed benchmark")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    runs = Path(a.runs)
    if a.train:
        train_all(runs, a.only)
    t = time.time()
    finalise(runs, a.ship, not a.no_bench, tuple(a.only))
    print(f"done in {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
