"""The Explain dock widget with a real viewer and the small random test models: a result is
exported with the case it was computed on, a failed or cancelled run says why and offers no
export, a case closed during a run is said, the dock's text names the class a heatmap explains
(and never reads as the prediction), heatmaps of other tasks are hidden rather than added up,
and the 3D style follows the threshold slider and new heatmaps."""
import shutil

import numpy as np
import pytest

SAMPLE = "BraTS2021_00006"


@pytest.fixture
def no_flair_case(tmp_path, sample_path):
    """A second case (the sample's images under another id) without FLAIR, which the test
    slice model requires: explaining it fails."""
    d = tmp_path / "CASEB"
    d.mkdir()
    for f in sample_path.glob(f"{SAMPLE}_*.nii.gz"):
        if "_flair" not in f.name:
            shutil.copy(f, d / f.name.replace(SAMPLE, "CASEB"))
    return d


def _widget(viewer):
    from napari_radiogen.napari.explain_widget import ExplainWidget
    w = ExplainWidget(viewer)
    w.model.setCurrentText("test_mil")
    w.method.setCurrentText("attention")            # the quickest method on the CPU
    return w


def _run(w, qtbot, case_id=None, task=None):
    if case_id is not None:
        w.case_combo.setCurrentText(case_id)
    if task is not None:
        w.task.setCurrentText(task)
    w.run()
    job = w.job
    qtbot.waitUntil(lambda: job.done, timeout=600_000)
    return job


@pytest.fixture
def rendered(monkeypatch):
    """The export's renderer replaced by a recorder (which case and result it was given)."""
    import napari_radiogen.core.explain as ex
    calls = []

    def fake(case, res, png, gif=None, **kw):
        calls.append((case, res))
        return {"png": str(png), "gif": str(gif)}

    monkeypatch.setattr(ex, "render_explanation", fake)
    return calls


def test_a_failed_run_on_another_case_leaves_no_mixed_export(
        make_napari_viewer, qtbot, test_models, sample_path, no_flair_case, rendered, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(sample_path), plugin="napari-radiogen")
    viewer.open(str(no_flair_case), plugin="napari-radiogen")
    w = _widget(viewer)
    job = _run(w, qtbot, SAMPLE)
    assert job.error is None and w.export_btn.isEnabled()
    assert w.bar.value() == w.bar.maximum()

    w.case_combo.setCurrentText("CASEB")
    w.run()
    assert not w.export_btn.isEnabled(), "export offered while a run is in progress"
    job = w.job
    qtbot.waitUntil(lambda: job.done, timeout=600_000)
    assert job.error is not None
    # the failure is in the dock, and the bar does not read as done
    assert w.score.text().startswith("failed: ") and "flair" in w.score.text()
    assert w.bar.value() != w.bar.maximum()
    assert not w.export_btn.isEnabled(), "export offered after a failed run"
    # what an export renders is one pair: the shown result with the case it was computed on
    assert w.result.case_id == w._case.case_id == SAMPLE
    export = w.export_rendering(tmp_path / "out", n_frames=2)
    qtbot.waitUntil(lambda: export.done, timeout=60_000)
    assert export.error is None, export.error
    (case, res), = rendered
    assert case.case_id == res.case_id == SAMPLE

    # a cancelled run: said, no completion, no export
    w.case_combo.setCurrentText(SAMPLE)
    w.run()
    job = w.job
    job.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=600_000)
    assert job.cancelled and w.score.text().startswith("cancelled")
    assert w.bar.value() != w.bar.maximum() and not w.export_btn.isEnabled()


def test_a_case_closed_during_the_run_gets_its_heatmap_and_a_note(
        make_napari_viewer, qtbot, test_models, sample_path, no_flair_case):
    viewer = make_napari_viewer()
    viewer.open(str(sample_path), plugin="napari-radiogen")
    viewer.open(str(no_flair_case), plugin="napari-radiogen")
    w = _widget(viewer)
    w.case_combo.setCurrentText(SAMPLE)
    w.run()
    job = w.job
    for layer in [l for l in viewer.layers
                  if l.metadata.get("radiogen", {}).get("case_id") == SAMPLE]:
        viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: job.done, timeout=600_000)
    assert job.error is None, job.error
    assert f"{SAMPLE} idh attention" in viewer.layers            # nothing lost
    assert "closed during the run" in w.score.text()


