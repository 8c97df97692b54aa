"""Tumour type widget: follows the current slice (latest request wins) and the viewing
orientation, all-slices plot along the sliced axis, Grad-CAM overlay layer, the training-data
note, empty slices (no call), status and plot tied to their layer, the skull-stripped caveat."""
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
    return np.array([w.bars[c].value() / 100 for c in triage.CLASSES])


def _idle(w):
    return ((w._job is None or w._job.done) and not w._pending
            and (w._volume_job is None or w._volume_job.done))


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
                               atol=5.1e-3)
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
                               atol=5.1e-3)
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


def test_widget_empty_slices_get_no_call(make_napari_viewer, qtbot, tiny_model_file):
    """An all-zero or constant slice is reported as empty, with no class and no bars; all
    slices: empty slices are left out of the counts and the summary says how many."""
    viewer, w, vol, layer = _widget(make_napari_viewer, qtbot)
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w), timeout=15000)
    assert not w.last_result[1].empty and "%" in w.prediction_label.text()
    vol2 = vol.copy()
    vol2[:3] = 0
    vol2[3] = 55.0                                      # constant
    viewer.add_image(vol2, name="holes")
    w.layer_combo.setCurrentText("holes")
    for z in (0, 3):
        viewer.dims.current_step = (z, 0, 0)
        qtbot.waitUntil(lambda: w.last_result is not None and _idle(w)
                        and w.last_result[0].layer_name == "holes"
                        and w.last_result[0].position == z, timeout=15000)
        text = w.prediction_label.text()
        assert w.last_result[1].empty and "no tumour call" in text and f"slice {z}" in text
        assert "%" not in text and not any(n in text for n in ("glioma", "meningioma"))
        assert all(b.value() == 0 and b.text() == "-" for b in w.bars.values())
    viewer.dims.current_step = (10, 0, 0)
    qtbot.waitUntil(lambda: w.last_result[0].position == 10 and _idle(w), timeout=15000)
    assert "%" in w.prediction_label.text() and any(b.value() > 0 for b in w.bars.values())

    w.classify_all()
    qtbot.waitUntil(lambda: w.volume_result is not None and _idle(w), timeout=20000)
    name, table = w.volume_result
    assert name == "holes" and table.n_empty == 4 and sum(table.counts().values()) == 16
    st = w.status.text()
    assert "4 empty" in st and "20 slices" in st
    shown = {c: int(st.split(f"{triage.CLASS_NAMES[c]} ")[1].split(",")[0].split(";")[0])
             for c in triage.CLASSES}
    assert shown == table.counts()


def test_widget_follows_the_viewing_orientation(make_napari_viewer, qtbot, tiny_model_file):
    """After dims.order changes, the displayed (sagittal) slice is classified; all slices run
    along the sliced axis; the plot's marker shows only while that axis is sliced; a 3D view
    says the widget works on 2D slices."""
    viewer, w, vol, layer = _widget(make_napari_viewer, qtbot)
    model = triage.load_triage_model(TINY)
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w), timeout=15000)
    assert w.last_result[0].axis == 0
    viewer.dims.current_step = (5, 20, 30)
    qtbot.waitUntil(lambda: w.last_result[0].position == 5 and _idle(w), timeout=15000)

    viewer.dims.order = (2, 0, 1)              # slice through x; rows = z, columns = y
    qtbot.waitUntil(lambda: w.last_result[0].axis == 2 and _idle(w), timeout=15000)
    req = w.last_result[0]
    assert req.position == 30 and req.displayed == (0, 1)
    exp = triage.classify_slice(vol[:, :, 30], model)
    np.testing.assert_allclose(_shown_probs(w), [exp.probs[c] for c in triage.CLASSES],
                               atol=5.1e-3)
    assert "slice 30 (axis 2)" in w.prediction_label.text()

    w.classify_all()
    qtbot.waitUntil(lambda: w.volume_result is not None and _idle(w), timeout=20000)
    _, table = w.volume_result
    assert table.axis == 2 and table.probs.shape == (vol.shape[2], 4)
    one = triage.classify_slice(vol[:, :, 17], model)
    np.testing.assert_allclose([one.probs[c] for c in triage.CLASSES], table.probs[17],
                               atol=1e-4)
    assert "along axis 2" in w.status.text()
    assert "axis 2" in w._plot_ax.get_xlabel()
    assert w._vline.get_visible() and list(w._vline.get_xdata()) == [30, 30]
    viewer.dims.current_step = (5, 20, 12)
    assert list(w._vline.get_xdata()) == [12, 12]

    viewer.dims.order = (1, 2, 0)              # slice through y; rows = x, columns = z
    assert not w._vline.get_visible()          # the plot is along x, the view along y
    qtbot.waitUntil(lambda: w.last_result[0].axis == 1 and _idle(w), timeout=15000)
    exp = triage.classify_slice(vol[:, 20, :].T, model)      # as napari shows it
    np.testing.assert_allclose(_shown_probs(w), [exp.probs[c] for c in triage.CLASSES],
                               atol=5.1e-3)
    viewer.dims.order = (2, 0, 1)
    assert w._vline.get_visible()

    assert not w.view_note.isVisibleTo(w)
    viewer.dims.ndisplay = 3
    assert w.view_note.isVisibleTo(w) and "2D slices" in w.view_note.text()
    viewer.dims.ndisplay = 2
    assert not w.view_note.isVisibleTo(w)


