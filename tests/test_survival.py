"""Survival statistics (core) and the survival widget."""
import numpy as np
import pytest

from napari_radiogen.core.errors import ConfigError
from napari_radiogen.core.evaluate import survival as sv


def _synthetic(n=120, seed=0, censor=True):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t = rng.exponential(np.exp(-risk) * 100)
    if censor:
        c = rng.exponential(150, size=n)
        e = (t <= c).astype(int)
        t = np.minimum(t, c)
    else:
        e = np.ones(n, int)
    return t, e, risk


def test_c_index_and_cox_on_synthetic_data():
    t, e, r = _synthetic()
    ci = sv.c_index(t, e, r)
    assert 0.6 < ci < 0.85
    assert abs(sv.c_index(t, e, -r) - (1 - ci)) < 1e-9
    hr = sv.cox_hr(t, e, {"risk": r})["risk"]
    assert 2.0 < hr["hr"] < 4.0 and hr["ci95"][0] < hr["hr"] < hr["ci95"][1]   # true HR e


def test_cumulative_dynamic_auc_matches_brute_force_without_censoring():
    t, e, r = _synthetic(60, seed=1, censor=False)
    taus = np.quantile(t, [0.25, 0.5, 0.75])
    got = sv.cumulative_dynamic_auc(t, e, t, e, r, taus)["auc"]
    for tau, a in zip(taus, got):
        cases, ctrls = r[t <= tau], r[t > tau]
        want = np.mean([(x > y) + 0.5 * (x == y) for x in cases for y in ctrls])
        assert abs(a - want) < 1e-9
    perfect = sv.cumulative_dynamic_auc(t, e, t, e, -t, taus)["auc"]
    assert all(abs(a - 1) < 1e-9 for a in perfect)


def test_brier_score_bounds_and_perfect_prediction():
    t, e, r = _synthetic(80, seed=2)
    taus = np.quantile(t[e > 0], [0.3, 0.6])
    S = sv.cox_survival(t, e, r, r, taus)
    b = sv.brier_score(t, e, t, e, S, taus)
    assert all(0 <= x <= 0.3 for x in b["brier"]) and b["integrated"] is not None
    oracle = np.stack([(t > tau).astype(float) for tau in taus], 1)
    assert max(sv.brier_score(t, e, t, e, oracle, taus)["brier"]) < 1e-9
    summary = sv.risk_summary(t, e, r)
    assert summary["c_index"] > 0.6 and summary["logrank_p"] < 0.05
    assert summary["td_auc"]["mean_auc"] > 0.6


def test_analyze_table_real_lgg(shared_data):
    import pandas as pd
    df = pd.read_csv(shared_data / "tcga-lgg" / "clinical.csv")
    a = sv.analyze_table(df, "os_days", "os_event", "idh")
    assert set(a.groups) == {"mutant", "wildtype"}
    assert a.logrank_p < 0.05                         # IDH-wildtype do worse
    assert a.hr["wildtype vs mutant"]["hr"] > 1
    b = sv.analyze_table(df, "os_days", "os_event", "age_at_initial_pathologic")
    assert b.c_index > 0.7 and "per SD" in next(iter(b.hr))
    with pytest.raises(ConfigError):
        sv.analyze_table(df, "os_days", "no_such_column")


def test_survival_widget_km(make_napari_viewer, qtbot, tmp_path):
    pytest.importorskip("napari")
    from napari_radiogen.napari.survival_widget import SurvivalWidget
    t, e, r = _synthetic(60, seed=3)
    csv = tmp_path / "cohort.csv"
    import pandas as pd
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(60)], "os_days": t, "os_event": e,
                  "risk_group": np.where(r > 0, "high", "low")}).to_csv(csv, index=False)
    w = SurvivalWidget(make_napari_viewer())
    qtbot.addWidget(w)
    w.load_table(str(csv))
    assert w.time_col.currentText() == "os_days" and w.event_col.currentText() == "os_event"
    assert w.group_col.currentText() == "risk_group"
    job = w.analyze()
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert w.analysis is not None and w.analysis.groups == {"high": int((r > 0).sum()),
                                                            "low": int((r <= 0).sum())}
    assert len(w.ax.get_lines()) >= 2
    assert "log-rank p" in w.stats.text() and "C-index" in w.stats.text()
