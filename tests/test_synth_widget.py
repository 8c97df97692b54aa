"""The synthesis dock widget: lists present/missing sequences, synthesises a missing one as an
aligned layer named '<case_id> <target> (synthetic)' with synthetic metadata, fills all missing,
ranks (bar chart + differentiation-map heatmap layers), and cancels."""
from __future__ import annotations

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


def test_widget_synthesises_an_aligned_labelled_layer(viewer_with_case, tiny, qtbot):
    from napari_radiogen.napari.synth_widget import FILL_ALL, SynthesisWidget
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
    # now listed as present (synthetic); fill all missing adds t2 only
    assert "t1ce (synthetic)" in w.present_label.text() and w.missing == ["t2"]
    w.target_combo.setCurrentText(FILL_ALL)
    w.run()
    _wait(qtbot, w)
    assert f"{case.case_id} t2 (synthetic)" in viewer.layers
    assert w.missing == []
    # the layers read back as a case that knows its synthetic inputs
    from napari_radiogen.napari.layers import case_from_layers
    back = case_from_layers(viewer.layers, case.case_id)
    assert set(back.synthetic_inputs()) == {"t1ce", "t2"}


def test_widget_ranks_with_chart_and_heatmaps(viewer_with_case, tiny, qtbot):
    from napari_radiogen.napari.synth_widget import SynthesisWidget
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


def test_widget_cancel(viewer_with_case, tiny, qtbot):
    from napari_radiogen.napari.synth_widget import SynthesisWidget
    viewer, case = viewer_with_case
    w = SynthesisWidget(viewer)
    qtbot.addWidget(w)
    w.set_model_path(tiny, "tiny")
    w.rank()
    w.cancel()
    _wait(qtbot, w)
    assert w._job.cancelled
    assert w.run_btn.isEnabled()
