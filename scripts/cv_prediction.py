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

``--models radiomics --seg-run RUN`` adds the segment-then-classify model (``predict_radiomics``):
hand-crafted features inside each patient's *out-of-fold* predicted whole-tumour mask (the fold
models of the 2D segmentation CV run RUN), one random forest per task (``RADIOMICS_CFG``, fixed
beforehand) and a Cox risk on age + the out-of-bag IDH logit; same folds as the others when run
into the same ``--out``. ``--ship`` refits it on all patients.

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

from napari_radiogen.core.train.tasks.prediction import (CITE_ILSE, CITE_LGG,  # noqa: E402
                                                         CITE_MONAI)

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
#: the shipped prediction cards' citations: the data's, attention MIL, MONAI (the training
#: tasks' card uses the same entries)
CITATIONS = [*CITE_LGG, CITE_ILSE, CITE_MONAI]


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def run_cv(args):
    import torch
    torch.set_num_threads(1)
    from napari_radiogen.core.predict import PREP_ROI
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
    roi_window = json.loads(args.roi_window) if args.roi_window else None
    roi_cohort = (P.load_cohort(args.data, limit=args.limit, roi=True, roi_jitter=args.roi_jitter,
                                roi_window=roi_window)
                  if {"mil_roi", "cnn3d_roi"} & set(args.models) else None)
    if roi_cohort is not None and [p["id"] for p in roi_cohort] != ids:
        raise SystemExit("the tumour-centred cohort lists other patients than the main one")
    tables = {m: radiomics_features(args, cohort, log, expert=m == "radiomics_expert_mask")
              for m in ("radiomics", "radiomics_expert_mask") if m in args.models}
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
                elif model == "mil_roi":
                    res, state = P.mil_fold(roi_cohort, tr, te, mil_cfg, seed * 100 + k, log=log)
                elif model == "cnn3d":
                    res, state = P.cnn3d_fold(cohort, tr, te, cnn_cfg, seed * 100 + k, log=log)
                elif model == "cnn3d_roi":
                    # the 3D CNN protocol unchanged, on mil_roi's tumour-centred window
                    res, state = P.cnn3d_fold(roi_cohort, tr, te, cnn_cfg, seed * 100 + k, log=log)
                elif model in ("age_sex", "intensity"):
                    res = P.baseline_fold(cohort, tr, te, model)
                elif model in ("radiomics", "radiomics_expert_mask"):
                    # no fold weights kept: --ship refits on all patients
                    res = P.radiomics_fold(cohort, tr, te, tables[model], P.RADIOMICS_CFG,
                                           seed * 100 + k)
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
    json.dump({"mil": mil_cfg, "mil_roi": dict(mil_cfg, roi_jitter=args.roi_jitter, roi_placement=PREP_ROI["version"],
                                                   roi_window=args.roi_window and json.loads(args.roi_window)),
               "cnn3d": cnn_cfg, "cnn3d_roi": dict(cnn_cfg, roi_placement=PREP_ROI["version"]),
               "folds": args.folds, "seeds": args.seeds,
               "data": str(args.data)}, open(out / "config.json", "w"), indent=1)


def ensemble_records(out, a: str, b: str) -> int:
    """Late fusion of two finished models of the same ``--out`` (same folds and seeds): for
    each (seed, fold) both scored, the mean of their probabilities per task and the mean of
    their within-fold standardised risks; written as model ``ens_A+B``. Equal weights, fixed
    before any ensemble was scored (no weight is fitted, so no test fold is used for a
    choice). Returns the number of fold records written."""
    out = Path(out)
    recs = {(r["model"], r["seed"], r["fold"]): r for r in
            (json.loads(f.read_text()) for f in (out / "folds").glob("*.json"))}
    name, n = f"ens_{a}+{b}", 0
    for (m, seed, fold), ra in sorted(recs.items()):
        rb = recs.get((b, seed, fold))
        if m != a or rb is None:
            continue
        if ra["test_ids"] != rb["test_ids"]:
            raise SystemExit(f"{a} and {b} have other test patients in seed {seed} fold {fold}")

        def z(v):
            v = np.asarray(v, float)
            return (v - v.mean()) / (v.std() + 1e-9)
        rec = {"model": name, "seed": seed, "fold": fold, "test_ids": ra["test_ids"],
               "train_ids": ra["train_ids"], "seconds": 0.0,
               "probs": {t: [float(v) for v in (np.asarray(ra["probs"][t])
                                                + np.asarray(rb["probs"][t])) / 2]
                         for t in ra["probs"]},
               "risk": (None if ra.get("risk") is None or rb.get("risk") is None else
                        [float(v) for v in (z(ra["risk"]) + z(rb["risk"])) / 2]),
               "info": {"members": [a, b], "fusion": "mean probability; mean z-scored risk"}}
        (out / "folds" / f"{name}_s{seed}_f{fold}.json").write_text(json.dumps(rec))
        n += 1
    return n


def radiomics_features(args, cohort, log=log, expert: bool = False):
    """The radiomics feature table of the cohort (out-of-fold predicted masks of the
    segmentation CV run ``--seg-run``; ``expert``: inside the expert masks instead, the upper
    bound reported as ``radiomics_expert_mask``), cached in ``OUT/radiomics_features*.csv``."""
    import pandas as pd
    from napari_radiogen.core.train.tasks import prediction as P
    ids = [p["id"] for p in cohort]
    f = Path(args.out) / "radiomics_features.csv"
    fe = Path(args.out) / "radiomics_features_expert_mask.csv"
    want = fe if expert else f
    if want.exists():
        tab = pd.read_csv(want, index_col=0)
        if set(ids) <= set(tab.index):
            return tab.loc[ids]
    if not args.seg_run:
        raise SystemExit("--models radiomics needs --seg-run (a finished 2D segmentation CV run)")
    log(f"radiomics features from the out-of-fold masks of {args.seg_run}")
    tab, dice, tab_expert = P.radiomics_table(args.data, args.seg_run, ids, log=log)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tab.to_csv(f)
    tab_expert.to_csv(fe)
    (Path(args.out) / "radiomics_masks.json").write_text(json.dumps(
        {"seg_run": str(args.seg_run), "dice_wt": dice,
         "mean_dice_wt": float(np.mean([v for v in dice.values() if v is not None]))}, indent=1))
    return tab_expert if expert else tab


