"""Metrics with confidence intervals: classification (AUC with bootstrap CI, accuracy, F1,
precision, recall, confusion matrix), segmentation (Dice, HD95 through MONAI) and the
cross-validation summary (mean, SD and 95% interval over folds).

Intervals of bounded metrics stay within their range: AUC, Dice, the C-index, accuracy, F1,
precision, recall... lie in [0, 1], SSIM in [-1, 1] (:func:`metric_bounds` reads the range
from the metric's name). Their interval over folds is the t-interval of the mean clipped to
the range: a plain t-interval over 3 folds gave AUCs of [-0.77, 2.10]. Clipping keeps every
interval that was within the range as it was (those of the model cards and the README); a
t-interval on the logit scale (delta method), also tried, stays within the range too but on 3-4
folds it also narrowed intervals far from the bounds (Dice WT of seg_brats_segresnet:
[0.05, 0.98] -> [0.14, 0.87]), a precision the folds do not give. Unbounded metrics (PSNR,
HD95, volumes, differences between two models) keep the plain t-interval.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

Bounds = Tuple[float, float]
#: name tokens of metrics in [0, 1] and in [-1, 1]
_UNIT = {"auc", "auroc", "dice", "accuracy", "acc", "f1", "precision", "recall",
         "sensitivity", "specificity", "iou", "jaccard", "ppv", "npv", "brier", "cindex",
         "concordance", "localisation", "localization"}
_SIGNED = {"ssim", "kappa", "mcc"}
#: name tokens of values that are not the metric itself (differences, spreads, counts, losses)
_NOT_A_METRIC = {"minus", "delta", "diff", "difference", "gain", "change", "improvement",
                 "sd", "std", "se", "var", "n", "count", "loss"}


def metric_bounds(name: str) -> Optional[Bounds]:
    """The range of a metric from its name (``auc_grade``, ``dice_WT``, ``c_index``,
    ``ssim_brain``, ``macro_f1``...): ``(0, 1)``, ``(-1, 1)`` for SSIM, kappa and MCC, None for
    unbounded metrics (PSNR, HD95, volumes) and for differences between metrics
    (``new_minus_previous_macro_f1``). A bare ``score`` has no range of its own (see
    :func:`cv_summary`)."""
    low = str(name).lower()
    tokens = set(t for t in re.split(r"[^a-z0-9]+", low) if t)
    if tokens & _NOT_A_METRIC:
        return None
    if "c_index" in low:
        tokens.add("cindex")
    if tokens & _SIGNED:
        return (-1.0, 1.0)
    if tokens & _UNIT:
        return (0.0, 1.0)
    return None


def clip_interval(ci, bounds: Optional[Bounds]) -> Any:
    """``ci`` ([lo, hi], either may be None) clipped to ``bounds``; unchanged without bounds
    or when it is not a pair of numbers (a display helper for intervals stored before they
    respected the range, e.g. in shipped model cards)."""
    if bounds is None or not isinstance(ci, (list, tuple)) or len(ci) < 2:
        return ci
    out = []
    for v in list(ci)[:2]:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            v = float(min(max(v, bounds[0]), bounds[1]))
        out.append(v)
    return out


def mean_ci(values: Sequence[float], level: float = 0.95, *,
            bounds: Optional[Bounds] = None) -> Dict[str, Any]:
    """Mean, SD and a t-interval of the mean over ``values`` (NaNs dropped). With ``bounds``
    (the metric's range, :func:`metric_bounds`) the interval is clipped to the range (see the
    module docstring); values outside the range mean the bounds were wrong for them, and the
    interval is then left unclipped."""
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
    ci = [m - h, m + h]
    if bounds is not None and bool(np.all((v >= bounds[0] - 1e-9) & (v <= bounds[1] + 1e-9))):
        ci = clip_interval(ci, bounds)
    return {"mean": m, "sd": sd, "ci95": ci, "n": n}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def composite_bounds(folds: Sequence[Mapping[str, Any]], key: str) -> Optional[Bounds]:
    """The range of a task-defined summary metric (``score``: the mean Dice of a segmentation
    run, the mean AUC / C-index of a prediction run, the macro-F1 of triage, but the PSNR of
    synthesis): in every fold it must lie between that fold's bounded metrics (a mean of them,
    or one of them); then its range is theirs, else None."""
    ranges: List[Bounds] = []
    seen = False
    for f in folds:
        v = f.get(key)
        if not _finite(v):
            continue
        sib = [(float(x), metric_bounds(k)) for k, x in f.items()
               if k != key and _finite(x) and metric_bounds(k) is not None]
        if not sib:
            return None
        vals = [x for x, _ in sib]
        if not (min(vals) - 1e-9 <= float(v) <= max(vals) + 1e-9):
            return None
        ranges.extend(b for _, b in sib)
        seen = True
    if not seen:
        return None
    return (min(b[0] for b in ranges), max(b[1] for b in ranges))


def summary_bounds(summary: Mapping[str, Any], key: str) -> Optional[Bounds]:
    """The range of ``summary[key]`` in a CV summary (:func:`cv_summary`'s output, a card's
    ``metrics.cv``): by name, else (a ``score``) from the folds' other metrics."""
    b = metric_bounds(key)
    if b is not None or not str(key).lower().endswith("score"):
        return b
    per = {k: v.get("per_fold") for k, v in summary.items()
           if isinstance(v, Mapping) and isinstance(v.get("per_fold"), list)}
    n = len(per.get(key) or [])
    folds = [{k: p[i] for k, p in per.items() if len(p) == n} for i in range(n)]
    return composite_bounds(folds, key)