def test_new_heatmaps_hide_the_others_and_keep_the_3d_style(
        make_napari_viewer, qtbot, test_models, sample_path, rendered, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = _widget(viewer)
    assert _run(w, qtbot, SAMPLE, "idh").error is None
    idh = viewer.layers[f"{SAMPLE} idh attention"]
    meta = idh.metadata["radiogen"]
    assert meta["model"] == "test_mil" and meta["requested_model"] == "test_mil"
    # the dock names the class the map explains; it does not read as the prediction
    text = w.score.text()
    assert text.startswith("heatmap for mutant") and "idh = mutant" not in text
    assert "[ground truth]" in text

    assert _run(w, qtbot, task="grade").error is None
    grade = viewer.layers[f"{SAMPLE} grade attention"]
    assert grade.visible and not idh.visible and idh in viewer.layers   # hidden, kept
    assert "1 other heatmap" in w.score.text() and "hidden" in w.score.text()

    # 3D: the slider sets the iso level of an iso-rendered heatmap
    w.show_3d()
    assert viewer.dims.ndisplay == 3 and str(grade.rendering) == "iso"
    # the axes arrows name the patient sides the layers' world axes (LPS, z y x) point to
    assert tuple(viewer.dims.axis_labels) == ("S", "P", "L") and viewer.axes.visible
    w.threshold.setValue(80)
    assert grade.iso_threshold == pytest.approx(0.8)
    assert tuple(grade.contrast_limits) == pytest.approx((0.8, 1.0))
    # a heatmap of another task arriving in 3D takes the 3D style
    assert _run(w, qtbot, task="codel_1p19q").error is None
    codel = viewer.layers[f"{SAMPLE} codel_1p19q attention"]
    assert str(codel.rendering) == "iso" and str(codel.blending) == "translucent"
    assert codel.iso_threshold == pytest.approx(0.8)
    assert [l.visible for l in (idh, grade, codel)] == [False, False, True]

    # an export adds its line under the score and warnings
    before = w.score.text()
    export = w.export_rendering(tmp_path / "out", n_frames=2)
    qtbot.waitUntil(lambda: export.done, timeout=60_000)
    assert export.error is None, export.error
    assert w.score.text().startswith(before.split("\n")[0])
    assert "heatmap mass within tumour + 5 mm" in w.score.text()
    assert "rendering written to" in w.score.text()


def test_patient_axes_keep_names_given_by_the_user(make_napari_viewer):
    """The axes are named only where napari's default names stand, in a 3D world."""
    from napari_radiogen.napari._common import mark_patient_axes
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 5)))
    assert not mark_patient_axes(viewer) and not viewer.axes.visible        # a 2D world
    viewer.layers.clear()
    viewer.add_image(np.zeros((3, 4, 5)))
    viewer.dims.axis_labels = ("t", "y", "x")
    assert not mark_patient_axes(viewer)
    assert tuple(viewer.dims.axis_labels) == ("t", "y", "x") and not viewer.axes.visible
    viewer.dims.axis_labels = ("-3", "-2", "-1")
    assert mark_patient_axes(viewer) and tuple(viewer.dims.axis_labels) == ("S", "P", "L")


def test_napari_3d_button_names_the_axes_once_a_case_is_open(make_napari_viewer):
    """The docks that work on a case (their case list) make napari's own 2D/3D switch name
    the axes after the patient's sides, as the Explain dock's *3D view* does, but only while a
    case is open."""
    from napari_radiogen.napari._common import CaseCombo
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 4, 5)), name="not a case")
    CaseCombo(viewer)
    viewer.dims.ndisplay = 3
    assert tuple(viewer.dims.axis_labels) != ("S", "P", "L") and not viewer.axes.visible
    viewer.dims.ndisplay = 2
    viewer.add_image(np.zeros((3, 4, 5)), name="c1 flair",
                     metadata={"radiogen": {"case_id": "c1", "sequence": "flair"}})
    viewer.dims.ndisplay = 3
    assert tuple(viewer.dims.axis_labels) == ("S", "P", "L") and viewer.axes.visible


