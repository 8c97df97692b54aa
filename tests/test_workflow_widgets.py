"""The radiologist's workflow through the widgets: Analyze (stage-by-stage layers, the Qt main
thread keeps running while the models do, results on the case they were started from, cancel
leaves no half-made layers), the Cohort browser (two cases, one corrupt), and Explain in 3D.

How long the main thread stalls and how much napari adds to the headless run are speed targets:
they are measured by ``scripts/bench_viewer.py``, not asserted here."""
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_radiogen.napari.diagnostics import EventLoopMeter


def _analyze_widget(viewer, sample_path):
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    w.seg_model.setCurrentText("test_seg3d")
    w.pred_model.setCurrentText("test_mil")
    w.device.setCurrentText("cpu")
    return w


def test_analyze_widget_full_run_keeps_the_ui_alive(make_napari_viewer, qtbot, test_models,
                                                    sample_path):
    """The models run on a worker: the Qt event loop keeps ticking during the analysis (no gap
    outside result deliveries comes near the length of the job, as it would if a model ran in the
    main thread), the stages arrive as layers on the case's grid, and a rerun replaces them."""
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    n_before = len(viewer.layers)
    spans = []
    orig = w._stage_done
    main_thread = threading.get_ident()
    worker_threads = set()
    analyzer = w._analyzer(w.inputs())       # the run reuses this analyzer
    analyze = analyzer.analyze

    def spy(*a, **k):                        # records the thread the analysis runs in
        worker_threads.add(threading.get_ident())
        return (yield from analyze(*a, **k))

    analyzer.analyze = spy

    def timed(item):
        t = time.perf_counter()
        orig(item)
        spans.append((t, time.perf_counter() + 0.1))

    w._stage_done = timed
    for _ in range(2):                       # first run: new layers; rerun: in-place updates
        spans.clear()
        meter = EventLoopMeter().start()
        t0 = time.perf_counter()
        w.run()
        qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
        elapsed = time.perf_counter() - t0
        meter.stop()
        ticks = len(meter.gaps)
        outside = meter.worst_outside(spans)
        assert ticks >= 10, f"the event loop ticked {ticks} times in {elapsed:.1f} s"
        assert outside < 0.25 * elapsed, f"main thread stalled {outside:.2f} s of {elapsed:.2f} s"
    assert w.analyzer is analyzer
    assert worker_threads and main_thread not in worker_threads
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
    """A cancelled run leaves the layers as they were before it: on a fresh case no result
    layer, after a finished run that run's results, untouched (a rerun updates result layers
    in place; its cancel puts the previous data back)."""
    from napari_radiogen.napari.workers import active_jobs
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    # the stages as the job delivers them (the dock's status text shows them coalesced, up to
    # PROGRESS_INTERVAL late, by which time a fast stage may be over)
    seen = []
    show = w._progress
    w._progress = lambda p: (seen.append(p.stage), show(p))
    cancelled = 0
    for stage in ("segment", "predict", "explain"):
        seen.clear()
        before = [(l.name, l.data, dict(l.metadata)) for l in viewer.layers]
        w.run()
        qtbot.waitUntil(lambda: stage in seen or w.job.done, timeout=600_000)
        w.cancel()
        qtbot.waitUntil(lambda: w.job.done, timeout=60_000)
        if w.job.cancelled:
            cancelled += 1
            after = [(l.name, l.data, dict(l.metadata)) for l in viewer.layers]
            assert [a[0] for a in after] == [b[0] for b in before], stage
            for (name, data, meta), (_, data0, meta0) in zip(after, before):
                assert data is data0 and meta == meta0, (stage, name)
    assert cancelled >= 1, "no run was actually cancelled"
    assert not active_jobs()