def _boot_auc(y, p, rng, n=1000):
    from sklearn.metrics import roc_auc_score
    vals = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        vals.append(roc_auc_score(y[i], p[i]))
    return vals


def fold_records(out_dir, model: str) -> list:
    """The per-fold test records of ``model`` in a run folder (``folds/<model>_s<seed>_f<k>.json``),
    not those of a model whose name begins with it (``<model>_segwin``)."""
    recs = [json.loads(f.read_text())
            for f in sorted((Path(out_dir) / "folds").glob(f"{model}_s*_f*.json"))]
    return [r for r in recs if r.get("model") == model]


def attention_on_tumour_slices(out_dir, data, model: str = "mil"):
    """Share of the FLAIR slice attention that falls on slices with expert tumour (pack masks),
    over the test patients of every fold (out of fold), mean over patient records; ``uniform``
    is the share of tumour slices (what a uniform attention would give)."""
    import h5py
    recs = fold_records(out_dir, model)
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


def run_digest(out_dir, data, model: str = "mil"):
    """Headline numbers of a finished CV run folder (for same-fold comparisons in the card);
    ``data=None`` leaves out the attention share (it needs the packs' masks)."""
    from napari_radiogen.core.train.tasks import prediction as P
    d = Path(out_dir)
    s = json.loads((d / "summary.json").read_text())[model]
    out = {t: round(s[t]["auc_mean"], 4) for t in P.TASKS}
    out["mean_auc"] = round(float(np.mean([out[t] for t in P.TASKS])), 4)
    out["c_index"] = round(s["survival"]["c_index_mean"], 4)
    v = [r["info"].get("inner_val_score") for r in fold_records(d, model)]
    v = [x for x in v if x is not None]
    out["inner_val_score_mean"] = round(float(np.mean(v)), 4) if v else None
    out["inner_val_score_sd"] = round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else None
    if data is not None:
        out["attention_on_tumour_slices"] = attention_on_tumour_slices(d, data, model)
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
    km_figure(out, recs, tab, [m for m in ("mil", "mil_roi", "cnn3d", "cnn3d_roi", "radiomics",
                                           "age_sex")
                          if m in summary])
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
    print("\nmodel                 " + "  ".join(f"{t:>24s}" for t in ("idh", "codel_1p19q", "grade")) + "   C-index")
    for model, m in summary.items():
        if model == "protocol":
            continue
        cells = []
        for t in ("idh", "codel_1p19q", "grade"):
            a = m[t]
            cells.append(f"{a['auc_mean']:.3f} [{a['auc_ci95'][0]:.2f},{a['auc_ci95'][1]:.2f}]".rjust(24))
        c = m.get("survival", {}).get("c_index_mean")
        print(f"{model:21s}  " + "  ".join(cells) + (f"   {c:.3f}" if c is not None else "   -"))


def _segwin_file(model: str) -> str:
    return "window_from_segmentation" + ("" if model == "mil_roi" else f"_{model}") + ".json"


