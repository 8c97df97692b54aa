"""SegmentationWidget: run, cancel, rerun on a phantom case with a tiny model; the result lands
on the case it was started from, with its geometry; exports."""
import csv

import numpy as np
import pytest


@pytest.fixture
def tiny_model():
    from napari_radiogen.core.models import build_from_card, new_card, save_model, user_models_dir
    arch = {"builder": "src_models.segmentation:segresnet_3d",
            "kwargs": {"in_channels": 4, "out_channels": 3, "init_filters": 8}}
    card = new_card("tiny_seg3d_widget", "segmentation", arch,
                    sequences=["t1", "t1ce", "t2", "flair"], dims=3, spacing_mm=3.0,
                    roi_size=[64, 80, 64], normalisation="zscore")
    p = save_model(user_models_dir() / "tiny_seg3d_widget.safetensors",
                   build_from_card(card).state_dict(), card)
    yield "tiny_seg3d_widget"
    p.unlink(missing_ok=True)
    p.with_suffix(".card.json").unlink(missing_ok=True)


def _open_case(viewer, seed=0, case_id=None):
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.napari.layers import case_to_layer_data
    case = make_phantom(seed, case_id=case_id)
    for data, kw, kind in case_to_layer_data(case):
        getattr(viewer, f"add_{kind}")(data, **kw)
    return case


