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
* Cohort tables (the Survival widget): :func:`read_table`, :func:`guess_columns` (which
  columns hold the time, the event, a grouping), :func:`analyze_table` (the statistics, the
  Kaplan-Meier tables and notes on what is unreliable), :func:`draw_km` (matplotlib, from
  the fitted tables) and :func:`write_survival_outputs` (figure, strict JSON, per-patient CSV;
  de-identified unless asked: patients by row number, no ids).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
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
    """The log-rank p between the groups; None with fewer than two groups or no events."""
    from lifelines.statistics import multivariate_logrank_test
    t, e, ok = _arrays(time, event)
    g = np.asarray(groups, dtype=object)
    ok &= np.array([x is not None and x == x for x in g])
    if len(set(g[ok])) < 2 or e[ok].sum() == 0:
        return None                      # no events: nothing to test (lifelines says p = 1)
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


# -- cohort tables (the Survival widget) ----------------------------------------------------------

#: at most this many groups are compared (more is an identifier or a measurement, not a grouping)
MAX_GROUPS = 10
#: below these counts the statistics carry a note that they are unreliable
MIN_PATIENTS = 10
MIN_EVENTS = 5

#: text values of an event column (anything else is not an event column)
_EVENT_TEXT = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "dead": 1, "deceased": 1, "died": 1,
               "alive": 0, "living": 0, "true": 1, "false": 0, "yes": 1, "no": 0}
#: tokens of column names that are model outputs or probabilities, never the observed outcome
_NOT_OBSERVED = {"risk", "pred", "predicted", "prediction", "prob", "probability", "score",
                 "logit", "hazard"}
_TIME_UNITS = {"days", "day", "months", "month", "years", "year", "weeks", "time", "mo", "d"}
_SURVIVAL_WORDS = {"os", "survival"}
_DEATH_WORDS = {"dead", "death", "deceased", "died", "vital"}


def read_table(path) -> Any:
    """A cohort table (CSV, or TSV by its ``.tsv``/``.tab`` suffix) as a DataFrame; a
    :class:`ConfigError` that says what is wrong when it is no such table (missing, empty, a
    binary file, one column, no rows)."""
    import pandas as pd
    from pathlib import Path
    if not str(path).strip():
        raise ConfigError("no table given")
    p = Path(path)
    name = p.name or str(path)
    if not p.exists():
        raise ConfigError(f"{name}: no such file")
    if p.is_dir():
        raise ConfigError(f"{name} is a folder, not a table")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError as ex:
        raise ConfigError(f"cannot read {name}: {ex.strerror or ex}") from None
    if not head.strip():
        raise ConfigError(f"{name} is empty")
    if b"\x00" in head and not name.lower().endswith((".gz", ".bz2", ".zip", ".xz")):
        raise ConfigError(f"{name} is not a text table (CSV or TSV)")
    sep = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    try:
        df = pd.read_csv(p, sep=sep)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{name} is empty") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not a text table (CSV or TSV)") from None
    except pd.errors.ParserError:
        raise ConfigError(f"{name} is not a well-formed {'TSV' if sep == chr(9) else 'CSV'} "
                          "table (rows with different numbers of fields)") from None
    except OSError as ex:
        raise ConfigError(f"cannot read {name}: {ex.strerror or ex}") from None
    if len(df.columns) < 2:
        raise ConfigError(f"{name} has a single column: a cohort table needs at least a time "
                          "and an event column (is it separated by something else than "
                          f"{'tabs' if sep == chr(9) else 'commas'}?)")
    if not len(df):
        raise ConfigError(f"{name} has a header but no rows")
    df.columns = [str(c) for c in df.columns]
    return df


def _tokens(name: str) -> List[str]:
    """Words of a column name: ``OncosignCluster`` -> oncosign, cluster; ``1-dead 0-alive`` ->
    1, dead, 0, alive; ``Survival_days`` -> survival, days."""
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name))
    s = re.sub(r"([A-Za-z])(\d)", r"\1 \2", s)
    s = re.sub(r"(\d)([A-Za-z])", r"\1 \2", s)
    return [t for t in re.split(r"[^0-9a-z]+", s.lower()) if t]


def _observed(name: str, toks: List[str]) -> bool:
    """False for a model output (``os_risk``, ``p_idh_mutant``, ``predicted_os``)."""
    return not (set(toks) & _NOT_OBSERVED or str(name).lower().startswith("p_"))