def window_from_segmentation(args, seg_model: str = "seg_lgg_segresnet2d", model: str = "mil_roi"):
    """The tumour-centred model's (``model``: mil_roi or cnn3d_roi) CV test predictions again,
    with each test patient's window placed on ``seg_model``'s segmentation instead of the
    expert mask (the fold models saved in ``--out``; what a user gets). The shipped
    segmentation model was trained on these packs, so its masks are better than a new
    patient's: a lower bound on the shift. Writes ``_segwin_file(model)`` (mean test-fold AUC
    per task, beside the expert-window AUC of the same fold models)."""
    import torch
    from safetensors.torch import load_file
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.predict import roi_case_to_input, to_volume3d
    from napari_radiogen.core.segment import segment
    from napari_radiogen.core.train.tasks import prediction as P
    from src_models.cnn3d import CNN3DPredictor
    from src_models.mil import MILPredictor
    torch.set_num_threads(1)
    out = Path(args.out)
    cfg = json.loads((out / "config.json").read_text())[model]
    def weights(r) -> Path:
        return out / "folds" / f"{model}_s{r['seed']}_f{r['fold']}.safetensors"
    recs = [r for r in fold_records(out, model) if weights(r).exists()]
    volume = model == "cnn3d_roi"

    def forward(net, inp, cl):
        if volume:
            vol = to_volume3d(inp, int(cfg["arch"].get("depth", 32)))
            return net(torch.from_numpy(vol[None]), torch.from_numpy(inp.seq_mask[None]), cl)
        return net(torch.from_numpy(inp.x[None]), torch.ones(1, inp.x.shape[1], dtype=torch.bool),
                   torch.from_numpy(inp.seq_mask[None]), cl)
    cohort = {p["id"]: p for p in P.load_cohort(args.data)}
    seg = load_model(seg_model, task="segmentation", device="cpu")
    inputs, dice = {}, []
    for pid in sorted({i for r in recs for i in r["test_ids"]}):
        case = load_case(Path(args.data) / f"{pid}.h5")
        res = [x for x in segment(case, seg, device="cpu", compare=False)][-1]
        m, g = res.labels > 0, case.labels.array > 0
        dice.append(2 * (m & g).sum() / max(1, m.sum() + g.sum()))
        try:
            inputs[pid] = roi_case_to_input(case, P.SEQS, m, cfg.get("roi_window"))
        except Exception as e:                     # nothing segmented: no window
            log(f"  {pid}: {e}")
    stats = P.clinical_stats()
    aucs = {t: [] for t in P.TASKS}
    ref = {t: [] for t in P.TASKS}
    missed = 0
    for r in recs:
        net = (CNN3DPredictor if volume else MILPredictor)(**cfg["arch"])
        net.load_state_dict(load_file(str(weights(r))))
        net.eval()
        probs = {t: [] for t in P.TASKS}
        risk = []
        for k, pid in enumerate(r["test_ids"]):
            inp = inputs.get(pid)
            if inp is None:                        # no window: the expert-window prediction
                missed += 1
                for t in P.TASKS:
                    probs[t].append(r["probs"][t][k])
                risk.append(r["risk"][k] if r.get("risk") else None)
                continue
            cl = torch.from_numpy(P.clinical_matrix([cohort[pid]], stats))
            with torch.inference_mode():
                o = forward(net, inp, cl)
            for t in P.TASKS:
                probs[t].append(float(torch.softmax(o["logits"][t], -1)[0, -1]))
            risk.append(float(o["risk"][0]) if "risk" in o else None)
        # the fold's test predictions as a user gets them (window on the segmentation): model
        # ``<model>_segwin`` of the summary, and a member for --ensemble
        (out / "folds" / f"{model}_segwin_s{r['seed']}_f{r['fold']}.json").write_text(json.dumps(
            {**{k: r[k] for k in ("seed", "fold", "test_ids", "train_ids")},
             "model": f"{model}_segwin", "seconds": 0.0, "probs": probs,
             "risk": risk if all(v is not None for v in risk) else None,
             "info": {"window": f"placed on {seg_model}'s segmentation (in-sample masks)"}}))
        for t in P.TASKS:
            j = P.TASKS.index(t)
            y = np.array([cohort[i]["y"][j] for i in r["test_ids"]])
            a, b = P.auc(y, np.array(probs[t])), P.auc(y, np.array(r["probs"][t]))
            if a == a and b == b:
                aucs[t].append(a)
                ref[t].append(b)
    res = {"segmentation_model": seg_model,
           "segmentation_dice_mean": round(float(np.mean(dice)), 3),
           "folds": len(recs), "patients_without_window": missed,
           "auc_mean": {t: round(float(np.mean(aucs[t])), 4) for t in P.TASKS},
           "auc_mean_expert_window": {t: round(float(np.mean(ref[t])), 4) for t in P.TASKS},
           "note": "same fold models and test folds; the segmentation model was trained on these packs "
                   "(in-sample masks), so a new patient's window may move more"}
    (out / _segwin_file(model)).write_text(json.dumps(res, indent=1))
    log(json.dumps(res))
    return res


def roi_alternatives(out_dir, alt_dirs) -> dict:
    """Variants of the tumour-centred model run on the same folds and seeds (their own
    ``--out`` folders), beside the shipped configuration, for the card."""
    def digest(d):
        d = Path(d)
        cfg = json.loads((d / "config.json").read_text())["mil_roi"]
        w = d / "window_from_segmentation.json"
        return {"run": str(d),
                "settings": {"enc_epochs": cfg.get("enc_epochs"), "aux": bool(cfg.get("aux")),
                             "roi_jitter": cfg.get("roi_jitter", 0),
                             "roi_window": cfg.get("roi_window") or {"mode": "fixed"},
                             "roi_placement": cfg.get("roi_placement", "roi-v1") + (
                                 ": bounding box of the whole mask" if cfg.get(
                                     "roi_placement", "roi-v1") == "roi-v1"
                                 else ": its largest connected component")},
                **run_digest(d, None, "mil_roi"),
                "window_from_segmentation": {k: json.loads(w.read_text())[k]
                                             for k in ("auc_mean", "folds")} if w.exists() else None}
    shipped = digest(out_dir)
    alts = [digest(d) for d in alt_dirs]
    best = max([shipped] + alts, key=lambda r: r["inner_val_score_mean"] or -1)
    return {"shipped": shipped, "variants": alts,
            "selection": "the shipped configuration is the whole-brain MIL protocol unchanged "
                         "(only the input differs), fixed before the variants were run. By mean "
                         f"inner-validation score the best is {best['run']} "
                         f"({best['inner_val_score_mean']}, shipped "
                         f"{shipped['inner_val_score_mean']}; SD over folds "
                         f"{shipped['inner_val_score_sd']}): a difference far inside the fold "
                         "noise, so none replaced it. Test folds were not used to choose. A "
                         "variant run keeps the fold models of its first seed only, so its "
                         "window_from_segmentation covers those folds"
                         + ("; the window placement changed between runs (roi-v1: bounding box "
                            "of the whole mask; roi-v2: of its largest connected component, "
                            "after stray segmentation specks were found to pull windows off "
                            "the tumour): the shipped model matches the placement of this "
                            "version's code" if any(a["settings"]["roi_placement"] !=
                                                    shipped["settings"]["roi_placement"]
                                                    for a in alts) else "")}