def test_widget_status_and_plot_belong_to_their_layer(make_napari_viewer, qtbot,
                                                      tiny_model_file):
    from napari_radiogen.napari.triage_widget import TumourTypeWidget

    viewer = make_napari_viewer()
    w = TumourTypeWidget(viewer)
    qtbot.addWidget(w)
    w.model_combo.setCurrentText(TINY)
    w.classify_all()
    assert "Select an image layer" in w.status.text()
    rng = np.random.default_rng(1)
    viewer.add_image(rng.uniform(1, 200, (40, 50)).astype(np.float32), name="flat")
    assert w.status.text() == ""                        # the message was about no layer
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w), timeout=15000)
    assert "%" in w.prediction_label.text()
    w.classify_all()
    assert "only one slice" in w.status.text()
    vol = _volume()
    viewer.add_image(vol, name="flair")
    w.layer_combo.setCurrentText("flair")
    assert "only one slice" not in w.status.text()
    # the 2D layer's prediction is not left under the 3D layer's name
    assert w.last_result is None or w.last_result[0].layer_name == "flair"
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w)
                    and w.last_result[0].layer_name == "flair", timeout=15000)

    w.classify_all()
    qtbot.waitUntil(lambda: w.volume_result is not None and _idle(w), timeout=20000)
    assert "flair: 20 slices" in w.status.text() and w.canvas.isVisibleTo(w)
    w.layer_combo.setCurrentText("flat")
    assert "flair" not in w.status.text() and not w.canvas.isVisibleTo(w)
    w.layer_combo.setCurrentText("flair")                # back: its own plot and summary
    assert "flair: 20 slices" in w.status.text() and w.canvas.isVisibleTo(w)
    viewer.layers.remove("flair")                        # the analysed layer goes away
    assert w.layer_combo.currentText() == "flat"
    assert w.volume_result is None and not w.canvas.isVisibleTo(w)
    assert "flair" not in w.status.text() and "flair" not in w.prediction_label.text()


def test_widget_label_and_bars_round_alike(make_napari_viewer, qtbot, tiny_model_file):
    """0.9695 is 97 % in the label and on the bar (a progress bar truncates: 96 %)."""
    viewer, w, vol, layer = _widget(make_napari_viewer, qtbot)
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w), timeout=15000)
    req = w.last_result[0]
    probs = {"glioma": 0.0105, "meningioma": 0.9695, "pituitary": 0.0105, "notumor": 0.0095}
    tri = triage.SliceTriage(probs=probs, predicted="meningioma")
    w._on_result((req, tri, None, None, {}, None))
    assert w.prediction_label.text().startswith("meningioma (97%)")
    assert w.bars["meningioma"].text() == "97%" and w.bars["glioma"].text() == "1%"


def test_widget_caveat_next_to_the_call(make_napari_viewer, qtbot, tiny_model_file):
    """A BraTS-like (skull-stripped) image gets the caveat beside the call; a slice with a
    noisy background does not."""
    from napari_radiogen.napari.triage_widget import TumourTypeWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    noisy = _volume() + rng.uniform(1, 20, (20, 48, 56)).astype(np.float32)
    viewer.add_image(noisy, name="with skull")
    w = TumourTypeWidget(viewer)
    qtbot.addWidget(w)
    w.model_combo.setCurrentText(TINY)
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w), timeout=15000)
    assert not w.caveat_label.isVisibleTo(w) and w.caveat_label.text() == ""
    viewer.add_image(noisy, name="brats", metadata={"radiogen": {"case_id": "BraTS2021_01476"}})
    w.layer_combo.setCurrentText("brats")
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w)
                    and w.last_result[0].layer_name == "brats", timeout=15000)
    assert w.caveat_label.isVisibleTo(w) and "skull-stripped" in w.caveat_label.text()
    assert "BraTS case" in w.caveat_label.text()
    viewer.add_image(_volume(), name="zero background")  # exactly 0 around the object
    w.layer_combo.setCurrentText("zero background")
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w)
                    and w.last_result[0].layer_name == "zero background", timeout=15000)
    assert w.caveat_label.isVisibleTo(w) and "zero background" in w.caveat_label.text()


