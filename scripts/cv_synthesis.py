#!/usr/bin/env python
"""Reproduce the synthesis model card's table (patient-level CV) and build the shipped model.

    OMP_NUM_THREADS=1 python scripts/cv_synthesis.py --out /tmp/synth-cv            # all phases
    python scripts/cv_synthesis.py --out /tmp/synth-cv --phase eval                 # re-score

Phases
  train  ``core.train.engine.train`` on ``configs/synthesis.yaml``: 4-fold patient-level CV
         (stratified by dataset: 2 BraTS cases + ~22 TCGA-LGG packs held out per fold), fixed
         epochs, no checkpoint selection (the last epoch of each fold is kept).
  eval   For every held-out BraTS case, each target synthesised from the other three with
         ``core.synthesize.synthesize`` on the case's native 1 mm grid (the path users get),
         scored with the card's protocol; the linear per-voxel regression baseline fitted on the
         same fold's training BraTS cases at 1 mm. Held-out TCGA-LGG packs are scored at their
         own grid (every brain slice) with the model and the baseline.
  ship   Writes ``napari_radiogen/weights/synth_seq2seq2d.safetensors`` + card: the fold model
         whose test fold holds BraTS2021_00006 (the bundled sample case), so the sample-case
         test checks held-out performance; the card holds the CV table, the baseline, per-case
         values and the sample-case value.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEQ = ("t1", "t1ce", "t2", "flair")
SAMPLE_ID = "BraTS2021_00006"


def _cfg(out: Path, cache: str, max_minutes=None):
    from napari_radiogen.core.train.config import load_config
    import napari_radiogen.core.train.tasks.synthesis  # noqa: F401  (registers the task)
    over = {"cache_dir": cache}
    if max_minutes:
        over["train.max_minutes"] = max_minutes
    return load_config(ROOT / "napari_radiogen" / "configs" / "synthesis.yaml", **over)


def phase_train(out: Path, cache: str, max_minutes=None) -> None:
    import torch
    torch.set_num_threads(1)
    from napari_radiogen.core.train.engine import TrainProgress, TrainResult, train
    cfg = _cfg(out, cache, max_minutes)
    res = None
    for item in train(cfg, out / "engine", device="cpu"):
        if isinstance(item, TrainResult):
            res = item
        elif isinstance(item, TrainProgress) and (item.epoch_end or item.phase != "train"):
            print(time.strftime("%H:%M:%S"), item.message, flush=True)
    print("engine cv (model grid, every 4th slice):", json.dumps(res.cv_summary, default=str))


def _ci(vals):
    v = np.asarray([x for x in vals if x is not None and math.isfinite(x)], float)
    if len(v) == 0:
        return {"mean": None}
    out = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
    if len(v) > 1:
        from scipy import stats
        h = stats.t.ppf(0.975, len(v) - 1) * out["sd"] / math.sqrt(len(v))
        out["ci95"] = [out["mean"] - h, out["mean"] + h]
    return out


def _load_case(folder: Path):
    from napari_radiogen.core.io import load_case
    return load_case(folder)


def phase_eval(out: Path, cache: str, only_folds=None, brats_only: bool = False) -> dict:
    """``brats_only``: re-score the held-out BraTS cases of every fold (e.g. after a metric was
    added) and keep each fold's saved TCGA-LGG rows."""
    import torch
    torch.set_num_threads(int(os.environ.get("EVAL_THREADS", "1")))
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core import synthesize as S
    from napari_radiogen.core.train.tasks.synthesis import (SynthEvalSet, SynthesisTask,
                                                            apply_linear, evaluate_patients,
                                                            fit_linear, linear_baseline)
    cfg = _cfg(out, cache)
    task = SynthesisTask(cfg)
    kinds = {r.patient_id: r.strata for r in task.patients()}
    paths = {r.patient_id: Path(r.info["path"]) for r in task.patients()}
    plan = json.loads((out / "engine" / "splits.json").read_text())
    per_case, lgg_rows = [], []
    for st in plan:
        k = st["fold"] + 1
        fold_file = out / f"eval_fold{k}.json"
        if only_folds and k not in only_folds:
            continue
        if fold_file.exists() and not only_folds and not brats_only:   # evaluated already
            saved = json.loads(fold_file.read_text())
            per_case += saved["per_case"]
            lgg_rows += saved["lgg"]
            continue
        n_before = len(per_case)
        lm = load_model(str(out / "engine" / "folds" / f"fold{k}_best.safetensors"),
                        task="synthesis")
        train_b = [p for p in st["train"] + st["val"] if kinds[p] == "brats"]
        test_b = [p for p in st["test"] if kinds[p] == "brats"]
        test_l = [p for p in st["test"] if kinds[p] == "lgg"]
        # baseline at 1 mm on the fold's training BraTS cases
        tr_prep = [S.prepare_case(_load_case(paths[p])) for p in train_b]
        fits = {}
        for t in SEQ:
            src = [s for s in SEQ if s != t]
            fits[t] = fit_linear([np.stack([pp.arrays[s][pp.mask] for s in src], 1)
                                  for pp in tr_prep], [pp.arrays[t][pp.mask] for pp in tr_prep])
        del tr_prep
        for p in test_b:
            case = _load_case(paths[p])
            prep = S.prepare_case(case)
            for t in SEQ:
                t0 = time.perf_counter()
                res = None
                for item in S.synthesize(case, lm, t, sources=[s for s in SEQ if s != t]):
                    if not isinstance(item, S.Progress):
                        res = item
                dt = time.perf_counter() - t0
                src = [s for s in SEQ if s != t]
                bl = apply_linear(fits[t], np.stack([prep.arrays[s] for s in src])) * prep.mask
                real = prep.arrays[t]
                raw = np.asarray(case.sequences[t].array, np.float32)
                ref_real = raw if raw.shape == real.shape else real
                ref_m = S.reference_scores(res.volume.array, ref_real)
                ref_b = S.reference_scores(bl, ref_real)
                row = {"fold": k, "case_id": p, "target": t, "psnr_db": res.psnr,
                       "ssim_brain": res.ssim, "mae": res.mae, "seconds": dt,
                       "seconds_synthesis": res.seconds_synthesis,
                       "baseline_psnr_db": S.psnr(bl, real, prep.mask),
                       "baseline_ssim_brain": S.ssim_brain(bl, real, prep.mask),
                       "psnr_db_reference_protocol": ref_m[0],
                       "ssim_reference_protocol": ref_m[1],
                       "baseline_psnr_db_reference_protocol": ref_b[0],
                       "baseline_ssim_reference_protocol": ref_b[1]}
                per_case.append(row)
                print(json.dumps(row), flush=True)
        if brats_only:
            saved = json.loads(fold_file.read_text())["lgg"]
            lgg_rows += saved
            fold_file.write_text(json.dumps({"per_case": per_case[n_before:], "lgg": saved},
                                            default=str))
            continue
        # TCGA-LGG held-out packs at their grid, every brain slice
        tl = task.load(test_l)
        ev = evaluate_patients(lm.module, SynthEvalSet(tl, slice_step=1))
        bl = linear_baseline(task.load([p for p in st["train"] + st["val"]]), tl, slice_step=1)
        lgg_rows.append({"fold": k, "model": {kk: v for kk, v in ev.items() if kk != "predictions"},
                         "baseline": bl, "n": len(test_l)})
        print("lgg fold", k, json.dumps(lgg_rows[-1]), flush=True)
        fold_file.write_text(json.dumps({"per_case": per_case[n_before:], "lgg": [lgg_rows[-1]]},
                                        default=str))
    if only_folds:
        return {}
    result = summarise(per_case, lgg_rows, plan)
    (out / "cv_results.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def summarise(per_case, lgg_rows, plan) -> dict:
    # summaries: per target, mean over folds of the fold means (CV), and over cases
    table = {}
    for t in SEQ + ("all",):
        rows = [r for r in per_case if t == "all" or r["target"] == t]
        folds = sorted({r["fold"] for r in rows})
        def fold_means(key):
            return [float(np.mean([r[key] for r in rows if r["fold"] == f])) for f in folds]
        table[t] = {"psnr_db": _ci(fold_means("psnr_db")), "ssim_brain": _ci(fold_means("ssim_brain")),
                    "baseline_psnr_db": _ci(fold_means("baseline_psnr_db")),
                    "baseline_ssim_brain": _ci(fold_means("baseline_ssim_brain")),
                    "per_case_psnr_mean": float(np.mean([r["psnr_db"] for r in rows])),
                    **({kk: _ci(fold_means(kk)) for kk in (
                        "psnr_db_reference_protocol", "ssim_reference_protocol",
                        "baseline_psnr_db_reference_protocol",
                        "baseline_ssim_reference_protocol")}
                       if rows and "psnr_db_reference_protocol" in rows[0] else {}),
                    "per_case_ssim_mean": float(np.mean([r["ssim_brain"] for r in rows]))}
    lgg = {}
    for t in ("t1", "t1ce", "flair", "all"):
        kp, ks = ("psnr_db", "ssim_brain") if t == "all" else (f"psnr_{t}", f"ssim_{t}")
        lgg[t] = {"psnr_db": _ci([r["model"].get(kp) for r in lgg_rows]),
                  "ssim_brain": _ci([r["model"].get(ks) for r in lgg_rows]),
                  "baseline_psnr_db": _ci([r["baseline"].get(kp) for r in lgg_rows]),
                  "baseline_ssim_brain": _ci([r["baseline"].get(ks) for r in lgg_rows])}
    return {"brats_native": table, "brats_per_case": per_case, "lgg": lgg, "lgg_folds": lgg_rows,
            "plan": plan}


def reference_protocol_block(table: dict) -> dict:
    """The BraTS CV under the Seq2Seq reference's own evaluation (core.synthesize.
    REFERENCE_PROTOCOL), model and baseline, for comparison with the issue's targets (which
    come from that paper); empty when the rows predate the metric."""
    from napari_radiogen.core.synthesize import REFERENCE_PROTOCOL
    if "psnr_db_reference_protocol" not in table.get("all", {}):
        return {}
    a = table["all"]
    return {"reference_protocol": {
        "protocol": REFERENCE_PROTOCOL,
        "brats_cv": {t: {"psnr_db": v["psnr_db_reference_protocol"],
                         "ssim": v["ssim_reference_protocol"],
                         "baseline_psnr_db": v["baseline_psnr_db_reference_protocol"],
                         "baseline_ssim": v["baseline_ssim_reference_protocol"]}
                     for t, v in table.items()},
        "targets_reached_under_this_protocol": bool(
            a["psnr_db_reference_protocol"]["mean"] >= 27.0
            and a["ssim_reference_protocol"]["mean"] >= 0.86),
        "note": "the same held-out BraTS cases, synthetic volumes and folds as brats_cv, scored "
                "the way the Seq2Seq code scores (re-implemented from its public code; its SSIM "
                "function is not in that code, so SSIM here is the project's Gaussian-window "
                "SSIM at data range 2). brats_cv (brain voxels only) stays the card's headline; "
                "the per-voxel linear baseline is scored the same way for scale"}}


def phase_ship(out: Path, cache: str, dst: Path = None, sample_id: str = SAMPLE_ID) -> Path:
    from napari_radiogen.core.models import load_state_dict_file, new_card, read_card, save_model
    from napari_radiogen.core.synthesize import PROTOCOL, CONTRIBUTION_METHOD
    res = json.loads((out / "cv_results.json").read_text())
    plan = res["plan"]
    st = next(s for s in plan if sample_id in s["test"])
    k = st["fold"] + 1
    src = out / "engine" / "folds" / f"fold{k}_best.safetensors"
    fold_card = read_card(src)
    cfg = _cfg(out, cache)
    cfg_clean = {kk: v for kk, v in cfg.items() if not kk.startswith("_") and kk != "cache_dir"}
    tcfg, scfg, mcfg = cfg["train"], cfg.get("synthesis") or {}, cfg.get("model") or {}
    crop = int(scfg.get("crop", 96))
    minutes = round(float(tcfg.get("max_minutes") or 0) / max(1, int(cfg.get("folds", 4))))
    schedule = (f"fixed {tcfg['epochs']} epochs x {scfg.get('samples_per_epoch')} samples "
                f"(batch {tcfg['batch_size']}, {crop} px crops) or until the wall-clock cap of "
                f"{minutes} min per fold (metrics.epochs_run_per_fold)")
    residual = mcfg.get("linear", "mlp") == "table"
    ba, la = res["brats_native"]["all"], res["lgg"]["all"]
    arch_note = ("residual over a per-voxel linear regression: one weight vector + offset per "
                 "(target, source subset), initialised with the least-squares fit on the fold's "
                 "training patients (the baseline's fit) and fine-tuned, plus a conditional U-Net "
                 "(FiLM on the target code and the source subset) that adds the residual; the net "
                 "starts as the baseline" if residual else
                 "conditional U-Net (FiLM on the target code) + a conditional linear path")
    engine_card = {}
    eng = out / "engine" / "synth_seq2seq2d.card.json"
    if eng.exists():
        engine_card = json.loads(eng.read_text())
    sample_rows = {r["target"]: r for r in res["brats_per_case"] if r["case_id"] == sample_id}
    # the same case as bundled (brain-cropped): each target removed and synthesised from the rest
    bundled, ranking_example = {}, None
    try:
        import torch
        from napari_radiogen.core import progress as _pg
        from napari_radiogen.core import synthesize as S
        from napari_radiogen.core.models import LoadedModel, build_from_card
        from napari_radiogen.core.sample import load_sample_case
        torch.set_num_threads(int(os.environ.get("EVAL_THREADS", "1")))
        mod = build_from_card(fold_card)
        mod.load_state_dict(load_state_dict_file(src))
        lm = LoadedModel(name="synth_seq2seq2d", card=fold_card, module=mod.eval(), path=src)
        full = load_sample_case()
        prep = S.prepare_case(full)
        for t in SEQ:
            case = full.__class__(case_id=full.case_id, sequences={q: v for q, v in
                                  full.sequences.items() if q != t}, source=full.source)
            r = _pg.run(S.synthesize(case, lm, t, device="cpu"))
            bundled[t] = {"psnr_db": S.psnr(r.volume.array, prep.arrays[t], prep.mask),
                          "ssim_brain": S.ssim_brain(r.volume.array, prep.arrays[t], prep.mask),
                          "seconds_synthesis": r.seconds_synthesis}
            print("bundled sample", t, bundled[t], flush=True)
        rk = _pg.run(S.rank_sequences(full, lm, device="cpu", maps=False))
        ranking_example = {"case_id": full.case_id, "scores": rk.cases[0].scores,
                           "pairs": rk.cases[0].pairs}
        print("ranking", json.dumps(rk.cases[0].scores), flush=True)
    except Exception as e:  # the bundled sample is optional for the card
        print("bundled sample case not scored:", e)
    card = new_card(
        "synth_seq2seq2d", "synthesis", fold_card["architecture"],
        sequences=list(SEQ), targets=list(SEQ), spacing_mm=[2.0, 2.0, None],
        input_size="2D axial slices at 2 mm in-plane (any size, padded to a multiple of 8); "
                   f"trained on {crop} x {crop} crops of 128 x 128 slices",
        normalisation="per volume: clip(x / p99.5 inside the brain mask, 0, 1); output in the "
                      "same units",
        training_data={
            "datasets": ["BraTS 2021 training data (8 cases in ../shared/data/brats2021)",
                         "TCGA-LGG (Buda et al. 2019 slice packs, 88 patients; unavailable "
                         "channels and T2 treated as missing, never inputs or targets)"],
            "patients": st["train"], "held_out_patients": st["test"],
            "note": f"the shipped model is the fold-{k} model of the cross-validation (its test "
                    f"fold holds {SAMPLE_ID}, the bundled sample case, so the sample-case test "
                    "checks held-out performance); it never saw the patients listed as held out"},
        config=cfg_clean,
        metrics={
            "protocol": PROTOCOL + "; 4-fold patient-level CV (seed 0, stratified by dataset: 2 "
                        "BraTS cases and ~22 TCGA-LGG packs per test fold), " + schedule +
                        ", no checkpoint selection; BraTS: each target from the other "
                        "three at the native 1 mm grid; mean, SD and 95% t-interval over the 4 "
                        "fold means; TCGA-LGG: each available target from the other available "
                        "ones, at the packs' grid (~1.9 mm), every brain slice, head mask (not "
                        "skull-stripped)",
            "brats_cv": res["brats_native"],
            "brats_per_case": res["brats_per_case"],
            "tcga_lgg_cv": res["lgg"],
            "engine_cv_model_grid": engine_card.get("metrics", {}).get("cv"),
            "issue_targets": {"psnr_db": 27.0, "ssim_brain": 0.86,
                              "reached": bool(res["brats_native"]["all"]["psnr_db"]["mean"] >= 27.0
                                              and res["brats_native"]["all"]["ssim_brain"]["mean"]
                                              >= 0.86)},
            **reference_protocol_block(res["brats_native"]),
            "reference": "Seq2Seq reports 27.8 dB / SSIM 0.872 on BraTS 2021 with 830 training "
                         "cases at full resolution on GPU; this CPU model trains on 6 BraTS + "
                         f"66 TCGA-LGG patients per fold for at most ~{minutes} minutes on one "
                         "(shared) CPU thread",
            "architecture_note": arch_note},
        baseline={"name": "per-voxel linear regression of the target from the other sequences "
                          "(with intercept), fitted on the same fold's training patients",
                  "brats_cv": {t: {"psnr_db": v["baseline_psnr_db"],
                                   "ssim_brain": v["baseline_ssim_brain"]}
                               for t, v in res["brats_native"].items()},
                  "tcga_lgg_cv": {t: {"psnr_db": v["baseline_psnr_db"],
                                      "ssim_brain": v["baseline_ssim_brain"]}
                                  for t, v in res["lgg"].items()}},
        sample_case={"case_id": SAMPLE_ID, "held_out": True,
                     "note": "per_target = the CV value of this held-out case (full 240x240x155 "
                             "volume); bundled = the same measured on the bundled brain-cropped "
                             "copy (napari_radiogen/data), with the target file removed",
                     "per_target": {t: {"psnr_db": r["psnr_db"], "ssim_brain": r["ssim_brain"],
                                        "sources": [s for s in SEQ if s != t]}
                                    for t, r in sample_rows.items()},
                     "bundled": bundled},
        ranking={"method": CONTRIBUTION_METHOD, "example": ranking_example},
        intended_use="research: fill a missing input sequence for the segmentation/prediction "
                     "models (results then say they used a synthetic input), and rank how much "
                     "unique information each sequence carries. Synthetic volumes are not "
                     "acquired images and must not be read diagnostically.",
        limitations=[f"trained on CPU for at most ~{minutes} minutes per fold on 6 BraTS + ~66 "
                     "TCGA-LGG patients; far below the issue's targets (27 dB / SSIM 0.86)",
                     "against the linear per-voxel regression baseline on the same folds: BraTS "
                     f"PSNR {ba['psnr_db']['mean']:.2f} vs {ba['baseline_psnr_db']['mean']:.2f} dB, "
                     f"SSIM {ba['ssim_brain']['mean']:.3f} vs "
                     f"{ba['baseline_ssim_brain']['mean']:.3f}; TCGA-LGG PSNR "
                     f"{la['psnr_db']['mean']:.2f} vs {la['baseline_psnr_db']['mean']:.2f} dB, SSIM "
                     f"{la['ssim_brain']['mean']:.3f} vs {la['baseline_ssim_brain']['mean']:.3f} "
                     "(better on some targets and cases, worse on others: see metrics and "
                     "baseline)",
                     "2D axial, 2 mm in-plane: finer detail comes only from the sources' high-pass "
                     "through the linear path; slice-to-slice consistency is not enforced",
                     "t2 is learned from BraTS only (TCGA-LGG packs have no T2): weakest target",
                     "intensities are normalised units (0..1 = 0..the 99.5th brain percentile), "
                     "not scanner units"],
        speed=(f"one 240x240x155 target from the other three (model + synthesis, no metrics), "
               f"1 torch thread on the shared 2-core machine: median "
               f"{np.median([r['seconds_synthesis'] for r in res['brats_per_case']]):.1f} s wall "
               "during the CV eval (metrics.brats_per_case[*].seconds_synthesis); the bundled "
               "brain-cropped sample: " + ", ".join(
                   f"{t} {v['seconds_synthesis']:.1f} s" for t, v in bundled.items())
               + " (sample_case.bundled). Use --threads 1 on oversubscribed cores"),
        fold=k, train_task="synthesis",
        citations=["Han L, Tan T, Zhang T, et al. Synthesis-based imaging-differentiation "
                   "representation learning for multi-sequence 3D/4D MRI. Med Image Anal "
                   "2024;92:103044 (Seq2Seq)",
                   "Baid U, et al. The RSNA-ASNR-MICCAI BraTS 2021 benchmark. arXiv:2107.02314",
                   "Menze BH, et al. IEEE TMI 2015;34(10):1993-2024",
                   "Bakas S, et al. Sci Data 2017;4:170117",
                   "Buda M, Saha A, Mazurowski MA. Comput Biol Med 2019;109:218-225",
                   "UCSF-PDGM (TCIA, CC BY 4.0) for BraTS2021_00006"])
    dst = dst or ROOT / "napari_radiogen" / "weights" / "synth_seq2seq2d.safetensors"
    # epochs each fold actually ran (the wall-clock cap train.max_minutes can end a fold early)
    state = out / "engine" / "state.json"
    if state.exists():
        hist = json.loads(state.read_text()).get("history", [])
        card["metrics"]["epochs_run_per_fold"] = {
            str(f): max(h["epoch"] for h in hist if h["fold"] == f)
            for f in sorted({h["fold"] for h in hist})}
    # the model this one replaces, scored on the same folds and protocol (kept across re-ships)
    prev = None
    if dst.exists():
        try:
            old = read_card(dst)
            if old.get("config") != card["config"]:
                prev = {"architecture": old.get("architecture"), "date": old.get("date"),
                        "config": old.get("config"),
                        "brats_cv": {t: {"psnr_db": v["psnr_db"], "ssim_brain": v["ssim_brain"]}
                                     for t, v in old["metrics"]["brats_cv"].items()},
                        "tcga_lgg_cv": {t: {"psnr_db": v["psnr_db"], "ssim_brain": v["ssim_brain"]}
                                        for t, v in old["metrics"]["tcga_lgg_cv"].items()}}
            else:
                prev = old.get("metrics", {}).get("previous_model")
        except Exception as e:  # an unreadable old card is not worth failing the ship for
            print("previous card not read:", e)
    if prev:
        card["metrics"]["previous_model"] = prev
    save_model(dst, load_state_dict_file(src), card)
    print("wrote", dst, os.path.getsize(dst) // 1024, "KiB")
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default="/tmp/radiogen-synth-cache")
    ap.add_argument("--phase", choices=["all", "train", "eval", "eval-brats", "ship"],
                    default="all",
                    help="eval-brats: re-score the held-out BraTS cases only (keeps the saved "
                         "TCGA-LGG rows), then ship")
    ap.add_argument("--max-minutes", type=float, default=None, help="training budget (all folds)")
    ap.add_argument("--eval-folds", default=None,
                    help="eval only these folds (e.g. 1,2) as soon as their models exist; a "
                         "later full eval reuses the saved fold results")
    a = ap.parse_args()
    out = Path(a.out)
    if a.phase in ("all", "train"):
        phase_train(out, a.cache, a.max_minutes)
    if a.phase in ("all", "eval"):
        phase_eval(out, a.cache, [int(x) for x in a.eval_folds.split(",")]
                   if a.eval_folds else None)
        if a.eval_folds:
            return
    if a.phase == "eval-brats":
        phase_eval(out, a.cache, brats_only=True)
    if a.phase in ("all", "ship", "eval-brats"):
        phase_ship(out, a.cache)


if __name__ == "__main__":
    main()
