"""Survival statistics (lifelines does the classical parts).

* Kaplan-Meier curves (lifelines ``KaplanMeierFitter``), log-rank test between groups
  (``multivariate_logrank_test``), Cox proportional hazards HR with 95% CI (``CoxPHFitter``),
  Harrell's C-index (``lifelines.utils.concordance_index``).
* Time-dependent (cumulative/dynamic) AUC and the IPCW Brier score: scikit-survival's
  ``sksurv.metrics.cumulative_dynamic_auc`` (Uno et al. 2007, Hung & Chiang 2010) and
  ``sksurv.metrics.brier_score`` / ``integrated_brier_score`` (Graf et al. 1999); the censoring
  distribution is the Kaplan-Meier estimate of the training data's censoring times.
* Survival curves for the Brier score: a one-covariate Cox model on the risk score (lifelines
  ``CoxPHFitter.predict_survival_function``, Breslow baseline hazard).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError


def _arrays(time, event):
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(float)
    if t.shape != e.shape:
        raise ConfigError("time and event columns have different lengths")
    ok = np.isfinite(t) & np.isfinite(e)
    return t, e, ok


def c_index(time, event, risk) -> Optional[float]:
    """Harrell's C: the probability that of two comparable patients the one with the higher
    risk dies first (0.5 = chance)."""
    from lifelines.utils import concordance_index
    t, e, ok = _arrays(time, event)
    r = np.asarray(risk, dtype=float)
    ok &= np.isfinite(r)
    if ok.sum() < 2 or e[ok].sum() == 0:
        return None
    return float(concordance_index(t[ok], -r[ok], e[ok]))


def logrank_p(time, event, groups) -> Optional[float]:
    from lifelines.statistics import multivariate_logrank_test
    t, e, ok = _arrays(time, event)
    g = np.asarray(groups, dtype=object)
    ok &= np.array([x is not None and x == x for x in g])
    if len(set(g[ok])) < 2:
        return None
    return float(multivariate_logrank_test(t[ok], g[ok], e[ok]).p_value)


def cox_hr(time, event, covariates: Dict[str, Sequence[float]], penalizer: float = 0.0
           ) -> Dict[str, Dict[str, float]]:
    """Cox model on numeric covariates: ``{name: {hr, ci95: [lo, hi], p}}``."""
    import pandas as pd
    from lifelines import CoxPHFitter
    t, e, ok = _arrays(time, event)
    df = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in covariates.items()})
    ok &= np.isfinite(df.to_numpy()).all(1)
    df = df[ok].copy()
    df["_t"], df["_e"] = t[ok], e[ok]
    if len(df) < 3 or df["_e"].sum() == 0:
        return {}
    df = df.loc[:, [c for c in df.columns if c.startswith("_") or df[c].std() > 0]]
    if len(df.columns) <= 2:
        return {}
    cph = CoxPHFitter(penalizer=penalizer)
    cph.fit(df, duration_col="_t", event_col="_e")
    s = cph.summary
    return {k: {"hr": float(s.loc[k, "exp(coef)"]),
                "ci95": [float(s.loc[k, "exp(coef) lower 95%"]),
                         float(s.loc[k, "exp(coef) upper 95%"])],
                "p": float(s.loc[k, "p"])} for k in s.index}


def _surv_struct(t, e):
    from sksurv.util import Surv
    return Surv.from_arrays(event=np.asarray(e) > 0, time=np.asarray(t, float))


def _usable_times(t_train, t_test, times) -> np.ndarray:
    """sksurv needs each time inside the test follow-up and before the training data's last
    time (where the censoring KM estimate is still positive)."""
    times = np.atleast_1d(np.asarray(times, float))
    return times[(times >= np.min(t_test)) & (times < np.max(t_test))
                 & (times < np.max(t_train))]


def cumulative_dynamic_auc(t_train, e_train, t_test, e_test, risk, times
                           ) -> Dict[str, Any]:
    """IPCW cumulative/dynamic AUC(t) at each usable t in ``times`` (tied risks count 1/2) and
    sksurv's ``mean_auc`` (weighted by the Kaplan-Meier event density)."""
    from sksurv.metrics import cumulative_dynamic_auc as cd_auc
    t_train, e_train, ok = _arrays(t_train, e_train)
    t_train, e_train = t_train[ok], e_train[ok]
    t, e, ok = _arrays(t_test, e_test)
    r = np.asarray(risk, dtype=float)
    ok &= np.isfinite(r)
    t, e, r = t[ok], e[ok], r[ok]
    times = _usable_times(t_train, t, times)
    if not len(times) or not e.any():
        return {"times": [], "auc": [], "mean_auc": None}
    auc, mean_auc = cd_auc(_surv_struct(t_train, e_train), _surv_struct(t, e), r, times)
    return {"times": times.tolist(), "auc": [float(a) for a in np.atleast_1d(auc)],
            "mean_auc": float(mean_auc)}