def test_widget_slices_a_layer_with_fewer_dims_than_the_viewer(make_napari_viewer, qtbot,
                                                               tiny_model_file):
    """A 4D layer makes the viewer 4D; the 3D layer selected is sliced as napari slices it
    (``Layer._world_to_layer_dims``): with dims.order (3, 0, 1, 2) napari shows the layer's
    axes (0, 1) and slices its axis 2 (world axis 3) -- not axes (1, 2) and axis 0. The
    classified slice, "Classify all slices" and the plot marker all use that axis."""
    from napari_radiogen.napari.triage_widget import TumourTypeWidget

    viewer = make_napari_viewer()
    vol = _volume()
    viewer.add_image(np.stack([vol, vol[::-1]]), name="4d")          # (2, 20, 48, 56)
    layer = viewer.add_image(vol, name="flair")
    assert viewer.dims.ndim == 4
    w = TumourTypeWidget(viewer)
    qtbot.addWidget(w)
    w.model_combo.setCurrentText(TINY)
    w.layer_combo.setCurrentText("flair")
    model = triage.load_triage_model(TINY)
    viewer.dims.current_step = (1, 5, 20, 30)
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w)
                    and w.last_result[0].layer_name == "flair"
                    and w.last_result[0].position == 5, timeout=15000)
    assert w.last_result[0].axis == 0 and w.last_result[0].displayed == (1, 2)

    viewer.dims.order = (3, 0, 1, 2)
    qtbot.waitUntil(lambda: w.last_result[0].axis == 2 and _idle(w), timeout=15000)
    req = w.last_result[0]
    assert req.displayed == (0, 1) and req.position == 30 and req.index == (30,)
    shown = np.asarray(layer._data_view)                 # what napari draws for the layer
    np.testing.assert_array_equal(shown, vol[:, :, 30])
    exp = triage.classify_slice(vol[:, :, 30], model)
    np.testing.assert_allclose(_shown_probs(w), [exp.probs[c] for c in triage.CLASSES],
                               atol=5.1e-3)
    assert "slice 30 (axis 2)" in w.prediction_label.text()

    w.classify_all()
    qtbot.waitUntil(lambda: w.volume_result is not None and _idle(w), timeout=20000)
    _, table = w.volume_result
    assert table.axis == 2 and table.probs.shape == (vol.shape[2], 4)
    np.testing.assert_allclose(table.probs[30], [exp.probs[c] for c in triage.CLASSES],
                               atol=1e-4)
    assert w._vline.get_visible() and list(w._vline.get_xdata()) == [30, 30]
    viewer.dims.current_step = (1, 5, 20, 12)
    assert list(w._vline.get_xdata()) == [12, 12]


def test_a_2d_layer_is_classified_as_shown_in_a_permuted_viewer(make_napari_viewer, qtbot,
                                                                tiny_model_file):
    """A 2D image in a viewer whose axes were swapped (napari's transpose button) is shown
    transposed; that is the image classified, as for a slice of a volume."""
    from napari_radiogen.napari.triage_widget import TumourTypeWidget
    viewer = make_napari_viewer()
    img = np.zeros((48, 56), np.float32)
    img[4:14, 6:50] = 200.0                             # a bar along the top: not symmetric
    img[20:44, 30:40] = 90.0
    viewer.add_image(img, name="slice")
    w = TumourTypeWidget(viewer)
    qtbot.addWidget(w)
    w.model_combo.setCurrentText(TINY)
    qtbot.waitUntil(lambda: w.last_result is not None and _idle(w), timeout=15000)
    model = triage.load_triage_model(TINY)
    plain, shown = (triage.classify_slice(a, model) for a in (img, img.T))
    p_plain = np.array([plain.probs[c] for c in triage.CLASSES])
    p_shown = np.array([shown.probs[c] for c in triage.CLASSES])
    assert np.abs(p_plain - p_shown).max() > 0.02        # the two images tell apart
    np.testing.assert_allclose(_shown_probs(w), p_plain, atol=5.1e-3)
    first = w.last_result
    viewer.dims.order = (1, 0)
    qtbot.waitUntil(lambda: w.last_result is not first and _idle(w), timeout=15000)
    np.testing.assert_allclose(_shown_probs(w), p_shown, atol=5.1e-3)
