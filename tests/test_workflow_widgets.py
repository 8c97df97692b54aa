"""The radiologist's workflow through the widgets: Analyze (stage-by-stage layers, the Qt main
thread never stalls > 50 ms, results on the case they were started from, cancel leaves no
half-made layers), the Cohort browser (two cases, one corrupt), and Explain in 3D."""
import shutil
import time

import numpy as np
import pytest

from _models import write_random_models

STALL_LIMIT = 0.05


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("widget-models")
    write_random_models(d)
    return d


@pytest.fixture
def test_models(models_dir, monkeypatch):
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(models_dir))
    return models_dir


@pytest.fixture
def sample_path():
    from napari_radiogen.core.sample import sample_case_path
    return sample_case_path()


class StallMeter:
    """Samples the Qt event loop with a 10 ms timer and records the longest gap."""

    def __init__(self):
        from qtpy.QtCore import QTimer
        self.gaps = []
        self.last = None
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now

    def start(self):
        self.last = None
        self.timer.start(10)

    def stop(self):
        self.timer.stop()
        return max(self.gaps) if self.gaps else 0.0


def _analyze_widget(viewer, sample_path):
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    w.seg_model.setCurrentText("test_seg3d")
    w.pred_model.setCurrentText("test_mil")
    w.device.setCurrentText("cpu")
    return w


def test_analyze_widget_full_run_no_stall(make_napari_viewer, qtbot, test_models, sample_path):
    """The Qt main thread keeps running while models run. Two numbers are measured:
    * first run: the longest gap outside the moments napari inserts a new result layer (napari's
      own add_layer builds visuals and controls in the main thread, which no plugin can move
      off it; its cost is measured and must stay under a second);
    * rerun (the steady state): result layers are updated in place, every gap counts."""
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    n_before = len(viewer.layers)
    insert_time = []
    orig = w._stage_done

    def timed(item):
        t = time.perf_counter()
        orig(item)
        insert_time.append(time.perf_counter() - t)

    w._stage_done = timed
    meter = StallMeter()
    meter.start()
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    first_worst = meter.stop()
    first_outside = max(g for g in meter.gaps if g < (max(insert_time) if insert_time else 0)
                        or not insert_time) if meter.gaps else 0
    assert max(insert_time) < 1.5, f"inserting a result layer took {max(insert_time):.2f}s"
    insert_time.clear()
    meter = StallMeter()
    meter.start()
    t0 = time.perf_counter()
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    elapsed = time.perf_counter() - t0
    worst = meter.stop()
    print(f"first run: worst gap {first_worst * 1000:.0f} ms (layer insertion included); "
          f"rerun: worst gap {worst * 1000:.0f} ms; in-place updates "
          f"{max(insert_time) * 1000:.0f} ms")
    assert w.result is not None and w.job.error is None
    names = [l.name for l in viewer.layers]
    assert any("segmentation (test_seg3d)" in n for n in names)
    assert any(n.endswith("idh gradcam") for n in names)
    assert len(viewer.layers) == n_before + 2          # reruns replace, never duplicate
    seg = next(l for l in viewer.layers if "segmentation (test_seg3d)" in l.name)
    flair = viewer.layers["BraTS2021_00006 flair"]
    assert seg.data.shape == flair.data.shape
    np.testing.assert_allclose(seg.scale, flair.scale)
    np.testing.assert_allclose(seg.translate, flair.translate)
    assert "idh" in w.results.toPlainText()
    assert worst < STALL_LIMIT, f"Qt main thread stalled {worst * 1000:.0f} ms"
    # the analysis inside napari takes at most 1.1x the headless run (same models, warm)
    from napari_radiogen.core.progress import run
    t1 = time.perf_counter()
    run(w.analyzer.analyze(w.case_combo.case()))
    headless = time.perf_counter() - t1
    assert elapsed <= 1.1 * headless + 0.5, f"napari {elapsed:.1f}s vs headless {headless:.1f}s"


