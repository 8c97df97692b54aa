"""The synthesis dock widget: lists present/missing sequences, synthesises a missing one as an
aligned layer named '<case_id> <target> (synthetic)' with synthetic metadata, fills all missing,
ranks (bar chart + differentiation-map heatmap layers), and cancels. The result layers come
built from the worker (a new layer's napari object is the one the job prepared); a rerun
updates the existing layers in place."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from _synth_helpers import slab, tiny_model, without


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_model(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


@pytest.fixture
def viewer_with_case(make_napari_viewer):
    from napari_radiogen.core.sample import load_sample_case
    from napari_radiogen.napari.layers import case_to_layer_data
    viewer = make_napari_viewer()
    case = without(slab(load_sample_case(), 8), "t1ce", "t2")
    for data, kw, kind in case_to_layer_data(case):
        getattr(viewer, f"add_{kind}")(data, **kw)
    return viewer, case


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: w._job is not None and w._job.done, timeout=120_000)


@pytest.fixture
def build_threads(monkeypatch):
    """{layer name: thread id} of every layer object _common.build_layer made."""
    import napari_radiogen.napari._common as common
    seen = {}
    orig = common.build_layer

    def spy(layer_data):
        seen[layer_data[1]["name"]] = threading.get_ident()
        return orig(layer_data)

    monkeypatch.setattr(common, "build_layer", spy)
    return seen


def test_widget_synthesises_an_aligned_labelled_layer(viewer_with_case, tiny, qtbot,
                                                      build_threads):
    from napari_radiogen.napari.synth_widget import FILL_ALL, PreparedSynth, SynthesisWidget
    viewer, case = viewer_with_case
    w = SynthesisWidget(viewer)
    qtbot.addWidget(w)
    assert "missing: t1ce, t2" in w.present_label.text()
    assert w.missing == ["t1ce", "t2"]
    items = [w.target_combo.itemText(i) for i in range(w.target_combo.count())]
    assert items[:3] == [FILL_ALL, "t1ce", "t2"]
    w.set_model_path(tiny, "tiny")
    w.target_combo.setCurrentText("t1ce")
    w.run()
    _wait(qtbot, w)
    name = f"{case.case_id} t1ce (synthetic)"
    assert name in viewer.layers
    layer = viewer.layers[name]
    ref = viewer.layers[f"{case.case_id} flair"]
    assert layer.metadata["radiogen"]["synthetic"] is True
    assert layer.blending == "translucent"        # shown as itself, not added onto the FLAIR
    assert layer.metadata["radiogen"]["sequence"] == "t1ce"
    assert layer.metadata["radiogen"]["case_id"] == case.case_id
    np.testing.assert_allclose(layer.scale, ref.scale)
    np.testing.assert_allclose(layer.translate, ref.translate)
    assert layer.data.shape == ref.data.shape
    # a new layer: its napari object was built in the worker and is the one that landed
    prep = w._job.result
    assert isinstance(prep, PreparedSynth) and prep.result is w.result
    assert prep.built == [layer] and w.result_layers == [layer]
    assert build_threads[name] != threading.get_ident()
    np.testing.assert_array_equal(layer.data, w.result.volume.array)
    # a rerun updates the layer in place: same object, the new result's data and metadata
    layer.data = np.zeros_like(layer.data)
    layer.metadata["radiogen"]["model"] = "stale"
    w.target_combo.setCurrentText("t1ce")
    w.run()
    _wait(qtbot, w)
    assert w._job.error is None and not w._job.cancelled
    assert w._job.result.built == [None]                 # nothing built: it existed at Run
    assert viewer.layers[name] is layer and w.result_layers == [layer]
    assert sum(l.name == name for l in viewer.layers) == 1
    np.testing.assert_array_equal(layer.data, w.result.volume.array)
    assert layer.data.any()
    assert layer.metadata["radiogen"]["model"] == w.result.model != "stale"
    assert layer.metadata["radiogen"]["synthetic"] is True
    # now listed as present (synthetic); fill all missing adds t2 only
    assert "t1ce (synthetic)" in w.present_label.text() and w.missing == ["t2"]
    w.target_combo.setCurrentText(FILL_ALL)
    w.run()
    _wait(qtbot, w)
    t2 = f"{case.case_id} t2 (synthetic)"
    assert t2 in viewer.layers
    assert w.missing == []
    prep = w._job.result
    assert [ld[1]["name"] for ld in prep.layers] == [t2]     # t1ce was there already
    assert prep.built == [viewer.layers[t2]] and w.result_layers == [viewer.layers[t2]]
    assert build_threads[t2] != threading.get_ident()
    assert viewer.layers[t2].metadata["radiogen"]["synthetic"] is True
    assert viewer.layers[t2].metadata["radiogen"]["case_id"] == case.case_id
    assert viewer.layers[name] is layer                    # untouched by the fill
    # the layers read back as a case that knows its synthetic inputs
    from napari_radiogen.napari.layers import case_from_layers
    back = case_from_layers(viewer.layers, case.case_id)
    assert set(back.synthetic_inputs()) == {"t1ce", "t2"}


def test_widget_ranks_with_chart_and_heatmaps(viewer_with_case, tiny, qtbot, build_threads):
    from napari_radiogen.napari.synth_widget import PreparedSynth, SynthesisWidget
    viewer, case = viewer_with_case
    w = SynthesisWidget(viewer)
    qtbot.addWidget(w)
    w.set_model_path(tiny, "tiny")
    w.rank()
    _wait(qtbot, w)
    assert w.ranking is not None and w._figure is not None
    ax = w._figure.axes[0]
    assert len(ax.patches) == 3 * 2          # 3 bar series x 2 sequences (t1, flair)
    names = {f"{case.case_id} {t} differentiation map" for t in ("t1", "flair")}
    assert names <= {l.name for l in viewer.layers}
    lay = viewer.layers[f"{case.case_id} t1 differentiation map"]
    assert lay.colormap.name == "inferno"
    np.testing.assert_allclose(lay.translate, viewer.layers[f"{case.case_id} flair"].translate)
    assert "contribution" in w.metrics_label.text()
    # the map layers are the objects the worker built; the first map is the visible one
    # (the target, "fill all missing", has no map)
    prep = w._job.result
    assert isinstance(prep, PreparedSynth) and prep.result is w.ranking
    maps = [viewer.layers[f"{case.case_id} {t} differentiation map"] for t in ("t1", "flair")]
    assert prep.built == maps and w.map_layers == maps
    assert all(build_threads[m.name] != threading.get_ident() for m in maps)
    assert [m.visible for m in maps] == [True, False]
    assert maps[0].metadata["radiogen"]["kind"] == "differentiation-map"
    assert maps[0].metadata["radiogen"]["case_id"] == case.case_id
    np.testing.assert_array_equal(maps[0].data, w.ranking.cases[0].maps["t1"].array)
    # a rerun (target FLAIR now) updates them in place: same objects, new data, visibility
    for m in maps:
        m.data = np.zeros_like(m.data)
    w.target_combo.setCurrentText("flair")
    w.rank()
    _wait(qtbot, w)
    assert w._job.error is None and not w._job.cancelled
    assert w._job.result.built == [None, None]
    assert [viewer.layers[m.name] for m in maps] == maps and w.map_layers == maps
    assert [m.visible for m in maps] == [False, True]
    for m, t in zip(maps, ("t1", "flair")):
        np.testing.assert_array_equal(m.data, w.ranking.cases[0].maps[t].array)
        assert m.data.any()


def test_widget_cancel(viewer_with_case, tiny, qtbot):
    from napari_radiogen.napari.synth_widget import SynthesisWidget
    viewer, case = viewer_with_case
    w = SynthesisWidget(viewer)
    qtbot.addWidget(w)
    w.set_model_path(tiny, "tiny")
    before = [l.name for l in viewer.layers]
    w.rank()
    w.cancel()
    _wait(qtbot, w)
    assert w._job.cancelled
    assert w.run_btn.isEnabled()
    assert [l.name for l in viewer.layers] == before       # a cancelled run adds nothing
    assert w.ranking is None and w.map_layers == []


def test_a_case_closed_during_the_run_is_said(viewer_with_case, tiny, qtbot):
    """The case's layers removed while its synthesis runs: the synthetic layer is still added
    (nothing lost) and the result's text names its case with the shared closed-case note."""
    from napari_radiogen.napari._common import closed_case_note
    from napari_radiogen.napari.synth_widget import SynthesisWidget
    viewer, case = viewer_with_case
    w = SynthesisWidget(viewer)
    qtbot.addWidget(w)
    w.set_model_path(tiny, "tiny")
    w.target_combo.setCurrentText("t1ce")
    w.run()
    for ly in list(viewer.layers):
        viewer.layers.remove(ly)
    note = closed_case_note(viewer, case.case_id)
    assert note
    _wait(qtbot, w)
    assert w._job.error is None
    assert f"{case.case_id} t1ce (synthetic)" in viewer.layers
    assert w.metrics_label.text().startswith(f"{case.case_id}: t1ce from")
    assert note.lstrip("; ") in w.metrics_label.text()