def event_values(series) -> Any:
    """An event column as 0/1 floats (NaN where unusable): numbers, or text such as
    alive/dead, yes/no, true/false."""
    import pandas as pd
    s = series
    if s.dtype == object or str(s.dtype) in ("string", "category", "bool"):
        s = s.astype(str).str.strip().str.lower().map(_EVENT_TEXT)
    return pd.to_numeric(s, errors="coerce")


def _is_event_column(series) -> bool:
    e = event_values(series)
    ok = e.dropna()
    # every given value must read as 0/1 (a 0/1 column with stray text is no event column)
    return bool(len(ok)) and set(ok.unique()) <= {0, 1} and len(ok) == series.notna().sum()


def _is_time_column(series) -> bool:
    import pandas as pd
    t = pd.to_numeric(series, errors="coerce")
    given = series.notna().sum()
    binary = set(t.dropna().unique()) <= {0, 1} and given > 2      # a flag, not a time
    return bool(given) and t.notna().sum() >= 0.8 * given and (t.dropna() >= 0).all() \
        and not binary


def _n_levels(series) -> int:
    v = series.dropna().astype(str).str.strip()
    return int(v[v != ""].nunique())


def _groupable(series) -> bool:
    import pandas as pd
    num = pd.to_numeric(series, errors="coerce")
    if num.notna().sum() >= 0.9 * series.notna().sum() and num.nunique() > 5:
        return True                      # numeric: split at the median
    return 2 <= _n_levels(series) <= MAX_GROUPS


def _time_rank(name: str, toks: List[str]) -> Optional[int]:
    t = set(toks)
    surv = bool(t & _SURVIVAL_WORDS)
    if surv and t & _TIME_UNITS:
        return 0                         # os_days, Survival_days, OS_months
    if surv and len(toks) <= 2:
        return 1                         # OS, overall_survival
    if t & {"time", "duration", "followup", "days", "months"} and not t & {"age", "event"}:
        return 2                         # time, days_to_death, pfi_days
    return None


def _event_rank(name: str, toks: List[str]) -> Optional[int]:
    t = set(toks)
    if "event" in t and t & (_SURVIVAL_WORDS | _DEATH_WORDS):
        return 0                         # os_event
    if t & _DEATH_WORDS:
        return 1                         # 1-dead 0-alive, death01, vital_status
    if "event" in t or "events" in t:
        return 2                         # event, pfi_event
    if "status" in t:
        return 3                         # status (but not MGMT status: not a 0/1 column)
    return None


#: tokens of column names that hold an uncertainty (``sd_idh`` of a ``radiogen predict``
#: summary, a spread between ensemble members): never a grouping
_UNCERTAINTY = {"sd", "std", "stdev", "stddev", "se", "sem", "var", "variance", "uncertainty",
                "entropy", "spread", "disagreement", "between", "members"}


def _group_rank(name: str, toks: List[str]) -> Optional[int]:
    t = set(toks)
    if str(name).lower().startswith("p_") or t & {"prob", "probability", "logit"}:
        return None                      # a probability is no grouping (predicted_idh is)
    if t & _UNCERTAINTY:
        return None                      # an uncertainty (sd_idh) is no grouping either
    if "group" in t or "arm" in t:
        return 0                         # risk_group, group
    if "idh" in t:
        return 1                         # idh, IDH, predicted_idh
    if t & {"predicted", "pred", "subtype", "cluster"}:
        return 2
    return None


def _best(df, rank, accept, *, exclude=(), observed=True, prefer_prefix=None):
    cands = []
    for i, c in enumerate(df.columns):
        if c in exclude:
            continue
        toks = _tokens(c)
        if not toks or (observed and not _observed(c, toks)):
            continue
        r = rank(c, toks)
        if r is None or not accept(df[c]):
            continue
        same = 0 if prefer_prefix and toks[0] == prefer_prefix else 1
        cands.append((r, same, len(toks), i, c))
    return min(cands)[-1] if cands else None


@dataclass
class ColumnGuess:
    """The columns a cohort table most likely uses (None: nothing fits) and what to tell."""
    time: Optional[str] = None
    event: Optional[str] = None
    group: Optional[str] = None
    id: Optional[str] = None
    has_event_column: bool = True        # some column holds 0/1 (or alive/dead) values
    message: str = ""


