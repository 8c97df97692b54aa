"""Survival statistics (core); the widget is tested in test_survival_widget.py."""
import numpy as np
import pandas as pd
import pytest

from _json_helpers import strict_load

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


# -- cohort tables: reading, column guessing, notes, export ------------------------------------

def _cohort(n=40, seed=4, **extra):
    t, e, r = _synthetic(n, seed=seed)
    d = {"patient_id": [f"p{i}" for i in range(n)], "os_days": t, "os_event": e,
         "risk_group": np.where(r > 0, "high", "low")}
    d.update(extra)
    return pd.DataFrame(d)


@pytest.mark.parametrize("cols, time, event", [
    # word boundaries: "os" is no substring of OncosignCluster, "status" of a non-0/1 column
    # loses to the 0/1 "1-dead 0-alive"
    ({"OncosignCluster": [1, 2, 3, 1], "MGMT status": ["neg", "pos", "neg", "pos"],
      "1-dead 0-alive": [1, 0, 1, 1], "OS": [100, 200, 300, 50]}, "OS", "1-dead 0-alive"),
    ({"Survival_days": [5, 9, 30, 12], "vital_status": ["Dead", "Alive", "dead", "alive"]},
     "Survival_days", "vital_status"),
    ({"os_risk": [0.1, 0.2, 0.3, 0.4], "p_event": [0, 1, 0, 1], "time": [3, 4, 5, 6],
      "event": [1, 0, 1, 1]}, "time", "event"),           # model outputs are never outcomes
    ({"os_days": [1, 2, 3, 4], "pfi_event": [0, 1, 0, 1], "os_event": [1, 1, 0, 0],
      "death01": [1, 1, 0, 0]}, "os_days", "os_event"),
])
def test_guess_columns_small_tables(cols, time, event):
    g = sv.guess_columns(pd.DataFrame(cols))
    assert (g.time, g.event) == (time, event) and g.message == ""


def test_guess_columns_leaves_unknowns_empty_and_says_so():
    g = sv.guess_columns(pd.DataFrame({"OncosignCluster": [1, 2, 3], "patient_id": ["a", "b", "c"],
                                       "flag": [0, 1, 1]}))
    assert g.time is None and g.event is None and g.id == "patient_id"
    assert g.message == "no survival time/event column found: choose them"
    g = sv.guess_columns(pd.DataFrame({"ID": ["a", "b", "c"], "Survival_days": [3, 50, 9],
                                       "Extent": ["GTR", "STR", None]}))
    assert g.time == "Survival_days" and g.event is None and not g.has_event_column
    assert "no event column" in g.message


def test_guess_columns_group_never_a_probability_or_an_identifier():
    df = pd.DataFrame({"patient_id": list("abcdefgh"), "p_idh_mutant": np.linspace(0, 1, 8),
                       "predicted_idh": ["m", "w"] * 4, "os_days": np.arange(8) * 10.0,
                       "os_event": [0, 1] * 4})
    assert sv.guess_columns(df).group == "predicted_idh"
    assert sv.guess_columns(df.drop(columns="predicted_idh")).group is None


def test_guess_columns_real_tables(shared_data):
    want = {"tcga-lgg/clinical.csv": ("os_days", "os_event", "idh"),
            "tables/UCSF-PDGM-metadata_v2.csv": ("OS", "1-dead 0-alive", "IDH"),
            "tables/brats2020_survival_info.csv": ("Survival_days", None, None)}
    for rel, cols in want.items():
        p = shared_data / rel
        if not p.exists():
            continue
        g = sv.guess_columns(sv.read_table(p))
        assert (g.time, g.event, g.group) == cols, rel
    p = shared_data / "tables" / "brats2020_survival_info.csv"
    if p.exists():
        assert not sv.guess_columns(sv.read_table(p)).has_event_column


