"""The Survival dock widget: loading (and failing to load) tables in a worker, guessed columns,
the Kaplan-Meier run (fitting in the worker, drawing in the main thread) and the export (in a
worker; de-identified unless "include patient ids" is ticked)."""
import threading

import numpy as np
import pandas as pd
import pytest

from _json_helpers import strict_load

pytest.importorskip("napari")


def _synthetic(n=60, seed=3):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t = rng.exponential(np.exp(-risk) * 100)
    c = rng.exponential(150, size=n)
    return np.minimum(t, c), (t <= c).astype(int), risk


@pytest.fixture
def cohort_csv(tmp_path):
    t, e, r = _synthetic()
    csv = tmp_path / "cohort.csv"
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(60)], "os_days": t, "os_event": e,
                  "risk_group": np.where(r > 0, "high", "low")}).to_csv(csv, index=False)
    return csv, r


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_radiogen.napari.survival_widget import SurvivalWidget
    w = SurvivalWidget(make_napari_viewer())
    qtbot.addWidget(w)
    return w


def _run(w, qtbot):
    job = w.analyze()
    assert job is not None
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    return job


def _wait(qtbot, job):
    assert job is not None
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    return job


def _load(w, qtbot, path):
    """Load a table (a worker job) and wait for it; True when the table was taken."""
    job = _wait(qtbot, w.load_table(str(path)))
    return job.error is None and w.df is not None


def test_survival_widget_km_fits_in_the_worker(widget, qtbot, cohort_csv, monkeypatch):
    from lifelines import KaplanMeierFitter
    from napari_radiogen.core.evaluate import survival as sv
    csv, r = cohort_csv
    w = widget
    assert not w.run_btn.isEnabled() and not w.export_btn.isEnabled()
    read_threads = []
    real_read = sv.read_table

    def read(*a, **k):
        read_threads.append(threading.current_thread() is threading.main_thread())
        return real_read(*a, **k)
    monkeypatch.setattr(sv, "read_table", read)
    job = w.load_table(str(csv))
    assert w.df is None and not w.run_btn.isEnabled()        # nothing before the job ends
    _wait(qtbot, job)
    assert job.error is None and w.df is not None
    assert read_threads == [False]                            # read in the worker
    assert w.time_col.currentText() == "os_days" and w.event_col.currentText() == "os_event"
    assert w.group_col.currentText() == "risk_group"
    assert w.run_btn.isEnabled() and not w.export_btn.isEnabled()
    fit_threads = []
    real_fit = KaplanMeierFitter.fit

    def fit(self, *a, **k):
        fit_threads.append(threading.current_thread() is threading.main_thread())
        return real_fit(self, *a, **k)

    def no_plot(*a, **k):
        raise AssertionError("lifelines plotting in the main thread")
    monkeypatch.setattr(KaplanMeierFitter, "fit", fit)
    monkeypatch.setattr(KaplanMeierFitter, "plot_survival_function", no_plot)
    job = _run(w, qtbot)
    assert job.error is None
    assert fit_threads and not any(fit_threads)        # every fit ran in the worker
    assert isinstance(w.analysis, sv.SurvivalAnalysis)
    assert w.analysis.groups == {"high": int((r > 0).sum()), "low": int((r <= 0).sum())}
    assert len(w.ax.get_lines()) >= 2
    assert "log-rank p" in w.stats.text() and "C-index" in w.stats.text()
    assert w.export_btn.isEnabled() and w.run_btn.isEnabled()