def guess_columns(df) -> ColumnGuess:
    """Guess the survival time, event, grouping and patient-id columns of a table by the words
    of the column names (``os_days``, ``Survival_days``, ``OS``; ``os_event``,
    ``1-dead 0-alive``, ``death01``...) and by their values (a time is numeric and >= 0, an
    event 0/1 or alive/dead, a grouping 2 to :data:`MAX_GROUPS` values or numeric; model
    outputs such as ``os_risk`` or ``p_idh_mutant`` are never the outcome). A column that
    nothing fits stays None, and ``message`` says what the user has to choose."""
    g = ColumnGuess()
    g.time = _best(df, _time_rank, _is_time_column)
    pre = _tokens(g.time)[0] if g.time else None
    g.event = _best(df, _event_rank, _is_event_column, exclude=(g.time,), prefer_prefix=pre)
    g.group = _best(df, _group_rank, _groupable, exclude=(g.time, g.event), observed=False)
    ids = [c for c in df.columns if {"id", "patient", "subject", "case"} & set(_tokens(c))
           and df[c].notna().all() and df[c].is_unique]
    g.id = min(ids, key=lambda c: ("id" not in _tokens(c), len(_tokens(c)),
                                   list(df.columns).index(c))) if ids else None
    g.has_event_column = any(_is_event_column(df[c]) for c in df.columns if c != g.time)
    missing = [w for w, c in (("time", g.time), ("event", g.event)) if c is None]
    if not g.has_event_column:
        g.message = ("this table has no event column (0/1 or alive/dead values): Kaplan-Meier "
                     "needs one" + ("" if g.time else "; no survival time column found either"))
    elif missing:
        g.message = (f"no survival {'/'.join(missing)} column found: choose "
                     + ("them" if len(missing) == 2 else "it"))
    if missing and _model_outputs(df):
        g.message += "\n" + JOIN_HINT
    return g


#: what to do with a table of model outputs without survival columns (``radiogen predict``'s
#: summary.csv): join a clinical table to it (:func:`join_outputs`, the widget's button)
JOIN_HINT = ("These look like model outputs (radiogen predict and analyze write summary.csv: "
             "case_id, p_idh_mutant, risk..., no survival columns). For survival by predicted "
             "group, Join clinical table... adds a clinical table's columns (matched on the "
             "case id) and the predicted groups (predicted_idh, ..., risk_group).")


#: a radiogen predict / analyze summary's columns of the positive class's probability (the
#: last of ``core.predict.CLASSES[task]``): the predicted class column a join adds, and the task
PREDICTED_COLUMNS = {"p_idh_mutant": ("predicted_idh", "idh"),
                     "p_codel": ("predicted_1p19q", "codel_1p19q"),
                     "p_codel_1p19q_codel": ("predicted_1p19q", "codel_1p19q"),
                     "p_grade3": ("predicted_grade", "grade"),
                     "p_grade_3": ("predicted_grade", "grade")}
#: the risk columns of those summaries (``predict``: risk; ``analyze``: os_risk)
RISK_COLUMNS = ("risk", "os_risk")


