"""ResultLayers: what a background run adds or replaces, and its rollback (a cancelled or failed
run leaves the viewer's layers as it found them)."""
import numpy as np
import pytest


def _data(name, shape, value=1.0, kind="image"):
    return (np.full(shape, value, np.float32), {"name": name, "metadata": {"run": value}}, kind)


def test_rollback_removes_added_and_restores_replaced_layers(make_napari_viewer):
    from napari_radiogen.napari._common import ResultLayers, add_layer_data
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 5, 6), np.float32), name="mri")
    same = add_layer_data(viewer, _data("heat", (4, 5, 6), 1.0))         # a previous result
    other = add_layer_data(viewer, _data("seg", (4, 5, 6), 1.0))         # another one
    typed = add_layer_data(viewer, _data("mask", (4, 5, 6), 1.0))        # an image result
    old_same, old_other, old_typed = same.data, other.data, typed.data
    order = [l.name for l in viewer.layers]

    run = ResultLayers(viewer)
    run.add(_data("heat", (4, 5, 6), 2.0))           # same shape: updated in place
    moved = _data("seg", (2, 5, 6), 2.0)             # another shape and grid: moved in place
    moved[1].update(scale=(3.0, 1.0, 1.0), translate=(5.0, 0.0, -2.0))
    run.add(moved)
    mask = (np.ones((4, 5, 6), np.uint8), {"name": "mask", "metadata": {}}, "labels")
    run.add(mask)                                    # another type: swapped for a new layer
    run.add(_data("new", (4, 5, 6), 2.0))            # added
    assert viewer.layers["heat"] is same and same.metadata["run"] == 2.0
    assert viewer.layers["seg"] is other and other.data.shape == (2, 5, 6)
    assert np.allclose(other.scale, (3, 1, 1)) and np.allclose(other.translate, (5, 0, -2))
    assert viewer.layers["mask"] is not typed and "new" in viewer.layers

    run.rollback()
    assert [l.name for l in viewer.layers] == order
    assert viewer.layers["heat"] is same and same.data is old_same
    assert same.metadata["run"] == 1.0
    assert viewer.layers["seg"] is other and other.data is old_other
    assert np.allclose(other.scale, 1.0) and np.allclose(other.translate, 0.0)
    assert other.metadata["run"] == 1.0
    assert viewer.layers["mask"] is typed and typed.data is old_typed
    assert run.names == []


def test_a_rerun_on_another_grid_moves_the_result_layer_with_its_contrast(make_napari_viewer):
    """A result layer of the same name on another grid (the user reran on a resampled case, or
    another case's result took the slot) is moved in place, not removed and re-made (napari
    runs a full garbage collection per removal); its slider range is the new result's, with
    the range the result asks for (a heatmap shown from its floor can still be lowered)."""
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.napari._common import add_layer_data, image_result_data
    viewer = make_napari_viewer()
    g1 = Geometry(size=(10, 8, 6), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    first = add_layer_data(viewer, image_result_data(np.random.rand(6, 8, 10), g1, "c1", "heat",
                                                     contrast=(0.0, 50.0)))
    assert first.contrast_limits_range == [0.0, 50.0]
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    g2 = Geometry(size=(7, 9, 5), spacing=(2.0, 1.5, 3.0), origin=(-20.0, 4.0, 9.0),
                  direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    ld = image_result_data(np.random.rand(5, 9, 7), g2, "c1", "heat", contrast=(0.2, 1.0),
                           contrast_range=(0.0, 1.0))
    layer = add_layer_data(viewer, ld)
    assert layer is first and viewer.layers["heat"] is first and len(viewer.layers) == 1
    assert layer.data.shape == (5, 9, 7)
    fresh = napari_layer(ld)
    corners = np.array([[0, 0, 0], [4, 8, 6], [4, 0, 3]], float)
    assert np.allclose([layer.data_to_world(p) for p in corners],
                       [fresh.data_to_world(p) for p in corners], atol=1e-6)
    assert np.allclose(layer.contrast_limits, (0.2, 1.0))
    assert np.allclose(layer.contrast_limits_range, (0.0, 1.0))    # not the old 0..50


def napari_layer(layer_data):
    from napari.layers import Layer
    data, kw, kind = layer_data
    return Layer.create(data, dict(kw), kind)


def test_clear_keeps_the_run_results(make_napari_viewer):
    from napari_radiogen.napari._common import ResultLayers
    viewer = make_napari_viewer()
    run = ResultLayers(viewer)
    run.add(_data("heat", (3, 4, 5), 2.0))
    run.clear()                                      # the run finished: nothing to undo
    run.rollback()
    assert "heat" in viewer.layers


def test_result_labels_are_rewritten_in_place_without_a_data_event(make_napari_viewer):
    """A rerun writes a result labels layer's new values into the layer's own array (napari
    rebuilds the labels colormap shader on every ``data`` event: a GL relink in the main
    thread); the slice on screen follows, the result the values came from is not aliased, and
    a rollback puts the previous values back."""
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.napari._common import ResultLayers, add_layer_data, labels_result_data
    viewer = make_napari_viewer()
    geom = Geometry(size=(10, 8, 6), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    first = np.zeros((6, 8, 10), np.uint8)
    first[2:4, 2:5, 3:7] = 2
    layer = add_layer_data(viewer, labels_result_data(first, geom, "c1", "c1 seg"))
    assert layer.data is not first                    # the layer owns its array
    viewer.dims.set_point(0, 3)

    events = []
    layer.events.data.connect(lambda e: events.append(e))
    second = np.zeros_like(first)
    second[3, 1:7, 1:9] = 4
    run = ResultLayers(viewer)
    out = run.add(labels_result_data(second, geom, "c1", "c1 seg"))
    assert out is layer and viewer.layers["c1 seg"] is layer
    np.testing.assert_array_equal(layer.data, second)
    assert events == []                               # no colormap rebuild
    np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), second[3])
    assert first[2:4, 2:5, 3:7].min() == 2 and second.max() == 4   # inputs untouched

    layer.data[0, 0, 0] = 1                           # (the user may paint on it)
    run.rollback()
    np.testing.assert_array_equal(layer.data, first)
    np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), first[3])


