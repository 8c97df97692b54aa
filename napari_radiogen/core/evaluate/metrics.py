"""Metrics with confidence intervals: classification (AUC with bootstrap CI, accuracy, F1,
precision, recall, confusion matrix), segmentation (Dice, HD95 through MONAI) and the
cross-validation summary (mean, SD and 95% t-interval over folds)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def mean_ci(values: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
    """Mean, SD and a t-interval of the mean over ``values`` (NaNs dropped)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "sd": None, "ci95": [None, None], "n": 0}
    m = float(v.mean())
    if n == 1:
        return {"mean": m, "sd": None, "ci95": [None, None], "n": 1}
    sd = float(v.std(ddof=1))
    from scipy import stats
    h = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"mean": m, "sd": sd, "ci95": [m - h, m + h], "n": n}


def cv_summary(fold_metrics: List[Dict[str, float]]) -> Dict[str, Dict[str, Any]]:
    """``{metric: {mean, sd, ci95, n, per_fold}}`` over the folds' scalar metrics."""
    keys: List[str] = []
    for fm in fold_metrics:
        for k in fm:
            if k not in keys:
                keys.append(k)
    out = {}
    for k in keys:
        vals = [fm.get(k) for fm in fold_metrics]
        vals = [float(x) if isinstance(x, (int, float)) else None for x in vals]
        s = mean_ci([x for x in vals if x is not None])
        s["per_fold"] = vals
        out[k] = s
    return out


def roc_auc(y_true: Sequence[int], y_score: Sequence[float]) -> Optional[float]:
    """Binary ROC AUC (Mann-Whitney U with mid-ranks for ties; equals sklearn's
    ``roc_auc_score``); None when only one class is present."""
    from scipy.stats import rankdata
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    pos = y == 1
    n1 = int(pos.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def bootstrap_ci(fn, *arrays, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 stratify: Optional[Sequence] = None) -> List[Optional[float]]:
    """Percentile bootstrap CI of ``fn(*arrays)`` resampling rows (stratified by ``stratify``)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n < 2:
        return [None, None]
    if stratify is not None:
        s = np.asarray(stratify)
        groups = [np.flatnonzero(s == u) for u in np.unique(s)]
    else:
        groups = [np.arange(n)]
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        v = fn(*[a[idx] for a in arrays])
        if v is not None and np.isfinite(v):
            vals.append(v)
    if len(vals) < 10:
        return [None, None]
    a = (1 - level) / 2
    return [float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))]


def auc_with_ci(y_true, y_score, n_boot: int = 1000, seed: int = 0) -> Dict[str, Any]:
    auc = roc_auc(y_true, y_score)
    ci = bootstrap_ci(roc_auc, y_true, y_score, n_boot=n_boot, seed=seed, stratify=y_true) \
        if auc is not None else [None, None]
    return {"auc": auc, "ci95": ci, "n": int(len(y_true)),
            "n_pos": int(np.sum(np.asarray(y_true) == 1))}


def classification_metrics(y_true: Sequence[int], y_prob: Any, classes: Optional[List[str]] = None,
                           threshold: float = 0.5) -> Dict[str, Any]:
    """Accuracy, balanced accuracy, F1, precision, recall (macro for >2 classes), AUC (+CI),
    confusion matrix. ``y_prob``: (N,) P(class 1) for binary, or (N, C)."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                                 f1_score, precision_score, recall_score)
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(y_prob, dtype=float)
    binary = p.ndim == 1
    if binary:
        pred = (p >= threshold).astype(int)
        n_classes = 2
    else:
        pred = p.argmax(1)
        n_classes = p.shape[1]
    avg = "binary" if binary else "macro"
    labels = list(range(n_classes))
    out: Dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1
        else None,
        "f1": float(f1_score(y, pred, average=avg, labels=None if binary else labels,
                             zero_division=0)),
        "precision": float(precision_score(y, pred, average=avg,
                                           labels=None if binary else labels, zero_division=0)),
        "recall": float(recall_score(y, pred, average=avg, labels=None if binary else labels,
                                     zero_division=0)),
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
        "classes": classes or [str(i) for i in labels],
    }
    if binary:
        out.update({"auc": None, "auc_ci95": [None, None]})
        a = auc_with_ci(y, p)
        out["auc"], out["auc_ci95"] = a["auc"], a["ci95"]
    else:
        from sklearn.metrics import roc_auc_score
        try:
            out["auc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=labels))
        except ValueError:
            out["auc"] = None
    return out


def dice_hd95(pred: np.ndarray, truth: np.ndarray, spacing=None, regions=None
              ) -> Dict[str, Dict[str, Optional[float]]]:
    """Dice and 95th-percentile Hausdorff distance (MONAI) per region of integer label maps
    ``(z, y, x)``. ``regions``: ``{"WT": (1, 2, 4), ...}`` (default: the BraTS regions)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance
    if regions is None:
        from ..case import REGIONS
        regions = REGIONS
    out: Dict[str, Dict[str, Optional[float]]] = {"dice": {}, "hd95": {}}
    for name, labs in regions.items():
        p = np.isin(pred, labs)
        t = np.isin(truth, labs)
        if not t.any() and not p.any():
            out["dice"][name] = 1.0
            out["hd95"][name] = 0.0
            continue
        pt = torch.from_numpy(p[None, None].astype(np.float32))
        tt = torch.from_numpy(t[None, None].astype(np.float32))
        out["dice"][name] = float(compute_dice(pt, tt, include_background=True).item())
        if p.any() and t.any():
            sp = None if spacing is None else [float(s) for s in spacing]
            hd = compute_hausdorff_distance(pt, tt, include_background=True, percentile=95,
                                            spacing=sp)
            out["hd95"][name] = float(hd.item())
        else:
            out["hd95"][name] = None
    return out