def _same_fold_metrics(summary, model: str, weights_dir) -> dict:
    """Mean test-fold AUC per task and C-index of ``model``: from this run's summary, else
    from the card of the shipped ``predict_<model>`` (whose CV used the same folds and seeds
    when its run had the same --folds and --seeds: its card's protocol says them)."""
    from napari_radiogen.core.train.tasks import prediction as P
    if model in summary:
        m, where = summary[model], "this run"
    else:
        card = Path(weights_dir) / f"predict_{model}.card.json"
        if not card.exists():
            return {t: None for t in (*P.TASKS, "c_index")}
        m, where = json.loads(card.read_text())["metrics"], f"the shipped predict_{model}'s card"
    return {**{t: (m.get(t) or {}).get("auc_mean") for t in P.TASKS},
            "c_index": (m.get("survival") or {}).get("c_index_mean"), "from": where}


def _alternatives(args, out, model: str, what: str, data=None, caveat: str = "") -> list:
    """The variant of ``model`` in ``--alternative-run`` (same folds and seeds; ``what`` it
    is) and the rule that chose between it and this run's: the mean inner-validation score
    over the folds, never the test folds (``caveat`` appended to the rule)."""
    alt = run_digest(args.alternative_run, data, model)
    return [{"what": f"{what} (run {args.alternative_run}; same folds and seeds)", "metrics": alt,
             "selection": "chosen between this model and the alternative by the mean "
                          "inner-validation score over the folds (never the test folds): "
                          f"{run_digest(out, data, model)['inner_val_score_mean']} (shipped) vs "
                          f"{alt['inner_val_score_mean']}" + caveat}]


def _cnn_alternatives(args, out, model: str) -> list:
    """:func:`_alternatives` of a 3D CNN run with another schedule (its epochs)."""
    cfg_alt = json.loads((Path(args.alternative_run) / "config.json").read_text()).get(model, {})
    return _alternatives(args, out, model, f"the same protocol with {cfg_alt.get('epochs')} epochs",
                         caveat="; the longer schedule validates its checkpoint among more "
                                "candidates, which favours it")


def ship(args, summary):
    from safetensors.torch import load_file
    from napari_radiogen.core.models import new_card, save_model
    from napari_radiogen.core.predict import CLASSES, PREP, PREP_ROI, ROI_SEGMENTATION
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
        compare["alternatives"] = _alternatives(args, out, "mil", run_variant(args.alternative_run),
                                                data=args.data)
    for model, builder, kind in (("mil", "src_models.mil:build_mil_ensemble", "mil"),
                                 ("mil_roi", "src_models.mil:build_mil_ensemble", "mil_roi"),
                                 ("cnn3d", "src_models.cnn3d:build_cnn3d_ensemble", "volume3d"),
                                 ("cnn3d_roi", "src_models.cnn3d:build_cnn3d_ensemble",
                                  "volume3d_roi")):
        if model not in args.models or (args.ship_only and model not in args.ship_only):
            continue
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
        other = {"mil": "cnn3d", "cnn3d_roi": "mil_roi"}.get(model, "mil")
        roi = model in ("mil_roi", "cnn3d_roi")
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
                         "tumour-centred MIL: the slice model above on a 64 x 64 window at 1.875 mm "
                         "(120 mm) centred on the segmented whole tumour, over the tumour's slices "
                         "and one slice either side; trained on the expert masks of the packs with "
                         "auxiliary tumour supervision (stage-1 tumour presence + coarse in-plane "
                         "tumour map, stage-2 attention towards the per-slice tumour area); at "
                         "inference the window is placed on the model's own segmentation"
                         if model == "mil_roi" else
                         "tumour-centred 3D CNN: the 3D CNN of predict_cnn3d (MONAI ResNet 3D, "
                         "reduced widths, from scratch; focal loss, weighted sampler, age/sex "
                         "fusion, Cox head) on the window of predict_mil_roi (64 x 64 at 1.875 mm "
                         "centred on the segmented whole tumour, its slices and one either side) "
                         "resampled to depth 32; trained on the expert masks' windows, no "
                         "auxiliary supervision; at inference the window is placed on the model's "
                         "own segmentation"
                         if roi else
                         "3D CNN (MONAI ResNet 3D, reduced widths, from scratch) on the slice stack "
                         "resampled to depth 32, focal loss, weighted sampler, age/sex fusion, Cox head"),
            sequences=arch["sequences"], required_sequences=["flair"],
            optional_sequences=[s for s in arch["sequences"] if s != "flair"],
            missing_sequences="masked: a missing optional sequence's embedding/channel is zeroed and flagged "
                              "(trained with the 13 TCGA-LGG packs lacking T1 or T1ce, and sequence dropout); "
                              "T2 is not used (TCGA-LGG packs have none) and is ignored when present",
            classes=CLASSES, tasks={t: CLASSES[t] for t in P.TASKS},
            spacing_mm=[1.875, 1.875] if roi else [3.75, 3.75], input_size=[64, 64],
            normalisation=PREP_ROI if roi else PREP,
            input={"kind": kind, "depth": int(arch.get("depth", 32)),
                   **({"segmentation": dict(ROI_SEGMENTATION),
                        **({"window": cfg[model]["roi_window"]}
                           if cfg[model].get("roi_window") else {})} if roi else {})},
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
                              if model == "mil" and cfg[model].get("aux") else {}),
                           **({"tumour_windows": (
                               "training and CV test patients alike: the window is placed on the "
                               "pack's expert FLAIR-abnormality mask (Buda et al. 2019)"
                               + ("; the same masks supervise the auxiliary heads of the training "
                                  "patients" if cfg[model].get("aux") else ""))}
                              if roi else {})},
            config=cfg[model],
            metrics={**{t: summary[model][t] for t in P.TASKS},
                     "survival": dict(summary[model].get("survival") or {},
                                      km_logrank_p=km.get(model),
                                      km="Kaplan-Meier of predicted groups (median risk split within "
                                         "each test fold, seed 0): km_predicted_groups.png of the run"),
                     "protocol": summary["protocol"],
                     "targets": {"idh_auc": 0.90, "codel_1p19q_auc": 0.85, "grade_auc": 0.80, "c_index": 0.70},
                     "compared_with": {other: _same_fold_metrics(summary, other, args.weights_dir)},
                     **({k: v for k, v in compare.items() if k != "explanations"}
                        if model == "mil" else {}),
                     **({"alternatives": _cnn_alternatives(args, out, model)}
                        if model.startswith("cnn3d") and args.alternative_run else {}),
                     **({"window_from_segmentation": json.loads(
                         (out / _segwin_file(model)).read_text())}
                        if roi and (out / _segwin_file(model)).exists() else {}),
                     **({"alternatives": roi_alternatives(out, args.roi_alternatives)}
                        if roi and args.roi_alternatives else {})},
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
                *(["the CV windows were placed on the expert masks; a user's window comes from the "
                   "segmentation model, so its errors move the window (see metrics.window_from_"
                   "segmentation when present)",
                   "the heatmaps lie inside the 120 mm window by construction: their localisation "
                   "score is reported beside the score of a map uniform over the window",
                   "no tumour segmented, no window: the model refuses the case (predict_mil, the "
                   "whole-brain model, still predicts)"]
                  if roi else []),
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
                      + (" --models " + " ".join(args.models) if roi else "")
                      + (f" --roi-window '{args.roi_window}'" if roi and args.roi_window else "")
                      + (f" --roi-jitter {args.roi_jitter}" if roi and args.roi_jitter else "")
                      + (" --ship-only " + " ".join(args.ship_only) if args.ship_only else "")
                      + (" --roi-alternatives " + " ".join(args.roi_alternatives)
                         if roi and args.roi_alternatives else "")
                      + (f" --cnn-epochs {cfg[model]['epochs']}" if model.startswith("cnn3d")
                         and cfg[model].get("epochs") != CNN_CFG["epochs"] else "")
                      + ((" --mil-aux pool" if cfg[model]["arch"].get("tumour_pool") else " --mil-aux on")
                         if cfg[model].get("aux") else "")
                      + (f" --previous-run {args.previous_run}" if model == "mil" and args.previous_run else "")
                      + (f" --alternative-run {args.alternative_run}"
                         if (model == "mil" or model.startswith("cnn3d")) and args.alternative_run
                         else ""))
        from src_models import mil as _m  # noqa: F401  (check the builder imports)
        path = Path(args.weights_dir) / f"predict_{model}.safetensors"
        save_model(path, state, card)
        print(f"shipped {path} ({path.stat().st_size / 1e6:.2f} MB)")


