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
    assert w.ax.get_lines() and w.ax.get_title() == (
        "slice attention (predict_mil_roi, the image member of predict_ens_widget)")
    assert w.result.to_json()["attention_model"] == "predict_mil_roi"   # in the JSON too
    w.model_combo.setCurrentText(TINY)
    _run(w, qtbot)
    assert w.result is not None and w.result.model == TINY and w.ax.get_lines()
    assert w.ax.get_title() == "" and w.ax.get_ylabel() == "attention"