def test_read_table_says_what_is_wrong(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blob.h5").write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00\x00" * 20)
    (tmp_path / "header.csv").write_text("a,b\n")
    (tmp_path / "one.csv").write_text("a;b\n1;2\n")
    cases = {"empty.csv": "is empty", "blob.h5": "not a text table", "missing.csv": "no such file",
             "header.csv": "no rows", "one.csv": "single column"}
    for name, words in cases.items():
        with pytest.raises(ConfigError, match=words):
            sv.read_table(tmp_path / name)
    (tmp_path / "ok.tsv").write_text("t\te\n1\t0\n")
    assert list(sv.read_table(tmp_path / "ok.tsv").columns) == ["t", "e"]


def test_analyze_table_notes_degenerate_statistics():
    # three patients: the HR is no number, and the result says the data are too few
    df = pd.DataFrame({"t": [234, 1335, 1106], "e": [1, 1, 1], "g": ["wt", "mut", "mut"]})
    a = sv.analyze_table(df, "t", "e", "g")
    assert a.hr["wt vs mut"]["hr"] is None and a.hr["wt vs mut"]["not_estimable"]
    assert any("too few" in n for n in a.notes)
    # a group without events: not estimable, and said so
    df = _cohort(60)
    df.loc[df.risk_group == "high", "os_event"] = 0
    a = sv.analyze_table(df, "os_days", "os_event", "risk_group")
    v = next(iter(a.hr.values()))
    assert v["hr"] is None and "no events in high" in v["not_estimable"]
    assert any(n.startswith("no events in high") for n in a.notes)
    assert a.curves["high"]["events"] == 0 and a.median_survival["high"] is None


def test_analyze_table_counts_rows_without_a_group_value():
    df = _cohort(40)
    df.loc[[3, 7], "risk_group"] = [None, "  "]
    a = sv.analyze_table(df, "os_days", "os_event", "risk_group")
    assert a.n == 38 and "2 row(s) with no 'risk_group' value left out" in a.notes
    assert len(a.ids) == a.n and "p3" not in set(a.ids) and "p7" not in set(a.ids)
    assert len(a.rows) == a.n and 4 not in set(a.rows) and 8 not in set(a.rows)   # 1-based
    assert a.rows[3] == 5


def test_analyze_table_refuses_too_many_groups():
    df = _cohort(40, extra_col=None)
    with pytest.raises(ConfigError, match=r"40 different values.*risk_group"):
        sv.analyze_table(df, "os_days", "os_event", "patient_id")


def test_analyze_table_reference_is_the_largest_group_and_curves_are_tables():
    df = _cohort(50)
    df["arm"] = ["a"] * 5 + ["b"] * 45
    a = sv.analyze_table(df, "os_days", "os_event", "arm")
    assert list(a.hr) == ["a vs b"]
    c = a.curves["b"]
    assert c["n"] == 45 and c["survival"][0] == 1.0 and np.all(np.diff(c["survival"]) <= 0)
    assert np.all(c["lower"] <= c["survival"] + 1e-12) and np.all(c["survival"] <= c["upper"] + 1e-12)
    assert len(c["censor_time"]) == int((df.arm == "b").sum() - df.os_event[df.arm == "b"].sum())


def test_draw_km_needs_no_lifelines_plotting(monkeypatch):
    from lifelines import KaplanMeierFitter
    from matplotlib.figure import Figure

    def refuse(*a, **k):
        raise AssertionError("drawing must not fit or plot with lifelines")
    a = sv.analyze_table(_cohort(40), "os_days", "os_event", "risk_group")
    monkeypatch.setattr(KaplanMeierFitter, "fit", refuse)
    monkeypatch.setattr(KaplanMeierFitter, "plot_survival_function", refuse)
    ax = Figure().add_subplot(1, 1, 1)
    sv.draw_km(ax, a)
    labels = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert labels == [f"high (n={a.groups['high']})", f"low (n={a.groups['low']})"]
    assert ax.get_xlabel() == "os_days"