def cox_survival(t_train, e_train, risk_train, risk, times) -> np.ndarray:
    """S(t | risk) at ``times`` from a one-covariate Cox model of the risk score fitted on the
    training patients (lifelines, Breslow baseline); shape (n, len(times))."""
    import pandas as pd
    from lifelines import CoxPHFitter
    rt = np.asarray(risk_train, float)
    mu, sd = float(np.mean(rt)), float(np.std(rt)) or 1.0
    df = pd.DataFrame({"T": np.asarray(t_train, float), "E": np.asarray(e_train, float),
                       "r": (rt - mu) / sd})
    cph = CoxPHFitter(penalizer=1e-4).fit(df, "T", "E")
    x = pd.DataFrame({"r": (np.asarray(risk, float) - mu) / sd})
    return cph.predict_survival_function(x, times=np.atleast_1d(times)).to_numpy().T


def brier_score(t_train, e_train, t_test, e_test, surv_prob, times) -> Dict[str, Any]:
    """IPCW Brier score at each t (Graf et al. 1999; sksurv); ``surv_prob``: (n, len(times))
    predicted S(t|x). Also the integrated Brier score when len(times) > 1."""
    from sksurv.metrics import brier_score as bs, integrated_brier_score
    t_train, e_train, _ = _arrays(t_train, e_train)
    t, e, _ = _arrays(t_test, e_test)
    S = np.asarray(surv_prob, dtype=float)
    times = np.atleast_1d(np.asarray(times, float))
    keep = np.isin(times, _usable_times(t_train, t, times))
    times, S = times[keep], S[:, keep]
    if not len(times):
        return {"times": [], "brier": [], "integrated": None}
    y_tr, y_te = _surv_struct(t_train, e_train), _surv_struct(t, e)
    _, scores = bs(y_tr, y_te, S, times)
    ibs = float(integrated_brier_score(y_tr, y_te, S, times)) if len(times) > 1 else None
    return {"times": times.tolist(), "brier": [float(x) for x in scores], "integrated": ibs}


def risk_summary(time, event, risk, *, t_train=None, e_train=None, risk_train=None,
                 n_times: int = 4) -> Dict[str, Any]:
    """C-index, high/low (median split) log-rank p and HR, HR per SD of risk, time-dependent
    AUC and Brier at event-time quartiles (training data default to the same patients: then
    the AUC/Brier are apparent, not held-out, and flagged so)."""
    t, e, ok = _arrays(time, event)
    r = np.asarray(risk, float)
    ok &= np.isfinite(r)
    t, e, r = t[ok], e[ok], r[ok]
    high = (r > np.median(r)).astype(float)
    out: Dict[str, Any] = {"n": int(len(t)), "events": int(e.sum()), "c_index": c_index(t, e, r),
                           "logrank_p": logrank_p(t, e, np.where(high > 0, "high", "low"))}
    try:
        hr = cox_hr(t, e, {"high_vs_low": high})
        if hr:
            out["hr_high_vs_low"] = hr["high_vs_low"]["hr"]
            out["hr_high_vs_low_ci95"] = hr["high_vs_low"]["ci95"]
    except Exception:  # convergence problems on tiny data
        pass
    same = t_train is None
    tt, et = (t, e) if same else (np.asarray(t_train, float), np.asarray(e_train, float))
    rt = r if same else np.asarray(risk_train, float)
    ev_t = t[e > 0]
    if len(ev_t) >= 2 and (t > ev_t.min()).any():
        times = np.unique(np.quantile(ev_t, np.linspace(0.25, 0.75, n_times - 1)))
        times = times[times < t.max()]
        if len(times):
            out["td_auc"] = cumulative_dynamic_auc(tt, et, t, e, r, times)
            try:
                S = cox_survival(tt, et, rt, r, times)
                out["brier"] = brier_score(tt, et, t, e, S, times)
            except Exception:  # convergence problems on tiny data
                pass
            out["td_metrics_apparent"] = bool(same)
    return out