def test_cancelled_rerun_keeps_the_previous_results(make_napari_viewer, qtbot, test_models,
                                                    sample_path):
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert not w.job.cancelled and w.job.error is None
    results = {l.name: (l, l.data) for l in viewer.layers
               if l.metadata.get("radiogen", {}).get("result")}
    assert any("segmentation (" in n for n in results) and any("gradcam" in n for n in results)
    first, first_text = w.result, w.results.toPlainText()
    assert first is not None and w.export_btn.isEnabled() and "idh" in first_text
    stage_done = w._stage_done
    seg_name = next(n for n in results if "segmentation (" in n)
    seg = viewer.layers[seg_name]
    computed = np.array(seg.data)
    seg.data[0, 0, 0] = 2 if computed[0, 0, 0] != 2 else 1      # the user edits the result
    edited = np.array(seg.data)

    def cancel_after_the_segmentation(item):
        stage_done(item)
        if getattr(item, "stage", None) == "segment":
            # the rerun has just written its segmentation into the layer (in place)
            np.testing.assert_array_equal(viewer.layers[seg_name].data, computed)
            w.cancel()

    w._stage_done = cancel_after_the_segmentation
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=60_000)
    if not w.job.cancelled:
        pytest.skip("the rerun finished before Cancel reached it")
    for name, (layer, data) in results.items():
        assert name in viewer.layers and viewer.layers[name] is layer
        assert layer.data is data, name
    np.testing.assert_array_equal(seg.data, edited)           # the user's edit is back
    # and the previous run's result stays readable and exportable beside its layers
    assert w.result is first and w.results.toPlainText() == first_text
    assert w.export_btn.isEnabled()


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_stage_delivered_around_cancel_leaves_no_layer(make_napari_viewer, test_models,
                                                        sample_path, monkeypatch, when):
    """A stage result that reaches the dock after Cancel (queued before it) adds nothing, and
    one whose job ends, cancelled, while its layer is being built (were Qt events processed in
    there) is taken back."""
    from types import SimpleNamespace

    import napari_radiogen.napari.analyze_widget as aw
    from napari_radiogen.core.pipeline import StageResult
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    names_before = [l.name for l in viewer.layers]
    from napari_radiogen.core.io.cases import load_case
    case = load_case(sample_path)
    vol = case.sequences["flair"]
    from napari_radiogen.core.explain import ExplainResult
    heat = ExplainResult(case.case_id, "idh", "gradcam", "test_mil", "mutant",
                         np.zeros(vol.array.shape, np.float32), vol.geometry)
    res = StageResult("explain", case.case_id, heat)
    item = aw.PreparedStage(res, aw.stage_layers(res, case.case_id))
    assert item.layers                          # the stage does carry a layer
    job = SimpleNamespace(cancelled=when == "before", error=None, done=when == "before")
    w.job = job
    import napari_radiogen.napari._common as common
    real_add = common.add_layer_data

    def add_while_the_job_ends(*a, **k):
        job.cancelled = job.done = True       # Cancel, then the job's end, handled re-entrantly
        w._finished(job)
        return real_add(*a, **k)

    monkeypatch.setattr(common, "add_layer_data", add_while_the_job_ends)
    w._stage_done(item)
    assert [l.name for l in viewer.layers] == names_before
    assert w._run_layers.names == []


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
    job = w.step(+1)                             # opens the first case (in a worker)
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert any(l.name == "BraTS2021_00006 flair" for l in viewer.layers)
    job = w.step(+1)                             # the corrupt one: an error, current stays
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert any(l.name == "BraTS2021_00006 flair" for l in viewer.layers)
    # its list item says why it could not be opened (not only a passing notification)
    assert w.list.item(1).toolTip() and "99999" in w.list.item(1).toolTip()
    w.analyzer = None
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer
    w.analyzer = Analyzer(AnalysisOptions(seg_model="test_seg3d", pred_model="test_mil",
                                          device="cpu", explain_tasks=()))
    job = w.analyze_all()
    qtbot.waitUntil(lambda: job.done, timeout=600_000)
    qtbot.wait(200)                              # late queued updates must not change the summary
    assert sorted(i.status for i in w.items) == ["done", "failed"]
    assert (tmp_path / "out" / "summary.csv").exists()
    assert "1 failed" in w.info.text()
    # the analysed case opens with its results from the output folder, named as the Segment
    # widget names its own, on the case's grid; the failed one says why in the panel
    # the case shown takes its results once the batch has made them (a quiet reopen)
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    seg = viewer.layers["BraTS2021_00006 segmentation (test_seg3d)"]
    flair = viewer.layers["BraTS2021_00006 flair"]
    assert seg.metadata["radiogen"]["result"] and seg.metadata["radiogen"]["cohort"]
    assert seg.data.shape == flair.data.shape and np.allclose(seg.scale, flair.scale)
    # opening it again says so, and updates the layers in place (no new napari layers)
    before = {id(l) for l in viewer.layers}
    job = w.open_case(0)
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert "with its results" in w.info.text()
    assert {id(l) for l in viewer.layers} == before
    ids = {id(l) for l in viewer.layers}
    job = w.open_case(0)
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert {id(l) for l in viewer.layers} == ids
    job = w.open_case(1)
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert "could not be opened" in w.info.text() and "99999" in w.info.text()