def test_a_case_labels_layer_is_replaced_not_written_into(make_napari_viewer):
    """Only result layers are written into: a case's own labels (ground truth read from disk)
    keep their array, the update goes through ``data``."""
    from napari_radiogen.napari._common import add_layer_data
    viewer = make_napari_viewer()
    truth = np.ones((3, 4, 5), np.uint8)
    layer = add_layer_data(viewer, (truth, {"name": "gt", "metadata": {}}, "labels"))
    new = np.full((3, 4, 5), 2, np.uint8)
    add_layer_data(viewer, (new, {"name": "gt", "metadata": {}}, "labels"))
    assert viewer.layers["gt"] is layer and layer.data is new
    assert truth.max() == 1


def test_a_layer_built_in_a_worker_is_inserted_and_its_tools_come_on_demand(make_napari_viewer):
    """build_layer makes the layer object off the main thread; the main thread inserts that
    object; a labels layer's polygon and brush overlays are created when a drawing tool is
    first picked, not on insertion; an update in place ignores the prebuilt object."""
    import threading

    from napari_radiogen.napari._common import TOOL_OVERLAYS, ResultLayers, build_layer
    viewer = make_napari_viewer(show=True)
    canvas = viewer.window._qt_viewer.canvas
    seg = (np.zeros((4, 5, 6), np.uint8), {"name": "seg", "metadata": {"run": 1}}, "labels")
    built = {}
    t = threading.Thread(target=lambda: built.update(layer=build_layer(seg)))
    t.start()
    t.join()
    layer = built["layer"]
    assert all(not layer._overlays[k].visible for k in TOOL_OVERLAYS)

    run = ResultLayers(viewer)
    assert run.add(seg, built=layer) is layer and viewer.layers["seg"] is layer
    made = canvas._layer_overlay_to_visual[layer]
    assert not any(o in made for o in (layer._overlays[k] for k in TOOL_OVERLAYS))

    layer.mode = "pan_zoom"                          # not a drawing tool: still deferred
    assert all(not layer._overlays[k].visible for k in TOOL_OVERLAYS)
    layer.mode = "paint"
    assert all(layer._overlays[k].visible for k in TOOL_OVERLAYS)
    assert all(layer._overlays[k] in made for k in TOOL_OVERLAYS)   # napari built the visuals
    layer.mode = "pan_zoom"
    assert all(layer._overlays[k].visible for k in TOOL_OVERLAYS)   # once made, they stay

    # a rerun with the same shape writes into the existing layer: a new object is not used
    again = build_layer((np.ones((4, 5, 6), np.uint8), seg[1], "labels"))
    assert run.add((again.data, seg[1], "labels"), built=again) is layer
    assert viewer.layers["seg"] is layer and int(layer.data.max()) == 1
    run.rollback()
    assert "seg" not in viewer.layers