@pytest.mark.parametrize("bad", ["missing.csv", "empty.csv", "blob.h5"])
def test_failed_load_clears_the_previous_table(widget, qtbot, cohort_csv, bad):
    csv, _ = cohort_csv
    (csv.parent / "empty.csv").write_text("")
    (csv.parent / "blob.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    w = widget
    assert _load(w, qtbot, csv)
    _run(w, qtbot)
    assert w.analysis is not None and w.ax.get_lines()
    w.path.setText(str(csv.parent / bad))
    w.path.returnPressed.emit()
    assert w.df is None and w.analysis is None and not w.ax.get_lines()   # dropped at once
    job = _wait(qtbot, w.job)
    assert job.error is not None
    assert w.df is None and w.analysis is None
    assert w.time_col.count() == w.event_col.count() == w.group_col.count() == 0
    assert not w.run_btn.isEnabled() and not w.export_btn.isEnabled()
    assert not w.ax.get_lines() and "cannot use this table" in w.stats.text()
    assert bad in w.stats.text() and "Error" not in w.stats.text()
    assert w.analyze() is None


def test_unknown_columns_stay_unchosen(widget, qtbot, tmp_path):
    csv = tmp_path / "nosurv.csv"
    pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "OncosignCluster": [1, 2, 3, 1],
                  "idh": ["m", "w", "m", "w"], "flag": [0, 1, 1, 0]}).to_csv(csv, index=False)
    w = widget
    assert _load(w, qtbot, csv)
    assert w.time_col.currentText() == "(choose)" and w.event_col.currentText() == "(choose)"
    assert "no survival time/event column found: choose them" in w.stats.text()
    assert not w.run_btn.isEnabled()
    w.time_col.setCurrentText("OncosignCluster")
    assert not w.run_btn.isEnabled()                   # the event is still missing
    w.event_col.setCurrentText("flag")
    assert w.run_btn.isEnabled()


def test_no_event_column_is_said(widget, qtbot, tmp_path):
    csv = tmp_path / "brats_like.csv"
    pd.DataFrame({"Brats20ID": ["x1", "x2", "x3", "x4", "x5", "x6"],
                  "Age": [60.5, 52.2, 70.1, 49.0, 66.3, 58.8],
                  "Survival_days": ["289", "616", "464", "788", "465", "ALIVE (361 days later)"]}
                 ).to_csv(csv, index=False)
    w = widget
    assert _load(w, qtbot, csv)
    assert w.time_col.currentText() == "Survival_days"
    assert w.event_col.currentText() == "(choose)" and "no event column" in w.stats.text()
    assert not w.run_btn.isEnabled()


def test_too_many_groups_and_non_estimable_hr(widget, qtbot, tmp_path):
    csv = tmp_path / "few.csv"
    pd.DataFrame({"patient_id": ["a", "b", "c"], "os_days": [234, 1335, 1106],
                  "os_event": [1, 1, 1], "idh": ["wildtype", "mutant", "mutant"]}
                 ).to_csv(csv, index=False)
    w = widget
    assert _load(w, qtbot, csv)
    _run(w, qtbot)
    text = w.stats.text()
    assert "HR wildtype vs mutant: not estimable" in text and "too few" in text
    assert text.count("not estimable") == 1          # said on its line, not again in a note
    csv = tmp_path / "many.csv"
    t, e, _ = _synthetic(30)
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(30)], "os_days": t, "os_event": e,
                  "idh": ["wildtype", "mutant", "mutant"] * 10}).to_csv(csv, index=False)
    assert _load(w, qtbot, csv)
    w.group_col.setCurrentText("patient_id")
    job = _run(w, qtbot)
    assert job.error is not None and w.analysis is None and not w.export_btn.isEnabled()
    assert "30 different values: too many groups" in w.stats.text()
    assert "fewer values (e.g. idh" in w.stats.text() and not w.ax.get_lines()