SHIPPED_NAME = {"mil": "predict_mil", "mil_roi": "predict_mil_roi", "cnn3d": "predict_cnn3d",
                "radiomics": "predict_radiomics"}


def member_risk_scale(members, data, log=log):
    """Mean and SD of each shipped member's OS risk over the packs (the members' training
    patients): the scale on which :class:`src_models.fusion.LateFusion` averages them. Each
    pack is segmented once (the members' shared segmentation)."""
    from napari_radiogen.core import predict as Pr
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.progress import run
    lms = [load_model(m, task=Pr.TASK) for m in members]
    seg_card = next((lm.card for lm in lms if Pr.uses_segmentation(lm.card)), None)
    risks = {m: [] for m in members}
    for f in sorted(Path(data).glob("*.h5")):
        case = load_case(f)
        seg = None
        if seg_card is not None:
            seg, _ = run(Pr.tumour_labels(case, seg_card, "cpu", None, None, "", []))
        for m, lm in zip(members, lms):
            r = run(Pr.predict(case, lm, device="cpu", segmentation=seg))
            risks[m].append(r.risk)
    log(f"member risks over {len(risks[members[0]])} packs")
    if any(v is None for m in members for v in risks[m]):
        return None, None                  # a member without a risk head: no fused risk
    return ([float(np.mean(risks[m])) for m in members],
            [float(np.std(risks[m])) for m in members])