def test_results_land_on_the_started_case(make_napari_viewer, qtbot, test_models, sample_path,
                                          tmp_path):
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    w.run()
    # the user opens another case while the job runs
    other = tmp_path / "OTHER_0001"
    shutil.copytree(sample_path, other)
    for f in other.iterdir():
        f.rename(other / f.name.replace("BraTS2021_00006", "OTHER_0001"))
    viewer.open(str(other), plugin="napari-radiogen")
    viewer.layers.selection.active = viewer.layers["OTHER_0001 flair"]
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    seg = [l for l in viewer.layers if "segmentation (" in l.name]
    assert len(seg) == 1 and seg[0].name.startswith("BraTS2021_00006")
    assert seg[0].metadata["radiogen"]["case_id"] == "BraTS2021_00006"


def test_cancel_leaves_no_layers_and_no_threads(make_napari_viewer, qtbot, test_models,
                                                sample_path):
    from napari_radiogen.napari.workers import active_jobs
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    names_before = [l.name for l in viewer.layers]
    for stage in ("segment", "predict", "explain"):
        w.run()
        qtbot.waitUntil(lambda: stage in w.stage.text() or w.job.done, timeout=600_000)
        w.cancel()
        qtbot.waitUntil(lambda: w.job.done, timeout=60_000)
        assert w.job.cancelled or w.job.done
        if w.job.cancelled:
            assert [l.name for l in viewer.layers] == names_before, stage
    assert not active_jobs()


def test_closing_the_widget_cancels_the_job(make_napari_viewer, qtbot, test_models, sample_path):
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    w.run()
    job = w.job
    qtbot.wait(200)
    w.deleteLater()
    del w
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert job.cancelled


def test_cohort_widget_two_cases_one_corrupt(make_napari_viewer, qtbot, test_models,
                                             sample_path, tmp_path):
    from napari_radiogen.napari.cohort_widget import CohortWidget
    cohort = tmp_path / "cohort"
    shutil.copytree(sample_path, cohort / "BraTS2021_00006")
    bad = cohort / "BraTS2021_99999"
    bad.mkdir()
    for s in ("t1", "t1ce", "t2", "flair"):
        (bad / f"BraTS2021_99999_{s}.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    viewer = make_napari_viewer(show=True)
    w = CohortWidget(viewer)
    w.out.setText(str(tmp_path / "out"))
    assert len(w.load_folder(str(cohort))) == 2
    w.step(+1)                                   # opens the first case
    assert any(l.name == "BraTS2021_00006 flair" for l in viewer.layers)
    w.step(+1)                                   # the corrupt one: an error, current stays
    assert any(l.name == "BraTS2021_00006 flair" for l in viewer.layers)
    w.analyzer = None
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer
    w.analyzer = Analyzer(AnalysisOptions(seg_model="test_seg3d", pred_model="test_mil",
                                          device="cpu", explain_tasks=()))
    job = w.analyze_all()
    qtbot.waitUntil(lambda: job.done, timeout=600_000)
    assert sorted(i.status for i in w.items) == ["done", "failed"]
    assert (tmp_path / "out" / "summary.csv").exists()
    assert "1 failed" in w.info.text()


def test_explain_widget_3d_screenshot(make_napari_viewer, qtbot, test_models, sample_path):
    from napari_radiogen.napari.explain_widget import ExplainWidget
    viewer = make_napari_viewer(show=True)
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = ExplainWidget(viewer)
    w.model.setCurrentText("test_mil")
    w.method.setCurrentText("attention")
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    layer = viewer.layers["BraTS2021_00006 idh attention"]
    assert layer.metadata["radiogen"]["model"] == "test_mil"
    assert "localisation" in layer.metadata["radiogen"]
    w.run()                                      # rerun replaces the layer
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert sum("idh attention" in l.name for l in viewer.layers) == 1
    w.show_3d()
    assert viewer.dims.ndisplay == 3
    shot = viewer.screenshot(canvas_only=True)
    assert shot.std() > 5, "blank 3D screenshot"