def _id_key(v) -> Optional[str]:
    """A case id compared across tables: trimmed, upper case, ``-`` read as ``_`` (a TCGA
    barcode TCGA-CS-4941 is the pack TCGA_CS_4941); None for an empty cell."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    t = str(v).strip().upper().replace("-", "_")
    return t or None


@dataclass
class JoinedTable:
    """Model outputs joined with a clinical table (:func:`join_outputs`)."""
    df: Any
    clinical_key: str                    # the clinical column that matched case_id
    unmatched: List[str]                 # the outputs' case ids with no clinical row
    added: List[str]                     # the predicted-group columns the join added
    message: str

    @property
    def matched(self) -> int:
        """The cases joined (the rows of ``df``)."""
        return len(self.df)


def join_outputs(outputs, clinical) -> JoinedTable:
    """Join a table of model outputs (``radiogen predict`` or ``analyze``'s summary.csv: a
    ``case_id`` column, probabilities, a risk) with a clinical table holding the survival
    columns, so that survival can be shown by predicted group. The clinical key is the
    column whose values match the most case ids (:func:`_id_key`: case, spaces and ``-``/``_``
    do not matter). Only matched cases are kept (an inner join), and only rows that were
    predicted (a failed or skipped row of the summary has no probability). Adds
    ``predicted_idh`` / ``predicted_1p19q`` / ``predicted_grade`` (the class at p >= 0.5)
    and ``risk_group`` (``high`` above the median risk of the joined cases, else ``low``).
    A clinical column named like an output column gets the suffix ``_clinical``.
    :class:`ConfigError` when the outputs have no ``case_id`` or nothing matches."""
    import pandas as pd

    from ..predict import CLASSES
    if "case_id" not in outputs.columns:
        raise ConfigError("the model outputs have no case_id column (radiogen predict and "
                          "radiogen analyze write one in summary.csv)")
    out = outputs.copy()
    probs = [c for c in out.columns if str(c) in PREDICTED_COLUMNS or str(c) in RISK_COLUMNS]
    if probs:        # a failed or skipped case has none
        out = out[out[probs].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)]
    out["_key"] = [_id_key(v) for v in out["case_id"]]
    out = out[out["_key"].notna()]
    want = set(out["_key"])
    best, hits = None, 0
    for c in clinical.columns:
        n = len(want & {_id_key(v) for v in clinical[c]})
        if n > hits:
            best, hits = c, n
    if best is None:
        raise ConfigError(f"no column of the clinical table holds the case ids of the model "
                          f"outputs (e.g. {next(iter(sorted(want)), '?')}): it cannot be "
                          "joined with them")
    clin = clinical.copy()
    clin["_key"] = [_id_key(v) for v in clin[best]]
    dup = clin["_key"].notna() & clin["_key"].duplicated(keep="first")
    clin = clin[clin["_key"].notna() & ~dup]
    df = out.merge(clin, on="_key", how="inner", suffixes=("", "_clinical")).drop(columns="_key")
    keys = set(clin["_key"])
    unmatched = sorted(str(v) for v, k in zip(out["case_id"], out["_key"]) if k not in keys)
    added = []
    for c, (name, task) in PREDICTED_COLUMNS.items():
        neg, pos = CLASSES[task]
        if c in df.columns and name not in df.columns:
            p = pd.to_numeric(df[c], errors="coerce")
            df[name] = np.where(p.isna(), None, np.where(p >= 0.5, pos, neg))
            added.append(name)
    risk = next((c for c in RISK_COLUMNS if c in df.columns), None)
    if risk is not None and "risk_group" not in df.columns:
        r = pd.to_numeric(df[risk], errors="coerce")
        if r.notna().sum() >= 2:
            df["risk_group"] = np.where(r.isna(), None, np.where(r > r.median(), "high", "low"))
            added.append("risk_group")
    msg = (f"joined on case_id = {best}: {len(df)} of {len(out)} predicted cases matched"
           + (f"; no clinical row for {len(unmatched)} ({', '.join(unmatched[:5])}"
              f"{', ...' if len(unmatched) > 5 else ''})" if unmatched else "")
           + (f"; {int(dup.sum())} repeated clinical id(s): the first row of each kept"
              if dup.any() else ""))
    if added:
        msg += ("; added " + ", ".join(added) + " (the predicted class at p >= 0.5"
                + (f"; risk_group: {risk} above its median over these {len(df)} cases"
                   if "risk_group" in added else "") + ")")
    return JoinedTable(df=df, clinical_key=str(best), unmatched=unmatched, added=added,
                       message=msg)


def _model_outputs(df) -> bool:
    """Whether a table holds model outputs (``p_*``, ``risk``, ``sd_*`` columns)."""
    for c in df.columns:
        toks = _tokens(c)
        if toks and (not _observed(c, toks) or set(toks) & _UNCERTAINTY):
            return True
    return False



@dataclass
class SurvivalAnalysis:
    """What the survival widget shows (and exports) for one table. ``hr`` values are
    ``{hr, ci95, p}``, or ``{hr: None, ci95: None, p: None, not_estimable: reason}``;
    ``curves`` are the Kaplan-Meier tables per group (``time``, ``survival``, ``lower``,
    ``upper``, ``n``, ``events``, ``censor_time``, ``censor_survival``), computed with the
    statistics so that drawing them needs no fitting (:func:`draw_km`).

    ``c_index_direction`` says which way the C-index ranks (``"high ranked above low"``,
    ``"higher 'age' = higher risk"``); for two groups ``c_index_higher_risk`` names the
    group taken as the higher risk (the one whose patients had the event first in more of the
    comparable pairs: that C-index is >= 0.5 by construction); ``observed_expected``: each
    group's observed/expected events of the log-rank test. ``logrank_not_testable`` and
    ``c_index_not_defined`` say why those are None (e.g. ``"no events"``)."""
    n: int
    events: int
    groups: Dict[str, int] = field(default_factory=dict)
    logrank_p: Optional[float] = None
    hr: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    c_index: Optional[float] = None
    c_index_direction: Optional[str] = None
    c_index_higher_risk: Optional[str] = None
    observed_expected: Dict[str, Optional[float]] = field(default_factory=dict)
    logrank_not_testable: Optional[str] = None
    c_index_not_defined: Optional[str] = None
    median_survival: Dict[str, Optional[float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    time: Any = None
    event: Any = None
    group: Any = None
    ids: Any = None
    rows: Any = None        # the analysed rows' numbers in the table (1 = its first data row)
    curves: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    time_col: Optional[str] = None
    event_col: Optional[str] = None
    group_col: Optional[str] = None
    id_col: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """The statistics (not the per-patient values), for :func:`write_survival_outputs`."""
        return {"columns": {"time": self.time_col, "event": self.event_col,
                            "group": self.group_col, "id": self.id_col},
                "n": self.n, "events": self.events, "groups": dict(self.groups),
                "events_per_group": {g: c.get("events") for g, c in self.curves.items()},
                "median_survival": dict(self.median_survival), "logrank_p": self.logrank_p,
                "logrank_not_testable": self.logrank_not_testable,
                "observed_expected": dict(self.observed_expected),
                "hazard_ratios": {k: dict(v) for k, v in self.hr.items()},
                "c_index": self.c_index, "c_index_direction": self.c_index_direction,
                "c_index_higher_risk": self.c_index_higher_risk,
                "c_index_not_defined": self.c_index_not_defined, "notes": list(self.notes)}


@contextmanager
def _lifelines_warnings():
    """lifelines' convergence warnings, caught (a list) instead of printed: the caller turns
    them into a note. Only this thread's (the fit runs in a worker in napari): other threads'
    warnings, and the process's warning filters, are left alone (:mod:`._warn`)."""
    from ._warn import collect_warnings
    try:
        from lifelines.exceptions import ConvergenceWarning
    except ImportError:  # pragma: no cover - older lifelines
        ConvergenceWarning = RuntimeWarning
    with collect_warnings(ConvergenceWarning) as caught:
        yield caught


