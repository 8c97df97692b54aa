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
