"""The per-case report's key-slice figure shows one physical slice in every panel."""
import numpy as np


def _corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_panels_of_sequences_on_their_own_grids_show_the_reference_slice():
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.core.case_report import sequence_panels
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.prepare import resample_volume
    case = make_phantom(seed=3, shape=(48, 64, 56), spacing=(1.5, 1.5, 1.5))
    t1 = case.sequences["t1"]                      # on the reference grid, as made
    g = t1.geometry
    # the same T1 as a native series: 3 mm slices, starting 15 mm higher, 1.5 mm in-plane
    own = Geometry(size=(g.size[0], g.size[1], 20), spacing=(1.5, 1.5, 3.0),
                   origin=(g.origin[0], g.origin[1], g.origin[2] + 15.0))
    case.sequences["t1"] = resample_volume(t1, own, name="t1")
    assert case.reference == "flair" and not case.sequences["t1"].geometry.same_grid(g)

    z = 16                          # 24 mm up: the T1 series' 4th slice (15 + 3 x 3 mm)
    panels = sequence_panels(case, z)
    assert list(panels) == ["t1", "t1ce", "t2", "flair"]
    assert all(p.shape == g.shape[1:] for p in panels.values())
    np.testing.assert_array_equal(panels["flair"], case.sequences["flair"].array[z])
    # the T1 panel is the T1 at the reference slice's height, not the series' slice number z
    assert _corr(panels["t1"], t1.array[z]) > 0.9
    naive = case.sequences["t1"].array[z]         # the series' own slice 16: 63 mm up
    assert naive.any() and _corr(naive, t1.array[z]) < 0.8


def test_report_cells_format_numbers_and_say_what_is_missing():
    from napari_radiogen.core.case_report import _interval, _num
    assert _num(2.449, 1) == "2.4" and _num(0.81234, 3) == "0.812"
    assert _num(float("inf"), 1) == "n/a (empty mask)"
    assert _num(float("nan"), 1) == "n/a" and _num(None, 1) == "n/a"
    assert _interval([0.40192962352405076, 0.7747484520123838]) == "[0.40, 0.77]"
    assert _interval(None) == "" and _interval("x") == ""