def _km_curve(t, e) -> Dict[str, Any]:
    from lifelines import KaplanMeierFitter
    km = KaplanMeierFitter().fit(t, e)
    sf = km.survival_function_.iloc[:, 0]
    ci = km.confidence_interval_survival_function_
    x = sf.index.to_numpy(float)
    s = sf.to_numpy(float)
    ct = np.sort(t[e == 0])
    cs = s[np.searchsorted(x, ct, side="right") - 1] if len(ct) else np.zeros(0)
    ms = km.median_survival_time_
    return {"time": x, "survival": s, "lower": ci.iloc[:, 0].to_numpy(float),
            "upper": ci.iloc[:, 1].to_numpy(float), "n": int(len(t)), "events": int(e.sum()),
            "censor_time": ct, "censor_survival": cs,
            "median": float(ms) if np.isfinite(ms) else None}


def _estimable(v: Dict[str, Any]) -> Optional[str]:
    """Why a fitted HR is no estimate (None when it is one)."""
    vals = [v["hr"], *v["ci95"]]
    if not all(np.isfinite(vals)) or v["ci95"][0] <= 0:
        return "its confidence interval is not finite"
    if not 1e-3 < v["hr"] < 1e3:
        return "the fit ran away (the groups separate the outcomes)"
    return None


def _not_estimable(reason: str) -> Dict[str, Any]:
    return {"hr": None, "ci95": None, "p": None, "not_estimable": reason}


def observed_expected(time, event, groups) -> Dict[str, Optional[float]]:
    """Each group's observed events over the events the log-rank test expects of it (at each
    event time, the deaths times the group's share of the patients at risk); None where it
    expects none. Above 1: a higher hazard than the cohort's."""
    t = np.asarray(time, float)
    e = np.asarray(event, float) > 0
    g = np.asarray(groups, dtype=object)
    names = sorted(set(g), key=str)
    exp = dict.fromkeys(names, 0.0)
    for u in np.unique(t[e]):
        at_risk = t >= u
        d = float((e & (t == u)).sum())
        n = float(at_risk.sum())
        for k in names:
            exp[k] += d * float((at_risk & (g == k)).sum()) / n
    return {str(k): (float((e & (g == k)).sum()) / exp[k] if exp[k] > 0 else None)
            for k in names}


