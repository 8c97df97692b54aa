"""Fine native grids (a 0.5 mm scan, a 512 x 512 T1ce): the steps that bring results back to
the native grid work on the part of it they need, with the same results as on the whole grid."""
import numpy as np
import pytest

from napari_radiogen.core import explain as E
from napari_radiogen.core import segment as S
from napari_radiogen.core.phantom import make_phantom
from napari_radiogen.core.prepare import prepare

SPEC = {"wt_min_component_fraction": 0.1, "et_min_total_ml": 0.2, "et_min_component_ml": 0.05,
        "thresholds": {"TC": 0.9}, "enhancement": {"sequence": "t1ce", "min_z": 1.5}}


def _probs(shape, seed=0):
    """Smooth WT/TC/ET probabilities on ``shape``: a big blob, a small stray one (removed by
    the component rule), nested cores."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((z - 0.1) ** 2 + (y + 0.1) ** 2 + x ** 2)
    small = np.sqrt((z + 0.7) ** 2 + (y - 0.7) ** 2 + (x - 0.7) ** 2)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    wt = 1 / (1 + np.exp(20 * (r - 0.45))) + np.exp(-(small / 0.08) ** 2) + 0.2 * noise
    p = np.stack([wt, 1 / (1 + np.exp(20 * (r - 0.3))), 1 / (1 + np.exp(20 * (r - 0.2)))])
    return np.clip(p, 0, 1).astype(np.float32)


def _whole_grid(prep, probs, case, spec):
    """The labels as they were made before: every step on the whole native grid."""
    lab = S.native_labels(S.probs_to_native(prep, probs), spec, case, prep)
    return S.postprocess_labels(lab, case.geometry, spec) if spec else lab


@pytest.mark.parametrize("spacing,work", [((0.75, 0.75, 0.75), 2.0), ((0.5, 0.5, 1.0), 2.0),
                                          ((1.0, 1.0, 1.0), None)])
@pytest.mark.parametrize("spec", [SPEC, None, {"thresholds": {"WT": 0.7}}])
def test_labels_on_the_tumour_box_equal_the_whole_grid(spacing, work, spec):
    case = make_phantom(shape=(48, 64, 56), spacing=spacing, skull_stripped=True)
    prep = prepare(case, ["t1", "t1ce", "t2", "flair"], spacing=work, crop=True)
    probs = _probs(prep.shape)
    got = S.probs_to_native_labels(prep, probs, spec, case, geometry=case.geometry)
    want = _whole_grid(prep, probs, case, spec)
    assert got.shape == case.geometry.shape and got.dtype == want.dtype
    assert np.array_equal(got, want)
    assert (got > 0).any()
    if work is not None:          # resampled: the box is the tumour's, not the brain crop's
        box = S.native_box(prep, probs, spec)
        assert box is not None
        n_box = np.prod([b.stop - b.start for b in box])
        assert n_box < 0.5 * np.prod(case.geometry.shape)


def test_no_tumour_gives_empty_labels_on_the_native_grid():
    case = make_phantom(shape=(48, 64, 56), spacing=(0.75, 0.75, 0.75), skull_stripped=True)
    prep = prepare(case, ["t1", "t1ce", "t2", "flair"], spacing=2.0, crop=True)
    probs = np.full((3,) + prep.shape, 0.2, np.float32)
    got = S.probs_to_native_labels(prep, probs, SPEC, case, geometry=case.geometry)
    assert got.shape == case.geometry.shape and got.dtype == np.uint8 and not got.any()
    assert np.array_equal(got, _whole_grid(prep, probs, case, SPEC))


def test_enhancement_z_of_a_box_is_the_whole_grids_there():
    case = make_phantom(shape=(40, 48, 44), spacing=(0.75, 0.75, 0.75), skull_stripped=True)
    prep = prepare(case, ["t1", "t1ce", "t2", "flair"], spacing=2.0, crop=True)
    box = (slice(5, 30), slice(10, 40), slice(3, 20))
    assert np.array_equal(S.enhancement_z(case, prep, box=box),
                          S.enhancement_z(case, prep)[box])


def test_compare_to_truth_does_not_depend_on_the_empty_grid_around():
    small = np.zeros((20, 24, 22), np.uint8)
    small[5:14, 6:16, 5:15] = 2
    small[7:12, 8:13, 7:12] = 1
    small[9:11, 9:11, 9:11] = 4
    truth = np.roll(small, 1, axis=2)
    big, big_t = (np.zeros((90, 120, 100), np.uint8) for _ in range(2))
    big[30:50, 40:64, 50:72] = small
    big_t[30:50, 40:64, 50:72] = truth
    a = S.compare_to_truth(small, truth)
    b = S.compare_to_truth(big, big_t)
    assert a == b
    assert S.compare_to_truth(np.zeros((9, 9, 9)), np.zeros((9, 9, 9))) == {
        r: {"dice": 1.0, "hd95_mm": 0.0} for r in S.REGION_ORDER}


def test_localisation_score_without_a_float64_copy_is_the_same():
    rng = np.random.default_rng(1)
    heat = rng.normal(0.2, 0.3, size=(70, 40, 30)).astype(np.float32)   # negatives: clipped
    wt = np.zeros(heat.shape, bool)
    wt[20:40, 10:25, 8:20] = True
    h = np.clip(heat.astype(np.float64), 0, None)
    from scipy import ndimage
    near = ndimage.distance_transform_edt(~wt, sampling=(1.0, 0.5, 0.5)) <= 5.0
    want = h[near].sum() / h.sum()
    got = E.localisation_score(heat, wt, (1.0, 0.5, 0.5))
    assert got == pytest.approx(want, rel=1e-12)


def test_scale_max_keeps_its_input_and_its_values():
    a = np.array([[-1.0, np.nan, 2.0, 4.0]], np.float32)
    before = a.copy()
    out = E._scale_max(a)
    assert np.array_equal(a, before, equal_nan=True)
    assert np.array_equal(out, np.array([[0.0, 0.0, 0.5, 1.0]], np.float32))
    assert out.dtype == np.float32
    assert not E._scale_max(np.zeros((2, 2), np.float32)).any()


def test_model_grid_per_channel_equals_the_stack():
    """The synthesis brings each source to the model grid on its own: the same numbers as the
    (C, z, y, x) stack it used to build (absent sequences: zeros)."""
    from napari_radiogen.core.synthesize import to_model_grid
    rng = np.random.default_rng(2)
    stack = rng.random((4, 6, 61, 53), dtype=np.float32)
    stack[2] = 0
    whole = to_model_grid(stack, (30, 26))
    for c in range(4):
        one = to_model_grid(stack[c][None], (30, 26))[:, 0]
        assert np.array_equal(one, whole[:, c])


@pytest.mark.parametrize("spacing,step", [((0.5, 0.5, 0.5), (2, 2, 2)),
                                          ((0.5, 0.5, 1.0), (1, 2, 2)),
                                          ((1.0, 1.0, 1.0), (1, 1, 1))])
def test_rendering_of_a_fine_grid_starts_from_about_1mm(monkeypatch, tmp_path, spacing, step):
    import napari_radiogen.core.render as R
    case = make_phantom(shape=(40, 48, 44), spacing=spacing, skull_stripped=True)
    heat = np.zeros(case.geometry.shape, np.float32)
    heat[10:20, 10:20, 10:20] = 1.0
    res = E.ExplainResult(case_id=case.case_id, task="idh", method="gradcam", model="m",
                          target_class="mutant", heatmap=heat, geometry=case.geometry)
    seen = {}

    def fake(**kw):
        seen.update(kw)
        return {"png": str(tmp_path / "x.png")}
    monkeypatch.setattr(R, "render_3d", fake)
    E.render_explanation(case, res, tmp_path / "x.png", labels=case.labels.array)
    want = tuple(-(-n // k) for n, k in zip(case.geometry.shape, step))
    assert seen["brain"].shape == seen["labels"].shape == seen["heatmap"].shape == want
    g = case.geometry.spacing
    assert seen["spacing_zyx"] == pytest.approx((g[2] * step[0], g[1] * step[1],
                                                 g[0] * step[2]))
    assert seen["brain"].any()