def test_cohort_widget_writes_beside_the_folder_and_needs_a_folder(make_napari_viewer,
                                                                   monkeypatch, tmp_path):
    """The default output folder is beside the cohort (inside, its results would be listed
    as cases next time); an empty folder field is a message, not the working directory."""
    import napari.utils.notifications as notes

    from napari_radiogen.napari.cohort_widget import CohortWidget
    shown = []
    monkeypatch.setattr(notes, "show_error", shown.append)
    monkeypatch.chdir(tmp_path)
    viewer = make_napari_viewer()
    w = CohortWidget(viewer)
    w.folder.setText(str(tmp_path / "cohort"))
    assert w.inputs().out_dir == str(tmp_path / "cohort-radiogen")
    w.folder.setText("")
    assert w.analyze_all() is None and shown == ["choose a cohort folder first"]
    assert list(tmp_path.iterdir()) == []               # nothing written where we stand


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
    # the heatmap layer came built from the worker: the job's result carried the same object
    from napari_radiogen.napari._common import PreparedResult
    assert isinstance(w.job.result, PreparedResult) and w.job.result.built is layer
    w.run()                                      # rerun updates the layer in place
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert sum("idh attention" in l.name for l in viewer.layers) == 1
    assert viewer.layers["BraTS2021_00006 idh attention"] is layer
    assert w.job.result.built is None
    w.show_3d()
    assert viewer.dims.ndisplay == 3
    shot = viewer.screenshot(canvas_only=True)
    assert shot.std() > 5, "blank 3D screenshot"
    # the rendering export says where it wrote (it ran silently in the background)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        job = w.export_rendering(d, n_frames=2)
        qtbot.waitUntil(lambda: job.done, timeout=600_000)
        assert job.error is None, job.error
        assert "rendering written to" in w.score.text() and ".png" in w.score.text()
        assert any(f.endswith(".png") for f in os.listdir(d))


def test_explain_widget_scores_against_the_case_segmentation_layer(make_napari_viewer, qtbot,
                                                                   test_models, sample_path):
    """A case without expert labels: the localisation is scored against the segmentation
    result layer of that case in the viewer (not re-segmented)."""
    import copy

    from napari_radiogen.napari._common import add_layer_data, labels_result_data
    from napari_radiogen.napari.explain_widget import ExplainWidget
    viewer = make_napari_viewer()
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = ExplainWidget(viewer)
    case = copy.copy(w.case_combo.case())
    truth = case.labels.array
    case.labels = None                                   # as if no expert mask came with it
    assert w._segmentation_labels(case.case_id, case) is None
    add_layer_data(viewer, labels_result_data(truth, case.geometry, case.case_id,
                                              f"{case.case_id} segmentation (test)"))
    np.testing.assert_array_equal(w._segmentation_labels(case.case_id, case) > 0, truth > 0)
    w.case_combo.case_or_notify = lambda: case
    w.model.setCurrentText("test_mil")
    w.method.setCurrentText("attention")
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert w.job.error is None
    meta = viewer.layers[f"{case.case_id} idh attention"].metadata["radiogen"]
    assert meta["mask_source"] == "segmentation" and meta["localisation"] is not None


def test_explain_widget_offers_each_model_its_methods(make_napari_viewer, qtbot, test_models,
                                                     tmp_path):
    """The radiomics model (no image network) is explained by occlusion only; the slice model
    keeps its four methods; the occlusion map lands on the pack it was started from."""
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.napari.explain_widget import ExplainWidget
    from predict_helpers import write_pack
    viewer = make_napari_viewer()
    pack = write_pack(tmp_path / "PH_0004.h5", make_pack_phantom(seed=4, n_slices=12))
    viewer.open(str(pack), plugin="napari-radiogen")
    w = ExplainWidget(viewer)
    w.model.setCurrentText("test_mil")
    assert [w.method.itemText(i) for i in range(w.method.count())] == [
        "gradcam", "gradcam++", "layercam", "attention"]
    w.method.setCurrentText("attention")
    w.model.setCurrentText("predict_radiomics")
    assert [w.method.itemText(i) for i in range(w.method.count())] == ["occlusion"]
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert w.job.error is None
    layer = viewer.layers["PH_0004 idh occlusion"]
    meta = layer.metadata["radiogen"]
    assert meta["model"] == "predict_radiomics" and meta["method"] == "occlusion"
    assert layer.data.shape == viewer.layers["PH_0004 flair"].data.shape


