"""Tumour type widget: follows the current slice (latest request wins), all-slices plot,
Grad-CAM overlay layer, the training-data note."""
import numpy as np
import pytest

from napari_radiogen.core import triage

TINY = "triage_tiny_widget_test"


@pytest.fixture
def tiny_model_file():
    """An untrained compact CNN saved as a user model (removed afterwards)."""
    import torch
    from napari_radiogen.core.models import (build_from_card, new_card, save_model,
                                             user_models_dir)

    torch.manual_seed(0)
    arch = {"builder": "src_models.triage:build_triage_resnet",
            "kwargs": {"widths": [4, 8, 8, 8]}}
    card = new_card(TINY, "triage", arch, input_size=[32, 32], classes=list(triage.CLASSES))
    net = build_from_card(card)
    path = save_model(user_models_dir() / f"{TINY}.safetensors", net.state_dict(), card)
    yield path
    path.unlink(missing_ok=True)
    path.with_suffix(".card.json").unlink(missing_ok=True)


def _volume():
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 48, 56), np.float32)
    for z in range(20):                      # slices differ in content and extent
        r = 6 + z
        yy, xx = np.mgrid[:48, :56]
        vol[z][(yy - 24) ** 2 + (xx - 28) ** 2 < r * r] = 100 + 20 * z
        vol[z] += rng.uniform(0, 30, (48, 56)) * (vol[z] > 0)
    return vol


def _widget(make_napari_viewer, qtbot):
    from napari_radiogen.napari.triage_widget import TumourTypeWidget

    viewer = make_napari_viewer()
    vol = _volume()
    layer = viewer.add_image(vol, name="flair", metadata={"radiogen": {"case_id": "demo"}})
    w = TumourTypeWidget(viewer)
    qtbot.addWidget(w)
    w.model_combo.setCurrentText(TINY)
    assert w.model_combo.currentText() == TINY
    assert w.layer_combo.currentText() == "flair"
    return viewer, w, vol, layer


def _shown_probs(w):
    return np.array([w.bars[c].value() / 1000 for c in triage.CLASSES])


def test_widget_follows_the_current_slice(make_napari_viewer, qtbot, tiny_model_file):
    viewer, w, vol, layer = _widget(make_napari_viewer, qtbot)
    model = triage.load_triage_model(TINY)
    starts = []
    orig = w._start
    w._start = lambda req, ly: (starts.append(req.index), orig(req, ly))

    viewer.dims.current_step = (13, 0, 0)
    qtbot.waitUntil(lambda: w.last_result is not None and w.last_result[0].index == (13,)
                    and w._job.done, timeout=15000)
    exp = triage.classify_slice(vol[13], model)
    np.testing.assert_allclose(_shown_probs(w), [exp.probs[c] for c in triage.CLASSES],
                               atol=2e-3)
    assert w.prediction_label.text().startswith(triage.CLASS_NAMES[exp.predicted])
    assert "slice 13" in w.prediction_label.text()

    # fast scrolling: stale slices are skipped, the last one is shown
    starts.clear()
    for z in range(2, 12):
        viewer.dims.current_step = (z, 0, 0)
    qtbot.waitUntil(lambda: w.last_result[0].index == (11,) and w._job.done
                    and not w._pending, timeout=15000)
    assert starts[-1] == (11,) and len(starts) < 10
    exp = triage.classify_slice(vol[11], model)
    np.testing.assert_allclose(_shown_probs(w), [exp.probs[c] for c in triage.CLASSES],
                               atol=2e-3)
    assert "public collections" in triage.TRIAGE_NOTE
    assert any("public collections" in lbl.text() for lbl in w.findChildren(type(w.status)))


def test_widget_all_slices_plot_and_gradcam(make_napari_viewer, qtbot, tiny_model_file):
    viewer, w, vol, layer = _widget(make_napari_viewer, qtbot)
    w.classify_all()
    qtbot.waitUntil(lambda: w.volume_result is not None, timeout=20000)
    name, table = w.volume_result
    assert name == "flair" and table.probs.shape == (20, 4) and table.case_id == "demo"
    assert w.canvas is not None and len(w._plot_ax.lines) == 5      # 4 classes + cursor line
    w.cam_box.setChecked(True)
    viewer.dims.current_step = (7, 0, 0)
    qtbot.waitUntil(lambda: w._cam_layer is not None and w.last_result[0].index == (7,)
                    and w.last_result[0].cam, timeout=15000)
    cam = w._cam_layer
    # one slice of the volume, placed at slice 7 (not a 2D layer drawn over every slice)
    assert cam.data.shape == (1,) + vol.shape[1:] and cam.metadata["radiogen"]["triage_cam"]
    np.testing.assert_allclose(cam.scale, layer.scale)
    assert cam.translate[0] == pytest.approx(layer.translate[0] + 7 * layer.scale[0])
    np.testing.assert_allclose(cam.translate[1:], layer.translate[1:])
    assert cam.metadata["radiogen"]["case_id"] == "demo"
    assert w.layer_combo.currentText() == "flair"          # the CAM layer is not a target
    assert float(cam.data[0][vol[7] == 0].max(initial=0)) == 0.0
    w.cam_box.setChecked(False)
    assert cam not in viewer.layers
    assert w.prediction_label.text()
    viewer.layers.clear()                                # nothing left to classify
    assert w.prediction_label.text() == "" and all(b.value() == 0 for b in w.bars.values())


def test_widget_defaults_to_the_visible_sequence(make_napari_viewer):
    """A case opens with only its reference sequence visible: the tumour-type widget starts on
    that one, not on the first (hidden) layer of the list."""
    from napari_radiogen.core.sample import sample_case_path
    from napari_radiogen.napari.triage_widget import TumourTypeWidget
    viewer = make_napari_viewer()
    viewer.open(str(sample_case_path()), plugin="napari-radiogen")
    viewer.layers.selection.active = None
    w = TumourTypeWidget(viewer)
    assert w.layer_combo.currentText() == "BraTS2021_00006 flair"
    assert viewer.layers[w.layer_combo.currentText()].visible