def _too_many_groups(df, group_col, levels, skip) -> ConfigError:
    fits = [c for c in df.columns if c not in skip and 2 <= _n_levels(df[c]) <= MAX_GROUPS]
    best = _best(df, _group_rank, _groupable, exclude=skip, observed=False)
    if best in fits:
        fits.remove(best)
        fits.insert(0, best)
    hint = f" (e.g. {', '.join(fits[:4])})" if fits else ""
    return ConfigError(f"{group_col!r} has {levels} different values: too many groups to "
                       f"compare (at most {MAX_GROUPS}); group by a column with fewer "
                       f"values{hint}")


def analyze_table(df, time_col: str, event_col: str, group_col: Optional[str] = None, *,
                  id_col: Optional[str] = None, n_quantiles: int = 2) -> SurvivalAnalysis:
    """KM curves per group, log-rank p, Cox HR and C-index from a table's columns.

    ``group_col`` may be categorical (each value a group, at most :data:`MAX_GROUPS`; HRs
    against the largest group, the first in sorted order among equals) or numeric with more than 5 values (split at the
    median into low/high; the C-index, higher values ranked as higher risk, and an HR per SD use
    the numeric values). Two groups' C-index ranks above the group whose patients had the event
    first in more of the comparable pairs (>= 0.5 by construction; ``c_index_direction``), not
    the one whose name sorts second. No events: no log-rank p, HR or C-index, each saying why
    (``logrank_not_testable``, ``c_index_not_defined``). ``notes`` say
    what was left out and what is unreliable (too few patients or events, an HR that cannot be
    estimated: then its numbers are None). ``id_col`` names the patients in an identified
    export's per-patient table (default: the table's id column, else the row number); a
    de-identified export (the default) names them by their row number (``rows``)."""
    import pandas as pd
    for c in (time_col, event_col) + ((group_col,) if group_col else ()) \
            + ((id_col,) if id_col else ()):
        if c not in df.columns:
            raise ConfigError(f"column {c!r} not in the table")
    if time_col == event_col:
        raise ConfigError("the time and the event must be different columns")
    t = pd.to_numeric(df[time_col], errors="coerce")
    e = event_values(df[event_col])
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
        if group_col in (time_col, event_col):
            raise ConfigError(f"{group_col!r} is the time or the event: group by another column")
        gv = df[group_col]
        gnum = pd.to_numeric(gv, errors="coerce")
        if gnum.notna().sum() >= 0.9 * gv.notna().sum() and gnum.nunique() > 5:
            numeric = gnum
            has = gnum.notna()
            med = gnum[ok & has].median()
            groups = np.where(gnum > med, f"{group_col} > {med:g}", f"{group_col} <= {med:g}")
            notes.append(f"numeric {group_col!r} split at its median ({med:g})")
        else:
            has = gv.notna() & (gv.astype(str).str.strip() != "")
            levels = _n_levels(gv[ok])
            if levels > MAX_GROUPS:
                raise _too_many_groups(df, group_col, levels, (time_col, event_col))
            groups = gv.astype(str).str.strip().to_numpy()
        lost = int((ok & ~has).sum())
        if lost:
            notes.append(f"{lost} row(s) with no {group_col!r} value left out")
        ok &= has
        if ok.sum() < 3:
            raise ConfigError(f"fewer than 3 rows have a usable {time_col!r}, {event_col!r} "
                              f"and {group_col!r}")
    else:
        groups = np.array(["all"] * len(df), dtype=object)
    if id_col is None:
        id_col = guess_columns(df).id
    row_numbers = np.arange(1, len(df) + 1)
    ids = (df[id_col].astype(str).to_numpy() if id_col else row_numbers)
    okn = ok.to_numpy()
    t, e, groups = t[ok].to_numpy(float), e[ok].to_numpy(float), np.asarray(groups)[okn]
    res = SurvivalAnalysis(n=int(len(t)), events=int(e.sum()), notes=notes, time=t, event=e,
                           group=groups, ids=ids[okn], rows=row_numbers[okn],
                           time_col=time_col, event_col=event_col, group_col=group_col,
                           id_col=id_col)
    names = sorted(set(groups), key=str)
    res.groups = {str(g): int((groups == g).sum()) for g in names}
    for g in names:
        m = groups == g
        c = _km_curve(t[m], e[m])
        res.curves[str(g)] = c
        res.median_survival[str(g)] = c["median"]
    if res.n < MIN_PATIENTS or res.events < MIN_EVENTS:
        notes.append(f"only {res.n} patient(s) and {res.events} event(s): too few for reliable "
                     f"statistics (at least {MIN_PATIENTS} and {MIN_EVENTS})")
    no_events = [str(g) for g in names if res.curves[str(g)]["events"] == 0]
    if no_events and len(no_events) < len(names) >= 2:
        notes.append(f"no events in {', '.join(no_events)}: survival there never drops, and "
                     "a hazard ratio against it cannot be estimated")
    if group_col and len(names) == 1:
        notes.append(f"only one group ({str(names[0])!r}): nothing to compare")
    if len(names) >= 2 and res.events == 0:
        # lifelines would say p = 1 and a Cox model has nothing to fit: no events, no test
        res.logrank_not_testable = res.c_index_not_defined = "no events"
        notes.append("no events at all: survival never drops; the log-rank test, the hazard "
                     "ratios and the C-index need events")
        if numeric is not None:
            res.hr = {f"{group_col} (per SD)": _not_estimable("no events")}
        else:
            ref = max(names, key=lambda g: res.groups[str(g)])
            res.hr = {f"{g} vs {ref}": _not_estimable("no events") for g in names if g != ref}
    elif len(names) >= 2:
        res.logrank_p = logrank_p(t, e, groups)
        res.observed_expected = observed_expected(t, e, groups)
        if numeric is not None:
            x = numeric[ok].to_numpy(float)
            res.c_index = _safe_c_index(t, e, x)
            if res.c_index is None:
                res.c_index_not_defined = "no comparable pairs"
            else:
                res.c_index_direction = f"higher {group_col!r} = higher risk"
            sd = x.std() or 1.0
            key = f"{group_col} (per SD)"
            with _lifelines_warnings() as caught:
                try:
                    v = cox_hr(t, e, {"x": (x - x.mean()) / sd}).get("x")
                except Exception:
                    v = None
            why = "the Cox model did not converge" if v is None else _estimable(v)
            res.hr = {key: _not_estimable(why) if why else v}
        else:
            ref = max(names, key=lambda g: res.groups[str(g)])   # first among the largest
            cov = {str(g): (groups == g).astype(float) for g in names if g != ref}
            with _lifelines_warnings() as caught:
                try:
                    hr = cox_hr(t, e, cov, penalizer=0.0)
                except Exception:
                    hr = {}
                    notes.append("the Cox model did not converge (too few patients or events, "
                                 "or a group that separates the outcomes): no hazard ratios")
            for g, v in hr.items():
                if g in no_events or ref in no_events:
                    why = f"no events in {g if g in no_events else ref}"
                else:
                    why = _estimable(v)
                res.hr[f"{g} vs {ref}"] = _not_estimable(why) if why else v
            if len(names) == 2:
                _two_group_c_index(res, t, e, groups, [str(g) for g in names])
        bad = [k for k, v in res.hr.items() if v.get("not_estimable")]
        if bad:
            notes.append(f"HR not estimable: {'; '.join(bad)}")
        if caught and len(bad) < len(res.hr):
            notes.append("the Cox model warned of convergence problems (a group with few "
                         "events, or one that nearly separates the outcomes): read the HRs "
                         "with care")
    return res