@pytest.mark.parametrize("widget", ["analyze", "explain"])
def test_run_without_a_case_says_why_and_starts_nothing(make_napari_viewer, test_models,
                                                        monkeypatch, widget):
    import napari.utils.notifications as notes
    shown = []
    monkeypatch.setattr(notes, "show_error", shown.append)
    viewer = make_napari_viewer()
    if widget == "analyze":
        from napari_radiogen.napari.analyze_widget import AnalyzeWidget as W
    else:
        from napari_radiogen.napari.explain_widget import ExplainWidget as W
    w = W(viewer)
    w.run()
    assert w.job is None
    assert shown and "no case is open" in shown[0]


def test_result_layers_are_built_in_the_worker_and_keep_the_selection(
        make_napari_viewer, qtbot, test_models, sample_path):
    """The stage results reach the main thread with their layer data ready (built in the
    worker), and adding the result layers leaves the user's layer selection alone."""
    from napari_radiogen.napari.analyze_widget import PreparedStage
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    flair = viewer.layers["BraTS2021_00006 flair"]
    viewer.layers.selection.active = flair
    main_thread = threading.get_ident()
    built_in = set()
    import napari_radiogen.napari.analyze_widget as aw
    stage_layers = aw.stage_layers

    def spy(item, cid, **kw):
        built_in.add(threading.get_ident())
        return stage_layers(item, cid, **kw)

    delivered = []
    orig = w._stage_done
    w._stage_done = lambda item: (delivered.append(item), orig(item))
    aw.stage_layers = spy
    try:
        w.run()
        qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    finally:
        aw.stage_layers = stage_layers
    assert w.job.error is None
    assert built_in and main_thread not in built_in
    prepared = [d for d in delivered if isinstance(d, PreparedStage)]
    assert {p.stage for p in prepared} >= {"segment", "explain"}
    seg = next(l for l in viewer.layers if "segmentation (test_seg3d)" in l.name)
    assert seg.data.dtype == np.uint8
    # the new layers are the objects the worker built (the main thread only inserted them)
    built = {b.name: b for p in prepared for b in p.built if b is not None}
    assert built[seg.name] is seg
    heat = next(p for p in prepared if p.stage == "explain").built[0]
    assert heat is not None and viewer.layers[heat.name] is heat
    assert viewer.layers.selection.active is flair
    assert list(viewer.layers.selection) == [flair]


def test_analyze_progress_is_coalesced_not_lost(make_napari_viewer, qtbot, test_models,
                                                sample_path, monkeypatch):
    """The dock's progress goes through the job's throttle with stage changes coalesced too
    (each update repaints the window): a burst across stages shows the first update at once
    and the newest one a moment later; the ones in between are skipped, the last is never
    lost."""
    from napari_radiogen.core.progress import Progress, check
    import napari_radiogen.napari.analyze_widget as aw
    viewer = make_napari_viewer()
    w = _analyze_widget(viewer, sample_path)
    shown = []
    orig = w.stage.setText
    w.stage.setText = lambda t: (shown.append(t), orig(t))

    def burst(case, cancel=None):
        yield Progress("segment", 2, 5, "loading model")
        yield Progress("segment", 2, 5, "preparing")
        yield Progress("predict", 3, 5, "running the network")
        for _ in range(60):                       # then a long step with no progress
            check(cancel)
            time.sleep(0.01)

    monkeypatch.setattr(aw.Analyzer, "analyze", lambda self, case, cancel=None:
                        burst(case, cancel))
    w.run()
    qtbot.waitUntil(lambda: len(shown) >= 2 or w.job.done, timeout=5000)
    assert shown[:2] == ["segment: loading model", "predict: running the network"]
    assert w.bar.value() == 3
    w.cancel()
    qtbot.waitUntil(lambda: w.job.done, timeout=5000)


