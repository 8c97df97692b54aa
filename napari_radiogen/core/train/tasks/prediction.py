"""Prediction training: MMDLM-style MIL (``prediction-mil``) and a 3D CNN (``prediction-cnn3d``)
on TCGA-LGG slice packs; multi-task (IDH, 1p/19q, grade) with missing labels masked, age/sex
fusion and a Cox risk head (``os_days``, ``os_event``).

Two ways to train:

* The CPU protocol used for the shipped models and their CV table (``scripts/cv_prediction.py``,
  functions :func:`mil_fold` and :func:`cnn3d_fold` here): stage 1 trains the per-sequence slice
  encoders with slice-level labels (each slice inherits its patient's labels, as MMDLM does) on
  the inner-training patients; their slice features are cached; stage 2 trains the per-sequence
  gated attention, fusion and heads on the cached features, with early stopping on the inner
  validation patients. The test fold is never used for any choice.
* The engine (``radiogen train configs/prediction_mil.yaml``): the TrainTask classes below train
  the same networks end to end on patient bags (suited to a GPU).

Auxiliary mask supervision (``cfg["aux"]``, :data:`AUX_DEFAULTS`; the shipped protocol): the
expert FLAIR-abnormality masks of the inner-training packs supervise stage-1 tumour-presence and
coarse in-plane tumour heads, down-weight the inherited labels of tumour-free slices, and pull
the stage-2 slice attention towards the per-slice tumour area. Only the encoders and the MIL
stage are kept: the model never sees a mask at inference (segmentation-free).

Channels a pack marks unavailable (copies of FLAIR) are masked, never used as data.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ConfigError
from ...predict import CLASSES, pack_arrays_to_input, to_volume3d, SliceInput
from ..base import PatientRecord, TrainTask, register_task

SEQS = ["t1", "flair", "t1ce"]
TASKS = ["idh", "codel_1p19q", "grade"]
_MAP = {"idh": {"wildtype": 0, "mutant": 1}, "codel_1p19q": {"non-codel": 0, "codel": 1},
        "grade": {"2": 0, "3": 1, "2.0": 0, "3.0": 1}}

# the shared dataset of the shipped configs (``../shared/data/tcga-lgg``): the engine adds how
# many patients a run used, and keeps this text and the dataset's citations only when the run's
# data is that folder (a user's own packs are described as user data, with the methods'
# citations only: ``method_citations``)
DATASET_LGG = ("TCGA-LGG (Buda et al. 2019 slice packs of TCIA TCGA-LGG images; IDH, 1p/19q "
               "and grade of Ceccarelli et al. 2016, overall survival of Liu et al. 2018)")
#: the dataset's citations, as on the shipped prediction models' cards
#: (``scripts/cv_prediction.py`` writes them there)
CITE_LGG = [
    "Buda M, Saha A, Mazurowski MA. Association of genomic subtypes of lower-grade gliomas with "
    "shape features automatically extracted by a deep learning algorithm. Comput Biol Med 2019 "
    "(LGG FLAIR-abnormality dataset; images from TCIA TCGA-LGG)",
    "Ceccarelli M et al. Molecular profiling reveals biologically discrete subsets and pathways of "
    "progression in diffuse glioma. Cell 2016 (IDH, 1p/19q, grade)",
    "Liu J et al. An integrated TCGA Pan-Cancer Clinical Data Resource. Cell 2018 (OS)",
]
#: the methods' citations (the same cards' entries): attention MIL, the MONAI networks
CITE_ILSE = ("Ilse M, Tomczak J, Welling M. Attention-based deep multiple instance learning. "
             "ICML 2018")
CITE_MONAI = "MONAI Consortium. MONAI: Medical Open Network for AI (networks)"


# -- data -----------------------------------------------------------------------------------
def _label(task: str, v: Any) -> int:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return -1
    return _MAP[task].get(str(v).strip(), -1)


def load_cohort(data_dir: str, limit: Optional[int] = None, ids: Optional[Sequence[str]] = None,
                roi: bool = False, roi_jitter: int = 0,
                roi_window: Optional[Dict[str, Any]] = None,
                no_pack: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Read TCGA-LGG packs + clinical.csv into memory: one dict per patient with ``x``
    (S, N, 64, 64) float32 normalised, ``seq_mask`` (S,), labels (-1 = missing), age, sex, OS.
    Rows of clinical.csv without a pack (``<patient_id>.h5``) are left out, their ids appended
    to ``no_pack`` (a clinical table lists more patients than have images); a table none of
    whose patients has a pack is refused.
    ``limit``: the first ``limit`` patients with a pack, in the table's order (rows without a
    pack do not count; ``no_pack`` names those met before the limit was reached).
    ``roi``: the tumour-centred input of ``predict.PREP_ROI`` around the pack's expert mask
    (``input.kind == "mil_roi"``) instead of the whole binned slices; ``roi_jitter`` > 0 keeps
    that many more pixels on each side, for random window crops in training (the network
    input stays the centre 64 x 64, see :func:`train_encoders`)."""
    import h5py
    import pandas as pd
    d = Path(data_dir)
    csv = d / "clinical.csv"
    if not csv.exists():
        raise ConfigError(f"{csv} not found: the prediction tasks need a TCGA-LGG style folder")
    tab = pd.read_csv(csv)
    rows = tab.to_dict("records")
    if ids is not None:
        keep = set(ids)
        rows = [r for r in rows if r["patient_id"] in keep]
    out = []
    missing: List[str] = []
    for r in rows:
        if limit and len(out) >= limit:  # the limit counts the patients that have a pack
            break
        f = d / f"{r['patient_id']}.h5"
        if not f.exists():
            missing.append(str(r["patient_id"]))
            continue
        with h5py.File(f, "r") as h:
            img = h["image"][:]
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in h.attrs.get("channel_names", ["t1", "flair", "t1ce"])]
            avail = [bool(a) for a in h.attrs.get("available", [True] * len(names))]
            tmask = h["mask"][:] if "mask" in h else None
        arrays = {n: img[:, i] for i, n in enumerate(names)}
        if roi:
            from ...predict import roi_arrays_to_input
            if tmask is None:
                raise ConfigError(f"{f.name} has no tumour mask: the tumour-centred model "
                                  "needs the packs' 'mask' datasets")
            from ...io.pack import NOMINAL_INPLANE_MM, NOMINAL_SLICE_MM
            from ...predict import ROI_SIZE
            inp = roi_arrays_to_input(
                arrays, SEQS, tmask, (NOMINAL_INPLANE_MM, NOMINAL_INPLANE_MM, NOMINAL_SLICE_MM),
                dict(zip(names, avail)), size=ROI_SIZE + 2 * int(roi_jitter), window=roi_window)
            t = np.clip(inp.tumour, 0, 1)
            tum = (t.astype(np.float16), t.reshape(len(t), -1).mean(1).astype(np.float32))
        else:
            inp = pack_arrays_to_input(arrays, SEQS, dict(zip(names, avail)))
            tum = tumour_targets(tmask, inp.x.shape[-2:]) if tmask is not None else None
        age = r.get("age_at_initial_pathologic")
        g = r.get("gender")
        out.append({"id": r["patient_id"], "x": inp.x, "seq_mask": inp.seq_mask,
                    "y": np.array([_label(t, r.get(t)) for t in TASKS], np.int64),
                    "age": float(age) if age == age and age is not None else np.nan,
                    "sex": (1.0 if g == 2 else 0.0) if g == g and g is not None else np.nan,
                    "os_days": float(r.get("os_days", np.nan)),
                    "os_event": float(r.get("os_event", np.nan)),
                    "strata": str(r.get("idh_codel_subtype")) + "|" + str(r.get("grade")),
                    # expert FLAIR-abnormality mask on the network grid (fraction per pixel,
                    # float16) and per-slice area fraction: auxiliary TRAINING supervision only
                    "tmask": None if tum is None else tum[0],
                    "tarea": None if tum is None else tum[1]})
    if not out:
        if missing:
            from ..datasets_util import none_with_images_message
            raise ConfigError(none_with_images_message(
                csv.name, missing, d.name, sorted(f.stem for f in d.glob("*.h5")),
                "a pack (<patient_id>.h5)"))
        raise ConfigError(f"no patient packs found in {d}")
    if no_pack is not None:
        no_pack.extend(missing)
    return out