def _safe_c_index(t, e, r) -> Optional[float]:
    try:
        return c_index(t, e, r)
    except ZeroDivisionError:            # lifelines: no admissible pairs
        return None


def _two_group_c_index(res: SurvivalAnalysis, t, e, groups, names: List[str]) -> None:
    """The C-index of two groups. Which group is the higher risk is taken from the data, never
    from how the names sort: the one whose patients had the event first in more of the
    comparable pairs (so the C-index is >= 0.5 by construction: it measures separation);
    said in ``c_index_direction``, and a note when the log-rank's observed/expected events
    rank the groups the other way."""
    g = np.asarray(groups).astype(str)
    a, b = names
    ca = _safe_c_index(t, e, (g == a).astype(float))
    if ca is None:
        res.c_index_not_defined = "no comparable pairs (no event before another patient's time)"
        return
    if np.isclose(ca, 0.5):
        res.c_index = 0.5
        res.c_index_direction = "neither group ranked above the other"
    else:
        hi, lo = (a, b) if ca > 0.5 else (b, a)
        res.c_index = ca if hi == a else _safe_c_index(t, e, (g == hi).astype(float))
        res.c_index_higher_risk = hi
        res.c_index_direction = f"{hi} ranked above {lo}"
    res.notes.append(
        "two-group C-index: the higher-risk group is the one whose patients had the event "
        "first in more of the comparable pairs, so the C-index is >= 0.5 by construction: it "
        "measures how far the groups separate; the log-rank p tests whether they do")
    oe = res.observed_expected
    hi = res.c_index_higher_risk
    if hi is not None:
        lo = b if hi == a else a
        if oe.get(hi) is not None and oe.get(lo) is not None and oe[hi] < oe[lo]:
            res.notes.append(
                f"the log-rank's observed/expected events rank the groups the other way "
                f"({lo} {oe[lo]:.2f}, {hi} {oe[hi]:.2f}): the groups barely separate, or "
                "their hazards cross")