def test_export_is_de_identified_unless_ids_are_asked_for(widget, qtbot, cohort_csv, tmp_path,
                                                          monkeypatch):
    from qtpy.QtWidgets import QFileDialog
    from napari_radiogen.core.evaluate import survival as sv
    OUTPUT_NAMES = sv.OUTPUT_NAMES
    csv, _ = cohort_csv
    ids = set(pd.read_csv(csv)["patient_id"])
    w = widget
    assert _load(w, qtbot, csv)
    _run(w, qtbot)
    out = tmp_path / "export"
    asked = []

    def dialog(*a, **k):
        asked.append(a)
        return str(out)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(dialog))
    write_threads = []
    real_write = sv.write_survival_outputs

    def write(*a, **k):
        write_threads.append(threading.current_thread() is threading.main_thread())
        return real_write(*a, **k)
    monkeypatch.setattr(sv, "write_survival_outputs", write)
    assert not w.identified.isChecked()                 # de-identified by default
    w.export_btn.click()
    job = _wait(qtbot, w.job)
    assert job.error is None and write_threads == [False]          # written in the worker
    assert asked and sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES.values())
    js = strict_load(out / OUTPUT_NAMES["statistics"])
    assert js["deidentified"] is True and js["columns"]["id"] is None
    assert js["table"] == "cohort.csv" and js["n"] == w.analysis.n
    assert js["logrank_p"] == pytest.approx(w.analysis.logrank_p)
    rows = pd.read_csv(out / OUTPUT_NAMES["patients"], dtype=str)
    assert list(rows.columns) == ["row", "time", "event", "group"]
    assert len(rows) == w.analysis.n and set(rows["group"]) == {"high", "low"}
    assert sorted(rows["row"].astype(int)) == list(range(1, 61))   # table row numbers
    for f in out.iterdir():                          # no patient id in any file
        if f.suffix in (".csv", ".json"):
            text = f.read_text()
            assert not [i for i in ids if f'"{i}"' in text or f"\n{i}," in text], f.name
    assert "exported to" in w.stats.text() and "de-identified" in w.stats.text()
    assert w.export_btn.isEnabled() and w.run_btn.isEnabled()
    # asked for: the table's patient ids
    w.identified.setChecked(True)
    out = tmp_path / "export_ids"
    w.export_btn.click()
    job = _wait(qtbot, w.job)
    assert job.error is None and (out / OUTPUT_NAMES["patients"]).is_file()
    rows = pd.read_csv(out / OUTPUT_NAMES["patients"], dtype=str)
    assert list(rows.columns) == ["id", "time", "event", "group"] and set(rows["id"]) == ids
    js = strict_load(out / OUTPUT_NAMES["statistics"])
    assert js["deidentified"] is False and js["columns"]["id"] == "patient_id"
    assert "with patient ids" in w.stats.text()
    # a cancelled dialog writes nothing
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: ""))
    assert w.export() is None


def test_export_failure_is_said_in_the_widget(widget, qtbot, cohort_csv, tmp_path,
                                              monkeypatch):
    from qtpy.QtWidgets import QFileDialog
    csv, _ = cohort_csv
    w = widget
    assert _load(w, qtbot, csv)
    _run(w, qtbot)
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path / "file" / "sub")))
    job = _wait(qtbot, w.export())
    assert job.error is not None and "export failed: cannot" in w.stats.text()
    assert w.export_btn.isEnabled() and w.analysis is not None


def test_a_new_table_supersedes_the_job_under_way(widget, qtbot, cohort_csv, tmp_path):
    """Loading a table while the previous one is fitted: the fit is cancelled and says
    nothing over the new table."""
    csv, _ = cohort_csv
    other = tmp_path / "other.csv"
    pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "os_days": [10, 20, 30, 40],
                  "os_event": [1, 0, 1, 1]}).to_csv(other, index=False)
    w = widget
    assert _load(w, qtbot, csv)
    fit = w.analyze()
    load = w.load_table(str(other))
    _wait(qtbot, fit)
    _wait(qtbot, load)
    assert w.source == str(other) and w.df is not None and len(w.df) == 4
    assert w.analysis is None and not w.ax.get_lines()
    assert w.stats.text().startswith("4 rows, 3 columns") and "error" not in w.stats.text()


def test_stats_say_the_c_index_direction_and_untestable_statistics(widget, qtbot, tmp_path,
                                                                  monkeypatch):
    from lifelines.utils import concordance_index
    from qtpy.QtWidgets import QFileDialog
    t, e, r = _synthetic()
    csv = tmp_path / "risk.csv"
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(60)], "os_days": t, "os_event": e,
                  "risk_group": np.where(r > 0, "high", "low")}).to_csv(csv, index=False)
    want = concordance_index(t, -(r > 0).astype(float), e)
    w = widget
    assert _load(w, qtbot, csv)
    _run(w, qtbot)
    assert f"C-index = {want:.3f} (high ranked above low)" in w.stats.text()
    assert ">= 0.5 by construction" in w.stats.text()
    # no events: not "log-rank p = 1", and null in the export
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(60)], "os_days": t, "os_event": 0,
                  "idh": np.where(r > 0, "wildtype", "mutant")}).to_csv(csv, index=False)
    assert _load(w, qtbot, csv)
    w.event_col.setCurrentText("os_event")
    _run(w, qtbot)
    text = w.stats.text()
    assert "log-rank: not testable (no events)" in text and "log-rank p" not in text
    assert "C-index: not defined (no events)" in text
    assert "HR wildtype vs mutant: not estimable (no events)" in text
    out = tmp_path / "export"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(out)))
    _wait(qtbot, w.export())
    js = strict_load(out / "survival_stats.json")
    assert js["logrank_p"] is None and js["c_index"] is None
    assert js["logrank_not_testable"] == "no events"
    # one group: says why nothing is compared
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(60)], "os_days": t, "os_event": e,
                  "idh": "mutant"}).to_csv(csv, index=False)
    assert _load(w, qtbot, csv)
    w.group_col.setCurrentText("idh")
    _run(w, qtbot)
    assert "only one group ('mutant'): nothing to compare" in w.stats.text()