def test_write_survival_outputs(tmp_path):
    df = pd.DataFrame({"t": [234, 1335, 1106, 50], "e": [1, 1, 0, 1],
                       "g": ["wt", "mut", "mut", "wt"], "patient_id": list("abcd")})
    a = sv.analyze_table(df, "t", "e", "g")           # a non-estimable HR: nulls, not NaN
    paths = sv.write_survival_outputs(a, tmp_path / "out", source="cohort.csv")
    assert {p.name for p in paths.values()} == set(sv.OUTPUT_NAMES.values())
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = strict_load(paths["statistics"])
    assert js["table"] == "cohort.csv" and js["n"] == 4 and js["events"] == 3
    # de-identified by default: patients by row number, no id column named or written
    assert js["deidentified"] is True
    assert js["columns"] == {"time": "t", "event": "e", "group": "g", "id": None}
    assert js["notes"] == a.notes and js["groups"] == {"mut": 2, "wt": 2}
    assert js["hazard_ratios"]["wt vs mut"]["hr"] is None
    rows = pd.read_csv(paths["patients"])
    assert list(rows.columns) == ["row", "time", "event", "group"]
    assert rows.set_index("row").loc[3].to_dict() == {"time": 1106, "event": 0, "group": "mut"}
    for p in paths.values():
        if p.suffix != ".png":
            assert "patient_id" not in p.read_text() and ",c," not in p.read_text()
    # asked for: the table's ids
    paths = sv.write_survival_outputs(a, tmp_path / "ids", source="cohort.csv",
                                      identified=True)
    js = strict_load(paths["statistics"])
    assert js["deidentified"] is False
    assert js["columns"] == {"time": "t", "event": "e", "group": "g", "id": "patient_id"}
    rows = pd.read_csv(paths["patients"])
    assert list(rows.columns) == ["id", "time", "event", "group"]
    assert rows.set_index("id").loc["c"].to_dict() == {"time": 1106, "event": 0, "group": "mut"}
    with pytest.raises(ConfigError, match="cannot"):
        (tmp_path / "file").write_text("x")
        sv.write_survival_outputs(a, tmp_path / "file" / "sub")


# -- audit fixes: C-index direction, no events, one group, predict summaries ---------------------

def test_two_group_c_index_direction_comes_from_the_data_not_the_names(tmp_path):
    """'high'/'low' sort with the high-risk group first: the C-index was 1 - C (0.25 for a
    0.75 separation). Renamed so that it sorts last, the value must not change."""
    from lifelines.utils import concordance_index
    df = _cohort(80, seed=5)
    high = (df.risk_group == "high").astype(float)
    want = concordance_index(df.os_days, -high, df.os_event)
    assert want > 0.6
    for hi, lo in (("high", "low"), ("z_high", "a_low")):
        d = df.assign(risk_group=np.where(high > 0, hi, lo))
        a = sv.analyze_table(d, "os_days", "os_event", "risk_group")
        assert a.c_index == pytest.approx(want)
        assert a.c_index_higher_risk == hi and a.c_index_direction == f"{hi} ranked above {lo}"
        assert a.observed_expected[hi] > 1 > a.observed_expected[lo]
        assert any(">= 0.5 by construction" in n for n in a.notes)
    js = strict_load(sv.write_survival_outputs(a, tmp_path / "o")["statistics"])
    assert js["c_index"] == pytest.approx(want) and js["c_index_higher_risk"] == "z_high"
    assert js["c_index_direction"] == "z_high ranked above a_low"
    # the group that looks protective by its name but dies first is the one ranked above
    d = df.assign(risk_group=np.where(high > 0, "low", "high"))
    a = sv.analyze_table(d, "os_days", "os_event", "risk_group")
    assert a.c_index == pytest.approx(want) and a.c_index_higher_risk == "low"