def tumour_targets(mask: np.ndarray, hw) -> Tuple[np.ndarray, np.ndarray]:
    """A pack's (n, 128, 128) tumour mask -> ((n, 64, 64) float16 tumour fraction per input
    pixel, binned like the images; (n,) float32 tumour area fraction per slice)."""
    from ...predict import bin2
    m = (np.asarray(mask) > 0).astype(np.float32)
    H, W = int(hw[0]), int(hw[1])
    if m.shape[1] != 2 * H or m.shape[2] != 2 * W:
        from scipy import ndimage
        m = ndimage.zoom(m, (1, 2 * H / m.shape[1], 2 * W / m.shape[2]), order=1)
    b = np.clip(bin2(m), 0, 1)
    return b.astype(np.float16), b.reshape(len(b), -1).mean(1).astype(np.float32)


#: fixed clinical normalisation (constants, so no fold's statistics leak into another; the
#: cohort's age is 44.9 +- 14.1 years)
AGE_MEAN, AGE_SD, SEX_UNKNOWN = 45.0, 15.0, 0.5


def clinical_stats(cohort: Sequence[Dict[str, Any]] = ()) -> Dict[str, float]:
    return {"age_mean": AGE_MEAN, "age_sd": AGE_SD, "sex_mean": SEX_UNKNOWN}


def clinical_matrix(cohort, stats) -> np.ndarray:
    c = np.zeros((len(cohort), 2), np.float32)
    for i, p in enumerate(cohort):
        c[i, 0] = 0.0 if np.isnan(p["age"]) else (p["age"] - stats["age_mean"]) / stats["age_sd"]
        c[i, 1] = stats["sex_mean"] if np.isnan(p["sex"]) else p["sex"]
    return c


def records(cohort) -> List[PatientRecord]:
    return [PatientRecord(patient_id=p["id"], strata=p["strata"]) for p in cohort]


# -- metrics --------------------------------------------------------------------------------
def auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score
    y, p = np.asarray(y), np.asarray(p)
    k = y >= 0
    if len(np.unique(y[k])) < 2:
        return float("nan")
    return float(roc_auc_score(y[k], p[k]))


def cindex(time_, event, risk) -> float:
    from lifelines.utils import concordance_index
    t, e, r = map(np.asarray, (time_, event, risk))
    k = np.isfinite(t) & np.isfinite(e) & np.isfinite(r)
    if e[k].sum() < 1:
        return float("nan")
    try:
        return float(concordance_index(t[k], -r[k], e[k]))
    except ZeroDivisionError:          # no admissible pair
        return float("nan")


def val_score(preds: Dict[str, np.ndarray], y: np.ndarray, risk=None, os_=None) -> float:
    s = [auc(y[:, j], preds[t]) for j, t in enumerate(TASKS)]
    if risk is not None and os_ is not None:
        s.append(cindex(os_[:, 0], os_[:, 1], risk))
    s = [v for v in s if v == v]
    return float(np.mean(s)) if s else 0.0


def _set_threads():
    import torch
    torch.set_num_threads(1)


# -- stage 1: slice encoders --------------------------------------------------------------------
def _slice_table(cohort, idx):
    rows = []
    for i in idx:
        n = cohort[i]["x"].shape[1]
        rows += [(i, k) for k in range(n)]
    return rows


def _augment_slices(x, rng, mask=None):
    """x (B, S, H, W) torch: random flips, intensity scale/shift per sequence. With ``mask``
    (B, H, W), the same flips are applied to it and ``(x, mask)`` is returned."""
    import torch
    if rng.random() < 0.5:
        x = torch.flip(x, dims=[-1])
        mask = None if mask is None else torch.flip(mask, dims=[-1])
    if rng.random() < 0.3:
        x = torch.flip(x, dims=[-2])
        mask = None if mask is None else torch.flip(mask, dims=[-2])
    B, S = x.shape[:2]
    g = torch.from_numpy(rng.normal(1.0, 0.1, (B, S, 1, 1)).astype(np.float32))
    b = torch.from_numpy(rng.normal(0.0, 0.1, (B, S, 1, 1)).astype(np.float32))
    return x * g + b if mask is None else (x * g + b, mask)


