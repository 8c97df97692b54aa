"""The Survival dock widget: loading (and failing to load) tables, guessed columns, the
Kaplan-Meier run (fitting in the worker, drawing in the main thread) and the export."""
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


def test_survival_widget_km_fits_in_the_worker(widget, qtbot, cohort_csv, monkeypatch):
    from lifelines import KaplanMeierFitter
    from napari_radiogen.core.evaluate import survival as sv
    csv, r = cohort_csv
    w = widget
    assert not w.run_btn.isEnabled() and not w.export_btn.isEnabled()
    assert w.load_table(str(csv))
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
    w.load_table(str(csv))
    _run(w, qtbot)
    assert w.analysis is not None and w.ax.get_lines()
    w.path.setText(str(csv.parent / bad))
    w.path.returnPressed.emit()
    assert w.df is None and w.analysis is None
    assert w.time_col.count() == w.event_col.count() == w.group_col.count() == 0
    assert not w.run_btn.isEnabled() and not w.export_btn.isEnabled()
    assert not w.ax.get_lines() and "cannot use this table" in w.stats.text()
    assert bad in w.stats.text() and "Error" not in w.stats.text()
    assert w.analyze() is None


def test_unknown_columns_stay_unchosen(widget, tmp_path):
    csv = tmp_path / "nosurv.csv"
    pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "OncosignCluster": [1, 2, 3, 1],
                  "idh": ["m", "w", "m", "w"], "flag": [0, 1, 1, 0]}).to_csv(csv, index=False)
    w = widget
    w.load_table(str(csv))
    assert w.time_col.currentText() == "(choose)" and w.event_col.currentText() == "(choose)"
    assert "no survival time/event column found: choose them" in w.stats.text()
    assert not w.run_btn.isEnabled()
    w.time_col.setCurrentText("OncosignCluster")
    assert not w.run_btn.isEnabled()                   # the event is still missing
    w.event_col.setCurrentText("flag")
    assert w.run_btn.isEnabled()


def test_no_event_column_is_said(widget, tmp_path):
    csv = tmp_path / "brats_like.csv"
    pd.DataFrame({"Brats20ID": ["x1", "x2", "x3", "x4", "x5", "x6"],
                  "Age": [60.5, 52.2, 70.1, 49.0, 66.3, 58.8],
                  "Survival_days": ["289", "616", "464", "788", "465", "ALIVE (361 days later)"]}
                 ).to_csv(csv, index=False)
    w = widget
    w.load_table(str(csv))
    assert w.time_col.currentText() == "Survival_days"
    assert w.event_col.currentText() == "(choose)" and "no event column" in w.stats.text()
    assert not w.run_btn.isEnabled()


def test_too_many_groups_and_non_estimable_hr(widget, qtbot, tmp_path):
    csv = tmp_path / "few.csv"
    pd.DataFrame({"patient_id": ["a", "b", "c"], "os_days": [234, 1335, 1106],
                  "os_event": [1, 1, 1], "idh": ["wildtype", "mutant", "mutant"]}
                 ).to_csv(csv, index=False)
    w = widget
    w.load_table(str(csv))
    _run(w, qtbot)
    text = w.stats.text()
    assert "HR wildtype vs mutant: not estimable" in text and "too few" in text
    assert text.count("not estimable") == 1          # said on its line, not again in a note
    csv = tmp_path / "many.csv"
    t, e, _ = _synthetic(30)
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(30)], "os_days": t, "os_event": e,
                  "idh": ["wildtype", "mutant", "mutant"] * 10}).to_csv(csv, index=False)
    w.load_table(str(csv))
    w.group_col.setCurrentText("patient_id")
    job = _run(w, qtbot)
    assert job.error is not None and w.analysis is None and not w.export_btn.isEnabled()
    assert "30 different values: too many groups" in w.stats.text()
    assert "fewer values (e.g. idh" in w.stats.text() and not w.ax.get_lines()


def test_export_button_writes_the_outputs(widget, qtbot, cohort_csv, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog
    from napari_radiogen.core.evaluate.survival import OUTPUT_NAMES
    csv, _ = cohort_csv
    w = widget
    w.load_table(str(csv))
    _run(w, qtbot)
    out = tmp_path / "export"
    asked = []

    def dialog(*a, **k):
        asked.append(a)
        return str(out)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(dialog))
    w.export_btn.click()
    assert asked and sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES.values())
    js = strict_load(out / OUTPUT_NAMES["statistics"])
    assert js["table"] == "cohort.csv" and js["n"] == w.analysis.n
    assert js["logrank_p"] == pytest.approx(w.analysis.logrank_p)
    rows = pd.read_csv(out / OUTPUT_NAMES["patients"])
    assert len(rows) == w.analysis.n and set(rows["group"]) == {"high", "low"}
    assert "exported to" in w.stats.text()
    # a cancelled dialog writes nothing
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: ""))
    assert w.export() is None