def draw_km(ax, analysis: SurvivalAnalysis, *, show_ci: bool = True) -> None:
    """Draw an analysis' Kaplan-Meier curves (step functions, 95% bands, censoring ticks) on a
    matplotlib axes from its fitted tables: no fitting, no lifelines plotting."""
    for i, (name, c) in enumerate(analysis.curves.items()):
        color = f"C{i % 10}"
        ax.step(c["time"], c["survival"], where="post", color=color, lw=1.5,
                label=f"{name} (n={c['n']})")
        if show_ci:
            ax.fill_between(c["time"], c["lower"], c["upper"], step="post", color=color,
                            alpha=0.2, lw=0)
        if len(c["censor_time"]):
            ax.plot(c["censor_time"], c["censor_survival"], "|", color=color, ms=5)
    ax.set_xlabel(analysis.time_col or "time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    if analysis.curves:
        ax.set_xlim(left=0)
        if len(analysis.curves) <= 4:
            ax.legend(fontsize=7, loc="best", framealpha=0.7)
        else:                            # many groups: below the axes, never over the curves
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2,
                      frameon=False)


#: the files :func:`write_survival_outputs` writes into its folder
OUTPUT_NAMES = {"figure": "survival_km.png", "statistics": "survival_stats.json",
                "patients": "survival_patients.csv"}


def write_survival_outputs(result: SurvivalAnalysis, folder, *, source: Optional[str] = None,
                           identified: bool = False) -> Dict[str, Any]:
    """Write an analysis into ``folder`` (made if missing): the Kaplan-Meier figure (PNG), the
    statistics (strict JSON: non-finite numbers are null) and one row per analysed patient.

    De-identified by default: the per-patient rows are ``row, time, event, group``, ``row``
    being the patient's row number in the table (1 = its first data row), and no patient id is
    written anywhere; ``identified=True`` writes ``id, time, event, group`` with the table's
    id column (``result.id_col``; the row number when it has none). The statistics say which
    (``"deidentified": true/false``; ``columns.id`` is null when de-identified). ``source``
    (the table's file name, not its path) goes into the JSON.
    Returns ``{"figure"|"statistics"|"patients": path}``."""
    import pandas as pd
    from pathlib import Path
    from matplotlib.figure import Figure
    from ..outputs import write_json
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as ex:
        raise ConfigError(f"cannot make the folder {out}: {ex.strerror or ex}") from None
    paths = {k: out / v for k, v in OUTPUT_NAMES.items()}
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    draw_km(ax, result)
    if result.logrank_p is not None:
        ax.set_title(f"log-rank p = {result.logrank_p:.3g}", fontsize=9)
    stats = {"table": source, **result.to_json(), "deidentified": not identified,
             "files": {k: p.name for k, p in paths.items()}}
    if identified:
        key = {"id": result.ids}
    else:
        stats["columns"] = {**stats["columns"], "id": None}
        key = {"row": (result.rows if result.rows is not None
                       else np.arange(1, len(result.time) + 1))}
    rows = pd.DataFrame({**key, "time": result.time,
                         "event": np.asarray(result.event, float).astype(int),
                         "group": result.group})
    try:
        fig.savefig(paths["figure"], dpi=120, bbox_inches="tight")
        write_json(paths["statistics"], stats)
        rows.to_csv(paths["patients"], index=False)
    except OSError as ex:
        raise ConfigError(f"cannot write into {out}: {ex.strerror or ex}") from None
    return paths