def test_analysis_segmentation_layer_names_its_synthetic_inputs():
    """The Analyze widget's segmentation layer is the Segment widget's: its metadata lists the
    synthetic inputs as sequence names (not the warning sentences), and a 2D slice model's
    labels are named."""
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.core.pipeline import StageResult
    from napari_radiogen.core.segment import SegResult
    from napari_radiogen.napari.analyze_widget import stage_layers
    from napari_radiogen.napari.layers import radiogen_meta

    geo = Geometry(size=(6, 5, 4), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 2:4, 2:4] = 1
    res = SegResult("c1", labels, geo, {"WT": 0.1}, "m", kind="slices",
                    warnings=["synthetic input(s) used: t1ce (generated, not acquired)"],
                    synthetic_inputs=["t1ce"])
    (data, kw, kind), = stage_layers(StageResult("segment", "c1", res), "c1")
    meta = radiogen_meta(kw)
    assert kind == "labels" and kw["name"] == "c1 segmentation (m) from synthetic t1ce"
    assert meta["synthetic_inputs"] == ["t1ce"]
    assert meta["label_names"] == {0: "background", 1: "FLAIR abnormality"}
    np.testing.assert_array_equal(data, labels)
    assert data is not labels                 # the layer owns its array
    res.synthetic_inputs = []
    (_, kw, _), = stage_layers(StageResult("segment", "c1", res), "c1")
    assert radiogen_meta(kw)["synthetic_inputs"] == [] and kw["name"] == "c1 segmentation (m)"
    # the heatmap layer is the Explain widget's: its synthetic inputs and provenance
    from napari_radiogen.core.explain import ExplainResult
    ex = ExplainResult("c1", "idh", "gradcam", "m", "mutant", labels.astype(np.float32), geo,
                       localisation=0.5, mask_source="segmentation", synthetic_inputs=["t2"])
    (hdata, hkw, hkind), = stage_layers(StageResult("explain", "c1", ex), "c1")
    hmeta = radiogen_meta(hkw)
    assert hkind == "image" and hkw["name"] == "c1 idh gradcam"
    assert hmeta["synthetic_inputs"] == ["t2"] and hmeta["mask_source"] == "segmentation"
    assert hmeta["task"] == "idh" and hmeta["localisation"] == 0.5


def test_analysis_of_several_tasks_shows_one_heatmap_and_names_the_labels(
        make_napari_viewer, qtbot, test_models, sample_path):
    """Heatmaps of several tasks stacked (additive) hide the anatomy: only the first task's
    new heatmap layer is shown, the others are in the layer list; the results panel names the
    label volumes as the Segment widget does."""
    viewer = make_napari_viewer(show=True)
    w = _analyze_widget(viewer, sample_path)
    for t, box in w.task_boxes.items():
        box.setChecked(t in ("idh", "grade"))
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert w.job.error is None and not w.job.cancelled
    heat = {l.name.split()[-2]: l for l in viewer.layers if l.name.endswith(" gradcam")}
    assert set(heat) == {"idh", "grade"}
    assert heat["idh"].visible and not heat["grade"].visible
    text = w.results.toPlainText()
    assert "label 1 necrotic/non-enh. core" in text and "label_1" not in text


def _cohort_browser(viewer, folder, out):
    """A cohort browser on the sub-folders of ``folder`` (all pending), writing into ``out``,
    whose analyzer is never used (the tests replace analyze_cohort)."""
    from napari_radiogen.napari import cohort_widget as cw
    w = cw.CohortWidget(viewer)
    w.cases = sorted(folder.iterdir())
    w.status = {str(c): "pending" for c in w.cases}
    w.analyzer = object()
    w.out.setText(str(out))
    return w


def test_cohort_widget_cancel_marks_the_cases_not_reached_and_folder_errors_stay(
        make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """Cancelling "Analyze all" leaves the cases it did not reach marked cancelled, not
    pending; a folder that cannot be listed says why in the panel (not only in a toast)."""
    import napari.utils.notifications as notes

    from napari_radiogen.core import pipeline
    from napari_radiogen.core.progress import check
    from napari_radiogen.napari import cohort_widget as cw
    monkeypatch.setattr(notes, "show_error", lambda *_: None)
    for i in range(3):
        (tmp_path / "cohort" / f"P{i}").mkdir(parents=True)

    def slow_cohort(cases, out, *, cancel=None, **_):
        item = pipeline.CohortItem(path=str(cases[0]), case_id="P0", status="done")
        yield item
        while True:                      # the second case never ends until cancelled
            check(cancel)
            yield pipeline.Progress("cohort", 1, len(cases), "P1")
            time.sleep(0.01)
    monkeypatch.setattr(cw, "analyze_cohort", slow_cohort)
    w = _cohort_browser(make_napari_viewer(), tmp_path / "cohort", tmp_path / "out")
    job = w.analyze_all()
    qtbot.waitUntil(lambda: bool(w.items), timeout=10_000)
    w.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=10_000)
    marks = [w.list.item(i).text().split()[0] for i in range(3)]
    assert marks == [cw.STATUS_MARK["done"], cw.STATUS_MARK["cancelled"],
                     cw.STATUS_MARK["cancelled"]]
    assert "cancelled after 1 of 3" in w.info.text()
    w.load_folder(str(tmp_path / "nowhere"))
    assert w.cases == [] and "nowhere" in w.info.text()