def plot_km(ax, time, event, groups, *, show_ci: bool = True) -> None:
    """Kaplan-Meier curves per group on a matplotlib axes."""
    from lifelines import KaplanMeierFitter
    t, e, ok = _arrays(time, event)
    g = np.asarray(groups, dtype=object)
    for name in sorted({x for x in g[ok]}, key=str):
        m = ok & (g == name)
        km = KaplanMeierFitter(label=f"{name} (n={int(m.sum())})").fit(t[m], e[m])
        km.plot_survival_function(ax=ax, ci_show=show_ci)
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)


@dataclass
class SurvivalAnalysis:
    """What the survival widget / CLI show for one table."""
    n: int
    events: int
    groups: Dict[str, int] = field(default_factory=dict)
    logrank_p: Optional[float] = None
    hr: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    c_index: Optional[float] = None
    median_survival: Dict[str, Optional[float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    time: Any = None
    event: Any = None
    group: Any = None


def analyze_table(df, time_col: str, event_col: str, group_col: Optional[str] = None, *,
                  n_quantiles: int = 2) -> SurvivalAnalysis:
    """KM groups, log-rank p, Cox HR and C-index from a table's columns.

    ``group_col`` may be categorical (each value a group; HRs against the first group in
    sorted order) or numeric with more than 5 values (split at the median into low/high; the
    C-index and an HR per SD use the numeric values)."""
    import pandas as pd
    from lifelines import KaplanMeierFitter
    for c in (time_col, event_col) + ((group_col,) if group_col else ()):
        if c not in df.columns:
            raise ConfigError(f"column {c!r} not in the table")
    t = pd.to_numeric(df[time_col], errors="coerce")
    ev = df[event_col]
    if ev.dtype == object:
        m = {"1": 1, "0": 0, "dead": 1, "deceased": 1, "alive": 0, "living": 0, "true": 1,
             "false": 0, "yes": 1, "no": 0}
        ev = ev.astype(str).str.strip().str.lower().map(m)
    e = pd.to_numeric(ev, errors="coerce")
    ok = t.notna() & e.notna() & (t >= 0)
    notes = []
    if (~ok).sum():
        notes.append(f"{int((~ok).sum())} row(s) without a usable time/event were left out")
    if ok.sum() < 3:
        raise ConfigError(f"fewer than 3 rows have a usable {time_col!r} and {event_col!r}")
    if not set(e[ok].unique()) <= {0, 1}:
        raise ConfigError(f"the event column {event_col!r} must be 0/1 (or alive/dead)")
    numeric = None
    if group_col:
        gv = df[group_col]
        gnum = pd.to_numeric(gv, errors="coerce")
        if gnum.notna().sum() >= 0.9 * gv.notna().sum() and gnum.nunique() > 5:
            numeric = gnum
            ok &= gnum.notna()
            med = gnum[ok].median()
            groups = np.where(gnum > med, f"{group_col} > {med:g}", f"{group_col} <= {med:g}")
            notes.append(f"numeric {group_col!r} split at its median ({med:g})")
        else:
            ok &= gv.notna() & (gv.astype(str).str.strip() != "")
            groups = gv.astype(str).to_numpy()
    else:
        groups = np.array(["all"] * len(df), dtype=object)
    t, e, groups = t[ok].to_numpy(float), e[ok].to_numpy(float), np.asarray(groups)[ok.to_numpy()]
    res = SurvivalAnalysis(n=int(len(t)), events=int(e.sum()), notes=notes, time=t, event=e,
                           group=groups)
    names = sorted(set(groups), key=str)
    res.groups = {str(g): int((groups == g).sum()) for g in names}
    for g in names:
        m = groups == g
        km = KaplanMeierFitter().fit(t[m], e[m])
        ms = km.median_survival_time_
        res.median_survival[str(g)] = None if not np.isfinite(ms) else float(ms)
    if len(names) >= 2:
        res.logrank_p = logrank_p(t, e, groups)
        if numeric is not None:
            x = numeric[ok].to_numpy(float)
            res.c_index = c_index(t, e, x)
            sd = x.std() or 1.0
            try:
                res.hr = {f"{group_col} (per SD)": cox_hr(t, e, {"x": (x - x.mean()) / sd})["x"]}
            except Exception as ex:
                notes.append(f"Cox model failed: {ex}")
        else:
            ref = names[0]
            cov = {str(g): (groups == g).astype(float) for g in names[1:]}
            try:
                hr = cox_hr(t, e, cov, penalizer=0.0)
                res.hr = {f"{g} vs {ref}": v for g, v in hr.items()}
            except Exception as ex:
                notes.append(f"Cox model failed: {ex}")
            if len(names) == 2:
                res.c_index = c_index(t, e, (groups == names[1]).astype(float))
    return res