def ship_ensemble(args, summary):
    """Ship ``predict_ensemble``: the late fusion of ``--ensemble A B`` (shipped models
    predict_A and predict_B), with the CV table of ``ens_A+B`` from this run."""
    from napari_radiogen.core.models import new_card, read_card, find_model, save_model
    from napari_radiogen.core.predict import CLASSES
    from napari_radiogen.core.train.tasks import prediction as P
    from src_models.fusion import LateFusion
    a, b = args.ensemble
    key = f"ens_{a}+{b}"
    if a not in SHIPPED_NAME or b not in SHIPPED_NAME:
        raise SystemExit(f"--ensemble {a} {b}: only shipped models can be fused for shipping "
                         f"({', '.join(SHIPPED_NAME)})")
    if key not in summary:
        print(f"not shipping the ensemble: no CV records of {key}")
        return
    members = [SHIPPED_NAME[a], SHIPPED_NAME[b]]
    cards = [read_card(find_model(m)) for m in members]
    mean, sd = member_risk_scale(members, args.data)
    module = LateFusion(members, mean, sd)
    T = P.TASKS
    metrics = {t: summary[key][t] for t in T}
    metrics["survival"] = summary[key].get("survival")
    metrics["protocol"] = summary["protocol"]
    same = {m: {**{t: round(summary[m][t]["auc_mean"], 4) for t in T},
                "c_index": (summary[m].get("survival") or {}).get("c_index_mean")}
            for m in (a, b, f"{a}_segwin") if m in summary}
    seg_key = f"ens_{a}_segwin+{b}"          # the tumour window placed as for a user
    as_user = ({**{t: round(summary[seg_key][t]["auc_mean"], 4) for t in T},
                "c_index": (summary[seg_key].get("survival") or {}).get("c_index_mean"),
                "what": f"the same fusion with {a}'s test windows placed on the shipped "
                        "segmentation model's masks (in-sample masks, Dice 0.86) instead of the "
                        "expert masks: how the shipped model places them (records "
                        f"{a}_segwin of window_from_segmentation)"}
               if seg_key in summary else None)
    seqs = [s for s in ("t1", "flair", "t1ce") if any(s in (c.get("sequences") or [])
                                                       for c in cards)]
    patients = sorted({p for c in cards for p in (c.get("training_data") or {}).get(
        "patients", [])})
    card = new_card(
        "predict_ensemble", "prediction",
        {"builder": "src_models.fusion:late_fusion",
         "kwargs": {"members": members, "risk_mean": mean, "risk_sd": sd}},
        description=(f"late fusion of {members[0]} and {members[1]}: the mean of their class "
                     "probabilities and of their standardised OS risks; one tumour "
                     "segmentation serves both members"),
        sequences=seqs, required_sequences=["flair"],
        optional_sequences=[s for s in seqs if s != "flair"],
        missing_sequences="as each member handles it (see their cards)",
        classes=CLASSES, tasks={t: CLASSES[t] for t in T},
        input={"kind": "ensemble", "members": members,
               "fusion": "equal weights: mean probability per class; mean of the members' "
                         "risks standardised by risk_mean / risk_sd"},
        normalisation="each member's own (see their cards)",
        clinical={"used": True, "features": ["age and sex, as each member uses them"]},
        training_data={"datasets": ["TCGA-LGG (Buda et al. 2019 slice packs, 88 patients)"],
                       "patients": patients,
                       "risk_scale": "risk_mean / risk_sd: each member's risk over these "
                                     "patients (in-sample; a scale only, no fitted weight)"},
        metrics=metrics,
        members_same_folds=same,
        **({"metrics_segmented_windows": as_user} if as_user else {}),
        baseline={"age_sex_logistic": {**{t: summary["age_sex"][t]["auc_mean"] for t in T},
                                       "c_index": (summary["age_sex"].get("survival") or {})
                                       .get("c_index_mean")}} if "age_sex" in summary else None,
        caveats=[
            "the CV table is that of the fusion of the members' out-of-fold predictions on the "
            "same folds and seeds (equal weights fixed beforehand, nothing fitted); the choice "
            "to ship the fusion was made on those same folds, a mild optimism",
            "in CV the members' risks were standardised within each test fold; the shipped "
            "model standardises them with their spread over the training patients",
            "the members' own caveats apply (domain: TCGA-LGG slice packs)",
            "the decision rule, fixed before the fusion was scored: ship it (and make it the "
            "default) only if its mean AUC over IDH, 1p/19q and grade exceeds each member's on "
            "the same folds; per task a member stays better (radiomics on IDH and grade, the "
            "tumour-centred MIL on 1p/19q)"],
        citations=CITATIONS[:3],
        reproduce=(f"the members' runs in one --out DIR (same folds and seeds: the {a} run, "
                   f"then --models {b} --seg-run RUN into it), then "
                   f"`python scripts/cv_prediction.py --out DIR --seeds "
                   f"{' '.join(map(str, args.seeds))} --models age_sex {a} {b} --summarise-only` "
                   f"(writes the {a}_segwin records), `... --summarise-only --ensemble "
                   f"{a}_segwin {b}`, and `... --summarise-only --ensemble {a} {b} --ship "
                   f"--ship-only ensemble`"))
    path = Path(args.weights_dir) / "predict_ensemble.safetensors"
    save_model(path, module.state_dict(), card)
    print(f"shipped {path}")


def radiomics_alternative(alt_dir, shipped_metrics, decision: str) -> dict:
    """The card entry of a finished ``--models radiomics`` run with another ``--seg-run`` (same
    folds and seeds), against the shipped forests' CV metrics."""
    from napari_radiogen.core.train.tasks.prediction import TASKS
    alt_dir = Path(alt_dir)
    alt = json.loads((alt_dir / "summary.json").read_text())["radiomics"]
    alt_masks = json.loads((alt_dir / "radiomics_masks.json").read_text())
    alt_mean = float(np.mean([alt[t]["auc_mean"] for t in TASKS]))
    this_mean = float(np.mean([shipped_metrics[t]["auc_mean"] for t in TASKS]))
    return {"what": f"the same model with the out-of-fold masks of {alt_masks['seg_run']} (mean "
                    f"Dice {alt_masks['mean_dice_wt']:.3f}); same folds and seeds (run {alt_dir})",
            "metrics": {**{t: alt[t]["auc_mean"] for t in TASKS},
                        "c_index": (alt.get("survival") or {}).get("c_index_mean"),
                        "mean_auc": alt_mean},
            "this_model_mean_auc": this_mean,
            "decision": (f"mean AUC {alt_mean:.3f} vs {this_mean:.3f} for the shipped forests "
                         f"(the AUC SD over folds is ~0.1); {decision}")}


def record_radiomics_alternative(alt_dir, weights_dir) -> None:
    """Add (or refresh) a finished run's entry in the shipped predict_radiomics card's
    ``alternatives``; the weights are unchanged."""
    from napari_radiogen.core.models import load_state_dict_file, read_card, save_model
    path = Path(weights_dir) / "predict_radiomics.safetensors"
    card = read_card(path)
    entry = radiomics_alternative(alt_dir, card["metrics"], "recorded after shipping: the "
                                  "shipped forests are kept (weights unchanged)")
    card["alternatives"] = [a for a in card.get("alternatives") or []
                            if not a["what"].endswith(f"(run {Path(alt_dir)})")] + [entry]
    save_model(path, load_state_dict_file(path), card)
    print(f"recorded {alt_dir} in {path.name}: {entry['decision']}")