def test_two_group_c_index_is_at_least_one_half_and_numeric_direction_is_said():
    from lifelines.utils import concordance_index
    rng = np.random.default_rng(7)
    seen_flip = False
    for _ in range(40):        # weak, crossing effects: direction and value still agree
        n = 30
        g = rng.integers(0, 2, n)
        t = np.where(g == 1, rng.exponential(100, n), rng.weibull(3, n) * 100)
        c = rng.exponential(150, n)
        df = pd.DataFrame({"t": np.minimum(t, c), "e": (t <= c).astype(int),
                           "g": np.where(g == 1, "b", "a")})
        a = sv.analyze_table(df, "t", "e", "g")
        assert a.c_index >= 0.5
        oe = a.observed_expected               # log-rank: observed events = expected events
        exp = sum(int(df.e[df.g == k].sum()) / v for k, v in oe.items() if v)
        assert exp == pytest.approx(df.e.sum())
        hi = a.c_index_higher_risk
        flipped = hi and oe[hi] < oe[({"a", "b"} - {hi}).pop()]
        assert bool(flipped) == any("rank the groups the other way" in n for n in a.notes)
        seen_flip = seen_flip or bool(flipped)
        if a.c_index_higher_risk:
            hi = (df.g == a.c_index_higher_risk).astype(float)
            assert a.c_index == pytest.approx(concordance_index(df.t, -hi, df.e))
    assert seen_flip                     # such data exist: the note is not dead code
    df = _cohort(60, seed=6)
    t, e, r = _synthetic(60, seed=6)
    a = sv.analyze_table(df.assign(score_x=r), "os_days", "os_event", "score_x")
    assert a.c_index == pytest.approx(concordance_index(t, -r, e))   # higher value, higher risk
    assert a.c_index_direction == "higher 'score_x' = higher risk"
    assert a.c_index_higher_risk is None


def test_no_events_is_not_a_log_rank_p_of_one(tmp_path):
    from lifelines.statistics import multivariate_logrank_test
    df = _cohort(40)
    df["os_event"] = 0
    assert multivariate_logrank_test(df.os_days, df.risk_group, df.os_event).p_value == 1.0
    assert sv.logrank_p(df.os_days, df.os_event, df.risk_group) is None
    a = sv.analyze_table(df, "os_days", "os_event", "risk_group")
    assert a.logrank_p is None and a.logrank_not_testable == "no events"
    assert a.c_index is None and a.c_index_not_defined == "no events"
    assert list(a.hr.values()) == [sv._not_estimable("no events")]
    assert any(n.startswith("no events at all") for n in a.notes)
    assert not any(n.startswith("no events in") for n in a.notes)
    js = strict_load(sv.write_survival_outputs(a, tmp_path / "o")["statistics"])
    assert js["logrank_p"] is None and js["logrank_not_testable"] == "no events"
    assert js["c_index"] is None and js["c_index_not_defined"] == "no events"
    b = sv.analyze_table(df.assign(x=np.arange(40.0)), "os_days", "os_event", "x")
    assert b.logrank_p is None and b.c_index is None
    assert b.hr == {"x (per SD)": sv._not_estimable("no events")}    # not "did not converge"


def test_a_single_group_says_there_is_nothing_to_compare():
    df = _cohort(30).assign(idh="mutant")
    a = sv.analyze_table(df, "os_days", "os_event", "idh")
    assert a.logrank_p is None and a.c_index is None and not a.hr
    assert "only one group ('mutant'): nothing to compare" in a.notes
    assert not any("nothing to compare" in n
                   for n in sv.analyze_table(df, "os_days", "os_event").notes)


