"""ResultLayers: what a background run adds or replaces, and its rollback (a cancelled or failed
run leaves the viewer's layers as it found them)."""
import numpy as np


def _data(name, shape, value=1.0, kind="image"):
    return (np.full(shape, value, np.float32), {"name": name, "metadata": {"run": value}}, kind)


def test_rollback_removes_added_and_restores_replaced_layers(make_napari_viewer):
    from napari_radiogen.napari._common import ResultLayers, add_layer_data
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 5, 6), np.float32), name="mri")
    same = add_layer_data(viewer, _data("heat", (4, 5, 6), 1.0))         # a previous result
    other = add_layer_data(viewer, _data("seg", (4, 5, 6), 1.0))         # another one
    old_same, old_other = same.data, other.data
    order = [l.name for l in viewer.layers]

    run = ResultLayers(viewer)
    run.add(_data("heat", (4, 5, 6), 2.0))           # same shape: updated in place
    run.add(_data("seg", (2, 5, 6), 2.0))            # another shape: swapped for a new layer
    run.add(_data("new", (4, 5, 6), 2.0))            # added
    assert viewer.layers["heat"] is same and same.metadata["run"] == 2.0
    assert viewer.layers["seg"] is not other and "new" in viewer.layers

    run.rollback()
    assert [l.name for l in viewer.layers] == order
    assert viewer.layers["heat"] is same and same.data is old_same
    assert same.metadata["run"] == 1.0
    assert viewer.layers["seg"] is other and other.data is old_other
    assert run.names == []


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
