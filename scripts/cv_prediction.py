#!/usr/bin/env python
"""Reproduce the prediction CV table (IDH, 1p/19q, grade, OS C-index) on TCGA-LGG.

Protocol: 5-fold patient-level CV stratified by IDH/1p19q subtype x grade (the engine's
``splits.kfold``), repeated with several seeds; inside each training part 20 % of the patients
are held out as the inner validation set (early stopping / checkpoint choice); the test fold is
used only for the reported predictions. The same folds serve the MIL model, the 3D CNN and the
baselines (age + sex logistic regression; whole-head intensity statistics + age + sex).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/cv_prediction.py \
        --data ../shared/data/tcga-lgg --out /tmp/cv_pred --seeds 0 1 --max-minutes 120 --ship

The MIL model is trained with auxiliary tumour-mask supervision by default (``--mil-aux on``,
``MIL_AUX``: the expert FLAIR-abnormality masks of the training packs supervise stage-1
tumour-presence and in-plane tumour heads, down-weight the inherited labels of tumour-free
slices and pull the stage-2 attention towards the per-slice tumour area; the shipped network
never sees a mask). ``--mil-aux off`` is the earlier model (no mask); ``--mil-aux pool`` also
pools each slice feature with the encoder's own predicted tumour map (tried, not shipped: see
the card's ``alternatives``).

``--ship`` writes the seed-0 fold models as fold ensembles to ``napari_radiogen/weights/
predict_mil.safetensors`` and ``predict_cnn3d.safetensors`` with their cards (metrics from this
run). ``--summarise-only`` rebuilds the table (and weights) from a finished ``--out`` folder.
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

MIL_CFG = {"arch": {"sequences": ["t1", "flair", "t1ce"], "widths": [8, 16, 32, 64],
                    "layers": [1, 1, 1, 1], "attn_hidden": 32, "embed_dim": 32,
                    "fusion_hidden": 32, "clinical": True, "survival": True, "dropout": 0.25,
                    "input_size": 64},
           "enc_epochs": 8, "enc_batch": 64, "enc_lr": 2e-3, "mil_epochs": 150, "mil_lr": 2e-3,
           "cox_weight": 0.5}
#: auxiliary tumour supervision of the MIL model (``--mil-aux on``): stage-1 tumour-presence and
#: coarse in-plane tumour heads on the expert FLAIR-abnormality masks of the training packs,
#: tumour-free slices' inherited labels down-weighted, stage-2 attention pulled towards the
#: per-slice tumour area (KL); training only, inference stays segmentation-free
MIL_AUX = {"tumour_weight": 1.0, "label_bg_weight": 0.1, "att_weight": 0.5, "tumour_layer": "layer2"}
CNN_CFG = {"arch": {"sequences": ["t1", "flair", "t1ce"], "widths": [8, 16, 32, 48],
                    "layers": [1, 1, 1, 1], "clinical": True, "survival": True, "dropout": 0.3,
                    "depth": 32, "input_size": 64},
           "epochs": 24, "batch": 8, "lr": 1e-3, "focal_gamma": 2.0, "cox_weight": 0.5}
CITATIONS = [
    "Buda M, Saha A, Mazurowski MA. Association of genomic subtypes of lower-grade gliomas with "
    "shape features automatically extracted by a deep learning algorithm. Comput Biol Med 2019 "
    "(LGG FLAIR-abnormality dataset; images from TCIA TCGA-LGG)",
    "Ceccarelli M et al. Molecular profiling reveals biologically discrete subsets and pathways of "
    "progression in diffuse glioma. Cell 2016 (IDH, 1p/19q, grade)",
    "Liu J et al. An integrated TCGA Pan-Cancer Clinical Data Resource. Cell 2018 (OS)",
    "Ilse M, Tomczak J, Welling M. Attention-based deep multiple instance learning. ICML 2018",
    "MONAI Consortium. MONAI: Medical Open Network for AI (networks)",
]


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def run_cv(args):
    import torch
    torch.set_num_threads(1)
    from napari_radiogen.core.train.splits import kfold
    from napari_radiogen.core.train.tasks import prediction as P

    t0 = time.time()
    cohort = P.load_cohort(args.data, limit=args.limit)
    log(f"loaded {len(cohort)} patients in {time.time() - t0:.0f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "folds").mkdir(exist_ok=True)
    recs = P.records(cohort)
    ids = [p["id"] for p in cohort]
    mil_cfg, cnn_cfg = dict(MIL_CFG), dict(CNN_CFG)
    mil_cfg["enc_epochs"] = args.enc_epochs
    if args.mil_aux in ("on", "pool"):
        mil_cfg["aux"] = dict(MIL_AUX)
    if args.mil_aux == "pool":
        mil_cfg["arch"] = dict(mil_cfg["arch"], tumour_pool=True)
    cnn_cfg["epochs"] = args.cnn_epochs
    deadline = t0 + args.max_minutes * 60
    for seed in args.seeds:
        folds = kfold(recs, args.folds, seed=seed)
        for k, (tr_ids, te_ids) in enumerate(folds):
            tr = [ids.index(i) for i in tr_ids]
            te = [ids.index(i) for i in te_ids]
            for model in args.models:
                f = out / "folds" / f"{model}_s{seed}_f{k}.json"
                if f.exists():
                    continue
                if time.time() > deadline:
                    log("time budget reached: stopping (finished folds are kept)")
                    return
                log(f"seed {seed} fold {k} {model} (train {len(tr)}, test {len(te)})")
                ts = time.time()
                state = None
                if model == "mil":
                    res, state = P.mil_fold(cohort, tr, te, mil_cfg, seed * 100 + k, log=log)
                elif model == "cnn3d":
                    res, state = P.cnn3d_fold(cohort, tr, te, cnn_cfg, seed * 100 + k, log=log)
                elif model in ("age_sex", "intensity"):
                    res = P.baseline_fold(cohort, tr, te, model)
                else:
                    raise SystemExit(f"unknown model {model}")
                rec = {"model": model, "seed": seed, "fold": k, "test_ids": te_ids,
                       "train_ids": tr_ids, "seconds": time.time() - ts,
                       "probs": {t: [float(v) for v in res["probs"][t]] for t in P.TASKS},
                       "risk": None if res.get("risk") is None else [float(v) for v in res["risk"]],
                       "info": res.get("info", {})}
                if "attention" in res:
                    rec["attention_flair"] = [a[1].round(4).tolist() for a in res["attention"]]
                if state is not None and seed == args.seeds[0]:
                    from safetensors.torch import save_file
                    save_file({n: v.contiguous() for n, v in state.items()},
                              str(out / "folds" / f"{model}_s{seed}_f{k}.safetensors"))
                f.write_text(json.dumps(rec))
                log(f"  done in {time.time() - ts:.0f} s")
    json.dump({"mil": mil_cfg, "cnn3d": cnn_cfg, "folds": args.folds, "seeds": args.seeds,
               "data": str(args.data)}, open(out / "config.json", "w"), indent=1)


def _boot_auc(y, p, rng, n=1000):
    from sklearn.metrics import roc_auc_score
    vals = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        vals.append(roc_auc_score(y[i], p[i]))
    return vals


def attention_on_tumour_slices(out_dir, data, model: str = "mil"):
    """Share of the FLAIR slice attention that falls on slices with expert tumour (pack masks),
    over the test patients of every fold (out of fold), mean over patient records; ``uniform``
    is the share of tumour slices (what a uniform attention would give)."""
    import h5py
    recs = [json.loads(f.read_text()) for f in sorted((Path(out_dir) / "folds").glob(f"{model}_s*_f*.json"))]
    share, uniform, tumour = [], [], {}
    for r in recs:
        for pid, att in zip(r["test_ids"], r.get("attention_flair") or []):
            if pid not in tumour:
                with h5py.File(Path(data) / f"{pid}.h5", "r") as h:
                    m = h["mask"][:]
                tumour[pid] = m.reshape(len(m), -1).any(1)
            t, a = tumour[pid], np.asarray(att, float)
            if len(a) != len(t) or not t.any() or a.sum() <= 0:
                continue
            share.append(float(a[t].sum() / a.sum()))
            uniform.append(float(t.mean()))
    if not share:
        return None
    return {"mean": round(float(np.mean(share)), 3), "uniform": round(float(np.mean(uniform)), 3),
            "n": len(share)}


def run_variant(out_dir) -> str:
    """The ``--mil-aux`` variant a run folder was trained with (from its config.json)."""
    cfg = json.loads((Path(out_dir) / "config.json").read_text()).get("mil") or {}
    if not cfg.get("aux"):
        return "--mil-aux off: no mask supervision"
    if (cfg.get("arch") or {}).get("tumour_pool"):
        return ("--mil-aux pool: mask supervision, and each slice feature also pools with the "
                "encoder's own predicted tumour map")
    return "--mil-aux on: mask supervision (masks in training only)"


def run_digest(out_dir, data):
    """Headline numbers of a finished CV run folder (for same-fold comparisons in the card)."""
    from napari_radiogen.core.train.tasks import prediction as P
    d = Path(out_dir)
    s = json.loads((d / "summary.json").read_text())["mil"]
    out = {t: round(s[t]["auc_mean"], 4) for t in P.TASKS}
    out["mean_auc"] = round(float(np.mean([out[t] for t in P.TASKS])), 4)
    out["c_index"] = round(s["survival"]["c_index_mean"], 4)
    v = [json.loads(f.read_text())["info"].get("inner_val_score")
         for f in sorted((d / "folds").glob("mil_s*_f*.json"))]
    v = [x for x in v if x is not None]
    out["inner_val_score_mean"] = round(float(np.mean(v)), 4) if v else None
    out["attention_on_tumour_slices"] = attention_on_tumour_slices(d, data)
    return out


def summarise(args):
    from napari_radiogen.core.train.tasks import prediction as P
    import pandas as pd
    out = Path(args.out)
    tab = pd.read_csv(Path(args.data) / "clinical.csv").set_index("patient_id")
    y = {t: {pid: P._label(t, tab.loc[pid, t]) for pid in tab.index} for t in P.TASKS}
    recs = [json.loads(f.read_text()) for f in sorted((out / "folds").glob("*.json"))]
    rng = np.random.default_rng(0)
    summary = {}
    for model in sorted({r["model"] for r in recs}):
        rr = [r for r in recs if r["model"] == model]
        seeds = sorted(s for s in {r["seed"] for r in rr}
                       if sum(r["seed"] == s for r in rr) == args.folds)   # complete CV runs only
        rr = [r for r in rr if r["seed"] in seeds]
        if not seeds:
            continue
        m = {"n_test_folds": len(rr), "seeds": seeds}
        for t in P.TASKS:
            fold_aucs, pooled, boots, brier, allp, ally = [], [], [], [], [], []
            for s in seeds:
                ps, ys = [], []
                for r in [r for r in rr if r["seed"] == s]:
                    yy = np.array([y[t][i] for i in r["test_ids"]])
                    pp = np.array(r["probs"][t])
                    a = P.auc(yy, pp)
                    if a == a:
                        fold_aucs.append(a)
                    ps.append(pp)
                    ys.append(yy)
                ps, ys = np.concatenate(ps), np.concatenate(ys)
                k = ys >= 0
                ps, ys = ps[k], ys[k]
                pooled.append(P.auc(ys, ps))
                boots += _boot_auc(ys, ps, rng, 1000 // len(seeds) + 1)
                brier.append(float(np.mean((ps - ys) ** 2)))
                allp.append(ps)
                ally.append(ys)
            allp, ally = np.concatenate(allp), np.concatenate(ally)
            bins = np.linspace(0, 1, 6)
            rel = []
            for b in range(5):
                sel = (allp >= bins[b]) & (allp < bins[b + 1] + (1e-9 if b == 4 else 0))
                if sel.any():
                    rel.append({"bin": [round(bins[b], 2), round(bins[b + 1], 2)],
                                "mean_predicted": float(allp[sel].mean()),
                                "observed": float(ally[sel].mean()), "n": int(sel.sum())})
            ece = sum(abs(r_["mean_predicted"] - r_["observed"]) * r_["n"] for r_ in rel) / len(allp)
            fa = np.array(fold_aucs)
            m[t] = {"auc_mean": float(fa.mean()), "auc_sd_folds": float(fa.std(ddof=1)) if len(fa) > 1 else None,
                    "auc_ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
                    "auc_ci95_method": "patient bootstrap of the pooled out-of-fold AUC (all seeds)",
                    "auc_pooled": float(np.mean(pooled)), "auc_folds": [round(float(v), 4) for v in fa],
                    "brier": float(np.mean(brier)), "ece": float(ece), "reliability": rel,
                    "prevalence": float(ally.mean())}
        if all(r.get("risk") is not None for r in rr):
            cis, pooled = [], []
            for s in seeds:
                T, E, R = [], [], []
                for r in [r for r in rr if r["seed"] == s]:
                    tt = [float(tab.loc[i, "os_days"]) for i in r["test_ids"]]
                    ee = [float(tab.loc[i, "os_event"]) for i in r["test_ids"]]
                    c = P.cindex(tt, ee, r["risk"])
                    if c == c:
                        cis.append(c)
                    T += tt
                    E += ee
                    R += r["risk"]
                pooled.append(P.cindex(T, E, R))
            m["survival"] = {"c_index_mean": float(np.mean(cis)), "c_index_sd_folds": float(np.std(cis, ddof=1)),
                             "c_index_pooled": float(np.mean(pooled)),
                             "note": "per-fold risks are on different scales; the fold mean is the headline"}
        if any(r.get("attention_flair") for r in rr):
            m["attention_on_tumour_slices"] = attention_on_tumour_slices(out, args.data, model)
        summary[model] = m
    summary["protocol"] = (f"patient-level stratified {args.folds}-fold CV (strata: IDH/1p19q subtype x grade), "
                           f"seeds {sorted({r['seed'] for r in recs})}; inner validation = 20% of each training "
                           "part (early stopping, checkpoint choice); test folds never used for choices; "
                           "auc_mean = mean of test-fold AUCs over all seeds and folds")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    km_figure(out, recs, tab, [m for m in ("mil", "cnn3d", "age_sex") if m in summary])
    print_table(summary)
    return summary


def km_figure(out, recs, tab, models):
    """Kaplan-Meier curves of predicted risk groups (median split within each test fold)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    stats = {}
    for ax, model in zip(axes[0], models):
        rr = [r for r in recs if r["model"] == model and r["risk"] is not None]
        if not rr:
            continue
        s0 = min(r["seed"] for r in rr)
        T, E, G = [], [], []
        for r in [r for r in rr if r["seed"] == s0]:
            risk = np.array(r["risk"])
            hi = risk > np.median(risk)
            T += [float(tab.loc[i, "os_days"]) for i in r["test_ids"]]
            E += [float(tab.loc[i, "os_event"]) for i in r["test_ids"]]
            G += list(hi)
        T, E, G = map(np.array, (T, E, G))
        for g, lab in ((False, "predicted low risk"), (True, "predicted high risk")):
            KaplanMeierFitter().fit(T[G == g] / 365.25, E[G == g], label=f"{lab} (n={int((G == g).sum())})"
                                    ).plot_survival_function(ax=ax, ci_show=False)
        p = logrank_test(T[G], T[~G], E[G], E[~G]).p_value
        stats[model] = float(p)
        ax.set_title(f"{model}: log-rank p={p:.3g}")
        ax.set_xlabel("years")
    fig.tight_layout()
    fig.savefig(out / "km_predicted_groups.png", dpi=110)
    (out / "km_logrank.json").write_text(json.dumps(stats))