@pytest.mark.slow
def test_widget_run_cancel_rerun(make_napari_viewer, tiny_model, tmp_path, qtbot):
    from napari_radiogen.napari.segment_widget import SegmentationWidget

    viewer = make_napari_viewer()
    case_a = _open_case(viewer, 0, "CASE_A")
    w = SegmentationWidget(viewer)
    w.model_combo.setCurrentText(tiny_model)
    w.device.setCurrentText("cpu")
    w.case_combo.setCurrentText("CASE_A")

    # run
    job = w.run()
    # while it runs, open another case: the result must still land on CASE_A
    _open_case(viewer, 1, "CASE_B")
    assert job.wait(120)
    assert job.error is None, job.error
    name = f"CASE_A segmentation ({tiny_model})"
    assert name in viewer.layers
    layer = viewer.layers[name]
    # the case's expert labels layer is left as it was, beside the result
    truth = viewer.layers["CASE_A segmentation"]
    assert truth is not layer and not truth.metadata["radiogen"].get("result")
    np.testing.assert_array_equal(truth.data, case_a.labels.array)
    assert layer.metadata["radiogen"]["synthetic_inputs"] == []
    assert layer.data.shape == case_a.geometry.shape
    assert np.allclose(layer.scale, case_a.geometry.napari_scale)
    assert np.allclose(layer.translate, case_a.geometry.napari_translate)
    assert layer.metadata["radiogen"]["case_id"] == "CASE_A"
    # a new layer: its napari object came built from the worker (build_layer: the drawing
    # tools' overlays wait for a drawing mode) and is the widget's result layer
    assert w.result_layer is layer and not layer._overlays["polygon"].visible
    layer.mode = "paint"
    assert layer._overlays["polygon"].visible and layer._overlays["brush_stroke"].visible
    layer.mode = "pan_zoom"
    assert w.volume_table.item(0, 1).text() != "-"
    assert w.metrics_table.isVisible() or w.metrics_table.rowCount() == 3   # GT present
    assert w.metrics_table.rowCount() == 3

    # cancel
    viewer.layers.remove(name)
    job2 = w.run()
    w.cancel()
    assert job2.wait(120)
    assert job2.cancelled
    assert name not in viewer.layers
    assert w.run_button.isEnabled()

    # rerun
    job3 = w.run()
    assert job3.wait(120) and job3.error is None and not job3.cancelled
    assert name in viewer.layers and w.result_layer is viewer.layers[name]
    # a rerun onto the existing layer updates it in place (no new object)
    before = viewer.layers[name]
    job4 = w.run()
    assert job4.wait(120) and job4.error is None
    assert viewer.layers[name] is before and w.result_layer is before

    # exports
    import nibabel as nib
    p = w.export_labels(tmp_path / "a_seg.nii.gz")
    img = nib.load(str(p))
    assert img.shape == tuple(case_a.geometry.size)
    c = w.export_csv(tmp_path / "v.csv")
    rows = list(csv.DictReader(open(c)))
    assert rows[0]["case_id"] == "CASE_A" and float(rows[0]["WT_ml"]) >= 0

    # 3D toggle: the visible image volume is dimmed under the surfaces, then restored
    flair = viewer.layers["CASE_A flair"]
    assert flair.visible and flair.opacity == 1.0
    w.surface_check.setChecked(True)
    assert viewer.dims.ndisplay == 3
    assert flair.opacity == w.SURFACE_BACKDROP_OPACITY
    w.surface_check.setChecked(False)
    assert viewer.dims.ndisplay == 2 and flair.opacity == 1.0

    # an edit on the layer is exported; the layer deleted, the status says Export now writes
    # the model's labels as they came, and it does
    layer = w.result_layer
    edited = np.asarray(layer.data).copy()
    edited[tuple(s // 2 for s in edited.shape)] = 4
    edited[0, 0, 0] = 2
    layer.data = edited
    out = nib.load(str(w.export_labels(tmp_path / "edited.nii.gz")))
    assert int(np.asanyarray(out.dataobj).sum()) == int(edited.sum())
    viewer.layers.remove(layer)
    assert w.result_layer is None and "segmentation layer was removed" in w.status.text()
    out = nib.load(str(w.export_labels(tmp_path / "asis.nii.gz")))
    assert int(np.asanyarray(out.dataobj).sum()) == int(np.asarray(w.result.labels).sum())
    # removing another layer says nothing
    w.status.setText("kept")
    viewer.layers.remove("CASE_B flair")
    assert w.status.text() == "kept"


def test_result_layer_name_says_when_the_segmentation_rests_on_synthetic_inputs():
    from types import SimpleNamespace
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.napari.segment_widget import result_layer_data
    case = make_phantom(0, shape=(8, 8, 8), case_id="C1")
    res = SimpleNamespace(model="m3d", kind="volume", synthetic_inputs=["t1ce"],
                          labels=case.labels.array, geometry=case.geometry)
    data, kw, kind = result_layer_data(res, "C1")
    assert kind == "labels" and kw["name"] == "C1 segmentation (m3d) from synthetic t1ce"
    assert kw["metadata"]["radiogen"]["synthetic_inputs"] == ["t1ce"]
    res.synthetic_inputs = []
    assert result_layer_data(res, "C1")[1]["name"] == "C1 segmentation (m3d)"


def test_widget_preselects_the_2d_model_for_a_pack_and_clears_old_results(
        make_napari_viewer, tiny_model, tmp_path, monkeypatch):
    """A slice pack gets a 2D model preselected; a run with no case says why (no exception);
    a new run clears the previous run's tables and exports."""
    import napari.utils.notifications as notes
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.napari.layers import case_to_layer_data
    from napari_radiogen.napari.segment_widget import SegmentationWidget
    shown = []
    monkeypatch.setattr(notes, "show_error", shown.append)
    viewer = make_napari_viewer()
    w = SegmentationWidget(viewer)
    assert w.run() is None and shown                     # no case open: a message, no job
    pack = make_pack_phantom(seed=1, n_slices=10)
    for data, kw, kind in case_to_layer_data(pack):
        getattr(viewer, f"add_{kind}")(data, **kw)
    w.refresh_models()
    w.case_combo.setCurrentText(pack.case_id)
    assert w.case_combo.currentText() == pack.case_id
    w._pick_model_for_case()
    assert int(w._cards[w.model_combo.currentText()].get("dims", 3)) == 2
    w.export_labels_button.setEnabled(True)              # as after an earlier result
    w.volume_table.item(0, 1).setText("12.00")
    w._clear_results()
    assert not w.export_labels_button.isEnabled()
    assert w.volume_table.item(0, 1).text() == "-" and w.result is None


def test_widget_says_why_without_a_model_or_with_a_missing_sequence(
        make_napari_viewer, monkeypatch):
    """No segmentation model: a message in the dock and a notification, no exception; an input
    error (a missing sequence) is shown as its message, not prefixed by an exception class."""
    import napari.utils.notifications as notes
    from napari_radiogen.core.errors import MissingSequenceError
    from napari_radiogen.napari.segment_widget import SegmentationWidget
    shown = []
    monkeypatch.setattr(notes, "show_error", shown.append)
    w = SegmentationWidget(make_napari_viewer())
    monkeypatch.setattr(w, "inputs", lambda: type("I", (), {"model": "", "device": "cpu"})())
    assert w.run() is None
    assert "no segmentation model" in w.status.text() and shown
    err = MissingSequenceError(["t1ce"], ["t1", "t1ce", "t2", "flair"])
    w._on_error(err)
    assert w.status.text() == str(err) and "MissingSequenceError" not in w.status.text()


@pytest.mark.slow
def test_a_result_for_a_case_closed_during_the_run_is_kept_and_said(make_napari_viewer,
                                                                    tiny_model, qtbot):
    """The user closes the case while its segmentation runs: the result is still added (not
    lost), and the status says it stands on its own; a case still open is not said so."""
    from napari_radiogen.napari.segment_widget import SegmentationWidget

    viewer = make_napari_viewer()
    _open_case(viewer, 0, "CASE_A")
    w = SegmentationWidget(viewer)
    w.model_combo.setCurrentText(tiny_model)
    w.device.setCurrentText("cpu")
    w.case_combo.setCurrentText("CASE_A")
    job = w.run()
    for layer in list(viewer.layers):             # the user closes the case meanwhile
        viewer.layers.remove(layer)
    assert job.wait(120) and job.error is None
    assert f"CASE_A segmentation ({tiny_model})" in viewer.layers
    assert "closed during the run" in w.status.text()
    _open_case(viewer, 0, "CASE_A")
    job = w.run()
    assert job.wait(120) and job.error is None
    assert "closed during the run" not in w.status.text()


@pytest.mark.slow
def test_rerun_keeps_the_users_edits_of_the_result(make_napari_viewer, tiny_model, qtbot):
    """The user paints on the result layer and runs again: the edited layer is kept (renamed
    "<name> (edited)", hidden) with the painted voxels, the new result is a layer of its own and
    the status says so; a rerun without edits still updates the layer in place."""
    from napari_radiogen.napari.segment_widget import SegmentationWidget

    viewer = make_napari_viewer()
    _open_case(viewer, 0, "CASE_A")
    w = SegmentationWidget(viewer)
    w.model_combo.setCurrentText(tiny_model)
    w.device.setCurrentText("cpu")
    w.case_combo.setCurrentText("CASE_A")
    name = f"CASE_A segmentation ({tiny_model})"
    job = w.run()
    assert job.wait(120) and job.error is None
    first = viewer.layers[name]
    job = w.run()                                  # no edits: updated in place, nothing kept
    assert job.wait(120) and job.error is None
    assert viewer.layers[name] is first and f"{name} (edited)" not in viewer.layers
    assert "edits" not in w.status.text()

    shape = first.data.shape
    pts = [(shape[0] // 2, 2, 2), (shape[0] // 2, 2, 3), (shape[0] // 2 + 1, 3, 5)]
    first.mode = "paint"
    for p in pts:                                  # as the brush does
        first.paint(p, 4, refresh=True)
    first.mode = "pan_zoom"
    job = w.run()
    assert job.wait(120) and job.error is None
    kept = viewer.layers[f"{name} (edited)"]
    assert kept is first and not kept.visible
    assert [int(kept.data[p]) for p in pts] == [4, 4, 4]
    new = viewer.layers[name]
    assert new is not first and w.result_layer is new and new.visible
    assert f"'{name} (edited)'" in w.status.text()
    # the new result is not marked edited: the next rerun updates it in place
    job = w.run()
    assert job.wait(120) and job.error is None
    assert viewer.layers[name] is new
    assert [l.name for l in viewer.layers].count(f"{name} (edited)") == 1
    assert f"{name} (edited 2)" not in viewer.layers
    # an edit by setting the layer's data counts too; a second kept layer gets its own name
    data = np.asarray(new.data).copy()
    data[pts[0]] = 2
    new.data = data
    job = w.run()
    assert job.wait(120) and job.error is None
    assert viewer.layers[f"{name} (edited 2)"] is new
    assert int(new.data[pts[0]]) == 2


@pytest.mark.slow
def test_3d_surfaces_centre_the_view_on_the_result(make_napari_viewer, tiny_model, qtbot):
    """With a second case open elsewhere in world space, "3D surfaces" centres the camera on
    the result's extent and zooms so that it fills the canvas; the other case's layers are
    left as they are."""
    from napari_radiogen.napari.segment_widget import SegmentationWidget

    viewer = make_napari_viewer(show=True)
    _open_case(viewer, 0, "CASE_A")
    _open_case(viewer, 1, "CASE_B")
    b_layers = [l for l in viewer.layers if l.name.startswith("CASE_B")]
    for l in b_layers:                             # the other case lies far from CASE_A
        l.translate = np.asarray(l.translate) + np.array([0.0, 600.0, 900.0])
    placed = {l.name: (np.asarray(l.translate).copy(), l.visible) for l in b_layers}
    viewer.reset_view()
    w = SegmentationWidget(viewer)
    w.model_combo.setCurrentText(tiny_model)
    w.device.setCurrentText("cpu")
    w.case_combo.setCurrentText("CASE_A")
    job = w.run()
    assert job.wait(120) and job.error is None
    layer = w.result_layer
    w.surface_check.setChecked(True)
    assert viewer.dims.ndisplay == 3
    ext = np.asarray(layer.extent.world, dtype=float)
    mid = (ext[0] + ext[1]) / 2
    np.testing.assert_allclose(viewer.camera.center, mid[list(viewer.dims.displayed)],
                               atol=2.0)
    # zoomed to the result: its largest side takes most of the canvas's least side (zoom:
    # canvas pixels per world unit)
    size = (ext[1] - ext[0])[list(viewer.dims.displayed)]
    canvas = np.asarray(viewer.canvas.size, dtype=float)
    assert np.max(size) * viewer.camera.zoom > 0.5 * np.min(canvas)
    for l in b_layers:
        np.testing.assert_allclose(l.translate, placed[l.name][0])
        assert l.visible == placed[l.name][1]
    w.surface_check.setChecked(False)
    assert viewer.dims.ndisplay == 2