def _result(**kw):
    from napari_radiogen.core.explain import ExplainResult
    from napari_radiogen.core.case import Geometry
    base = dict(case_id="c1", task="codel_1p19q", method="gradcam", model="predict_mil_roi",
                target_class="codel", heatmap=np.zeros((2, 3, 4), np.float32),
                geometry=Geometry(size=(4, 3, 2), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)),
                localisation=0.47,
                mask_source="ground truth")
    base.update(kw)
    return ExplainResult(**base)


def test_the_result_line_names_the_explained_class_not_the_prediction():
    from napari_radiogen.napari.explain_widget import result_text
    # an occlusion map carries the model's probability of the class it explains
    occ = _result(method="occlusion", model="predict_radiomics", localisation=1.0,
                  details={"probability": 0.25, "blocks": 4})
    text = result_text(occ)
    assert text.startswith("heatmap for codel (P = 0.25 by predict_radiomics, which predicts "
                           "non-codel)")
    assert "codel_1p19q = codel" not in text
    assert "by construction" in text                  # its score is its own segmentation's
    # a CAM carries no probability: it says it is the evidence for the class
    cam = result_text(_result(), requested_model="predict_ensemble")
    assert cam.startswith("heatmap for codel: the evidence for it")
    assert "by construction" not in cam
    assert "predict_mil_roi, the image network of predict_ensemble" in cam


def test_the_mask_label_is_worded_alike_for_every_model():
    from napari_radiogen.napari.explain_widget import mask_label
    mil = _result(mask_source="segmentation (seg_brats_attunet2mm)")
    roi = _result(mask_source="segmentation",
                  details={"window_source": "the tumour segmented by seg_brats_attunet2mm"})
    assert mask_label(mil) == mask_label(roi) == "segmentation (seg_brats_attunet2mm)"
    assert mask_label(_result(mask_source="segmentation"), seg_layer=True) \
        == "segmentation (the case's segmentation layer)"
    assert mask_label(_result()) == "ground truth"


def test_the_heatmap_layer_records_the_model_the_user_chose():
    from napari_radiogen.napari.explain_widget import heatmap_layer_data
    _, kw, kind = heatmap_layer_data(_result(), "c1", requested_model="predict_ensemble")
    rg = kw["metadata"]["radiogen"]
    assert kind == "image" and rg["model"] == "predict_mil_roi"     # the network explained
    assert rg["requested_model"] == "predict_ensemble"
    _, kw, _ = heatmap_layer_data(_result(), "c1")                   # as the Analyze widget
    assert "requested_model" not in kw["metadata"]["radiogen"]


def test_grade_classes_are_said_with_their_task():
    from napari_radiogen.napari.explain_widget import result_text
    text = result_text(_result(task="grade", target_class="3", method="occlusion",
                               details={"probability": 0.4}))
    assert text.startswith("heatmap for grade 3 (P = 0.40 by predict_mil_roi, which predicts "
                           "grade 2)")
    # an ensemble's map: the probability is its image network's, and the text names it
    ens = result_text(_result(details={"probability": 0.7, "probability_model":
                                       "predict_mil_roi"}), requested_model="predict_ensemble")
    assert ens.startswith("heatmap for codel (P = 0.70 by predict_mil_roi, which predicts codel)")


def test_a_heatmap_layer_starts_at_its_floor_and_can_be_lowered(make_napari_viewer):
    """Heatmaps are shown from HEATMAP_FLOOR (the faint values filling a model's window read as
    a finding), in the Explain and Analyze docks alike, and the slider's range still reaches 0."""
    from napari_radiogen.napari._common import HEATMAP_FLOOR, add_layer_data, build_layer
    from napari_radiogen.napari.explain_widget import heatmap_layer_data
    ld = heatmap_layer_data(_result(heatmap=np.linspace(0, 1, 24, dtype=np.float32)
                                    .reshape(2, 3, 4)), "c1")
    for layer in (build_layer(ld), add_layer_data(make_napari_viewer(), ld)):
        assert tuple(layer.contrast_limits) == (HEATMAP_FLOOR, 1.0)
        assert tuple(layer.contrast_limits_range) == (0.0, 1.0)