def _cohort_case(case_id, shape, geometry_kw, seg=True):
    """A cohort case's prepared layers (one image, optionally a labels layer) on its grid."""
    from napari_radiogen.core.case import Geometry, Volume
    from napari_radiogen.napari._common import build_layer
    from napari_radiogen.napari.cohort_widget import PreparedCase
    from napari_radiogen.napari.layers import image_layer_data, labels_layer_data
    g = Geometry(size=shape[::-1], **geometry_kw)
    rng = np.random.default_rng(len(case_id))
    lds = [image_layer_data(Volume(rng.random(shape).astype(np.float32), g), case_id=case_id,
                            sequence="flair", contrast=(0.0, 1.0))]
    if seg:
        lab = np.zeros(shape, np.uint8)
        lab[1:3, 2:5, 2:5] = 2
        lds.append(labels_layer_data(Volume(lab, g), case_id=case_id,
                                     label_names={0: "background", 2: "oedema"}))
    prep = PreparedCase(case_id)
    for data, kw, kind in lds:
        kw["metadata"]["radiogen"]["cohort"] = True
        prep.layer_data.append((data, kw, kind))
        prep.built.append(build_layer((data, kw, kind)))
    return prep


@pytest.mark.parametrize("quiet", [True, False])
def test_cohort_case_on_another_grid_moves_the_layers_in_place(make_napari_viewer, monkeypatch,
                                                               quiet):
    """The next cohort case on another grid (shape, spacing, origin, rotation) updates the
    previous case's layers in place instead of removing them (napari's full garbage collection
    per removal froze the viewer for 1.4-2 s on a BraTS -> native TCGA switch): the moved
    layers sit exactly where new ones would, in napari's model and on the canvas, and a slot
    the next case lacks is removed. ``quiet=False``: napari's public setters (the fallback)."""
    from napari_radiogen.napari import _common
    from napari_radiogen.napari._common import build_layer
    from napari_radiogen.napari.cohort_widget import swap_cohort_layers
    if not quiet:
        monkeypatch.setattr(_common, "_set_transform_quietly", lambda *a: False)
    viewer = make_napari_viewer()
    a = _cohort_case("A", (6, 8, 10), dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)))
    first = swap_cohort_layers(viewer, a)
    assert [l.name for l in viewer.layers] == ["A flair", "A segmentation"]
    c, s = np.cos(np.radians(17)), np.sin(np.radians(17))
    b_geo = dict(spacing=(0.5, 0.6, 3.0), origin=(-90.0, 40.0, 12.0),
                 direction=(c, 0.0, s, 0.0, 1.0, 0.0, -s, 0.0, c))
    b = _cohort_case("B", (9, 12, 7), b_geo)
    second = swap_cohort_layers(viewer, b)
    assert [id(l) for l in second] == [id(l) for l in first]        # moved, not re-made
    assert [l.name for l in viewer.layers] == ["B flair", "B segmentation"]
    # the view goes to the new grid's middle (the old point lay outside it: a blank canvas)
    for p, r in zip(viewer.dims.point, viewer.dims.range):
        assert abs(p - (r.start + r.stop) / 2) <= r.step
    canvas = viewer.window._qt_viewer.canvas
    other = make_napari_viewer()                    # fresh layers, in a viewer of their own
    for layer, (data, kw, kind) in zip(second, b.layer_data):
        fresh = build_layer((data, kw, kind))
        assert layer.data.shape == data.shape and np.array_equal(np.asarray(layer.data), data)
        corners = np.array([[0, 0, 0], [8, 11, 6], [8, 0, 3]], float)
        assert np.allclose([layer.data_to_world(p) for p in corners],
                           [fresh.data_to_world(p) for p in corners], atol=1e-6)
        assert layer.metadata["radiogen"]["case_id"] == "B"
        other.layers.append(fresh)                                   # the canvas agrees too
        m_moved = canvas.layer_to_visual[layer].node.transform.matrix
        m_fresh = other.window._qt_viewer.canvas.layer_to_visual[fresh].node.transform.matrix
        assert np.allclose(m_moved, m_fresh, atol=1e-6)
    assert np.allclose(viewer.layers["B flair"].contrast_limits, (0.0, 1.0))
    # a case without a segmentation: the labels layer goes, the image is moved back
    c_case = _cohort_case("C", (6, 8, 10), dict(spacing=(1.0, 1.0, 1.0),
                                               origin=(0.0, 0.0, 0.0)), seg=False)
    third = swap_cohort_layers(viewer, c_case)
    assert [l.name for l in viewer.layers] == ["C flair"] and third[0] is first[0]
    assert np.allclose(third[0].rotate, np.eye(3)) and np.allclose(third[0].scale, 1.0)
    # the same shape on another placement: only the transform changes, on the canvas too
    d_case = _cohort_case("D", (6, 8, 10), b_geo, seg=False)
    fourth = swap_cohort_layers(viewer, d_case)
    assert fourth[0] is first[0]
    fresh = build_layer(d_case.layer_data[0])
    other.layers.append(fresh)
    assert np.allclose(canvas.layer_to_visual[fourth[0]].node.transform.matrix,
                       other.window._qt_viewer.canvas.layer_to_visual[fresh].node.transform.matrix,
                       atol=1e-6)