def cv_summary(fold_metrics: List[Dict[str, float]]) -> Dict[str, Dict[str, Any]]:
    """``{metric: {mean, sd, ci95, n, per_fold}}`` over the folds' scalar metrics (a
    non-finite fold value is None in ``per_fold`` and left out of the mean). The interval of
    a bounded metric (:func:`metric_bounds`; a ``score`` that is a mean of bounded metrics,
    :func:`composite_bounds`) stays within its range."""
    keys: List[str] = []
    for fm in fold_metrics:
        for k in fm:
            if k not in keys:
                keys.append(k)
    out = {}
    for k in keys:
        vals = [fm.get(k) for fm in fold_metrics]
        vals = [float(x) if isinstance(x, (int, float)) and math.isfinite(float(x)) else None
                for x in vals]
        bounds = metric_bounds(k)
        if bounds is None and k.lower().endswith("score"):
            bounds = composite_bounds(fold_metrics, k)
        s = mean_ci([x for x in vals if x is not None], bounds=bounds)
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


#: fewest cases of each class for a bootstrap interval of an AUC: with one positive (or one
#: negative) every resample holds the same case, and the interval ([1.0, 1.0]) says nothing
MIN_CLASS_FOR_CI = 2


def auc_with_ci(y_true, y_score, n_boot: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """AUC with a stratified bootstrap 95% CI; the CI is ``[None, None]`` with a ``ci_note``
    when a class has fewer than :data:`MIN_CLASS_FOR_CI` cases."""
    auc = roc_auc(y_true, y_score)
    y = np.asarray(y_true).astype(int).ravel()
    n_pos = int(np.sum(y == 1))
    n_neg = int(len(y) - n_pos)
    note = None
    if auc is None:
        ci = [None, None]
    elif min(n_pos, n_neg) < MIN_CLASS_FOR_CI:
        ci = [None, None]
        note = (f"no confidence interval: {n_pos} positive and {n_neg} negative case(s); "
                f"an interval needs at least {MIN_CLASS_FOR_CI} of each")
    else:
        ci = bootstrap_ci(roc_auc, y_true, y_score, n_boot=n_boot, seed=seed, stratify=y_true)
    out = {"auc": auc, "ci95": ci, "n": int(len(y)), "n_pos": n_pos, "n_neg": n_neg}
    if note:
        out["ci_note"] = note
    return out


def classification_metrics(y_true: Sequence[int], y_prob: Any, classes: Optional[List[str]] = None,
                           threshold: float = 0.5) -> Dict[str, Any]:
    """Accuracy, balanced accuracy, F1, precision, recall (macro for >2 classes), AUC (+CI),
    confusion matrix. ``y_prob``: (N,) P(class 1) for binary, or (N, C).

    Undefined values are None (shown "n/a"), not 0: the recall (and F1) of a class absent
    from the truth, the precision of a class never predicted; a macro average is over the
    classes where the value is defined (``recall_per_class`` lists them all). sklearn's
    warnings about them are not passed on (only this thread's are dropped: :mod:`._warn`)."""
    from ._warn import ignore_warnings
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(y_prob, dtype=float)
    binary = p.ndim == 1
    if binary:
        pred = (p >= threshold).astype(int)
        n_classes = 2
    else:
        pred = p.argmax(1)
        n_classes = p.shape[1]
    labels = list(range(n_classes))
    cm = confusion_matrix(y, pred, labels=labels)
    tp = np.diag(cm).astype(float)
    in_truth = cm.sum(1).astype(float)
    in_pred = cm.sum(0).astype(float)
    rec = [float(tp[i] / in_truth[i]) if in_truth[i] else None for i in labels]
    prec = [float(tp[i] / in_pred[i]) if in_pred[i] else None for i in labels]
    f1 = []
    for i in labels:
        if rec[i] is None:
            f1.append(None)
        elif prec[i] is None or (rec[i] + prec[i]) == 0:
            f1.append(0.0)              # a class in the truth never (or never rightly) predicted
        else:
            f1.append(2 * rec[i] * prec[i] / (rec[i] + prec[i]))

    def macro(v):
        v = [x for x in v if x is not None]
        return float(np.mean(v)) if v else None
    names = classes or [str(i) for i in labels]
    with ignore_warnings():              # this thread's only (see _warn)
        bal = float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else None
    out: Dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": bal,
        "f1": f1[1] if binary else macro(f1),
        "precision": prec[1] if binary else macro(prec),
        "recall": rec[1] if binary else macro(rec),
        "recall_per_class": {str(names[i]) if i < len(names) else str(i): rec[i]
                             for i in labels},
        "confusion": cm.tolist(),
        "classes": names,
    }
    if binary:
        a = auc_with_ci(y, p)
        out["auc"], out["auc_ci95"] = a["auc"], a["ci95"]
        if a.get("ci_note"):
            out["auc_ci_note"] = a["ci_note"]
    else:
        from sklearn.metrics import roc_auc_score
        try:
            with ignore_warnings():
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