def test_cohort_widget_shows_a_case_that_finished_as_cancel_was_pressed(
        make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """A case whose results were written just as Cancel was pressed: its item reaches no
    panel (the job drops what arrives after a cancel), but the summary the run wrote as it
    stopped has it done, and the panel says so."""
    from napari_radiogen.core import pipeline
    from napari_radiogen.napari import cohort_widget as cw
    for i in range(3):
        (tmp_path / "cohort" / f"P{i}").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    # an earlier run's summary, which this run's cancel must not be read from
    pipeline._write_summary(out, [pipeline.CohortItem(path="x", case_id=f"P{i}", status="done")
                                  for i in range(3)])
    os.utime(out / "summary.csv", (time.time() - 60, time.time() - 60))

    def cohort(cases, out_dir, *, cancel=None, **_):
        while not cancel.cancelled:          # P0's analysis, until Cancel is pressed
            time.sleep(0.01)
        items = [pipeline.CohortItem(path=str(cases[0]), case_id="P0", status="done",
                                     summary={"volume_WT_ml": 12.5})]
        items += [pipeline.CohortItem(path=str(c), case_id=c.name, status="not analysed")
                  for c in cases[1:]]
        pipeline._write_summary(Path(out_dir), items)
        yield items[0]                        # dropped: the job was cancelled
    monkeypatch.setattr(cw, "analyze_cohort", cohort)
    w = _cohort_browser(make_napari_viewer(), tmp_path / "cohort", out)
    job = w.analyze_all()
    qtbot.wait(200)
    w.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=10_000)
    assert job.cancelled
    marks = [w.list.item(i).text().split()[0] for i in range(3)]
    assert marks == [cw.STATUS_MARK["done"], cw.STATUS_MARK["cancelled"],
                     cw.STATUS_MARK["cancelled"]]
    assert "cancelled after 1 of 3" in w.info.text()
    assert [i.summary for i in w.items] == [{"volume_WT_ml": "12.5"}]
    # cancelled before the run wrote anything: the earlier run's summary is not taken
    pipeline._write_summary(out, [pipeline.CohortItem(path="x", case_id=f"P{i}", status="done")
                                  for i in range(3)])
    os.utime(out / "summary.csv", (time.time() - 60, time.time() - 60))

    def nothing_written(cases, out_dir, *, cancel=None, **_):
        while not cancel.cancelled:
            time.sleep(0.01)
        yield from ()
    monkeypatch.setattr(cw, "analyze_cohort", nothing_written)
    w.status = {str(c): "pending" for c in w.cases}
    job = w.analyze_all()
    qtbot.wait(200)
    w.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=10_000)
    assert "cancelled after 0 of 3" in w.info.text()
    assert all(w.status[str(c)] == "cancelled" for c in w.cases)


def test_cohort_reuses_a_layer_only_where_it_sits_the_same(monkeypatch):
    """A layer of the previous case (or a rerun's result layer) takes new data in place only
    when the whole placement is the same: same shape, spacing and origin but another rotation
    is a new layer (an in-place update kept the old rotation, 22 mm off)."""
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.napari._common import same_placement
    from napari_radiogen.napari.layers import image_layer_data
    from napari_radiogen.core.case import Volume
    g = Geometry(size=(8, 8, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    c, s = np.cos(np.radians(4)), np.sin(np.radians(4))
    tilted = Geometry(size=(8, 8, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                      direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    vol = Volume(np.zeros((6, 8, 8), np.float32), g)
    _, kw, _ = image_layer_data(vol, case_id="A", sequence="flair")

    class FakeLayer:
        metadata = kw["metadata"]
        scale, translate = kw["scale"], kw["translate"]
    _, kw_same, _ = image_layer_data(Volume(np.ones((6, 8, 8), np.float32), g), case_id="B",
                                     sequence="flair")
    _, kw_tilt, _ = image_layer_data(Volume(np.ones((6, 8, 8), np.float32), tilted),
                                     case_id="B", sequence="flair")
    assert same_placement(FakeLayer, kw_same)
    assert not same_placement(FakeLayer, kw_tilt)