def test_a_cases_patient_ids_travel_through_its_layers():
    """The widgets rebuild a case from its layers: the patient id read from its file names
    (a case folder called ``native``) stays, so their in-sample warnings match the CLI's."""
    from napari_radiogen.core.case import Case, Geometry, Volume
    from napari_radiogen.napari._common import build_layer
    from napari_radiogen.napari.layers import case_from_layers, case_to_layer_data
    g = Geometry(size=(10, 8, 6), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    vol = Volume(np.random.default_rng(0).random((6, 8, 10)).astype(np.float32), g)
    case = Case(case_id="native", sequences={"flair": vol}, meta={"patient_ids": ["TCGA-AB-1"]})
    layers = [build_layer(ld) for ld in case_to_layer_data(case, notify_user=False)]
    back = case_from_layers(layers)
    assert back.case_id == "native" and back.meta["patient_ids"] == ["TCGA-AB-1"]
    plain = Case(case_id="P1", sequences={"flair": vol})
    back = case_from_layers([build_layer(ld) for ld in case_to_layer_data(plain,
                                                                          notify_user=False)])
    assert "patient_ids" not in back.meta


def test_the_acquired_sequence_is_analysed_wherever_its_synthetic_twin_sits():
    """A synthetic t1ce made beside the acquired one (to compare them) is never analysed in
    its place, whichever comes first in the layer list."""
    from napari_radiogen.core.case import Case, Geometry, Volume
    from napari_radiogen.napari._common import build_layer
    from napari_radiogen.napari.layers import case_layers, case_to_layer_data
    g = Geometry(size=(10, 8, 6), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    vol = Volume(np.random.default_rng(0).random((6, 8, 10)).astype(np.float32), g)
    case = Case(case_id="P", sequences={"flair": vol, "t1ce": vol})
    layers = [build_layer(ld) for ld in case_to_layer_data(case, notify_user=False)]
    acquired = next(l for l in layers if l.metadata["radiogen"]["sequence"] == "t1ce")
    synth = build_layer(case_to_layer_data(Case(case_id="P", sequences={"t1ce": vol}),
                                           notify_user=False)[0])
    synth.metadata["radiogen"]["synthetic"] = True
    for order in ([synth] + layers, layers + [synth]):
        assert case_layers(order, "P")["t1ce"] is acquired
    flair = next(l for l in layers if l.metadata["radiogen"]["sequence"] == "flair")
    assert case_layers([synth, flair], "P")["t1ce"] is synth         # the only t1ce


_REMOVE_THEN_CHANGE = """
import time
import numpy as np, napari
from qtpy.QtWidgets import QApplication
from napari_radiogen.napari._common import remove_layers

def pump(seconds):
    t = time.time()
    while time.time() - t < seconds:
        QApplication.processEvents()
        time.sleep(0.01)

v = napari.Viewer(show=True)
img = v.add_image(np.random.rand(20, 40, 40).astype(np.float32))
lab = (np.random.rand(20, 40, 40) > 0.99).astype(np.uint8)
extra = [v.add_labels(lab.copy(), name=f"l{i}") for i in range(2)]
pump(0.5)
remove_layers(v, extra)
pump(0.5)
img.scale = (2.0, 0.5, 0.7)                        # the next draw of a changed layer
pump(1.0)
v.close()
print("survived")
"""


def test_removing_several_layers_leaves_the_viewer_able_to_draw(tmp_path):
    """Several layers removed in one go (the cohort browser closing a case's results) and then
    a layer changed: on Mesa's software renderers napari crashed in glDrawArrays at the next
    draw when the removals had no draw between them; remove_layers draws between two. In a
    subprocess, so that a crash fails this test and not the whole run."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _REMOVE_THEN_CHANGE], capture_output=True,
                       text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_moving_or_rolling_back_a_tracked_result_is_no_edit_of_the_users(make_napari_viewer):
    """A result labels layer whose edits are tracked (the Segment and Analyze docks' results)
    is flagged edited by its data event. Moving it to another grid (a rerun, the cohort
    browser's next case) or putting it back in a rollback writes its data too: that is the
    program's write, and the flag stays as it was (an unedited result was set aside as
    '(edited)' and hidden on the next case)."""
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.napari._common import ResultLayers, add_layer_data, labels_result_data
    from napari_radiogen.napari.segment_widget import EDITED, track_edits
    viewer = make_napari_viewer()
    g1 = Geometry(size=(6, 5, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    g2 = Geometry(size=(9, 7, 5), spacing=(2.0, 1.0, 1.5), origin=(3.0, 0.0, -4.0))
    first = np.zeros((4, 5, 6), np.uint8)
    first[1:3, 1:4, 2:5] = 2
    layer = add_layer_data(viewer, labels_result_data(first, g1, "c1", "c1 seg"))
    track_edits(layer)

    def edited():
        return layer.metadata["radiogen"].get(EDITED)
    assert edited() is False
    run = ResultLayers(viewer)
    second = np.ones((5, 7, 9), np.uint8)
    assert run.add(labels_result_data(second, g2, "c1", "c1 seg")) is layer
    assert layer.data.shape == (5, 7, 9) and not edited()       # moved, not edited
    run.rollback()
    assert layer.data.shape == (4, 5, 6) and edited() is False   # back, not edited
    layer.data = np.full((4, 5, 6), 4, np.uint8)                  # the user's own change
    assert edited() is True


def test_a_result_swapped_for_another_type_keeps_its_place_and_the_selection_follows_it(
        make_napari_viewer):
    """A rerun whose result has another layer type than the layer of that name (removed and
    re-made) puts the new layer where the old one was in the layer list; the selection follows
    it as napari's own add would: the new layer is selected when the old one was (also for a
    background job's results, ``select=False``) or, with ``select=True``, when nothing else
    was; a layer the user selected instead keeps the selection. A rollback puts the old layer
    back with its selection."""
    from napari_radiogen.napari._common import ResultLayers, add_layer_data
    viewer = make_napari_viewer()
    sel = viewer.layers.selection
    mri = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="mri")
    old = add_layer_data(viewer, _data("res", (4, 5, 6), 1.0))
    viewer.add_image(np.zeros((4, 5, 6), np.float32), name="top")
    sel.active = old                                   # the user works on the result
    run = ResultLayers(viewer)
    mask = (np.ones((4, 5, 6), np.uint8), {"name": "res", "metadata": {}}, "labels")
    new = run.add(mask, select=False)
    assert new is not old and type(new).__name__ == "Labels"
    assert [ly.name for ly in viewer.layers] == ["mri", "res", "top"]     # its place
    assert sel.active is new and set(sel) == {new}    # the replaced layer's selection
    run.rollback()
    assert viewer.layers["res"] is old and sel.active is old
    # the user selected another layer: it keeps the selection, select=True or not
    sel.active = mri
    new = add_layer_data(viewer, mask, select=True)
    assert viewer.layers.index(new) == 1 and sel.active is mri and set(sel) == {mri}
    # nothing selected: select=True selects the new layer, as napari does for an added one
    sel.clear()
    img = add_layer_data(viewer, _data("res", (4, 5, 6), 3.0), select=True)
    assert type(img).__name__ == "Image" and sel.active is img
    sel.clear()
    add_layer_data(viewer, mask, select=False)          # a background job's: left alone
    assert not sel


def test_a_result_updated_in_place_is_selected_as_an_added_one_would_be(make_napari_viewer):
    """An update in place (same type) with ``select=True``: the layer is selected when nothing
    was (napari selects a layer it adds); another layer the user selected keeps the selection;
    ``select=False`` never selects it."""
    from napari_radiogen.napari._common import add_layer_data
    viewer = make_napari_viewer()
    sel = viewer.layers.selection
    mri = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="mri")
    layer = add_layer_data(viewer, _data("heat", (4, 5, 6), 1.0))
    sel.clear()
    assert add_layer_data(viewer, _data("heat", (4, 5, 6), 2.0)) is layer
    assert not sel
    assert add_layer_data(viewer, _data("heat", (4, 5, 6), 3.0), select=True) is layer
    assert sel.active is layer
    sel.active = mri
    assert add_layer_data(viewer, _data("heat", (2, 5, 6), 4.0), select=True) is layer  # moved
    assert sel.active is mri


def test_a_result_updated_in_place_takes_the_look_its_new_content_asks_for(make_napari_viewer):
    """A layer given new content in place (a rerun, the cohort browser's next case) takes the
    colormap the new content asks for when it differs from the one its previous content asked
    for (a colormap the user picked for content of the same kind stays); a labels layer whose
    label names change gets the new names (``features``, shown on hover) and colours. A
    rollback puts the previous look back."""
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.napari._common import (ResultLayers, add_layer_data, image_result_data,
                                                labels_result_data)
    from napari_radiogen.napari.layers import LABEL_COLORS
    viewer = make_napari_viewer()
    g1 = Geometry(size=(6, 5, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    g2 = Geometry(size=(7, 5, 4), spacing=(1.0, 2.0, 1.0), origin=(0.0, 0.0, 0.0))
    arr = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    layer = add_layer_data(viewer, image_result_data(arr, g1, "c1", "map", colormap="gray"))
    assert layer.colormap.name == "gray"
    run = ResultLayers(viewer)
    assert run.add(image_result_data(arr, g1, "c1", "map", colormap="inferno")) is layer
    assert layer.colormap.name == "inferno"
    run.rollback()
    assert layer.colormap.name == "gray"
    # moved to another grid: the same
    assert add_layer_data(viewer, image_result_data(np.ones((4, 5, 7), np.float32), g2, "c2",
                                                    "map", colormap="inferno")) is layer
    assert layer.colormap.name == "inferno"
    # the user's own colormap, content of the same kind: kept
    layer.colormap = "viridis"
    add_layer_data(viewer, image_result_data(arr, g1, "c3", "map", colormap="inferno"))
    assert layer.colormap.name == "viridis"

    # labels: a result of a 2D model (one class, orange) then one with the BraTS classes
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1:3, 1:4, 1:4] = 1
    seg = add_layer_data(viewer, labels_result_data(
        lab, g1, "c1", "seg", label_names={0: "background", 1: "FLAIR abnormality"}))
    orange = np.asarray(seg.colormap.map(1)).ravel()
    run = ResultLayers(viewer)
    lab2 = lab.copy()
    lab2[2, 2, 2] = 2
    assert run.add(labels_result_data(lab2, g1, "c1", "seg")) is seg
    names = dict(zip(seg.features["index"], seg.features["name"]))
    assert names[1] != "FLAIR abnormality" and 2 in names and 4 in names
    assert np.allclose(np.asarray(seg.colormap.map(1)).ravel(), LABEL_COLORS[1])
    run.rollback()
    names = dict(zip(seg.features["index"], seg.features["name"]))
    assert names[1] == "FLAIR abnormality" and 2 not in names
    assert np.allclose(np.asarray(seg.colormap.map(1)).ravel(), orange)


def test_a_new_layers_repaint_waits_for_the_next_turn_of_the_event_loop(make_napari_viewer,
                                                                         qtbot):
    """Adding a new layer holds the window's repaint until the next turn of the event loop
    (which then paints it), so input and timers get a turn between napari adding the layer and
    drawing the window; updating a layer in place does not hold it."""
    from qtpy.QtWidgets import QApplication

    from napari_radiogen.napari._common import add_layer_data
    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    layer = add_layer_data(viewer, _data("heat", (4, 5, 6), 1.0))
    assert not win.updatesEnabled()
    qtbot.waitUntil(win.updatesEnabled, timeout=5_000)
    QApplication.processEvents()
    assert viewer.layers["heat"] is layer
    add_layer_data(viewer, _data("heat", (4, 5, 6), 2.0))             # in place
    assert win.updatesEnabled() and float(layer.data.max()) == 2.0
    # a second new layer in the same turn: one hold, released once
    add_layer_data(viewer, _data("a", (4, 5, 6)))
    add_layer_data(viewer, _data("b", (4, 5, 6)))
    assert not win.updatesEnabled()
    qtbot.waitUntil(win.updatesEnabled, timeout=5_000)
    shot = viewer.screenshot(canvas_only=True)
    assert shot.max() > 0                                            # the window draws again