def ship_radiomics(args, summary):
    """Refit the radiomics forests on every patient (features inside their out-of-fold masks, as
    in CV) and ship ``predict_radiomics`` with the CV table of this run."""
    from napari_radiogen.core.models import new_card, save_model
    from napari_radiogen.core.predict import CLASSES
    from napari_radiogen.core.radiomics import FEATURES, RING_MM, GLCM_LEVELS
    from napari_radiogen.core.train.tasks import prediction as P
    if "radiomics" not in summary:
        print("not shipping radiomics: no CV records")
        return
    cohort = P.load_cohort(args.data)
    table = radiomics_features(args, cohort)
    X = table.to_numpy(np.float64)
    Y = np.stack([p["y"] for p in cohort])
    age = np.array([p["age"] for p in cohort])
    os_ = np.array([[p["os_days"], p["os_event"]] for p in cohort])
    module, info = P.fit_radiomics(X, Y, age, os_, P.RADIOMICS_CFG, seed=0)
    masks = json.loads((Path(args.out) / "radiomics_masks.json").read_text())
    km = json.loads((Path(args.out) / "km_logrank.json").read_text())
    m = summary["radiomics"]
    alternatives = []
    if getattr(args, "radiomics_alternative", None):
        alternatives.append(radiomics_alternative(
            args.radiomics_alternative, m,
            "not chosen: this --ship keeps the forests of its own --out run, a choice made with "
            "these numbers in view"))
    others = {k: {**{t: summary[k][t]["auc_mean"] for t in P.TASKS},
                  "c_index": (summary[k].get("survival") or {}).get("c_index_mean")}
              for k in ("mil", "cnn3d", "age_sex", "intensity", "radiomics_expert_mask")
              if k in summary}
    card = new_card(
        "predict_radiomics", "prediction",
        {"builder": "src_models.forest:radiomics_forests",
         "kwargs": {"n_features": len(FEATURES),
                    "tasks": {t: {"n_trees": f.left.shape[0], "max_nodes": f.left.shape[1],
                                  "n_classes": f.value.shape[2], "max_depth": f.max_depth}
                              for t, f in module.forests.items()},
                    "age_index": FEATURES.index("age"), "risk_task": "idh"}},
        description="Segment, then classify: the case is segmented by the shipped whole-tumour model "
                    "(never an expert mask), hand-crafted features are computed inside the predicted "
                    "mask (core.radiomics), and one random forest per task (500 trees, scikit-learn, "
                    "stored as tensors) gives IDH, 1p/19q and grade with age and sex; an OS risk is a "
                    "Cox model on age and the out-of-bag IDH logit. No slice attention.",
        sequences=["flair", "t1", "t1ce"], required_sequences=["flair"],
        optional_sequences=["t1", "t1ce"],
        missing_sequences="a missing T1 / T1ce leaves its features NaN; the forests see the training "
                          "medians (13 training packs lack one of them)",
        classes=CLASSES, tasks={t: CLASSES[t] for t in P.TASKS},
        input={"kind": "radiomics", "features": FEATURES,
               "segmentation": {"slices": "seg_lgg_segresnet2d", "volume": "default 3D model "
                                "(whole tumour = labels 1+2+4)"}},
        normalisation=f"intensities as ratios to the median of the sequence's head foreground "
                      f"(> 10 % of its 99th percentile); ring {RING_MM} mm in-plane; GLCM "
                      f"{GLCM_LEVELS} levels on the largest tumour slice",
        clinical={"used": True, "features": ["age (years)", "sex_male (TCGA gender code 2)"],
                  "missing": "training median"},
        training_data={"datasets": ["TCGA-LGG (Buda et al. 2019 slice packs, 88 patients)"],
                       "patients": list(table.index),
                       "labels": "Ceccarelli 2016 (IDH, 1p/19q, grade), TCGA-CDR OS",
                       "masks": (f"out-of-fold predictions of the 2D segmentation CV run "
                                 f"{masks['seg_run']} (each patient segmented by the fold model that "
                                 f"did not train on it; mean Dice {masks['mean_dice_wt']:.3f}), so "
                                 "training features carry the same segmentation errors as at inference"),
                       "out_of_bag": info},
        config=P.RADIOMICS_CFG,
        metrics={**{t: m[t] for t in P.TASKS},
                 "survival": dict(m.get("survival") or {}, km_logrank_p=km.get("radiomics"),
                                  km="Kaplan-Meier of predicted groups (median risk split within "
                                     "each test fold, seed 0): km_predicted_groups.png of the run"),
                 "protocol": summary["protocol"].replace(
                     "inner validation = 20% of each training part (early stopping, checkpoint "
                     "choice)", "no inner choices for this model (configuration fixed beforehand)"),
                 "targets": {"idh_auc": 0.90, "codel_1p19q_auc": 0.85, "grade_auc": 0.80,
                             "c_index": 0.70},
                 "compared_with": dict(others, note=(
                     "same folds and seeds; radiomics_expert_mask = the same features and forests "
                     "inside the expert masks, an upper bound no user has at inference (the cost "
                     "of automatic segmentation), never shipped"))},
        **({"alternatives": alternatives} if alternatives else {}),
        baseline={"age_sex_logistic": others.get("age_sex"),
                  "note": "same folds and seeds (cv_prediction.py records of the same --out)"},
        caveats=[
            "segmentation enters the features: a failed segmentation (check the overlay) means an "
            "unreliable prediction; the model card of seg_lgg_segresnet2d gives its Dice",
            "the segmentation fold models that made the training masks were trained on some of the "
            "patients that are test patients of the prediction folds (segmentation labels only, never "
            "molecular labels)",
            "3D cases (e.g. skull-stripped BraTS volumes, segmented by the 3D model) differ from the "
            "training packs: intensity ratios to the head median change when the skull is removed; "
            "outside the validated domain",
            "the forests were refitted on all 88 patients: predictions on them are in-sample",
            f"the training masks are the out-of-fold masks of {masks['seg_run']}; at inference "
            "the shipped seg_lgg_segresnet2d (a later, better run may have replaced it: see its "
            "card and this card's alternatives) segments the case",
            "targets not reached (CV mean): " + ", ".join(
                f"{t} {m[t]['auc_mean']:.2f} < {thr}" for t, thr in
                (("idh", 0.90), ("codel_1p19q", 0.85), ("grade", 0.80)) if m[t]["auc_mean"] < thr)],
        citations=CITATIONS[:3] + [
            "Breiman L. Random forests. Machine Learning 2001",
            "Haralick RM, Shanmugam K, Dinstein I. Textural features for image classification. "
            "IEEE Trans SMC 1973 (GLCM)"],
        reproduce="OMP_NUM_THREADS=1 radiogen train segmentation_lgg_full --out "
                  "runs/seg/lgg_segresnet_full --no-install (the segmentation CV run whose fold "
                  "models make the out-of-fold masks), then, in the --out folder of predict_mil's "
                  "run (same folds and seeds for the comparison): OMP_NUM_THREADS=1 python "
                  "scripts/cv_prediction.py --data ../shared/data/tcga-lgg --out /tmp/cv_pred "
                  f"--seeds {' '.join(map(str, args.seeds))} --models radiomics "
                  "radiomics_expert_mask --seg-run runs/seg/lgg_segresnet_full --ship"
                  + (" --radiomics-alternative DIR (DIR: the same command into another --out "
                     "with another --seg-run)" if alternatives else "")
                  + "; later runs with other masks: --record-radiomics-alternative DIR")
    path = Path(args.weights_dir) / "predict_radiomics.safetensors"
    save_model(path, module.state_dict(), card)
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
    ap.add_argument("--roi-jitter", type=int, default=0,
                    help="mil_roi: store windows this many pixels wider on each side and train on "
                         "random 64 x 64 crops of them (window-placement jitter; tests use the "
                         "centre)")
    ap.add_argument("--roi-window", default=None,
                    help='mil_roi: the window as JSON, e.g. \'{"mode": "fit", "margin_mm": 15, '
                         '"min_mm": 60, "max_mm": 180}\' (default: the fixed 120 mm window)')
    ap.add_argument("--cnn-epochs", type=int, default=CNN_CFG["epochs"])
    ap.add_argument("--limit", type=int, default=None, help="first N patients (smoke runs)")
    ap.add_argument("--max-minutes", type=float, default=120.0)
    ap.add_argument("--summarise-only", action="store_true")
    ap.add_argument("--ship", action="store_true",
                    help="write the shipped models of --models (mil, cnn3d, radiomics)")
    ap.add_argument("--roi-alternatives", nargs="+", default=None,
                    help="finished --models mil_roi runs of variants (same folds and seeds): "
                         "--ship records them in predict_mil_roi's card")
    ap.add_argument("--ship-only", nargs="+", default=None,
                    help="with --ship: write only these models (e.g. mil_roi); the others of "
                         "--models are trained and scored for the comparison only")
    ap.add_argument("--previous-run", help="a finished run folder of the model being replaced "
                    "(same folds and seeds): --ship records the paired comparison in the card")
    ap.add_argument("--alternative-run", help="a finished run folder of a variant that was not "
                    "chosen: --ship records it and the inner-validation choice in the card")
    ap.add_argument("--seg-run", help="finished 2D segmentation CV run (cv_segmentation.py "
                    "lgg_segresnet_full: splits.json + folds/): out-of-fold masks for the "
                    "radiomics model's features")
    ap.add_argument("--radiomics-alternative", help="a finished --models radiomics run with "
                    "another --seg-run (same folds): --ship records it in predict_radiomics's card")
    ap.add_argument("--record-radiomics-alternative", metavar="DIR",
                    help="only record a finished --models radiomics run (another --seg-run, same "
                         "folds) in the shipped predict_radiomics card; weights unchanged")
    ap.add_argument("--ensemble", nargs=2, metavar=("A", "B"), default=None,
                    help="score the equal-weight late fusion of two finished models of --out "
                         "(mean probability, mean z-scored risk) as model ens_A+B")
    ap.add_argument("--weights-dir", default=str(ROOT / "napari_radiogen" / "weights"),
                    help="where --ship writes the models (default: the package's weights)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.record_radiomics_alternative:
        record_radiomics_alternative(args.record_radiomics_alternative, args.weights_dir)
        return 0
    if not args.summarise_only:
        run_cv(args)
    if args.ensemble:
        print(f"ensemble {'+'.join(args.ensemble)}: "
              f"{ensemble_records(args.out, *args.ensemble)} fold records")
    summary = summarise(args)
    for m in ("mil_roi", "cnn3d_roi"):
        if m in args.models and (args.ship or args.summarise_only):
            window_from_segmentation(args, model=m)
    if args.ship:
        ship(args, summary)
        if "radiomics" in args.models and (not args.ship_only or "radiomics" in args.ship_only):
            ship_radiomics(args, summary)
        if args.ensemble and (not args.ship_only or "ensemble" in args.ship_only):
            ship_ensemble(args, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