def test_predict_summary_no_uncertainty_grouping_and_the_join_is_said():
    from napari_radiogen.cli_cmds.predict import CSV_COLUMNS
    rng = np.random.default_rng(0)
    n = 12
    df = pd.DataFrame({c: rng.uniform(size=n) for c in CSV_COLUMNS})
    df["case_id"] = [f"TCGA_X_{i}" for i in range(n)]
    df["model"], df["status"], df["message"] = "predict_ensemble", "ok", ""
    g = sv.guess_columns(df)
    assert g.group is None and g.id == "case_id"           # sd_idh was the guess
    assert "Join clinical table..." in g.message and "matched on the case id" in g.message
    for col in ("sd_idh", "idh_std", "uncertainty_idh", "idh_sd_between_members"):
        d = pd.DataFrame({col: rng.uniform(size=n), "os_days": np.arange(n) * 10.0,
                          "os_event": [0, 1] * (n // 2)})
        assert sv.guess_columns(d).group is None, col
    # joined with the clinical columns: survival columns found, no hint
    j = df.assign(os_days=np.arange(n) * 10.0, os_event=[0, 1] * (n // 2),
                  predicted_idh=["mutant", "wildtype"] * (n // 2))
    g = sv.guess_columns(j)
    assert (g.time, g.event, g.group) == ("os_days", "os_event", "predicted_idh")
    assert g.message == ""


def test_model_outputs_join_a_clinical_table_on_the_case_id():
    """A predict summary (TCGA-style ids spelled with '-', a failed row, a case without a
    clinical row) joined with a clinical table keyed by another column name: matched on the
    case id whatever its spelling, failed rows left out, predicted groups added at p >= 0.5
    and risk_group split at the median; the survival columns are then found and a
    Kaplan-Meier by predicted group runs."""
    from napari_radiogen.cli_cmds.predict import CSV_COLUMNS
    n = 10
    ids = [f"TCGA_CS_{4900 + i}" for i in range(n)]
    out = pd.DataFrame({c: "" for c in CSV_COLUMNS}, index=range(n + 2))
    out["case_id"] = [i.replace("_", "-") for i in ids] + ["TCGA-ZZ-0001", "BROKEN"]
    p = np.linspace(0.05, 0.95, n)
    out.loc[:n - 1, "p_idh_mutant"] = p
    out.loc[:n - 1, "p_codel"] = 1 - p
    out.loc[:n - 1, "p_grade3"] = 0.5
    out.loc[:n - 1, "risk"] = np.arange(n, dtype=float)
    out.loc[n, ["p_idh_mutant", "risk"]] = [0.9, 1.0]          # predicted, no clinical row
    out.loc[n + 1, "status"] = "failed"                          # no prediction
    clin = pd.DataFrame({"Patient": ids[::-1], "age": 40, "os_days": np.arange(n) * 100.0 + 50,
                         "os_event": [1, 0] * (n // 2), "model": "clinical notes"})
    j = sv.join_outputs(out, clin)
    assert j.clinical_key == "Patient" and j.matched == n and j.unmatched == ["TCGA-ZZ-0001"]
    assert len(j.df) == n and "model_clinical" in j.df.columns     # a name clash is kept apart
    by = dict(zip(j.df["case_id"], j.df["os_days"]))
    assert by["TCGA-CS-4900"] == clin.set_index("Patient").loc["TCGA_CS_4900", "os_days"]
    want = np.where(p >= 0.5, "mutant", "wildtype")
    assert list(j.df.sort_values("case_id")["predicted_idh"]) == list(want)
    assert set(j.df["predicted_grade"]) == {"3"}                   # 0.5 is >= 0.5
    assert sorted(j.df["risk_group"]) == ["high"] * 5 + ["low"] * 5
    assert j.added == ["predicted_idh", "predicted_1p19q", "predicted_grade", "risk_group"]
    assert "10 of 11 predicted cases matched" in j.message and "TCGA-ZZ-0001" in j.message
    g = sv.guess_columns(j.df)
    assert (g.time, g.event) == ("os_days", "os_event") and g.group == "risk_group"
    a = sv.analyze_table(j.df, g.time, g.event, "predicted_idh")
    assert set(a.curves) == {"mutant", "wildtype"}
    # nothing to match, or no case ids at all: said
    with pytest.raises(ConfigError, match="holds the case ids"):
        sv.join_outputs(out, clin.assign(Patient=[f"x{i}" for i in range(n)]))
    with pytest.raises(ConfigError, match="no case_id column"):
        sv.join_outputs(out.drop(columns="case_id"), clin)