def test_docked_beside_others_the_chart_and_labels_keep_their_size(viewer_with_case, tiny,
                                                                  qtbot):
    """Beside two other docks in a 1400x900 window, after Rank: the contribution chart keeps a
    readable height (it collapsed to a few pixels), the Sequences row is not cut, and the
    content scrolls instead."""
    from qtpy.QtWidgets import QApplication, QScrollArea
    from napari_radiogen.napari.synth_widget import SynthesisWidget
    viewer, case = viewer_with_case
    viewer.window._qt_window.show()
    w = SynthesisWidget(viewer)
    w.set_model_path(tiny, "tiny")
    viewer.window.add_dock_widget(SynthesisWidget(viewer), name="other 0")
    viewer.window.add_dock_widget(w, name="Synthesis")
    viewer.window.add_dock_widget(SynthesisWidget(viewer), name="other 1")
    viewer.window._qt_window.resize(1400, 900)
    w.rank()
    _wait(qtbot, w)
    for _ in range(5):
        QApplication.processEvents()
    qtbot.wait(50)
    assert w._canvas.height() >= 150
    form = w.content.layout().itemAt(0).layout()          # the Case...Device form
    seq_label = form.labelForField(w.present_label)
    assert seq_label.height() >= seq_label.sizeHint().height()
    assert w.present_label.height() >= w.present_label.heightForWidth(w.present_label.width())
    assert w.metrics_label.height() >= w.metrics_label.heightForWidth(w.metrics_label.width())
    assert isinstance(w.scroll, QScrollArea) and w.scroll.widget() is w.content
