"""PredictionWidget: probabilities with uncertainty, the attention plot, click -> slice, the
missing-sequence message."""
from __future__ import annotations

import pytest

from predict_helpers import TINY, make_tiny_model


@pytest.fixture
def widget_and_viewer(make_napari_viewer):
    make_tiny_model()
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.napari.layers import case_to_layer_data
    from napari_radiogen.napari.predict_widget import PredictionWidget
    viewer = make_napari_viewer()
    case = make_pack_phantom(seed=0, n_slices=14, case_id="PH0")
    for data, kw, kind in case_to_layer_data(case, source="PH0.h5"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    w = PredictionWidget(viewer)
    w.model_combo.setCurrentText(TINY)
    return w, viewer


def _run(w, qtbot):
    job = w.run()
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    return job


def test_widget_shows_probabilities_and_attention_plot(widget_and_viewer, qtbot):
    w, viewer = widget_and_viewer
    assert w.case_combo.currentText() == "PH0"
    assert w.age_spin.isEnabled()            # the tiny model fuses age/sex
    # nothing entered: the case's own clinical table decides (said as such, not "unknown")
    assert w.inputs().age is None and w.inputs().sex is None
    assert w.age_spin.specialValueText() == w.sex_combo.currentText() == "from the case"
    w.age_spin.setValue(55)
    w.sex_combo.setCurrentText("F")
    _run(w, qtbot)
    assert w.result is not None and w.result_case_id == "PH0"
    p = w.result.tasks["idh"]["mutant"]
    assert w.task_labels["idh"].text().startswith(f"{p:.2f} \u00b1")
    assert "CV AUC 0.50" in w.task_labels["idh"].text()     # from the card
    assert all(w.task_labels[t].text() != "-" for t in ("codel_1p19q", "grade"))
    lines = w.ax.get_lines()
    assert len(lines) == 3 and len(lines[0].get_xdata()) == 14
    assert "done" in w.status.text()
    assert w.canvas.minimumHeight() >= 150     # the plot keeps a readable height in a dock


def test_click_on_plot_moves_viewer_slice(widget_and_viewer, qtbot):
    from matplotlib.backend_bases import MouseEvent
    w, viewer = widget_and_viewer
    _run(w, qtbot)
    layer = viewer.layers["PH0 flair"] if "PH0 flair" in viewer.layers else [
        ly for ly in viewer.layers if ly.metadata["radiogen"].get("sequence") == "flair"][0]
    w.canvas.draw()
    x, y = w.ax.transData.transform((9, 0.0))
    ev = MouseEvent("button_press_event", w.canvas, x, y, button=1)
    if ev.inaxes is None:          # an unshown canvas may not resolve the axes: set them
        ev.inaxes, ev.xdata, ev.ydata = w.ax, 9.2, 0.0
    assert ev.inaxes is w.ax and abs(ev.xdata - 9) < 0.5
    w._on_click(ev)
    z = layer.world_to_data(viewer.dims.point)[0]
    assert int(round(z)) == 9
    w.go_to_slice(3)
    assert int(round(layer.world_to_data(viewer.dims.point)[0])) == 3


def test_widget_missing_sequence_message(widget_and_viewer, qtbot):
    w, viewer = widget_and_viewer
    for ly in list(viewer.layers):
        if ly.metadata.get("radiogen", {}).get("sequence") == "flair":
            viewer.layers.remove(ly)
    _run(w, qtbot)
    assert w.result is None
    assert "missing sequence(s): flair" in w.status.text()


def test_widget_runs_the_segment_then_classify_model(widget_and_viewer, qtbot):
    """predict_radiomics: probabilities with the card's CV AUC, the clinical inputs used, and the
    plot says there is no slice attention instead of staying empty."""
    w, viewer = widget_and_viewer
    w.model_combo.setCurrentText("predict_radiomics")
    assert w.model_combo.currentText() == "predict_radiomics"
    assert w.age_spin.isEnabled()
    w.age_spin.setValue(61)
    _run(w, qtbot)
    assert w.result is not None and w.result.model == "predict_radiomics"
    assert w.result.features["age"] == 61
    auc = w.result.card["validated"]["idh"]["auc_mean"]
    assert f"CV AUC {auc:.2f}" in w.task_labels["idh"].text()
    assert not w.ax.get_lines()
    assert any("no slice attention" in t.get_text() for t in w.ax.texts)
    assert "seg_lgg_segresnet2d" in "".join(t.get_text() for t in w.ax.texts)


def test_plot_has_only_the_scored_slices_and_a_rerun_clears_old_results(widget_and_viewer, qtbot,
                                                                        monkeypatch):
    """The attention plot draws the slices the model scored (not zeros in between); a new run
    starts from empty labels (a failed run shows no earlier probabilities); no case: a
    message, no job."""
    import numpy as np
    w, viewer = widget_and_viewer
    _run(w, qtbot)
    res = w.result
    res.slice_index = [1, 4, 7, 10]                  # as for a volume subsampled in z
    res.attention = {s: [0.0] * 14 for s in res.attention}
    for s in res.attention:
        for i in res.slice_index:
            res.attention[s][i] = 0.25
    w.plot_attention(res)
    xs = w.ax.get_lines()[0].get_xdata()
    assert list(xs) == [1, 4, 7, 10] and np.all(w.ax.get_lines()[0].get_ydata() == 0.25)

    for ly in list(viewer.layers):                   # the next run fails (no FLAIR)
        if ly.metadata.get("radiogen", {}).get("sequence") == "flair":
            viewer.layers.remove(ly)
    _run(w, qtbot)
    assert w.result is None and all(lab.text() == "-" for lab in w.task_labels.values())
    assert w.risk_label.text() == "-"

    import napari.utils.notifications as notes
    shown = []
    monkeypatch.setattr(notes, "show_error", shown.append)
    for ly in list(viewer.layers):
        viewer.layers.remove(ly)
    assert w.run() is None and shown


def test_every_widget_case_of_a_pack_carries_its_clinical_row(make_napari_viewer, tmp_path):
    """A pack's age/sex come from the clinical.csv beside it for any widget's case (the
    Explain widget used the training mean age where the Predict widget read the table)."""
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.napari._common import CaseCombo
    from napari_radiogen.napari.layers import case_to_layer_data
    viewer = make_napari_viewer()
    case = make_pack_phantom(seed=0, n_slices=8, case_id="PH7")
    (tmp_path / "clinical.csv").write_text("patient_id,age_at_initial_pathologic,gender\n"
                                           "PH1,30,1\nPH7,63,2\n")
    for data, kw, kind in case_to_layer_data(case, source=str(tmp_path / "PH7.h5")):
        getattr(viewer, f"add_{kind}")(data, **kw)
    c = CaseCombo(viewer).case()
    assert c.kind == "slices"
    assert c.clinical["age_at_initial_pathologic"] == 63 and c.clinical["gender"] == 2


def test_an_ensembles_attention_plot_names_its_image_member(widget_and_viewer, qtbot):
    """A late fusion has no slice attention of its own: the plot shows its image member's and
    its title says whose; a plain MIL model's plot keeps its label (no title)."""
    from predict_helpers import make_ensemble
    w, viewer = widget_and_viewer
    make_ensemble("predict_ens_widget", ["predict_mil_roi", "predict_radiomics"])
    w.refresh_models()
    w.model_combo.setCurrentText("predict_ens_widget")
    assert w.model_combo.currentText() == "predict_ens_widget"
    _run(w, qtbot)
    assert w.result is not None and w.result.model == "predict_ens_widget"
    assert w.ax.get_lines() and w.ax.get_title().replace("\n", " ") == (
        "slice attention (predict_mil_roi, the image member of predict_ens_widget)")
    assert w.result.to_json()["attention_model"] == "predict_mil_roi"   # in the JSON too
    w.model_combo.setCurrentText(TINY)
    _run(w, qtbot)
    assert w.result is not None and w.result.model == TINY and w.ax.get_lines()
    assert w.ax.get_title() == "" and w.ax.get_ylabel() == "attention"


def _add_case(viewer, case_id, seed=1):
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.napari.layers import case_to_layer_data
    case = make_pack_phantom(seed=seed, n_slices=14, case_id=case_id)
    for data, kw, kind in case_to_layer_data(case, source=f"{case_id}.h5"):
        getattr(viewer, f"add_{kind}")(data, **kw)


def test_the_shown_result_names_its_case(widget_and_viewer, qtbot):
    """The heading names the result's case and model; switching the Case combo to another
    case marks the result as that other case's (greyed) and switching back unmarks it."""
    w, viewer = widget_and_viewer
    _add_case(viewer, "PH1")
    w.case_combo.setCurrentText("PH0")
    _run(w, qtbot)
    assert w.result is not None
    assert "PH0" in w.heading.text() and TINY in w.heading.text()
    assert not w.heading.isHidden() and w.results_box.isEnabled()
    w.case_combo.setCurrentText("PH1")
    assert "PH0" in w.heading.text() and "not the selected case PH1" in w.heading.text()
    assert not w.results_box.isEnabled()        # the probabilities are greyed out
    w.case_combo.setCurrentText("PH0")
    assert "not the selected" not in w.heading.text() and w.results_box.isEnabled()


def test_a_default_that_gave_way_is_said_and_the_device_that_ran_is_named(
        make_napari_viewer, qtbot):
    """The preselected default (predict_ensemble) cannot place its tumour window on a 3D case
    without T2 and gives way to predict_mil: the heading and the status say that the chosen
    model was not the one used (the first warning says why), the combo keeps the user's
    choice (the next case may take the default), and the status names the device the Device
    choice stood for. A run of the model chosen says nothing of the kind."""
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import default_model_name
    from napari_radiogen.napari.layers import case_to_layer_data
    from napari_radiogen.napari.predict_widget import PredictionWidget
    viewer = make_napari_viewer()
    case = make_phantom(seed=3, sequences=("t1", "t1ce", "flair"), skull_stripped=True)
    for data, kw, kind in case_to_layer_data(case, source="x"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    w = PredictionWidget(viewer)
    default = default_model_name()
    assert w.model_combo.currentText() == default == "predict_ensemble"
    w.device.setCurrentText("cpu")
    _run(w, qtbot)
    assert w.result is not None and w.result.model == "predict_mil"
    head, status = w.heading.text(), w.status.text()
    assert (f"(predict_mil: the chosen {default} could not be used on this case, see the "
            "first warning)") in head
    first = status.split("\n")[1]
    assert first.startswith("warning: ") and "predicted with predict_mil" in first
    assert f"with predict_mil instead of {default} on cpu" in status
    assert w.model_combo.currentText() == default
    # the model chosen ran: nothing said of another one
    w.model_combo.setCurrentText("predict_mil")
    _run(w, qtbot)
    assert w.result.model == "predict_mil"
    assert "could not be used" not in w.heading.text()
    assert "instead of" not in w.status.text() and "with predict_mil on cpu" in w.status.text()


def test_a_case_closed_during_the_run_is_said(widget_and_viewer, qtbot):
    """PH0's layers removed while its prediction runs: the result is shown, named as PH0's,
    with the shared closed-case note, while the combo has moved on to PH1."""
    from napari_radiogen.napari._common import closed_case_note
    w, viewer = widget_and_viewer
    _add_case(viewer, "PH1")
    w.case_combo.setCurrentText("PH0")
    job = w.run()
    for ly in [ly for ly in viewer.layers
               if ly.metadata.get("radiogen", {}).get("case_id") == "PH0"]:
        viewer.layers.remove(ly)
    note = closed_case_note(viewer, "PH0")
    assert note and w.case_combo.currentText() == "PH1"
    qtbot.waitUntil(lambda: job.done, timeout=60000)
    assert w.result is not None and w.result_case_id == "PH0"
    assert note.lstrip("; ") in w.heading.text()
    assert note.lstrip("; ") in w.status.text()
    assert "PH0" in w.heading.text() and "not the selected case PH1" in w.heading.text()


def test_the_plus_minus_says_what_it_is(widget_and_viewer, qtbot):
    """Each probability's tooltip and the legend under them say what the ± is: the result's
    own description (uncertainty[task]['method']) when it carries one, else a generic one."""
    w, viewer = widget_and_viewer
    _run(w, qtbot)
    method = w.result.uncertainty["idh"]["method"]
    assert method in w.task_labels["idh"].toolTip()
    assert w.pm_legend.text().startswith("\u00b1") and method in w.pm_legend.toolTip()
    assert method.split(" (")[0] in w.pm_legend.text()
    assert not w.pm_legend.isHidden()
    res = w.result
    for t in res.uncertainty:
        res.uncertainty[t].pop("method", None)
    w.show_result(res, "PH0")
    assert "sd over ensemble members/folds" in w.task_labels["idh"].toolTip()
    assert "sd over ensemble members/folds" in w.pm_legend.text()
    res.uncertainty["idh"]["method"] = "a result's own words (with details)"
    w.show_result(res, "PH0")
    assert "a result's own words (with details)" in w.task_labels["idh"].toolTip()
    assert "a result's own words" in w.pm_legend.text()


def _no_overlap(a, b, root) -> bool:
    from qtpy.QtCore import QRect
    ra = QRect(a.mapTo(root, a.rect().topLeft()), a.size())
    rb = QRect(b.mapTo(root, b.rect().topLeft()), b.size())
    return not ra.intersects(rb)


def test_docked_beside_others_nothing_overlaps_or_is_clipped(make_napari_viewer, qtbot):
    """Three docks in a 1400x900 window, a result with long warnings and an ensemble's long
    plot title: the status is laid out below the plot (not painted under it) at its full
    wrapped height, the dock content scrolls, and the plot title fits the figure."""
    from qtpy.QtWidgets import QApplication, QScrollArea
    from napari_radiogen.napari.predict_widget import PredictionWidget
    make_tiny_model()
    viewer = make_napari_viewer(show=True)
    _add_case(viewer, "PH0", seed=0)
    w = PredictionWidget(viewer)
    w.model_combo.setCurrentText(TINY)
    others = [PredictionWidget(viewer), PredictionWidget(viewer)]
    viewer.window.add_dock_widget(w, name="Predict")
    for i, o in enumerate(others):
        viewer.window.add_dock_widget(o, name=f"other {i}")
    viewer.window._qt_window.resize(1400, 900)
    _run(w, qtbot)
    res = w.result
    res.warnings = list(res.warnings) + [
        "a long warning that has to wrap over several lines of the dock: " * 3] * 3
    res.attention_model = "predict_mil_roi"
    res.model = "predict_ensemble_with_a_long_name"
    w.show_result(res, "PH0")
    for _ in range(5):
        QApplication.processEvents()
    qtbot.wait(50)
    assert _no_overlap(w.status, w.canvas, w)
    assert w.status.height() >= w.status.heightForWidth(w.status.width())
    assert w.canvas.height() >= 150
    assert isinstance(w.scroll, QScrollArea) and w.scroll.widget() is w.content
    # the content is taller than the squeezed dock: it scrolls instead of overflowing
    assert w.content.height() >= w.content.minimumSizeHint().height()
    w.canvas.draw()
    title = w.ax.title
    bb = title.get_window_extent(w.canvas.get_renderer())
    fb = w.figure.bbox
    assert bb.x0 >= fb.x0 - 1 and bb.x1 <= fb.x1 + 1
    assert title.get_text().replace("\n", " ") == (
        "slice attention (predict_mil_roi, the image member of "
        "predict_ensemble_with_a_long_name)")


def test_a_gpu_out_of_memory_is_notified_and_the_status_says_cpu(widget_and_viewer, qtbot,
                                                                  monkeypatch):
    """Device cuda, and the GPU runs out of memory: the prediction finishes on the CPU, a
    notification says so, and the status names the CPU, not the device chosen. (No GPU here:
    ``cuda`` stands for a device torch runs on the CPU, whose network pass raises torch's
    out-of-memory error, as in tests/test_oom_fallback.py.)"""
    import torch
    import napari_radiogen.core.models as M
    import napari_radiogen.core.predict as P
    import napari_radiogen.napari.workers as W
    from napari_radiogen.core.models import oom_note
    real_resolve, real_run = M.resolve_device, P.run_network
    monkeypatch.setattr(M, "resolve_device",
                        lambda d="auto": "cpu:0" if d in ("cuda", "cpu:0") else real_resolve(d))

    def run_network(*a):
        if a[-1] == "cpu:0":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_run(*a)
    monkeypatch.setattr(P, "run_network", run_network)
    told = []
    monkeypatch.setattr(W, "show_warning", told.append)
    w, viewer = widget_and_viewer
    w.device.setCurrentText("cuda")
    job = _run(w, qtbot)
    assert job.error is None, job.error
    note = oom_note(f"{TINY} ran")
    assert w.result.device == "cpu" and note in w.result.warnings
    assert told == [f"predict: {note}"]
    first = w.status.text().split("\n")[0]
    assert first.endswith(" on cpu") and "cpu:0" not in first
    assert f"warning: {note}" in w.status.text()