def print_table(summary):
    print("\nmodel       " + "  ".join(f"{t:>24s}" for t in ("idh", "codel_1p19q", "grade")) + "   C-index")
    for model, m in summary.items():
        if model == "protocol":
            continue
        cells = []
        for t in ("idh", "codel_1p19q", "grade"):
            a = m[t]
            cells.append(f"{a['auc_mean']:.3f} [{a['auc_ci95'][0]:.2f},{a['auc_ci95'][1]:.2f}]".rjust(24))
        c = m.get("survival", {}).get("c_index_mean")
        print(f"{model:10s}  " + "  ".join(cells) + (f"   {c:.3f}" if c is not None else "   -"))


def ship(args, summary):
    import torch
    from safetensors.torch import load_file
    from napari_radiogen.core.models import new_card, save_model
    from napari_radiogen.core.predict import CLASSES, PREP
    from napari_radiogen.core.train.tasks import prediction as P
    out = Path(args.out)
    cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {
        "mil": MIL_CFG, "cnn3d": CNN_CFG}
    s0 = args.seeds[0]
    base = {t: {k: summary["age_sex"][t][k] for k in ("auc_mean", "auc_ci95", "brier")}
            for t in P.TASKS} if "age_sex" in summary else {}
    if "age_sex" in summary and "survival" in summary["age_sex"]:
        base["survival_age_alone"] = summary["age_sex"]["survival"]
    inten = ({t: {k: summary["intensity"][t][k] for k in ("auc_mean", "auc_ci95")} for t in P.TASKS}
             if "intensity" in summary else {})
    recs = [json.loads(f.read_text()) for f in sorted((out / "folds").glob("*.json"))]
    km = json.loads((out / "km_logrank.json").read_text()) if (out / "km_logrank.json").exists() else {}
    compare = {}
    if getattr(args, "previous_run", None) and "mil" in summary:
        new, old = run_digest(out, args.data), run_digest(args.previous_run, args.data)
        T = (*P.TASKS, "mean_auc", "c_index")
        compare["previous_model"] = {
            "what": f"the predict_mil shipped before ({run_variant(args.previous_run)}): same "
                    f"protocol, folds and seeds (run {args.previous_run})", "metrics": old,
            "change": {k: round(new[k] - old[k], 4) for k in T}}
        compare["explanations"] = {"slice_attention_on_test_patients": {
            "what": "share of the FLAIR slice attention on slices with expert tumour, test patients of "
                    "every CV fold (out of fold), mean over patients; 'uniform' = share of tumour slices",
            "this_model": (new["attention_on_tumour_slices"] or {}).get("mean"),
            "previous_model": (old["attention_on_tumour_slices"] or {}).get("mean"),
            "uniform": (new["attention_on_tumour_slices"] or {}).get("uniform")}}
    if getattr(args, "alternative_run", None) and "mil" in summary:
        alt = run_digest(args.alternative_run, args.data)
        compare["alternatives"] = [{
            "what": f"{run_variant(args.alternative_run)} (run {args.alternative_run}; same folds "
                    "and seeds)", "metrics": alt,
            "selection": "chosen between this model and the alternative by the mean inner-validation "
                         f"score over the folds (never the test folds): "
                         f"{run_digest(out, args.data)['inner_val_score_mean']} (shipped) vs "
                         f"{alt['inner_val_score_mean']}"}]
    for model, builder, kind in (("mil", "src_models.mil:build_mil_ensemble", "mil"),
                                 ("cnn3d", "src_models.cnn3d:build_cnn3d_ensemble", "volume3d")):
        files = sorted((out / "folds").glob(f"{model}_s{s0}_f*.safetensors"))
        if len(files) < args.folds or model not in summary:
            print(f"not shipping {model}: {len(files)} fold models")
            continue
        state = {}
        for k, f in enumerate(files):
            for n, v in load_file(str(f)).items():
                state[f"members.{k}.{n}"] = v.half() if v.is_floating_point() else v
        arch = dict(cfg[model]["arch"])
        ids = sorted({i for r in recs if r["model"] == model and r["seed"] == s0 for i in r["test_ids"]})
        other = "cnn3d" if model == "mil" else "mil"
        card = new_card(
            f"predict_{model}", "prediction",
            {"builder": builder, "kwargs": dict(arch, n_members=len(files))},
            description=("MMDLM-style MIL: per-sequence 2D ResNet slice encoders (MONAI, reduced widths, "
                         "from scratch), gated attention per sequence, fusion with age/sex, heads for IDH, "
                         "1p/19q, grade and a Cox OS risk head" + (
                             "; trained with auxiliary tumour-mask supervision (stage-1 tumour presence + "
                             "coarse in-plane tumour heads, stage-2 attention towards the per-slice tumour "
                             "area); segmentation-free at inference" if cfg[model].get("aux") else "")
                         if model == "mil" else
                         "3D CNN (MONAI ResNet 3D, reduced widths, from scratch) on the slice stack "
                         "resampled to depth 32, focal loss, weighted sampler, age/sex fusion, Cox head"),
            sequences=arch["sequences"], required_sequences=["flair"],
            optional_sequences=[s for s in arch["sequences"] if s != "flair"],
            missing_sequences="masked: a missing optional sequence's embedding/channel is zeroed and flagged "
                              "(trained with the 13 TCGA-LGG packs lacking T1 or T1ce, and sequence dropout); "
                              "T2 is not used (TCGA-LGG packs have none) and is ignored when present",
            classes=CLASSES, tasks={t: CLASSES[t] for t in P.TASKS},
            spacing_mm=[3.75, 3.75], input_size=[64, 64], normalisation=PREP,
            input={"kind": kind, "depth": int(arch.get("depth", 32))},
            clinical={**P.clinical_stats(), "used": True,
                      "features": ["age_z = (age - 45) / 15", "sex: 1 = TCGA gender code 2 (assumed male), "
                                   "0 = code 1; unknown -> 0.5"]},
            ensemble={"members": len(files), "what": f"the {len(files)} fold models of CV seed {s0}",
                      "uncertainty": "SD of the members' probabilities"},
            training_data={"datasets": ["TCGA-LGG (Buda et al. 2019 slice packs, 88 patients)"],
                           "patients": ids, "labels": "Ceccarelli 2016 (IDH, 1p/19q, grade), TCGA-CDR OS",
                           **({"auxiliary_supervision": (
                               "expert manual FLAIR-abnormality masks of the same packs (Buda et al. 2019), "
                               "training patients of each fold only, binned 2x2 like the images: stage 1 "
                               "tumour-presence and 8x8 in-plane tumour-map heads (BCE + Dice, weight "
                               f"{cfg[model]['aux']['tumour_weight']}), inherited patient labels of tumour-free "
                               f"slices weighted {cfg[model]['aux']['label_bg_weight']}; stage 2 KL of each "
                               "sequence's slice attention towards the normalised per-slice tumour area "
                               f"(weight {cfg[model]['aux']['att_weight']}). The auxiliary heads are discarded: "
                               "the shipped network sees no mask (segmentation-free inference)")}
                              if model == "mil" and cfg[model].get("aux") else {})},
            config=cfg[model],
            metrics={**{t: summary[model][t] for t in P.TASKS},
                     "survival": dict(summary[model].get("survival") or {},
                                      km_logrank_p=km.get(model),
                                      km="Kaplan-Meier of predicted groups (median risk split within "
                                         "each test fold, seed 0): km_predicted_groups.png of the run"),
                     "protocol": summary["protocol"],
                     "targets": {"idh_auc": 0.90, "codel_1p19q_auc": 0.85, "grade_auc": 0.80, "c_index": 0.70},
                     "compared_with": {other: {t: summary.get(other, {}).get(t, {}).get("auc_mean")
                                               for t in P.TASKS} | {"c_index": summary.get(other, {}).get(
                                                   "survival", {}).get("c_index_mean")}},
                     **({k: v for k, v in compare.items() if k != "explanations"}
                        if model == "mil" else {})},
            baseline={"age_sex_logistic": base, "intensity_logistic": inten,
                      "note": "computed on the same folds; intensity = whole-head intensity percentiles/skew "
                              "per sequence + age + sex, logistic regression (C=0.3)"},
            caveats=[
                "each ensemble member was trained on the inner-training part (about 56 patients) of one "
                "outer fold: predictions on the 88 TCGA-LGG patients are in-sample for most members; "
                "use the CV metrics above, not predictions on training patients",
                "3D cases (e.g. skull-stripped BraTS volumes) differ from the training packs (2D slices, "
                "not skull-stripped, ~1.9 mm in-plane): outside the validated domain",
                "TCGA `gender` codes 1/2 are not documented in the source table; code 2 is assumed male",
                "targets not reached (CV mean): " + ", ".join(
                    f"{t} {summary[model][t]['auc_mean']:.2f} < {thr}" for t, thr in
                    (("idh", 0.90), ("codel_1p19q", 0.85), ("grade", 0.80))
                    if summary[model][t]["auc_mean"] < thr) + (
                    f", C-index {summary[model]['survival']['c_index_mean']:.2f} < 0.70"
                    if (summary[model].get("survival") or {}).get("c_index_mean", 1) < 0.70 else ""),
            ],
            citations=CITATIONS,
            **({"explanations": compare["explanations"]}
               if model == "mil" and "explanations" in compare else {}),
            reproduce="OMP_NUM_THREADS=1 .venv/bin/python scripts/cv_prediction.py --data ../shared/data/tcga-lgg "
                      f"--out /tmp/cv_pred --seeds {' '.join(map(str, args.seeds))} --max-minutes 120 --ship"
                      + ((" --mil-aux pool" if cfg[model]["arch"].get("tumour_pool") else " --mil-aux on")
                         if cfg[model].get("aux") else "")
                      + (f" --previous-run {args.previous_run}" if model == "mil" and args.previous_run else "")
                      + (f" --alternative-run {args.alternative_run}"
                         if model == "mil" and args.alternative_run else ""))
        from src_models import mil as _m  # noqa: F401  (check the builder imports)
        path = Path(args.weights_dir) / f"predict_{model}.safetensors"
        save_model(path, state, card)
        print(f"shipped {path} ({path.stat().st_size / 1e6:.2f} MB)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tcga-lgg"))
    ap.add_argument("--out", default="/tmp/cv_pred")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["age_sex", "intensity", "mil", "cnn3d"])
    ap.add_argument("--enc-epochs", type=int, default=MIL_CFG["enc_epochs"])
    ap.add_argument("--mil-aux", choices=["on", "pool", "off"], default="on",
                    help="auxiliary tumour-mask supervision of the MIL model in training (MIL_AUX); "
                         "'pool': also append to each slice feature the features pooled by the "
                         "encoder's own predicted tumour map (SliceEncoder tumour_pool)")
    ap.add_argument("--cnn-epochs", type=int, default=CNN_CFG["epochs"])
    ap.add_argument("--limit", type=int, default=None, help="first N patients (smoke runs)")
    ap.add_argument("--max-minutes", type=float, default=120.0)
    ap.add_argument("--summarise-only", action="store_true")
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--previous-run", help="a finished run folder of the model being replaced "
                    "(same folds and seeds): --ship records the paired comparison in the card")
    ap.add_argument("--alternative-run", help="a finished run folder of a variant that was not "
                    "chosen: --ship records it and the inner-validation choice in the card")
    ap.add_argument("--weights-dir", default=str(ROOT / "napari_radiogen" / "weights"),
                    help="where --ship writes the models (default: the package's weights)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.summarise_only:
        run_cv(args)
    summary = summarise(args)
    if args.ship:
        ship(args, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