def test_a_predict_summary_says_how_to_get_survival(widget, qtbot, tmp_path):
    from napari_radiogen.cli_cmds.predict import CSV_COLUMNS
    w = widget
    assert "predictions.csv" not in w.path.placeholderText()
    assert "summary.csv" in w.path.toolTip() and "Join clinical table" in w.path.toolTip()
    rng = np.random.default_rng(1)
    df = pd.DataFrame({c: rng.uniform(size=8) for c in CSV_COLUMNS})
    df["case_id"] = [f"c{i}" for i in range(8)]
    df["model"], df["status"], df["message"] = "predict_ensemble", "ok", ""
    csv = tmp_path / "summary.csv"
    df.to_csv(csv, index=False)
    assert _load(w, qtbot, csv)
    assert w.group_col.currentText() == "(none)"              # not sd_idh
    assert "Join clinical table..." in w.stats.text()
    assert not w.run_btn.isEnabled() and w.join_btn.isEnabled()


def test_joining_a_clinical_table_gives_survival_by_predicted_group(widget, qtbot, tmp_path,
                                                                    monkeypatch):
    """Model outputs open, Join clinical table...: the clinical columns come in on the case
    id, the predicted groups are added, the survival columns and a grouping are chosen, and
    the Kaplan-Meier runs by predicted group; the export names both tables. A table that
    does not match leaves the outputs open and says why."""
    from qtpy.QtWidgets import QFileDialog
    from napari_radiogen.cli_cmds.predict import CSV_COLUMNS
    w = widget
    n = 40
    rng = np.random.default_rng(2)
    ids = [f"TCGA_CS_{5000 + i}" for i in range(n)]
    out = pd.DataFrame({c: rng.uniform(size=n) for c in CSV_COLUMNS})
    out["case_id"], out["model"], out["status"], out["message"] = ids, "m", "ok", ""
    summary = tmp_path / "summary.csv"
    out.to_csv(summary, index=False)
    t, e = _synthetic(n)[:2]
    clinical = tmp_path / "clinical.csv"
    pd.DataFrame({"patient_id": ids, "os_days": t, "os_event": e}).to_csv(clinical, index=False)
    bad = tmp_path / "other.csv"
    pd.DataFrame({"patient_id": [f"x{i}" for i in range(n)], "os_days": t,
                  "os_event": e}).to_csv(bad, index=False)
    assert _load(w, qtbot, summary) and w.join_btn.isEnabled()
    _wait(qtbot, w.join_table(str(bad)))
    assert "cannot join other.csv" in w.stats.text() and "holds the case ids" in w.stats.text()
    assert w.df is not None and "os_days" not in w.df.columns       # the outputs stay open
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(clinical), "")))
    w.join_btn.click()
    _wait(qtbot, w.job)
    assert "joined on case_id = patient_id: 40 of 40" in w.stats.text()
    assert (w.time_col.currentText(), w.event_col.currentText()) == ("os_days", "os_event")
    assert w.group_col.currentText() == "risk_group"
    assert not w.join_btn.isEnabled()                     # joined once
    w.group_col.setCurrentText("predicted_idh")
    _run(w, qtbot)
    assert set(w.analysis.curves) == set(np.where(out["p_idh_mutant"] >= 0.5, "mutant",
                                                  "wildtype"))
    exported = tmp_path / "export"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(exported)))
    _wait(qtbot, w.export())
    js = strict_load(exported / "survival_stats.json")
    assert js["table"] == "summary.csv joined with clinical.csv"