def test_the_localisation_mask_is_the_shown_segmentation_not_a_kept_edited_one(
        make_napari_viewer):
    """A rerun of the segmentation keeps an edited result hidden ("... (edited)") beside the
    new one: the Explain dock scores against the one shown."""
    from types import SimpleNamespace
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.napari._common import add_layer_data, labels_result_data
    from napari_radiogen.napari.explain_widget import ExplainWidget
    viewer = make_napari_viewer()
    g = Geometry(size=(4, 3, 2), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    old, new = np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 4), np.uint8)
    old[0, 0, 0], new[1, 2, 3] = 2, 2
    for arr, name, visible in ((old, "c1 segmentation (m) (edited)", False),
                               (new, "c1 segmentation (m)", True)):
        layer = add_layer_data(viewer, labels_result_data(arr, g, "c1", name))
        layer.visible = visible
    w = ExplainWidget(viewer)
    case = SimpleNamespace(reference="flair",
                           sequences={"flair": SimpleNamespace(array=np.zeros((2, 3, 4)))})
    assert np.array_equal(w._segmentation_labels("c1", case), new)


def _device_row(w):
    """The Device list's label and its row in the dock's form (the form that holds it)."""
    from qtpy.QtWidgets import QFormLayout
    for form in w.findChildren(QFormLayout):
        row, _ = form.getWidgetPosition(w.device)
        if row >= 0:
            return form.labelForField(w.device).text(), row, form.rowCount()
    raise AssertionError("the Device list is in no form of the dock")


def test_the_dock_has_the_predict_docks_device_list(make_napari_viewer, test_models):
    """The same helper's list as the Predict dock, labelled alike and placed alike (the form's
    last row, above the buttons); its choice is the dock's input."""
    from napari_radiogen.napari.predict_widget import PredictionWidget
    viewer = make_napari_viewer()
    w, p = _widget(viewer), PredictionWidget(viewer)
    items = [w.device.itemText(i) for i in range(w.device.count())]
    assert items == [p.device.itemText(i) for i in range(p.device.count())]
    assert items == ["auto", "cpu", "cuda"] and w.device.currentText() == "auto"
    assert w.device.toolTip() == p.device.toolTip()
    label, row, rows = _device_row(w)
    p_label, p_row, p_rows = _device_row(p)
    assert label == p_label == "Device"
    assert (row, p_row) == (rows - 1, p_rows - 1)
    assert w.inputs().device == "auto"
    w.device.setCurrentText("cpu")
    assert w.inputs().device == "cpu"


def test_the_device_choice_reaches_explain_and_is_named_after_the_run(
        make_napari_viewer, qtbot, test_models, sample_path, monkeypatch):
    """The worker's explain() gets the Device list's choice (not its default "auto"), and the
    dock's text names the device the run used, as the Predict dock's status does."""
    import napari_radiogen.napari.explain_widget as ew
    seen = []
    real = ew.explain

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device", "<not passed>"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ew, "explain", spy)
    viewer = make_napari_viewer()
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = _widget(viewer)
    w.device.setCurrentText("cpu")
    job = _run(w, qtbot, SAMPLE, "idh")
    assert job.error is None, job.error
    assert seen == ["cpu"]
    made = w.score.text().split("\n")[1]
    assert made == "idh; test_mil; attention; on cpu"


def test_the_result_text_names_the_device_the_result_ran_on(monkeypatch):
    """The line names where the result ran (``ExplainResult.device``: the CPU after a GPU
    out-of-memory fallback, whatever the Device list said); for a result that does not say,
    the device the choice stands for (auto: the GPU when there is one), by the helper the
    Predict dock's status uses; neither, nothing said."""
    import napari_radiogen.core.models as models
    from napari_radiogen.napari import _common, predict_widget
    from napari_radiogen.napari.explain_widget import result_text
    assert predict_widget.on_device is _common.on_device       # one helper for both docks
    monkeypatch.setattr(models, "resolve_device",
                        lambda d: {"auto": "cuda", "cpu": "cpu"}[d])
    assert result_text(_result(device="cuda"), device="auto").split("\n")[1] \
        == "codel_1p19q; predict_mil_roi; gradcam; on cuda"
    assert result_text(_result(device="cpu"), device="auto").split("\n")[1] \
        == "codel_1p19q; predict_mil_roi; gradcam; on cpu"            # it fell back
    assert result_text(_result(device=None), device="auto").split("\n")[1] \
        == "codel_1p19q; predict_mil_roi; gradcam; on cuda"
    assert result_text(_result(device=None), device="cpu").split("\n")[1].endswith("; on cpu")
    assert result_text(_result(device=None)).split("\n")[1] \
        == "codel_1p19q; predict_mil_roi; gradcam"