#: auxiliary tumour supervision (``cfg["aux"]`` of the MIL protocol), from the expert masks of
#: the TRAINING packs only; the model at inference never sees a mask
AUX_DEFAULTS = {"tumour_weight": 1.0, "label_bg_weight": 0.1, "att_weight": 0.5,
                "tumour_layer": "layer2"}


def _has_masks(cohort, idx) -> bool:
    return all(cohort[i].get("tmask") is not None for i in idx)


def train_encoders(cohort, train_idx, arch: Dict[str, Any], *, epochs=6, batch=64, lr=2e-3,
                   seed=0, log=print, max_seconds=None, aux: Optional[Dict[str, Any]] = None):
    """Stage 1. ``aux`` (see :data:`AUX_DEFAULTS`): also train tumour-presence and coarse
    in-plane tumour heads on the expert masks (weight ``tumour_weight``) and weight the
    inherited patient labels of tumour-free slices by ``label_bg_weight``."""
    import torch
    from src_models.mil import SliceAuxModel, masked_ce, tumour_aux_loss, weighted_ce
    _set_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if aux is not None:
        aux = dict(AUX_DEFAULTS, **aux)
        if not _has_masks(cohort, train_idx):
            raise ConfigError("auxiliary tumour supervision needs the packs' 'mask' datasets")
        model = SliceAuxModel(**dict(arch, tumour_heads=True, tumour_layer=aux["tumour_layer"]))
    else:
        model = SliceAuxModel(**arch)
    rows = _slice_table(cohort, train_idx)
    size = int(arch.get("input_size", 64))
    Y = np.stack([cohort[i]["y"] for i in train_idx])
    weights = {}
    for j, t in enumerate(TASKS):
        yy = Y[:, j][Y[:, j] >= 0]
        cnt = np.bincount(yy, minlength=2).astype(float)
        weights[t] = torch.tensor(cnt.sum() / np.maximum(cnt, 1) / 2, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(rows) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(len(rows))
        tot = 0.0
        for b0 in range(0, len(perm), batch):
            sel = [rows[k] for k in perm[b0:b0 + batch]]
            x = torch.from_numpy(np.stack([cohort[i]["x"][:, k] for i, k in sel]))
            sm = np.stack([cohort[i]["seq_mask"] for i, _ in sel])
            y = torch.from_numpy(np.stack([cohort[i]["y"] for i, _ in sel]))
            sw = tm = None
            if aux is not None:
                tm = torch.from_numpy(np.stack([cohort[i]["tmask"][k] for i, k in sel]).astype(np.float32))
            if x.shape[-1] > size:                 # a wider stored window: random placement
                x, tm = _random_crop(x, tm, size, rng)
            if aux is not None:
                x, tm = _augment_slices(x, rng, tm)
                has = tm.flatten(1).amax(1) > 0
                sw = torch.where(has, torch.ones(len(sel)),
                                 torch.full((len(sel),), float(aux["label_bg_weight"])))
            else:
                x = _augment_slices(x, rng)
            out = model(x)
            loss = 0.0
            for si, s in enumerate(model.sequences):
                keep = torch.from_numpy(sm[:, si])
                for j, t in enumerate(TASKS):
                    tgt = torch.where(keep, y[:, j], torch.full_like(y[:, j], -1))
                    if sw is None:
                        loss = loss + masked_ce(out[s][t], tgt, weights[t])
                    else:
                        loss = loss + weighted_ce(out[s][t], tgt, weights[t], sw)
                if aux is not None and aux["tumour_weight"] > 0:
                    loss = loss + aux["tumour_weight"] * tumour_aux_loss(
                        out[s]["tumour"], out[s]["tumour_map"], tm, keep)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(sel)
        log(f"  encoders epoch {ep + 1}/{epochs} loss {tot / len(rows):.3f} ({time.time() - t0:.0f} s)")
        if max_seconds and time.time() - t0 > max_seconds:
            log("  encoders: time budget reached")
            break
    model.eval()
    return model


def _random_crop(x, tm, size: int, rng):
    """(B, S, H, W) images and (B, H, W) masks (or None) -> a random ``size`` x ``size`` window
    per sample, the same for its images and mask."""
    H, W = x.shape[-2:]
    oy = rng.integers(0, H - size + 1, len(x))
    ox = rng.integers(0, W - size + 1, len(x))
    x = np.stack([x[b, :, oy[b]:oy[b] + size, ox[b]:ox[b] + size].numpy() for b in range(len(x))])
    import torch
    x = torch.from_numpy(x)
    if tm is not None:
        tm = torch.from_numpy(np.stack([tm[b, oy[b]:oy[b] + size, ox[b]:ox[b] + size].numpy()
                                        for b in range(len(tm))]))
    return x, tm


def centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` of the last two axes (no-op when already that size)."""
    H, W = a.shape[-2:]
    oy, ox = (H - size) // 2, (W - size) // 2
    return a[..., oy:oy + size, ox:ox + size]


def cache_features(model, cohort, batch=256) -> List[np.ndarray]:
    """(S, N, D) features per patient from frozen encoders (the centre window of a wider
    stored one)."""
    import torch
    feats = []
    size = int(getattr(model, "input_size", 64))
    with torch.inference_mode():
        for p in cohort:
            x = torch.from_numpy(np.ascontiguousarray(centre_crop(p["x"], size)))   # (S, N, H, W)
            f = [model.encoders[s](x[i].unsqueeze(1)).numpy() for i, s in enumerate(model.sequences)]
            feats.append(np.stack(f))
    return feats


# -- stage 2: attention MIL on cached features ----------------------------------------------
def _pad_bags(feats, idx):
    n = max(feats[i].shape[1] for i in idx)
    S, _, D = feats[idx[0]].shape
    F = np.zeros((len(idx), S, n, D), np.float32)
    M = np.zeros((len(idx), n), bool)
    for b, i in enumerate(idx):
        k = feats[i].shape[1]
        F[b, :, :k] = feats[i]
        M[b, :k] = True
    return F, M


def _mil_outputs(model, feats, idx, cohort, clin):
    import torch
    F, M = _pad_bags(feats, idx)
    sm = np.stack([cohort[i]["seq_mask"] for i in idx])
    model.eval()
    with torch.inference_mode():
        o = model.forward_features(torch.from_numpy(F), torch.from_numpy(M), torch.from_numpy(sm),
                                   torch.from_numpy(clin[idx]))
    probs = {t: torch.softmax(o["logits"][t], -1)[:, 1].numpy() for t in TASKS}
    risk = o["risk"].numpy() if "risk" in o else None
    att = [o["attention"][b, :, :feats[i].shape[1]].numpy() for b, i in enumerate(idx)]
    return probs, risk, att


def train_mil_head(model, feats, cohort, clin, tr_idx, va_idx, *, epochs=150, lr=2e-3,
                   cox_weight=0.5, seed=0, eval_every=5, patience=40, seq_drop=0.15,
                   slice_drop=0.2, att_weight=0.0, log=print):
    """Train attention + fusion + heads of ``model`` (encoders frozen) on cached features.
    ``att_weight`` > 0: also pull each sequence's slice attention towards the normalised
    expert tumour area per slice (KL, training patients only; inference needs no mask)."""
    import torch
    from src_models.mil import attention_kl, masked_ce
    from ..losses import cox_ph_loss
    _set_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for p in model.encoders.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-3)
    F, M = _pad_bags(feats, tr_idx)
    F, M = torch.from_numpy(F), torch.from_numpy(M)
    SM = torch.from_numpy(np.stack([cohort[i]["seq_mask"] for i in tr_idx]))
    C = torch.from_numpy(clin[tr_idx])
    Y = torch.from_numpy(np.stack([cohort[i]["y"] for i in tr_idx]))
    OS = torch.tensor([[cohort[i]["os_days"], cohort[i]["os_event"]] for i in tr_idx],
                      dtype=torch.float32)
    A = None
    if att_weight > 0:
        if not _has_masks(cohort, tr_idx):
            raise ConfigError("attention supervision needs the packs' 'mask' datasets")
        A = torch.zeros(M.shape, dtype=torch.float32)
        for b, i in enumerate(tr_idx):
            A[b, :len(cohort[i]["tarea"])] = torch.from_numpy(cohort[i]["tarea"])
    yv = np.stack([cohort[i]["y"] for i in va_idx]) if va_idx else None
    osv = np.array([[cohort[i]["os_days"], cohort[i]["os_event"]] for i in va_idx]) if va_idx else None
    best, best_state, best_ep, since = -1.0, copy.deepcopy(model.state_dict()), 0, 0
    for ep in range(1, epochs + 1):
        model.train()
        for m in model.encoders.modules():
            m.eval()
        sm = SM.clone()
        drop = torch.from_numpy(rng.random(sm.shape) < seq_drop)
        sm = sm & ~drop
        sm[sm.sum(1) == 0] = SM[sm.sum(1) == 0]          # keep at least one sequence
        msk = M & torch.from_numpy(rng.random(M.shape) >= slice_drop)
        msk[msk.sum(1) == 0] = M[msk.sum(1) == 0]
        Fa = F + 0.05 * torch.randn_like(F)
        o = model.forward_features(Fa, msk, sm, C + 0.05 * torch.randn_like(C))
        loss = sum(masked_ce(o["logits"][t], Y[:, j]) for j, t in enumerate(TASKS))
        if "risk" in o and cox_weight > 0:
            ok = torch.isfinite(OS[:, 0]) & torch.isfinite(OS[:, 1])
            loss = loss + cox_weight * cox_ph_loss(o["risk"][ok], OS[ok, 0], OS[ok, 1])
        if A is not None:
            loss = loss + att_weight * attention_kl(o["attention"], A, msk, sm)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if va_idx and (ep % eval_every == 0 or ep == epochs):
            pr, rk, _ = _mil_outputs(model, feats, va_idx, cohort, clin)
            sc = val_score(pr, yv, rk, osv)
            if sc > best:
                best, best_state, best_ep, since = sc, copy.deepcopy(model.state_dict()), ep, 0
            else:
                since += eval_every
                if since >= patience:
                    break
    if va_idx:
        model.load_state_dict(best_state)
    else:
        best_ep = epochs
    log(f"  MIL head: best inner-val score {best:.3f} at epoch {best_ep}")
    model.eval()
    return model, {"inner_val_score": best, "best_epoch": best_ep}


def inner_split(cohort, tr_idx, seed) -> Tuple[List[int], List[int]]:
    from ..splits import holdout
    recs = [PatientRecord(patient_id=str(i), strata=cohort[i]["strata"].split("|")[0]) for i in tr_idx]
    a, b = holdout(recs, 0.2, seed=seed)
    return [int(i) for i in a], [int(i) for i in b]


def mil_fold(cohort, tr_idx, te_idx, cfg: Dict[str, Any], seed: int, log=print):
    """One outer fold of the two-stage MIL protocol. Returns (test predictions, state_dict)."""
    import torch
    from src_models.mil import MILPredictor, copy_encoders
    arch = dict(cfg["arch"])
    aux = cfg.get("aux")
    inner_tr, inner_va = inner_split(cohort, tr_idx, seed)
    enc = train_encoders(cohort, inner_tr, arch, epochs=cfg.get("enc_epochs", 6),
                         batch=cfg.get("enc_batch", 64), lr=cfg.get("enc_lr", 2e-3), seed=seed,
                         log=log, max_seconds=cfg.get("enc_max_seconds"), aux=aux)
    feats = cache_features(enc, cohort)
    stats = clinical_stats([cohort[i] for i in inner_tr])
    clin = clinical_matrix(cohort, stats)
    torch.manual_seed(seed)
    mil = MILPredictor(**arch)
    copy_encoders(enc, mil)
    mil, info = train_mil_head(mil, feats, cohort, clin, inner_tr, inner_va,
                               epochs=cfg.get("mil_epochs", 150), lr=cfg.get("mil_lr", 2e-3),
                               cox_weight=cfg.get("cox_weight", 0.5), seed=seed,
                               att_weight=float(dict(AUX_DEFAULTS, **aux)["att_weight"]) if aux else 0.0,
                               log=log)
    probs, risk, att = _mil_outputs(mil, feats, te_idx, cohort, clin)
    return {"probs": probs, "risk": risk, "attention": att, "info": info,
            "clinical_stats": stats}, mil.state_dict()


# -- 3D CNN ---------------------------------------------------------------------------------
def cnn3d_fold(cohort, tr_idx, te_idx, cfg: Dict[str, Any], seed: int, log=print):
    import torch
    from src_models.cnn3d import CNN3DPredictor, freeze_stages, train_mode
    from ..losses import FocalLoss, cox_ph_loss
    _set_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = dict(cfg["arch"])
    depth = int(arch.get("depth", 32))
    vols = {}
    for i in list(tr_idx) + list(te_idx):
        p = cohort[i]
        vols[i] = to_volume3d(SliceInput(p["x"], p["seq_mask"], np.arange(p["x"].shape[1]),
                                         p["x"].shape[1], SEQS), depth)
    inner_tr, inner_va = inner_split(cohort, tr_idx, seed)
    stats = clinical_stats([cohort[i] for i in inner_tr])
    clin = clinical_matrix(cohort, stats)
    model = CNN3DPredictor(**arch)
    if cfg.get("freeze_stages"):
        freeze_stages(model, int(cfg["freeze_stages"]))
    focal = FocalLoss(gamma=float(cfg.get("focal_gamma", 2.0)), ignore_index=-1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=cfg.get("lr", 1e-3), weight_decay=1e-4)
    # weighted sampler over the IDH/1p19q subtype strata
    strata = [cohort[i]["strata"].split("|")[0] for i in inner_tr]
    cnt = {s: strata.count(s) for s in set(strata)}
    w = np.array([1.0 / cnt[s] for s in strata])
    w = w / w.sum()
    epochs, batch = int(cfg.get("epochs", 30)), int(cfg.get("batch", 8))
    per_epoch = len(inner_tr)

    def run(idx):
        model.eval()
        with torch.inference_mode():
            x = torch.from_numpy(np.stack([vols[i] for i in idx]))
            sm = torch.from_numpy(np.stack([cohort[i]["seq_mask"] for i in idx]))
            o = model(x, sm, torch.from_numpy(clin[idx]))
        return ({t: torch.softmax(o["logits"][t], -1)[:, 1].numpy() for t in TASKS},
                o["risk"].numpy() if "risk" in o else None)

    yv = np.stack([cohort[i]["y"] for i in inner_va])
    osv = np.array([[cohort[i]["os_days"], cohort[i]["os_event"]] for i in inner_va])
    best, best_state, best_ep = -1.0, copy.deepcopy(model.state_dict()), 0
    t0 = time.time()
    for ep in range(1, epochs + 1):
        train_mode(model)
        draws = rng.choice(len(inner_tr), size=per_epoch, replace=True, p=w)
        for b0 in range(0, per_epoch, batch):
            idx = [inner_tr[k] for k in draws[b0:b0 + batch]]
            if len(idx) < 2:
                continue
            x = torch.from_numpy(np.stack([vols[i] for i in idx]))
            if rng.random() < 0.5:
                x = torch.flip(x, dims=[-1])
            x = x * torch.from_numpy(rng.normal(1, 0.1, (len(idx), x.shape[1], 1, 1, 1)).astype(np.float32))
            sm = torch.from_numpy(np.stack([cohort[i]["seq_mask"] for i in idx]))
            y = torch.from_numpy(np.stack([cohort[i]["y"] for i in idx]))
            o = model(x, sm, torch.from_numpy(clin[idx]))
            loss = sum(focal(o["logits"][t], y[:, j]) if bool((y[:, j] >= 0).any())
                       else o["logits"][t].sum() * 0 for j, t in enumerate(TASKS))
            if "risk" in o:
                os_ = torch.tensor([[cohort[i]["os_days"], cohort[i]["os_event"]] for i in idx])
                loss = loss + cfg.get("cox_weight", 0.5) * cox_ph_loss(o["risk"], os_[:, 0], os_[:, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep % 2 == 0 or ep == epochs:
            pr, rk = run(inner_va)
            sc = val_score(pr, yv, rk, osv)
            if sc > best:
                best, best_state, best_ep = sc, copy.deepcopy(model.state_dict()), ep
        if cfg.get("max_seconds") and time.time() - t0 > cfg["max_seconds"]:
            log("  cnn3d: time budget reached")
            break
    model.load_state_dict(best_state)
    log(f"  cnn3d: best inner-val score {best:.3f} at epoch {best_ep} ({time.time() - t0:.0f} s)")
    probs, risk = run(list(te_idx))
    return {"probs": probs, "risk": risk, "info": {"inner_val_score": best, "best_epoch": best_ep},
            "clinical_stats": stats}, model.state_dict()


# -- baselines on the same folds --------------------------------------------------------------
def intensity_features(p) -> np.ndarray:
    """Simple whole-head intensity statistics per sequence (NaN where a sequence is masked)."""
    if "_intensity" not in p:
        p["_intensity"] = _intensity_features(p)
    return p["_intensity"]


def _intensity_features(p) -> np.ndarray:
    from scipy import stats as st
    f = []
    for i in range(len(SEQS)):
        if not p["seq_mask"][i]:
            f += [np.nan] * 7
            continue
        v = p["x"][i]
        v = v[v > -1.5]
        f += [float(np.percentile(v, q)) for q in (10, 50, 90, 99)]
        f += [float(st.skew(v)), float((v > 2).mean()), float((v > 3).mean())]
    return np.array(f, np.float32)


def baseline_fold(cohort, tr_idx, te_idx, kind: str) -> Dict[str, Any]:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    stats = clinical_stats([cohort[i] for i in tr_idx])
    clin = clinical_matrix(cohort, stats)
    if kind == "age_sex":
        X = clin
    else:
        X = np.concatenate([clin, np.stack([intensity_features(p) for p in cohort])], 1)
    probs = {}
    for j, t in enumerate(TASKS):
        tr = [i for i in tr_idx if cohort[i]["y"][j] >= 0]
        y = np.array([cohort[i]["y"][j] for i in tr])
        m = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegression(C=0.3 if kind != "age_sex" else 1.0, max_iter=2000))
        m.fit(X[tr], y)
        probs[t] = m.predict_proba(X[list(te_idx)])[:, 1]
    risk = clin[list(te_idx), 0] if kind == "age_sex" else None     # age alone
    return {"probs": probs, "risk": risk}


# -- engine integration (end-to-end training on patient bags) --------------------------------
class _BagDataset:
    def __init__(self, cohort, clin):
        self.cohort, self.clin = cohort, clin

    def __len__(self):
        return len(self.cohort)

    def __getitem__(self, i):
        p = self.cohort[i]
        return {"x": p["x"], "seq_mask": p["seq_mask"], "y": p["y"], "clinical": self.clin[i],
                "os": np.array([p["os_days"], p["os_event"]], np.float32), "id": p["id"]}


def collate_bags(items):
    import torch
    n = max(it["x"].shape[1] for it in items)
    S, _, H, W = items[0]["x"].shape
    x = np.zeros((len(items), S, n, H, W), np.float32)
    m = np.zeros((len(items), n), bool)
    for b, it in enumerate(items):
        k = it["x"].shape[1]
        x[b, :, :k] = it["x"]
        m[b, :k] = True
    return {"x": torch.from_numpy(x), "slice_mask": torch.from_numpy(m),
            "seq_mask": torch.from_numpy(np.stack([it["seq_mask"] for it in items])),
            "y": torch.from_numpy(np.stack([it["y"] for it in items])),
            "clinical": torch.from_numpy(np.stack([it["clinical"] for it in items])),
            "os": torch.from_numpy(np.stack([it["os"] for it in items])),
            "id": [it["id"] for it in items]}


class _PredictionTaskBase(TrainTask):
    score_name = "mean_auc_cindex"
    model_task = "prediction"
    kind = "mil"
    method_citations: Tuple[str, ...] = (CITE_MONAI,)

    def __init__(self, cfg):
        super().__init__(cfg)
        self._cohort = None
        self._stats = None

    @property
    def cohort(self):
        if self._cohort is None:
            no_pack: List[str] = []
            self._cohort = load_cohort(self.cfg["data"], limit=self.cfg.get("limit"),
                                       no_pack=no_pack, **self.cohort_kwargs())
            if no_pack:
                from ..datasets_util import without_images_note
                self.notes.append(without_images_note("clinical.csv", no_pack,
                                                      Path(str(self.cfg["data"])).name,
                                                      "pack (.h5)"))
        return self._cohort

    def cohort_kwargs(self) -> Dict[str, Any]:
        return {}

    def patients(self) -> List[PatientRecord]:
        return records(self.cohort)

    def _subset(self, ids):
        keep = set(ids)
        return [p for p in self.cohort if p["id"] in keep]

    def make_datasets(self, train_ids, val_ids):
        tr = self._subset(train_ids)
        self._stats = clinical_stats(tr)
        return (self._dataset(tr), self._dataset(self._subset(val_ids)))

    def _dataset(self, cohort):
        return _BagDataset(cohort, clinical_matrix(cohort, self._stats or clinical_stats(cohort)))

    def sample_weights(self, ds):
        strata = [p["strata"].split("|")[0] for p in ds.cohort]
        return [1.0 / strata.count(s) for s in strata]

    def collate_fn(self):
        return collate_bags

    def _loss(self, out, batch):
        from src_models.mil import masked_ce
        from ..losses import cox_ph_loss, make_loss
        spec = dict(self.cfg.get("train", {}).get("loss") or {"name": "ce"})
        y = batch["y"]
        if spec.get("name", "ce") == "focal":
            crit = make_loss(spec)
            crit.ignore_index = -1
            loss = sum(crit(out["logits"][t], y[:, j]) for j, t in enumerate(TASKS))
        else:
            loss = sum(masked_ce(out["logits"][t], y[:, j]) for j, t in enumerate(TASKS))
        if "risk" in out:
            loss = loss + float(self.cfg.get("model", {}).get("cox_weight", 0.5)) * cox_ph_loss(
                out["risk"], batch["os"][:, 0], batch["os"][:, 1])
        return loss

    def training_step(self, model, batch, device):
        out = self._forward(model, batch, device)
        loss = self._loss(out, {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()})
        return loss, {"loss": float(loss.detach())}

    def evaluate(self, model, dataset, device):
        import torch
        if len(dataset) == 0:
            return {"score": float("nan")}      # undefined: the engine ranks by the loss
        model.eval()
        preds = []
        with torch.inference_mode():
            for i in range(len(dataset)):
                self.check_cancel()
                b = collate_bags([dataset[i]])
                o = self._forward(model, b, device)
                preds.append({t: float(torch.softmax(o["logits"][t], -1)[0, 1]) for t in TASKS}
                             | {"risk": float(o["risk"][0]) if "risk" in o else None,
                                "patient_id": b["id"][0]})
        y = np.stack([dataset[i]["y"] for i in range(len(dataset))])
        os_ = np.stack([dataset[i]["os"] for i in range(len(dataset))])
        pr = {t: np.array([p[t] for p in preds]) for t in TASKS}
        rk = np.array([p["risk"] for p in preds]) if preds[0]["risk"] is not None else None
        res = {"score": val_score(pr, y, rk, os_)}
        for j, t in enumerate(TASKS):
            res[f"auc_{t}"] = auc(y[:, j], pr[t])
        if rk is not None:
            res["c_index"] = cindex(os_[:, 0], os_[:, 1], rk)
        if not any(v == v for k, v in res.items() if k != "score"):
            # no AUC and no C-index defined (one class of every task, no event): the score is
            # undefined, not 0.0, so the engine never ranks it against a real one
            res["score"] = float("nan")
        for p, yy, o in zip(preds, y, os_):
            p.update({f"y_{t}": int(yy[j]) for j, t in enumerate(TASKS)})
            p.update({"os_days": float(o[0]), "os_event": float(o[1])})
        res["predictions"] = preds
        return res

    def baseline(self, train_ids, test_ids):
        """Logistic regression on age + sex per task, age alone as the OS risk (the
        ``age_sex`` baseline of ``scripts/cv_prediction.py``), fitted on ``train_ids``."""
        pos = {p["id"]: i for i, p in enumerate(self.cohort)}
        tr = [pos[i] for i in train_ids if i in pos]
        te = [pos[i] for i in test_ids if i in pos]
        if not tr or not te:
            return None
        try:
            b = baseline_fold(self.cohort, tr, te, "age_sex")
        except ValueError:          # a training part with one class of a task (tiny runs)
            return None
        y = np.stack([self.cohort[i]["y"] for i in te])
        res = {f"auc_{t}": auc(y[:, j], b["probs"][t]) for j, t in enumerate(TASKS)}
        os_ = np.array([[self.cohort[i]["os_days"], self.cohort[i]["os_event"]] for i in te])
        res["c_index"] = cindex(os_[:, 0], os_[:, 1], b["risk"])
        return res

    def card_fields(self):
        from ...predict import PREP
        m = self.cfg.get("model", {})
        return {"sequences": SEQS, "required_sequences": ["flair"],
                "classes": CLASSES, "tasks": {t: CLASSES[t] for t in TASKS},
                "spacing_mm": [3.75, 3.75], "input_size": [64, 64], "normalisation": PREP,
                "input": {"kind": self.kind, "depth": int(m.get("depth", 32))},
                # the trained network's (an init model's architecture once it is checked)
                "clinical": dict(self._stats or {}, used=bool(
                    ((getattr(self, "_init", None) or (None, {}))[1].get("architecture", {})
                     .get("kwargs") or {}).get("clinical", m.get("clinical", True))),
                                 features=["age_z", "sex (1 = TCGA gender code 2)"]),
                # the engine keeps these for a run on the shared packs only
                "datasets": DATASET_LGG,
                "citations": [*CITE_LGG, *self.method_citations]}


@register_task("prediction-mil")
class MILPredictionTask(_PredictionTaskBase):
    """End-to-end MIL on patient bags (all slices of the three sequences)."""

    kind = "mil"
    method_citations = (CITE_ILSE, CITE_MONAI)

    def architecture(self):
        m = {k: v for k, v in self.cfg.get("model", {}).items()
             if k not in ("cox_weight", "arch", "window")}
        return {"builder": "src_models.mil:build_mil", "kwargs": m}

    def _forward(self, model, batch, device):
        out = model(batch["x"].to(device), batch["slice_mask"].to(device),
                    batch["seq_mask"].to(device), batch["clinical"].to(device))
        return ensemble_as_one(out)


def ensemble_as_one(out: Dict[str, Any]) -> Dict[str, Any]:
    """A fold ensemble's outputs (``MILEnsemble``: per-member probabilities, risks) as one
    network's: logits = log of the members' mean probability (what ``core.predict`` reports,
    so fine-tuning an ensemble trains the probability it shows), risk = the members' mean."""
    if "logits" in out:
        return out
    import torch
    res = {"logits": {t: torch.log(p.mean(0).clamp_min(1e-7)) for t, p in out["probs"].items()}}
    if "attention" in out:
        res["attention"] = out["attention"].mean(0)
    if "risk" in out:
        res["risk"] = out["risk"].mean(0)
    return res


class _TumourCentred:
    """The tumour-centred input of a prediction task: each pack's window
    (``predict.PREP_ROI``) placed on its expert mask, as in ``scripts/cv_prediction.py``; a
    user's packs need their ``mask`` datasets. Mixed in before the task's network class."""

    def cohort_kwargs(self) -> Dict[str, Any]:
        return {"roi": True, "roi_window": self.cfg.get("model", {}).get("window")}

    def card_fields(self):
        from ...predict import PREP_ROI, ROI_SEGMENTATION, ROI_SIZE, ROI_SPACING_MM
        f = super().card_fields()
        window = self.cfg.get("model", {}).get("window")
        f.update(spacing_mm=[ROI_SPACING_MM, ROI_SPACING_MM], input_size=[ROI_SIZE, ROI_SIZE],
                 normalisation=PREP_ROI,
                 input=dict(f["input"], kind=self.kind, segmentation=dict(ROI_SEGMENTATION),
                            **({"window": window} if window else {})))
        return f


@register_task("prediction-mil-roi")
class MILROIPredictionTask(_TumourCentred, MILPredictionTask):
    """The tumour-centred MIL of ``predict_mil_roi`` trained end to end on patient bags.
    ``init: predict_mil_roi`` fine-tunes the shipped fold ensemble."""

    kind = "mil_roi"


@register_task("prediction-cnn3d")
class CNN3DPredictionTask(_PredictionTaskBase):
    """3D CNN on the slice stack resampled to a fixed depth."""

    kind = "volume3d"
    STAGE_FREEZE = True          # train.freeze: [3] = conv1, bn1, layer1 (of every member)

    def architecture(self):
        m = {k: v for k, v in self.cfg.get("model", {}).items() if k not in ("cox_weight", "arch")}
        return {"builder": "src_models.cnn3d:build_cnn3d", "kwargs": m}

    def freeze(self, model, spec):
        from src_models.cnn3d import freeze_stages
        ints = [s for s in spec if isinstance(s, int) or str(s).isdigit()]
        if ints:     # the first stages of the trunk (of every member of a fold ensemble)
            for m in getattr(model, "members", [model]):
                freeze_stages(m, int(ints[0]))
        super().freeze(model, [s for s in spec if s not in ints])

    def _forward(self, model, batch, device):
        import torch
        depth = int(self.cfg.get("model", {}).get("depth", 32))
        x = batch["x"].numpy()
        vols = []
        for b in range(x.shape[0]):
            k = int(batch["slice_mask"][b].sum())
            vols.append(to_volume3d(SliceInput(x[b][:, :k], None, np.arange(k), k, SEQS), depth))
        return ensemble_as_one(model(torch.from_numpy(np.stack(vols)).to(device),
                                     batch["seq_mask"].to(device), batch["clinical"].to(device)))


@register_task("prediction-cnn3d-roi")
class CNN3DROIPredictionTask(_TumourCentred, CNN3DPredictionTask):
    """The 3D CNN of ``predict_cnn3d_roi``: the tumour-centred window's slices as one volume.
    ``init: predict_cnn3d_roi`` fine-tunes the shipped fold ensemble."""

    kind = "volume3d_roi"


# -- radiomics on the model's own segmentation (``predict_radiomics``) --------------------------
#: fixed before any fold was scored: the forest of ``../shared/BASELINES.md`` (500 trees, which
#: beat logistic regression there on every task with expert masks), leaves of >= 3 patients
RADIOMICS_CFG = {"n_estimators": 500, "min_samples_leaf": 3, "max_features": "sqrt",
                 "cox_penalizer": 0.1,
                 "cox_covariates": ["age", "logit P(IDH mutant), out-of-bag on training patients"]}


def radiomics_table(data_dir, seg_run, ids: Sequence[str], log=print):
    """Features (``core.radiomics.FEATURES``) of each pack inside its *out-of-fold* predicted
    whole-tumour mask: ``seg_run`` is a finished 2D segmentation CV run (``splits.json`` +
    ``folds/fold{k}_best.safetensors``, e.g. ``cv_segmentation.py``'s ``lgg_segresnet_full``);
    each patient is segmented by the fold model that did not train on it. Returns a DataFrame
    (patients x features), the per-patient Dice of those masks, and the same features inside
    the expert masks (an upper bound that no user has at inference: reported, never shipped)."""
    import json as _json
    import pandas as pd
    from ...io.pack import load_pack
    from ...models import load_model
    from ...radiomics import FEATURES, case_features
    from ...segment import segment

    seg_run = Path(seg_run)
    splits = _json.loads((seg_run / "splits.json").read_text())
    fold_of = {pid: k for k, sp in enumerate(splits, 1) for pid in sp["test"]}
    missing = [i for i in ids if i not in fold_of]
    if missing:
        raise ConfigError(f"{len(missing)} patients are in no test fold of {seg_run} "
                          f"(e.g. {missing[0]}): the masks would not be out of fold")
    rows, expert, dice = {}, {}, {}
    for k in sorted(set(fold_of[i] for i in ids)):
        m = load_model(str(seg_run / "folds" / f"fold{k}_best.safetensors"), task="segmentation")
        for pid in [i for i in ids if fold_of[i] == k]:
            case = load_pack(Path(data_dir) / f"{pid}.h5")
            res = [r for r in segment(case, m, device="cpu")][-1]
            rows[pid] = case_features(case, res.labels)
            if case.labels is not None:
                expert[pid] = case_features(case, case.labels.array)
            dice[pid] = (res.metrics or {}).get("WT", {}).get("dice")
        log(f"  radiomics features: segmentation fold {k} done")

    def frame(d):
        return pd.DataFrame.from_dict(d, orient="index")[FEATURES].reindex(list(ids))
    return frame(rows), dice, frame(expert)


def fit_radiomics(X: np.ndarray, Y: np.ndarray, age: np.ndarray, os_: Optional[np.ndarray],
                  cfg: Dict[str, Any], seed: int):
    """One random forest per task (patients with that label), training medians for missing
    features, and a Cox model on age + the out-of-bag IDH logit -> ``(module, info)`` where
    ``module`` is a ``src_models.forest.RadiomicsForests`` holding everything."""
    import torch
    from sklearn.ensemble import RandomForestClassifier
    from src_models.forest import TreeEnsemble, radiomics_forests

    med = np.nanmedian(X, axis=0)
    med = np.where(np.isfinite(med), med, 0.0)
    Xi = np.where(np.isnan(X), med, X)
    forests, oob = {}, {}
    for j, t in enumerate(TASKS):
        k = Y[:, j] >= 0
        rf = RandomForestClassifier(n_estimators=cfg["n_estimators"],
                                    min_samples_leaf=cfg["min_samples_leaf"],
                                    max_features=cfg["max_features"], oob_score=True,
                                    random_state=seed, n_jobs=1)
        rf.fit(Xi[k], Y[k, j])
        forests[t] = rf
        o = np.full(len(X), np.nan)
        o[k] = rf.oob_decision_function_[:, 1]
        oob[t] = o
    from ...radiomics import FEATURES
    module = radiomics_forests(X.shape[1], {t: TreeEnsemble.shape_of(rf)
                                            for t, rf in forests.items()},
                               age_index=FEATURES.index("age"), risk_task="idh")
    with torch.no_grad():
        module.medians.copy_(torch.from_numpy(med.astype(np.float64)))
        for t, rf in forests.items():
            module.forests[t].load_sklearn(rf)
    info: Dict[str, Any] = {"oob_auc": {t: auc(Y[:, j], np.nan_to_num(oob[t], nan=0.5))
                                        for j, t in enumerate(TASKS)}}
    if os_ is not None:
        beta, mean = _fit_cox(np.stack([age, _logit(oob["idh"])], 1), os_,
                              cfg["cox_penalizer"])
        if beta is not None:
            module.set_cox(beta, mean)
            info["cox"] = {"beta": beta.tolist(), "mean": mean.tolist()}
    return module, info


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def _fit_cox(Z: np.ndarray, os_: np.ndarray, penalizer: float):
    import pandas as pd
    from lifelines import CoxPHFitter
    mean = np.nanmean(Z, axis=0)
    Zi = np.where(np.isnan(Z), mean, Z)
    ok = np.isfinite(os_).all(1) & (os_[:, 0] > 0)
    if ok.sum() < 10 or os_[ok, 1].sum() < 3:
        return None, None
    df = pd.DataFrame(Zi[ok] - mean, columns=[f"z{i}" for i in range(Z.shape[1])])
    df["T"], df["E"] = os_[ok, 0], os_[ok, 1]
    cph = CoxPHFitter(penalizer=penalizer).fit(df, "T", "E")
    return cph.params_.values.astype(np.float64), mean.astype(np.float64)


def radiomics_fold(cohort, tr_idx, te_idx, table, cfg: Dict[str, Any], seed: int
                   ) -> Dict[str, Any]:
    """Fit on the training patients' features, predict the test patients (``table`` rows are
    the cohort's patients, in order)."""
    import torch
    X = table.to_numpy(np.float64)
    Y = np.stack([p["y"] for p in cohort])
    age = np.array([p["age"] for p in cohort], np.float64)
    os_ = np.array([[p["os_days"], p["os_event"]] for p in cohort], np.float64)
    tr, te = list(tr_idx), list(te_idx)
    module, info = fit_radiomics(X[tr], Y[tr], age[tr], os_[tr], cfg, seed)
    with torch.no_grad():
        out = module(torch.from_numpy(X[te]))
    probs = {t: out["probs"][t][0, :, 1].numpy() for t in TASKS}
    risk = out["risk"].numpy() if "risk" in out else None
    return {"probs": probs, "risk": risk, "info": info}
